"""Benchmark: what Streamlit's garbage collection after every script run costs each click.

Streamlit runs a full ``gc.collect()`` after every script run unless ``runner.postScriptGC`` is off. Every widget
change reruns the page, and the app's process holds the workflows, pandas, plotly and, once a page has loaded a
backbone, torch: a heap of about half a million objects that the collector walks in full each time.
``.streamlit/config.toml`` therefore turns it off; Python's generational collector still runs, and arrays are freed
by reference counting as soon as a rerun drops them.

Measured here, in one process and on one workspace (the demo set, ``--lesions`` synthetic lesions): the CPU time of
``--reruns`` reruns of the Review ROIs page (AppTest: the app's script as a browser runs it) with the option on
(Streamlit's default, the baseline) and off, alternating so that a change of machine load hits both alike. AppTest's
script runner leaves the collection out, so "on" does here what the server's ``ScriptRunner._on_script_finished``
does when the option is on: ``gc.collect(2)`` after each run.

Usage::

    python benchmarks/bench_rerun_gc.py [--reruns 20] [--lesions 4]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
APP = str(ROOT / "app.py")


def _rerun_cpu_s(at, post_script_gc: bool, reruns: int) -> float:
    """CPU seconds of ``reruns`` reruns of the page, each followed by a full collection if ``post_script_gc``."""
    start = time.process_time()
    for _ in range(reruns):
        at.run()
        assert not at.exception, at.exception
        if post_script_gc:  # what streamlit.runtime.scriptrunner.ScriptRunner._on_script_finished does
            gc.collect(2)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reruns", type=int, default=20)
    parser.add_argument("--lesions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternating on/off rounds")
    args = parser.parse_args()

    import torch  # noqa: F401 - as in the app once a page has loaded a backbone
    from streamlit.testing.v1 import AppTest

    from cadx.workflows import import_demo, open_workspace

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        import_demo(open_workspace(data), n_lesions=args.lesions, seed=1)
        os.environ["CADX_DATA_DIR"] = str(data)
        os.environ.pop("CADX_DATABASE_URL", None)
        at = AppTest.from_file(APP, default_timeout=300)
        at.run()
        at.switch_page("pages/review.py").run()
        assert not at.exception, at.exception
        on, off = [], []
        for _ in range(args.rounds):
            on.append(_rerun_cpu_s(at, True, args.reruns))
            off.append(_rerun_cpu_s(at, False, args.reruns))
        gc.collect()
        start = time.process_time()
        gc.collect()
        one_gc = time.process_time() - start

    per_on = statistics.median(on) / args.reruns
    per_off = statistics.median(off) / args.reruns
    print(f"objects tracked by the collector: {len(gc.get_objects()):,}; "
          f"one full gc.collect(): {one_gc * 1000:.0f} ms CPU")
    print(f"Review ROIs page rerun, median of {args.rounds} rounds of {args.reruns} reruns (CPU per rerun):")
    print(f"  runner.postScriptGC on (Streamlit's default, baseline): {per_on * 1000:7.0f} ms")
    print(f"  runner.postScriptGC off (.streamlit/config.toml):       {per_off * 1000:7.0f} ms")
    print(f"  ratio off / on: {per_off / per_on:.2f}")


if __name__ == "__main__":
    main()
