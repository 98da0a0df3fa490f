"""Benchmark: the Layer explorer on real MIAS ROIs (target: every view < 2 s on CPU after the first extraction).

Imports ``../shared/data/mini-mias/all-mias`` into a throw-away workspace and runs one experiment (all default taps
of ``--backbone``, one seed, no Method B) so that every tap has an AUC and stored fold models. Then, for ``--rois``
ROIs of the experiment:

* **first extraction** (cold): the ROI through every tap, its strongest maps written to the activation cache;
* each **view** with the cache warm, as the median of ``--repeats`` runs, timing what the page does for it:
  - *input*: activations read back from the cache file, the stored ROI with its outline, the network input, both
    encoded as PNG (what the browser receives);
  - *tap maps*: every tap's mosaic of strongest maps, encoded as PNG, and the sweep's AUCs;
  - *scores*: the ROI's score at every tap from the stored fold models' records against every ROI's out-of-fold
    scores, and the plotly figure serialised to JSON;
  - *page rerun*: the whole page script with streamlit.testing's AppTest in a warm session (server time of a
    rerun after changing the ROI back to one already seen);
* the optional *check* (recompute every tap's score from the stored models and the feature store), not a view.

The baseline, measured in the same run, is the plainest way to show an ROI: decode its stored 16-bit PNG and encode
it as an 8-bit PNG for the browser. Each view is reported in seconds and as a ratio to that baseline.

Usage::

    python benchmarks/bench_layer_explorer.py                       # AlexNet architecture, random weights
    python benchmarks/bench_layer_explorer.py --backbone efficientnet_lite0 --weights default
"""

from __future__ import annotations

import argparse
import io
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

from PIL import Image  # noqa: E402

from cadx.explorer import mosaic, to_uint8  # noqa: E402
from cadx.roi import decode_png16  # noqa: E402
from cadx.workflows import import_mias, open_workspace, roi_overlay  # noqa: E402
from cadx.workflows.experiments import ExperimentSettings, run_experiment  # noqa: E402
from cadx.workflows.explorer import explorer_activations, explorer_rois, tap_aucs, tap_scores  # noqa: E402
from cadx.workflows.features import resolve_backbone, roi_records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CADX_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_S = 2.0


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="alexnet")
    parser.add_argument("--weights", default="random", choices=["random", "default"])
    parser.add_argument("--rois", type=int, default=3, help="ROIs explored (each: one cold extraction)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    args = parser.parse_args()
    mias = SHARED / "mini-mias" / "all-mias"
    if not mias.is_dir():
        sys.exit(f"MIAS not found at {mias} (set CADX_SHARED_DATA)")
    root = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    try:
        ws = open_workspace(root / "data")
        t0 = time.perf_counter()
        import_mias(ws, mias, user="bench")
        loaded, note = resolve_backbone(args.backbone, weights=args.weights, download=False)
        experiment_id = run_experiment(ws, loaded, ExperimentSettings(analytic=False, repeats=1),
                                       name="bench explorer", user="bench", weights_note=note)
        print(f"setup: MIAS imported and one experiment ({note}; {len(loaded.backbone.default_taps)} taps) in "
              f"{time.perf_counter() - t0:.0f} s")
        rois = explorer_rois(ws, experiment_id)
        picks = [int(i) for i in rois["roi_id"].iloc[np.linspace(0, len(rois) - 1, args.rois).astype(int)]]
        records = {r.id: r for r in roi_records(ws)}

        def baseline(roi_id):
            pixels = decode_png16(ws.path(records[roi_id].file).read_bytes())
            _png(to_uint8(pixels, low=0.0, high=65535.0))

        rows = []
        for roi_id in picks:
            t0 = time.perf_counter()
            _acts, cached = explorer_activations(ws, loaded, roi_id)
            first = time.perf_counter() - t0
            assert not cached

            def view_input(roi_id=roi_id):
                acts, cached = explorer_activations(ws, loaded, roi_id)
                assert cached
                _png(roi_overlay(ws, roi_id, experiment_id=experiment_id)[0])
                _png(to_uint8(acts.network_input[0]))

            def view_maps(roi_id=roi_id):
                acts, _ = explorer_activations(ws, loaded, roi_id)
                tap_aucs(ws, experiment_id)
                for tap in acts.taps.values():
                    _png(mosaic(tap))

            def view_scores(roi_id=roi_id):
                import plotly.graph_objects as go

                out = tap_scores(ws, experiment_id, roi_id)
                dist = out["distributions"]
                fig = go.Figure([go.Box(x=dist["tap"], y=dist["z"])])
                fig.to_json()

            base = _median(lambda roi_id=roi_id: baseline(roi_id), args.repeats)
            check = _median(lambda roi_id=roi_id: tap_scores(ws, experiment_id, roi_id, verify=True), 1)
            rows.append({"roi": roi_id, "first": first, "baseline": base,
                         "input": _median(view_input, args.repeats), "maps": _median(view_maps, args.repeats),
                         "scores": _median(view_scores, args.repeats), "check": check})
        page = _page_rerun(root / "data", experiment_id, args.backbone, picks, args.repeats)

        print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; backbone {loaded.name} ({loaded.weights.source} weights), "
              f"{len(rois)} MIAS ROIs in the experiment")
        print(f"{'ROI':>5} {'first extraction':>17} {'baseline':>9} {'input':>14} {'tap maps':>14} {'scores':>14} "
              f"{'check (not a view)':>19}")
        for r in rows:
            def cell(key, r=r):
                return f"{r[key]:6.3f} s {r[key] / r['baseline']:4.1f}×"
            print(f"{r['roi']:>5} {r['first']:15.2f} s {r['baseline']:7.3f} s {cell('input'):>14} {cell('maps'):>14} "
                  f"{cell('scores'):>14} {r['check']:17.2f} s")
        base = statistics.median(r["baseline"] for r in rows)
        print(f"page rerun (AppTest, warm, whole script): {page:.3f} s = {page / base:.1f}× the baseline "
              f"{base:.3f} s")
        worst = max(max(r["input"], r["maps"], r["scores"]) for r in rows + [{"input": page, "maps": 0, "scores": 0}])
        print(f"slowest view {worst:.3f} s: {'within' if worst < TARGET_S else 'OVER'} the {TARGET_S:.0f} s target")
        if args.keep:
            print(f"workspace kept at {root}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _page_rerun(data: Path, experiment_id: int, backbone: str, picks: list[int], repeats: int) -> float:
    """Median server time of a warm rerun of the whole page (AppTest), switching between two ROIs already seen."""
    os.environ["CADX_DATA_DIR"] = str(data)
    from streamlit.testing.v1 import AppTest
    from streamlit.testing.v1.util import patch_config_options

    with patch_config_options({"server.address": "127.0.0.1"}):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
        at.run()
        at.switch_page("pages/explorer.py").run()
        at.selectbox(key="lx_backbone").set_value(backbone).run()
        at.selectbox(key=f"lx_experiment_{backbone}").set_value(experiment_id).run()
        key = f"lx_roi_{experiment_id}"
        for roi in picks[:2]:  # warm the in-process caches
            at.selectbox(key=key).set_value(roi).run()
        assert not at.exception, at.exception
        times = []
        for k in range(repeats):
            t0 = time.perf_counter()
            at.selectbox(key=key).set_value(picks[k % 2]).run()
            times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    return statistics.median(times)


if __name__ == "__main__":
    main()
