"""Benchmark: the Review ROIs page with 5,000 ROIs (target: first render under 2 s).

Builds a throw-away workspace of ``--rois`` ROIs quickly by inserting rows directly: 2-3 ROIs per lesion, five
lesions per patient, labels, views, QC flags and some exclusions (with their review events) spread like a real
set. The rows have distinct ROI hashes, so every thumbnail of the first page is made fresh on the first render
(cold cache); their pixels come from 64 distinct 512 x 512 16-bit PNGs written once.

Timed, each as the median of ``--repeats`` runs where repeatable (targets: first render < 2 s, flag one ROI
< 0.5 s server time, page change < 1 s):

* the browse query alone (first page; a filtered page; a page deep in the list) and the counts;
* the page's first render with streamlit.testing's AppTest in a fresh session (cold thumbnails), then a warm
  rerun, then opening one ROI (outline, history, lesion views);
* flagging and unflagging the open ROI, and "next ROI" turning the grid page: the server time of the fragment
  rerun the browser asks for (the button's callback plus the fragment's body, timed by the page itself). The page
  makes the thumbnails of the pages beside the one shown in a background thread; the page turn is timed after
  that (a reviewer looks at a page for seconds) and, as the worst case, with every thumbnail removed first.

The baseline is the same measurement on a near-empty database (1 ROI: an empty one would make the app create the
demo data first); the ratio says what 5,000 ROIs cost over the page's fixed cost.

Usage::

    python benchmarks/bench_review_page.py              # 5,000 ROIs
    python benchmarks/bench_review_page.py --rois 20000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from cadx.workflows import RoiFilters, browse_rois, open_workspace, review_counts  # noqa: E402
from cadx.workflows.importing import store_roi_png  # noqa: E402
from db.models import Image, Lesion, Patient, ReviewEvent, Roi  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TARGET_S = 2.0


def build(data_dir: Path, n_rois: int, seed: int = 0) -> None:
    """A workspace with ``n_rois`` ROIs, inserted directly (no image reading or cropping)."""
    rng = np.random.default_rng(seed)
    ws = open_workspace(data_dir)
    files = []
    yy, xx = np.mgrid[0:512, 0:512]
    for k in range(min(64, n_rois)):
        blob = np.exp(-(((yy - 256) ** 2 + (xx - 256) ** 2) / (2 * (30 + k) ** 2)))
        pixels = (20000 + 30000 * blob + rng.normal(0, 3000, (512, 512))).clip(0, 65535).astype(np.uint16)
        files.append(store_roi_png(ws.data_dir, pixels)[0])
    patients, lesions, images, rois, events = [], [], [], [], []
    lesion_id = image_id = 0
    views = ["CC", "MLO", "ML"]
    while len(rois) < n_rois:
        lesion_id += 1
        patient_id = (lesion_id - 1) // 5 + 1
        if (lesion_id - 1) % 5 == 0:
            patients.append({"id": patient_id, "source": "bench", "key": f"bench-P{patient_id:05d}",
                             "is_synthetic": True})
        lesions.append({"id": lesion_id, "patient_id": patient_id, "key": f"bench-L{lesion_id:05d}",
                        "label": "malignant" if rng.random() < 0.55 else "benign",
                        "pathology_source": "benchmark", "is_synthetic": True})
        for v in range(min(int(rng.integers(2, 4)), n_rois - len(rois))):
            image_id += 1
            images.append({"id": image_id, "patient_id": patient_id, "source_name": f"bench-{image_id}",
                           "sha256": hashlib.sha256(f"image-{image_id}".encode()).hexdigest(),
                           "source_format": "synthetic", "view": views[v], "laterality": "L", "rows": 1000,
                           "columns": 800, "pixel_spacing_row_mm": 0.1, "pixel_spacing_col_mm": 0.1,
                           "pixel_spacing_source": "synthetic", "header": {}, "is_synthetic": True})
            roi_id = len(rois) + 1
            excluded = rng.random() < 0.05
            flags = [f for f, p in (("padded", 0.1), ("mostly_background", 0.03)) if rng.random() < p]
            rois.append({"id": roi_id, "lesion_id": lesion_id, "image_id": image_id,
                         "sha256": hashlib.sha256(f"roi-{roi_id}".encode()).hexdigest(),
                         "file": files[roi_id % len(files)], "centre_row": 500.0, "centre_col": 400.0,
                         "centre_source": "benchmark", "size_px": 512, "pixel_size_mm": 0.1, "field_mm": 51.2,
                         "padded_fraction": 0.0, "background_fraction": 0.0, "qc_flags": flags,
                         "included": not excluded, "exclusion_reason": "compression_paddle" if excluded else None,
                         "is_synthetic": True})
            if excluded:
                events.append({"roi_id": roi_id, "user": "bench", "action": "exclude",
                               "reason": "compression_paddle"})
    with ws.sessions.begin() as session:
        for model, rows in ((Patient, patients), (Lesion, lesions), (Image, images), (Roi, rois),
                            (ReviewEvent, events)):
            for start in range(0, len(rows), 2000):
                if rows[start:start + 2000]:
                    session.execute(insert(model), rows[start:start + 2000])
    ws.engine.dispose()


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(data_dir: Path, repeats: int) -> dict[str, float]:
    import streamlit as st
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    # Served as `bash scripts/app.sh` serves it: on loopback only, where no account means no sign-in.
    st_config.set_option("server.address", "127.0.0.1")

    os.environ["CADX_DATA_DIR"] = str(data_dir)
    os.environ.pop("CADX_DATABASE_URL", None)
    ws = open_workspace(data_dir)
    out = {
        "query: first page": _median(lambda: browse_rois(ws, page=1, page_size=48), repeats),
        "query: filtered page": _median(lambda: browse_rois(
            ws, RoiFilters(labels=("malignant",), status="included", qc_flags=("padded",)), page=2), repeats),
        "query: page 100": _median(lambda: browse_rois(ws, page=100, page_size=48), repeats),
        "query: counts": _median(lambda: review_counts(ws), repeats),
    }
    ws.engine.dispose()
    shutil.rmtree(data_dir / "thumbs", ignore_errors=True)
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()  # the app's landing page: opens the workspace (not timed)
    start = time.perf_counter()
    at.switch_page("pages/review.py").run()
    out["page: first render (cold thumbnails)"] = time.perf_counter() - start
    assert not at.exception, at.exception
    out["page: rerun (warm)"] = _median(lambda: at.run(), repeats)
    start = time.perf_counter()
    at.button(key="review_open_1").click().run()
    out["page: open one ROI"] = time.perf_counter() - start
    assert not at.exception, at.exception
    out["_grid_items"] = len([c for c in at.checkbox if str(c.key).startswith("review_sel_")])

    # The moves a reviewer makes all day rerun only the grid-and-detail fragment in the browser. Their server time
    # is the button's callback (the database write or query) plus the fragment's body, both timed by the page
    # itself (AppTest reruns the whole script, so its wall time is an upper bound and not the number).
    def fragment_s() -> float:
        return at.session_state["_review_callback_s"] + at.session_state["_review_fragment_s"]

    ws = open_workspace(data_dir)
    included_id = browse_rois(ws, RoiFilters(status="included"), page_size=1).rows[0].id
    n_rois = review_counts(ws)["rois"]
    ws.engine.dispose()
    at.number_input(key="review_goto").set_value(included_id).run()
    flags, unflags = [], []
    for _ in range(repeats):
        at.button(key="review_flag").click().run()
        flags.append(fragment_s())
        at.button(key="review_unflag").click().run()
        unflags.append(fragment_s())
    assert not at.exception, at.exception
    out["fragment: flag one ROI"] = statistics.median(flags)
    out["fragment: unflag one ROI"] = statistics.median(unflags)
    turns, cold_turns = [], []
    for k in range(repeats):  # from the last ROI of a page, "next" (key j) turns the grid page
        at.number_input(key="review_goto").set_value(min(48 * (2 * k + 1), n_rois)).run()
        at.session_state["_review_prefetch"].join()  # the reviewer looks at the page: its neighbours get made
        at.button(key="review_next").click().run()
        turns.append(fragment_s())
        at.session_state["_review_prefetch"].join()
        shutil.rmtree(data_dir / "thumbs", ignore_errors=True)  # the same with no thumbnail made ahead
        at.number_input(key="review_goto").set_value(min(48 * (2 * k + 2), n_rois)).run()
        at.session_state["_review_prefetch"].join()
        shutil.rmtree(data_dir / "thumbs", ignore_errors=True)
        at.button(key="review_next").click().run()
        cold_turns.append(fragment_s())
        at.session_state["_review_prefetch"].join()
    assert not at.exception, at.exception
    out["fragment: next ROI, turning the page"] = statistics.median(turns)
    out["fragment: same, no thumbnail made ahead"] = statistics.median(cold_turns)
    at.number_input(key="review_goto").set_value(included_id).run()
    start = time.perf_counter()
    at.button(key="review_flag").click().run()
    out["AppTest: whole-script rerun after a flag"] = time.perf_counter() - start
    at.button(key="review_unflag").click().run()  # leave the workspace as it was (the warm-up reuses it)
    assert not at.exception, at.exception
    st.cache_resource.clear()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"cadx Review page benchmark - {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, SQLite")
    with tempfile.TemporaryDirectory(prefix="cadx-bench-review-") as tmp:
        small, big = Path(tmp) / "small", Path(tmp) / "big"
        build(small, 1)
        start = time.perf_counter()
        build(big, args.rois)
        print(f"built {args.rois} ROIs in {time.perf_counter() - start:.1f} s")
        measure(small, 1)  # warm-up: imports and Streamlit's first-run costs, not timed
        baseline = measure(small, args.repeats)
        loaded = measure(big, args.repeats)
    print(f"\n{'':40s} {'1 ROI (baseline)':>18s} {f'{args.rois} ROIs':>12s} {'ratio':>7s}")
    for key in baseline:
        if key.startswith("_"):
            continue
        print(f"{key:40s} {baseline[key] * 1000:15.0f} ms {loaded[key] * 1000:9.0f} ms "
              f"{loaded[key] / baseline[key]:6.1f}x")
    first = loaded["page: first render (cold thumbnails)"]
    print(f"\nROIs on the first page: {loaded['_grid_items']}. First render with {args.rois} ROIs: {first:.2f} s "
          f"(target < {TARGET_S:.0f} s): {'OK' if first < TARGET_S else 'OVER TARGET'}")
    flag, turn = loaded["fragment: flag one ROI"], loaded["fragment: next ROI, turning the page"]
    print(f"Flag one ROI: {flag:.3f} s server time (target < 0.5 s): {'OK' if flag < 0.5 else 'OVER TARGET'}. "
          f"Page change: {turn:.3f} s (target < 1 s): {'OK' if turn < 1 else 'OVER TARGET'}. (With 1 ROI there "
          "is no next page: its 'next ROI' row is the same move without the page turn.)")


if __name__ == "__main__":
    main()
