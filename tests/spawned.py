"""What the multi-process tests run in their spawned processes: each is a second app server, worker or CLI command
working on the same workspace at the same moment.

A spawned process imports the module of the function it runs. These functions therefore live here, in a module that
imports only what they use, and not in the test modules: importing a whole test module cost every spawned process
2 to 5 s of CPU (measured: `python -X importtime -c "import tests.test_jobs"`), more than the work itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "claim_a_job",
    "compute_analytic_features_in",
    "first_pseudonym_key",
    "open_and_count_tables",
    "restore_and_stop_at",
    "review_one_roi",
    "start_together",
    "store_features_into",
    "extract_and_stop",
    "upload_one_case",
]

_START_TIMEOUT_S = 600  # only a process that died before the start makes the others wait this long

_barrier: Any = None


def start_together(barrier: Any) -> None:
    """Pool initializer: every process of the pool waits at ``barrier`` (a ``multiprocessing`` Barrier for as many
    parties as the pool has processes) before its work, so they all start it at the same moment however long each
    took to import and connect (a fixed start time would depend on the machine's speed)."""
    global _barrier
    _barrier = barrier


def _wait_for_the_others() -> None:
    _barrier.wait(timeout=_START_TIMEOUT_S)


def claim_a_job(data_dir: str, url: str, limit: int) -> tuple[int, int] | None:
    """Claim the oldest queued job with at most ``limit`` run slots, at the same moment as the pool's other processes
    (see :func:`start_together`); returns (job id, slot), or None."""
    from cadx.workflows import jobs, open_workspace

    os.environ["CADX_MAX_PARALLEL_JOBS"] = str(limit)
    workspace = open_workspace(data_dir, url)
    _wait_for_the_others()
    job = jobs._claim(workspace, jobs._identity())
    workspace.engine.dispose()
    return None if job is None else (job.id, job.slot)


def upload_one_case(args: tuple[str, str, bytes]) -> str:
    """Upload the DICOM bytes as lesion L1 of patient P1; returns "committed:status,..." of the import report."""
    from cadx.workflows import import_upload, open_workspace

    data_dir, url, data = args
    workspace = open_workspace(data_dir, url)
    try:
        report = import_upload(workspace, data, filename="a.dcm", patient="P1", lesion="L1", label="benign",
                               centre_rc=(300.0, 260.5), user="reviewer")
        return f"{report.committed}:" + ",".join(item.status for item in report.items)
    finally:
        workspace.engine.dispose()


def compute_analytic_features_in(args: tuple[str, str]) -> int:
    """Compute the analytic features of the workspace (as `cadx features` does); returns its number of ROIs."""
    from cadx.workflows import open_workspace
    from cadx.workflows.features import compute_analytic_features

    workspace = open_workspace(*args)
    try:
        return compute_analytic_features(workspace).n_rois
    finally:
        workspace.engine.dispose()


def first_pseudonym_key(data_dir: str) -> bytes:
    """The workspace's pseudonym key, created by whichever process asks first."""
    from cadx.workflows.workspace import Workspace

    return Workspace(data_dir=Path(data_dir), engine=None, sessions=None).pseudonym_key()


def open_and_count_tables(args: tuple[str, str]) -> int:
    """Open (and so create or migrate) the workspace's database; returns how many tables it has."""
    from sqlalchemy import inspect

    from cadx.workflows import open_workspace

    data_dir, url = args
    workspace = open_workspace(data_dir, url)
    try:
        return len(inspect(workspace.engine).get_table_names())
    finally:
        workspace.engine.dispose()


def review_one_roi(data_dir: str, database_url: str, worker: int, rounds: int, barrier: Any) -> None:
    """One reviewer process deciding on ROI 1 ``rounds`` times, alternately excluding and including it; it starts
    when every process has opened the database (they all wait at ``barrier``)."""
    from cadx.workflows import exclude_roi, include_roi, open_workspace

    workspace = open_workspace(data_dir, database_url)
    barrier.wait(timeout=_START_TIMEOUT_S)
    for k in range(rounds):
        if (worker + k) % 2:
            exclude_roi(workspace, 1, reason="location_marker", user=f"process-{worker}", note=f"round {k}")
        else:
            include_roi(workspace, 1, user=f"process-{worker}", note=f"round {k}")
    workspace.engine.dispose()


def restore_and_stop_at(data_dir: str, url: str, backup: str, key_file: str, step: str, reached: str) -> None:
    """Restore ``backup`` into the workspace and stop for good at the first progress message ``step``, after creating
    the file ``reached`` (the test kills the process there, a state it waits for, not a time)."""
    import threading

    from cadx.workflows import open_workspace
    from cadx.workflows.backup import load_backup_key, restore_workspace

    def progress(done: int, total: int, message: str) -> None:
        if message == step:
            Path(reached).touch()
            threading.Event().wait()  # until killed

    workspace = open_workspace(data_dir, url)
    restore_workspace(workspace, backup, key=load_backup_key(key_file), progress=progress)


def store_features_into(root: str, n_rows: int, n_features: int, result: str) -> None:
    """Store ``n_rows`` made-up feature rows in a FeatureStore at ``root``; writes what happened (``stored`` or the
    error's class, errno and file name) to the file ``result`` (a process killed by a signal writes nothing)."""
    import json

    import numpy as np

    from cadx.cnn import FeatureStore

    hashes = [f"{i:064x}" for i in range(n_rows)]
    try:
        FeatureStore(root).write(hashes, {"fc8": np.ones((n_rows, n_features), np.float32)}, backbone="alexnet",
                                 weights_sha256="ab" * 32)
        outcome: dict[str, Any] = {"outcome": "stored"}
    except OSError as exc:
        outcome = {"outcome": type(exc).__name__, "errno": exc.errno, "filename": exc.filename}
    Path(result).write_text(json.dumps(outcome))


def extract_and_stop(data_dir: str, reached: str) -> None:
    """Extract AlexNet's fc8 (random weights) of the workspace's ROIs, and stop for good after the first batch went
    into the feature store's open chunk, after creating the file ``reached`` (the test kills the process there)."""
    import threading

    from cadx.workflows import open_workspace
    from cadx.workflows.features import extract_cnn_features, resolve_backbone

    def progress(done: int, total: int, message: str) -> None:
        if done > 0:
            Path(reached).touch()
            threading.Event().wait()  # until killed

    workspace = open_workspace(data_dir)
    loaded, _ = resolve_backbone("alexnet", weights="random")
    extract_cnn_features(workspace, loaded, taps=["fc8"], batch_size=2, chunk_rows=64, progress=progress)
