"""Stored per-fold models: a fold's fitted classifier in a safe format reproduces the cross-validation's out-of-fold
decision values exactly; experiments store them (every swept tap and Method B) and occlusion uses them, falling back
to a refit for experiments recorded before."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from cadx import svm
from cadx.foldmodel import FoldModel, FoldModelError


def _toy(seed: int = 0):
    """SYNTHETIC features: 60 ROIs of 30 lesions, a shifted block of 5 informative features, one constant feature
    (dropped by the zero-variance filter) and one missing value (imputed)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 40))
    y = np.r_[np.zeros(30), np.ones(30)]
    X[y == 1, :5] += 0.8
    X[:, 7] = 1.0
    X[3, 2] = np.nan
    return X, y, np.arange(60) // 2


@pytest.mark.parametrize("engine", ["gram", "plain"])
def test_fold_models_reproduce_the_out_of_fold_decision_values(engine):
    X, y, lesions = _toy()
    result = svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, keep_models=True, engine=engine,
                                          block_columns=16)
    assert result.models is not None and len(result.models) == 3
    covered = np.zeros(len(y), dtype=bool)
    for k, model in enumerate(result.models):
        model = FoldModel.from_bytes(model.to_bytes())  # through the stored format
        assert np.array_equal(model.test, result.splits[k][1])
        assert not model.keep[7] and model.keep[:7].all()  # the constant feature was dropped
        decision = model.decision_function(X[model.test], X[model.support])
        np.testing.assert_allclose(decision, result.decision[model.test], rtol=0, atol=1e-10)
        np.testing.assert_allclose(model.proba(decision), result.proba[model.test], rtol=0, atol=1e-10)
        assert (model.platt_a, model.platt_b) == tuple(result.platt[k])
        params = result.best_params[k]
        assert (model.gamma, model.coef0, model.degree, model.C) == (params["gamma"], params["coef0"],
                                                                     params["degree"], params["C"])
        covered[model.test] = True
    assert covered.all()


def test_only_the_first_seed_keeps_models_and_none_by_default():
    X, y, lesions = _toy(1)
    first, second = svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, repeats=2,
                                                 keep_models=True).runs
    assert first.models is not None and second.models is None
    assert svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3).models is None
    sweep = svm.sweep_layers({"a": X[:, :20], "b": X[:, 20:]}, y, lesions, n_folds=3, n_inner=3, keep_models=True)
    assert all(layer.results[0].models is not None for layer in sweep.layers.values())


def test_checkpointed_folds_keep_their_models():
    X, y, lesions = _toy(2)

    class Store(dict):
        def load(self, unit):
            return self.get(unit)

        def save(self, unit, payload):
            self[unit] = payload

    store = Store()
    first = svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, keep_models=True, checkpoint=store)
    again = svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, keep_models=True, checkpoint=store)
    for a, b in zip(first.models, again.models, strict=True):
        assert a.to_bytes() == b.to_bytes()
    # a checkpoint written without a model (before models were kept) is computed again, not used without one
    plain = Store()
    svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, checkpoint=plain)
    resumed = svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, keep_models=True, checkpoint=plain)
    assert resumed.models is not None


def test_stored_format_refuses_pickles_and_malformed_payloads():
    X, y, lesions = _toy()
    model = svm.cross_validate_by_lesion(X, y, lesions, n_folds=3, n_inner=3, keep_models=True).models[0]
    with pytest.raises(FoldModelError, match="not a readable fold model"):
        FoldModel.from_bytes(b"not an npz", where="x")
    with np.load(io.BytesIO(model.to_bytes())) as data:
        fields = {k: data[k] for k in data.files}
    buffer = io.BytesIO()  # an object array needs pickle to load: refused, never unpickled
    np.savez(buffer, **{**fields, "keep": np.array([object()], dtype=object)})
    with pytest.raises(FoldModelError, match="not a readable fold model"):
        FoldModel.from_bytes(buffer.getvalue())
    for key, value in (("support", fields["support"][:-1]), ("scale", -fields["scale"]),
                       ("keep", fields["keep"].astype(np.float64))):
        buffer = io.BytesIO()
        np.savez(buffer, **{**fields, key: value})
        with pytest.raises(FoldModelError, match="experiment 9 fold 2"):
            FoldModel.from_bytes(buffer.getvalue(), where="experiment 9 fold 2")
    with pytest.raises(FoldModelError, match="support features of shape"):
        model.decision_function(X[:1], X[:3])


@pytest.mark.slow
def test_experiments_store_their_fold_models(workspace):
    """On the SYNTHETIC demo set, SQLite and PostgreSQL: every swept tap's and Method B's fold models are stored
    with the experiment; applied to the feature store they give every stored out-of-fold decision value (1e-10);
    occlusion uses them; without them (an older record) it refits and says so; deleting the experiment removes
    them."""
    from cadx.workflows import import_demo
    from cadx.workflows.analyses import experiment_data, occlusion_analysis
    from cadx.workflows.experiments import ExperimentSettings, run_experiment
    from cadx.workflows.features import analytic_matrix, feature_store, resolve_backbone
    from cadx.workflows.foldmodels import ANALYTIC, has_fold_models, load_fold_models, score_roi, tap_oof_scores
    from cadx.workflows.results import delete_experiment
    from db.models import FoldModelRecord

    import_demo(workspace, n_lesions=12, seed=5)
    loaded, _ = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(
        workspace, loaded, ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1, taps=("pool5", "fc8"),
                                              ensemble_tap="fc8", n_folds=3),
        name="fold models", user="tester")
    data = experiment_data(workspace, experiment_id)
    config = data.config
    n = len(data.hashes)
    store = feature_store(workspace)
    for tap in ("pool5", "fc8"):
        models = load_fold_models(workspace, experiment_id, tap=tap)
        assert models is not None and len(models) == 3
        X = np.asarray(store.load(tap, data.hashes, backbone=config.backbone, weights_sha256=config.weights.sha256,
                                  preprocessing=config.preprocessing), dtype=np.float64)
        decision, proba, fold = tap_oof_scores(models, n)
        assert np.array_equal(fold, data.folds)
        for model in models:
            np.testing.assert_allclose(model.decision_function(X[model.test], X[model.support]),
                                       decision[model.test], rtol=0, atol=1e-10)
        if tap == "fc8":  # the ensemble tap: SVM1's stored predictions
            np.testing.assert_array_equal(decision, data.predictions["decision1"].to_numpy(float))
            np.testing.assert_array_equal(proba, data.predictions["p1"].to_numpy(float))
        score = score_roi(models, 4, lambda rows, X=X: X[rows], tap=tap)
        assert score.decision == pytest.approx(decision[4], abs=1e-10) and score.fold == data.folds[4]
        tampered = X.copy()
        tampered[models[0].support[0]] += 1.0
        with pytest.raises(Exception, match="feature store changed"):
            score_roi(models, int(models[0].test[0]), lambda rows, t=tampered: t[rows], tap=tap)
    analytic = load_fold_models(workspace, experiment_id, classifier=ANALYTIC)
    X_b, _names, _quality = analytic_matrix(workspace, data.hashes)
    decision_b, _p, _f = tap_oof_scores(analytic, n)
    np.testing.assert_array_equal(decision_b, data.predictions["decision2"].to_numpy(float))
    for model in analytic:
        np.testing.assert_allclose(model.decision_function(X_b[model.test], X_b[model.support]),
                                   decision_b[model.test], rtol=0, atol=1e-10)

    roi_id = int(data.predictions["roi_id"].iloc[3])
    stored = occlusion_analysis(workspace, experiment_id, roi_id, patch=512, stride=512, loaded=loaded)
    assert stored["model_source"] == "stored"
    assert stored["decision"] == pytest.approx(stored["decision_stored"], abs=1e-10)
    with workspace.sessions.begin() as session:  # an experiment recorded before fold models were stored
        session.execute(delete(FoldModelRecord).where(FoldModelRecord.experiment_id == experiment_id))
    assert not has_fold_models(workspace, experiment_id)
    refit = occlusion_analysis(workspace, experiment_id, roi_id, patch=512, stride=512, loaded=loaded)
    assert refit["model_source"] == "refit"
    assert refit["p1"] == pytest.approx(stored["p1"], abs=1e-6)

    second = run_experiment(workspace, loaded, ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1,
                                                                  taps=(), ensemble_tap="fc8", n_folds=3,
                                                                  analytic=False), name="second", user="tester")
    assert has_fold_models(workspace, second)
    delete_experiment(workspace, second, user="tester")
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(FoldModelRecord)) == 0
