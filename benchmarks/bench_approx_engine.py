"""The approximate SVM engine against the exact one: per-tap AUC difference and time, by sketch size.

On MIAS (82 ROIs; ``$CADX_SHARED_DATA/mini-mias/all-mias``) and on a SYNTHETIC phantom set (``import_demo``), the
AlexNet taps (pretrained weights when available, else random) are cross-validated by lesion with the exact Gram
engine and with ``engine="approx"`` at each sketch size, with the same folds and seeds (the splits depend only on
labels, groups and seed). Prints, per set and tap, the exact AUC, each approximate AUC minus it, and the times
(approx / exact ratio), plus the machine and its load::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_approx_engine.py --sets mias,phantoms --phantom-lesions 300 \\
        --taps conv3,pool5,fc6,fc8 --pooling avgmax --components 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import cadx.cohorts
from cadx.svm import cross_validate_by_lesion


def _features(kind: str, args: argparse.Namespace, tmp: Path) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                         np.ndarray, np.ndarray, str]:
    from cadx.cnn import pretrained_available
    from cadx.workflows import open_workspace
    from cadx.workflows.datasets import import_demo, import_mias
    from cadx.workflows.features import cnn_tap_loader, extract_cnn_features, resolve_backbone, roi_records

    ws = open_workspace(tmp / kind, f"sqlite:///{tmp / kind}.db")
    if kind == "mias":
        data = Path(os.environ.get("CADX_SHARED_DATA", "/work/shared/data")) / "mini-mias" / "all-mias"
        import_mias(ws, data, user="bench")
    else:
        import_demo(ws, n_lesions=args.phantom_lesions, seed=0)
    weights = "default" if pretrained_available("alexnet") else "random"
    loaded, _ = resolve_backbone("alexnet", weights=weights)
    records = [r for r in roi_records(ws, included_only=True)]
    taps = tuple(args.taps.split(","))
    extract_cnn_features(ws, loaded, taps=taps, records=records, pooling=args.pooling)
    hashes = [r.sha256 for r in records]
    X = {t: np.asarray(cnn_tap_loader(ws, loaded, t, hashes, pooling=args.pooling)[:, :]) for t in taps}
    return (X, np.array([r.label for r in records]), np.array([r.lesion_id for r in records]),
            np.array([r.patient_id for r in records]), weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="mias,phantoms")
    parser.add_argument("--phantom-lesions", type=int, default=300)
    parser.add_argument("--taps", default="conv3,pool5,fc6,fc8")
    parser.add_argument("--pooling", default="avgmax")
    parser.add_argument("--components", default="256,1024,4096")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD = 1
    sizes = [int(k) for k in args.components.split(",")]
    load = os.getloadavg()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; pooling {args.pooling}, seed {args.seed}, "
          f"{args.folds} folds")
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-approx-") as tmp:
        for kind in args.sets.split(","):
            X, y, lesions, patients, weights = _features(kind, args, Path(tmp))
            print(f"\n{kind}: {len(y)} ROIs, {len(np.unique(lesions))} lesions, AlexNet {weights} weights")
            print(f"{'tap':8} {'width':>6} {'exact AUC':>9} {'exact s':>8} "
                  + " ".join(f"{'dAUC@' + str(k):>10} {'s@' + str(k):>8} {'ratio':>6}" for k in sizes))
            for tap, F in X.items():
                common = dict(patients=patients, n_folds=args.folds, seed=args.seed)
                t = time.perf_counter()
                exact = cross_validate_by_lesion(F, y, lesions, **common)
                t_exact = time.perf_counter() - t
                row = {"width": int(F.shape[1]), "exact_auc": exact.auc_mean, "exact_s": t_exact, "approx": {}}
                cells = []
                for k in sizes:
                    t = time.perf_counter()
                    approx = cross_validate_by_lesion(F, y, lesions, engine="approx", components=k, **common)
                    t_approx = time.perf_counter() - t
                    assert np.array_equal(approx.fold, exact.fold)  # the same folds
                    d = approx.auc_mean - exact.auc_mean
                    row["approx"][k] = {"auc": approx.auc_mean, "delta": d, "s": t_approx}
                    cells.append(f"{d:+10.4f} {t_approx:8.1f} {t_approx / t_exact:6.1f}")
                print(f"{tap:8} {F.shape[1]:6d} {exact.auc_mean:9.4f} {t_exact:8.1f} " + " ".join(cells), flush=True)
                out.setdefault(kind, {})[tap] = row
    for k in sizes:
        worst = max(abs(r["approx"][k]["delta"]) for rows in out.values() for r in rows.values())
        print(f"sketch size {k}: largest |AUC difference| {worst:.4f} "
              f"({'within' if worst <= 0.01 else 'outside'} 0.01)")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
