"""Background jobs that survive a busy machine: liveness from a heartbeat thread and the worker's PID (never from a
lack of progress), checkpoints per (tap, seed, fold) so a job whose worker was killed resumes where it stopped and
ends with the numbers of an uninterrupted run, FIFO order, an atomic claim of a run slot across processes, and
progress by work done with an ETA. Worker subprocesses are the real worker (tests/job_worker_support.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cadx.workflows import import_demo, jobs
from cadx.workflows.experiments import PROGRESS_SCALE, experiment_summary
from cadx.workflows.jobs import (
    cancel_job,
    get_job,
    job_history,
    list_jobs,
    reap_dead_jobs,
    retry_job,
    run_next_job,
    submit_job,
)
from db.models import Job, JobCheckpoint, Prediction
from tests.spawned import claim_a_job, start_together
from tests.workspace_cache import demo_with_features

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"backbone": "alexnet", "weights": "random", "taps": ["fc7", "fc8"], "ensemble_tap": "fc8",
          "n_folds": 5, "seed": 0, "repeats": 1, "name": "resumable",
          "min_lesions_per_class_per_fold": 1}  # 12 demo lesions: below the guard rail of real experiments
UNITS = {f"sweep:{tap}/0/{k}" for tap in ("fc7", "fc8") for k in range(5)} | {f"B:X/0/{k}" for k in range(5)}


@pytest.fixture
def demo(workspace_cache, workspace):
    """12 synthetic lesions, CNN (random AlexNet) and analytic features already in the store."""
    workspace_cache.fill(workspace, demo_with_features, n_lesions=12, seed=5, taps=("fc7", "fc8"))
    return workspace


def _url(workspace) -> str:
    return workspace.engine.url.render_as_string(hide_password=False)


def _worker(workspace, tmp_path: Path, *, env: dict, name: str, **options) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.job_worker_support", str(workspace.data_dir), _url(workspace)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def _wait(predicate, *, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None and not predicate():
            raise AssertionError(f"the worker exited ({process.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _predictions(workspace, experiment_id: int) -> list[tuple]:
    with workspace.sessions() as session:
        rows = session.scalars(select(Prediction).where(Prediction.experiment_id == experiment_id)
                               .order_by(Prediction.roi_id, Prediction.repeat)).all()
        return [(p.roi_sha256, p.repeat, p.fold, p.decision1, p.p1, p.decision2, p.p2, p.p3) for p in rows]


def _numbers(summary: dict) -> dict:
    results = summary["results"]
    return {"sweep": {t: (v["fold_aucs"], v["auc_mean"]) for t, v in results["sweep"].items()},
            "methods": {k: (m["fold_aucs"], m.get("best_params"), m["pooled_auc"], m["lesion_auc"])
                        for k, m in results["methods"].items()},
            "comparisons": results["comparisons"]}


# ------------------------------------------------------------------------------------------------- liveness ---
def _set_running(workspace, job_id: int, **values) -> None:
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="running", slot=0, **values))


def _dead_pid() -> tuple[int, float]:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    started = jobs._process_start(process.pid)
    process.wait()
    return process.pid, started or 0.0


def test_a_job_is_taken_from_its_worker_only_when_the_worker_is_gone(workspace, monkeypatch):
    monkeypatch.setenv("CADX_JOB_STALE_SECONDS", "60")
    me = jobs._identity()
    old = datetime.now(UTC) - timedelta(hours=1)
    busy = submit_job(workspace, "features", {}, user="alice")
    # no heartbeat for an hour, but its worker process (this one: same host, PID and start time) is alive: a busy
    # machine is not a dead worker
    _set_running(workspace, busy, worker=me.label, worker_host=me.host, worker_pid=me.pid,
                 worker_started=me.started, heartbeat_at=old)
    assert reap_dead_jobs(workspace) == []
    assert get_job(workspace, busy).status == "running"
    # the same PID with another start time is another process (a reused PID): the worker is gone
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == busy).values(worker_started=me.started - 1000, attempts=1))
    assert reap_dead_jobs(workspace) == [busy]
    job = get_job(workspace, busy)
    assert job.status == "queued" and job.slot is None and "queued again to resume" in job.message

    dead = submit_job(workspace, "features", {}, user="bob")
    pid, started = _dead_pid()
    _set_running(workspace, dead, worker=f"{me.host}:{pid}", worker_host=me.host, worker_pid=pid,
                 worker_started=started, heartbeat_at=datetime.now(UTC), attempts=1)
    assert reap_dead_jobs(workspace) == []  # a fresh heartbeat: alive, whatever the PID says
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == dead).values(heartbeat_at=old))
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == busy).values(status="done", slot=None))
    assert reap_dead_jobs(workspace) == [dead] and get_job(workspace, dead).status == "queued"

    # on another host only the heartbeat counts
    remote = submit_job(workspace, "features", {}, user="carol")
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == dead).values(status="done"))
    _set_running(workspace, remote, worker="elsewhere:1", worker_host="elsewhere", worker_pid=me.pid,
                 worker_started=me.started, heartbeat_at=datetime.now(UTC) - timedelta(seconds=30),
                 attempts=jobs._MAX_ATTEMPTS)
    assert reap_dead_jobs(workspace) == []
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == remote).values(heartbeat_at=old))
    assert reap_dead_jobs(workspace) == [remote]
    job = get_job(workspace, remote)  # claimed too often: failed, with the reason and what to do
    assert job.status == "failed" and "stopped 3 times" in job.error and "submit it again" in job.error
    assert retry_job(workspace, remote, user="carol")
    assert get_job(workspace, remote).status == "queued" and get_job(workspace, remote).error is None


@pytest.mark.slow
def test_a_fold_slower_than_the_stale_limit_finishes(demo, tmp_path, monkeypatch):
    """Every fold sleeps 6 s, the stale limit is 4 s (a sleep outlasts it on any machine): only the worker's heartbeat
    thread keeps the job alive, and this process looks at the jobs (which takes dead workers' jobs) as if from another
    host all along."""
    env = {"CADX_JOB_STALE_SECONDS": "4", "CADX_JOB_HEARTBEAT_SECONDS": "0.2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(jobs.socket, "gethostname", lambda: "another-host")  # the PID check cannot help here
    job_id = submit_job(demo, "experiment", {**PARAMS, "taps": ["fc8"], "analytic": False, "n_folds": 2},
                        user="alice")
    worker = _worker(demo, tmp_path, env=env, name="slow", fold_sleep=6, idle_exit=1)
    try:
        def finished():
            list_jobs(demo)  # the old code failed the job here: no progress for longer than the stale limit
            job = get_job(demo, job_id)
            return job.status if job.status in ("done", "failed", "cancelled") else None

        status = _wait(finished, timeout=600, what="the slow job to end", process=worker)
        job = get_job(demo, job_id)
        assert status == "done", (job.error, (tmp_path / "slow.log").read_text()[-3000:])
        assert job.attempts == 1 and job.experiment_id is not None  # never taken from its worker
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.slow
def test_a_killed_worker_s_job_resumes_redoing_only_unfinished_folds(demo, tmp_path, monkeypatch):
    env = {"CADX_JOB_STALE_SECONDS": "2", "CADX_JOB_HEARTBEAT_SECONDS": "0.3"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    job_id = submit_job(demo, "experiment", PARAMS, user="alice")
    first = _worker(demo, tmp_path, env=env, name="first", fold_sleep=1.5, save_log=tmp_path / "first.units")

    def saved():
        with demo.sessions() as session:
            return session.execute(select(JobCheckpoint.unit, JobCheckpoint.worker)
                                   .where(JobCheckpoint.job_id == job_id)).all()

    try:
        _wait(lambda: len(saved()) >= 3, timeout=600, what="three finished folds", process=first)
    finally:
        first.send_signal(signal.SIGKILL)  # mid-tap: fc7 has 5 folds
        first.wait()
    before = saved()
    assert 3 <= len(before) < len(UNITS)
    killed = get_job(demo, job_id)
    assert killed.status == "running" and killed.worker_pid == first.pid
    assert {w for _, w in before} == {killed.worker}

    second = _worker(demo, tmp_path, env=env, name="second", save_log=tmp_path / "second.units", idle_exit=2)
    try:
        _wait(lambda: get_job(demo, job_id).status in ("done", "failed"), timeout=600, what="the resumed job",
              process=second)
        second.wait(timeout=120)
    finally:
        second.kill()
    job = get_job(demo, job_id)
    assert job.status == "done", (job.error, (tmp_path / "second.log").read_text()[-3000:])
    assert job.attempts == 2  # detected dead, queued again, claimed by the second worker
    restored = {u for u, _ in before}
    redone = (tmp_path / "second.units").read_text().split()
    assert len(redone) == len(set(redone))  # each unit once
    assert set(redone) == UNITS - restored  # only the unfinished units
    assert job.message.startswith(f"resumed: {len(restored)} of {len(UNITS)} units restored from checkpoints, "
                                  f"{len(UNITS) - len(restored)} computed")
    with demo.sessions() as session:  # a finished job keeps no checkpoints
        assert session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)).first() is None

    # the same job uninterrupted (a new job id: nothing to restore, every unit computed)
    again = submit_job(demo, "experiment", PARAMS, user="alice")
    assert run_next_job(demo) == again
    reference = get_job(demo, again)
    assert reference.status == "done"
    a, b = experiment_summary(demo, job.experiment_id), experiment_summary(demo, reference.experiment_id)
    assert a["config_sha256"] == b["config_sha256"]
    assert _numbers(a) == _numbers(b)
    assert _predictions(demo, job.experiment_id) == _predictions(demo, reference.experiment_id)


# -------------------------------------------------------------------------------------- order and claiming ---
@pytest.mark.slow
@pytest.mark.parametrize("n_queued, limit", [(1, 4), (3, 2)])
def test_claiming_is_atomic_across_processes(workspace, n_queued, limit):
    ids = [submit_job(workspace, "features", {}, user=f"user{k}") for k in range(n_queued)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=context, initializer=start_together,
                             initargs=(context.Barrier(4),)) as pool:  # four processes claim at the same moment
        claims = [c for c in pool.map(claim_a_job, *zip(*[(str(workspace.data_dir), _url(workspace), limit)] * 4))
                  if c is not None]
    n_expected = min(n_queued, limit)
    assert len(claims) == n_expected  # never more than the free slots, never one job twice
    assert sorted(j for j, _ in claims) == ids[:n_expected]  # the oldest first
    assert sorted(s for _, s in claims) == list(range(n_expected))


@pytest.mark.slow
def test_jobs_run_first_in_first_out_one_slot_at_a_time(workspace_cache, workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("CADX_MAX_PARALLEL_JOBS", "1")
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    ids = [submit_job(workspace, "features", {}, user=user) for user in ("alice", "bob", "carol", "dave")]
    assert cancel_job(workspace, ids[2], user="carol")
    workers = [_worker(workspace, tmp_path, env={"CADX_MAX_PARALLEL_JOBS": "1"}, name=f"w{k}", idle_exit=2,
                       pid_file=f"test-{k}.pid") for k in range(2)]
    try:
        for worker in workers:
            worker.wait(timeout=600)
    finally:
        for worker in workers:
            worker.kill()
    done = [get_job(workspace, i) for i in ids]
    assert [j.status for j in done] == ["done", "done", "cancelled", "done"]
    ran = [j for j in done if j.status == "done"]
    assert [j.id for j in sorted(ran, key=lambda j: j.started_at)] == [ids[0], ids[1], ids[3]]
    for earlier, later in zip(ran, ran[1:]):  # one slot: never two at once
        assert earlier.finished_at <= later.started_at
    assert all(j.slot is None and j.attempts == 1 for j in ran)
    history = job_history(workspace)
    assert [(h.id, h.status, h.created_by) for h in history] == [
        (ids[3], "done", "dave"), (ids[2], "cancelled", "carol"), (ids[1], "done", "bob"), (ids[0], "done", "alice")]
    assert all(h.seconds is not None and h.seconds >= 0 for h in history if h.status == "done")


# --------------------------------------------------------------------------------------------------- progress ---
@pytest.mark.slow
def test_progress_is_by_work_done_monotonic_with_an_eta(demo, monkeypatch):
    seen = []
    real = jobs._Reporter.__call__

    def record(self, done, total, message):
        real(self, done, total, message)
        job = get_job(demo, self._job_id)
        seen.append((done, total, message, job.eta_seconds))

    monkeypatch.setattr(jobs._Reporter, "__call__", record)
    monkeypatch.setattr(jobs, "_PROGRESS_WRITE_S", 0.0)  # write every report
    job_id = submit_job(demo, "experiment", PARAMS, user="alice")
    queued = job_history(demo)[0]
    assert queued.status == "queued" and queued.queue_position == 1
    assert run_next_job(demo) == job_id
    done = [d for d, _, _, _ in seen]
    assert done == sorted(done) and done[-1] == PROGRESS_SCALE
    assert {t for _, t, _, _ in seen} == {PROGRESS_SCALE}
    fitted = [m for _, _, m, _ in seen if "folds x taps fitted" in m]
    assert fitted[-1].startswith("sweep: 10/10 folds x taps fitted")
    steps = [d - previous for (previous, *_), (d, _, m, _) in zip(seen, seen[1:]) if m in fitted]
    assert len(steps) == 10 and all(step > 0 for step in steps)  # every fitted fold moves the bar
    assert any(eta is not None and eta >= 0 for *_, eta in seen)
    job = job_history(demo)[0]
    assert job.status == "done" and job.fraction == 1.0 and job.eta_seconds is None and job.seconds > 0


def test_progress_weights_folds_by_their_cost():
    from cadx.workflows.experiments import StageMeter, _fold_cost

    # the paper's widths at 607 ROIs: a conv1 fold costs far more than an fc8 fold
    assert _fold_cost(486, 254_016) > 5 * _fold_cost(486, 1000) > 0
    reports = []
    meter = StageMeter(lambda d, t, m: reports.append(d), {"extract": 10.0, "sweep": 30.0})
    meter.advance("extract", 5.0, "half the ROIs")
    assert reports[-1] == PROGRESS_SCALE // 8
    meter.finish("extract", "the rest was in the store")  # less work than estimated: the bar jumps, never back
    assert reports[-1] == PROGRESS_SCALE * 5 // 35
    meter.set_total("sweep", 100.0)  # a larger estimate later does not move the bar backwards
    meter.advance("sweep", 0.0, "sweep")
    assert reports == sorted(reports)
    meter.advance("sweep", 100.0, "done")
    assert reports[-1] == PROGRESS_SCALE


def test_progress_keeps_moving_after_an_estimate_grows():
    # Seen on the demo sweep: the sweep's share was estimated at a tap width of 4096 before extraction; EfficientNet's
    # stem tap is ~400k wide, so the revised estimate was far larger and the bar sat at 41.69 % for 20 minutes while
    # stem folds were fitted. Now what is left of the bar is spread over the work that is left.
    from cadx.workflows.experiments import StageMeter

    reports = []
    meter = StageMeter(lambda d, t, m: reports.append(d), {"extract": 10.0, "sweep": 10.0})
    meter.advance("extract", 10.0, "extracted")
    assert reports[-1] == PROGRESS_SCALE // 2
    meter.set_total("sweep", 1000.0)  # the real widths are known: 100x the estimate
    meter.advance("sweep", 0.0, "sweep starts")
    assert reports[-1] == PROGRESS_SCALE // 2  # never back
    meter.advance("sweep", 100.0, "one tenth of the sweep")  # before: (10 + 100) / 1010 = 11 %: stuck at 50 %
    assert reports[-1] == PROGRESS_SCALE // 2 + PROGRESS_SCALE // 20  # 50 % + 10 % of the other half
    meter.advance("sweep", 500.0, "half the sweep")
    assert reports[-1] == PROGRESS_SCALE * 3 // 4
    meter.set_total("sweep", 600.0)  # an estimate that shrinks: the true share done (510 / 610) is larger
    meter.advance("sweep", 500.0, "half the sweep, revised")
    assert reports[-1] == int(PROGRESS_SCALE * 510 / 610)
    meter.advance("sweep", 600.0, "done")
    assert reports[-1] == PROGRESS_SCALE and reports == sorted(reports)


@pytest.mark.slow
def test_submitting_a_failed_job_again_resumes_from_its_checkpoints(demo, monkeypatch):
    import cadx.svm

    real_fold = cadx.svm._run_fold
    computed = []

    def failing_fold(*args, **kwargs):
        if len(computed) == 4:
            raise MemoryError("out of memory in fold 5")
        computed.append(args[-1])
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(cadx.svm, "_run_fold", failing_fold)
    first = submit_job(demo, "experiment", PARAMS, user="alice")
    run_next_job(demo)
    failed = get_job(demo, first)
    assert failed.status == "failed" and "out of memory in fold 5" in failed.error  # the error is kept
    with demo.sessions() as session:
        kept = set(session.scalars(select(JobCheckpoint.unit).where(JobCheckpoint.job_id == first)))
    assert len(kept) == 4

    monkeypatch.setattr(cadx.svm, "_run_fold", lambda *a, **k: computed.append(a[-1]) or real_fold(*a, **k))
    computed.clear()
    second = submit_job(demo, "experiment", PARAMS, user="bob")  # the same sweep submitted again
    assert run_next_job(demo) == second and get_job(demo, second).status == "done"
    assert len(computed) == len(UNITS) - 4  # the failed job's four folds were restored, not recomputed
    assert get_job(demo, second).message.startswith(  # what every page shows of the resumed job
        f"resumed: 4 of {len(UNITS)} units restored from checkpoints, {len(UNITS) - 4} computed. experiment ")


@pytest.mark.slow
def test_a_cancelled_job_keeps_its_finished_units_and_resume_redoes_none_of_them(demo, monkeypatch):
    """Issue 25.4: cancelling threw away 18 minutes of work in one click. Now a cancelled job keeps its checkpoints
    and Resume (``retry_job``, the page's button) computes only the units it had not finished."""
    import cadx.svm

    real_fold = cadx.svm._run_fold
    computed = []
    job_id = submit_job(demo, "experiment", PARAMS, user="alice")

    def cancelling_fold(*args, **kwargs):
        computed.append(args[-1])
        result = real_fold(*args, **kwargs)
        if len(computed) == 3:  # the user cancels while the third fold runs: it still finishes and is kept
            assert cancel_job(demo, job_id, user="alice")
        return result

    monkeypatch.setattr(cadx.svm, "_run_fold", cancelling_fold)
    monkeypatch.setattr(jobs, "_PROGRESS_WRITE_S", 0.0)  # every report reaches the row (and sees the cancel)
    assert run_next_job(demo) == job_id
    cancelled = get_job(demo, job_id)
    assert cancelled.status == "cancelled" and cancelled.slot is None and cancelled.message == "cancelled by alice"
    with demo.sessions() as session:
        kept = set(session.scalars(select(JobCheckpoint.unit).where(JobCheckpoint.job_id == job_id)))
    assert len(kept) == 3 and kept <= UNITS
    assert jobs.kept_work(demo, job_id) == "3 finished units"  # what the page's Resume offer says

    monkeypatch.setattr(cadx.svm, "_run_fold", lambda *a, **k: computed.append(a[-1]) or real_fold(*a, **k))
    computed.clear()
    assert retry_job(demo, job_id, user="alice")  # Resume
    assert run_next_job(demo) == job_id
    done = get_job(demo, job_id)
    assert done.status == "done" and done.experiment_id is not None
    assert len(computed) == len(UNITS) - 3  # no finished unit redone
    assert done.message.startswith(f"resumed: 3 of {len(UNITS)} units restored from checkpoints, "
                                   f"{len(UNITS) - 3} computed")


def test_the_running_job_s_eta_is_smoothed_with_its_range(workspace, monkeypatch):
    """The reporter's ETA is the smoother's: known unit times give the known time left and its range."""
    clock = iter([0.0, 10.0, 20.0, 30.0, 70.0])
    monkeypatch.setattr(jobs.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(jobs, "_PROGRESS_WRITE_S", 0.0)
    me = jobs._identity()
    job_id = submit_job(workspace, "features", {}, user="alice")
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="running", worker=me.label))
    report = jobs._Reporter(workspace, job_id, me)
    report(0, 10, "start")
    for done in (1, 2, 3):  # 10 s per unit
        report(done, 10, f"unit {done}")
    view = job_history(workspace)[0]
    assert (view.eta_seconds, view.eta_low_seconds, view.eta_high_seconds) == pytest.approx((70.0, 70.0, 70.0))
    report(4, 10, "a slow unit")  # 40 s: counted as 3x (the clip), weight 0.25 -> 10 * 3^0.25 s per unit
    view = job_history(workspace)[0]
    assert view.eta_seconds == pytest.approx(6 * 10 * 3 ** 0.25)
    assert view.eta_low_seconds < view.eta_seconds < view.eta_high_seconds
    assert view.eta.words().startswith("about 1 min 19 s (")
    with workspace.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))


# ---------------------------------------------------------------------------------- stopping the app's server ---
def _serve(data_dir: Path, tmp_path: Path) -> subprocess.Popen:
    """``streamlit run serve.py`` (what the Docker image runs) over ``data_dir`` on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), CADX_DATA_DIR=str(data_dir))
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "serve.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200
        except OSError:
            return False

    _wait(healthy, timeout=180, what="the app server", process=server)
    return server


@pytest.mark.slow
def test_stopping_the_server_stops_its_worker_at_a_unit_boundary_and_the_job_resumes(demo, tmp_path, monkeypatch):
    """SIGTERM to the app's server (``docker stop``) reaches the worker, which runs in its own session as
    ``ensure_worker`` starts it: the worker saves its current unit, queues the job again (not failed, the claim not
    counted as a dead worker's) and exits 0; the next worker finishes the job redoing no finished unit."""
    env = {"CADX_JOB_HEARTBEAT_SECONDS": "0.3"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = _serve(demo.data_dir, tmp_path)
    job_id = submit_job(demo, "experiment", PARAMS, user="alice")
    args = [sys.executable, "-m", "tests.job_worker_support", str(demo.data_dir), _url(demo), "--fold-sleep", "1",
            "--save-log", str(tmp_path / "first.units"), "--idle-exit", "600"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=open(tmp_path / "first.log", "wb"), stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), **env), start_new_session=True)

    def saved():
        with demo.sessions() as session:
            return set(session.scalars(select(JobCheckpoint.unit).where(JobCheckpoint.job_id == job_id)))

    try:
        _wait(lambda: len(saved()) >= 2, timeout=600, what="two finished folds", process=first)
        stop_sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
        stopped_after = time.monotonic() - stop_sent
        # the worker had exited before the server did (in a container the server's exit kills all that is left)
        assert first.poll() == 0, (server.returncode, stopped_after, saved(), get_job(demo, job_id).message,
                                   (tmp_path / "first.log").read_text()[-3000:],
                                   (tmp_path / "server.log").read_text()[-3000:])
    finally:
        for process in (server, first):
            if process.poll() is None:
                process.kill()
                process.wait()
    kept = saved()
    computed = set((tmp_path / "first.units").read_text().split())
    assert kept == computed and 2 <= len(kept) < len(UNITS)  # every unit it finished is kept, then it stopped
    job = get_job(demo, job_id)
    assert job.status == "queued" and job.slot is None and job.worker is None and job.attempts == 0
    assert job.message.startswith("interrupted: ") and f"resume from {len(kept)} finished units" in job.message
    view = next(v for v in job_history(demo) if v.id == job_id)
    assert view.status == "queued" and view.queue_position == 1 and view.error is None

    second = _worker(demo, tmp_path, env=env, name="second", save_log=tmp_path / "second.units", idle_exit=2)
    try:
        _wait(lambda: get_job(demo, job_id).status in ("done", "failed"), timeout=600, what="the resumed job",
              process=second)
        second.wait(timeout=120)
    finally:
        second.kill()
    job = get_job(demo, job_id)
    assert job.status == "done", (job.error, (tmp_path / "second.log").read_text()[-3000:])
    assert job.attempts == 1  # the interrupted claim was not counted
    redone = (tmp_path / "second.units").read_text().split()
    assert len(redone) == len(set(redone)) and set(redone) == UNITS - kept  # no finished unit redone


def test_an_idle_worker_exits_0_on_sigterm(workspace, tmp_path):
    worker = _worker(workspace, tmp_path, env={}, name="idle", idle_exit=600)
    try:
        _wait(lambda: (workspace.data_dir / "worker.pid").exists(), timeout=120, what="the worker's PID file",
              process=worker)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0, (tmp_path / "idle.log").read_text()[-3000:]
    finally:
        worker.kill()
        worker.wait()
    assert not (workspace.data_dir / "worker.pid").exists()
