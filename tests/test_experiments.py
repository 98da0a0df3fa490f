"""Experiments and background jobs on a small synthetic demo set (random CNN weights: fast, no network)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from cadx.errors import CadxInputError
from cadx.workflows import exclude_roi, import_demo
from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment
from cadx.workflows.features import compute_analytic_features, extract_cnn_features, resolve_backbone, roi_records
from cadx.workflows.jobs import cancel_job, get_job, list_jobs, run_next_job, submit_job
from db.models import Experiment, Job, Prediction, Segmentation
from tests.workspace_cache import demo_with_features

SETTINGS = ExperimentSettings(taps=("fc8",), ensemble_tap="fc8", n_folds=5, seed=0, repeats=1)


@pytest.fixture(autouse=True)
def _tiny_cohorts(monkeypatch):
    """These tests exercise the machinery on 12 demo lesions: the cohort guard rail (5 lesions of each class per
    fold, see test_cohorts.py) is lowered to 1 for them."""
    monkeypatch.setattr("cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD", 1)


@pytest.fixture
def demo(workspace_cache, workspace):
    """12 synthetic lesions, no features yet (for the tests of computing them)."""
    workspace_cache.fill(workspace, import_demo, n_lesions=12, seed=5)
    return workspace


@pytest.fixture
def featured(workspace_cache, workspace):
    """The same 12 lesions with their CNN (random AlexNet fc7, fc8) and analytic features in the store: what an
    experiment computes first, built once for the session (tests/workspace_cache.py) and copied."""
    workspace_cache.fill(workspace, demo_with_features, n_lesions=12, seed=5, taps=("fc7", "fc8"))
    return workspace


@pytest.fixture(scope="module")
def alexnet_random():
    loaded, note = resolve_backbone("alexnet", weights="random")
    assert loaded.weights.source == "random"
    return loaded


@pytest.mark.slow
def test_features_are_computed_once_per_roi_content(demo, alexnet_random):
    first = extract_cnn_features(demo, alexnet_random, taps=["fc8"])
    again = extract_cnn_features(demo, alexnet_random, taps=["fc8"])
    assert first.n_extracted == first.n_rois > 0 and again.n_extracted == 0
    analytic = compute_analytic_features(demo)
    assert analytic.n_computed == analytic.n_rois and compute_analytic_features(demo).n_computed == 0
    with demo.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Segmentation)) == analytic.n_rois


@pytest.mark.slow
def test_experiment_is_recorded_and_reproducible(featured, alexnet_random):
    first = run_experiment(featured, alexnet_random, SETTINGS, name="one", user="tester")
    second = run_experiment(featured, alexnet_random, SETTINGS, name="two", user="tester")
    a, b = experiment_summary(featured, first), experiment_summary(featured, second)
    assert a["config"] == b["config"] and a["config_sha256"] == b["config_sha256"]
    for method in ("A", "B", "C"):
        assert a["results"]["methods"][method]["fold_aucs"] == b["results"]["methods"][method]["fold_aucs"]
    assert a["uses_synthetic_data"] and a["uses_random_weights"]
    assert a["config"]["weights"]["source"] == "random"
    records = roi_records(featured)
    with featured.sessions() as session:
        predictions = session.scalars(select(Prediction).where(Prediction.experiment_id == first)
                                      .order_by(Prediction.roi_id)).all()
    assert [p.roi_id for p in predictions] == [r.id for r in records]
    p1 = np.array([p.p1 for p in predictions])
    p2 = np.array([p.p2 for p in predictions])
    assert np.allclose([p.p3 for p in predictions], (p1 + p2) / 2)
    # the z-scored ensemble, by hand from the stored decision values and each fold's inner standardisation
    cal = {k: a["results"]["methods"][k]["calibration"] for k in ("A", "B")}
    for k in ("A", "B"):
        assert cal[k]["n_folds"] == 5 and len(cal[k]["slope"][0]) == 5
        assert cal[k]["n_clamped"] == sum(cal[k]["clamped"][0])
        for slope, used, clamped in zip(cal[k]["slope"][0], cal[k]["slope_used"][0], cal[k]["clamped"][0]):
            assert (slope == used > 0) if not clamped else (slope < used and used > 0)
    folds = [p.fold for p in predictions]
    z1 = [(p.decision1 - cal["A"]["inner_mean"][0][f]) / cal["A"]["inner_sd"][0][f] for p, f in zip(predictions, folds)]
    z2 = [(p.decision2 - cal["B"]["inner_mean"][0][f]) / cal["B"]["inner_sd"][0][f] for p, f in zip(predictions, folds)]
    assert np.allclose([p.pz for p in predictions], (np.array(z1) + np.array(z2)) / 2)
    assert a["results"]["methods"]["Z"]["title"].startswith("Ensemble (z1 + z2) / 2")
    # no lesion in two folds
    folds_by_lesion: dict[int, set] = {}
    for p in predictions:
        folds_by_lesion.setdefault(p.lesion_id, set()).add(p.fold)
    assert all(len(f) == 1 for f in folds_by_lesion.values())
    from cadx.workflows.accounts import audit_events

    runs = [e for e in audit_events(featured) if e.action == "experiment_run"]
    assert [(e.target, e.user, e.detail["config_sha256"]) for e in runs] == [
        (f"experiment {first}", "tester", a["config_sha256"]), (f"experiment {second}", "tester", a["config_sha256"])]
    comparisons = a["results"]["comparisons"]
    assert [(c["comparison"], c["family"]) for c in comparisons] == [
        ("C vs A", "paper"), ("C vs B", "paper"), ("A vs B", "paper"),
        ("Z vs C", "added"), ("Z vs A", "added"), ("Z vs B", "added")]
    for c in comparisons:  # Bonferroni within each family of three
        assert c["delong_p_bonferroni"] == pytest.approx(min(1.0, 3 * c["delong_p"]))


@pytest.mark.slow
def test_excluded_rois_leave_later_experiments(featured, alexnet_random):
    records = roi_records(featured)
    exclude_roi(featured, records[0].id, reason="compression_paddle", user="tester")
    experiment_id = run_experiment(featured, alexnet_random, SETTINGS, name="after exclusion", user="tester")
    summary = experiment_summary(featured, experiment_id)
    assert records[0].id not in summary["config"]["roi_ids"]
    assert summary["config"]["excluded_roi_ids"] == [records[0].id]
    assert summary["results"]["n_rois"] == len(records) - 1


def test_too_few_lesions_is_a_clear_error(workspace_cache, workspace, alexnet_random):
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    with pytest.raises(CadxInputError, match="2 benign and 2 malignant lesions: fewer than 1 benign and malignant "
                                             "lesions per fold for 5-fold"):
        run_experiment(workspace, alexnet_random, SETTINGS, name="tiny", user="tester")


@pytest.mark.slow
def test_jobs_run_in_order_record_progress_and_can_be_cancelled(demo):
    features = submit_job(demo, "features", {}, user="alice")
    experiment = submit_job(demo, "experiment", {"backbone": "alexnet", "weights": "random", "taps": ["fc8"],
                                                 "ensemble_tap": "fc8", "name": "from a job", "repeats": 1},
                            user="alice")
    cancelled = submit_job(demo, "extract", {"backbone": "alexnet", "weights": "random"}, user="alice")
    assert cancel_job(demo, cancelled, user="bob")
    assert run_next_job(demo) == features
    assert run_next_job(demo) == experiment
    assert run_next_job(demo) is None  # the cancelled one is never run
    job = get_job(demo, experiment)
    assert job.status == "done" and job.experiment_id is not None and job.started_at <= job.finished_at
    with demo.sessions() as session:
        assert session.get(Experiment, job.experiment_id).name == "from a job"
    assert get_job(demo, cancelled).status == "cancelled" and "bob" in get_job(demo, cancelled).message
    assert [j.id for j in list_jobs(demo)] == [cancelled, experiment, features]


def test_a_failing_job_records_its_error(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    job_id = submit_job(workspace, "experiment", {"backbone": "alexnet", "weights": "random", "taps": ["fc8"],
                                                  "ensemble_tap": "fc8", "repeats": 1}, user="alice")
    run_next_job(workspace)
    job = get_job(workspace, job_id)
    assert job.status == "failed" and "lesions per fold for 5-fold" in job.error
    with pytest.raises(CadxInputError, match="unknown job kind"):
        submit_job(workspace, "mine bitcoin", {}, user="alice")
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


@pytest.mark.slow
def test_repeated_cross_validation_equals_the_single_seed_runs(featured, alexnet_random):
    """Two seeds in one experiment give exactly what two one-seed experiments give: the sweep averages their folds,
    Table 1 and the Predictions page stay the first seed's, every seed's predictions are stored."""
    from cadx.workflows import roi_predictions

    settings = ExperimentSettings(taps=("fc7", "fc8"), ensemble_tap="fc8", n_folds=5, seed=3)
    single = [experiment_summary(featured, run_experiment(featured, alexnet_random, ExperimentSettings(
        taps=settings.taps, ensemble_tap="fc8", seed=seed, repeats=1), name=f"seed {seed}", user="tester"))["results"]
        for seed in (3, 4)]
    repeated_id = run_experiment(featured, alexnet_random, ExperimentSettings(
        taps=settings.taps, ensemble_tap="fc8", seed=3, repeats=2), name="two seeds", user="tester")
    summary = experiment_summary(featured, repeated_id)
    results = summary["results"]
    assert summary["config"]["seed"] == 3 and summary["config"]["repeats"] == 2

    for tap in ("fc7", "fc8"):
        both = single[0]["sweep"][tap]["fold_aucs"] + single[1]["sweep"][tap]["fold_aucs"]
        assert results["sweep"][tap]["auc_mean"] == pytest.approx(np.mean(both), abs=1e-12)
        assert results["sweep"][tap]["fold_aucs_by_seed"] == [single[0]["sweep"][tap]["fold_aucs"],
                                                               single[1]["sweep"][tap]["fold_aucs"]]
    for tap in ("fc7", "fc8"):  # the seed SD beside every tap's AUC
        first, second = (s["sweep"][tap]["auc_mean"] for s in single)
        assert results["sweep"][tap]["auc_mean_by_seed"] == pytest.approx([first, second], abs=1e-12)
        assert results["sweep"][tap]["auc_sd_between_seeds"] == pytest.approx(abs(first - second) / np.sqrt(2),
                                                                               abs=1e-12)
    for method in ("A", "B", "C", "Z"):
        assert results["methods"][method]["fold_aucs"] == pytest.approx(single[0]["methods"][method]["fold_aucs"],
                                                                         abs=1e-12)
        row = results["repeats"]["methods"][method]
        first, second = (s["methods"][method]["auc_mean"] for s in single)
        assert row["auc_mean_by_seed"] == pytest.approx([first, second], abs=1e-12)
        assert row["auc_sd_between_seeds"] == pytest.approx(abs(first - second) / np.sqrt(2), abs=1e-12)
    assert results["repeats"]["seeds"] == [3, 4]
    for key in ("A", "B"):  # every seed's calibration is recorded
        assert results["methods"][key]["calibration"]["seeds"] == [3, 4]
        assert results["methods"][key]["calibration"]["n_folds"] == 10

    n_rois = results["n_rois"]
    with featured.sessions() as session:
        stored = session.scalars(select(Prediction).where(Prediction.experiment_id == repeated_id)
                                 .order_by(Prediction.repeat, Prediction.roi_id)).all()
        second_seed = session.scalars(select(Prediction).join(Experiment).where(Experiment.name == "seed 4")
                                      .order_by(Prediction.roi_id)).all()
    assert len(stored) == 2 * n_rois
    assert [(p.p1, p.p2, p.p3, p.fold) for p in stored[n_rois:]] == [(p.p1, p.p2, p.p3, p.fold) for p in second_seed]
    assert len(roi_predictions(featured, repeated_id)) == n_rois  # one row per ROI: the first seed


@pytest.mark.parametrize("repeats", [0, 21, 1.5])
def test_a_bad_number_of_repeats_is_refused_before_any_work(demo, alexnet_random, repeats):
    with pytest.raises(CadxInputError, match="repeats.*whole number from 1"):
        run_experiment(demo, alexnet_random, ExperimentSettings(taps=("fc8",), ensemble_tap="fc8", repeats=repeats),
                       name="bad", user="tester")
    with demo.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Experiment)) == 0
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0


@pytest.mark.slow
def test_five_seeds_are_the_one_default_of_the_cli_the_page_and_the_job_runner(workspace_cache, workspace):
    """Repeated cross-validation by default (issue 12, point 4): ExperimentSettings, the CLI options and the job
    runner share DEFAULT_REPEATS (the page's widget is checked in tests/test_app_experiments.py)."""
    import inspect

    from cadx import cli
    from cadx.workflows.experiments import DEFAULT_REPEATS

    assert DEFAULT_REPEATS == 5 and ExperimentSettings().repeats == DEFAULT_REPEATS
    for command in (cli.sweep_command, cli.evaluate_command):
        assert inspect.signature(command).parameters["repeats"].default == DEFAULT_REPEATS
    workspace_cache.fill(workspace, import_demo, n_lesions=20, seed=3)
    job_id = submit_job(workspace, "experiment", {"backbone": "alexnet", "weights": "random", "taps": ["fc8"],
                                                  "ensemble_tap": "fc8", "analytic": False}, user="alice")
    run_next_job(workspace)
    job = get_job(workspace, job_id)
    assert job.status == "done", job.error
    summary = experiment_summary(workspace, job.experiment_id)
    assert summary["config"]["repeats"] == DEFAULT_REPEATS
    assert len(summary["results"]["sweep"]["fc8"]["auc_mean_by_seed"]) == DEFAULT_REPEATS


def test_the_random_control_keeps_the_default_architecture_and_says_so(monkeypatch, tmp_path):
    """``--weights random`` without ``--backbone`` controls the default run: EfficientNet-Lite0 when AlexNet's weights
    are missing, AlexNet when they are there; the note never calls random weights ImageNet weights."""
    import cadx.cnn as cnn

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))  # no AlexNet weights here
    loaded, note = resolve_backbone(None, weights="random", download=False)
    assert loaded.name == "efficientnet_lite0" and loaded.weights.source == "random"
    assert note.startswith("EfficientNet-Lite0 with random (untrained) weights") and "control" in note
    assert "ImageNet weights (random)" not in note
    default, default_note = resolve_backbone(None, download=False)
    assert default.name == loaded.name and default.weights.source == "package"

    real = cnn.load_backbone

    def alexnet_available(name, weights="default", **kwargs):  # as if the torch cache held AlexNet's file
        return real(name, "random" if name == "alexnet" else weights, **{k: v for k, v in kwargs.items()
                                                                          if k == "seed"})

    monkeypatch.setattr(cnn, "load_backbone", alexnet_available)
    loaded, note = resolve_backbone(None, weights="random", download=False)
    assert loaded.name == "alexnet" and loaded.weights.source == "random"
    assert note.startswith("AlexNet with random (untrained) weights") and "ImageNet weights (random)" not in note
    loaded, note = resolve_backbone("vgg16", weights="random")
    assert note.startswith("VGG16 with random (untrained) weights")


def test_tap_help_names_each_backbones_own_default_tap():
    from typer.testing import CliRunner

    from cadx.backbones import BACKBONE_SPECS
    from cadx.cli import app
    from cadx.cnn import BACKBONES

    assert set(BACKBONE_SPECS) == set(BACKBONES)
    assert all(b.ensemble_tap in b.taps and b.ensemble_tap == BACKBONE_SPECS[name].ensemble_tap
               for name, b in BACKBONES.items())
    assert BACKBONES["alexnet"].ensemble_tap == "fc6" and BACKBONES["alexnet"].label == "AlexNet"
    for command in ("sweep", "evaluate"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
        text = " ".join(result.output.replace("│", " ").split())
        assert "pool for efficientnet_lite0" in text and "fc6 for alexnet" in text and "avgpool for resnet50" in text
        assert "default fc6)" not in text


@pytest.mark.slow
def test_the_stages_one_at_a_time_give_known_answers_and_compose_to_run_experiment(featured, alexnet_random):
    """run_experiment = select_cohort -> prepare_features -> cross_validate -> experiment_statistics ->
    store_experiment; each stage callable alone on the frozen outputs of the ones before it."""
    import dataclasses

    from cadx.records import ExperimentResults, config_sha256, to_json
    from cadx.svm import soft_vote
    from cadx.workflows.experiments import (
        CohortStage,
        cross_validate,
        experiment_statistics,
        prepare_features,
        select_cohort,
        store_experiment,
    )
    from tests.test_records import validate

    settings = ExperimentSettings(taps=("fc8", "fc7"), ensemble_tap="fc8", n_folds=3, seed=2, repeats=1)
    cohort = select_cohort(featured, alexnet_random, settings)
    records = roi_records(featured)
    assert isinstance(cohort, CohortStage) and [r.id for r in cohort.records] == [r.id for r in records]
    assert cohort.y.tolist() == [r.label for r in records] and cohort.lesions.tolist() == [r.lesion_id for r in records]
    assert cohort.sweep_taps == ("fc7", "fc8") and cohort.ensemble_tap == "fc8" and cohort.n_folds == 3  # net order
    assert select_cohort(featured, alexnet_random, dataclasses.replace(settings, n_folds=None)).n_folds == 5  # cohort's
    with pytest.raises(CadxInputError, match="no tap 'fc9'"):
        select_cohort(featured, alexnet_random, dataclasses.replace(settings, taps=("fc9",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cohort.n_folds = 4  # type: ignore[misc]

    features = prepare_features(featured, alexnet_random, settings, cohort)
    assert features.config.taps == ["fc7", "fc8"] and features.config.roi_ids == [r.id for r in records]
    assert features.config_sha256 == config_sha256(features.config) and features.extraction.n_rois == len(records)
    assert features.config.seed == 2 and features.config.n_folds == 3 and features.analytic_version is not None

    cv = cross_validate(featured, alexnet_random, settings, cohort, features)
    assert len(cv.runs_a) == len(cv.runs_b) == 1 and list(cv.runs_fused) == ["C", "Z"]
    np.testing.assert_array_equal(cv.runs_fused["C"][0], soft_vote(cv.runs_a[0], cv.runs_b[0]))
    np.testing.assert_array_equal(cv.runs_a[0].fold, cv.runs_b[0].fold)  # the same folds for both SVMs
    assert len(cv.segmentation_quality) == len(records)

    results = experiment_statistics(settings, cohort, features, cv, weights_note="stage test")
    assert isinstance(results, ExperimentResults) and results.repeats is None and results.n_rois == len(records)
    assert results.sweep["fc8"].fold_aucs == pytest.approx(cv.runs_a[0].fold_auc.tolist())
    assert results.methods["A"].auc_mean == pytest.approx(float(np.mean(cv.runs_a[0].fold_auc)))
    assert results.methods["B"].segmentation_quality == {q: list(cv.segmentation_quality).count(q)
                                                         for q in set(cv.segmentation_quality)}
    assert [(c.comparison, c.family) for c in results.comparisons][:3] == [
        ("C vs A", "paper"), ("C vs B", "paper"), ("A vs B", "paper")]

    stored = store_experiment(featured, alexnet_random, cohort, features, cv, results, name="stages", user="tester",
                              seconds=1.0)
    summary = experiment_summary(featured, stored)
    assert summary["results"] == to_json(results) and summary["config_sha256"] == features.config_sha256
    validate(summary)
    # the one-call pipeline stores the same record
    whole = experiment_summary(featured, run_experiment(featured, alexnet_random, settings, name="whole", user="tester",
                                                    weights_note="stage test"))
    validate(whole)
    assert whole["config"] == summary["config"] and whole["config_sha256"] == summary["config_sha256"]

    def numbers(results):
        return {k: v for k, v in results.items() if k not in ("extraction", "sweep", "methods")}, \
            {k: {f: x for f, x in m.items() if f != "seconds"} for k, m in results["methods"].items()}

    assert numbers(whole["results"]) == numbers(summary["results"])
