"""Benchmark: the default layer sweep started from the browser, beside a CPU-heavy competitor (issue 11).

Drives the real app (Streamlit on loopback, as ``scripts/app.sh`` serves it) in Debian's headless Chromium through
Playwright, on a fresh data directory:

* ``--cohort mias`` (default): real MIAS imported with ``cadx import mias ../shared/data/mini-mias/all-mias``
  (or ``CADX_SHARED_DATA``), a cohort ``MIAS`` (every MIAS lesion: ``cadx cohort create MIAS --source mias``)
  chosen on the Layer sweep page;
* ``--cohort demo``: the synthetic demo the app creates on its first visit (``CADX_DEMO_LESIONS``, default 100),
  the page's default cohort.

Everything else is the page's default: the default backbone (EfficientNet-Lite0 with its ImageNet weights where
AlexNet's are absent), its 11 default taps, SVM2 and the ensembles, 5 folds, the default repeats (seeds). The sweep
runs in the background worker that the page starts, exactly as for a user. Unless ``--no-hog``, a busy-loop
process (one core, not niced) is started before the app and stopped afterwards: the competitor of issue 11's
"another CPU-heavy process running beside it". The load average is sampled every 5 s while the job runs.

Reported: wall time from the click on *Start sweep* until the job is done (and the page shows it finished), the
job's own run time, the load average during it, the experiment's extraction time (CNN features of every ROI and
tap), its cross-validation time (the sweep's taps plus SVM2) and the worker's attempts (1: never taken from its
worker). A failed job is reported with its error and the script exits 1. Results go to
``benchmarks/results/ui_sweep_<cohort>.json``.

Usage::

    python benchmarks/bench_ui_sweep.py                 # MIAS, with the competitor
    python benchmarks/bench_ui_sweep.py --cohort demo
    python benchmarks/bench_ui_sweep.py --no-hog        # quiet-machine figure
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cli, shared_data  # noqa: E402
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, serve_app, wait_for_app  # noqa: E402


class _LoadSampler(threading.Thread):
    """The 1-minute load average every ``every`` seconds until stopped."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(os.getloadavg()[0])
            self._halt.wait(self.every)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        s = self.samples or [float("nan")]
        return {"min": min(s), "mean": sum(s) / len(s), "max": max(s), "n_samples": len(self.samples)}


def _stop_workers(data: Path) -> None:
    for pid_file in [data / "worker.pid", *data.glob("worker-*.pid")]:
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


def _choose(page, label: str, option: str) -> None:
    page.get_by_test_id("stSelectbox").filter(has_text=label).click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}")).click()
    wait_for_app(page)


def run(cohort: str, *, hog: bool, timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright
    from sqlalchemy import select

    from cadx.workflows import open_workspace
    from cadx.workflows.experiments import experiment_summary
    from db.models import Job

    data = Path(tempfile.mkdtemp(prefix=f"bench-ui-sweep-{cohort}-")) / "data"
    data.mkdir(parents=True)
    t_setup = time.perf_counter()
    if cohort == "mias":
        cli(data, "import", "mias", str(shared_data() / "mini-mias" / "all-mias"))
        cli(data, "cohort", "create", "MIAS", "--source", "mias")
    setup_s = time.perf_counter() - t_setup

    competitor = None
    if hog:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    load = _LoadSampler()
    result: dict = {"cohort": cohort, "competitor": "one busy-loop process (not niced)" if hog else None,
                    "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                "load_before": os.getloadavg()},
                    "date": datetime.now(UTC).isoformat(timespec="seconds"), "setup_s": setup_s}
    try:
        with serve_app(data, script="app.py") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(600_000)  # a busy machine: the first visit may create the demo data
            page.goto(url)
            wait_for_app(page)
            page.goto(f"{url}/sweep")
            wait_for_app(page)
            page.get_by_role("button", name="Start sweep").wait_for()
            if cohort == "mias":
                _choose(page, "Cohort (which ROIs", "MIAS")
            backbone = page.get_by_test_id("stSelectbox").filter(has_text="Backbone").inner_text()
            cohort_shown = page.get_by_test_id("stSelectbox").filter(has_text="Cohort (which ROIs").inner_text()
            result["page"] = {"backbone": " ".join(backbone.split()), "cohort": " ".join(cohort_shown.split())}
            load.start()
            t0 = time.perf_counter()
            page.get_by_role("button", name="Start sweep").click()
            page.get_by_text(re.compile(r"Job \d+")).first.wait_for(timeout=120_000)
            ws = open_workspace(data)
            deadline = time.monotonic() + timeout_s
            while True:
                with ws.sessions() as session:
                    job = session.scalars(select(Job).order_by(Job.id.desc()).limit(1)).first()
                if job is not None and job.status in ("done", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the sweep did not finish in {timeout_s:.0f} s: job {job and job.message}")
                time.sleep(2)
            job_end = time.perf_counter()
            result["load_during"] = load.stop()
            result["job"] = {"id": job.id, "status": job.status, "attempts": job.attempts, "error": job.error,
                             "message": job.message,
                             "run_s": (job.finished_at - job.started_at).total_seconds()
                             if job.finished_at and job.started_at else None}
            if job.status == "done":
                page.get_by_text(re.compile(rf"Job {job.id} finished: experiment #\d+")).wait_for(timeout=300_000)
            result["wall_s"] = job_end - t0  # from the click to the job row saying done
            result["wall_to_page_s"] = time.perf_counter() - t0  # ... to the page saying so
            if job.status == "done":
                summary = experiment_summary(ws, job.experiment_id)
                res, config = summary["results"], summary["config"]
                sweep_s = sum(v["seconds"] for v in res["sweep"].values())
                svm2_s = res["methods"].get("B", {}).get("seconds")
                result["experiment"] = {
                    "id": job.experiment_id, "backbone": config["backbone"], "weights": config["weights"]["name"],
                    "taps": config["taps"], "n_taps": len(config["taps"]), "n_folds": config["n_folds"],
                    "repeats": config.get("repeats", 1), "n_rois": res["n_rois"], "n_lesions": res["n_lesions"],
                    "cohort": res["cohort"], "experiment_s": summary["seconds"],
                    "extraction_s": res["extraction"]["seconds"], "n_extracted": res["extraction"]["n_extracted"],
                    "cv_sweep_s": sweep_s, "cv_svm2_s": svm2_s,
                    "other_s": summary["seconds"] - res["extraction"]["seconds"] - sweep_s - (svm2_s or 0),
                    "per_tap_s": {t: v["seconds"] for t, v in res["sweep"].items()},
                    "auc_by_tap": {t: v["auc_mean"] for t, v in res["sweep"].items()}}
            browser.close()
    finally:
        if load.is_alive():
            result["load_during"] = load.stop()
        if competitor is not None:
            competitor.terminate()
            competitor.wait()
        _stop_workers(data)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", choices=["mias", "demo"], default="mias")
    parser.add_argument("--no-hog", action="store_true", help="no competing busy-loop process")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the job")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"Chromium not found at {CHROMIUM} (set CADX_CHROMIUM)")
    result = run(args.cohort, hog=not args.no_hog, timeout_s=args.timeout)
    out = REPO / "benchmarks" / "results" / f"ui_sweep_{args.cohort}{'' if not args.no_hog else '_no_hog'}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    job = result.get("job", {})
    if job.get("status") != "done":
        print(f"FAILED: job {job.get('id')} {job.get('status')}: {job.get('error')}", file=sys.stderr)
        sys.exit(1)
    e = result["experiment"]
    print(f"\n{args.cohort}: {e['n_taps']}-tap sweep ({e['backbone']}, {e['repeats']} seeds x {e['n_folds']} folds, "
          f"{e['n_rois']} ROIs) + SVM2 from the browser: wall {result['wall_s']:.0f} s (click to done), extraction "
          f"{e['extraction_s']:.0f} s, CV {e['cv_sweep_s']:.0f} s sweep + {e['cv_svm2_s'] or 0:.0f} s SVM2; "
          f"load average {result['load_during']['min']:.1f}-{result['load_during']['max']:.1f} "
          f"(mean {result['load_during']['mean']:.1f}); attempts {job['attempts']}")


if __name__ == "__main__":
    main()
