"""Benchmark: the server time of the Review, ROC curves, Predictions and Open questions pages, on a quiet machine and
with CPU hogs beside them (issue 25.8: under load 28 the Review page stayed grey for more than 9 s).

The workspace is real data: MIAS (``../shared/data/mini-mias/all-mias``) imported into a temporary data directory
and one experiment (``cadx evaluate --cohort paper --repeats 1``, 5 folds with the lowered guard rail the shared copy
needs). Each page is opened with streamlit.testing's AppTest in a fresh session (its first render, with the Review
page's thumbnails made cold) and rerun (what every click that reruns the whole page costs). A page's time is the
median over ``--repeats`` fresh sessions.

The baseline is the same measurement on the same machine in the same run without competitors; then ``--hogs`` busy-
loop processes (not niced; default 4 × the CPUs, a load like the one reported) run beside it. The ratio says how much
of the machine the pages lose to a loaded neighbour: a ratio near hogs/CPUs + 1 means the page's own work is all on
the CPU (nothing else to take off the rerun path), much above it means waiting (locks, sleeps) grew with the load.

Usage::

    python benchmarks/bench_pages_under_load.py                 # 4 x CPUs hogs
    python benchmarks/bench_pages_under_load.py --hogs 0        # the quiet figures only
    python benchmarks/bench_pages_under_load.py --data-dir D    # an existing workspace with an experiment
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cli, shared_data  # noqa: E402

PAGES = {"Review ROIs": "pages/review.py", "ROC curves": "pages/roc.py", "Predictions": "pages/predictions.py",
         "Open questions": "pages/analyses.py"}


def build(data: Path) -> None:
    """MIAS and one experiment on its masses, through the CLI as a user would."""
    cli(data, "import", "mias", str(shared_data() / "mini-mias" / "all-mias"))
    cli(data, "evaluate", "--cohort", "paper", "--repeats", "1", "--min-lesions-per-fold", "2")


def _open(page: str) -> tuple[float, float]:
    """(first render, rerun) in seconds of ``page`` in a fresh AppTest session."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=900)
    at.run()  # the landing page: opens the workspace (not timed)
    start = time.perf_counter()
    at.switch_page(page).run()
    first = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception}")
    start = time.perf_counter()
    at.run()
    return first, time.perf_counter() - start


def measure(data: Path, repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for title, page in PAGES.items():
        firsts, reruns = [], []
        for _ in range(repeats):
            if title == "Review ROIs":
                shutil.rmtree(data / "thumbs", ignore_errors=True)  # cold thumbnails, as on a first visit
            first, rerun = _open(page)
            firsts.append(first)
            reruns.append(rerun)
        out[title] = {"first render s": statistics.median(firsts), "rerun s": statistics.median(reruns)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=4 * (os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="an existing workspace with an experiment (default: build one)")
    args = parser.parse_args()
    from streamlit import config as st_config

    st_config.set_option("server.address", "127.0.0.1")  # served as scripts/app.sh serves it: no sign-in
    os.environ.pop("CADX_DATABASE_URL", None)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="cadx-bench-pages-")
        data = Path(tmp) / "data"
        start = time.perf_counter()
        build(data)
        print(f"MIAS imported and evaluated in {time.perf_counter() - start:.0f} s")
    else:
        data = args.data_dir
    os.environ["CADX_DATA_DIR"] = str(data)
    try:
        _open("pages/review.py")  # warm-up: imports and Streamlit's first-run costs, not timed
        quiet_load = os.getloadavg()
        quiet = measure(data, args.repeats)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        try:
            time.sleep(5 if hogs else 0)
            loaded = measure(data, args.repeats) if hogs else None
            loaded_load = os.getloadavg()  # after the measurement: the 1-minute average needs a minute to rise
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"cadx pages under load - {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, SQLite, MIAS; median of {args.repeats} fresh sessions")
    print(f"load average (1, 5, 15 min): quiet run {quiet_load[0]:.1f} {quiet_load[1]:.1f} {quiet_load[2]:.1f}"
          + (f"; with {args.hogs} busy loops {loaded_load[0]:.1f} {loaded_load[1]:.1f} {loaded_load[2]:.1f}"
             if loaded else ""))
    print(f"\n{'page':16s} {'':14s} {'quiet':>8s}" + (f" {f'{args.hogs} hogs':>9s} {'ratio':>6s}" if loaded else ""))
    for title in PAGES:
        for key in ("first render s", "rerun s"):
            line = f"{title:16s} {key:14s} {quiet[title][key]:7.2f}s"
            if loaded:
                line += f" {loaded[title][key]:8.2f}s {loaded[title][key] / quiet[title][key]:5.1f}x"
            print(line)
    if loaded:
        print(f"\n(all on the CPU, the ratio would be about {args.hogs / (os.cpu_count() or 1) + 1:.0f}x)")
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "repeats": args.repeats, "hogs": args.hogs, "load_quiet": quiet_load,
              "load_with_hogs": loaded_load if loaded else None, "quiet": quiet, "with_hogs": loaded}
    out = REPO / "benchmarks" / "results" / "pages_under_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
