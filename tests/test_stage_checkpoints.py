"""Checkpoints between the stages of an experiment (issue 14, item 3): the job runner keeps the output of the
statistics stage (JSON of the typed record, read back validated), so a worker that dies while storing resumes
without computing the statistics again and stores exactly the record it would have stored; the scope names the
config, the cohort's ROIs with their labels and groups, and the code version, so changed data never restores stale
statistics. On SQLite and PostgreSQL (the ``workspace`` fixture)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from cadx.errors import CadxInputError
from cadx.records import to_json
from cadx.workflows import exclude_roi, jobs
from cadx.workflows import experiments as experiments_module
from cadx.workflows.experiments import (
    ExperimentSettings,
    prepare_features,
    read_statistics,
    select_cohort,
    statistics_payload,
)
from cadx.workflows.features import (
    resolve_backbone,
    roi_records,
)
from cadx.workflows.jobs import JobCheckpoints, get_job, retry_job, run_next_job, submit_job
from db.models import Experiment, JobCheckpoint, Lesion, Prediction
from tests.workspace_cache import demo_with_features

PARAMS = {"backbone": "alexnet", "weights": "random", "taps": ["fc8"], "ensemble_tap": "fc8", "n_folds": 3,
          "seed": 0, "repeats": 1, "name": "staged", "min_lesions_per_class_per_fold": 1}  # 12 demo lesions
UNITS = {f"sweep:fc8/0/{k}" for k in range(3)} | {f"B:X/0/{k}" for k in range(3)}


@pytest.fixture
def demo(workspace_cache, workspace):
    workspace_cache.fill(workspace, demo_with_features, n_lesions=12, seed=5, taps=("fc8",))
    return workspace


@pytest.fixture
def counted(monkeypatch):
    """Counts the calls of the statistics stage; ``counted.fail_store()`` makes storing fail (once per call)."""

    class Counter:
        statistics = 0
        results: list = []

        def fail_store(self):
            def failing(*args, **kwargs):
                self.results.append(args[5])  # the ExperimentResults the run was about to store
                monkeypatch.setattr(experiments_module, "store_experiment", real_store)
                raise OSError("No space left on device while storing the experiment")

            monkeypatch.setattr(experiments_module, "store_experiment", failing)

    counter = Counter()
    counter.results = []
    real_statistics = experiments_module.experiment_statistics
    real_store = experiments_module.store_experiment

    def statistics(*args, **kwargs):
        counter.statistics += 1
        return real_statistics(*args, **kwargs)

    monkeypatch.setattr(experiments_module, "experiment_statistics", statistics)
    return counter


def _units(workspace, job_id: int) -> set[str]:
    with workspace.sessions() as session:
        return set(session.scalars(select(JobCheckpoint.unit).where(JobCheckpoint.job_id == job_id)))


def _stored(workspace, experiment_id: int) -> tuple[dict, list[tuple]]:
    with workspace.sessions() as session:
        results = session.get(Experiment, experiment_id).results
        rows = session.scalars(select(Prediction).where(Prediction.experiment_id == experiment_id)
                               .order_by(Prediction.roi_id, Prediction.repeat)).all()
        predictions = [(p.roi_id, p.roi_sha256, p.repeat, p.fold, p.decision1, p.p1, p.decision2, p.p2, p.p3, p.pz)
                       for p in rows]
    return results, predictions


def _without_timings(value):
    """A results JSON without the measured seconds (which differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "timings")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_a_job_that_failed_while_storing_restores_its_statistics(demo, counted, monkeypatch):
    seen = []
    real_report = jobs._Reporter.__call__
    monkeypatch.setattr(jobs._Reporter, "__call__", lambda self, d, t, m: seen.append(m) or real_report(self, d, t, m))
    counted.fail_store()
    job_id = submit_job(demo, "experiment", PARAMS, user="alice")
    assert run_next_job(demo) == job_id
    failed = get_job(demo, job_id)
    assert failed.status == "failed" and "No space left on device" in failed.error
    assert counted.statistics == 1
    assert _units(demo, job_id) == UNITS | {"stage:statistics"}  # every fold and the statistics are kept

    seen.clear()
    assert retry_job(demo, job_id, user="alice")
    assert run_next_job(demo) == job_id
    job = get_job(demo, job_id)
    assert job.status == "done", job.error
    assert counted.statistics == 1  # not computed again
    assert job.message.startswith("resumed: 6 of 6 units restored from checkpoints, 0 computed; "
                                  "stages restored: statistics. experiment ")
    assert any(m.startswith("statistics restored from checkpoint") for m in seen)
    assert _units(demo, job_id) == set()  # a finished job keeps no checkpoints
    results, predictions = _stored(demo, job.experiment_id)
    assert results == to_json(counted.results[0])  # exactly what the interrupted run was storing

    # the same experiment uninterrupted (nothing of the finished job is reused): the same record and predictions
    again = submit_job(demo, "experiment", PARAMS, user="bob")
    assert run_next_job(demo) == again
    reference = get_job(demo, again)
    assert reference.status == "done" and not reference.message.startswith("resumed")
    assert counted.statistics == 2
    expected, expected_predictions = _stored(demo, reference.experiment_id)
    assert _without_timings(results) == _without_timings(expected)
    assert results["methods"]["A"]["pooled_auc"] is not None and results["comparisons"]
    assert predictions == expected_predictions and len(predictions) == results["n_rois"]


@pytest.mark.slow
def test_statistics_of_changed_data_are_not_restored(demo, counted):
    counted.fail_store()
    job_id = submit_job(demo, "experiment", PARAMS, user="alice")
    run_next_job(demo)
    assert get_job(demo, job_id).status == "failed" and "stage:statistics" in _units(demo, job_id)
    before = counted.results[0]
    excluded = roi_records(demo)[0].id
    exclude_roi(demo, excluded, reason="location_marker", user="alice")  # the data change before the retry

    assert retry_job(demo, job_id, user="alice")
    assert run_next_job(demo) == job_id
    job = get_job(demo, job_id)
    assert job.status == "done", job.error
    assert counted.statistics == 2  # computed again for the new ROI set
    assert not job.message.startswith("resumed")  # nothing of the old scope was restored: no unit, no stage
    results, predictions = _stored(demo, job.experiment_id)
    assert results["n_rois"] == before.n_rois - 1 and results["roi_set_sha256"] != before.roi_set_sha256
    assert excluded not in {p[0] for p in predictions} and len(predictions) == before.n_rois - 1


@pytest.mark.slow
def test_the_scope_names_each_roi_s_label_not_only_the_config(demo):
    """Two lesions of different labels and as many ROIs swap labels: the ROI set and every count stay, so the
    config's SHA-256 does too, but the checkpoints' scope changes."""
    loaded, _ = resolve_backbone("alexnet", weights="random")
    settings = ExperimentSettings.from_params(PARAMS)

    def stage():
        cohort = select_cohort(demo, loaded, settings)
        return prepare_features(demo, loaded, settings, cohort)

    first = stage()
    records = roi_records(demo)
    views = {}
    for r in records:
        views.setdefault((r.lesion_id, r.label, r.patient_id), []).append(r.id)
    patients = {}
    for _lesion, label, patient in views:
        patients.setdefault(patient, set()).add(label)
    single = {k: len(v) for k, v in views.items() if len(patients[k[2]]) == 1}  # each patient keeps one label
    benign = next(k for k in single if k[1] == 0)
    malignant = next(k for k in single if k[1] == 1 and single[k] == single[benign])
    with demo.sessions.begin() as session:
        labels = dict(session.execute(select(Lesion.id, Lesion.label)
                                      .where(Lesion.id.in_([benign[0], malignant[0]]))).all())
        session.execute(update(Lesion).where(Lesion.id == benign[0]).values(label=labels[malignant[0]]))
        session.execute(update(Lesion).where(Lesion.id == malignant[0]).values(label=labels[benign[0]]))
    second = stage()
    assert second.config_sha256 == first.config_sha256  # the config alone would restore stale folds
    assert second.cohort_sha256 != first.cohort_sha256 and second.scope != first.scope


def test_a_statistics_checkpoint_is_read_back_validated(workspace):
    from cadx.records import Binormal, ExperimentResults, MethodRecord, RocPoints

    method = MethodRecord(title="SVM1", auc_mean=0.75, auc_sd=0.1, auc_se=0.05, fold_aucs=[0.7, 0.8, None],
                          pooled_auc=0.1 + 0.2, pooled_ci95=[0.5, 1.0], lesion_auc=2 / 3,
                          lesion_clustered_bootstrap_ci95=None, roc=RocPoints(fpr=[0.0, 1.0], tpr=[0.0, 1.0]),
                          seconds=1.5, binormal=Binormal(error="perfect separation"))
    results = ExperimentResults(n_rois=4, n_lesions=2, n_patients=2, n_malignant_rois=2, weights_note="synthetic",
                                sweep={}, methods={"A": method}, comparisons=[], cohort="all", roi_set_sha256="ab")
    payload = statistics_payload(results)
    assert read_statistics(payload) == results  # exact: floats as JSON keeps them (0.1 + 0.2 is not 0.3)
    assert to_json(read_statistics(payload)) == to_json(results)
    with pytest.raises(CadxInputError, match="checkpoint of the statistics stage"):
        read_statistics(b"\x80 not JSON")
    with pytest.raises(CadxInputError, match="n_rois"):
        read_statistics(payload.replace(b'"n_rois": 4', b'"n_rois": "four"'))

    # in the job runner: a payload that does not read is deleted and the stage computed again, not restored
    job_id = submit_job(workspace, "features", {}, user="alice")
    checkpoints = JobCheckpoints(workspace, job_id)
    checkpoints.save_stage("scope-1", "statistics", b"{}")
    assert checkpoints.load_stage("scope-1", "statistics", read_statistics) is None
    assert checkpoints.restored_stages == [] and checkpoints.resume_note() is None
    checkpoints.save_stage("scope-1", "statistics", payload)
    assert checkpoints.load_stage("scope-2", "statistics", read_statistics) is None  # another scope: never
    checkpoints.save_stage("scope-1", "statistics", payload)
    assert checkpoints.load_stage("scope-1", "statistics", read_statistics) == results
    assert checkpoints.resume_note() == ("resumed: 0 of 0 units restored from checkpoints, 0 computed; "
                                         "stages restored: statistics")
