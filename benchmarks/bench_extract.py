"""Benchmark of CNN feature extraction (cadx.cnn): all taps in one pass vs one pass per tap.

Measures, for AlexNet at 256x256 (random weights: the timing does not depend on the weight values, and the real
ImageNet weights are not available offline):

* ROIs/s of ``extract_features`` for all 11 taps in one pass (preprocessing, forward, copy-out into a sink that
  drops the arrays) over a batch-size sweep;
* ROIs/s of the plain way, one full forward per tap (reading out one layer per pass), and of a stricter
  baseline, one pass per tap through the graph pruned after that tap; the ratios to the one-pass rate;
* the fraction of the device's fp32 peak reached, with the peak measured by a large matmul in the same run and
  the network's FLOPs counted analytically from its layer shapes (2 * MACs of every conv and linear layer);
* peak memory: the process's peak RSS over the run on the CPU (VmHWM, reset before each run), and
  ``torch.cuda.max_memory_allocated`` on CUDA.

* with ``--stages``: the end-to-end path as ``cadx extract`` runs it — ROIs read from 16-bit PNG files or from
  the decoded-ROI cache (uint16 memory maps), decoded and resized on ``--workers`` DataLoader processes, copied
  (pinned, non-blocking on CUDA), run at ``--precisions`` (fp32/bf16/fp16 autocast) and written into a real
  feature store — with the seconds spent per stage (read/decode, preprocess, wait, copy, forward, write).

Usage::

    python benchmarks/bench_extract.py                      # CPU, and CUDA when available
    python benchmarks/bench_extract.py --device cpu --n 64 --batch-sizes 8,16,32 --json out.json
    python benchmarks/bench_extract.py --stages-only --device cuda --n-cuda 4096 --stage-batch 256 \
        --workers 0,8,16 --precisions fp32,bf16                            # the GPU path, per stage

Targets on the 2-core development CPU: one pass >= 7x faster than per-tap passes; >= 75 % of the measured fp32
matmul peak at a good batch size. On a shared machine the numbers are indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadx import cnn  # noqa: E402

__all__ = ["main", "network_flops", "matmul_peak_gflops"]


def network_flops(name: str, input_size: int = cnn.INPUT_SIZE, upto: str | None = None) -> int:
    """FLOPs (2 x multiply-adds) of the conv and linear layers per ROI, counted from layer shapes on meta tensors.

    With ``upto`` a tap name, only the layers needed to compute that tap (the pruned per-tap graph).
    """
    backbone = cnn.get_backbone(name)
    with torch.device("meta"):
        model = backbone.build()
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(hook)
    from torchvision.models.feature_extraction import create_feature_extractor

    taps = [upto] if upto else list(backbone.taps)
    graph = create_feature_extractor(model, return_nodes={backbone.taps[t]: t for t in taps})
    graph(torch.empty(1, 3, input_size, input_size, device="meta"))
    return total


def matmul_peak_gflops(device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on ``device`` (TF32 off)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        except OSError:
            pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _drop(rows: range, features: dict[str, np.ndarray]) -> None:
    """A sink that keeps nothing (memory stays bounded by one batch)."""


def _time_pass(loaded: cnn.LoadedBackbone, rois: np.ndarray, taps: list[str], batch: int, dev: torch.device,
               repeats: int) -> float:  # fmt: skip
    """Best seconds of extracting ``rois`` (after one warm-up on a batch)."""
    cnn.extract_features(rois[:batch], backbone=loaded, taps=taps, batch_size=batch, device=dev, sink=_drop)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        cnn.extract_features(rois, backbone=loaded, taps=taps, batch_size=batch, device=dev, sink=_drop)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def _bench_device(dev: torch.device, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads if (args.threads and dev.type == "cpu") else args.default_threads)
    loaded = cnn.load_backbone("alexnet", "random")
    taps = list(loaded.backbone.taps)
    flops = network_flops("alexnet")
    per_tap_flops = sum(network_flops("alexnet", upto=t) for t in taps)
    n = args.n if dev.type == "cpu" else args.n_cuda
    rng = np.random.default_rng(0)
    rois = rng.integers(0, 65535, size=(n, 512, 512), dtype=np.uint16)
    peak = matmul_peak_gflops(dev, n=args.matmul_n if dev.type == "cpu" else 8192)
    sizes = args.batch_sizes if dev.type == "cpu" else args.batch_sizes_cuda
    result: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "n_rois": n,
        "gflop_per_roi_one_pass": flops / 1e9,
        "gflop_per_roi_per_tap_passes": per_tap_flops / 1e9,
        "matmul_peak_gflops": peak,
        "sweep": [],
    }
    print(
        f"\n== {result['device']} ({dev}), {result['threads']} threads, {n} ROIs 512x512 uint16, AlexNet random "
        f"weights, {len(taps)} taps; {flops / 1e9:.2f} GFLOP/ROI; fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(f"{'batch':>5} {'ROIs/s':>8} {'GFLOP/s':>8} {'%peak':>6} {'peak MiB':>9}")
    for batch in sizes:
        _reset_peak(dev)
        seconds = _time_pass(loaded, rois, taps, batch, dev, args.repeats)
        rate = n / seconds
        row = {"batch": batch, "rois_per_s": rate, "gflops": rate * flops / 1e9,
               "fraction_of_peak": rate * flops / 1e9 / peak, "peak_mib": _peak_mib(dev)}  # fmt: skip
        result["sweep"].append(row)
        print(f"{batch:>5} {rate:>8.1f} {row['gflops']:>8.1f} {100 * row['fraction_of_peak']:>5.0f}% "
              f"{row['peak_mib']:>9.0f}")  # fmt: skip
    best = max(result["sweep"], key=lambda r: r["rois_per_s"])
    # the plain way: one full forward per tap (a hook-style read-out of one layer per pass), at the best batch
    # size; and, stricter, one pass per tap through the graph pruned after that tap
    _reset_peak(dev)
    full = sum(_time_pass(loaded, rois, sorted({t, taps[-1]}, key=taps.index), best["batch"], dev, args.repeats)
               for t in taps)  # fmt: skip
    pruned = sum(_time_pass(loaded, rois, [t], best["batch"], dev, args.repeats) for t in taps)
    result["per_tap"] = {
        "batch": best["batch"],
        "full_forward_rois_per_s": n / full,
        "pruned_rois_per_s": n / pruned,
        "peak_mib": _peak_mib(dev),
        "speedup_vs_full_forward_per_tap": best["rois_per_s"] * full / n,
        "speedup_vs_pruned_pass_per_tap": best["rois_per_s"] * pruned / n,
        "flop_ratio_pruned": per_tap_flops / flops,
    }
    r = result["per_tap"]
    print(f"baseline, one full forward per tap (batch {best['batch']}): {r['full_forward_rois_per_s']:.2f} ROIs/s; "
          f"one pruned pass per tap: {r['pruned_rois_per_s']:.2f} ROIs/s")
    print(f"all taps in one pass: {best['rois_per_s']:.1f} ROIs/s -> {r['speedup_vs_full_forward_per_tap']:.1f}x "
          f"vs full forward per tap, {r['speedup_vs_pruned_pass_per_tap']:.1f}x vs pruned pass per tap "
          f"(FLOP ratio {r['flop_ratio_pruned']:.1f}x); best fraction of fp32 matmul peak "
          f"{100 * best['fraction_of_peak']:.0f}% at batch {best['batch']}")  # fmt: skip
    return result


class _PngFiles:
    """ROIs as stored by cadx: 16-bit PNG files, decoded on access (in a DataLoader worker when there are any)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from cadx.roi import decode_png16

        return decode_png16(self.paths[i].read_bytes())


class _ByHash(Mapping):
    """ROI hash -> pixels of a sequence (read lazily: a PNG is decoded when, and where, it is asked for)."""

    def __init__(self, hashes: list[str], seq) -> None:
        self._index, self._seq = {h: i for i, h in enumerate(hashes)}, seq

    def __getitem__(self, sha: str) -> np.ndarray:
        return self._seq[self._index[sha]]

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _stage_rois(n: int, seed: int = 0) -> np.ndarray:
    """Mammogram-like smooth ROIs (a blob on a 1/f-ish background): PNG-compressible like real ones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:512, :512] / 512.0
    base = np.zeros((512, 512))
    for k in (2, 4, 8, 16, 32):
        phase = rng.uniform(0, 2 * np.pi, 2)
        base += np.sin(2 * np.pi * k * xx + phase[0]) * np.cos(2 * np.pi * k * yy + phase[1]) / k
    out = np.empty((n, 512, 512), np.uint16)
    for i in range(n):
        blob = np.exp(-((yy - 0.5 - 0.01 * (i % 7)) ** 2 + (xx - 0.5) ** 2) / (2 * 0.08**2))
        img = 0.45 + 0.1 * base + 0.3 * blob + 0.01 * rng.standard_normal((512, 512))
        out[i] = np.clip(img * 65535, 0, 65535).astype(np.uint16)
    return out


def _bench_stages(dev: torch.device, args: argparse.Namespace) -> list[dict]:
    """End-to-end extraction with per-stage seconds, from PNG files and from the decoded cache."""
    import tempfile

    from cadx.roi import encode_png16, roi_sha256
    from cadx.roicache import DecodedRoiCache

    loaded = cnn.load_backbone("alexnet", "random")
    n = args.n if dev.type == "cpu" else args.n_cuda
    rois = _stage_rois(min(n, 64))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cadx-bench-extract-") as tmp:
        root = Path(tmp)
        paths, hashes = [], []
        for i in range(n):  # n files (the 64 distinct images repeat; each is decoded from its own file)
            pixels = rois[i % len(rois)].copy()
            pixels[0, 0] = i % 65536  # distinct content, distinct hash
            pixels[0, 1] = i // 65536
            path = root / f"roi{i:06d}.png"
            path.write_bytes(encode_png16(pixels))
            paths.append(path)
            hashes.append(roi_sha256(pixels))
        png = _PngFiles(paths)
        cache = DecodedRoiCache(root / "cache")
        t0 = time.perf_counter()
        cache.add(hashes, lambda sha, lookup=dict(zip(hashes, range(n), strict=True)): png[lookup[sha]])  # noqa: B008
        cache_build = time.perf_counter() - t0
        print(f"\n== stages on {dev}: {n} ROIs, AlexNet 11 taps, batch {args.stage_batch}; decoded cache built "
              f"in {cache_build:.1f} s ({n / cache_build:.0f} ROIs/s, one process)")
        print(f"{'source':>6} {'workers':>7} {'prec':>5} {'ROIs/s':>8}   seconds per 1000 ROIs: "
              "read+decode preprocess | wait copy forward write")
        for source in args.sources:
            for workers in args.workers:
                for precision in args.precisions:
                    store = cnn.FeatureStore(root / f"store-{source}-{workers}-{precision}")
                    lookup = _ByHash(hashes, png) if source == "png" else cache
                    timings: dict = {}
                    t0 = time.perf_counter()
                    cnn.extract_to_store(lookup, store, backbone=loaded, batch_size=args.stage_batch, device=dev,
                                         num_workers=workers, precision=precision, timings=timings,
                                         chunk_rows=max(1024, args.stage_batch))
                    _sync(dev)
                    seconds = time.perf_counter() - t0
                    row = {"source": source, "workers": workers, "precision": precision, "n": n,
                           "rois_per_s": n / seconds, "seconds": seconds,
                           **{f"{k}_s": v for k, v in timings.items() if k != "rois"}}
                    rows.append(row)
                    per_k = {k: 1000 * timings[k] / n for k in ("read", "preprocess", "wait", "copy", "forward",
                                                                "write")}
                    print(f"{source:>6} {workers:>7} {precision:>5} {row['rois_per_s']:>8.1f}   "
                          f"{per_k['read']:>11.2f} {per_k['preprocess']:>10.2f} | {per_k['wait']:.2f} "
                          f"{per_k['copy']:.2f} {per_k['forward']:.2f} {per_k['write']:.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns (and optionally writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--n", type=int, default=64, help="ROIs per run on the CPU")
    parser.add_argument("--n-cuda", type=int, default=1024, help="ROIs per run on CUDA")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32,64")
    parser.add_argument("--batch-sizes-cuda", default="16,64,128,256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the CPU runs")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--stages", action="store_true", help="also run the end-to-end per-stage measurement")
    parser.add_argument("--stages-only", action="store_true", help="only the per-stage measurement")
    parser.add_argument("--stage-batch", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts for --stages")
    parser.add_argument("--precisions", default="fp32,bf16", help="for --stages")
    parser.add_argument("--sources", default="png,cache", help="for --stages: png and/or cache")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.precisions = args.precisions.split(",")
    args.sources = args.sources.split(",")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.batch_sizes_cuda = [int(b) for b in args.batch_sizes_cuda.split(",")]
    args.default_threads = torch.get_num_threads()
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    results = {"torch": torch.__version__, "preprocessing": cnn.PREPROCESSING_VERSION,
               "runs": [] if args.stages_only else [_bench_device(d, args) for d in devices]}  # fmt: skip
    if args.stages or args.stages_only:
        results["stages"] = [row for d in devices for row in _bench_stages(d, args)]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
