"""The ROC page's *Better than chance?* and *What could this cohort show?* panels and the sweep page's best-tap
wording (issue 24), with streamlit's AppTest on the small demo experiment (two taps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select

from cadx.permutation import PermutationResult
from cadx.records import to_json
from cadx.workflows import open_workspace
from db.models import Job, PermutationTest
from tests.apptest_support import open_page, point_app_at
from tests.workspace_cache import SMALL_SWEEP, demo_experiment

pytestmark = pytest.mark.slow  # AppTest runs of whole pages: seconds each


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory, workspace_cache):
    return workspace_cache.data_dir(tmp_path_factory.mktemp("app-significance") / "data", demo_experiment,
                                    **SMALL_SWEEP)


@pytest.fixture
def use(monkeypatch):
    def use(data: Path) -> Path:
        return point_app_at(data, monkeypatch)

    yield use
    st.cache_resource.clear()
    st.cache_data.clear()


def _text(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
    parts += [e.value for e in at.info] + [e.value for e in at.warning]
    return "\n".join(parts)


def _store_test(ws, experiment_id: int) -> PermutationResult:
    """A stored permutation test (its numbers made up: the page only reads them)."""
    observed = {"tap:fc7": 0.62, "tap:fc8": 0.58, "A": 0.58, "B": 0.55, "C": 0.6, "Z": 0.57}
    null = {k: [0.45, 0.5, 0.55, 0.6, 0.65, 0.4, 0.52, 0.48, 0.7] for k in observed}
    result = PermutationResult.from_null(observed, null, seed=0)
    with ws.sessions.begin() as session:
        session.add(PermutationTest(experiment_id=experiment_id, n_permutations=9, seed=0, code_version="test",
                                    result=to_json(result), seconds=12.0, created_by="tester"))
    return result


def test_roc_page_queues_a_permutation_test_and_shows_its_result_and_the_power(use, experiment_dir, monkeypatch):
    import cadx.workflows.jobs as jobs

    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    monkeypatch.setattr(jobs, "ensure_worker", lambda ws: True)
    at = open_page("pages/roc.py")
    assert not at.exception, at.exception
    text = _text(at)
    assert "Better than chance? (permutation test)" in text and "No permutation test yet" in text
    assert "What could this cohort show at all? (power)" in text and "Hanley & McNeil (1982)" in text
    power = next(d.value for d in at.dataframe if "power for 0.81→0.86" in d.value.columns)
    assert power["comparison"].tolist()[:3] == ["C vs A", "C vs B", "A vs B"]
    assert (power["malignant"] + power["benign"]).tolist()[0] == 12  # lesions
    at.number_input(key="roc_permutations").set_value(40).run()
    at.button(key="roc_permutation_start").click().run()
    assert not at.exception, at.exception
    ws = open_workspace(data)
    try:
        queued = ws.sessions().__enter__().scalars(select(Job).where(Job.kind == "permutation")).all()
        assert [(j.status, j.params["experiment_id"], j.params["permutations"]) for j in queued] == [
            ("queued", experiment_id, 40)]
        result = _store_test(ws, experiment_id)
    finally:
        ws.engine.dispose()
    at = open_page("pages/roc.py")
    assert not at.exception, at.exception
    text = _text(at)
    assert "9 permutations" in text and "lesion labels permuted within the first seed's outer folds" in text
    shown = next(d.value for d in at.dataframe if "null SD" in d.value.columns)
    assert shown["statistic"].tolist()[-2:] == ["SVM1 on tap fc7", "SVM1 on tap fc8"]
    assert shown["p"].tolist()[-2] == pytest.approx(result.statistics["tap:fc7"].p_value)
    assert f"selection-adjusted p = {result.best_tap_p_max:.3g}" in text
    assert "No classifier is distinguishable from chance" in text

    at = open_page("pages/sweep.py")
    assert not at.exception, at.exception
    line = next(m.value for m in at.markdown if "the maximum of 2 taps" in m.value)
    assert "selection-adjusted p" in line and "one run's spread under the null: SD" in line
