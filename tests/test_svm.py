"""Tests of cadx.svm: lesion-level nested CV, the exact Gram engine, calibration, soft voting, layer sweeps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_selection import VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import cadx.svm as svm
from cadx.svm import (
    CvResult,
    cross_validate_by_lesion,
    default_grid,
    fold_auc,
    make_plain_pipeline,
    soft_vote,
    sweep_layers,
)

SMALL_GRID = {"gamma": [0.3 / 80, 3.0 / 80], "coef0": [0.0, 1.0], "degree": [1, 2, 3]}
TINY_GRID = {"gamma": [0.01, 0.1], "coef0": [1.0], "degree": [1, 2]}  # for tests that are not about the grid


def _data(n_lesions=30, p=80, seed=0, relu=True):
    """ROIs grouped in lesions (1-3 ROIs each), labels per lesion, p > n, with zero-variance columns."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_lesions)
    lesions = np.repeat(np.arange(n_lesions), sizes)
    label = np.resize([0, 1], n_lesions)
    rng.shuffle(label)
    y = label[lesions]
    latent = rng.standard_normal((n_lesions, p))[lesions]
    X = latent + 0.5 * rng.standard_normal((len(y), p)) + 0.7 * y[:, None] * (np.arange(p) < 15)
    if relu:
        X = np.maximum(X, 0.0)
    X[:, 3] = 2.5  # constant everywhere
    X[:, 4] = 0.0
    X[:, 7] = 0.0
    X[lesions == 5, 7] = 1.0  # constant on any training set that lacks lesion 5
    return X, y, lesions


def _reference_fold(X, y, train, test, inner, grid, impute=False):
    """sklearn's own GridSearchCV(Pipeline([VarianceThreshold(), StandardScaler(), (imputer), SVC(poly)]))."""
    pos = np.empty(len(y), dtype=int)
    pos[train] = np.arange(len(train))
    cv = [(pos[a], pos[b]) for a, b in inner]
    steps = [("variance", VarianceThreshold()), ("scaler", StandardScaler())]
    if impute:
        steps.append(("impute", SimpleImputer()))
    steps.append(("svc", SVC(kernel="poly")))
    search = GridSearchCV(Pipeline(steps), {f"svc__{k}": v for k, v in grid.items()}, scoring="roc_auc", cv=cv)
    search.fit(X[train], y[train])
    params = {k.removeprefix("svc__"): v for k, v in search.best_params_.items()}
    return search.decision_function(X[test]), params


def _assert_params_equal(got: dict, want: dict):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-15), (key, got, want)


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_patients", [False, True])
def test_no_lesion_or_patient_split_across_train_and_test_at_either_level(monkeypatch, use_patients):
    X, y, lesions = _data(n_lesions=40, p=30)
    patients = lesions // 2 if use_patients else None  # two lesions per patient
    seen_outer, seen_inner = [], []
    real_grams, real_search = svm._fold_grams, svm._grid_search_gram

    def spy_grams(X_, train, test, inner, **kw):
        seen_outer.append((train.copy(), test.copy()))
        return real_grams(X_, train, test, inner, **kw)

    def spy_search(G_inner, inner_pos, y_tr, candidates):
        seen_inner.append([(a.copy(), b.copy()) for a, b in inner_pos])
        return real_search(G_inner, inner_pos, y_tr, candidates)

    monkeypatch.setattr(svm, "_fold_grams", spy_grams)
    monkeypatch.setattr(svm, "_grid_search_gram", spy_search)
    res = cross_validate_by_lesion(X, y, lesions, patients=patients, grid={"gamma": [1 / 30], "degree": [1]})
    unit = patients if use_patients else lesions
    assert len(seen_outer) == len(seen_inner) == 5
    covered = np.concatenate([test for _, test in seen_outer])
    assert np.array_equal(np.sort(covered), np.arange(len(y)))  # every ROI tested exactly once
    for (train, test), inner_pos, (rtrain, rtest) in zip(seen_outer, seen_inner, res.splits, strict=True):
        assert np.array_equal(train, rtrain) and np.array_equal(test, rtest)
        assert not set(unit[train]) & set(unit[test])
        assert not set(lesions[train]) & set(lesions[test])
        assert len(inner_pos) == 5
        val_all = np.concatenate([b for _, b in inner_pos])
        assert np.array_equal(np.sort(val_all), np.arange(len(train)))
        for fit_pos, val_pos in inner_pos:  # positions within the outer training set
            fit, val = train[fit_pos], train[val_pos]
            assert not set(unit[fit]) & set(unit[val])
            assert not set(lesions[fit]) & set(lesions[val])
            assert not set(fit) & set(test) and not set(val) & set(test)
    for k, inner in enumerate(res.inner_splits):
        for (fit, val), (fit_pos, val_pos) in zip(inner, seen_inner[k], strict=True):
            assert np.array_equal(fit, res.splits[k][0][fit_pos]) and np.array_equal(val, res.splits[k][0][val_pos])


def test_lesion_in_two_patients_is_refused():
    X, y, lesions = _data(n_lesions=20, p=10)
    patients = np.arange(len(y))  # every ROI its own patient: lesions span patients
    with pytest.raises(ValueError, match="more than one patient"):
        cross_validate_by_lesion(X, y, lesions, patients=patients)


@pytest.mark.slow
def test_gram_engine_equals_plain_gridsearch_p_gt_n_with_zero_variance_columns():
    X, y, lesions = _data()
    assert X.shape[1] > X.shape[0]
    res = cross_validate_by_lesion(X, y, lesions, grid=SMALL_GRID, seed=3)
    assert res.engine == "gram"
    assert (res.n_features_kept < X.shape[1] - 1).all()
    for k, ((train, test), inner) in enumerate(zip(res.splits, res.inner_splits, strict=True)):
        ref_dec, ref_params = _reference_fold(X, y, train, test, inner, SMALL_GRID)
        np.testing.assert_allclose(res.decision[test], ref_dec, rtol=1e-8, atol=1e-12 * np.abs(ref_dec).max())
        _assert_params_equal(res.best_params[k], ref_params)
    chosen = {(p["gamma"], p["coef0"], p["degree"]) for p in res.best_params}
    assert len(chosen) > 1  # the comparison exercised more than one grid point
    plain = cross_validate_by_lesion(X, y, lesions, grid=SMALL_GRID, seed=3, engine="plain")
    np.testing.assert_allclose(res.inner_scores, plain.inner_scores, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.proba, plain.proba, rtol=1e-7)
    assert res.best_params == plain.best_params


def test_the_inner_grid_search_svm_is_scikit_learn_s_svc_bit_for_bit():
    """The inner loop calls libsvm's binding directly (cadx.svm._inner_svc_decision) to skip SVC's per-call
    validation: its decision values must be exactly SVC's, on Grams of every shape, kernel and C the grid uses, and a
    one-class fold is refused as SVC refuses it."""
    from cadx.gram import _poly

    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(120):
        n, m, p = int(rng.integers(4, 60)), int(rng.integers(1, 20)), int(rng.integers(1, 50))
        X = rng.normal(size=(n + m, p))
        y = (rng.random(n) > rng.random()).astype(int)
        if y.min() == y.max():
            continue
        G = X @ X.T
        gamma, coef0 = float(rng.choice([0.1 / p, 1 / p, 10 / p])), float(rng.choice([0.0, 1.0]))
        degree, C = int(rng.choice([1, 2, 3])), float(rng.choice([0.1, 1.0, 10.0]))
        G_fit = _poly(np.ascontiguousarray(G[:n, :n]), gamma, coef0, degree)
        G_val = _poly(np.ascontiguousarray(G[n:, :n]), gamma, coef0, degree)
        expected = SVC(kernel="precomputed", C=C).fit(G_fit, y).decision_function(G_val)
        assert np.array_equal(svm._inner_svc_decision(G_fit, y, G_val, C), expected)
        checked += 1
    assert checked > 100
    with pytest.raises(ValueError, match="number of classes"):
        svm._inner_svc_decision(np.eye(3), np.zeros(3, dtype=int), np.eye(3), 1.0)
    with pytest.raises(ValueError, match="shapes do not match"):
        svm._inner_svc_decision(np.eye(3), np.array([0, 1, 1]), np.eye(2), 1.0)


def test_the_inner_grid_search_prints_nothing_in_a_fresh_process():
    """libsvm prints a summary of every fit to stdout unless told not to, which SVC.fit does before each fit; the
    direct call must too. In a fresh process (a CLI run, a background worker) no SVC has run before it, and each of the
    tens of thousands of inner fits printed "optimization finished, #iter = ..." into the output and the job logs."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import numpy as np; from cadx import svm; "
            "print(svm._inner_svc_decision(np.eye(4) + 1, np.array([0, 1, 0, 1]), np.ones((2, 4)), 1.0).shape)")
    repo = Path(__file__).resolve().parents[1]  # whatever directory pytest was started from
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout == "(2,)\n", out.stdout[:500]


def test_grid_ties_resolved_like_gridsearchcv():
    scores = np.array([[0.5, 0.7], [0.6, 0.6], [0.7, 0.5], [np.nan, 1.0]])
    assert svm._best_index(scores) == 0  # first of the tied best means, NaN ranks last
    _, cands = svm._check_grid({"gamma": [1.0, 2.0], "degree": [1, 2]})
    search = make_plain_pipeline(grid={"gamma": [1.0, 2.0], "degree": [1, 2]})
    from sklearn.model_selection import ParameterGrid

    assert [{k.removeprefix("svc__"): v for k, v in c.items()} for c in ParameterGrid(search.param_grid)] == [
        {k: c[k] for k in ("degree", "gamma")} for c in cands]


def test_deterministic_for_a_seed_and_seed_changes_folds():
    X, y, lesions = _data(n_lesions=30, p=40)
    a = cross_validate_by_lesion(X, y, lesions, grid=TINY_GRID, seed=7)
    b = cross_validate_by_lesion(X, y, lesions, grid=TINY_GRID, seed=7)
    for name in ("decision", "proba", "fold", "fold_auc", "inner_scores", "platt"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.best_params == b.best_params
    repeated = cross_validate_by_lesion(X, y, lesions, grid=TINY_GRID, seed=7, repeats=2)
    assert isinstance(repeated, type(a)) and repeated.seed == 7 and len(repeated.later_seeds) == 1  # one type
    runs = repeated.runs
    assert [r.seed for r in runs] == [7, 8] and runs[0].later_seeds == ()
    np.testing.assert_array_equal(repeated.decision, a.decision)
    assert a.runs[0].seed == 7 and len(a.runs) == 1
    np.testing.assert_array_equal(runs[0].decision, a.decision)
    assert not np.array_equal(runs[1].fold, a.fold)


def test_probabilities_keep_decision_order_within_each_fold():
    X, y, lesions = _data(n_lesions=40, p=60, seed=2)
    res = cross_validate_by_lesion(X, y, lesions, grid=SMALL_GRID)
    assert (res.platt[:, 0] > 0).all()
    assert ((res.proba > 0) & (res.proba < 1)).all()
    for k in range(res.n_folds):
        idx = np.flatnonzero(res.fold == k)
        order = np.argsort(res.decision[idx], kind="stable")
        assert (np.diff(res.proba[idx][order]) >= 0).all()
    np.testing.assert_array_equal(res.fold_auc, res.fold_auc_proba)
    np.testing.assert_allclose(fold_auc(res.decision, res.y, res.fold), res.fold_auc)
    assert res.auc_se == pytest.approx(np.std(res.fold_auc, ddof=1) / np.sqrt(5))


def test_platt_slope_stays_positive_on_anti_informative_scores():
    f = np.linspace(-2, 2, 50)
    y = (f < 0).astype(int)  # decision values ranked backwards
    a, b = svm._fit_platt(f, y)
    assert a > 0
    p = svm._sigmoid(a * f + b)
    assert (np.diff(p) > 0).all()
    a_good, _ = svm._fit_platt(f, 1 - y)
    assert a_good > 1.0


def _fake_result(fold, proba, y):
    z = np.zeros(0)
    return CvResult(decision=proba, proba=proba, fold=fold, y=y, groups=np.arange(len(y)), fold_auc=z,
                    fold_auc_proba=z, best_params=(), best_inner_score=z, inner_scores=z, platt=z, n_features=1,
                    n_features_kept=z, splits=(), inner_splits=(), gram_seconds=z, svm_seconds=z, fold_seconds=z,
                    seconds=0.0, seed=0, engine="gram")


def test_soft_vote_averages_same_folds_and_refuses_mismatched_folds():
    y = np.array([0, 1, 0, 1])
    r1 = _fake_result(np.array([0, 0, 1, 1]), np.array([0.1, 0.9, 0.2, 0.6]), y)
    r2 = _fake_result(np.array([0, 0, 1, 1]), np.array([0.3, 0.7, 0.4, 0.8]), y)
    r3 = _fake_result(np.array([0, 1, 0, 1]), np.array([0.3, 0.7, 0.4, 0.8]), y)
    np.testing.assert_allclose(soft_vote(r1, r2), [0.2, 0.8, 0.3, 0.7])
    with pytest.raises(ValueError, match="different folds"):
        soft_vote(r1, r3)
    with pytest.raises(ValueError, match="folds2"):
        soft_vote(r1, r2.proba)
    with pytest.raises(ValueError, match="different folds"):
        soft_vote(r1.proba, r3.proba, folds1=r1.fold, folds2=r3.fold)
    np.testing.assert_allclose(soft_vote(r1.proba, r2.proba, folds1=r1.fold, folds2=r2.fold), [0.2, 0.8, 0.3, 0.7])


def test_soft_vote_of_two_real_runs_needs_the_same_seed():
    X, y, lesions = _data(n_lesions=30, p=20)
    a = cross_validate_by_lesion(X, y, lesions, grid=TINY_GRID, seed=0)
    b = cross_validate_by_lesion(X[:, :10], y, lesions, grid=TINY_GRID, seed=0)
    c = cross_validate_by_lesion(X[:, :10], y, lesions, grid=TINY_GRID, seed=1)
    assert soft_vote(a, b).shape == y.shape
    with pytest.raises(ValueError, match="different folds"):
        soft_vote(a, c)


def test_nan_features_are_imputed_inside_training_folds_only():
    rng = np.random.default_rng(5)
    X, y, lesions = _data(n_lesions=36, p=12, relu=False)
    X[:, 0] = np.exp(2.0 * rng.standard_normal(len(y)))  # heavy-tailed: fold means differ a lot
    X[rng.random(len(y)) < 0.3, 0] = np.nan
    X[rng.random(len(y)) < 0.1, 1] = np.nan
    X[lesions == 2, 5] = np.nan
    grid = {"gamma": [1 / 12, 1 / 3], "coef0": [1.0], "degree": [1, 2]}
    res = cross_validate_by_lesion(X, y, lesions, grid=grid, seed=1)
    assert np.isfinite(res.decision).all()
    leaky = X.copy()
    leaky[np.isnan(leaky)] = np.take(np.nanmean(X, axis=0), np.nonzero(np.isnan(X))[1])
    differs = False
    for k, ((train, test), inner) in enumerate(zip(res.splits, res.inner_splits, strict=True)):
        ref_dec, ref_params = _reference_fold(X, y, train, test, inner, grid, impute=True)
        np.testing.assert_allclose(res.decision[test], ref_dec, rtol=1e-8, atol=1e-12 * np.abs(ref_dec).max())
        _assert_params_equal(res.best_params[k], ref_params)
        leak_dec, _ = _reference_fold(leaky, y, train, test, inner, grid)
        differs |= not np.allclose(leak_dec, ref_dec, rtol=1e-6)
    assert differs  # imputing with statistics that include test ROIs would have changed the answer


def test_gram_blocks_and_syrk_match_direct_standardisation():
    X, y, lesions = _data(n_lesions=20, p=50, relu=False)
    train, test = np.arange(0, len(y), 2)[:-2], np.arange(1, len(y), 2)
    inner = [(train[: len(train) // 2], train[len(train) // 2:])]
    G1, (H1,), kept, nonconst = svm._fold_grams(X, train, test, inner, block_columns=7)
    G2, (H2,), _, _ = svm._fold_grams(X, train, test, inner, block_columns=1000)
    order = np.concatenate([train, test])
    keep = VarianceThreshold().fit(X[train]).get_support()
    Z = StandardScaler().fit(X[train][:, keep]).transform(X[order][:, keep])
    np.testing.assert_allclose(G1, Z @ Z.T, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(G1, G2, rtol=1e-12, atol=1e-10)
    keep_i = VarianceThreshold().fit(X[inner[0][0]]).get_support()
    Zi = StandardScaler().fit(X[inner[0][0]][:, keep_i]).transform(X[train][:, keep_i])
    np.testing.assert_allclose(H1, Zi @ Zi.T, rtol=1e-12, atol=1e-10)
    assert kept == keep.sum() and nonconst == VarianceThreshold().fit(X).get_support().sum()


def test_default_grid_and_input_errors():
    g = default_grid(1000)
    assert g["degree"] == [1, 2, 3] and g["gamma"] == [1e-4, 1e-3, 1e-2] and g["coef0"] == [0.0, 1.0]
    X, y, lesions = _data(n_lesions=20, p=10)
    with pytest.raises(ValueError, match="engine must be one of"):
        cross_validate_by_lesion(X, y, lesions, engine="fast")
    with pytest.raises(ValueError, match="unknown parameters"):
        cross_validate_by_lesion(X, y, lesions, grid={"kernel": ["rbf"]})
    with pytest.raises(ValueError, match="exactly two classes"):
        cross_validate_by_lesion(X, np.arange(len(y)) % 3, lesions)
    with pytest.raises(ValueError, match="feature rows"):
        cross_validate_by_lesion(X[:-1], y, lesions)
    with pytest.raises(ValueError, match="cannot fill"):
        cross_validate_by_lesion(X, y, lesions % 3)


def _sweep_inputs(tmp_path):
    X, y, lesions = _data(n_lesions=30, p=40)
    path = tmp_path / "wide.npy"
    np.save(path, X.astype(np.float32))
    sources = {
        "memmap": np.load(path, mmap_mode="r"),
        "path": str(path),
        "callable": lambda: X[:, :15],
    }
    return sources, y, lesions


def test_sweep_layers_reports_each_tap_and_progress(tmp_path):
    sources, y, lesions = _sweep_inputs(tmp_path)
    calls = []
    out = sweep_layers(sources, y, lesions, grid=TINY_GRID, progress=lambda d, t, m: calls.append((d, t, m)))
    assert list(out.layers) == ["memmap", "path", "callable"]
    assert [c[0] for c in calls] == list(range(1, 16)) and {c[1] for c in calls} == {15}
    mm, pa, ca = out.layers["memmap"], out.layers["path"], out.layers["callable"]
    assert mm.n_features == 40 and ca.n_features == 15
    assert mm.n_features_nonconstant == 38  # columns 3, 4 constant; 7 varies (lesion 5)
    np.testing.assert_array_equal(mm.results[0].decision, pa.results[0].decision)
    assert mm.auc_se == pytest.approx(mm.auc_sd / np.sqrt(5))
    single = cross_validate_by_lesion(sources["callable"], y, lesions, grid=TINY_GRID)
    np.testing.assert_array_equal(single.decision, ca.results[0].decision)


@pytest.mark.dask
@pytest.mark.slow
def test_dask_path_gives_the_same_numbers_as_joblib(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    sources, y, lesions = _sweep_inputs(tmp_path)
    sources.pop("path")
    local = sweep_layers(sources, y, lesions, grid=TINY_GRID, n_jobs=2)
    assert local.backend == "loky"
    sequential = sweep_layers(sources, y, lesions, grid=TINY_GRID, n_jobs=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        monkeypatch.setenv("CADX_DASK_SCHEDULER", c.scheduler_address)
        remote = sweep_layers(sources, y, lesions, grid=TINY_GRID)
    assert remote.backend == "dask"
    for name in sources:
        a, b = local.layers[name].results[0], remote.layers[name].results[0]
        c = sequential.layers[name].results[0]
        for other in (b, c):
            np.testing.assert_array_equal(a.decision, other.decision)
            np.testing.assert_array_equal(a.proba, other.proba)
            np.testing.assert_array_equal(a.fold, other.fold)
            assert a.best_params == other.best_params


# ---------------------------------------------------------------------------------------------------------------
# Calibration floor and the z-scored ensemble (issue 12, point 2)
# ---------------------------------------------------------------------------------------------------------------


def test_calibration_reports_the_free_slope_that_the_floor_hides():
    rng = np.random.default_rng(0)
    f = rng.standard_normal(60)
    y = (f + 0.8 * rng.standard_normal(60) > 0).astype(int)
    a, b, free, clamped = svm._calibrate(f, y)
    assert not clamped and free == a > 0 and (a, b) == svm._fit_platt(f, y)  # interior optimum: the free one
    # the same scores ranked backwards: the free ML slope is exactly the negative (the likelihood is symmetric
    # under f -> -f, A -> -A), the slope used sits at the floor, 1e-3 in units of 1 / SD(f)
    a_bad, _, free_bad, clamped_bad = svm._calibrate(-f, y)
    assert clamped_bad and a_bad == pytest.approx(1e-3 / np.std(f), rel=1e-6)
    assert free_bad == pytest.approx(-a, rel=1e-4)


def test_cross_validation_records_slopes_clamped_folds_and_inner_standardisation():
    X, y, lesions = _data(n_lesions=30, p=40, seed=4)
    good = cross_validate_by_lesion(X, y, lesions, grid=TINY_GRID, seed=1)
    # pure noise and one candidate (no selection to favour a lucky sign): the inner slopes scatter around 0
    noise = cross_validate_by_lesion(np.random.default_rng(0).standard_normal(X.shape), y, lesions,
                                     grid={"gamma": [0.01], "coef0": [1.0], "degree": [1]}, seed=1)
    for res in (good, noise):
        assert res.platt_free_slope.shape == res.platt_clamped.shape == (5,)
        np.testing.assert_array_equal(res.platt_clamped, res.platt_free_slope < res.platt[:, 0] * (1 - 1e-9))
        np.testing.assert_array_equal(res.platt[res.platt_clamped, 0] > 0, True)
        assert res.n_degenerate == int(res.platt_clamped.sum())
        assert (res.inner_decision_sd > 0).all()
    assert good.n_degenerate == 0 and noise.n_degenerate >= 1  # pure noise: some fold's slope is <= 0
    # the inner standardisation equals the mean/SD of the chosen candidate's inner out-of-fold decision values
    train, _ = good.splits[0]
    pos = {r: i for i, r in enumerate(train)}
    grid = svm._check_grid(TINY_GRID)[1]
    G_outer, G_inner, *_ = svm._fold_grams(X, train, good.splits[0][1], good.inner_splits[0])
    inner_pos = [(np.array([pos[r] for r in a]), np.array([pos[r] for r in v])) for a, v in good.inner_splits[0]]
    scores, oof = svm._grid_search_gram(G_inner, inner_pos, good.y[train], grid)
    best = oof[svm._best_index(scores)]
    assert good.inner_decision_mean[0] == pytest.approx(best.mean()) and good.inner_decision_sd[0] == pytest.approx(
        best.std())


def test_z_vote_standardises_on_the_training_fold_and_keeps_a_flat_classifier():
    from cadx.svm import z_vote

    y = np.array([0, 1, 0, 1])
    fold = np.array([0, 0, 1, 1])

    def result(decision, mean, sd, proba):
        base = _fake_result(fold, np.asarray(proba, float), y)
        return CvResult(**{**base.__dict__, "decision": np.asarray(decision, float),
                           "inner_decision_mean": np.asarray(mean, float), "inner_decision_sd": np.asarray(sd, float)})

    # SVM1 separates fold 1 well but its Platt slope was floored there (flat p1); SVM2 ranks fold 1 backwards
    r1 = result([-1.0, 1.0, -3.0, 5.0], [0.0, 1.0], [1.0, 2.0], [0.2, 0.8, 0.5, 0.5001])
    r2 = result([-0.5, 0.5, 1.0, -1.0], [0.0, 0.0], [0.5, 1.0], [0.3, 0.7, 0.6, 0.4])
    # by hand: z1 = [-1, 1, (-3-1)/2, (5-1)/2] = [-1, 1, -2, 2]; z2 = [-1, 1, 1, -1]
    np.testing.assert_allclose(z_vote(r1, r2), [-1.0, 1.0, -0.5, 0.5])
    # the probability average follows SVM2 alone in fold 1 (wrong), the z-vote follows the stronger SVM1
    p3 = soft_vote(r1, r2)
    assert p3[2] > p3[3] and z_vote(r1, r2)[2] < z_vote(r1, r2)[3]
    with pytest.raises(ValueError, match="different folds"):
        z_vote(r1, CvResult(**{**r2.__dict__, "fold": np.array([0, 1, 0, 1])}))
    with pytest.raises(ValueError, match="inner decision statistics"):
        z_vote(r1, _fake_result(fold, np.full(4, 0.5), y))
