"""Tests of cadx.stats against hand-computed values and R reference values (pROC, ordinal::clm).

The R values below were produced by tests/reference/proc_reference.R (see its header to rerun it) and are
embedded as literals: these tests never need R. The fixtures are rebuilt here from the same integer formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from cadx import stats

# fmt: off
PROC_REFERENCE = {
    "ties": {
        "checksum": (32, 48, 525, 612),
        "auc_a": 0.81119791666666663,
        "auc_b": 0.60872395833333337,
        "ci_a_95": (0.71895557031958413, 0.90344026301374913),
        "ci_b_90": (0.50246405708021014, 0.7149838595864566),
        "z": 2.5658311004536158,
        "p": 0.010292893397527663,
        "diff_ci_95": (0.047809972044275256, 0.35713794462239123),
        "tp_a": [
            32, 32, 32, 32, 32, 29, 26, 24, 21, 18, 15, 12, 9, 6, 3, 0,
        ],
        "tn_a": [
            0, 5, 9, 14, 18, 23, 27, 31, 35, 40, 44, 48, 48, 48, 48, 48,
        ],
    },
    "correlated": {
        "checksum": (64, 86, 93.025000000000006, 102.667),
        "auc_a": 0.74763808139534882,
        "auc_b": 0.78779069767441856,
        "ci_a_95": (0.67064141253900689, 0.82463475025169075),
        "ci_b_90": (0.7284345726598429, 0.84714682268899422),
        "z": -6.8150563771842583,
        "p": 9.4226806294564408e-12,
        "diff_ci_95": (-0.05170023634799549, -0.028604996210143993),
        "tp_a": [
            64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
            64, 64, 63, 63, 63, 63, 62, 61, 61, 61, 61, 60, 59, 58, 58, 58, 57, 56, 55, 55, 55, 55, 54, 54, 54,
            54, 53, 53, 53, 52, 51, 50, 50, 50, 50, 49, 48, 47, 47, 47, 47, 46, 45, 45, 45, 45, 45, 44, 44, 44,
            43, 42, 42, 42, 41, 40, 39, 39, 39, 39, 38, 37, 37, 37, 37, 37, 36, 35, 35, 35, 35, 34, 33, 33, 33,
            32, 31, 30, 30, 30, 29, 28, 28, 28, 28, 28, 27, 27, 27, 27, 26, 25, 25, 25, 25, 24, 23, 22, 22, 22,
            22, 21, 20, 19, 19, 19, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1,
            0,
        ],
        "tn_a": [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 26, 26, 27, 28, 29, 29, 29, 30, 31, 32, 32, 32, 32, 33, 34, 34, 34, 34, 35, 36, 37, 37, 38, 39,
            40, 40, 41, 42, 42, 42, 42, 43, 44, 45, 45, 45, 45, 46, 47, 48, 48, 48, 49, 50, 51, 52, 52, 53, 54,
            54, 54, 55, 56, 56, 56, 56, 57, 58, 59, 59, 59, 60, 61, 62, 63, 63, 63, 64, 65, 66, 66, 66, 67, 68,
            68, 68, 68, 69, 70, 70, 70, 71, 72, 73, 74, 74, 75, 76, 77, 77, 77, 78, 79, 80, 80, 80, 80, 81, 82,
            83, 83, 83, 83, 84, 85, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86, 86,
            86,
        ],
    },
}
BINORMAL_REFERENCE = {
    "hanley_mcneil": {
        "a": 1.6567822069210256, "b": 0.71300219674541021, "auc": 0.91133112886852075,
        "se_a": 0.31045591076828821, "se_b": 0.21588193664786592, "se_auc": 0.029505776926956023,
        "log_likelihood": -123.6485531779044,
    },
    "ties_a": {
        "a": 1.2750610528384174, "b": 0.91515832001187258, "auc": 0.82655093749508202,
        "se_a": 0.30018083338672963, "se_b": 0.23851976215756371, "se_auc": 0.046676112891661688,
        "log_likelihood": -197.63443180147129,
    },
}
# fmt: on


def _fixture_ties() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i = np.arange(80)
    y = ((i * 7) % 5 < 2).astype(int)
    a = ((i * 37) % 11 + 4 * y).astype(float)
    b = ((i * 53) % 13 + 2 * y + i % 3).astype(float)
    return y, a, b


def _fixture_correlated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i = np.arange(150)
    y = ((i * 3) % 7 < 3).astype(int)
    a = ((i * 7919) % 1000) / 1000 + 0.3 * y
    b = a + ((i * 131) % 97) / 1000 + 0.04 * y
    return y, a, b


FIXTURES = {"ties": _fixture_ties, "correlated": _fixture_correlated}


def _hanley_mcneil() -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.zeros(58), np.ones(51)].astype(int)
    ratings = np.r_[np.repeat(np.arange(1, 6), [33, 6, 6, 11, 2]), np.repeat(np.arange(1, 6), [3, 2, 2, 11, 33])]
    return y, ratings.astype(float)


# ---------------------------------------------------------------------------------------------------------------
# Empirical AUC and ROC points
# ---------------------------------------------------------------------------------------------------------------


def test_auc_hand_computed_with_ties():
    # malignant {0.4, 0.8, 0.3} vs benign {0.1, 0.4, 0.5}: pairs won 1 + 1/2 + 0, 1 + 1 + 1, 1 + 0 + 0 -> 5.5 / 9
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.4, 0.8, 0.5, 0.3]
    assert stats.auc(y, s) == pytest.approx(11 / 18, abs=1e-15)
    assert stats.auc(np.array(y, dtype=bool), s) == pytest.approx(11 / 18, abs=1e-15)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_match_the_r_script(name):
    y, a, b = FIXTURES[name]()
    n1, n0, sum_a, sum_b = PROC_REFERENCE[name]["checksum"]
    assert (int(y.sum()), int((y == 0).sum())) == (n1, n0)
    assert a.sum() == pytest.approx(sum_a, rel=1e-13)
    assert b.sum() == pytest.approx(sum_b, rel=1e-13)


@pytest.mark.parametrize("name", FIXTURES)
def test_auc_matches_proc(name):
    y, a, b = FIXTURES[name]()
    ref = PROC_REFERENCE[name]
    assert stats.auc(y, a) == pytest.approx(ref["auc_a"], abs=1e-12)
    assert stats.auc(y, b) == pytest.approx(ref["auc_b"], abs=1e-12)


@pytest.mark.parametrize("name", FIXTURES)
def test_roc_points_match_proc_coords_all(name):
    y, a, _ = FIXTURES[name]()
    ref = PROC_REFERENCE[name]
    n1, n0 = int(y.sum()), int((y == 0).sum())
    pts = stats.roc_points(y, a)
    # pROC lists thresholds in increasing order, so its points are ours reversed.
    np.testing.assert_allclose(pts.tpr, np.array(ref["tp_a"][::-1]) / n1, atol=1e-12)
    np.testing.assert_allclose(1 - pts.fpr, np.array(ref["tn_a"][::-1]) / n0, atol=1e-12)
    assert pts.thresholds[0] == np.inf
    assert np.all(np.diff(pts.thresholds) < 0)
    for t, tpr, fpr in zip(pts.thresholds, pts.tpr, pts.fpr):
        assert tpr == pytest.approx(np.mean(a[y == 1] >= t))
        assert fpr == pytest.approx(np.mean(a[y == 0] >= t))
    assert np.trapezoid(pts.tpr, pts.fpr) == pytest.approx(ref["auc_a"], abs=1e-12)
    assert not pts.tpr.flags.writeable


# ---------------------------------------------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_delong_ci_matches_proc(name):
    y, a, b = FIXTURES[name]()
    ref = PROC_REFERENCE[name]
    ci = stats.delong_ci(y, a)
    assert ci.auc == pytest.approx(ref["auc_a"], abs=1e-12)
    assert (ci.lower, ci.upper) == pytest.approx(ref["ci_a_95"], abs=1e-9)
    assert ci.se == pytest.approx((ci.upper - ci.lower) / (2 * scipy.stats.norm.ppf(0.975)), rel=1e-9)
    ci90 = stats.delong_ci(y, b, level=0.90)
    assert (ci90.lower, ci90.upper) == pytest.approx(ref["ci_b_90"], abs=1e-9)
    assert ci90.level == 0.90


@pytest.mark.parametrize("name", FIXTURES)
def test_delong_test_matches_proc_paired(name):
    y, a, b = FIXTURES[name]()
    ref = PROC_REFERENCE[name]
    res = stats.delong_test(y, a, b)
    assert res.auc_a == pytest.approx(ref["auc_a"], abs=1e-12)
    assert res.auc_b == pytest.approx(ref["auc_b"], abs=1e-12)
    assert res.difference == pytest.approx(ref["auc_a"] - ref["auc_b"], abs=1e-12)
    assert res.z == pytest.approx(ref["z"], rel=1e-9)
    assert res.p_value == pytest.approx(ref["p"], rel=1e-6, abs=1e-12)
    assert (res.ci_lower, res.ci_upper) == pytest.approx(ref["diff_ci_95"], abs=1e-9)
    assert res.se == pytest.approx(res.difference / res.z, rel=1e-12)


def test_delong_correlated_fixture_is_strongly_correlated():
    y, a, b = _fixture_correlated()
    res = stats.delong_test(y, a, b)
    assert res.correlation > 0.95
    # the same AUC difference would be far from significant if the curves were treated as independent
    se_independent = math.hypot(stats.delong_ci(y, a).se, stats.delong_ci(y, b).se)
    assert se_independent > 5 * res.se


def _delong_by_definition(y, scores):
    """O(n^2) DeLong placements straight from DeLong et al. (1988), for cross-checking the fast algorithm."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


def test_fast_delong_equals_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 70)
    scores = np.vstack([rng.integers(0, 6, 70) + y, rng.normal(size=70) + 0.5 * y]).astype(float)
    aucs, cov = _delong_by_definition(y, scores)
    res = stats.delong_test(y, scores[0], scores[1])
    assert (res.auc_a, res.auc_b) == pytest.approx(tuple(aucs), abs=1e-12)
    assert res.se == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), rel=1e-10)


def test_delong_test_symmetry_and_identical_scores():
    y, a, b = _fixture_ties()
    ab, ba = stats.delong_test(y, a, b), stats.delong_test(y, b, a)
    assert ab.z == pytest.approx(-ba.z) and ab.p_value == pytest.approx(ba.p_value)
    same = stats.delong_test(y, a, 2 * a + 1)  # same ranking -> same ROC curve
    assert (same.difference, same.se, same.z, same.p_value) == (0.0, 0.0, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Binormal ML fit
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BINORMAL_REFERENCE)
def test_binormal_fit_matches_ordinal_clm(name):
    if name == "hanley_mcneil":
        y, s = _hanley_mcneil()
    else:
        y, s, _ = _fixture_ties()
    ref = BINORMAL_REFERENCE[name]
    fit = stats.binormal_fit(y, s)
    assert fit.converged
    assert fit.n_categories == np.unique(s).size
    for key in ("a", "b", "auc", "log_likelihood"):
        assert getattr(fit, key) == pytest.approx(ref[key], rel=1e-6), key
    for key in ("se_a", "se_b", "se_auc"):
        assert getattr(fit, key) == pytest.approx(ref[key], rel=1e-4), key


def test_binormal_fit_hanley_mcneil_classic_rocfit_values():
    # the published ROCFIT estimates for this table: a = 1.657, b = 0.713, Az = 0.911
    fit = stats.binormal_fit(*_hanley_mcneil())
    assert (round(fit.a, 3), round(fit.b, 3), round(fit.auc, 3)) == (1.657, 0.713, 0.911)


def test_binormal_fit_recovers_simulated_model():
    a_true, b_true, n = 1.2, 0.8, 2000
    auc_true = scipy.stats.norm.cdf(a_true / math.sqrt(1 + b_true**2))
    rng = np.random.default_rng(20160701)
    neg = rng.normal(0.0, 1.0, n)
    pos = rng.normal(a_true / b_true, 1.0 / b_true, n)
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    s = np.r_[neg, pos]
    fit = stats.binormal_fit(y, s)
    assert fit.converged and fit.n_categories == 20
    assert abs(fit.a - a_true) < min(0.1, 3 * fit.se_a)
    assert abs(fit.b - b_true) < min(0.075, 3 * fit.se_b)
    assert abs(fit.auc - auc_true) < min(0.015, 3 * fit.se_auc)
    assert abs(fit.auc - stats.auc(y, s)) < 0.01
    assert 0.004 < fit.se_auc < 0.01  # sqrt(Var) of the binormal AUC at n = 2000/2000 is about 0.0065
    fpr, tpr = fit.curve(n=200)
    assert fpr.shape == tpr.shape == (200,)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    np.testing.assert_allclose(tpr, scipy.stats.norm.cdf(fit.a + fit.b * scipy.stats.norm.ppf(fpr)), atol=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(fit.auc, abs=2e-3)


def test_binormal_fit_rejects_separated_and_constant_scores():
    with pytest.raises(ValueError, match="perfectly separated"):
        stats.binormal_fit([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="constant score"):
        stats.binormal_fit([0, 0, 1, 1], [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="n_categories"):
        stats.binormal_fit([0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0], n_categories=1)


# ---------------------------------------------------------------------------------------------------------------
# Fold summaries and fold-wise tests
# ---------------------------------------------------------------------------------------------------------------


def test_fold_auc_summary_by_hand():
    # deviations from 0.84: -0.04, 0, 0.02, -0.02, 0.04 -> sum of squares 0.004 -> var 0.001 (ddof=1)
    res = stats.fold_auc_summary([0.80, 0.84, 0.86, 0.82, 0.88])
    assert res.mean == pytest.approx(0.84, abs=1e-15)
    assert res.sd == pytest.approx(math.sqrt(0.001), rel=1e-12)
    assert res.se == pytest.approx(math.sqrt(0.001 / 5), rel=1e-12)
    assert res.n_folds == 5
    np.testing.assert_array_equal(res.aucs, [0.80, 0.84, 0.86, 0.82, 0.88])


def _t4_two_sided_p(t: float) -> float:
    """Two-sided p of Student's t with 4 df, from its closed-form CDF."""
    x = t * t
    cdf = 0.5 + 0.375 * (t / math.sqrt(1 + x / 4)) * (1 - x / (12 * (1 + x / 4)))
    return 2 * (1 - cdf)


def test_paired_t_test_by_hand():
    a = np.array([0.85, 0.88, 0.84, 0.87, 0.86])
    b = a - np.array([0.02, 0.05, 0.01, 0.04, 0.03])  # mean 0.03, var (ddof=1) 0.00025
    res = stats.paired_t_test(a, b)
    assert res.mean_difference == pytest.approx(0.03, abs=1e-12)
    assert res.se == pytest.approx(math.sqrt(0.00025 / 5), rel=1e-9)
    assert res.t == pytest.approx(3 * math.sqrt(2), rel=1e-9)
    assert res.df == 4
    assert res.p_value == pytest.approx(_t4_two_sided_p(3 * math.sqrt(2)), rel=1e-9)


def test_corrected_resampled_t_test_by_hand():
    # var = (1/5 + 120/480) * 0.00025 = 0.0001125 -> t = 0.03 / sqrt(0.0001125) = 2 sqrt(2)
    res = stats.corrected_resampled_t_test([0.02, 0.05, 0.01, 0.04, 0.03], n_train=480, n_test=120)
    assert res.se == pytest.approx(math.sqrt(0.0001125), rel=1e-9)
    assert res.t == pytest.approx(2 * math.sqrt(2), rel=1e-9)
    assert res.df == 4
    assert res.p_value == pytest.approx(_t4_two_sided_p(2 * math.sqrt(2)), rel=1e-9)
    plain = stats.paired_t_test([0.02, 0.05, 0.01, 0.04, 0.03], [0, 0, 0, 0, 0])
    assert res.p_value > plain.p_value


def test_t_tests_with_zero_variance():
    res = stats.paired_t_test([0.8, 0.9], [0.8, 0.9])
    assert (res.t, res.p_value) == (0.0, 1.0)
    res = stats.corrected_resampled_t_test([0.1, 0.1, 0.1], n_train=2, n_test=1)
    assert res.t == math.inf and res.p_value == 0.0


def test_bonferroni_by_hand():
    res = stats.bonferroni([0.01, 0.02, 0.3, 0.04])
    np.testing.assert_allclose(res.p_adjusted, [0.04, 0.08, 1.0, 0.16], rtol=1e-12)
    np.testing.assert_array_equal(res.reject, [True, False, False, False])
    assert res.n_tests == 4 and res.alpha == 0.05
    np.testing.assert_array_equal(stats.bonferroni([0.01, 0.02, 0.3, 0.04], alpha=0.1).reject, [1, 1, 0, 0])


# ---------------------------------------------------------------------------------------------------------------
# Lesion-level: bootstrap and aggregation
# ---------------------------------------------------------------------------------------------------------------


def _simulate_lesions(seed: int, n_lesions: int = 120, tau: float = 1.0, sigma: float = 0.5, delta: float = 1.0):
    """ROIs of lesions sharing a lesion effect N(delta * y, tau^2) plus ROI noise N(0, sigma^2)."""
    rng = np.random.default_rng(seed)
    label = np.r_[np.zeros(n_lesions), np.ones(n_lesions)].astype(int)
    n_rois = rng.integers(1, 5, size=2 * n_lesions)
    effect = rng.normal(delta * label, tau)
    groups = np.repeat(np.arange(2 * n_lesions), n_rois)
    scores = effect[groups] + rng.normal(0.0, sigma, groups.size)
    true_auc = scipy.stats.norm.cdf(delta / math.sqrt(2 * (tau**2 + sigma**2)))
    return label[groups], scores, groups, true_auc


def test_weighted_auc_equals_auc_of_the_resampled_data():
    y, s, _ = _fixture_ties()
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 3, size=(4, y.size)).astype(float)
    got = stats._weighted_aucs(y, s, weights)
    for w, value in zip(weights, got):
        idx = np.repeat(np.arange(y.size), w.astype(int))
        assert value == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_clustered_bootstrap_is_deterministic_and_covers_truth():
    y, s, g, true_auc = _simulate_lesions(seed=7)
    ci = stats.clustered_bootstrap_auc_ci(y, s, g, seed=42)
    assert ci == stats.clustered_bootstrap_auc_ci(y, s, g, seed=42)
    assert ci != stats.clustered_bootstrap_auc_ci(y, s, g, seed=43)
    assert ci.auc == pytest.approx(stats.auc(y, s))
    assert ci.lower < true_auc < ci.upper
    assert ci.lower < ci.auc < ci.upper
    assert (ci.n_boot, ci.n_used, ci.n_clusters, ci.level) == (2000, 2000, 240, 0.95)
    # ignoring the clustering (every ROI its own cluster) understates the uncertainty
    naive = stats.clustered_bootstrap_auc_ci(y, s, np.arange(y.size), seed=42)
    assert naive.upper - naive.lower < 0.85 * (ci.upper - ci.lower)
    pooled = stats.clustered_bootstrap_auc_ci(y, s, g.astype(str), seed=42, stratified=False, n_boot=500)
    assert pooled.lower < true_auc < pooled.upper


def test_clustered_bootstrap_stratified_needs_one_label_per_lesion():
    with pytest.raises(ValueError, match="one label per lesion"):
        stats.clustered_bootstrap_auc_ci([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.3], [1, 1, 2, 3], seed=0)
    res = stats.clustered_bootstrap_auc_ci(
        [0, 1, 0, 1, 0, 1], [0.1, 0.9, 0.2, 0.3, 0.5, 0.6], [1, 1, 2, 2, 3, 3], seed=0, stratified=False, n_boot=200
    )
    assert 0 <= res.lower <= res.upper <= 1


def test_lesion_level_scores():
    res = stats.lesion_level_scores(
        scores=[0.2, 0.4, 0.9, 0.5, 0.7, 0.3], groups=["L2", "L2", "L1", "L3", "L1", "L3"], labels=[0, 0, 1, 0, 1, 0]
    )
    np.testing.assert_array_equal(res.groups, ["L1", "L2", "L3"])
    np.testing.assert_allclose(res.scores, [0.8, 0.3, 0.4])
    np.testing.assert_array_equal(res.labels, [1, 0, 0])
    np.testing.assert_array_equal(res.n_rois, [2, 2, 2])
    with pytest.raises(ValueError, match=r"same label.*L2"):
        stats.lesion_level_scores([0.2, 0.4, 0.9], ["L2", "L2", "L1"], [0, 1, 1])


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------

_Y = [0, 1, 0, 1, 0, 1]
_S = [0.1, 0.8, 0.3, 0.6, 0.5, 0.4]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.auc([1, 1, 1], [0.1, 0.2, 0.3]), r"both classes.*all labelled 1"),
        (lambda: stats.auc([0, 1, 2], [0.1, 0.2, 0.3]), r"only 0 \(benign\) and 1 \(malignant\); received values \[2"),
        (lambda: stats.auc(["a", "b", "a"], [0.1, 0.2, 0.3]), r"only 0 \(benign\) and 1"),
        (lambda: stats.auc(_Y, _S[:-1]), r"same length.*y_true has 6, scores has 5"),
        (lambda: stats.auc(_Y, [0.1, np.nan, 0.3, 0.6, 0.5, 0.4]), r"finite.*1 NaN/inf.*index 1"),
        (lambda: stats.auc([[0, 1]], [[0.1, 0.2]]), r"1-D"),
        (lambda: stats.roc_points([0, 0], [0.1, 0.2]), r"both classes"),
        (lambda: stats.delong_ci(_Y, _S, level=95), r"level must be in \(0, 1\)"),
        (lambda: stats.delong_ci([0, 1, 1], [0.1, 0.2, 0.3]), r"at least 2 cases of each class"),
        (lambda: stats.delong_test(_Y, _S, _S[:-1]), r"scores_a has 6, scores_b has 5"),
        (lambda: stats.delong_test(_Y, _S, [np.inf] * 6), r"scores_b must contain only finite"),
        (lambda: stats.binormal_fit(_Y, [np.nan] * 6), r"finite"),
        (lambda: stats.fold_auc_summary([0.8]), r"at least 2"),
        (lambda: stats.fold_auc_summary([0.8, 1.2]), r"\[0, 1\]"),
        (lambda: stats.fold_auc_summary([0.8, np.nan]), r"finite"),
        (lambda: stats.paired_t_test([0.8, 0.9, 0.7], [0.8, 0.9]), r"same length"),
        (lambda: stats.corrected_resampled_t_test([0.1, 0.2], n_train=0, n_test=5), r"n_train must be a positive"),
        (lambda: stats.bonferroni([0.01, 1.5]), r"\[0, 1\]"),
        (lambda: stats.bonferroni([]), r"at least 1"),
        (lambda: stats.clustered_bootstrap_auc_ci(_Y, _S, [1, 2, 3], seed=0), r"groups has 3"),
        (lambda: stats.clustered_bootstrap_auc_ci(_Y, _S, range(6), seed=0, n_boot=10), r"n_boot must be"),
        (lambda: stats.clustered_bootstrap_auc_ci(_Y, _S, [1.0, np.nan, 2, 3, 4, 5], seed=0), r"NaN"),
        (lambda: stats.clustered_bootstrap_auc_ci(_Y, _S, range(6), seed=None), r"seed must be an integer"),
        (lambda: stats.lesion_level_scores(_S, range(6), [0, 1, 3, 1, 0, 1]), r"labels:? must contain only 0"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ issue 24: tests a reader can trust ---
def _floored_folds() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five folds of 12 cases; SVM1's scores are one constant per fold in folds 0-2 (a Platt slope at its floor),
    at a level that rises with the fold's share of malignant cases, and informative in folds 3-4; SVM2 ranks
    moderately well everywhere."""
    rng = np.random.default_rng(7)
    malignant_per_fold = [2, 4, 6, 3, 4]
    y = np.concatenate([[1] * m + [0] * (12 - m) for m in malignant_per_fold])
    folds = np.repeat(np.arange(5), 12)
    a = np.empty(y.size)
    for k, m in enumerate(malignant_per_fold):
        inside = folds == k
        a[inside] = 0.05 * m if k < 3 else 0.2 + 0.1 * y[inside] + rng.normal(0, 0.1, inside.sum())
    b = 0.3 + 0.15 * y + rng.normal(0, 0.1, y.size)
    return y, folds, a, b


def test_within_fold_ranks_put_a_constant_fold_at_one_half_and_ignore_its_level():
    y, folds, a, _b = _floored_folds()
    ranks = stats.within_fold_ranks(a, folds)
    assert np.all(ranks[folds < 3] == 0.5)
    inside = folds == 3
    expected = (scipy.stats.rankdata(a[inside]) - 0.5) / inside.sum()
    np.testing.assert_allclose(ranks[inside], expected, rtol=0, atol=0)
    # the pooled AUC of the raw scores rises with the fold levels; that of the ranks does not move with them
    shifted = np.where(folds < 3, a * 10, a)
    assert stats.auc(y, a) != stats.auc(y, shifted)
    assert stats.auc(y, stats.within_fold_ranks(a, folds)) == stats.auc(y, stats.within_fold_ranks(shifted, folds))


def test_floored_platt_folds_inflate_the_pooled_auc_and_the_headline_test_is_fold_level():
    """Folds built with SVM1's probabilities constant at fold-specific levels: pooling them inflates SVM1's AUC
    far above its mean fold AUC. The comparison's headline is the corrected t over the folds, the DeLong test shown
    runs on within-fold ranks, and the pooled-probability DeLong never appears in the table."""
    from cadx.records import LevelResults
    from cadx.svm import fold_auc
    from cadx.workflows.experiments import compare_methods, method_statistics
    from cadx.workflows.results import comparison_table

    y, folds, a, b = _floored_folds()
    lesions = np.arange(y.size)
    fa, fb = fold_auc(a, y, folds), fold_auc(b, y, folds)
    assert np.all(fa[:3] == 0.5)  # constant folds: no ranking inside them
    assert stats.auc(y, a) > float(np.mean(fa)) + 0.1  # the artefact: pooled levels, not a ranking
    methods = {key: method_statistics(key, s, None, y, lesions, 0, 0.0, fold_aucs=f)
               for key, s, f in (("A", a, fa), ("B", b, fb))}
    (row,) = compare_methods(methods, {"A": a, "B": b}, y, folds, 5, lesions=lesions, pairs=[("A", "B")])
    assert row.auc_difference == pytest.approx(stats.auc(y, a) - stats.auc(y, b))  # recorded as before
    assert row.fold_mean_auc_difference == pytest.approx(float(np.mean(fa - fb)))
    ranked = stats.delong_test(y, stats.within_fold_ranks(a, folds), stats.within_fold_ranks(b, folds))
    assert row.rank_delong_p == pytest.approx(ranked.p_value) and row.rank_delong_p != row.delong_p
    table = comparison_table(LevelResults(level="roi", n_cases=y.size, n_positive=int(y.sum()), methods=methods,
                                          comparisons=[row]))
    shown = table.iloc[0]
    assert shown["headline test"] == "Nadeau-Bengio corrected t, 1 seed × 5 folds"
    assert shown["headline p"] == row.repeated_nb_p == row.nadeau_bengio_p  # one seed: the same test
    assert shown["AUCs subtracted"] == "AUC(SVM1 (CNN)) − AUC(SVM2 (analytic))"
    assert shown["ΔAUC (mean of fold AUCs)"] == pytest.approx(float(np.mean(fa - fb)))
    assert row.delong_p not in shown.tolist() and row.auc_difference not in shown.tolist()
    assert not any("pooled" in c.lower() and "delong" in c.lower() for c in table.columns)


def test_repeated_corrected_t_over_seeds_and_folds_matches_a_hand_computation():
    """Bouckaert & Frank's corrected repeated k-fold t over 3 seeds × 5 folds, by hand with scipy.stats.t."""
    from cadx.workflows.experiments import compare_methods

    rng = np.random.default_rng(3)
    n_seeds, k = 3, 5
    lesions = np.arange(50)
    y = np.tile([0, 1], 25)
    folds_by_seed = [rng.permutation(np.repeat(np.arange(k), 10)) for _ in range(n_seeds)]
    auc_a = [list(0.6 + 0.1 * rng.random(k)) for _ in range(n_seeds)]
    auc_b = [list(0.55 + 0.1 * rng.random(k)) for _ in range(n_seeds)]
    scores = {"A": rng.random(50), "B": rng.random(50)}
    methods = {"A": {"fold_aucs": auc_a[0]}, "B": {"fold_aucs": auc_b[0]}}
    (row,) = compare_methods(methods, scores, y, folds_by_seed[0], k, lesions=lesions, pairs=[("A", "B")],
                             fold_aucs_by_seed={"A": auc_a, "B": auc_b}, folds_by_seed=folds_by_seed)
    d = (np.array(auc_a) - np.array(auc_b)).ravel()
    j = d.size
    n_test, n_train = 10.0, 40.0  # lesions per test / training fold
    t = d.mean() / math.sqrt((1 / j + n_test / n_train) * d.var(ddof=1))
    p = 2 * scipy.stats.t.sf(abs(t), df=j - 1)
    assert row.repeated_nb_n_seeds == 3 and row.repeated_nb_n_folds == 15 and row.repeated_nb_df == 14
    assert row.repeated_nb_mean_difference == pytest.approx(d.mean(), rel=1e-12)
    assert row.repeated_nb_t == pytest.approx(t, rel=1e-12)
    assert row.repeated_nb_p == pytest.approx(p, rel=1e-12)
    first = np.array(auc_a[0]) - np.array(auc_b[0])  # the first seed's own test is kept beside it
    t1 = first.mean() / math.sqrt((1 / k + 1 / 4) * first.var(ddof=1))
    assert row.nadeau_bengio_p == pytest.approx(2 * scipy.stats.t.sf(abs(t1), df=k - 1), rel=1e-12)
