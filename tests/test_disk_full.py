"""A full disk during CNN extraction: refused before with the figures, or a clear error; never SIGBUS (memory-mapped
writes into a sparse file on a full disk used to kill the process with exit status 135 and no message) and never a
``.tmp-*`` folder left behind. The backup and report cases are in tests/test_backup.py and tests/test_report.py.

Each runs on a small tmpfs the test mounts (tests/small_fs.py); the writes run in a spawned process or a CLI
subprocess, so that the old SIGBUS shows as an exit status instead of killing pytest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cadx.workflows import import_demo, open_workspace
from tests.small_fs import nearly_full_fs
from tests.spawned import extract_and_stop, store_features_into

REPO = Path(__file__).resolve().parents[1]


def _spawn(target, *args) -> int | None:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(timeout=300)  # a limit for a loaded machine, not a measurement
    return process.exitcode


@pytest.mark.slow
def test_a_full_disk_while_writing_features_is_an_error_and_leaves_no_temporary_folder(tmp_path):
    with nearly_full_fs(tmp_path / "full", free_bytes=64 * 1024) as full:
        result = tmp_path / "result.json"
        exit_code = _spawn(store_features_into, str(full / "features"), 100, 1024, str(result))  # 400 KB
        assert exit_code == 0, f"the writer died with exit code {exit_code} (-7: SIGBUS)"
        outcome = json.loads(result.read_text())
        assert outcome["outcome"] == "OSError" and outcome["errno"] == 28, outcome  # ENOSPC, a catchable error
        assert outcome["filename"].endswith("fc8.npy")
        assert not [p for p in (full / "features").rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_extract_refuses_what_cannot_fit_with_the_figures(workspace_cache, tmp_path):
    data, _ = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)
    with nearly_full_fs(data / "features", free_bytes=64 * 1024) as features:
        done = subprocess.run([sys.executable, "-m", "cadx.cli", "extract", "--backbone", "alexnet", "--weights",
                               "random", "--data-dir", str(data)], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
        output = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 2, f"exit {done.returncode} (135 or -7: SIGBUS): {output[-500:]}"
        # 8 ROIs x 3,066,272 bytes (AlexNet's 11 taps, float32) = 24.5 MB, on a file system with 64 KB left
        assert ("storing the alexnet features of 8 ROIs (11 taps, 3,066,272 bytes per ROI) needs about 24.5 MB, and "
                "only 0.1 MB are free there; nothing was written") in output, output[-600:]
        assert "Traceback" not in output
        assert not [p for p in features.rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_opening_removes_the_temporary_chunk_of_a_killed_extraction(workspace_cache, tmp_path):
    data, _ = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)
    reached = tmp_path / "reached"
    process = multiprocessing.get_context("spawn").Process(target=extract_and_stop, args=(str(data), str(reached)))
    process.start()
    deadline = time.monotonic() + 300  # a limit for a loaded machine, not a measurement
    while not reached.exists() and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reached.exists(), f"the extraction never got to its first batch (exit code {process.exitcode})"
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert list(data.glob("features/*/*/*/chunks/.tmp-*")), "the kill must land while a chunk is open"
    workspace = open_workspace(data)
    assert not list(data.glob("features/*/*/*/chunks/.tmp-*"))
    assert workspace.collected is not None and workspace.collected.temporaries
    workspace.engine.dispose()
