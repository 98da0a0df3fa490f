"""The cohort picker in the app (AppTest): counts and the guard rails' verdict shown before anything runs, a cohort
saved from the sweep page, the job it queues, and the review page's cohort filter."""

from __future__ import annotations

import pytest
import streamlit as st
from sqlalchemy import select

from cadx.workflows import import_demo, open_workspace
from db.models import Job
from tests.apptest_support import open_page, point_app_at

pytestmark = pytest.mark.slow  # AppTest runs of whole pages: seconds each


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, workspace_cache):
    return workspace_cache.data_dir(tmp_path_factory.mktemp("app-cohorts") / "data", import_demo, n_lesions=12,
                                    seed=2)[0]


@pytest.fixture
def app_data(demo_dir, monkeypatch):
    import cadx.workflows.jobs as jobs

    point_app_at(demo_dir, monkeypatch)
    monkeypatch.setattr(jobs, "ensure_worker", lambda ws: True)
    yield demo_dir
    st.cache_resource.clear()
    st.cache_data.clear()


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_the_sweep_page_shows_the_cohort_and_refuses_one_too_small_before_anything_runs(app_data, monkeypatch):
    at = open_page("pages/sweep.py")
    assert at.selectbox(key="sweep_cohort").value == "all"
    metrics = _metrics(at)
    assert metrics["Lesions (benign / malignant)"] == "12 (6 / 6)" and metrics["Patients"] == "10"  # demo patients have several lesions
    assert any("SYNTHETIC DEMO DATA" in m.value for m in at.markdown)  # no real data: the phantoms, said so
    errors = " ".join(e.value for e in at.error)
    assert "cannot be used" in errors and "6 benign and 6 malignant lesions: fewer than 5" in errors
    assert at.button(key="sweep_start").disabled

    # a cohort saved on the page is chosen at once, with its own verdict
    at.text_input(key="cohort_new_name").input("benign only").run()
    at.multiselect(key="cohort_new_labels").set_value(["benign"]).run()
    at.button(key="cohort_new_save").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="sweep_cohort").value == "benign only"
    assert _metrics(at)["ROIs (benign / malignant)"].endswith("/ 0)")
    assert any("one class only" in e.value for e in at.error)

    # the same name again: a clear error in the page's words (no command-line flag), nothing saved twice
    at.text_input(key="cohort_new_name").input("benign only").run()
    at.button(key="cohort_new_save").click().run()
    errors = " ".join(e.value for e in at.error)
    assert "exists already" in errors and "tick “Replace the saved cohort of this name”" in errors
    assert "--replace" not in errors
    at.checkbox(key="cohort_new_replace").check().run()
    at.multiselect(key="cohort_new_labels").set_value(["malignant"]).run()
    at.button(key="cohort_new_save").click().run()
    assert not any("exists already" in e.value for e in at.error)
    assert _metrics(at)["Lesions (benign / malignant)"] == "6 (0 / 6)"  # replaced: the malignant ones now

    # the guard rail's fix in the page's words: its fields, never "--folds" or "--min-lesions-per-fold"
    at.selectbox(key="sweep_cohort").select("paper").run()
    assert at.number_input(key="sweep_folds").value == 5  # the paper cohort's folds
    at.number_input(key="sweep_folds").set_value(2).run()
    errors = " ".join(e.value for e in at.error)
    assert "6 benign and 6 malignant lesions: fewer than 5" in errors and "--" not in errors
    assert "keep 2 folds by setting “Minimum lesions of each class per fold” to 3" in errors
    assert at.button(key="sweep_start").disabled
    # the guard rail is a field of the page: lowered there, the sweep starts and its job records it
    at.number_input(key="sweep_min_lesions").set_value(3).run()
    assert not at.error and not at.button(key="sweep_start").disabled
    assert any("Guard rail lowered to 3 lesions of each class per fold" in w.value for w in at.warning)
    at.button(key="sweep_start").click().run()
    ws = open_workspace(app_data)
    try:
        with ws.sessions() as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job.params["cohort"] == "paper" and job.status == "queued"
        assert job.params["min_lesions_per_class_per_fold"] == 3 and job.params["n_folds"] == 2
        assert job.params["extra"] == {"folds_chosen_over_cohort": {"cohort": 5, "sweep": 2}}
    finally:
        ws.engine.dispose()


def test_a_cohort_s_own_folds_are_the_sweep_page_s_default(app_data):
    ws = open_workspace(app_data)
    try:
        from cadx.cohorts import CohortDefinition
        from cadx.workflows.cohorts import save_cohort

        save_cohort(ws, "two folds", CohortDefinition(n_folds=2), user="tester", replace=True)
    finally:
        ws.engine.dispose()
    at = open_page("pages/sweep.py")
    at.selectbox(key="sweep_cohort").select("two folds").run()
    assert at.number_input(key="sweep_folds").value == 2  # not the page's 5 overriding the cohort's 2
    assert not any("sets 2 folds" in i.value for i in at.info)  # the cohort's own: nothing to say
    at.selectbox(key="sweep_cohort").select("all").run()
    assert at.number_input(key="sweep_folds").value == 5


def test_the_review_page_filters_by_cohort(app_data):
    ws = open_workspace(app_data)
    try:
        from cadx.cohorts import CohortDefinition
        from cadx.workflows.cohorts import resolve_cohort, save_cohort

        save_cohort(ws, "malignant CC", CohortDefinition(labels=["malignant"], views=["CC"]), user="tester")
        expected = resolve_cohort(ws, "malignant CC").rois
    finally:
        ws.engine.dispose()
    at = open_page("pages/review.py")
    at.selectbox(key="review_f_cohort").select("malignant CC").run()
    assert not at.exception, at.exception
    assert _metrics(at)["Matching the filters"] == str(expected) and 0 < expected < 30
