"""In a real browser, sweeps started from the Layer sweep page as background jobs (issue 11):

* a job whose every cross-validation fold takes longer than the stale limit finishes, and the page says so: while
  the page polls the jobs (which takes jobs from dead workers) only the worker's heartbeat keeps it alive;
* a job whose worker is killed (SIGKILL) in the middle of a tap is noticed by the page, queued again, resumed by
  the worker the page starts and finished, redoing only the units of work that were not checkpointed;
* choosing a saved cohort ("MIAS masses" over real MIAS and synthetic phantoms) shows its counts before Start,
  and the experiment's record lists exactly that cohort's lesions.

The slow and the killed worker are the real worker with a test hook (``tests/job_worker_support.py``: a sleep before
every fold, a log of the units it computed), started before the click so that the page finds a live worker and
starts none of its own; the resuming worker is the one the page starts (``cadx worker``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from cadx.cohorts import CohortDefinition
from cadx.lesion_types import MASS_TYPES
from cadx.sources import parse_mias_info
from cadx.workflows import import_demo, import_mias, jobs, open_workspace
from cadx.workflows.cohorts import resolve_cohort, save_cohort
from cadx.workflows.experiments import experiment_summary
from cadx.workflows.jobs import get_job
from db.models import Job, JobCheckpoint, Lesion, Roi
from tests.e2e.conftest import REPO, serve_app, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB_TIMEOUT_MS = 480_000
STALE_S = 5  # the app's (and its workers') stale limit: a worker is gone after this long without a heartbeat
HEARTBEAT_S = 0.5
JOB_ENV = {"CADX_JOB_STALE_SECONDS": str(STALE_S), "CADX_JOB_HEARTBEAT_SECONDS": str(HEARTBEAT_S)}


def _stop_page_workers(data: Path, *, wait: float = 0) -> None:
    """Stop the workers the page started (their PIDs are in the data directory, one file per run slot); with
    ``wait``, until each has exited (or that many seconds have passed)."""
    pids = []
    for pid_file in [data / "worker.pid", *data.glob("worker-*.pid")]:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    deadline = time.monotonic() + wait
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break  # gone
            if state == "Z":  # exited; its parent (the app's server) has not reaped it yet
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory):
    """The app over 20 synthetic lesions, with a short stale limit; yields (base URL, data directory)."""
    data = tmp_path_factory.mktemp("e2e-jobs") / "data"
    import_demo(open_workspace(data), n_lesions=20, seed=2)
    with serve_app(data, **JOB_ENV) as url:
        yield url, data
    _stop_page_workers(data)


@pytest.fixture(scope="module")
def mias_server(tmp_path_factory, mias_dir):
    """The app over real MIAS and 20 synthetic lesions, with a saved cohort "MIAS masses" (2 folds)."""
    data = tmp_path_factory.mktemp("e2e-cohort") / "data"
    workspace = open_workspace(data)
    import_demo(workspace, n_lesions=20, seed=2)
    import_mias(workspace, mias_dir, user="tester")
    save_cohort(workspace, "MIAS masses", CohortDefinition(sources=["mias"], lesion_types=["masses"], n_folds=2),
                user="tester")
    with serve_app(data) as url:
        yield url, data
    _stop_page_workers(data)


def _test_worker(data: Path, log: Path, **options) -> subprocess.Popen:
    """The real worker with the test hooks of tests/job_worker_support.py; returns once it serves the workspace
    (its PID is in worker.pid, where the page looks for a live worker)."""
    url = open_workspace(data).engine.url.render_as_string(hide_password=False)
    args = [sys.executable, "-m", "tests.job_worker_support", str(data), url, "--idle-exit", "900"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(args, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **JOB_ENV))
    _wait(lambda: (data / "worker.pid").exists()
          and (data / "worker.pid").read_text().split()[:1] == [str(process.pid)],
          timeout=180, what="the test worker to start", process=process)
    return process


def _wait(predicate, *, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the worker exited ({process.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _choose(page, label: str, option: str) -> None:
    page.get_by_test_id("stSelectbox").filter(has_text=label).click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}")).click()
    wait_for_app(page)


def _number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    wait_for_app(page)


def _fill_sweep_form(page, url: str, *, taps: list[str], name: str, svm2: bool, cohort: str = "paper") -> None:
    """The sweep form: AlexNet with random weights (offline, fast), ``taps`` (+ fc6, the SVM1 tap), 2 folds, one
    seed, SVM2 on or off, ``cohort``, ``name``."""
    page.set_default_timeout(180_000)  # the sweep page's first run imports torch: slow on a loaded machine
    # the main page first: a fresh server serves a deep link in its legacy multipage mode until app.py has run
    page.goto(url)
    wait_for_app(page)
    page.goto(f"{url}/sweep")
    wait_for_app(page)
    page.get_by_text("AUC per tap").wait_for()  # the page has run to its end
    form = page.get_by_test_id("stExpander").filter(has_text="Start a sweep").first
    if form.locator("details").first.get_attribute("open") is None:  # closed once there are experiments
        form.locator("summary").first.click()
        wait_for_app(page)
    page.get_by_role("button", name=re.compile(r"^(Start|Queue) sweep$")).wait_for()
    _choose(page, "Backbone", "alexnet")
    page.get_by_text("Random (untrained)", exact=True).click()
    wait_for_app(page)
    box = page.get_by_role("combobox", name="Taps (in network order)")
    box.click()
    for _ in range(12):  # remove the eleven default taps
        page.keyboard.press("Backspace")
    for tap in taps:
        page.keyboard.type(tap)
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    wait_for_app(page)
    _choose(page, "Cohort (which ROIs", cohort)  # first: the folds start from the cohort's
    _number(page, "Folds (cross-validation by lesion)", 2)
    _number(page, "Repeats (seeds)", 1)
    if not svm2:
        page.get_by_text("Also run SVM2 (analytic features) and the ensemble").click()
        wait_for_app(page)
    expect(page.get_by_text("cannot be used for this experiment")).to_have_count(0, timeout=120_000)
    box = page.get_by_label("Name", exact=True)
    box.fill(name)
    box.press("Enter")
    wait_for_app(page)


def _start(page, data: Path, name: str, worker: subprocess.Popen | None = None) -> int:
    workspace = open_workspace(data)
    if worker is not None:  # the page must find the test's worker alive, or it starts one of its own
        assert worker.poll() is None, f"the test worker exited ({worker.returncode}) before the click"
        assert jobs._worker_alive(workspace, 0), "the page would not see the test worker alive"
    page.get_by_role("button", name=re.compile(r"^(Start|Queue) sweep$")).click()

    def queued():
        with workspace.sessions() as session:
            jobs = session.scalars(select(Job).where(Job.kind == "experiment").order_by(Job.id.desc())).all()
        return next((j.id for j in jobs if (j.params or {}).get("name") == name), None)

    job_id = _wait(queued, timeout=120, what=f"the job {name!r} to be queued")
    page.get_by_text(re.compile(rf"Job {job_id}\b")).first.wait_for(timeout=60_000)
    return job_id


def _checkpoints(data: Path, job_id: int) -> list[tuple[str, str]]:
    with open_workspace(data).sessions() as session:
        return session.execute(select(JobCheckpoint.unit, JobCheckpoint.worker)
                               .where(JobCheckpoint.job_id == job_id)).all()


def test_a_job_whose_folds_outlast_the_stale_limit_finishes(jobs_server, page, tmp_path):
    url, data = jobs_server
    fold_sleep = 2 * STALE_S  # a sleep: longer than the stale limit however fast the machine
    # a worker on "another host" for the app: the PID check does not apply, only the heartbeat can keep the job
    worker = _test_worker(data, tmp_path / "slow.log", fold_sleep=fold_sleep, as_host="e2e-remote-host")
    try:
        _fill_sweep_form(page, url, taps=["fc6"], name="slow folds", svm2=False)
        job_id = _start(page, data, "slow folds", worker)
        # the panel polls the jobs every 2 s (taking jobs from dead workers) while the folds sleep
        page.get_by_text(re.compile(rf"Job {job_id}.*slow folds · running")).wait_for(timeout=120_000)
        page.get_by_text(re.compile(rf"Job {job_id} finished: experiment #\d+")).wait_for(timeout=JOB_TIMEOUT_MS)
        expect(page.get_by_text(re.compile(r"Job \d+ failed"))).to_have_count(0)
    finally:
        worker.kill()
        worker.wait()
    job = get_job(open_workspace(data), job_id)
    assert job.status == "done", (job.error, (tmp_path / "slow.log").read_text()[-3000:])
    assert job.worker_host == "e2e-remote-host", (job.worker, (tmp_path / "slow.log").read_text()[-3000:])
    assert job.attempts == 1  # claimed once, never taken from its worker
    # two folds of fc6, each twice the stale limit, ran inside the job
    assert (job.finished_at - job.started_at).total_seconds() >= 2 * fold_sleep
    summary = experiment_summary(open_workspace(data), job.experiment_id)
    assert list(summary["results"]["sweep"]) == ["fc6"] and summary["config"]["n_folds"] == 2
    assert summary["name"] == "slow folds"


def test_a_killed_worker_s_job_resumes_and_redoes_only_the_missing_units(jobs_server, page, tmp_path):
    url, data = jobs_server
    first = _test_worker(data, tmp_path / "first.log", fold_sleep=8, save_log=tmp_path / "first.units")
    try:
        _fill_sweep_form(page, url, taps=["fc8"], name="killed worker", svm2=True)
        job_id = _start(page, data, "killed worker", first)
        # the first fold of the first tap is checkpointed; the second sleeps: kill the worker mid-tap
        _wait(lambda: len(_checkpoints(data, job_id)) >= 1, timeout=JOB_TIMEOUT_MS / 1000,
              what="the first finished fold", process=first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = _checkpoints(data, job_id)
    units = {u for u, _ in at_kill}
    killed = get_job(open_workspace(data), job_id)
    assert killed.status == "running" and killed.worker_pid == first.pid
    assert {w for _, w in at_kill} == {killed.worker}
    assert set((tmp_path / "first.units").read_text().split()) == units
    per_tap = Counter(u.split(":")[1].split("/")[0] for u in units if u.startswith("sweep:"))
    assert len(units) == 1 and list(per_tap.values()) == [1]  # one of the tap's two folds: mid-tap
    all_units = 2 * 2 + 2  # fc6 and fc8 x 2 folds, and SVM2's 2 folds (one seed)

    # the page notices the dead worker (no heartbeat for the stale limit and no such process on this host),
    # queues the job again and starts a worker, which restores the finished fold and computes the rest
    page.get_by_text(re.compile(rf"Job {job_id} finished: experiment #\d+")).wait_for(timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_text(f"resumed: {len(units)} of {all_units} units restored from checkpoints, "
                            f"{all_units - len(units)} computed")).to_be_visible()
    expect(page.get_by_text(re.compile(r"Job \d+ failed"))).to_have_count(0)
    job = get_job(open_workspace(data), job_id)
    assert job.status == "done" and job.attempts == 2 and job.worker_pid != first.pid
    assert job.message.startswith(f"resumed: {len(units)} of {all_units} units restored")
    assert _checkpoints(data, job_id) == []  # a finished job keeps no checkpoints
    page_worker = int((data / "worker.pid").read_text().split()[0])  # the worker the page started
    assert page_worker == job.worker_pid
    summary = experiment_summary(open_workspace(data), job.experiment_id)
    assert set(summary["results"]["sweep"]) == {"fc6", "fc8"} and "B" in summary["results"]["methods"]
    assert all(len(v["fold_aucs"]) == 2 for v in summary["results"]["sweep"].values())


def test_cancel_asks_keeps_the_finished_units_and_resume_redoes_none(jobs_server, page, tmp_path):
    """Issue 25.4: Cancel asks for confirmation, keeps the checkpoints and offers Resume, which redoes no finished
    unit (today one click threw away 18 minutes of work)."""
    url, data = jobs_server
    # a worker the page started for an earlier test would take the job too (and finish it unheld): stop them first
    _stop_page_workers(data, wait=60)
    release = tmp_path / "release"  # the worker waits for it after its first checkpoint: mid-run when cancelled
    first = _test_worker(data, tmp_path / "cancelled.log", save_log=tmp_path / "first.units", hold_after=1,
                         release_file=release)
    try:
        _fill_sweep_form(page, url, taps=["fc8"], name="cancel then resume", svm2=False)
        expect(page.get_by_text(re.compile(r"Estimated time on this machine: about .+ for 4 units of work"))
               ).to_be_visible(timeout=180_000)  # before Start: fc6 and fc8 x 2 folds, one seed
        job_id = _start(page, data, "cancel then resume", first)
        _wait(lambda: len(_checkpoints(data, job_id)) >= 1, timeout=JOB_TIMEOUT_MS / 1000,
              what="the first finished fold", process=first)
        page.get_by_role("button", name="Cancel…").click()
        expect(page.get_by_text(re.compile(rf"Cancel job {job_id}\? Its finished units .* are kept"))).to_be_visible()
        assert get_job(open_workspace(data), job_id).status == "running"  # a question, not yet a cancel
        page.get_by_role("button", name=f"Yes, cancel job {job_id}").click()
        _wait(lambda: get_job(open_workspace(data), job_id).status == "cancelled", timeout=60, what="the cancel")
        release.touch()  # the held fold runs; the worker stops at the next unit boundary
        # the worker stops at its next unit boundary and frees the run slot; the finished units stay
        _wait(lambda: (lambda j: j.status == "cancelled" and j.slot is None)(get_job(open_workspace(data), job_id)),
              timeout=120, what="the job to stop", process=first)
    finally:
        first.terminate()
        first.wait()
    kept = {u for u, _ in _checkpoints(data, job_id)}
    assert kept and kept == set((tmp_path / "first.units").read_text().split()), (
        (tmp_path / "cancelled.log").read_text()[-3000:])
    resume = page.get_by_role("button", name=f"Resume job {job_id}")
    expect(resume).to_be_visible(timeout=60_000)
    resume.click()  # the page queues it again and starts a worker, which restores the kept units
    page.get_by_text(re.compile(rf"Job {job_id} finished: experiment #\d+")).wait_for(timeout=JOB_TIMEOUT_MS)
    all_units = 2 * 2  # fc6 and fc8 x 2 folds (one seed, no SVM2)
    expect(page.get_by_text(f"resumed: {len(kept)} of {all_units} units restored from checkpoints, "
                            f"{all_units - len(kept)} computed")).to_be_visible()
    job = get_job(open_workspace(data), job_id)
    assert job.status == "done" and job.message.startswith(f"resumed: {len(kept)} of {all_units} units restored")


def _mias_masses(mias_dir: Path) -> dict:
    findings, _ = parse_mias_info(mias_dir / "Info.txt")
    return {f"{f.refnum}#{f.index}": f for f in findings
            if (mias_dir / f"{f.refnum}.pgm").exists() and f.abnormality in MASS_TYPES}


def test_choosing_a_cohort_scopes_the_experiment_to_its_lesions(mias_server, page, mias_dir):
    url, data = mias_server
    masses = _mias_masses(mias_dir)
    n_benign = sum(f.label == "benign" for f in masses.values())
    n_malignant = len(masses) - n_benign
    _fill_sweep_form(page, url, taps=["fc8"], name="MIAS masses sweep", svm2=False, cohort="MIAS masses")
    # the counts and the ROI set of the chosen cohort, before anything runs
    expected_set = resolve_cohort(open_workspace(data), "MIAS masses").roi_set_sha256
    metrics = page.get_by_test_id("stMetric")
    expect(metrics.filter(has_text="Lesions (benign / malignant)")).to_contain_text(
        f"{len(masses)} ({n_benign} / {n_malignant})")
    expect(metrics.filter(has_text="ROIs (benign / malignant)")).to_contain_text(
        f"{len(masses)} ({n_benign} / {n_malignant})")
    expect(metrics.filter(has_text="ROI set (SHA-256)")).to_contain_text(expected_set[:12])
    expect(page.locator("body")).not_to_contain_text("this cohort uses synthetic lesion phantoms")
    job_id = _start(page, data, "MIAS masses sweep")
    page.get_by_text(re.compile(rf"Job {job_id} finished: experiment #\d+")).wait_for(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("body")).to_contain_text("cohort MIAS masses", timeout=60_000)  # the chart's legend

    workspace = open_workspace(data)
    job = get_job(workspace, job_id)
    summary = experiment_summary(workspace, job.experiment_id)
    config = summary["config"]
    assert config["cohort"]["name"] == "MIAS masses" and config["roi_set_sha256"] == expected_set
    assert not summary["uses_synthetic_data"]
    with workspace.sessions() as session:
        keys = session.scalars(select(Lesion.key).join(Roi, Roi.lesion_id == Lesion.id)
                               .where(Roi.id.in_(config["roi_ids"]))).all()
    assert sorted(keys) == sorted(masses)  # every MIAS mass lesion, and nothing else
