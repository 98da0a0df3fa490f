"""Background jobs: long work (CNN extraction, analytic features, experiments) runs in a worker process, outside
the app's script runs, and records its progress in the database. A browser refresh, another user or a closed tab
does not stop it; every page reads the same job rows.

The worker is ``cadx worker``; the app starts workers when jobs are queued and too few are alive
(``ensure_worker``). Jobs run in the order they were queued (FIFO), at most ``CADX_MAX_PARALLEL_JOBS`` (default 1)
at once: a running job holds one of that many run *slots* (a unique column), so claiming a job is one conditional
UPDATE that either takes the oldest queued job and a free slot or changes nothing, whatever the number of workers
and processes, on SQLite and PostgreSQL alike.

**Liveness comes from heartbeats, never from a lack of progress.** While a job runs, a thread of its worker
process writes a heartbeat to the job row every ``CADX_JOB_HEARTBEAT_SECONDS`` (5), whatever the computation is
doing; the row also holds the worker's host, PID and process start time. A running job is taken from its worker
only when the worker is gone: no heartbeat for ``CADX_JOB_STALE_SECONDS`` (300) *and*, on the same host, no
process with that PID and start time (a reused PID is another process). On another host only the heartbeat counts.
A job whose worker is gone is queued again and resumed by the next worker (``attempts`` counts the claims): its
finished units of work are checkpointed in ``job_checkpoints`` (one row per tap, seed and outer fold, see
``JobCheckpoints``), and so is the output of a finished stage that nothing else keeps (an experiment's statistics),
so only the unfinished work is done again and the results equal those of an uninterrupted run. After
``_MAX_ATTEMPTS`` claims the job is failed with the reason; submitting the same job again (or ``retry_job``)
resumes it from its checkpoints.

**A stopped worker is not a dead one.** On SIGTERM (``docker stop``; the app forwards it to its data directory's
workers when its server stops, ``stop_workers``) a worker stops at the next unit boundary (its next progress
report, where cancellation is noticed too), queues its job again with the claim not counted and exits 0; the job
shows as queued ("interrupted ... resumes from N finished units") and the next worker resumes it.
"""

from __future__ import annotations

import os
import select as _select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import psutil
from sqlalchemy import Select, delete, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from cadx.errors import CadxError, CadxInputError
from cadx.planning import EtaSmoother, TimeRange
from cadx.private import open_private, write_private
from cadx.records import experiment_name
from cadx.workflows.workspace import Workspace
from db.models import Job, JobCheckpoint

__all__ = ["JOB_KINDS", "submit_job", "cancel_job", "retry_job", "list_jobs", "get_job", "job_history",
           "run_next_job", "run_worker", "ensure_worker", "kept_work", "reap_dead_jobs", "max_parallel_jobs",
           "JobCancelled", "JobCheckpoints", "JobView", "JobInterrupted", "stop_workers"]

JOB_KINDS = ("extract", "features", "experiment", "permutation")
_PID_FILE = "worker.pid"
_MAX_ATTEMPTS = 3
_PID_START_TOLERANCE_S = 1.0  # process start times are recorded to clock ticks
_PROGRESS_WRITE_S = 2.0  # progress is written to the job row at most this often (and at the end)
_STAGE = "stage"  # checkpoint rows "stage:<name>" hold a whole stage's output (JobCheckpoints.load_stage)
_NO_ETA: dict[str, Any] = dict(eta_seconds=None, eta_low_seconds=None, eta_high_seconds=None)  # not running
T = TypeVar("T")


class JobCancelled(CadxError):
    """The job was cancelled by a user (or taken over after its worker was thought gone) while it ran."""


class JobInterrupted(CadxError):
    """The worker was asked to stop (SIGTERM) while the job ran: the job is queued again, to be resumed."""


def _now() -> datetime:
    return datetime.now(UTC)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CadxInputError(name, f"not a number: {raw!r}",
                             f"set {name} to a number of seconds, e.g. {default:g}") from None
    if value <= 0:
        raise CadxInputError(name, f"must be positive, got {raw!r}", f"set {name} to e.g. {default:g}")
    return value


def _heartbeat_seconds() -> float:
    return _env_float("CADX_JOB_HEARTBEAT_SECONDS", 5.0)


def _stale_seconds() -> float:
    return _env_float("CADX_JOB_STALE_SECONDS", 300.0)


def max_parallel_jobs() -> int:
    """``CADX_MAX_PARALLEL_JOBS``: how many jobs may run at once in this workspace (default 1)."""
    raw = os.environ.get("CADX_MAX_PARALLEL_JOBS", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise CadxInputError("CADX_MAX_PARALLEL_JOBS", f"must be a whole number >= 1, got {raw!r}",
                             "set it to 1 (one job at a time) or more")
    return int(raw)


# ------------------------------------------------------------------------------------------ worker identity ---
@dataclass(frozen=True)
class _Identity:
    host: str
    pid: int
    started: float  # the process's start time (seconds since the epoch)

    @property
    def label(self) -> str:
        return f"{self.host[:40]}:{self.pid}"


def _updated(session: Session, statement: Executable) -> int:
    """How many rows an UPDATE changed (its ``rowcount``)."""
    return int(cast("CursorResult[Any]", session.execute(statement)).rowcount)


def _process_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError):
        return None


def _identity() -> _Identity:
    return _Identity(socket.gethostname(), os.getpid(), _process_start(os.getpid()) or 0.0)


def _process_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs on this host (not a reused PID)."""
    if not pid:
        return False
    start = _process_start(int(pid))
    if start is None:
        return False
    try:
        if psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return started is None or abs(start - float(started)) <= _PID_START_TOLERANCE_S


def _worker_gone(job: Job, now: datetime) -> bool:
    """A job's worker is gone when its heartbeat is older than the stale limit and, on this host, its process
    (PID and start time) no longer exists. Elsewhere the heartbeat alone decides."""
    beat = job.heartbeat_at
    if beat is not None and beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    if beat is not None and now - beat < timedelta(seconds=_stale_seconds()):
        return False
    if job.worker_host == socket.gethostname():
        return not _process_alive(job.worker_pid, job.worker_started)
    return True


# -------------------------------------------------------------------------------------------------- queries ---
def submit_job(workspace: Workspace, kind: str, params: dict[str, Any], *, user: str) -> int:
    """Queue a job; returns its id. ``params`` are those of the matching workflow (see ``_run_job``)."""
    if kind not in JOB_KINDS:
        raise CadxInputError("job kind", f"unknown job kind {kind!r}", f"use one of {list(JOB_KINDS)}")
    if kind == "experiment" and params.get("name") is not None:  # refused now, not when the sweep has run
        params = {**params, "name": experiment_name(params["name"])}
    with workspace.sessions.begin() as session:
        job = Job(kind=kind, params=params, status="queued", created_by=user, message="queued")
        session.add(job)
        session.flush()
        return job.id


def cancel_job(workspace: Workspace, job_id: int, *, user: str) -> bool:
    """Cancel a queued or running job (a running one stops at its next progress report; its run slot is freed
    then, or by ``reap_dead_jobs`` if its worker is gone)."""
    with workspace.sessions.begin() as session:
        result = _updated(
            session, update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
            .values(status="cancelled", message=f"cancelled by {user}", finished_at=_now(), **_NO_ETA)
        )
        return result == 1


def retry_job(workspace: Workspace, job_id: int, *, user: str) -> bool:
    """Queue a failed or cancelled job again; it resumes from its checkpoints (finished folds are not redone)."""
    with workspace.sessions.begin() as session:
        result = _updated(
            session, update(Job).where(Job.id == job_id, Job.status.in_(("failed", "cancelled")), Job.slot.is_(None))
            .values(status="queued", message=f"queued again by {user} (resumes from its checkpoints)",
                    error=None, finished_at=None, attempts=0, **_NO_ETA)
        )
        return result == 1


def get_job(workspace: Workspace, job_id: int) -> Job | None:
    with workspace.sessions() as session:
        return session.get(Job, job_id)


def list_jobs(workspace: Workspace, *, limit: int = 20) -> list[Job]:
    """The newest jobs first (any look at the jobs also requeues those whose worker is gone)."""
    reap_dead_jobs(workspace)
    with workspace.sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


@dataclass(frozen=True)
class JobView:
    """One row of the job history, as every page shows it."""

    id: int
    kind: str
    name: str
    status: str
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None  # running: so far; finished: start to end
    fraction: float  # work done, 0..1
    eta_seconds: float | None
    message: str
    error: str | None
    attempts: int
    experiment_id: int | None
    queue_position: int | None  # 1 = next to start
    eta_low_seconds: float | None = None  # the range of the smoothed ETA (cadx.planning.EtaSmoother)
    eta_high_seconds: float | None = None

    @property
    def eta(self) -> TimeRange | None:
        """The time left with its range, while running and once estimated."""
        if self.eta_seconds is None:
            return None
        low = self.eta_seconds if self.eta_low_seconds is None else self.eta_low_seconds
        high = self.eta_seconds if self.eta_high_seconds is None else self.eta_high_seconds
        return TimeRange(self.eta_seconds, low, high)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: datetime | None) -> datetime | None: ...
def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def job_history(workspace: Workspace, *, limit: int = 50, kind: str | None = None) -> list[JobView]:
    """Jobs newest first with who, when, how long, how far, the ETA and, for a failed job, its error."""
    jobs = list_jobs(workspace, limit=limit)
    if kind is not None:
        jobs = [j for j in jobs if j.kind == kind]
    queued = sorted(j.id for j in jobs if j.status == "queued")
    now = _now()
    views = []
    for j in jobs:
        started, finished = _aware(j.started_at), _aware(j.finished_at)
        seconds = None
        if started is not None:
            seconds = ((finished or now) - started).total_seconds() if j.status != "queued" else None
        fraction = 1.0 if j.status == "done" else (j.progress_done / j.progress_total if j.progress_total else 0.0)
        views.append(JobView(
            id=j.id, kind=j.kind, name=str((j.params or {}).get("name") or j.kind), status=j.status,
            created_by=j.created_by, created_at=_aware(j.created_at), started_at=started, finished_at=finished,
            seconds=seconds, fraction=min(max(fraction, 0.0), 1.0),
            eta_seconds=j.eta_seconds if j.status == "running" else None, message=j.message, error=j.error,
            attempts=j.attempts, experiment_id=j.experiment_id,
            queue_position=queued.index(j.id) + 1 if j.id in queued else None,
            eta_low_seconds=j.eta_low_seconds if j.status == "running" else None,
            eta_high_seconds=j.eta_high_seconds if j.status == "running" else None))
    return views


def kept_work(workspace: Workspace, job_id: int) -> str:
    """What a job's checkpoints keep now, e.g. ``"3 finished units and the statistics stage"`` (a cancelled or
    failed job resumes from them: ``retry_job``)."""
    with workspace.sessions() as session:
        return _kept_work(session, job_id)


def _kept_work(session: Session, job_id: int) -> str:
    """What a job's checkpoints keep, e.g. ``"3 finished units and the statistics stage"``."""
    kept = list(session.scalars(select(JobCheckpoint.unit).where(JobCheckpoint.job_id == job_id)))
    stages = sorted(u.split(":", 1)[1] for u in kept if u.startswith(f"{_STAGE}:"))
    return f"{len(kept) - len(stages)} finished units" + (
        f" and the {', '.join(stages)} stage{'s' if len(stages) > 1 else ''}" if stages else "")


def reap_dead_jobs(workspace: Workspace) -> list[int]:
    """Requeue running jobs whose worker is gone (failed after ``_MAX_ATTEMPTS`` claims) and free the run slots
    of stopped jobs whose worker is gone; returns the ids of the jobs taken from dead workers."""
    now = _now()
    cutoff = now - timedelta(seconds=_stale_seconds())
    with workspace.sessions() as session:
        suspects = list(session.scalars(select(Job).where(
            Job.slot.is_not(None) | (Job.status == "running"),
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))))
    taken = []
    for job in suspects:
        if not _worker_gone(job, now):
            continue
        same = (Job.id == job.id, Job.heartbeat_at == job.heartbeat_at if job.heartbeat_at is not None
                else Job.heartbeat_at.is_(None), Job.status == job.status)
        with workspace.sessions.begin() as session:
            if job.status != "running":
                session.execute(update(Job).where(*same).values(slot=None))
                continue
            n_done = _kept_work(session, job.id)
            since = "" if job.heartbeat_at is None else \
                f", no heartbeat since {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
            if job.attempts >= _MAX_ATTEMPTS:
                values = dict(status="failed", finished_at=now, **_NO_ETA, message="failed",
                              error=f"the worker running this job stopped {job.attempts} times (last: {job.worker}"
                                    f"{since}); {n_done} are kept: submit it again (Retry) to "
                                    "resume from them")
            else:
                values = dict(status="queued", **_NO_ETA,
                              message=f"worker {job.worker} stopped{since}; queued again to resume from {n_done}")
            changed = _updated(session, update(Job).where(*same).values(slot=None, worker=None, **values))
        if changed == 1:
            taken.append(job.id)
    return taken


def _claim(workspace: Workspace, me: _Identity) -> Job | None:
    """Take the oldest queued job and a free run slot in one conditional UPDATE (atomic across processes)."""
    limit = max_parallel_jobs()
    for _ in range(20):
        with workspace.sessions() as session:
            candidate = session.scalar(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(1))
            used = set(session.scalars(select(Job.slot).where(Job.slot.is_not(None))))
        if candidate is None:
            return None
        free = [k for k in range(limit) if k not in used]
        if not free:
            return None
        now = _now()
        try:
            with workspace.sessions.begin() as session:
                claimed = _updated(session,
                    update(Job).where(Job.id == candidate, Job.status == "queued")
                    .values(status="running", slot=free[0], worker=me.label, worker_host=me.host,
                            worker_pid=me.pid, worker_started=me.started, started_at=func.coalesce(Job.started_at, now),
                            heartbeat_at=now, attempts=Job.attempts + 1, **_NO_ETA,
                            message="started")
                )
        except IntegrityError:  # another process took that slot at the same moment: look again
            continue
        if claimed == 1:
            return get_job(workspace, candidate)
    return None


# -------------------------------------------------------------------------------------------- checkpoints ---
class JobCheckpoints:
    """The finished work of one job, in ``job_checkpoints``: *units* (one tap, seed and outer fold each) and whole
    *stage outputs* (e.g. an experiment's statistics).

    ``scoped(scope, stage)`` gives the store of units that ``cadx.svm.sweep_layers`` / ``cross_validate_by_lesion``
    read and write (``load(unit)``, ``save(unit, bytes)``, ``units()``); ``load_stage`` / ``save_stage`` keep one
    stage's output (bytes the caller serializes and validates; rows ``stage:<name>``). ``scope`` is a SHA-256 of
    everything the numbers depend on (the experiment config, the cohort's ROIs with their labels, lesions and
    patients, the code version): nothing is ever restored into a run with another scope. Rows of this job with
    another scope (the data changed since) are deleted; a job submitted again with the same scope also restores
    the checkpoints of earlier unfinished jobs (failed or cancelled), so "submit again to resume" holds."""

    def __init__(self, workspace: Workspace, job_id: int, *, worker: str | None = None) -> None:
        self._workspace = workspace
        self.job_id = job_id
        self._worker = worker
        self.restored = 0  # units this run took from checkpoints (not computed again)
        self.computed = 0  # units this run computed and saved
        self.restored_stages: list[str] = []  # stages whose output this run took from checkpoints

    def resume_note(self) -> str | None:
        """``"resumed: R of N units restored from checkpoints, C computed"`` (and ``"; stages restored:
        statistics"`` when a stage's output was restored) when this run restored anything, else None (the job's
        final message starts with it, so every page shows what a resumed job redid)."""
        if not self.restored and not self.restored_stages:
            return None
        note = (f"resumed: {self.restored} of {self.restored + self.computed} units restored from checkpoints, "
                f"{self.computed} computed")
        if self.restored_stages:
            note += f"; stages restored: {', '.join(self.restored_stages)}"
        return note

    def load_stage(self, scope: str, stage: str, read: Callable[[bytes], T]) -> T | None:
        """The output of ``stage`` kept under ``scope`` (by this job or an unfinished earlier one), read by
        ``read(payload)``; None when there is none. A payload ``read`` refuses (``CadxInputError``) is deleted and
        None returned: the stage is computed again, never restored half-read."""
        store = self.scoped(scope, _STAGE)
        payload = store._fetch(stage)
        if payload is None:
            return None
        try:
            value = read(payload)
        except CadxInputError as exc:
            print(f"cadx worker: job {self.job_id}: the checkpoint of stage {stage!r} is unreadable ({exc}); "
                  "computing it again", file=sys.stderr)
            store._discard(stage)
            return None
        self.restored_stages.append(stage)
        return value

    def save_stage(self, scope: str, stage: str, payload: bytes) -> None:
        """Keep the output of ``stage`` that this run computed, under ``scope``."""
        self.scoped(scope, _STAGE)._insert(stage, payload)

    def scoped(self, scope: str, stage: str) -> _ScopedCheckpoints:
        with self._workspace.sessions.begin() as session:
            session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == self.job_id,
                                                        JobCheckpoint.scope != scope))
        return _ScopedCheckpoints(self, scope, stage)


class _ScopedCheckpoints:
    def __init__(self, owner: JobCheckpoints, scope: str, stage: str) -> None:
        self._owner, self._scope, self._prefix = owner, scope, f"{stage}:"

    def _query(self, *columns: Any) -> Select[Any]:
        reusable = select(Job.id).where(or_(Job.id == self._owner.job_id,
                                            Job.status.in_(("failed", "cancelled"))))
        return select(*columns).where(JobCheckpoint.scope == self._scope, JobCheckpoint.job_id.in_(reusable))

    def units(self) -> set[str]:
        with self._owner._workspace.sessions() as session:
            rows = session.scalars(self._query(JobCheckpoint.unit)
                                   .where(JobCheckpoint.unit.startswith(self._prefix, autoescape=True)))
            return {u[len(self._prefix):] for u in rows}

    def load(self, unit: str) -> bytes | None:
        """A unit kept earlier (counted as restored), or None."""
        payload = self._fetch(unit)
        if payload is not None:
            self._owner.restored += 1
        return payload

    def _fetch(self, unit: str) -> bytes | None:
        with self._owner._workspace.sessions() as session:
            rows = session.execute(self._query(JobCheckpoint.job_id, JobCheckpoint.payload)
                                   .where(JobCheckpoint.unit == self._prefix + unit)).all()
        if not rows:
            return None
        own = [p for j, p in rows if j == self._owner.job_id]
        payload: bytes = own[0] if own else rows[0][1]
        if not own:  # copy it to this job, so this job's rows alone show what it has
            self._insert(unit, payload)
        return payload

    def _discard(self, unit: str) -> None:
        with self._owner._workspace.sessions.begin() as session:
            session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == self._owner.job_id,
                                                        JobCheckpoint.unit == self._prefix + unit))

    def save(self, unit: str, payload: bytes) -> None:
        """Keep a unit this run computed."""
        self._owner.computed += 1
        self._insert(unit, payload)

    def _insert(self, unit: str, payload: bytes) -> None:
        try:
            with self._owner._workspace.sessions.begin() as session:
                session.execute(insert(JobCheckpoint).values(
                    job_id=self._owner.job_id, scope=self._scope, unit=self._prefix + unit, payload=payload,
                    worker=self._owner._worker, created_at=_now()))
        except IntegrityError:  # already saved (the same unit finished twice): keep the first
            pass


# ----------------------------------------------------------------------------------------------- running ---
class _Heartbeat:
    """A daemon thread writing the job's heartbeat every few seconds, independent of the job's progress."""

    def __init__(self, workspace: Workspace, job_id: int, me: _Identity) -> None:
        self._workspace, self._job_id, self._me = workspace, job_id, me
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cadx-heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        interval = _heartbeat_seconds()
        while not self._stop.wait(interval):
            try:
                with self._workspace.sessions.begin() as session:
                    session.execute(update(Job).where(Job.id == self._job_id, Job.worker == self._me.label)
                                    .values(heartbeat_at=_now()))
            except Exception as exc:  # a database hiccup must not kill the thread; the next beat retries
                print(f"cadx worker: heartbeat of job {self._job_id} failed: {exc}", file=sys.stderr)


class _Reporter:
    """A progress callback that writes to the job row (throttled), estimates the ETA and its range from the
    measured cost of each unit of work (``cadx.planning.EtaSmoother``) and notices cancellation (or the job being
    taken from this worker) and a request to stop (``stop``).
    Progress is reported after a unit's checkpoint is saved, so stopping here loses no finished unit."""

    def __init__(self, workspace: Workspace, job_id: int, me: _Identity,
                 stop: threading.Event | None = None) -> None:
        self._stop = stop
        self._workspace = workspace
        self._job_id = job_id
        self._me = me
        self._last_write = 0.0
        self._last_call: float | None = None
        self._last_done = 0
        self._smoother = EtaSmoother()  # per-unit cost, exponentially weighted: an ETA that does not swing

    def _eta(self, done: int, total: int | None, now: float) -> TimeRange | None:
        if self._last_call is not None and done > self._last_done:
            dt = now - self._last_call
            if dt >= 0.05:  # units restored from checkpoints arrive in a burst: not a measure of the rate
                self._smoother.observe(dt, done - self._last_done)
        if done != self._last_done or self._last_call is None:
            self._last_call, self._last_done = now, done
        if not total:
            return None
        return self._smoother.eta(max(total - done, 0))

    def __call__(self, done: int, total: int | None, message: str) -> None:
        if self._stop is not None and self._stop.is_set():
            raise JobInterrupted(f"job {self._job_id}: the worker was asked to stop")
        now = time.monotonic()
        boundary = int(done) > self._last_done  # a unit finished (read before _eta moves it)
        eta = self._eta(int(done), total, now)
        if now - self._last_write < _PROGRESS_WRITE_S and (total is None or done < total):
            if boundary:  # the write waits, but a cancel is noticed at every unit boundary (one cheap read)
                with self._workspace.sessions() as session:
                    mine = session.execute(select(Job.status, Job.worker).where(Job.id == self._job_id)).first()
                if mine is None or tuple(mine) != ("running", self._me.label):
                    raise JobCancelled(f"job {self._job_id} was cancelled or taken over")
            return
        self._last_write = now
        with self._workspace.sessions.begin() as session:
            updated = _updated(session,
                update(Job).where(Job.id == self._job_id, Job.status == "running", Job.worker == self._me.label)
                .values(progress_done=int(done),
                        progress_total=None if total is None else int(total),
                        message=message[:250], heartbeat_at=_now(),
                        eta_seconds=None if eta is None else eta.seconds,
                        eta_low_seconds=None if eta is None else eta.low,
                        eta_high_seconds=None if eta is None else eta.high)
            )
        if updated == 0:
            raise JobCancelled(f"job {self._job_id} was cancelled or taken over")


def _run_job(workspace: Workspace, job: Job, progress: _Reporter, checkpoints: JobCheckpoints
             ) -> tuple[str, int | None]:
    from cadx.workflows.features import compute_analytic_features, extract_cnn_features, resolve_backbone

    params = dict(job.params)
    if job.kind == "permutation":  # a label-permutation test of a stored experiment (each permutation a unit)
        from cadx.permutation import DEFAULT_PERMUTATIONS
        from cadx.workflows.permutation import run_permutation_test

        tested = int(params["experiment_id"])
        n = int(params.get("permutations") or DEFAULT_PERMUTATIONS)
        test_id = run_permutation_test(workspace, tested, permutations=n, seed=int(params.get("seed") or 0),
                                       user=job.created_by, progress=progress, checkpoints=checkpoints)
        return f"permutation test {test_id} of experiment {tested} done ({n} permutations)", tested
    if job.kind == "features":
        report = compute_analytic_features(workspace, progress=progress)
        return f"{report.n_computed} ROIs analysed ({report.n_failed} failed segmentations)", None
    loaded, note = resolve_backbone(params.get("backbone"), weights=params.get("weights", "default"),
                                    weights_path=params.get("weights_path"))
    if job.kind == "extract":
        extracted = extract_cnn_features(workspace, loaded, taps=params.get("taps"), progress=progress)
        return (f"{extracted.n_extracted} of {extracted.n_rois} ROIs extracted with {extracted.weights_name}. "
                f"{note}", None)
    from cadx.workflows.experiments import ExperimentSettings, run_experiment

    # the settings in the job's params (the app never sets min_lesions_per_class_per_fold; tests and scripts may
    # lower the guard rail for tiny sets, and the record keeps it); missing keys take ExperimentSettings' defaults
    settings = ExperimentSettings.from_params(params)
    experiment_id = run_experiment(workspace, loaded, settings, name=params.get("name") or f"job {job.id}",
                                   user=job.created_by, weights_note=note, progress=progress,
                                   checkpoints=checkpoints)
    return f"experiment {experiment_id} done. {note}", experiment_id


def run_next_job(workspace: Workspace, *, stop: threading.Event | None = None) -> int | None:
    """Claim and run the oldest queued job (when a run slot is free); returns its id (None when none ran).

    When ``stop`` is set while the job runs, the job stops at its next progress report and is queued again to be
    resumed from its checkpoints, this claim not counted (a stopped worker is not a dead one)."""
    me = _identity()
    job = _claim(workspace, me)
    if job is None:
        return None
    mine = (Job.id == job.id, Job.worker == me.label)
    reporter = _Reporter(workspace, job.id, me, stop)
    checkpoints = JobCheckpoints(workspace, job.id, worker=me.label)
    try:
        with _Heartbeat(workspace, job.id, me):
            message, experiment_id = _run_job(workspace, job, reporter, checkpoints)
        resumed = checkpoints.resume_note()
        if resumed:
            message = f"{resumed}. {message}"
    except JobCancelled:
        with workspace.sessions.begin() as session:
            session.execute(update(Job).where(*mine).values(slot=None))
        return job.id
    except JobInterrupted:
        with workspace.sessions.begin() as session:
            session.execute(update(Job).where(*mine, Job.status == "running").values(
                status="queued", attempts=Job.attempts - 1, **_NO_ETA,
                message=f"interrupted: worker {me.label} was stopped; queued again to resume from "
                        f"{_kept_work(session, job.id)}"))
            session.execute(update(Job).where(*mine).values(slot=None, worker=None))
        return job.id
    except Exception as exc:  # a job's failure is recorded on the job, never lost in a worker's log
        detail = str(exc) if isinstance(exc, CadxError) else "".join(traceback.format_exception(exc))[-4000:]
        with workspace.sessions.begin() as session:
            session.execute(update(Job).where(*mine, Job.status == "running")
                            .values(status="failed", error=detail, finished_at=_now(), message="failed",
                                    **_NO_ETA))
            session.execute(update(Job).where(*mine).values(slot=None))
        return job.id
    with workspace.sessions.begin() as session:
        finished = _updated(session, update(Job).where(*mine, Job.status == "running")
                                   .values(status="done", message=message[:250], experiment_id=experiment_id,
                                           finished_at=_now(), **_NO_ETA,
                                           progress_done=func.coalesce(Job.progress_total, Job.progress_done))
                                   )
        session.execute(update(Job).where(*mine).values(slot=None))
        if finished:  # the experiment holds the results now: its checkpoints are no longer needed
            session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
    return job.id


def run_worker(workspace: Workspace, *, poll_seconds: float = 1.0, idle_exit_seconds: float | None = None,
               pid_file: str = _PID_FILE) -> None:
    """Run queued jobs one after another; with ``idle_exit_seconds``, stop after that long without work.

    Several workers (one per run slot, see ``CADX_MAX_PARALLEL_JOBS``) may serve one workspace; each runs one job
    at a time. On SIGTERM (when run in the main thread) the worker stops at the running job's next unit boundary,
    queues the job again (see ``run_next_job``) and returns."""
    path = workspace.data_dir / pid_file
    me = _identity()
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    write_private(path, f"{me.pid} {me.started}")
    # Load the heavy libraries (torch) before taking a job: loading a native library holds the GIL for seconds on
    # a busy machine, which would silence the job's heartbeat thread.
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import cadx.workflows.experiments  # noqa: F401
    import cadx.workflows.features  # noqa: F401
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            reap_dead_jobs(workspace)
            if run_next_job(workspace, stop=stop) is not None:
                idle_since = time.monotonic()
                continue
            if idle_exit_seconds is not None and time.monotonic() - idle_since > idle_exit_seconds:
                return
            stop.wait(poll_seconds)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if path.exists() and path.read_text().split()[:1] == [str(me.pid)]:
            path.unlink(missing_ok=True)


def _pid_file_name(index: int) -> str:
    return _PID_FILE if index == 0 else f"worker-{index + 1}.pid"


def _worker_alive(workspace: Workspace, index: int = 0) -> bool:
    try:
        fields = (workspace.data_dir / _pid_file_name(index)).read_text().split()
        pid = int(fields[0])
        started = float(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return False
    return _process_alive(pid, started)


def ensure_worker(workspace: Workspace) -> bool:
    """Start background workers for this workspace while fewer are alive than the jobs queued or running could use
    (at most ``CADX_MAX_PARALLEL_JOBS``); True when one was started."""
    limit = max_parallel_jobs()
    with workspace.sessions() as session:
        active = session.scalar(select(func.count()).select_from(Job)
                                .where(Job.status.in_(("queued", "running")))) or 0
    alive = [k for k in range(limit) if _worker_alive(workspace, k)]
    wanted = max(min(limit, active), 1)
    started = False
    for index in range(limit):
        if len(alive) >= wanted:
            break
        if index in alive:
            continue
        env = dict(os.environ, CADX_DATA_DIR=str(workspace.data_dir),
                   CADX_DATABASE_URL=workspace.engine.url.render_as_string(hide_password=False))
        log = open_private(workspace.data_dir / "worker.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cadx.cli", "worker", "--idle-exit", "600", "--pid-file", _pid_file_name(index)],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        write_private(workspace.data_dir / _pid_file_name(index), f"{process.pid} {_process_start(process.pid) or ''}")
        alive.append(index)
        started = True
    return started


def _exited(pid: int, started: float | None) -> bool:
    """Whether the process ``pid`` (started at ``started``) has exited entirely, reaping it when it is our child.

    Not "is a zombie": a process whose main thread has ended shows as one while its other threads still run (and
    write), so the process's pidfd, readable once the whole process is gone, decides where the kernel has one."""
    try:
        os.waitpid(pid, os.WNOHANG)  # our child (ensure_worker started it): reap it once it has exited
    except ChildProcessError:
        pass
    start = _process_start(pid)
    if start is None or (started is not None and abs(start - started) > _PID_START_TOLERANCE_S):
        return True  # gone, or the PID is another process's now
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):  # no pidfd here (not Linux >= 5.3): the process table must do
        return not _process_alive(pid, started)
    try:
        poller = _select.poll()
        poller.register(fd, _select.POLLIN)
        return bool(poller.poll(0))
    finally:
        os.close(fd)


def stop_workers(data_dir: Path, *, timeout: float | None = None) -> list[int]:
    """Send SIGTERM to the workers of the data directory ``data_dir`` (those its PID files name, when still the
    same process) and wait until they have exited, at most ``timeout`` seconds (default
    ``CADX_WORKER_STOP_SECONDS``, 300); returns their PIDs. Each stops at its job's next unit boundary and queues
    the job again (``run_worker``).

    Workers run in their own session (a closed tab or a Ctrl-C in the app's terminal must not reach them), so a
    signal to the app never reaches them by itself; the app's server calls this when it stops. In a container it
    matters most: when the server (PID 1) exits, every other process there is killed at once."""
    limit = _env_float("CADX_WORKER_STOP_SECONDS", 300.0) if timeout is None else timeout
    running: list[tuple[int, float | None]] = []
    for path in sorted(Path(data_dir).glob("worker*.pid")):
        try:
            fields = path.read_text().split()
            pid, started = int(fields[0]), (float(fields[1]) if len(fields) > 1 else None)
        except (OSError, ValueError, IndexError):
            continue
        if pid != os.getpid() and _process_alive(pid, started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            running.append((pid, started))
    stopped = [pid for pid, _ in running]
    deadline = time.monotonic() + limit
    while running and time.monotonic() < deadline:
        running = [(pid, started) for pid, started in running if not _exited(pid, started)]
        if running:
            time.sleep(0.1)
    for pid, _ in running:
        print(f"cadx: worker {pid} did not stop within {limit:g} s; its job resumes after it is gone "
              "(CADX_JOB_STALE_SECONDS)", file=sys.stderr)
    return stopped
