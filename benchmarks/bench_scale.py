"""Benchmark: how the layer sweep scales from the paper's 607 ROIs to 50,000 (synthetic features).

For each n the data are lesion-structured like ``bench_sweep.py`` (the paper's 1-13 ROIs per lesion, 57 %
malignant ROIs; lesion-level latent factors carry the class, ReLU sparsity, dead units), **synthetic**, written
through :class:`cadx.cnn.FeatureStore` (chunks of 1,024 rows) and read back lazily with ``FeatureStore.open`` — the
classifier reads column tiles from the chunk files, never the whole n×d matrix.

Each n runs in its own child process (so its peak resident memory is its own) and measures, for the fc6 tap
(4,096 features; the Gram cost is linear in the width, so the other taps follow by width):

* ``gram``: the six standardised Grams of outer fold 1 (outer + five inner), exact float64, with the selected
  Gram engine — in memory when they fit in the memory budget (default 24 GiB), else **streamed**: blocks of rows
  of the outer Gram (``cadx.gram.iter_gram_strips``, column tiles read from the store), the first strips timed and
  the rest extrapolated from their cost ``Σ (i1−i0)(n−i0)d`` (said so in the table);
* ``svm``: one SVM fit + decision on inner split 1 with one grid point (a = 1/p, c = 1, d = 2) — the unit of
  the grid search (a full cross-validation does 5 × (5 × 18 + 1) = 455 such fits per tap);
* ``cv`` (full mode, n ≤ ``--full-cv-max``): the complete fc6 cross-validation (5 × 5 folds, 18 grid points),
  which calibrates the extrapolation (its SVM time / 455 units).

The fp32 and fp64 matmul peaks are measured in the same run. The table gives, per n, the measured times, the
effective Gram FLOP rate and its share of the fp64 peak, the peak memory, and the **extrapolated** full 11-tap
AlexNet sweep: ``5 folds × (Gram time × Σwidths/4096) + 11 × 455 × SVM unit × calibration``; where an SVM fit
was not run (n too large) the unit is extrapolated with the power law fitted to the measured sizes. A log-log
plot (SVG, written without plotting libraries) shows measured and extrapolated times.

Usage::

    python benchmarks/bench_scale.py --quick            # n = 607, 2500; fc6 at width 1024; ~1 min
    nice -n 10 python benchmarks/bench_scale.py         # n = 607, 2500, 10000, 50000 (50k: streamed strips)
    python benchmarks/bench_scale.py --sizes 607,2500 --gram-engine torch-cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sweep import alexnet_tap_shapes, paper_labels  # noqa: E402

SIZES = (607, 2500, 10_000, 50_000)
TAP = "fc6"
N_FOLDS = N_INNER = 5
N_GRID = 18
FITS_PER_CV = N_FOLDS * (N_INNER * N_GRID + 1)  # 455
_FAKE_WEIGHTS = "5c41e5c41e5c41e5"  # hex key of the synthetic "weights" in the store


# ------------------------------------------------------------------------------------------------- data -------
def scaled_labels(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(y, lesion id) for n ROIs: the paper's set for n = 607, else lesions of 1-5 ROIs (mostly 2-3, mean ≈ 2.6
    as in the paper) labelled malignant until 57 % of the ROIs are."""
    if n == 607:
        return paper_labels(seed)
    rng = np.random.default_rng([seed, n])
    sizes = rng.choice([1, 2, 3, 4, 5], size=n, p=[0.12, 0.38, 0.32, 0.1, 0.08])
    ends = np.cumsum(sizes)
    sizes = sizes[: int(np.searchsorted(ends, n)) + 1]
    sizes[-1] -= int(sizes.sum() - n)
    if sizes[-1] <= 0:
        sizes = sizes[:-1]
    n_lesions = len(sizes)
    malignant = np.zeros(n_lesions, dtype=bool)
    total, target = 0, round(0.57 * n)
    for i in rng.permutation(n_lesions):
        if total + sizes[i] <= target:
            malignant[i] = True
            total += sizes[i]
    lesions = np.repeat(np.arange(n_lesions), sizes)
    return malignant[lesions].astype(int), lesions


def write_store(root: Path, y: np.ndarray, lesions: np.ndarray, width: int, seed: int = 0):
    """Synthetic fc6-like features written through the feature store; returns (store, hashes)."""
    from cadx.cnn import FeatureStore

    store = FeatureStore(root)
    n, rank = len(y), 24
    hashes = [hashlib.sha256(f"synthetic-roi-{i}".encode()).hexdigest() for i in range(n)]
    rng = np.random.default_rng(seed)
    lesion_factor = rng.standard_normal((lesions.max() + 1, rank)).astype(np.float32)
    W = rng.standard_normal((rank, width)).astype(np.float32) / np.float32(np.sqrt(rank))
    bias = rng.normal(-0.3, 0.5, width).astype(np.float32)
    bias[rng.random(width) < 0.07] = -50.0
    with store.writer(hashes, {TAP: width}, backbone="synthetic", weights_sha256=_FAKE_WEIGHTS,
                      preprocessing="synthetic-bench", chunk_rows=1024) as sink:
        for i0 in range(0, n, 1024):
            i1 = min(n, i0 + 1024)
            r = np.random.default_rng([seed, i0])
            latent = lesion_factor[lesions[i0:i1]] + 0.6 * r.standard_normal((i1 - i0, rank), dtype=np.float32)
            latent[:, :3] += 0.45 * (2 * y[i0:i1, None] - 1)
            block = latent @ W + bias + r.standard_normal((i1 - i0, width), dtype=np.float32)
            sink(range(i0, i1), {TAP: np.maximum(block, 0.0)})
    return store, hashes


# ------------------------------------------------------------------------------------------------- peaks ------
def matmul_peak(dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` FLOP/s of an ``size``³ matrix product in ``dtype`` (numpy's BLAS)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


# ------------------------------------------------------------------------------------------------- child ------
def gram_flops(n_all: int, n_tr: int, width: int, n_inner: int = N_INNER) -> float:
    """Multiply-add FLOPs of one outer fold's six symmetric Grams (syrk: n(n+1)/2·d MACs each)."""
    return float(width) * (n_all * (n_all + 1) + n_inner * n_tr * (n_tr + 1))


class _FirstColumns:
    """The first ``width`` columns of a lazily read matrix (tiles pass through)."""

    def __init__(self, X, width: int) -> None:
        self._X, self.shape, self.dtype = X, (X.shape[0], width), X.dtype

    def __getitem__(self, key):
        rows, cols = key
        start, stop, _ = cols.indices(self.shape[1])
        return self._X[rows, start:stop]


def run_child(n: int, args) -> dict:
    from sklearn.svm import SVC

    import cadx.svm as svm
    from cadx.gram import column_scaler, iter_gram_strips, resolve_gram_engine, streaming_gram

    engine = resolve_gram_engine(args.gram_engine)
    width = args.width
    y, lesions = scaled_labels(n)
    work = Path(tempfile.mkdtemp(prefix=f"cadx-scale-{n}-", dir=args.workdir))
    out: dict = {"n": n, "n_lesions": int(lesions.max() + 1), "width": width, "gram_engine": engine}
    try:
        t0 = time.perf_counter()
        store, hashes = write_store(work / "features", y, lesions, width)
        out["write_s"] = time.perf_counter() - t0
        X = store.open(TAP, hashes, backbone="synthetic", weights_sha256=_FAKE_WEIGHTS,
                       preprocessing="synthetic-bench")
        y01 = svm._check_labels(y)
        splits, inner_splits = svm._make_splits(y01, lesions, N_FOLDS, N_INNER, 0)
        (train, test), inner = splits[0], inner_splits[0]
        n_all, n_tr = len(train) + len(test), len(train)
        flops = gram_flops(n_all, n_tr, width)
        need = 8.0 * (n_all**2 + N_INNER * n_tr**2 + 4 * n_all * args.block_columns)
        out["gram_memory_gib"] = need / 2**30
        out["gram_flops"] = flops
        if need <= args.memory_gib * 2**30 and n < args.stream_from:
            t0 = time.perf_counter()
            G_outer, G_inner, _, _ = svm._fold_grams(X, train, test, inner, block_columns=args.block_columns,
                                                      gram_engine=engine)
            out["gram_s"] = time.perf_counter() - t0
            out["gram_mode"] = "in memory (measured)"
            # one SVM unit: fit + decision on inner split 1 with (a, c, d) = (1/p, 1, 2)
            position = np.empty(len(y01), dtype=np.int64)
            position[train] = np.arange(n_tr)
            fit, val = position[inner[0][0]], position[inner[0][1]]
            G = G_inner[0]
            t0 = time.perf_counter()
            K = svm._poly(np.ascontiguousarray(G[np.ix_(fit, fit)]), 1.0 / width, 1.0, 2)
            model = SVC(kernel="precomputed").fit(K, y01[train][fit])
            model.decision_function(svm._poly(np.ascontiguousarray(G[np.ix_(val, fit)]), 1.0 / width, 1.0, 2))
            out["svm_unit_s"] = time.perf_counter() - t0
            out["svm_fit_rows"] = len(fit)
            del G_outer, G_inner, G, K
        else:
            # streaming: the outer Gram in row strips, column tiles read from the store; time the first strips
            mean, inv = column_scaler(X, rows=train, block_columns=args.block_columns)
            order = np.concatenate([train, test])
            r = args.block_rows
            costs = [(min(n_all, i0 + r) - i0) * (n_all - i0) for i0 in range(0, n_all, r)]
            t0 = time.perf_counter()
            done_cost, strips = 0, 0
            for _i0, _i1, _strip in iter_gram_strips(X, rows=order, mean=mean, inv_scale=inv, block_rows=r,
                                                   block_columns=args.block_columns, engine=engine):
                done_cost += costs[strips]
                strips += 1
                if strips >= args.strips:
                    break
            measured = time.perf_counter() - t0
            outer_share = n_all * (n_all + 1) / (flops / width)  # the outer Gram's share of the six
            out["gram_s"] = measured * (sum(costs) / done_cost) / outer_share
            out["gram_mode"] = (f"streamed ({strips} of {len(costs)} strips of {r} rows measured in "
                                f"{measured:.1f} s, rest extrapolated)")
            out["gram_strip_measured_s"] = measured
            out["gram_strip_flops"] = 2.0 * width * done_cost
            fit_rows = len(inner[0][0])
            if n <= args.svm_max_n and 8.0 * fit_rows**2 * 3 <= args.memory_gib * 2**30:
                # the SVM unit does not depend on the width (precomputed kernel): measure it on the first
                # --svm-width columns (labelled in the table), standardised with inner split 1's training rows
                fit, val = inner[0]
                w = min(width, args.svm_width)
                cols = _FirstColumns(X, w)
                m_fit, s_fit = column_scaler(cols, rows=fit, block_columns=args.block_columns)
                rows_fv = np.concatenate([fit, val])
                G = streaming_gram(cols, rows=rows_fv, mean=m_fit, inv_scale=s_fit, block_rows=len(rows_fv),
                                   block_columns=args.block_columns, engine=engine)
                nf = len(fit)
                t0 = time.perf_counter()
                K = svm._poly(np.ascontiguousarray(G[:nf, :nf]), 1.0 / w, 1.0, 2)
                model = SVC(kernel="precomputed").fit(K, y01[fit])
                model.decision_function(svm._poly(np.ascontiguousarray(G[nf:, :nf]), 1.0 / w, 1.0, 2))
                out["svm_unit_s"] = time.perf_counter() - t0
                out["svm_fit_rows"] = nf
                out["svm_width"] = w
                del G, K
        if args.full_cv and n <= args.full_cv_max:
            t0 = time.perf_counter()
            res = svm.cross_validate_by_lesion(X, y, lesions, gram_engine=engine, block_columns=args.block_columns)
            out["cv_s"] = time.perf_counter() - t0
            out["cv_gram_s"] = float(res.gram_seconds.sum())
            out["cv_svm_s"] = float(res.svm_seconds.sum())
            out["cv_auc"] = res.auc_mean
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


# ------------------------------------------------------------------------------------------------- report -----
def extrapolate(rows: list[dict], peak64: float) -> None:
    """Fill each row's rate and its extrapolated full 11-tap sweep (in place)."""
    widths = {t: math.prod(s) for t, s in alexnet_tap_shapes().items()}
    total_width = sum(widths.values())
    measured = [r for r in rows if "svm_unit_s" in r]
    if len(measured) >= 2:
        slope, intercept = np.polyfit(np.log([r["n"] for r in measured]),
                                      np.log([r["svm_unit_s"] for r in measured]), 1)
    else:
        slope, intercept = 2.0, math.log(measured[0]["svm_unit_s"] / measured[0]["n"] ** 2) if measured else 0.0
    calib = [r["cv_svm_s"] / (FITS_PER_CV * r["svm_unit_s"]) for r in rows if "cv_svm_s" in r and "svm_unit_s" in r]
    factor = float(np.mean(calib)) if calib else 1.0
    for r in rows:
        if "svm_unit_s" not in r:
            r["svm_unit_s_extrapolated"] = math.exp(intercept) * r["n"] ** slope
        unit = r.get("svm_unit_s", r.get("svm_unit_s_extrapolated"))
        if "gram_strip_flops" in r:
            r["gram_gflops"] = r["gram_strip_flops"] / r["gram_strip_measured_s"] / 1e9
        else:
            r["gram_gflops"] = r["gram_flops"] / r["gram_s"] / 1e9
        r["gram_share_fp64_peak"] = r["gram_gflops"] / r.get("peak_fp64_gflops", peak64 / 1e9)
        r["sweep_gram_s"] = N_FOLDS * r["gram_s"] * total_width / r["width"]
        r["sweep_svm_s"] = len(widths) * FITS_PER_CV * unit * factor
        r["sweep_s_extrapolated"] = r["sweep_gram_s"] + r["sweep_svm_s"]
    rows[0]["svm_power_law"] = {"exponent": float(slope), "calibration_factor": factor}


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 2 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} d"


def table(rows: list[dict]) -> str:
    head = ("| n ROIs (lesions) | fold-1 Grams, fc6 (6 Grams) | Gram rate (share of fp64 peak) | one SVM fit | "
            "full fc6 CV (measured) | peak RSS | full 11-tap sweep (extrapolated) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        svm_cell = (f"{r['svm_unit_s']:.3g} s ({r['svm_fit_rows']} rows"
                    + (f", first {r['svm_width']} columns)" if "svm_width" in r else ")") if "svm_unit_s" in r
                    else f"≈{_fmt_s(r['svm_unit_s_extrapolated'])} (extrapolated)")
        gram_cell = f"{_fmt_s(r['gram_s'])} — {r['gram_mode']}"
        cv = _fmt_s(r["cv_s"]) + f" (AUC {r['cv_auc']:.3f})" if "cv_s" in r else "—"
        lines.append(f"| {r['n']:,} ({r['n_lesions']:,}) | {gram_cell} | {r['gram_gflops']:.1f} GFLOP/s "
                     f"({100 * r['gram_share_fp64_peak']:.0f} %) | {svm_cell} | {cv} | {r['peak_rss_gib']:.2f} GiB | "
                     f"{_fmt_s(r['sweep_s_extrapolated'])} (Grams {_fmt_s(r['sweep_gram_s'])}, SVMs "
                     f"{_fmt_s(r['sweep_svm_s'])}) |")
    return "\n".join(lines)


def svg_plot(rows: list[dict], path: Path, title: str) -> None:
    """A log-log plot of time against n (measured solid, extrapolated dashed), as a plain SVG file."""
    series = [
        ("fold-1 Grams (fc6)", "#1f77b4", [(r["n"], r["gram_s"], "in memory" in r["gram_mode"]) for r in rows]),
        ("one SVM fit", "#ff7f0e", [(r["n"], r.get("svm_unit_s", r.get("svm_unit_s_extrapolated")),
                                     "svm_unit_s" in r) for r in rows]),
        ("full fc6 CV", "#2ca02c", [(r["n"], r["cv_s"], True) for r in rows if "cv_s" in r]),
        ("full 11-tap sweep", "#d62728", [(r["n"], r["sweep_s_extrapolated"], False) for r in rows]),
    ]
    pts = [(n, t) for _, _, s in series for n, t, _ in s if t and t > 0]
    x0, x1 = math.log10(min(p[0] for p in pts)) - 0.1, math.log10(max(p[0] for p in pts)) + 0.1
    y0, y1 = math.floor(math.log10(min(p[1] for p in pts))), math.ceil(math.log10(max(p[1] for p in pts)))
    W, H, L, R, T, B = 720, 440, 70, 190, 40, 50

    def px(n, t):
        return (L + (math.log10(n) - x0) / (x1 - x0) * (W - L - R),
                H - B - (math.log10(t) - y0) / (y1 - y0) * (H - T - B))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           'font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="14">{title}</text>']
    for e in range(y0, y1 + 1):
        _, yy = px(10 ** x0, 10.0**e)
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
                   f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{e} s</text>')
    for r in rows:
        xx, _ = px(r["n"], 10.0**y0)
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{T}" y2="{H - B}" stroke="#eee"/>'
                   f'<text x="{xx:.1f}" y="{H - B + 16}" text-anchor="middle">{r["n"]:,}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">ROIs (log scale)</text>')
    for k, (label, colour, points) in enumerate(series):
        points = [(n, t, m) for n, t, m in points if t and t > 0]
        for (na, ta, ma), (nb, tb, mb) in itertools.pairwise(points):
            (xa, ya), (xb, yb) = px(na, ta), px(nb, tb)
            dash = "" if (ma and mb) else ' stroke-dasharray="5,4"'
            out.append(f'<line x1="{xa:.1f}" y1="{ya:.1f}" x2="{xb:.1f}" y2="{yb:.1f}" stroke="{colour}" '
                       f'stroke-width="2"{dash}/>')
        for n, t, m in points:
            xx, yy = px(n, t)
            fill = colour if m else "white"
            out.append(f'<circle cx="{xx:.1f}" cy="{yy:.1f}" r="4" fill="{fill}" stroke="{colour}" stroke-width="2"/>')
        ly = T + 10 + 20 * k
        out.append(f'<line x1="{W - R + 12}" x2="{W - R + 36}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{W - R + 42}" y="{ly + 4}">{label}</text>')
    ly = T + 10 + 20 * len(series)
    out.append(f'<text x="{W - R + 12}" y="{ly + 4}">filled/solid = measured;</text>'
               f'<text x="{W - R + 12}" y="{ly + 20}">open/dashed = extrapolated</text></svg>')
    path.write_text("\n".join(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 607, 2500 at width 1024, no full CV")
    parser.add_argument("--sizes", default=None, help="comma-separated ROI counts (default 607,2500,10000,50000)")
    parser.add_argument("--width", type=int, default=None, help="feature width (default 4096 = fc6; quick 1024)")
    parser.add_argument("--gram-engine", default=None,
                        help="auto|numpy|torch-cpu|torch-cuda (default $CADX_GRAM_ENGINE/auto)")
    parser.add_argument("--memory-gib", type=float, default=24.0, help="budget above which the Grams stream")
    parser.add_argument("--block-columns", type=int, default=1024)
    parser.add_argument("--block-rows", type=int, default=512, help="rows per streamed Gram strip")
    parser.add_argument("--stream-from", type=int, default=10**9,
                        help="stream (strips, extrapolated) from this n on even when the Grams would fit")
    parser.add_argument("--svm-max-n", type=int, default=10_000, help="largest streamed n given a measured SVM fit")
    parser.add_argument("--svm-width", type=int, default=512, help="columns used for a streamed n's SVM fit")
    parser.add_argument("--rows", default=None, help="JSON files of earlier runs' rows to include in the table")
    parser.add_argument("--strips", type=int, default=2, help="streamed strips measured before extrapolating")
    parser.add_argument("--full-cv-max", type=int, default=2500, help="largest n given a complete fc6 CV")
    parser.add_argument("--workdir", default=None, help="where the synthetic feature store goes (temp dir)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--svg", default=None, help="write the log-log plot here")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS/torch threads (default all CPUs; on a loaded machine 1 avoids spin contention)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.width = args.width or (1024 if args.quick else 4096)
    args.full_cv = not args.quick
    if args.child is not None:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_child(args.child, args)))
        return 0
    if args.threads:  # children inherit the environment; the peaks below are measured with the same limit
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([607, 2500] if args.quick else list(SIZES))
    peak32, peak64 = matmul_peak(np.float32), matmul_peak(np.float64)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"({args.threads or os.cpu_count()} threads used), load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; matmul peak fp32 {peak32 / 1e9:.1f} GFLOP/s, "
          f"fp64 {peak64 / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for extra in (args.rows.split(",") if args.rows else []):
        rows += [r for r in json.loads(Path(extra).read_text())["rows"] if r["n"] not in sizes]
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--width", str(args.width), "--memory-gib",
               str(args.memory_gib), "--block-columns", str(args.block_columns), "--block-rows", str(args.block_rows),
               "--strips", str(args.strips), "--full-cv-max", str(args.full_cv_max), "--stream-from",
               str(args.stream_from), "--svm-max-n", str(args.svm_max_n), "--svm-width", str(args.svm_width)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--gram-engine", args.gram_engine] if args.gram_engine else []
        cmd += ["--workdir", args.workdir] if args.workdir else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["child_wall_s"] = time.perf_counter() - t0
        row["peak_fp64_gflops"], row["peak_fp32_gflops"] = peak64 / 1e9, peak32 / 1e9
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
        print(f"n={n}: {json.dumps(row)}", flush=True)
    rows.sort(key=lambda r: r["n"])
    extrapolate(rows, peak64)
    load_after = os.getloadavg()
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": args.threads or os.cpu_count(),
            "load_before": load, "load_after": load_after,
            "peak_fp32_gflops": peak32 / 1e9, "peak_fp64_gflops": peak64 / 1e9, "width": args.width,
            "quick": args.quick}
    print()
    print(table(rows))
    pl = rows[0]["svm_power_law"]
    print(f"\nSVM unit ∝ n^{pl['exponent']:.2f} (fitted to the measured sizes); full-CV calibration factor "
          f"{pl['calibration_factor']:.2f}; load average after {load_after[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.svg:
        svg_plot(rows, Path(args.svg), f"cadx scaling, synthetic fc6-like features ({args.width} wide), "
                                       f"{os.cpu_count()}-CPU machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
