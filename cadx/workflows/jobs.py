"""Background jobs: long work (CNN extraction, analytic features, experiments) runs in a worker process, outside
the app's script runs, and records its progress in the database. A browser refresh, another user or a closed tab
does not stop it; every page reads the same job rows.

The worker is ``cadx worker``; the app starts one when jobs are queued and none is alive (``ensure_worker``).
Claiming a job is one conditional UPDATE, so two workers never run the same job. A job whose worker died is marked
failed; rerunning it resumes from the feature store (finished ROIs are not recomputed).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select, update

from cadx.errors import CadxError, CadxInputError
from cadx.workflows.workspace import Workspace
from db.models import Job

__all__ = ["JOB_KINDS", "submit_job", "cancel_job", "list_jobs", "get_job", "run_next_job", "run_worker",
           "ensure_worker", "JobCancelled"]

JOB_KINDS = ("extract", "features", "experiment")
_HEARTBEAT_S = 2.0
_STALE_S = 120.0
_PID_FILE = "worker.pid"


class JobCancelled(CadxError):
    """The job was cancelled by a user while it ran."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def submit_job(workspace: Workspace, kind: str, params: dict[str, Any], *, user: str) -> int:
    """Queue a job; returns its id. ``params`` are those of the matching workflow (see ``_run_job``)."""
    if kind not in JOB_KINDS:
        raise CadxInputError("job kind", f"unknown job kind {kind!r}", f"use one of {list(JOB_KINDS)}")
    with workspace.sessions.begin() as session:
        job = Job(kind=kind, params=params, status="queued", created_by=user, message="queued")
        session.add(job)
        session.flush()
        return job.id


def cancel_job(workspace: Workspace, job_id: int, *, user: str) -> bool:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    with workspace.sessions.begin() as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
            .values(status="cancelled", message=f"cancelled by {user}", finished_at=_now())
        )
        return result.rowcount == 1


def get_job(workspace: Workspace, job_id: int) -> Job | None:
    with workspace.sessions() as session:
        return session.get(Job, job_id)


def list_jobs(workspace: Workspace, *, limit: int = 20) -> list[Job]:
    _fail_stale(workspace)
    with workspace.sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def _fail_stale(workspace: Workspace) -> None:
    cutoff = _now() - timedelta(seconds=_STALE_S)
    with workspace.sessions.begin() as session:
        session.execute(
            update(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)
            .values(status="failed", finished_at=_now(),
                    error="the worker stopped while running this job; submit it again to resume "
                          "(finished ROIs are kept in the feature store)")
        )


def _claim(workspace: Workspace, worker: str) -> Job | None:
    with workspace.sessions() as session:
        candidate = session.scalar(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(1))
    if candidate is None:
        return None
    with workspace.sessions.begin() as session:
        claimed = session.execute(
            update(Job).where(Job.id == candidate, Job.status == "queued")
            .values(status="running", worker=worker, started_at=_now(), heartbeat_at=_now(), message="started")
        ).rowcount
    return get_job(workspace, candidate) if claimed == 1 else None


class _Reporter:
    """A progress callback that writes to the job row (throttled) and notices cancellation."""

    def __init__(self, workspace: Workspace, job_id: int) -> None:
        self._workspace = workspace
        self._job_id = job_id
        self._last = 0.0

    def __call__(self, done: int, total: int | None, message: str) -> None:
        now = time.monotonic()
        if now - self._last < _HEARTBEAT_S and (total is None or done < total):
            return
        self._last = now
        with self._workspace.sessions.begin() as session:
            updated = session.execute(
                update(Job).where(Job.id == self._job_id, Job.status == "running")
                .values(progress_done=int(done), progress_total=None if total is None else int(total),
                        message=message[:250], heartbeat_at=_now())
            ).rowcount
        if updated == 0:
            raise JobCancelled(f"job {self._job_id} was cancelled")


def _run_job(workspace: Workspace, job: Job, progress: _Reporter) -> tuple[str, int | None]:
    from cadx.workflows.features import compute_analytic_features, extract_cnn_features, resolve_backbone

    params = dict(job.params)
    if job.kind == "features":
        report = compute_analytic_features(workspace, progress=progress)
        return f"{report.n_computed} ROIs analysed ({report.n_failed} failed segmentations)", None
    loaded, note = resolve_backbone(params.get("backbone"), weights=params.get("weights", "default"),
                                    weights_path=params.get("weights_path"))
    if job.kind == "extract":
        report = extract_cnn_features(workspace, loaded, taps=params.get("taps"), progress=progress)
        return f"{report.n_extracted} of {report.n_rois} ROIs extracted with {report.weights_name}. {note}", None
    from cadx.workflows.experiments import ExperimentSettings, run_experiment

    settings = ExperimentSettings(
        taps=None if params.get("taps") is None else tuple(params["taps"]),
        ensemble_tap=params.get("ensemble_tap"), analytic=params.get("analytic", True),
        n_folds=params.get("n_folds"), seed=params.get("seed", 0), repeats=params.get("repeats", ExperimentSettings.repeats),
        cohort=params.get("cohort"),
        # the app never sets this; tests and scripts may lower the guard rail for tiny sets (the record keeps it)
        min_lesions_per_class_per_fold=params.get("min_lesions_per_class_per_fold"),
    )
    experiment_id = run_experiment(workspace, loaded, settings, name=params.get("name") or f"job {job.id}",
                                   user=job.created_by, weights_note=note, progress=progress)
    return f"experiment {experiment_id} done. {note}", experiment_id


def run_next_job(workspace: Workspace, *, worker: str | None = None) -> int | None:
    """Claim and run the oldest queued job; returns its id (None when the queue is empty)."""
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    job = _claim(workspace, worker)
    if job is None:
        return None
    reporter = _Reporter(workspace, job.id)
    try:
        message, experiment_id = _run_job(workspace, job, reporter)
    except JobCancelled:
        return job.id
    except Exception as exc:  # a job's failure is recorded on the job, never lost in a worker's log
        detail = str(exc) if isinstance(exc, CadxError) else "".join(traceback.format_exception(exc))[-4000:]
        with workspace.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job.id, Job.status == "running")
                            .values(status="failed", error=detail, finished_at=_now(), message="failed"))
        return job.id
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job.id, Job.status == "running")
                        .values(status="done", message=message[:250], experiment_id=experiment_id,
                                finished_at=_now(),
                                progress_done=func.coalesce(Job.progress_total, Job.progress_done)))
    return job.id


def run_worker(workspace: Workspace, *, poll_seconds: float = 1.0, idle_exit_seconds: float | None = None) -> None:
    """Run queued jobs one after another; with ``idle_exit_seconds``, stop after that long without work."""
    pid_file = workspace.data_dir / _PID_FILE
    pid_file.write_text(str(os.getpid()))
    idle_since = time.monotonic()
    try:
        while True:
            _fail_stale(workspace)
            if run_next_job(workspace) is not None:
                idle_since = time.monotonic()
                continue
            if idle_exit_seconds is not None and time.monotonic() - idle_since > idle_exit_seconds:
                return
            time.sleep(poll_seconds)
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)


def _worker_alive(workspace: Workspace) -> bool:
    pid_file = workspace.data_dir / _PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def ensure_worker(workspace: Workspace) -> bool:
    """Start a background worker for this workspace when none is alive; True when one was started."""
    if _worker_alive(workspace):
        return False
    env = dict(os.environ, CADX_DATA_DIR=str(workspace.data_dir),
               CADX_DATABASE_URL=workspace.engine.url.render_as_string(hide_password=False))
    log = open(workspace.data_dir / "worker.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cadx.cli", "worker", "--idle-exit", "600"],
        env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    (workspace.data_dir / _PID_FILE).write_text(str(process.pid))
    return True
