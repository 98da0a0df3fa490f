"""In a real browser: download the study report from the ROC page and check it is the self-contained report of the
chosen experiment; open the Open questions page and run its four analyses (Method D on request)."""

from __future__ import annotations

import pytest

from cadx.report import SECTIONS
from cadx.workflows import open_workspace
from cadx.workflows.experiments import ExperimentSettings, run_experiment
from cadx.workflows.features import resolve_backbone
from tests.e2e.conftest import screenshot, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server_with_experiment(app_server):
    url, data = app_server
    ws = open_workspace(data)
    loaded, note = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(ws, loaded, ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1, taps=("conv5", "fc8"), ensemble_tap="fc8",
                                                                  n_folds=3), name="e2e report", user="tester",
                                   weights_note=note)
    ws.engine.dispose()
    return url, experiment_id


def _open(page, url: str) -> None:
    page.goto(url)
    wait_for_app(page)


def test_download_the_study_report_from_the_roc_page(server_with_experiment, page):
    url, experiment_id = server_with_experiment
    _open(page, url)
    _open(page, f"{url}/roc")
    page.get_by_text("Performance (Table 1)").wait_for()
    with page.expect_download(timeout=120_000) as download:
        page.get_by_role("button", name="Study report (HTML)").click()
    assert download.value.suggested_filename == f"cadx-roc-experiment{experiment_id}-roi-report.html"
    text = open(download.value.path(), encoding="utf-8").read()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert "SYNTHETIC DATA" in text and f"experiment #{experiment_id} e2e report" in text
    assert "<script" not in text and text.count("<svg") == 2
    screenshot(page, "report-ui-roc-page")


def test_open_questions_page_runs_the_analyses(server_with_experiment, page):
    url, _experiment_id = server_with_experiment
    page.set_default_timeout(300_000)  # the first visit computes the agreement and the principal components
    _open(page, url)
    _open(page, f"{url}/analyses")
    # McNemar and φ are refused (with the reason) when a classifier calls every lesion one class; the counts always show
    page.get_by_text("independent errors would give").wait_for()
    page.get_by_role("tab", name="CNN vs analytic features").click()
    page.get_by_text("Strongest correlations").wait_for()
    page.get_by_role("tab", name="Embedding map").click()
    page.get_by_role("button", name="Compute the map").click()
    wait_for_app(page)
    page.get_by_text("Click a point to open its ROI").wait_for()
    page.get_by_role("tab", name="Method D: fusion").click()
    page.get_by_role("button", name="Run Method D").click()
    wait_for_app(page)
    page.get_by_text("features, tap fc8): AUC").wait_for(timeout=300_000)
    screenshot(page, "report-ui-open-questions")
