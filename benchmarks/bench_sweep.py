"""Benchmark: the AlexNet layer sweep (paper Fig. 3) with the exact Gram engine versus plain GridSearchCV.

Data shaped like the paper's: 607 ROIs of 219 lesions (1-13 ROIs per lesion, mostly 2-3; 346 malignant ROIs),
with random-but-structured features (lesion-level latent factors carrying the class signal, ROI-level noise,
ReLU sparsity with some dead units, so zero-variance removal matters) at the 11 tap widths of torchvision's
AlexNet for a 256×256 input, stored as float32 ``.npy`` memmaps in a temporary directory.

The script times the full sweep (all taps, 5-fold CV by lesion with a 5-fold inner grid search) with the Gram
engine, times the plain scikit-learn approach on the narrowest taps, extrapolates the plain time of the other
taps linearly in the feature width (saying so), checks that the AUCs are identical where both ran, and reports
peak memory (sum of the resident set sizes of this process and its workers, sampled, which includes memory-mapped
pages of the feature files, plus ``getrusage`` maxima).

Usage::

    python benchmarks/bench_sweep.py            # paper scale (~1.9 GB of features in a temp dir)
    python benchmarks/bench_sweep.py --quick    # widths / 16, plain on the narrowest tap only
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadx.svm import sweep_layers  # noqa: E402


def _conv(size: int, kernel: int, stride: int = 1, pad: int = 0) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def alexnet_tap_shapes(input_size: int = 256) -> dict[str, tuple[int, ...]]:
    """Output shapes of torchvision AlexNet's 11 taps, from the conv/pool size formula floor((s+2p-k)/st)+1."""
    s1 = _conv(input_size, 11, 4, 2)  # conv1 64 @ k11 s4 p2
    s1p = _conv(s1, 3, 2)  # maxpool k3 s2
    s2 = _conv(s1p, 5, 1, 2)  # conv2 192 @ k5 p2
    s2p = _conv(s2, 3, 2)
    s3 = _conv(s2p, 3, 1, 1)  # conv3 384, conv4 256, conv5 256 @ k3 p1
    s5p = _conv(s3, 3, 2)
    return {
        "conv1": (64, s1, s1), "pool1": (64, s1p, s1p), "conv2": (192, s2, s2), "pool2": (192, s2p, s2p),
        "conv3": (384, s3, s3), "conv4": (256, s3, s3), "conv5": (256, s3, s3), "pool5": (256, s5p, s5p),
        "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
    }


def paper_labels(seed: int = 0):
    """219 lesions, 607 ROIs (1-13 per lesion, mostly 2-3), 346 malignant ROIs: (y, lesion id) per ROI."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 4, 5], size=219, p=[0.12, 0.38, 0.32, 0.1, 0.08])
    sizes[:3] = [13, 9, 7]
    while sizes.sum() != 607:  # adjust to exactly 607 ROIs, staying within 1..13
        i = rng.integers(3, 219)
        if sizes.sum() > 607 and sizes[i] > 1:
            sizes[i] -= 1
        elif sizes.sum() < 607 and sizes[i] < 5:
            sizes[i] += 1
    order = rng.permutation(219)
    malignant = np.zeros(219, dtype=bool)
    total = 0
    for i in order:  # greedily label lesions malignant until 346 ROIs are
        if total + sizes[i] <= 346:
            malignant[i] = True
            total += sizes[i]
    lesions = np.repeat(np.arange(219), sizes)
    return malignant[lesions].astype(int), lesions


def write_layers(directory: Path, widths: dict[str, int], y: np.ndarray, lesions: np.ndarray, seed: int = 0):
    """Structured synthetic features, float32 .npy memmaps; returns {tap: path}."""
    rng = np.random.default_rng(seed)
    n, n_lesions, rank = len(y), lesions.max() + 1, 24
    lesion_factor = rng.standard_normal((n_lesions, rank)).astype(np.float32)[lesions]
    roi_factor = 0.6 * rng.standard_normal((n, rank)).astype(np.float32)
    latent = lesion_factor + roi_factor
    latent[:, :3] += 0.45 * (2 * y[:, None] - 1)  # the class signal lives in 3 latent directions
    paths = {}
    for t, (name, p) in enumerate(widths.items()):
        path = directory / f"{name}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, p))
        lrng = np.random.default_rng([seed, t])
        chunk = 16384
        for j0 in range(0, p, chunk):
            j1 = min(p, j0 + chunk)
            W = lrng.standard_normal((rank, j1 - j0)).astype(np.float32) / np.float32(np.sqrt(rank))
            bias = lrng.normal(-0.3, 0.5, j1 - j0).astype(np.float32)
            bias[lrng.random(j1 - j0) < 0.07] = -50.0  # dead units: zero variance, removed by the filter
            block = latent @ W + bias + lrng.standard_normal((n, j1 - j0), dtype=np.float32)
            out[:, j0:j1] = block if name == "fc8" else np.maximum(block, 0.0)  # fc8 = logits, no ReLU
        out.flush()
        del out
        paths[name] = path
    return paths


class PeakRss:
    """Samples the summed RSS of this process and its children (loky workers) every 0.1 s."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for proc in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tap widths / 16, plain on the narrowest tap only")
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib workers, both engines (default 2)")
    parser.add_argument("--plain-layers", default=None,
                        help="comma-separated taps to run the plain GridSearchCV on (default: fc8,fc6,pool5; "
                             "quick: fc8,pool5)")
    parser.add_argument("--dir", default=None, help="directory for the feature files (default: a temp dir)")
    args = parser.parse_args(argv)

    shapes = alexnet_tap_shapes(256)
    widths = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    expected = {"conv1": 254016, "pool1": 61504, "conv2": 184512, "pool2": 43200, "conv3": 86400,
                "conv4": 57600, "conv5": 57600, "pool5": 12544, "fc6": 4096, "fc7": 4096, "fc8": 1000}
    assert widths == expected, widths
    if args.quick:
        widths = {name: max(64, p // 16) for name, p in widths.items()}
    plain_layers = (args.plain_layers.split(",") if args.plain_layers
                    else (["fc8", "pool5"] if args.quick else ["fc8", "fc6", "pool5"]))

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}  (timings depend on load from other processes)")
    print("taps (torchvision AlexNet, 256x256 input): "
          + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items()))
    y, lesions = paper_labels()
    print(f"data: {len(y)} ROIs, {lesions.max() + 1} lesions, {y.sum()} malignant; "
          f"{'QUICK: widths / 16' if args.quick else 'paper scale'}; total width {sum(widths.values())}")

    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cadx-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = write_layers(tmp, widths, y, lesions)
        size = sum(p.stat().st_size for p in paths.values())
        print(f"wrote {size / 2**30:.2f} GiB of float32 memmaps in {time.perf_counter() - t0:.1f} s to {tmp}")
        sources = {name: np.load(path, mmap_mode="r") for name, path in paths.items()}

        # ---- fast engine, full sweep --------------------------------------------------------------------
        with PeakRss() as rss:
            t0 = time.perf_counter()
            fast = sweep_layers(sources, y, lesions, n_jobs=args.n_jobs)
            fast_wall = time.perf_counter() - t0
        print(f"\nGram engine, full sweep of {len(widths)} taps, n_jobs={args.n_jobs} ({fast.backend}): "
              f"{fast_wall:.1f} s wall")
        print(f"{'tap':6} {'width':>7} {'nonconst':>8} {'AUC':>6} {'SD':>6} {'SE':>6} {'job-s':>7}  chosen (a*p, c, d)")
        for name, layer in fast.layers.items():
            chosen = ", ".join(f"({p['gamma'] * layer.n_features:g},{p['coef0']:g},{p['degree']})"
                               for p in layer.results[0].best_params)
            print(f"{name:6} {layer.n_features:7d} {layer.n_features_nonconstant:8d} {layer.auc_mean:6.3f} "
                  f"{layer.auc_sd:6.3f} {layer.auc_se:6.3f} {layer.seconds:7.1f}  {chosen}")
        peak_fast = rss.peak

        # ---- plain GridSearchCV on a few taps ---------------------------------------------------------
        plain_times, identical = {}, True
        with PeakRss() as rss_plain:
            for name in plain_layers:
                t0 = time.perf_counter()
                plain = sweep_layers({name: sources[name]}, y, lesions, engine="plain", n_jobs=args.n_jobs)
                plain_times[name] = time.perf_counter() - t0
                a, b = fast.layers[name].results[0], plain.layers[name].results[0]
                same = np.array_equal(a.fold_auc, b.fold_auc) and a.best_params == b.best_params
                rel = float(np.max(np.abs(a.decision - b.decision) / np.maximum(np.abs(b.decision), 1e-300)))
                identical &= same
                print(f"plain GridSearchCV {name:6} (width {widths[name]}, n_jobs={args.n_jobs}): "
                      f"{plain_times[name]:.1f} s; fold AUCs "
                      f"{'identical' if same else 'DIFFERENT'}, same params: {a.best_params == b.best_params}, "
                      f"max rel. diff of decision values {rel:.1e}")

        # Extrapolate the plain time to all taps: least-squares line t = alpha + beta * width.
        w = np.array([widths[n] for n in plain_times], dtype=float)
        t = np.array(list(plain_times.values()))
        if len(w) >= 2 and np.ptp(w) > 0:
            beta, alpha = np.polyfit(w, t, 1)
            beta, alpha = max(beta, 0.0), max(alpha, 0.0)
        else:
            alpha, beta = 0.0, float(t[0] / w[0])
        plain_total = 0.0
        print("\nplain time per tap (measured or EXTRAPOLATED linearly in width from the measured taps):")
        for name, p in widths.items():
            est = plain_times.get(name, alpha + beta * p)
            plain_total += est
            print(f"  {name:6} {p:7d}  {est:9.1f} s  {'measured' if name in plain_times else 'extrapolated'}")
        ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        ru_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"\nbaseline (plain GridSearchCV nested in 5-fold CV, all taps, mostly extrapolated): "
              f"{plain_total:.0f} s = {plain_total / 3600:.2f} h")
        print(f"Gram engine full sweep: {fast_wall:.1f} s = {fast_wall / 60:.2f} min")
        print(f"speed-up: {plain_total / fast_wall:.0f}x")
        print(f"AUCs identical on the taps where both ran: {identical}")
        print(f"peak memory, Gram sweep: {peak_fast / 2**30:.2f} GiB summed RSS (process + workers, incl. mapped "
              f"feature pages); plain: {rss_plain.peak / 2**30:.2f} GiB; getrusage max RSS self {ru_self:.2f} GiB, "
              f"children {ru_children:.2f} GiB")
        if not args.quick:
            print(f"targets: >=50x faster: {plain_total / fast_wall >= 50}; full sweep < 4 min: {fast_wall < 240}; "
                  f"peak < 4 GB: {max(peak_fast, rss_plain.peak) < 4e9}")
        return 0 if identical else 1
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
