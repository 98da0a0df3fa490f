"""The Open questions page and the ROC page's study report with streamlit's AppTest, on a small real experiment
(12-lesion synthetic demo, AlexNet with random weights)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import streamlit as st

from cadx import words
from cadx.workflows import lesion_predictions, open_workspace, roi_predictions
from cadx.workflows.analyses import agreement_analysis, correlation_analysis
from tests.apptest_support import open_page, point_app_at
from tests.workspace_cache import demo_experiment

pytestmark = pytest.mark.slow  # AppTest runs of whole pages: seconds each


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory, workspace_cache):
    settings = {"min_lesions_per_class_per_fold": 1, "repeats": 1, "taps": ("conv5", "fc8"), "ensemble_tap": "fc8",
                "n_folds": 3}
    return workspace_cache.data_dir(tmp_path_factory.mktemp("app-analyses") / "data", demo_experiment, n_lesions=12,
                                    seed=2, settings=settings, name="small", weights_note=True)


@pytest.fixture
def use(monkeypatch):
    def use(data: Path) -> Path:
        return point_app_at(data, monkeypatch)

    yield use
    st.cache_resource.clear()
    st.cache_data.clear()


def _frame(at, column: str):
    """The first table on the page with ``column``."""
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert frames, f"no table with a column {column!r}"
    return frames[0]


def test_open_questions_page_shows_the_four_analyses(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    at = open_page("pages/analyses.py", timeout=300)
    text = "\n".join(m.value for m in at.markdown)
    assert "SYNTHETIC DEMO DATA" in text
    ws = open_workspace(data)
    try:
        agreement = agreement_analysis(ws, experiment_id, level="lesion")
        corr = correlation_analysis(ws, experiment_id, tap="fc8", n_components=10)
    finally:
        ws.engine.dispose()
    shown = _frame(at, "SVM2 wrong")
    assert shown.to_numpy().tolist() == agreement["result"].table.tolist()
    assert f"McNemar exact p = {agreement['result'].mcnemar_p:.4g}" in text
    at.button(key="map_run").click().run(timeout=600)
    assert not at.exception, at.exception
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    heatmap = [s for s in charts.values() if s["data"][0]["type"] == "heatmap"][0]
    assert len(heatmap["data"][0]["x"]) == 21 and len(heatmap["data"][0]["y"]) == len(corr["frame"])
    scatter = [s for s in charts.values() if s["data"][0]["type"] == "scatter"][0]
    assert {t["name"] for t in scatter["data"]} == {"benign", "malignant"}
    assert "t-SNE of fc8 (28 ROIs)" in scatter["layout"]["title"]["text"]
    # Method D on request
    at.button(key="fusion_run").click().run(timeout=600)
    assert not at.exception, at.exception
    tests = _frame(at, "ΔAUC (mean of fold AUCs, D − other)")
    assert list(tests["comparison"]) == ["D vs SVM1 (CNN features)", "D vs SVM2 (analytic features)",
                                         "D vs Ensemble (SVM1 + SVM2)"]
    assert _frame(at, "features")["features"].item() == 1000 + 21


def test_roc_page_offers_the_study_report(use, experiment_dir):
    use(experiment_dir[0])
    at = open_page("pages/roc.py", timeout=300)
    assert any(b.label == "Study report (HTML)" for b in at.get("download_button"))


def test_predictions_page_explains_p1_by_occlusion(use, experiment_dir):
    use(experiment_dir[0])
    at = open_page("pages/predictions.py", timeout=300)
    assert len(at.image) == 1
    at.select_slider(key="occ_patch").set_value(128)
    at.select_slider(key="occ_stride").set_value(128)
    at.button(key="occ_run").click().run(timeout=600)
    assert not at.exception, at.exception
    assert len(at.image) == 3, "no occlusion map and colour bar shown"  # the ROI, its map, the map's colour scale
    captions = [c for image in at.image[1:] for c in image.proto.imgs[0].caption.splitlines()]
    assert captions[0].startswith("p1 ") and captions[1].startswith("Colour scale, change in p1"), captions
    assert not at.error, [e.value for e in at.error]


_RAW_NAMES = {code for code, name in words.CASE_COLUMNS.items() if code != name}


def _reads_plainly(at) -> None:
    """No raw column name in any table, empty cells shown as words.EMPTY, no None/nan in the page's text."""
    for table in at.dataframe:
        assert not _RAW_NAMES & set(map(str, table.value.columns)), list(table.value.columns)
        if set(table.value.columns) & {"fold", "truth"}:  # a table of cases: its empty cells read as EMPTY
            assert table.proto.placeholder == words.EMPTY
    text = " ".join(m.value for m in [*at.markdown, *at.caption])
    assert not re.search(r"\b(None|nan|NaN)\b", text), text


def test_the_same_case_reads_the_same_on_predictions_and_open_questions(use, experiment_dir):
    # Issue 25, item 3: a lesion was "fold 2" on Predictions and "fold 1" on Open questions, truth words on one page
    # and 0/1 on the other. The experiment: 3 folds, seed 0.
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    ws = open_workspace(data)
    try:
        stored = {"lesion": lesion_predictions(ws, experiment_id).set_index("lesion_key"),
                  "roi": roi_predictions(ws, experiment_id).set_index("roi_id")}
    finally:
        ws.engine.dispose()
    questions = open_page("pages/analyses.py", timeout=300)
    predictions = open_page("pages/predictions.py", timeout=300)
    for level, key in (("lesion", "lesion"), ("roi", "ROI")):
        questions.radio(key="agree_level").set_value(level).run()
        predictions.radio(key="pred_level").set_value(level).run()
        assert not questions.exception and not predictions.exception
        cases = _frame(questions, "|p1 − p2|")
        table = _frame(predictions, "|p1 − p2|").set_index(key)
        assert len(cases) == 10
        for _, case in cases.iterrows():
            fold = int(stored[level].at[case[key], "fold"])  # stored 0-based
            assert case["fold"] == table.at[case[key], "fold"] == f"fold {fold + 1} of 3 (seed 0)"
            truth = "malignant" if stored[level].at[case[key], "truth"] == 1 else "benign"
            assert case["truth"] == table.at[case[key], "truth"] == truth
        _reads_plainly(questions)
        _reads_plainly(predictions)
    # the opened ROI's details say its fold the same way
    opened = int(predictions.selectbox(key="pred_open_roi_roi").value)
    fold = int(stored["roi"].at[opened, "fold"])
    assert any(f"fold {fold + 1} of 3 (seed 0)" in m.value for m in predictions.markdown)
