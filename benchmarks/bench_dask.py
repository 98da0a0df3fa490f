"""Benchmark: the layer sweep on a real multi-process Dask cluster, and what travels over the network.

Starts ``dask scheduler`` + ``--workers`` ``dask worker`` processes on loopback (as one would on real machines),
then runs the same sweep (paper-scale synthetic data from ``bench_sweep.py``: 607 ROIs, 219 lesions; taps fc6 and
fc8 by default) twice through ``CADX_DASK_SCHEDULER``:

* ``files``: the features are ``.npy`` files (as the feature store keeps them); each task carries only the file
  name, the fold's row indices and the grid, and the worker reads the columns it needs from shared storage;
* ``arrays``: the features are in-memory numpy arrays in the client, so they are pickled into the tasks.

Bytes shipped are measured in the client process: every message it writes to the scheduler or a worker goes
through ``distributed.comm.tcp.TCP.write``, which returns the bytes put on the wire; the benchmark sums them
(and the frames it reads back). A warm-up sweep first lets the workers import cadx, so both modes start warm.
Wall times and a check that both give identical results to joblib's local processes are printed too.

Usage::

    python benchmarks/bench_dask.py [--workers 2] [--taps fc6,fc8]
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sweep import alexnet_tap_shapes, paper_labels, write_layers  # noqa: E402

from cadx.svm import sweep_layers  # noqa: E402
from tests.dask_cluster import dask_cluster  # noqa: E402


class _WireCounter:
    """Counts the bytes this process writes to / reads from Dask TCP comms (wraps TCP.write and TCP.read)."""

    def __init__(self) -> None:
        from distributed.comm import tcp

        self.sent = self.received = 0
        self._tcp, self._write, self._read = tcp, tcp.TCP.write, tcp.TCP.read
        counter = self

        async def write(comm, msg, serializers=None, on_error="message"):
            n = await counter._write(comm, msg, serializers=serializers, on_error=on_error)
            counter.sent += int(n)
            return n

        async def read(comm, deserializers=None):
            from dask.sizeof import sizeof

            msg = await counter._read(comm, deserializers=deserializers)
            counter.received += int(sizeof(msg))
            return msg

        tcp.TCP.write, tcp.TCP.read = write, read

    def close(self) -> None:
        self._tcp.TCP.write, self._tcp.TCP.read = self._write, self._read


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--taps", default="fc6,fc8")
    args = parser.parse_args(argv)
    widths = {t: int(np.prod(s)) for t, s in alexnet_tap_shapes().items() if t in args.taps.split(",")}
    y, lesions = paper_labels()
    with tempfile.TemporaryDirectory(prefix="cadx-dask-") as tmp:
        paths = write_layers(Path(tmp), widths, y, lesions)
        t0 = time.perf_counter()
        local = sweep_layers({t: str(p) for t, p in paths.items()}, y, lesions, n_jobs=args.workers)
        local_s = time.perf_counter() - t0
        print(f"joblib (loky, {args.workers} processes): {local_s:.1f} s; load average {os.getloadavg()[0]:.1f}")
        with dask_cluster(args.workers, workdir=Path(tmp) / "cluster") as address:
            os.environ["CADX_DASK_SCHEDULER"] = address
            first = next(iter(paths))
            sweep_layers({first: str(paths[first])}, y, lesions, grid={"gamma": [1e-3], "degree": [1]})  # warm-up
            wire = _WireCounter()
            for mode in ("files", "arrays"):
                sources = ({t: str(p) for t, p in paths.items()} if mode == "files"
                           else {t: np.load(p) for t, p in paths.items()})
                feature_bytes = sum(os.path.getsize(p) for p in paths.values())
                sent0, received0, t0 = wire.sent, wire.received, time.perf_counter()
                remote = sweep_layers(sources, y, lesions)
                seconds = time.perf_counter() - t0
                sent, received = wire.sent - sent0, wire.received - received0
                same = all(np.array_equal(local.layers[t].results[0].decision, remote.layers[t].results[0].decision)
                           for t in widths)
                n_tasks = 5 * len(widths)
                print(f"dask, features as {mode}: {seconds:.1f} s, client sent {sent / 2**20:.2f} MiB "
                      f"({sent / n_tasks / 2**10:.0f} KiB per fold task; the features are "
                      f"{feature_bytes / 2**20:.1f} MiB), received {received / 2**20:.2f} MiB; identical to joblib: "
                      f"{same}", flush=True)
            wire.close()
            del os.environ["CADX_DASK_SCHEDULER"]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
