"""A real multi-process Dask cluster on loopback for tests and benchmarks: ``dask scheduler`` and ``dask worker``
processes started as subprocesses (the same commands one runs on real machines), stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_command() -> list[str]:
    exe = Path(sys.executable).parent / "dask"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dask")
    if found:
        return [found]
    return [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def dask_cluster(n_workers: int = 2, *, workdir: Path, timeout: float = 120.0) -> Iterator[str]:
    """Start ``dask scheduler`` + ``n_workers`` ``dask worker`` processes (1 thread each) on free loopback ports;
    yield the scheduler address ``tcp://127.0.0.1:PORT``. The workers import cadx from this checkout."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workdir.mkdir(parents=True, exist_ok=True)
    dask = _dask_command()
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args: list[str], name: str) -> None:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen([*dask, *args], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], "scheduler")
        for i in range(n_workers):
            start(["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host",
                   "127.0.0.1", "--local-directory", str(workdir / f"worker{i}"), "--name", f"w{i}"], f"worker{i}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(n_workers, timeout=max(1.0, deadline - time.monotonic()))
                break
            except (OSError, TimeoutError) as error:
                dead = [p.args for p in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    text = "\n".join((workdir / f).read_text(errors="replace")[-2000:]
                                     for f in os.listdir(workdir) if f.endswith(".log"))
                    raise RuntimeError(f"the Dask cluster did not start ({error}); exited: {dead}\n{text}") from error
                time.sleep(1.0)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for log in logs:
            log.close()
