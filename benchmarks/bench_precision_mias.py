"""Check: do bf16 / fp16 autocast features give the same sweep AUCs as fp32 on the real MIAS ROIs? And if not, why?

Imports the MIAS distribution from ``../shared/data`` (or ``CADX_SHARED_DATA``) into a workspace, extracts
EfficientNet-Lite0 features (its real ImageNet weights install offline; AlexNet's do not) of every ROI at fp32,
bf16, fp16 and fp16-mixed (``cadx.cnn.extract_features``, the path of ``cadx extract``; batch 16, CPU) and runs the
same layer sweep (5-fold CV by patient, default grid, seed 0) on each. To separate the two causes of an AUC
difference it also

* evaluates every variant's features with the (a, c, d) that fp32's grid search chose in each outer fold
  (``cadx.svm.cross_validate_with_params``): the AUC change caused by the features alone;
* measures the "noise floor" of fp32 itself: fp32 extracted with another batch size (another GEMM blocking: an
  equivalent computation), fp32 features times ``1 + r·ε`` (ε standard normal, r = 1e-4, 1e-3, 1e-2) and fp32
  features rounded to bf16 / fp16 storage (no arithmetic in reduced precision);
* reports how close fp32's grid search was to another choice (gap between the best and the second-best mean
  inner AUC).

Prints one table (variant, tap, relative feature error, AUC with its own grid search, difference to fp32, folds
with the same (a, c, d), AUC at fp32's (a, c, d), difference) and the criterion (``cadx.precision.sweep_agreement``,
tolerance 0.005) per variant; exits 1 when neither bf16 nor fp16 passes. ``--layer-errors`` first prints the
relative error of every stage's output for bf16/fp16 with the first layers kept in fp32 (16 ROIs).

Features are cached in ``--cache`` (default ``/tmp/cadx-precision-cache``) so the analysis can be rerun without
extracting again; ``--json`` writes every number.

Usage::

    nice -n 10 python benchmarks/bench_precision_mias.py [--layer-errors] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cadx.cnn import extract_features, preprocess_rois  # noqa: E402
from cadx.precision import AUC_TOLERANCE, feature_agreement, sweep_agreement  # noqa: E402
from cadx.svm import cross_validate_with_params, sweep_layers  # noqa: E402
from cadx.workflows import import_mias, open_workspace  # noqa: E402
from cadx.workflows.features import load_roi_pixels, resolve_backbone, roi_records  # noqa: E402

TAPS = ("stage5", "stage6", "stage7", "head", "pool", "classifier")


def _mias(cache: Path, shared: Path):
    """The 82 MIAS ROIs (uint16) and their labels, lesions and patients (cached as .npy/.npz)."""
    rois_file, meta_file = cache / "rois.npy", cache / "meta.npz"
    if not (rois_file.exists() and meta_file.exists()):
        workspace = open_workspace(cache / "workspace")
        import_mias(workspace, shared / "mini-mias" / "all-mias", user="bench")
        records = roi_records(workspace)
        np.save(rois_file, np.stack([load_roi_pixels(workspace, r) for r in records]))
        np.savez(meta_file, y=[r.label for r in records], lesion=[r.lesion_id for r in records],
                 patient=[r.patient_id for r in records])
    meta = np.load(meta_file)
    return np.load(rois_file), meta["y"], meta["lesion"], meta["patient"]


def _features(cache: Path, key: str, rois, loaded, *, precision: str, batch_size: int, device, threads):
    path = cache / f"features-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {t: z[t] for t in TAPS}, None
    t0 = time.perf_counter()
    out = extract_features(rois, backbone=loaded, taps=TAPS, batch_size=batch_size, device=device,
                           precision=precision, num_threads=threads)
    seconds = time.perf_counter() - t0
    np.savez(path, **out)
    return out, seconds


def _mixed_features(cache: Path, key: str, rois, loaded, *, dtype_name: str, n_stages: int, batch_size: int,
                    threads: int):
    """Autocast with the convolutions of the stem and the first ``n_stages`` stages kept in fp32, written here
    independently of cadx (module forwards patched, the model called directly): ``n_stages=4`` must reproduce
    cadx's ``fp16-mixed`` bit for bit, ``n_stages=2`` is an ablation."""
    path = cache / f"features-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {t: z[t] for t in TAPS}
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    m = loaded.model.eval().to(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    modules = {"stage5": m.blocks[4], "stage6": m.blocks[5], "stage7": m.blocks[6], "head": m.head, "pool": m.pool,
               "classifier": m.classifier}
    early = set(m.stem.modules()).union(*(set(m.blocks[i].modules()) for i in range(n_stages)))
    outs: dict[str, list] = {t: [] for t in TAPS}
    hooks = [mod.register_forward_hook(lambda mod, i, o, t=t: outs[t].append(o.float().reshape(o.shape[0], -1)))
             for t, mod in modules.items()]
    patched = [mod for mod in early if isinstance(mod, nn.Conv2d)]
    for mod in patched:
        def fp32_forward(inp, f=mod.forward):
            with torch.autocast("cpu", enabled=False):
                return f(inp.float())
        mod.forward = fp32_forward
    try:
        with torch.inference_mode():
            for start in range(0, len(rois), batch_size):
                batch = rois[start:start + batch_size]
                x = preprocess_rois(batch, mean=loaded.spec.mean, std=loaded.spec.std)
                if len(batch) < batch_size:  # padded like cadx.cnn.extract_features
                    x = torch.cat([x, x.new_zeros((batch_size - len(batch), *x.shape[1:]))])
                with torch.autocast("cpu", dtype=dtype):
                    m(x.contiguous(memory_format=torch.channels_last))
                for t in TAPS:
                    outs[t][-1] = outs[t][-1][:len(batch)]
    finally:
        for h in hooks:
            h.remove()
        for mod in patched:
            del mod.forward
    feats = {t: torch.cat(v).numpy() for t, v in outs.items()}
    np.savez(path, **feats)
    return feats


def _layer_errors(rois, loaded, threads: int) -> None:
    """Relative error of every stage's output, autocast with the first ``k`` parts kept in fp32."""
    import torch

    torch.set_num_threads(threads)
    m = loaded.model.eval().to(memory_format=torch.channels_last)
    x = preprocess_rois(rois[:16], mean=loaded.spec.mean, std=loaded.spec.std)
    x = x.contiguous(memory_format=torch.channels_last)
    parts = [("stem", m.stem)] + [(f"stage{i + 1}", s) for i, s in enumerate(m.blocks)] + [
        ("head", m.head), ("pool", m.pool), ("classifier", lambda z: m.classifier(torch.flatten(z, 1)))]

    def run(dtype, keep=()):
        h, outs = x, {}
        for name, fn in parts:
            if dtype is None or name in keep:
                with torch.autocast("cpu", enabled=False):
                    h = fn(h.float())
            else:
                with torch.autocast("cpu", dtype=dtype):
                    h = fn(h)
            outs[name] = h.float().reshape(h.shape[0], -1).numpy()
        return outs

    with torch.inference_mode():
        ref = run(None)
        shown = ["stem", "stage1", "stage3", "stage5", "stage7", "head", "pool", "classifier"]
        print("| autocast | " + " | ".join(shown) + " |")
        print("|---" * (len(shown) + 1) + "|")
        for label, dtype, keep in (("bf16", torch.bfloat16, ()), ("bf16, stem in fp32", torch.bfloat16, ("stem",)),
                                   ("bf16, stem + stage1 in fp32", torch.bfloat16, ("stem", "stage1")),
                                   ("fp16", torch.float16, ()), ("fp16, stem in fp32", torch.float16, ("stem",))):
            out = run(dtype, keep)
            errs = [np.linalg.norm(out[t] - ref[t]) / np.linalg.norm(ref[t]) for t in shown]
            print(f"| {label} | " + " | ".join(f"{e:.4f}" for e in errs) + " |", flush=True)
    print()


def _grid_gap(sweep, tap: str) -> float:
    """Median over folds of (best − second-best mean inner AUC) of the grid search."""
    gaps = []
    for r in sweep.layers[tap].results:
        for scores in r.inner_scores:
            means = np.sort(np.nan_to_num(np.average(scores, axis=1), nan=-1.0))[::-1]
            gaps.append(means[0] - means[1])
    return float(np.median(gaps))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=AUC_TOLERANCE)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cadx-precision-cache"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--layer-errors", action="store_true")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--mixed", action="store_true",
                        help="also fp16 with the stem and the first 2 / 4 stages' convolutions in fp32")
    parser.add_argument("--only", default=None, help="comma-separated variants to sweep (default: all)")
    args = parser.parse_args(argv)
    shared = Path(os.environ.get("CADX_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (shared / "mini-mias" / "all-mias").is_dir():
        print(f"MIAS not found under {shared} (set CADX_SHARED_DATA)", file=sys.stderr)
        return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    rois, y, lesions, patients = _mias(args.cache, shared)
    loaded, note = resolve_backbone("efficientnet_lite0")
    print(f"MIAS: {len(rois)} ROIs, {len(set(lesions))} lesions, {len(set(patients))} patients, {int(y.sum())} "
          f"malignant; {note}; device {args.device}; load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.layer_errors:
        _layer_errors(rois, loaded, args.threads)

    common = {"device": args.device, "threads": args.threads}
    feats, seconds = {}, {}
    for key, precision, batch in (("fp32", "fp32", args.batch_size), ("bf16", "bf16", args.batch_size),
                                  ("fp16", "fp16", args.batch_size), ("fp16-mixed", "fp16-mixed", args.batch_size),
                                  ("fp32-batch8", "fp32", 8)):
        feats[key], seconds[key] = _features(args.cache, f"{key}-{args.device}", rois, loaded, precision=precision,
                                             batch_size=batch, **common)
        if seconds[key] is not None:
            print(f"extracted {key}: {seconds[key]:.0f} s", flush=True)
    if args.mixed and args.device == "cpu":  # ablations of fp16-mixed (stem-stage4 in fp32), bench only
        for n_stages in (2, 4):
            feats[f"fp16 (stem-stage{n_stages} convs in fp32)"] = _mixed_features(
                args.cache, f"fp16-fp32first{n_stages}-{args.device}", rois, loaded, dtype_name="fp16",
                n_stages=n_stages, batch_size=args.batch_size, threads=args.threads)
        same = all(np.array_equal(feats["fp16 (stem-stage4 convs in fp32)"][t], feats["fp16-mixed"][t]) for t in TAPS)
        print(f"fp16-mixed (cadx) bit-identical to the bench's stem-stage4 variant: {same}", flush=True)
    ref = feats["fp32"]
    rng = np.random.default_rng(0)
    for r in (1e-4, 1e-3, 1e-2):
        feats[f"fp32 x (1 + {r:g} e)"] = {t: (v * (1 + r * rng.standard_normal(v.shape))).astype(np.float32)
                                           for t, v in ref.items()}
    import torch

    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        feats[f"fp32 rounded to {name}"] = {t: torch.from_numpy(v).to(dtype).float().numpy() for t, v in ref.items()}

    sweep_kw = {"patients": patients, "seed": 0, "n_jobs": args.n_jobs}
    t0 = time.perf_counter()
    sweeps = {"fp32": sweep_layers(ref, y, lesions, **sweep_kw)}
    print(f"fp32 sweep: {time.perf_counter() - t0:.0f} s", flush=True)
    results, verdicts = [], {}
    print("\n| variant | tap | relative feature error | AUC, own grid search | difference | same (a, c, d) | "
          "AUC at fp32's (a, c, d) | difference |")
    print("|---|---|---|---|---|---|---|---|")
    for t in TAPS:
        a = sweeps["fp32"].layers[t]
        print(f"| fp32 (reference) | {t} | 0 | {a.auc_mean:.4f} | | | | |  "
              f"(grid gap {_grid_gap(sweeps['fp32'], t):.4f})")
        results.append({"variant": "fp32", "tap": t, "auc": a.auc_mean, "fold_auc": a.results[0].fold_auc.tolist(),
                        "best_params": list(a.results[0].best_params), "grid_gap": _grid_gap(sweeps["fp32"], t)})
    for variant, f in feats.items():
        if variant == "fp32" or (args.only and variant not in args.only.split(",")):
            continue
        sweeps[variant] = sweep_layers(f, y, lesions, **sweep_kw)
        fixed = {t: cross_validate_with_params(f[t], sweeps["fp32"].layers[t].results[0]) for t in TAPS}
        agreement = sweep_agreement(sweeps["fp32"], sweeps[variant], tolerance=args.tolerance, fixed=fixed)
        errors = feature_agreement(ref, f)
        verdicts[variant] = agreement
        for row in agreement.taps:
            e = errors[row.tap]
            print(f"| {variant} | {row.tap} | {e.relative_error:.2e} | {row.auc_other:.4f} | {row.difference:+.4f} | "
                  f"{row.same_params_folds}/{row.n_folds} | {row.auc_fixed:.4f} | {row.difference_fixed:+.4f} |",
                  flush=True)
            results.append({"variant": variant, "tap": row.tap, "relative_error": e.relative_error,
                            "correlation": e.correlation, "auc": row.auc_other, "difference": row.difference,
                            "same_params_folds": row.same_params_folds, "n_folds": row.n_folds,
                            "auc_fixed": row.auc_fixed, "difference_fixed": row.difference_fixed,
                            "fold_auc": sweeps[variant].layers[row.tap].results[0].fold_auc.tolist(),
                            "fold_auc_fixed": fixed[row.tap].fold_auc.tolist()})
    print(f"\ncriterion: every tap's |AUC difference| <= {args.tolerance} (own grid search; at fp32's parameters "
          f"in brackets)")
    for variant, ag in verdicts.items():
        print(f"  {variant}: largest {ag.worst:.4f} ({ag.worst_fixed:.4f}) -> {'PASS' if ag.passed else 'FAIL'}"
              + (f" (failing: {', '.join(ag.failing)})" if ag.failing else ""))
    if args.json:
        args.json.write_text(json.dumps({"n_rois": len(rois), "extract_seconds": seconds, "rows": results},
                                        indent=1, default=str))
    return 0 if any(ag.passed for v, ag in verdicts.items() if not v.startswith("fp32")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
