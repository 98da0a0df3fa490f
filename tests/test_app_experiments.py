"""The experiment pages (Overview, Layer sweep, ROC curves, Predictions, Experiments) with streamlit's AppTest, on a
real small experiment: the 12-lesion synthetic demo, AlexNet with random weights, two taps."""

from __future__ import annotations

import base64
import json
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from cadx import words
from cadx.records import EXPERIMENT_NAME_MAX, to_json
from cadx.workflows import delete_experiment, experiment_results, import_demo, lesion_predictions, open_workspace
from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment
from cadx.workflows.features import resolve_backbone
from cadx.workflows.jobs import get_job
from cadx.workflows.report import chromium_path
from db.models import Experiment, Job, Prediction
from tests.apptest_support import open_page, point_app_at
from tests.workspace_cache import SMALL_SWEEP, demo_experiment

pytestmark = pytest.mark.slow  # AppTest runs of whole pages: seconds each


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory, workspace_cache):
    """A data directory with the demo set and one experiment (sweep of fc7 and fc8, SVM1 on fc8): a copy of the one
    built for the session (the browser tests' screenshots use the same, see tests/workspace_cache.py)."""
    return workspace_cache.data_dir(tmp_path_factory.mktemp("app-experiments") / "data", demo_experiment,
                                    **SMALL_SWEEP)


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory, workspace_cache):
    """A data directory with demo data and no experiment."""
    return workspace_cache.data_dir(tmp_path_factory.mktemp("app-empty") / "data", import_demo, n_lesions=4,
                                    seed=1)[0]


@pytest.fixture
def use(monkeypatch):
    """Point the app at a data directory (and forget the workspace another test opened)."""

    def use(data: Path) -> Path:
        return point_app_at(data, monkeypatch)

    yield use
    st.cache_resource.clear()
    st.cache_data.clear()


def _run(page: str) -> AppTest:
    return open_page(page)


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
    parts += [e.value for e in at.info] + [e.value for e in at.warning] + [e.value for e in at.success]
    return "\n".join(parts)


def _plotly(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert charts, "no plotly chart on the page"
    return json.loads(charts[0].proto.spec)


def _values(data) -> list:
    """Plotly's JSON: a list, or a typed array as {"dtype", "bdata" (base64)}."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


def _summary(data: Path, experiment_id: int) -> dict:
    ws = open_workspace(data)
    try:
        return experiment_summary(ws, experiment_id)
    finally:
        ws.engine.dispose()


def _copy_experiment(data: Path, experiment_id: int, name: str, **config) -> int:
    """A copy of an experiment and its predictions (config entries replaced by ``config``)."""
    ws = open_workspace(data)
    try:
        with ws.sessions.begin() as session:
            original = session.get(Experiment, experiment_id)
            copy = Experiment(name=name, kind=original.kind, config={**original.config, **config},
                              config_sha256=original.config_sha256, code_version=original.code_version,
                              results=original.results, seconds=original.seconds,
                              uses_synthetic_data=original.uses_synthetic_data,
                              uses_random_weights=original.uses_random_weights, created_by="tester")
            session.add(copy)
            session.flush()
            for p in session.scalars(select(Prediction).where(Prediction.experiment_id == experiment_id)):
                session.add(Prediction(experiment_id=copy.id, roi_id=p.roi_id, roi_sha256=p.roi_sha256,
                                       lesion_id=p.lesion_id, truth=p.truth, repeat=p.repeat, fold=p.fold,
                                       decision1=p.decision1, p1=p.p1, decision2=p.decision2, p2=p.p2, p3=p.p3))
            return copy.id
    finally:
        ws.engine.dispose()


# ----------------------------------------------------------------------------------------------- empty states ---
@pytest.mark.parametrize("page, message", [
    ("pages/sweep.py", "No sweep yet"),
    ("pages/roc.py", "No experiment yet"),
    ("pages/predictions.py", "No experiment yet"),
    ("pages/experiments.py", "No experiment yet"),
    ("pages/overview.py", "No experiment yet"),
])
def test_pages_say_when_there_is_no_experiment(use, empty_dir, page, message):
    use(empty_dir)
    at = _run(page)
    assert any(message in i.value for i in at.info), [i.value for i in at.info]
    assert not at.get("plotly_chart")


# ---------------------------------------------------------------------------------------------------- overview ---
def test_overview_shows_backbone_and_recent_experiments(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    at = _run("pages/overview.py")
    text = _text(at)
    assert "SYNTHETIC DEMO DATA" in at.markdown[0].value
    assert "CNN backbone in use" in text and "Recent experiments" in text
    # either AlexNet as in the paper, or a clear word that its weights are missing and EfficientNet-Lite0 is used
    assert ("as in the paper" in text) or ("AlexNet's ImageNet weights are missing" in text
                                          and "EfficientNet-Lite0" in text)
    assert "RANDOM (UNTRAINED) CNN WEIGHTS" in text
    recent = at.dataframe[-1].value
    row = recent[recent["id"] == experiment_id].iloc[0]
    summary = _summary(data, experiment_id)
    assert row["name"] == "small sweep" and row["ROIs"] == summary["results"]["n_rois"] == 28
    assert row["SVM1 AUC"] == pytest.approx(summary["results"]["methods"]["A"]["auc_mean"])


# ------------------------------------------------------------------------------------------------------ sweep ---
def test_sweep_page_draws_fig3_with_badges_and_the_feature_table(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    summary = _summary(data, experiment_id)
    at = _run("pages/sweep.py")
    text = _text(at)
    assert "SYNTHETIC DEMO DATA" in text and "RANDOM (UNTRAINED) CNN WEIGHTS" in text
    spec = _plotly(at)
    trace = spec["data"][0]
    assert _values(trace["x"]) == ["fc7", "fc8"]  # network order
    assert _values(trace["y"]) == pytest.approx([summary["results"]["sweep"][t]["auc_mean"] for t in ("fc7", "fc8")])
    assert _values(trace["error_y"]["array"]) == pytest.approx(
        [summary["results"]["sweep"][t]["auc_se"] for t in ("fc7", "fc8")])
    assert "SYNTHETIC DEMO DATA" in spec["layout"]["title"]["text"]
    assert "RANDOM (UNTRAINED) CNN WEIGHTS" in spec["layout"]["title"]["text"]
    table = at.dataframe[0].value
    assert list(table["tap"]) == ["fc7", "fc8"]
    assert list(table["feature length"]) == [4096, 1000]
    assert list(table["after zero-variance removal"]) == [
        summary["results"]["sweep"][t]["n_features_nonconstant"] for t in ("fc7", "fc8")]
    assert table["seconds"].tolist() == pytest.approx([summary["results"]["sweep"][t]["seconds"]
                                                       for t in ("fc7", "fc8")])


def test_sweep_page_overlays_experiments_for_comparison(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    same = _copy_experiment(data, experiment_id, "same backbone again")
    other = _copy_experiment(data, experiment_id, "another backbone", backbone="efficientnet_lite0")
    try:
        at = _run("pages/sweep.py")
        at.multiselect(key="sweep_selected").set_value([experiment_id, same]).run()
        spec = _plotly(at)
        assert len(spec["data"]) == 2 and all(_values(t["x"]) == ["fc7", "fc8"] for t in spec["data"])
        assert len(at.dataframe[0].value) == 4
        at.multiselect(key="sweep_selected").set_value([experiment_id, other]).run()
        spec = _plotly(at)
        # two backbones: taps placed by relative depth, their names in the hover text
        assert [_values(t["x"]) for t in spec["data"]] == [[0.0, 1.0], [0.0, 1.0]]
        assert "relative depth" in spec["layout"]["xaxis"]["title"]["text"]
    finally:
        ws = open_workspace(data)
        delete_experiment(ws, same, user="tester")
        delete_experiment(ws, other, user="tester")
        ws.engine.dispose()


def test_sweep_page_queues_a_job_with_the_chosen_settings_and_cancels_it(use, experiment_dir, monkeypatch):
    import cadx.workflows.jobs as jobs

    data = use(experiment_dir[0])
    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda ws: started.append(ws.data_dir) or True)
    monkeypatch.setattr("cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD", 1)  # 12 demo lesions (see test_app_cohorts)
    at = _run("pages/sweep.py")
    from cadx.workflows.experiments import DEFAULT_REPEATS

    assert at.number_input(key="sweep_repeats").value == DEFAULT_REPEATS == 5  # repeated CV by default
    at.selectbox(key="sweep_backbone").select("alexnet").run()
    at.radio(key="sweep_weights").set_value("random").run()
    assert any("RANDOM (UNTRAINED) CNN WEIGHTS" in m.value for m in at.markdown)
    at.multiselect(key="sweep_taps_alexnet").set_value(["fc8"]).run()
    at.selectbox(key="sweep_ensemble_alexnet").select("fc8").run()
    assert at.number_input(key="sweep_folds").value == 5  # the cohort's ("all": 5), one place for the folds
    at.number_input(key="sweep_folds").set_value(4).run()
    # another choice than the cohort's is said in words (and recorded below)
    assert any("Cohort all sets 5 folds; this sweep uses 4 (chosen here); the experiment records both." in i.value
               for i in at.info)
    at.radio(key="sweep_preset").set_value("quick").run()  # the live-demo preset: one seed
    assert at.number_input(key="sweep_repeats").value == 1
    # before Start: the time on this machine, from the stored experiment's measured seconds, with a range
    estimate = next(i.value for i in at.info if i.value.startswith("Estimated time on this machine"))
    # fc8 and Method B, one seed, 4 folds: 8 checkpointed units
    assert "for 8 units of work, from the seconds measured by earlier experiments on this machine (2 taps" in estimate
    assert " – " in estimate  # a range
    at.number_input(key="sweep_repeats").set_value(3).run()
    assert at.text_input(key="sweep_name_alexnet").max_chars == EXPERIMENT_NAME_MAX  # the one limit (Rename's too)
    at.text_input(key="sweep_name_alexnet").input("queued from the page").run()
    at.button(key="sweep_start").click().run()
    assert not at.exception, at.exception
    assert started, "the page did not start a worker"
    ws = open_workspace(data)
    try:
        with ws.sessions() as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job.status == "queued" and job.kind == "experiment"
        assert {k: job.params[k] for k in ("backbone", "weights", "taps", "ensemble_tap", "analytic", "n_folds",
                                           "seed", "repeats", "name", "cohort")} == {
            "backbone": "alexnet", "weights": "random", "taps": ["fc8"], "ensemble_tap": "fc8", "analytic": True,
            "n_folds": 4, "seed": 0, "repeats": 3, "name": "queued from the page", "cohort": "all"}
        # the page writes ExperimentSettings as the job runner reads them back (one typed settings object)
        assert ExperimentSettings.from_params(job.params) == ExperimentSettings(
            taps=("fc8",), ensemble_tap="fc8", n_folds=4, repeats=3, cohort="all",
            extra={"folds_chosen_over_cohort": {"cohort": 5, "sweep": 4}})
        assert any(f"Job {job.id}" in m.value for m in at.markdown)
        # Cancel asks first (the finished units are kept), then offers Resume
        at.button(key=f"cancel_job_{job.id}").click().run()
        assert get_job(ws, job.id).status == "queued"  # not yet: a question first
        assert any(f"Cancel job {job.id}? Its finished units (0 finished units so far) are kept" in w.value
                   for w in at.warning)
        at.button(key=f"keep_job_{job.id}").click().run()
        assert get_job(ws, job.id).status == "queued" and not at.button(key=f"cancel_job_{job.id}").disabled
        at.button(key=f"cancel_job_{job.id}").click().run()
        at.button(key=f"confirm_cancel_{job.id}").click().run()
        assert get_job(ws, job.id).status == "cancelled"
        at.button(key=f"resume_job_{job.id}").click().run()
        assert not at.exception, at.exception
        assert get_job(ws, job.id).status == "queued" and len(started) >= 2  # queued again, a worker asked for
    finally:
        ws.engine.dispose()


def test_a_failed_time_estimate_never_hides_start(use, tmp_path, workspace_cache, monkeypatch):
    """The estimate is advice: when it fails (here a database busy with a worker's writes, as on a loaded CI
    machine), the page says so and Start is there and queues the sweep."""
    from sqlalchemy.exc import OperationalError

    import cadx.workflows.experiments as experiments
    import cadx.workflows.jobs as jobs

    def busy(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    # a workspace of its own: the job it queues must not show in another test's job history
    data = use(workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)[0])
    monkeypatch.setattr(jobs, "ensure_worker", lambda ws: True)
    monkeypatch.setattr(experiments, "estimate_experiment", busy)
    monkeypatch.setattr("cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD", 1)  # 4 demo lesions
    at = _run("pages/sweep.py")
    at.selectbox(key="sweep_backbone").select("alexnet").run()
    at.radio(key="sweep_weights").set_value("random").run()
    at.number_input(key="sweep_folds").set_value(2).run()
    at.number_input(key="sweep_seed").set_value(71).run()  # settings no other test estimated (the cache)
    assert not at.exception, at.exception
    assert any("No time estimate now (OperationalError); Start works without it" in c.value for c in at.caption)
    assert not any(i.value.startswith("Estimated time") for i in at.info)
    assert not at.button(key="sweep_start").disabled
    at.button(key="sweep_start").click().run()
    assert not at.exception, at.exception
    ws = open_workspace(data)
    try:
        with ws.sessions() as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job is not None and job.kind == "experiment" and job.params["seed"] == 71
        jobs.cancel_job(ws, job.id, user="tester")
    finally:
        ws.engine.dispose()


def test_sweep_page_shows_running_jobs_on_top_with_eta_and_every_user_s_job_history(use, empty_dir, monkeypatch):
    from datetime import datetime, timedelta

    from sqlalchemy import update

    import cadx.workflows.jobs as jobs

    data = use(empty_dir)
    monkeypatch.setattr(jobs, "ensure_worker", lambda ws: True)
    ws = open_workspace(data)
    now = datetime.now(UTC)
    try:
        failed = jobs.submit_job(ws, "experiment", {"name": "broken sweep"}, user="bob")
        running = jobs.submit_job(ws, "experiment", {"name": "long sweep"}, user="carol")
        queued = jobs.submit_job(ws, "features", {}, user="dave")
        me = jobs._identity()  # a live worker (this process), so the page leaves the job running
        with ws.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == failed).values(
                status="failed", error="stem tap: out of memory", started_at=now - timedelta(minutes=3),
                finished_at=now - timedelta(minutes=1)))
            session.execute(update(Job).where(Job.id == running).values(
                status="running", slot=0, progress_done=4200, progress_total=10_000, eta_seconds=330.0,
                eta_low_seconds=240.0, eta_high_seconds=480.0,
                message="sweep: 23/55 folds x taps fitted (fc6 fold 3/5)", started_at=now - timedelta(seconds=200),
                heartbeat_at=now, worker=me.label, worker_host=me.host, worker_pid=me.pid,
                worker_started=me.started))
        at = _run("pages/sweep.py")
        assert not at.exception, at.exception
        text = _text(at)
        assert f"**Job {running}** · experiment · long sweep · running · by carol" in text
        assert f"**Job {queued}** · features · features · queued · by dave" in text
        import re

        # started 200 s ago; the smoothed time left with its range
        assert re.search(r"elapsed \d+ min \d\d s · about 5 min 30 s \(4 min 00 s – 8 min 00 s\) left", text), text
        assert any(p.proto.text.startswith("42% · sweep: 23/55") for p in at.get("progress"))
        assert at.button(key="sweep_start").label == "Queue sweep"  # queues visibly behind the running job
        history = next(d.value for d in at.dataframe if "attempts" in d.value.columns)
        assert list(history["job"]) == [queued, running, failed]
        row = history[history["job"] == failed].iloc[0]
        assert row["status"] == "failed" and row["by"] == "bob" and "out of memory" in row["message / error"]
        assert row["took"] == "2 min 00 s"
        at.selectbox(key="job_retry_choice").select(failed).run()
        at.button(key="job_retry").click().run()
        assert jobs.get_job(ws, failed).status == "queued"
    finally:
        with ws.sessions.begin() as session:
            session.execute(update(Job).values(status="cancelled", slot=None))
        ws.engine.dispose()


def test_sweep_page_refuses_no_taps(use, experiment_dir, monkeypatch):
    import cadx.workflows.jobs as jobs

    use(experiment_dir[0])
    monkeypatch.setattr(jobs, "ensure_worker", lambda ws: True)
    monkeypatch.setattr("cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD", 1)  # 12 demo lesions (see test_app_cohorts)
    at = _run("pages/sweep.py")
    backbone = at.selectbox(key="sweep_backbone").value
    at.multiselect(key=f"sweep_taps_{backbone}").set_value([]).run()
    at.button(key="sweep_start").click().run()
    assert any("at least one tap" in e.value for e in at.error)


# -------------------------------------------------------------------------------------------------------- ROC ---
def test_roc_page_shows_table1_curves_and_tests_at_roi_level(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    methods = _summary(data, experiment_id)["results"]["methods"]
    at = _run("pages/roc.py")
    text = _text(at)
    assert "SYNTHETIC DEMO DATA" in text and "RANDOM (UNTRAINED) CNN WEIGHTS" in text
    assert "28 ROIs" in text
    table = at.dataframe[0].value
    assert list(table["classifier"]) == ["SVM1 (CNN features)", "SVM2 (analytic features)", "Ensemble (SVM1 + SVM2)",
                                         "Ensemble of z-scored decision values"]
    for (_, row), key in zip(table.iterrows(), "ABCZ"):
        assert row["AUC"] == pytest.approx(methods[key]["auc_mean"])
        assert row["AUC.SD"] == pytest.approx(methods[key]["auc_sd"])
        assert row["SE"] == pytest.approx(methods[key]["auc_se"])
        assert row["pooled AUC"] == pytest.approx(methods[key]["pooled_auc"])
        assert row["lesion AUC"] == pytest.approx(methods[key]["lesion_auc"])
    timing = at.dataframe[1].value  # the "Time and details" expander
    for (_, row), key in zip(timing.iterrows(), "ABCZ"):
        assert row["time (s)"] == pytest.approx(methods[key]["seconds"])
    # two tables that each fit the screen: the headline test over every seed's folds, then the first seed's tests
    tests = next(d.value for d in at.dataframe if "headline p (Bonferroni)" in d.value.columns)
    beside = next(d.value for d in at.dataframe if "Nadeau-Bengio p (first seed)" in d.value.columns)
    assert len(tests) == len(beside) == 6 and "AUCs subtracted" in tests.columns
    assert "DeLong p (within-fold ranks)" in beside.columns and list(beside["comparison"]) == list(tests["comparison"])
    shown = [*tests.columns, *beside.columns]
    assert not any(c.startswith("DeLong p") and "ranks" not in c for c in shown)  # no pooled-probability DeLong
    assert tests["family"].tolist() == ["paper"] * 3 + ["added"] * 3
    spec = _plotly(at)
    names = [t["name"] for t in spec["data"]]
    assert sum("binormal" in n for n in names) + sum("no binormal" in c.value for c in at.caption) == 4
    assert sum("empirical" in n for n in names) == 4 and any(n.startswith("z-ensemble") for n in names)
    assert "RANDOM (UNTRAINED) CNN WEIGHTS" in spec["layout"]["title"]["text"]
    labels = [b.label for b in at.get("download_button")]
    assert {"Table 1 (CSV)", "Significance tests (CSV)", "Curve points (CSV)"} <= set(labels)
    # which experiment the page picked, in words; the report's PDF from the page (Chromium here: enabled)
    assert f"Showing **experiment #{experiment_id} 'small sweep'** (newest)." in text
    pdf = next(b for b in at.get("download_button") if b.label == "Study report (PDF)")
    assert pdf.disabled == (chromium_path() is None)
    assert next(b for b in at.get("download_button") if b.label == "Repeated CV (CSV)").disabled  # one seed


def test_roc_page_warns_about_degenerate_folds(use, tmp_path, experiment_dir):
    """A stored record whose SVM1 slope was floored in 15 of 25 folds: the page says so above Table 1, whose row
    carries "15/25"."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(experiment_dir[0], data)
    ws = open_workspace(data)
    try:
        with ws.sessions.begin() as session:
            e = session.get(Experiment, experiment_dir[1])
            methods = dict(e.results["methods"])
            clamped = [[5 * s + k < 15 for k in range(5)] for s in range(5)]
            methods["A"] = {**methods["A"], "calibration": {**methods["A"]["calibration"], "seeds": list(range(5)),
                                                            "clamped": clamped, "n_clamped": 15, "n_folds": 25}}
            e.results = {**e.results, "methods": methods}
    finally:
        ws.engine.dispose()
    use(data)
    at = _run("pages/roc.py")
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("SVM1 carried no signal in 15/25 folds") and "equals SVM2 there" in w for w in warnings)
    assert at.dataframe[0].value["degenerate folds"].tolist()[0] == "15/25"


def test_roc_page_lesion_level_uses_the_mean_of_each_lesions_rois(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    at = _run("pages/roc.py")
    at.radio(key="roc_level").set_value("lesion").run()
    assert not at.exception, at.exception
    assert "12 lesions" in _text(at)
    ws = open_workspace(data)
    try:
        expected = to_json(experiment_results(ws, experiment_id, "lesion").methods)
    finally:
        ws.engine.dispose()
    table = at.dataframe[0].value
    for (_, row), key in zip(table.iterrows(), "ABCZ"):
        assert row["pooled AUC"] == pytest.approx(expected[key]["pooled_auc"])
        assert row["AUC"] == pytest.approx(expected[key]["auc_mean"])
    spec = _plotly(at)
    assert "lesions" in spec["layout"]["title"]["text"]


# ------------------------------------------------------------------------------------------------ predictions ---
# the table shows readable names (cadx.words.CASE_COLUMNS); the checks below use the codes
_CODES = {words.column_word(c): c for c in ("roi_id", "lesion_id", "n_rois", "truth", "p1", "p2", "p3", "disagreement",
                                            "right_p3")}


def test_predictions_page_lists_rois_by_disagreement_and_opens_one(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    at = _run("pages/predictions.py")
    text = _text(at)
    assert "SYNTHETIC DEMO DATA" in text and "RANDOM (UNTRAINED) CNN WEIGHTS" in text
    table = at.dataframe[0].value.rename(columns=_CODES)
    assert len(table) == 28
    assert table["disagreement"].is_monotonic_decreasing
    assert (table["disagreement"] - (table["p1"] - table["p2"]).abs()).abs().max() < 1e-12
    truth_is_malignant = table["truth"] == "malignant"
    assert ((table["p3"] >= 0.5) == truth_is_malignant).tolist() == table["right_p3"].tolist()
    assert len(at.image) == 1, "the opened ROI is not shown"
    top = int(table.iloc[0]["roi_id"])
    assert f"**ROI {top}**" in text
    assert any(b.label == "Predictions per ROI (CSV)" for b in at.get("download_button"))
    assert f"Showing **experiment #{experiment_id} 'small sweep'** (newest)." in text

    at.radio(key="pred_level").set_value("lesion").run()
    assert not at.exception, at.exception
    lesions = at.dataframe[0].value.rename(columns=_CODES)
    ws = open_workspace(data)
    try:
        expected = lesion_predictions(ws, experiment_id).set_index("lesion_id")
    finally:
        ws.engine.dispose()
    assert len(lesions) == 12
    for _, row in lesions.iterrows():
        assert row["p1"] == pytest.approx(expected.at[row["lesion_id"], "p1"])
        assert row["n_rois"] == expected.at[row["lesion_id"], "n_rois"]


# ------------------------------------------------------------------------------------------------ experiments ---
def test_experiments_page_shows_reproducibility_and_renames_and_deletes(use, experiment_dir):
    data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    summary = _summary(data, experiment_id)
    at = _run("pages/experiments.py")
    history = at.dataframe[0].value
    assert history.loc[history["id"] == experiment_id, "name"].item() == "small sweep"
    at.selectbox(key="exp_selected").select(experiment_id).run()
    details = dict(at.dataframe[1].value.itertuples(index=False))
    assert details["code version"] == summary["code_version"]
    assert details["config SHA-256"] == summary["config_sha256"]
    assert details["weights SHA-256"] == summary["config"]["weights"]["sha256"]
    assert details["seed"] == "0" and details["folds (outer / inner)"] == "5 / 5"
    assert details["ROIs used"].startswith("28 ") and details["ROIs excluded by review"] == "0"
    # the cohort and the exact ROI set it resolved to
    assert details["cohort"].startswith("all: ") and "real data only" in details["cohort"]
    assert details["ROI set SHA-256"] == summary["config"]["roi_set_sha256"]
    row = history.loc[history["id"] == experiment_id].iloc[0]
    assert row["cohort"] == "all" and row["ROI set"] == summary["config"]["roi_set_sha256"][:12]

    scratch = _copy_experiment(data, experiment_id, "scratch copy")
    at = _run("pages/experiments.py")
    at.selectbox(key="exp_selected").select(scratch).run()
    assert at.text_input(key=f"exp_new_name_{scratch}").max_chars == EXPERIMENT_NAME_MAX
    at.text_input(key=f"exp_new_name_{scratch}").input("renamed copy").run()
    at.button(key="exp_rename").click().run()
    assert any("renamed to “renamed copy”" in s.value for s in at.success)
    assert at.button(key="exp_delete").disabled
    at.checkbox(key=f"exp_confirm_{scratch}").check().run()
    assert not at.button(key="exp_delete").disabled
    at.button(key="exp_delete").click().run()
    assert not at.exception, at.exception
    assert any(f"Experiment #{scratch} deleted (28 predictions)" in s.value for s in at.success)
    ws = open_workspace(data)
    try:
        with ws.sessions() as session:
            assert session.get(Experiment, scratch) is None
            assert session.scalar(select(func.count()).select_from(Prediction)
                                  .where(Prediction.experiment_id == scratch)) == 0
            assert session.get(Experiment, experiment_id).name == "small sweep"
    finally:
        ws.engine.dispose()


def test_pages_show_a_repeated_cross_validation(use, tmp_path, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=12, seed=2)
    ws = open_workspace(data)
    loaded, note = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(ws, loaded, ExperimentSettings(taps=("fc8",), ensemble_tap="fc8", seed=5,
                                                                  repeats=2, min_lesions_per_class_per_fold=1),
                                   name="two seeds", user="tester", weights_note=note)
    ws.engine.dispose()
    use(data)
    repeats = _summary(data, experiment_id)["results"]["repeats"]

    at = _run("pages/roc.py")
    assert not at.exception, at.exception
    assert "repeated with 2 seeds" in _text(at) and "Repeated cross-validation" in _text(at)
    shown = next(d.value for d in at.dataframe if "SD between seeds" in d.value.columns)
    assert list(shown.columns) == ["classifier", "mean over seeds", "SD between seeds", "seed 5", "seed 6"]
    for (_, row), key in zip(shown.iterrows(), "ABCZ", strict=True):
        assert [row["seed 5"], row["seed 6"]] == pytest.approx(repeats["methods"][key]["auc_mean_by_seed"])
        assert row["SD between seeds"] == pytest.approx(repeats["methods"][key]["auc_sd_between_seeds"])
    assert "SD between seeds" not in at.dataframe[-1].value.columns  # the tests table still comes last
    button = next(b for b in at.get("download_button") if b.label == "Repeated CV (CSV)")
    assert not button.disabled

    at = _run("pages/sweep.py")
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "seeds" in d.value.columns)
    assert table["seeds"].tolist() == [2]
    sweep = _summary(data, experiment_id)["results"]["sweep"]["fc8"]
    assert table["seed SD"].tolist() == pytest.approx([sweep["auc_sd_between_seeds"]])
    best = f"best tap fc8: {sweep['auc_mean']:.3f} ± {sweep['auc_sd_between_seeds']:.3f} (SD over 2 seeds)"
    assert best in _text(at)

    at = _run("pages/experiments.py")
    assert not at.exception, at.exception
    assert at.dataframe[0].value["repeats"].tolist() == [2]
    assert any("5 to 6 (2 repeats" in str(v) for d in at.dataframe for v in d.value.get("value", []))


def test_explorer_opens_on_the_backbone_and_experiment_last_used(use, experiment_dir):
    """Not AlexNet's missing-weights error with no experiment: the newest experiment with a sweep (AlexNet,
    random weights) and its tap AUCs."""
    _data, experiment_id = use(experiment_dir[0]), experiment_dir[1]
    at = _run("pages/explorer.py")
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="lx_backbone").value == "alexnet"
    assert at.selectbox(key="lx_experiment_alexnet").value == experiment_id
    assert "**fc8** 1000 · AUC" in _text(at)
