"""In a real browser: the Layer explorer on real MIAS ROIs (../shared/data) and the occlusion map of the Predictions
page ("why did it say malignant?") scored by the experiment's stored fold SVM. (The study report button and the Open
questions page have theirs in test_report_analyses_ui.py.)"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cadx.workflows import import_mias, open_workspace
from cadx.workflows.experiments import ExperimentSettings, run_experiment
from cadx.workflows.features import resolve_backbone
from tests.e2e.conftest import choose, full_screenshot, screenshot, serve_app, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def mias_server(tmp_path_factory, mias_dir):
    """The app over the real MIAS images with one experiment (AlexNet architecture, random weights: its ImageNet file
    is not available offline) on two taps."""
    data = tmp_path_factory.mktemp("e2e-explorer") / "data"
    ws = open_workspace(data)
    import_mias(ws, mias_dir, user="tester")
    loaded, note = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(ws, loaded, ExperimentSettings(taps=("pool5", "fc8"), ensemble_tap="fc8",
                                                                  analytic=False, repeats=1),
                                   name="MIAS explorer", user="tester", weights_note=note)
    ws.engine.dispose()
    with serve_app(data) as url:
        yield url, experiment_id


@pytest.fixture(scope="module")
def demo_experiment(app_server):
    url, data = app_server
    ws = open_workspace(data)
    loaded, note = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(ws, loaded, ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1,
                                                                  taps=("fc8",), ensemble_tap="fc8", n_folds=3),
                                   name="e2e occlusion", user="tester", weights_note=note)
    ws.engine.dispose()
    return url, experiment_id


def test_layer_explorer_on_real_mias_rois(mias_server, page):
    url, experiment_id = mias_server
    page.set_default_timeout(300_000)  # the first look at an ROI runs it through every tap
    page.goto(url)
    wait_for_app(page)
    page.goto(f"{url}/explorer")
    wait_for_app(page)
    page.get_by_role("heading", name="Layer explorer").wait_for()
    choose(page, page.get_by_role("combobox", name="AUCs and scores from"),
            page.get_by_role("option", name=re.compile(rf"^#{experiment_id} MIAS explorer")))
    page.get_by_text("Strongest activation maps, tap by tap").wait_for()
    main = page.locator("[data-testid='stMain']")
    expect(main.get_by_text(re.compile(r"fc8 1000 · AUC \d\.\d{3} ± \d\.\d{3}"))).to_be_visible()
    expect(main.get_by_text(re.compile(r"pool5 256×7×7 · AUC \d\.\d{3}"))).to_be_visible()
    expect(main.get_by_text("conv1 64×63×63 · not in this sweep")).to_be_visible()
    # the stored ROI, the network input and one mosaic per tap (11 AlexNet taps)
    expect(main.locator("[data-testid='stImage']")).to_have_count(13)
    expect(main.get_by_text(re.compile(r"The network input: 256 × 256"))).to_be_visible()
    page.get_by_text("This ROI's SVM score at each tap, against the classes").wait_for()
    main.locator(".js-plotly-plot").first.wait_for()
    full_screenshot(page, "layer-explorer-mias")
    # another ROI: its maps are computed, then every later view comes from the cache
    roi_box = page.get_by_role("combobox", name="ROI")
    first = roi_box.input_value()
    choose(page, roi_box, page.get_by_role("option").nth(3))
    assert roi_box.input_value() != first
    expect(main.locator("[data-testid='stImage']")).to_have_count(13)
    expect(main.get_by_text(re.compile(r"fc8 1000 · AUC"))).to_be_visible()


def test_occlusion_map_on_the_predictions_page(demo_experiment, page):
    url, experiment_id = demo_experiment
    page.set_default_timeout(300_000)  # one CNN pass per patch position
    page.goto(url)
    wait_for_app(page)
    page.goto(f"{url}/predictions")
    wait_for_app(page)
    choose(page, page.get_by_role("combobox", name="Experiment"),
            page.get_by_role("option", name=re.compile(rf"^#{experiment_id} e2e occlusion")))
    page.get_by_text("Why did SVM1 say this?").click()
    page.get_by_role("button", name="Compute the occlusion map").click()
    wait_for_app(page)
    page.get_by_text("Scored by the fold's stored SVM (no refit).").wait_for()
    expect(page.get_by_text(re.compile(r"p1 \d\.\d{3} \(stored \d\.\d{3}\), fold \d of \d+ \(seed \d+\), "
                                       r"tap fc8"))).to_be_visible()
    screenshot(page, "occlusion-map-predictions")
