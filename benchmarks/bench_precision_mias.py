"""Check: do bf16 (or fp16) autocast features give the same sweep AUCs as fp32 on the real MIAS ROIs?

Imports the MIAS distribution from ``../shared/data`` (or ``CADX_SHARED_DATA``) into a temporary workspace,
extracts EfficientNet-Lite0 features (its real ImageNet weights install offline; AlexNet's do not) at fp32 and
at the other precision — stored under separate feature-store keys — and runs the same layer sweep (5-fold CV by
patient, default grid, seed 0) on both. Prints the per-tap AUCs, their differences and the feature correlation;
exits 1 when any tap's AUC differs by more than ``--tolerance`` (0.005, the issue's criterion).

Usage::

    python benchmarks/bench_precision_mias.py [--precision bf16] [--device cpu] [--taps stage7,head,pool]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cadx.svm import sweep_layers  # noqa: E402
from cadx.workflows import import_mias, open_workspace  # noqa: E402
from cadx.workflows.features import (  # noqa: E402
    cnn_tap_loader,
    extract_cnn_features,
    resolve_backbone,
    roi_records,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--taps", default="stage5,stage6,stage7,head,pool,classifier")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    shared = Path(os.environ.get("CADX_SHARED_DATA", ROOT.parent / "shared" / "data"))
    mias = shared / "mini-mias" / "all-mias"
    if not mias.is_dir():
        print(f"MIAS not found at {mias} (set CADX_SHARED_DATA)", file=sys.stderr)
        return 2
    taps = args.taps.split(",")
    with tempfile.TemporaryDirectory(prefix="cadx-precision-") as tmp:
        workspace = open_workspace(Path(tmp) / "data")
        import_mias(workspace, mias, user="bench")
        loaded, note = resolve_backbone("efficientnet_lite0")
        records = roi_records(workspace)
        hashes = [r.sha256 for r in records]
        y = np.array([r.label for r in records])
        lesions = np.array([r.lesion_id for r in records])
        patients = np.array([r.patient_id for r in records])
        print(f"MIAS: {len(records)} ROIs, {len(set(lesions))} lesions, {len(set(patients))} patients, "
              f"{int(y.sum())} malignant; {note}; load average {os.getloadavg()[0]:.1f}", flush=True)
        sweeps, features = {}, {}
        for precision in ("fp32", args.precision):
            t0 = time.perf_counter()
            report = extract_cnn_features(workspace, loaded, taps=taps, precision=precision,
                                          batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                                          timings=True)
            t1 = time.perf_counter()
            sources = {t: cnn_tap_loader(workspace, loaded, t, hashes, precision=precision) for t in taps}
            features[precision] = {t: np.asarray(s) for t, s in sources.items()}
            sweeps[precision] = sweep_layers(sources, y, lesions, patients=patients, seed=0)
            print(f"{precision}: extracted {report.n_extracted} ROIs in {t1 - t0:.0f} s "
                  f"(forward {report.timings['forward']:.0f} s), sweep {time.perf_counter() - t1:.0f} s", flush=True)
    worst = 0.0
    print(f"\n| tap | features | AUC fp32 | AUC {args.precision} | difference | feature correlation |")
    print("|---|---|---|---|---|---|")
    for t in taps:
        a, b = sweeps["fp32"].layers[t], sweeps[args.precision].layers[t]
        corr = np.corrcoef(features["fp32"][t].ravel(), features[args.precision][t].ravel())[0, 1]
        diff = b.auc_mean - a.auc_mean
        worst = max(worst, abs(diff))
        same_params = all(p == q for ra, rb in zip(a.results, b.results, strict=True)
                          for p, q in zip(ra.best_params, rb.best_params, strict=True))
        print(f"| {t} | {a.n_features:,} | {a.auc_mean:.4f} | {b.auc_mean:.4f} | {diff:+.4f}"
              f"{'' if same_params else ' (other a,c,d chosen)'} | {corr:.5f} |")
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"\nlargest |AUC difference| {worst:.4f} vs tolerance {args.tolerance}: {verdict}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
