"""Failure: work killed mid-way resumes from what was finished and leaves nothing half-written."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import UTC

import numpy as np
import pytest
from sqlalchemy import func, select

from cadx.workflows import import_demo, open_workspace
from cadx.workflows.features import extract_cnn_features, feature_store, resolve_backbone, roi_records
from cadx.workflows.jobs import get_job, list_jobs, submit_job
from db.models import Experiment, Job


def _extract_until_told(data_dir: str, first_chunk_committed) -> None:
    workspace = open_workspace(data_dir)
    loaded, _ = resolve_backbone("alexnet", weights="random")

    def hold(done, total, message):
        # Progress comes after the batch's rows reached the store, so at 4 ROIs the first chunk is committed.
        # Hold there until killed: the kill lands mid-way however fast or loaded the machine (no race with a poll).
        if done >= 4:
            first_chunk_committed.set()
            time.sleep(3600)

    extract_cnn_features(workspace, loaded, taps=["fc8"], batch_size=2, chunk_rows=4, progress=hold)


def _committed(workspace, loaded, hashes) -> int:
    missing = feature_store(workspace).missing(hashes, backbone=loaded.name, weights_sha256=loaded.weights.sha256,
                                               taps=["fc8"])
    return len(hashes) - len(missing)


@pytest.mark.slow
def test_killed_extraction_resumes_from_the_store(workspace_cache, tmp_path):
    data = tmp_path / "data"
    workspace = open_workspace(data)
    workspace_cache.fill(workspace, import_demo, n_lesions=8, seed=2)
    hashes = sorted({r.sha256 for r in roi_records(workspace, included_only=False)})
    loaded, _ = resolve_backbone("alexnet", weights="random")

    context = multiprocessing.get_context("spawn")
    first_chunk_committed = context.Event()
    process = context.Process(target=_extract_until_told, args=(str(data), first_chunk_committed))
    process.start()
    assert first_chunk_committed.wait(600), "the extraction never reached its first chunk"
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    done_before = _committed(workspace, loaded, hashes)
    assert done_before == 4 < len(hashes), "the kill lands after the first chunk of 4 ROIs"

    report = extract_cnn_features(workspace, loaded, taps=["fc8"])
    assert report.n_extracted == len(hashes) - done_before  # only the unfinished ROIs
    stored = feature_store(workspace).load("fc8", hashes, backbone=loaded.name, weights_sha256=loaded.weights.sha256)
    assert stored.shape == (len(hashes), 1000) and np.isfinite(stored).all()
    assert extract_cnn_features(workspace, loaded, taps=["fc8"]).n_extracted == 0


@pytest.mark.slow
def test_a_job_whose_worker_died_is_resumed_then_failed_and_no_experiment_is_half_written(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    job_id = submit_job(workspace, "experiment", {"backbone": "alexnet", "weights": "random",
                                                    "min_lesions_per_class_per_fold": 1}, user="alice")
    # a worker on another machine claimed it, then died: no heartbeat for long
    from datetime import datetime, timedelta

    from sqlalchemy import update

    for attempt in (1, 2, 3):
        with workspace.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                status="running", slot=0, worker="gone:1", worker_host="a-machine-that-is-gone", attempts=attempt,
                heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
        list_jobs(workspace)  # any look at the jobs notices the dead worker
        job = get_job(workspace, job_id)
        if attempt < 3:  # queued again for the next worker, which resumes it from its checkpoints
            assert job.status == "queued" and "queued again to resume" in job.message and job.slot is None
    assert job.status == "failed" and "submit it again" in job.error and "stopped 3 times" in job.error
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Experiment)) == 0
