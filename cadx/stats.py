"""ROC statistics for CADx evaluation, as in Huynh, Li & Giger (2016).

The paper reports, per classifier, the AUC averaged over the five cross-validation folds (by lesion), its standard
deviation over folds (``AUC.SD``) and standard error (SD / sqrt(k)); it compares classifiers with fold-wise
performance-comparison t-tests (Hothorn et al. 2005) with Bonferroni correction, and draws fitted binormal ROC
curves. This module provides those, plus the usual companions:

* :func:`fold_auc_summary` - mean, SD (ddof=1) and SE of per-fold AUCs.
* :func:`auc`, :func:`roc_points` - empirical (Mann-Whitney) AUC and ROC points.
* :func:`delong_ci`, :func:`delong_test` - DeLong et al. (1988) CI of one AUC and test of two correlated AUCs
  (same cases), via the fast algorithm of Sun & Xu (2014); numerically equal to R's pROC
  ``ci.auc(method="delong")`` and ``roc.test(method="delong", paired=TRUE)``.
* :func:`binormal_fit` - maximum-likelihood binormal ROC curve (Dorfman & Alf 1969; Metz's ROCFIT).
* :func:`paired_t_test`, :func:`corrected_resampled_t_test` - fold-wise paired t-test and the Nadeau & Bengio
  (2003) variance-corrected resampled t-test.
* :func:`bonferroni` - Bonferroni-adjusted p-values.
* :func:`clustered_bootstrap_auc_ci` - percentile bootstrap CI of the ROI-level AUC resampling whole lesions.
* :func:`lesion_level_scores` - one score (the mean of its ROIs' scores) and label per lesion.

Conventions: labels are 0 (benign, "control") and 1 (malignant, "case"); a higher score means more likely
malignant (pROC's ``direction = "<"``). Every function validates its inputs first and raises ``ValueError``
saying what it received and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.stats
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve

from cadx.labels import label_codes

__all__ = [
    "AucSummary",
    "BinormalFit",
    "BonferroniResult",
    "BootstrapAucCI",
    "DelongCI",
    "DelongTest",
    "LesionScores",
    "RocPoints",
    "TTestResult",
    "auc",
    "binormal_fit",
    "bonferroni",
    "clustered_bootstrap_auc_ci",
    "corrected_resampled_t_test",
    "cv_unit_sizes",
    "delong_ci",
    "delong_test",
    "fold_auc_summary",
    "fold_mean_interval",
    "lesion_level_scores",
    "paired_t_test",
    "roc_points",
    "within_fold_ranks",
]


# --------------------------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AucSummary:
    """Per-fold AUCs summarised as in the paper's Table 1 and Fig. 3.

    Attributes
    ----------
    mean : float
        Mean of the fold AUCs ("AUC").
    sd : float
        Sample standard deviation of the fold AUCs, ddof=1 ("AUC.SD").
    se : float
        Standard error ``sd / sqrt(n_folds)`` (the paper's error bars).
    n_folds : int
        Number of folds k.
    aucs : ndarray, shape (n_folds,)
        The fold AUCs, read-only.
    """

    mean: float
    sd: float
    se: float
    n_folds: int
    aucs: np.ndarray


@dataclass(frozen=True, eq=False)
class RocPoints:
    """Empirical ROC operating points, one per distinct score plus the origin.

    Attributes
    ----------
    fpr : ndarray, shape (n_points,)
        False-positive fractions (1 - specificity), non-decreasing from 0 to 1.
    tpr : ndarray, shape (n_points,)
        True-positive fractions (sensitivity), non-decreasing from 0 to 1.
    thresholds : ndarray, shape (n_points,)
        Decreasing thresholds: a case is called positive when ``score >= threshold``; the first is ``inf``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class DelongCI:
    """DeLong confidence interval of one AUC (pROC ``ci.auc(method="delong")``).

    Attributes
    ----------
    auc : float
        Empirical AUC.
    lower, upper : float
        Normal-theory limits ``auc -/+ z * se``, clipped to [0, 1].
    se : float
        DeLong standard error of the AUC.
    level : float
        Confidence level, e.g. 0.95.
    """

    auc: float
    lower: float
    upper: float
    se: float
    level: float


@dataclass(frozen=True)
class DelongTest:
    """DeLong test of two correlated AUCs (pROC ``roc.test(method="delong", paired=TRUE)``).

    Attributes
    ----------
    auc_a, auc_b : float
        Empirical AUCs of the two score sets.
    difference : float
        ``auc_a - auc_b``.
    se : float
        DeLong standard error of the difference (accounts for the correlation of the two AUCs).
    z : float
        ``difference / se`` (0 when both are 0).
    p_value : float
        Two-sided p-value ``2 * Phi(-|z|)``.
    ci_lower, ci_upper : float
        Normal-theory confidence interval of the difference at ``level``.
    level : float
        Confidence level of the interval.
    correlation : float
        Estimated correlation between the two AUC estimates (nan when a variance is 0).
    """

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    ci_lower: float
    ci_upper: float
    level: float
    correlation: float


@dataclass(frozen=True, eq=False)
class BinormalFit:
    """Maximum-likelihood binormal ROC model.

    Parametrisation: the latent decision variable is N(0, 1) for negatives and N(a/b, 1/b**2) for positives, so
    with threshold ``c`` (positive when latent > c)::

        fpr(c) = Phi(-c),    tpr(c) = Phi(a - b * c),    i.e.  tpr = Phi(a + b * Phi^-1(fpr)),
        AUC = Phi(a / sqrt(1 + b**2)).

    Attributes
    ----------
    a, b : float
        Binormal intercept and slope (b > 0).
    auc : float
        Area under the fitted curve.
    se_a, se_b, se_auc : float
        Standard errors from the inverse observed information at the MLE (delta method for the AUC); nan when
        the information matrix is singular or not positive definite.
    thresholds : ndarray, shape (n_categories - 1,)
        Fitted category boundaries on the negatives' N(0, 1) latent scale, increasing.
    n_categories : int
        Number of ordered categories the scores were reduced to.
    log_likelihood : float
        Maximised log-likelihood.
    converged : bool
        Whether the optimiser reported convergence.
    """

    a: float
    b: float
    auc: float
    se_a: float
    se_b: float
    se_auc: float
    thresholds: np.ndarray
    n_categories: int
    log_likelihood: float
    converged: bool

    def curve(self, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """Points of the fitted ROC curve.

        Parameters
        ----------
        n : int, default 200
            Number of points (>= 3). They run from (0, 0) to (1, 1) and are evenly spaced in the latent
            threshold ``c`` over [-6, 6] (dense where the curve bends), plus the two end points.

        Returns
        -------
        fpr, tpr : ndarray, shape (n,)
            ``fpr = Phi(-c)``, ``tpr = Phi(a - b * c)``, both non-decreasing.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
            raise ValueError(f"n must be an integer >= 3; received {n!r}")
        c = np.linspace(6.0, -6.0, int(n) - 2)
        fpr = np.concatenate([[0.0], scipy.stats.norm.cdf(-c), [1.0]])
        tpr = np.concatenate([[0.0], scipy.stats.norm.cdf(self.a - self.b * c), [1.0]])
        return fpr, tpr


@dataclass(frozen=True)
class TTestResult:
    """Result of a (possibly variance-corrected) paired t-test on per-fold differences.

    Attributes
    ----------
    mean_difference : float
        Mean of the differences (a - b).
    se : float
        Standard error used in the t statistic.
    t : float
        ``mean_difference / se``; when all differences are equal (se = 0): 0 if they are 0, else +/-inf.
    df : int
        Degrees of freedom, k - 1.
    p_value : float
        Two-sided p-value from Student's t with ``df`` degrees of freedom.
    """

    mean_difference: float
    se: float
    t: float
    df: int
    p_value: float


@dataclass(frozen=True, eq=False)
class BonferroniResult:
    """Bonferroni-adjusted p-values.

    Attributes
    ----------
    p_adjusted : ndarray, shape (m,)
        ``min(1, p * m)``.
    reject : ndarray of bool, shape (m,)
        ``p_adjusted <= alpha``.
    alpha : float
        Family-wise significance level.
    n_tests : int
        Number of tests m.
    """

    p_adjusted: np.ndarray
    reject: np.ndarray
    alpha: float
    n_tests: int


@dataclass(frozen=True)
class BootstrapAucCI:
    """Cluster (lesion) bootstrap percentile CI of the ROI-level AUC.

    Attributes
    ----------
    auc : float
        Empirical AUC on the original data.
    lower, upper : float
        Percentile limits of the bootstrap AUCs at ``level``.
    se : float
        Standard deviation of the bootstrap AUCs (ddof=1).
    level : float
        Confidence level.
    n_boot : int
        Replicates requested.
    n_used : int
        Replicates used (non-stratified replicates that drew a single class are skipped).
    n_clusters : int
        Number of clusters (lesions).
    """

    auc: float
    lower: float
    upper: float
    se: float
    level: float
    n_boot: int
    n_used: int
    n_clusters: int


@dataclass(frozen=True, eq=False)
class LesionScores:
    """One score and label per lesion.

    Attributes
    ----------
    groups : ndarray, shape (n_lesions,)
        Lesion identifiers, sorted (``np.unique`` order).
    scores : ndarray, shape (n_lesions,)
        Mean of each lesion's ROI scores.
    labels : ndarray of int, shape (n_lesions,)
        Each lesion's label (0 benign, 1 malignant).
    n_rois : ndarray of int, shape (n_lesions,)
        Number of ROIs per lesion.
    """

    groups: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    n_rois: np.ndarray = field(repr=False)


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.setflags(write=False)
    return x


def _summarise(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _as_1d_float(x: ArrayLike, name: str, *, min_len: int = 1) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers; received {type(x).__name__} ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; received an array of shape {arr.shape}")
    if arr.size < min_len:
        raise ValueError(f"{name} must have at least {min_len} value(s); received {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must contain only finite numbers; received {int(bad.sum())} NaN/inf value(s), "
            f"first at index {int(np.flatnonzero(bad)[0])}"
        )
    return arr


def _as_labels(y: ArrayLike, name: str = "y_true", *, both_classes: bool = True) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; received an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    labels = label_codes(arr, name=name)  # the one label codec: 0/1 or benign/malignant
    if both_classes:
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            raise ValueError(
                f"{name} must contain both classes (0 and 1) to compute an ROC/AUC; received {labels.size} "
                f"case(s), all labelled {int(labels[0])}"
            )
    return labels


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have the same length (one value per case); received {shown}")


def _as_level(level: float, name: str = "level") -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1); received {level!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), e.g. 0.95; received {level!r}")
    return value


def _as_groups(groups: ArrayLike, name: str = "groups") -> np.ndarray:
    arr = np.asarray(groups)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one lesion id per ROI); received an array of shape {arr.shape}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} must not contain NaN; received {int(np.isnan(arr).sum())} NaN id(s)")
    if arr.dtype.kind == "O" and any(g is None for g in arr):
        raise ValueError(f"{name} must not contain None")
    return arr


def _cluster_index(groups: np.ndarray, name: str = "groups") -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and, per element, the index of its id."""
    try:
        ids, index = np.unique(groups, return_inverse=True)
    except TypeError as exc:
        raise ValueError(f"{name} must be sortable ids of one type (all ints or all strings); {exc}") from None
    return ids, index.reshape(-1)


def _binary_scores(y_true: ArrayLike, scores: ArrayLike, scores_name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    s = _as_1d_float(scores, scores_name)
    _check_same_length(y_true=y, **{scores_name: s})
    return y, s


# --------------------------------------------------------------------------------------------------------------
# Fold summary, empirical ROC
# --------------------------------------------------------------------------------------------------------------


def fold_auc_summary(fold_aucs: ArrayLike) -> AucSummary:
    """Mean, SD and SE of per-fold AUCs (the paper's AUC, AUC.SD and error bars).

    Parameters
    ----------
    fold_aucs : array_like, shape (k,)
        One AUC per cross-validation fold, k >= 2, each in [0, 1].

    Returns
    -------
    AucSummary
        ``mean``, ``sd`` (ddof=1), ``se = sd / sqrt(k)``, ``n_folds``, ``aucs``.
    """
    aucs = _as_1d_float(fold_aucs, "fold_aucs", min_len=2)
    if ((aucs < 0) | (aucs > 1)).any():
        raise ValueError(f"fold_aucs must lie in [0, 1]; received {_summarise(aucs[(aucs < 0) | (aucs > 1)])}")
    k = aucs.size
    sd = float(np.std(aucs, ddof=1))
    return AucSummary(mean=float(aucs.mean()), sd=sd, se=sd / math.sqrt(k), n_folds=k, aucs=_readonly(aucs))


def fold_mean_interval(fold_aucs: ArrayLike, *, level: float = 0.95) -> tuple[float, float]:
    """The interval of the paper's AUC (the mean of k fold AUCs): mean ± t(k − 1) · SE, SE = SD / √k.

    A t interval with k − 1 degrees of freedom, because SE is estimated from only k folds (with 5 folds the
    critical value is 2.78, not 1.96). Like the fold-wise paired t-test it treats the folds as independent, which
    they are not (they share training data): read it as a lower bound on the uncertainty.
    """
    summary = fold_auc_summary(fold_aucs)
    level = _as_level(level)
    if summary.n_folds < 2 or not math.isfinite(summary.se):
        return math.nan, math.nan
    half = float(scipy.stats.t.ppf(0.5 + level / 2, summary.n_folds - 1)) * summary.se
    return summary.mean - half, summary.mean + half


def roc_points(y_true: ArrayLike, scores: ArrayLike) -> RocPoints:
    """Empirical ROC curve with every operating point (none dropped).

    Equal, point for point, to pROC's ``coords(roc(y, s, direction = "<"), "all")`` read in reverse (pROC uses
    midpoints between distinct scores as thresholds; here the threshold is the score itself, ``score >= t``).

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0 (benign) / 1 (malignant), both present.
    scores : array_like, shape (n,)
        Finite scores, higher = more likely malignant.

    Returns
    -------
    RocPoints
        ``fpr``, ``tpr``, ``thresholds``, each shape (n_distinct_scores + 1,).
    """
    y, s = _binary_scores(y_true, scores)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return RocPoints(fpr=_readonly(fpr), tpr=_readonly(tpr), thresholds=_readonly(thresholds))


def auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Empirical AUC: the Mann-Whitney probability P(score_malignant > score_benign), ties counting 1/2.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0 (benign) / 1 (malignant), both present.
    scores : array_like, shape (n,)
        Finite scores, higher = more likely malignant.

    Returns
    -------
    float
        The AUC in [0, 1] (equals the trapezoidal area under :func:`roc_points`).
    """
    y, s = _binary_scores(y_true, scores)
    return float(roc_auc_score(y, s))


# --------------------------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------------------------


def _fast_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix, O(n log n).

    Hand-written: neither scipy nor scikit-learn implements DeLong's variance. Algorithm of Sun & Xu (2014),
    "Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
    characteristic curves", IEEE Signal Process. Lett. 21(11):1389-1393: the structural components (placements)
    of DeLong, DeLong & Clarke-Pearson (1988) come from mid-ranks within each class and in the pooled sample.

    Parameters
    ----------
    y : ndarray, shape (n,)
        0/1 labels, both present.
    scores : ndarray, shape (k, n)
        k score sets on the same cases.

    Returns
    -------
    aucs : ndarray, shape (k,)
    cov : ndarray, shape (k, k)
        ``S10 / m + S01 / n`` with sample covariances (ddof=1) of the placements, as pROC.
    """
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = scipy.stats.rankdata(pos, axis=1)
    ty = scipy.stats.rankdata(neg, axis=1)
    tz = scipy.stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n  # per case: fraction of controls below it (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per control: fraction of cases above it (ties 1/2)
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_ci(y_true: ArrayLike, scores: ArrayLike, *, level: float = 0.95) -> DelongCI:
    """DeLong confidence interval of an empirical AUC, as pROC ``ci.auc(method = "delong")``.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0 (benign) / 1 (malignant), at least two of each.
    scores : array_like, shape (n,)
        Finite scores, higher = more likely malignant.
    level : float, default 0.95
        Confidence level in (0, 1).

    Returns
    -------
    DelongCI
        ``auc``, ``lower``, ``upper`` (normal limits clipped to [0, 1]), ``se``, ``level``.
    """
    y, s = _binary_scores(y_true, scores)
    level = _as_level(level)
    _require_two_per_class(y)
    aucs, cov = _fast_delong(y, s[None, :])
    value, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    z = float(scipy.stats.norm.ppf(0.5 + level / 2))
    return DelongCI(
        auc=value, lower=max(0.0, value - z * se), upper=min(1.0, value + z * se), se=se, level=level
    )


def _require_two_per_class(y: np.ndarray) -> None:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos < 2 or n_neg < 2:
        raise ValueError(
            f"DeLong's variance needs at least 2 cases of each class; received {n_pos} malignant and {n_neg} benign"
        )


def delong_test(
    y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, *, level: float = 0.95
) -> DelongTest:
    """DeLong test for two correlated ROC curves (two score sets on the same cases).

    Same statistic as pROC ``roc.test(roc_a, roc_b, method = "delong", paired = TRUE)``:
    ``z = (AUC_a - AUC_b) / sqrt(V_a + V_b - 2 C_ab)``, two-sided ``p = 2 Phi(-|z|)``.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0 (benign) / 1 (malignant), at least two of each.
    scores_a, scores_b : array_like, shape (n,)
        Finite scores of the two classifiers on the same cases, higher = more likely malignant.
    level : float, default 0.95
        Confidence level of the interval for the difference.

    Returns
    -------
    DelongTest
        AUCs, difference, its SE, z, p-value, CI of the difference, correlation of the two AUC estimates.
    """
    y = _as_labels(y_true)
    a = _as_1d_float(scores_a, "scores_a")
    b = _as_1d_float(scores_b, "scores_b")
    _check_same_length(y_true=y, scores_a=a, scores_b=b)
    level = _as_level(level)
    _require_two_per_class(y)
    aucs, cov = _fast_delong(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
    else:  # identical rankings: pROC sets z = 0 when difference and SE are both 0
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    p = float(2 * scipy.stats.norm.sf(abs(z)))
    crit = float(scipy.stats.norm.ppf(0.5 + level / 2))
    denom = math.sqrt(cov[0, 0] * cov[1, 1])
    corr = float(cov[0, 1] / denom) if denom > 0 else math.nan
    return DelongTest(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=diff,
        se=se,
        z=float(z),
        p_value=p,
        ci_lower=diff - crit * se,
        ci_upper=diff + crit * se,
        level=level,
        correlation=corr,
    )


# --------------------------------------------------------------------------------------------------------------
# Binormal ML fit
# --------------------------------------------------------------------------------------------------------------

_PHI_FLOOR = 1e-300


def _categorise(scores: np.ndarray, n_categories: int) -> np.ndarray:
    """Ordered categories 0..K-1 of the scores: distinct values when few, else pooled quantile bins."""
    distinct = np.unique(scores)
    if distinct.size <= n_categories:
        return np.searchsorted(distinct, scores)
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, n_categories + 1)[1:-1]))
    cats = np.searchsorted(edges, scores, side="left")
    return np.unique(cats, return_inverse=True)[1]


def _interval_probs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Phi(hi) - Phi(lo), accurate in both tails."""
    norm = scipy.stats.norm
    p = np.where(lo > 0, norm.sf(lo) - norm.sf(hi), norm.cdf(hi) - norm.cdf(lo))
    return np.asarray(np.maximum(p, _PHI_FLOOR), dtype=np.float64)


def _binormal_parts(theta: np.ndarray, n_cat: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Category probabilities and their Jacobians w.r.t. theta = (a, b, t_1..t_{K-1}).

    Returns p0, p1 of shape (K,) and J0, J1 of shape (K, K + 1).
    """
    a, b, t = theta[0], theta[1], theta[2:]
    edges = np.concatenate([[-np.inf], t, [np.inf]])
    u = b * edges - a
    p0 = _interval_probs(edges[:-1], edges[1:])
    p1 = _interval_probs(u[:-1], u[1:])
    phi_t = scipy.stats.norm.pdf(edges)  # 0 at +/-inf
    phi_u = scipy.stats.norm.pdf(u)
    t_phi_u = np.where(np.isfinite(edges), np.nan_to_num(edges) * phi_u, 0.0)
    j0 = np.zeros((n_cat, n_cat + 1))
    j1 = np.zeros((n_cat, n_cat + 1))
    k = np.arange(n_cat)
    j1[:, 0] = -(phi_u[1:] - phi_u[:-1])
    j1[:, 1] = t_phi_u[1:] - t_phi_u[:-1]
    upper_idx = k[:-1]  # category k has upper edge t_{k+1} -> column 2 + k
    j0[upper_idx, 2 + upper_idx] = phi_t[1:-1]
    j1[upper_idx, 2 + upper_idx] = b * phi_u[1:-1]
    lower_idx = k[1:]  # category k has lower edge t_k -> column 2 + k - 1
    j0[lower_idx, 1 + lower_idx] = -phi_t[1:-1]
    j1[lower_idx, 1 + lower_idx] = -b * phi_u[1:-1]
    return p0, p1, j0, j1


def _loglik(theta: np.ndarray, n0: np.ndarray, n1: np.ndarray) -> tuple[float, np.ndarray]:
    """Binormal log-likelihood and its gradient w.r.t. theta = (a, b, t_1..t_{K-1}), shape (K + 1,)."""
    p0, p1, j0, j1 = _binormal_parts(theta, n0.size)
    return float(n0 @ np.log(p0) + n1 @ np.log(p1)), (n0 / p0) @ j0 + (n1 / p1) @ j1


def _observed_information(theta: np.ndarray, n0: np.ndarray, n1: np.ndarray) -> np.ndarray:
    """Minus the Hessian of the log-likelihood: central differences of the analytic gradient, symmetrised."""
    p = theta.size
    gaps = np.diff(theta[2:]) if p > 3 else np.array([1.0])
    h = min(1e-5, 0.25 * float(gaps.min()))
    hess = np.empty((p, p))
    for i in range(p):
        step = np.zeros(p)
        step[i] = h * max(1.0, abs(theta[i])) if i < 2 else h
        hess[:, i] = (_loglik(theta + step, n0, n1)[1] - _loglik(theta - step, n0, n1)[1]) / (2 * step[i])
    return -(hess + hess.T) / 2


def _theta_from_free(free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """theta = (a, b, t) from unconstrained (a, log b, t_1, log increments); also d theta / d free."""
    n = free.size
    b = math.exp(free[1])
    incr = np.exp(free[3:])
    t = free[2] + np.concatenate([[0.0], np.cumsum(incr)])
    theta = np.concatenate([[free[0], b], t])
    jac = np.zeros((n, n))
    jac[0, 0] = 1.0
    jac[1, 1] = b
    jac[2:, 2] = 1.0
    for j in range(3, n):  # t_i (column 2 + i) depends on increment j when j <= i + 2
        jac[j:, j] = incr[j - 3]
    return theta, jac


def binormal_fit(y_true: ArrayLike, scores: ArrayLike, *, n_categories: int | None = None) -> BinormalFit:
    """Maximum-likelihood binormal ROC fit (Dorfman & Alf 1969; Metz's ROCFIT / LABROC).

    Hand-written: no scipy/scikit-learn routine fits ordinal-categorical binormal ROC models. The scores are
    reduced to K ordered categories and the ordinal (threshold) model is fitted by maximum likelihood:
    negatives' latent variable ~ N(0, 1), positives' ~ N(a/b, 1/b**2), category k = (t_k, t_{k+1}] with
    t_0 = -inf < t_1 < ... < t_{K-1} < t_K = inf. The log-likelihood
    ``sum_k n0_k log P0_k + n1_k log P1_k`` is maximised with BFGS (analytic gradient) over an unconstrained
    reparametrisation (log b, log threshold increments); standard errors come from the inverse observed
    information at the MLE (numerical Hessian of the analytic gradient), with the delta method for
    AUC = Phi(a / sqrt(1 + b**2)). Estimates and SEs equal R's ``ordinal::clm(rating ~ y, scale = ~ y,
    link = "probit")``, the same model written as a heteroscedastic ordinal probit regression.

    Categorisation: if the scores have at most ``n_categories`` distinct values (default 20) each distinct value
    is a category (exact ROCFIT). Otherwise the pooled scores are cut at their empirical quantiles into
    ``n_categories`` roughly equally populated categories, as LABROC does for continuous data (LABROC4 cuts at
    the truth-state runs instead; Metz, Herman & Shen 1998, Stat. Med. 17:1033-1053). For smooth score
    distributions ~20 categories lose little information (see tests/test_stats.py, simulated recovery).

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0 (benign) / 1 (malignant), both present.
    scores : array_like, shape (n,)
        Finite scores or ratings, higher = more likely malignant.
    n_categories : int, optional
        Maximum number of categories, >= 2 (default 20).

    Returns
    -------
    BinormalFit
        ``a``, ``b``, ``auc``, their SEs, thresholds, ``log_likelihood``, ``converged``; ``.curve(n)`` gives points.

    Raises
    ------
    ValueError
        On bad inputs, when fewer than 2 categories remain, or when the classes are perfectly separated (the ML
        estimate does not exist).
    """
    y, s = _binary_scores(y_true, scores)
    if n_categories is None:
        n_categories = 20
    if isinstance(n_categories, bool) or not isinstance(n_categories, (int, np.integer)) or n_categories < 2:
        raise ValueError(f"n_categories must be an integer >= 2 or None; received {n_categories!r}")
    cats = _categorise(s, int(n_categories))
    n_cat = int(cats.max()) + 1
    if n_cat < 2:
        raise ValueError("binormal_fit needs at least 2 distinct score values; received a constant score")
    n0 = np.bincount(cats[y == 0], minlength=n_cat).astype(float)
    n1 = np.bincount(cats[y == 1], minlength=n_cat).astype(float)
    if cats[y == 0].max() < cats[y == 1].min():
        raise ValueError(
            "binormal_fit: the classes are perfectly separated (every malignant score above every benign one); "
            "the maximum-likelihood binormal fit does not exist (AUC = 1)"
        )

    # Starting values: thresholds from the negatives' cumulative proportions; a, b from the probit regression of
    # the positives' on the negatives' cumulative proportions (the classic ROC-space least-squares start).
    def probit_cum(counts: np.ndarray) -> np.ndarray:
        total = counts.sum()
        cum = np.cumsum(counts)[:-1] / total
        return np.asarray(scipy.stats.norm.ppf(np.clip(cum, 0.5 / total, 1 - 0.5 / total)), dtype=np.float64)

    t0 = np.maximum.accumulate(probit_cum(n0))
    t0 = t0 + 1e-3 * np.arange(t0.size)  # strictly increasing
    z1 = probit_cum(n1)
    b0, a0 = 1.0, float(-np.mean(z1 - t0))
    if np.ptp(t0) > 0:
        slope, intercept = np.polyfit(t0, z1, 1)
        if 0.2 < slope < 5:
            b0, a0 = float(slope), float(-intercept)
    free0 = np.concatenate([[a0, math.log(b0), t0[0]], np.log(np.diff(t0))])

    def neg_loglik(free: np.ndarray) -> tuple[float, np.ndarray]:
        theta, jac = _theta_from_free(free)
        ll, grad_theta = _loglik(theta, n0, n1)
        return -ll, -(grad_theta @ jac)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = scipy.optimize.minimize(
            neg_loglik, free0, jac=True, method="BFGS", options={"gtol": 1e-8, "maxiter": 5000}
        )
    theta, _ = _theta_from_free(res.x)
    a, b = float(theta[0]), float(theta[1])
    d = a / math.sqrt(1 + b * b)
    auc_value = float(scipy.stats.norm.cdf(d))
    se_a = se_b = se_auc = math.nan
    try:
        cov = np.linalg.inv(_observed_information(theta, n0, n1))
    except np.linalg.LinAlgError:
        cov = None
    if cov is not None and np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
        grad = np.zeros(theta.size)
        grad[0] = scipy.stats.norm.pdf(d) / math.sqrt(1 + b * b)
        grad[1] = -scipy.stats.norm.pdf(d) * a * b / (1 + b * b) ** 1.5
        se_a, se_b = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
        se_auc = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    # BFGS may stop with a precision-loss message at the optimum; judge convergence by the gradient instead.
    converged = bool(res.success or np.max(np.abs(res.jac)) < 1e-4 * max(1.0, float(n0.sum() + n1.sum())) ** 0.5)
    return BinormalFit(
        a=a,
        b=b,
        auc=auc_value,
        se_a=se_a,
        se_b=se_b,
        se_auc=se_auc,
        thresholds=_readonly(theta[2:]),
        n_categories=n_cat,
        log_likelihood=float(-res.fun),
        converged=converged,
    )


# --------------------------------------------------------------------------------------------------------------
# Fold-wise tests, multiple comparisons
# --------------------------------------------------------------------------------------------------------------


def _t_result(mean: float, se: float, df: int) -> TTestResult:
    if se > 0:
        t = mean / se
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = float(2 * scipy.stats.t.sf(abs(t), df))
    return TTestResult(mean_difference=mean, se=se, t=float(t), df=df, p_value=p)


def paired_t_test(fold_metric_a: ArrayLike, fold_metric_b: ArrayLike) -> TTestResult:
    """Fold-wise paired t-test of two classifiers' per-fold metrics (e.g. AUCs on the same CV folds).

    The paper's performance-comparison test (Hothorn, Leisch, Zeileis & Hornik 2005, "The design and analysis of
    benchmark experiments", J. Comput. Graph. Stat. 14:675-699). Uses ``scipy.stats.ttest_rel``. Note that
    fold results share training data, so this test is anti-conservative; see
    :func:`corrected_resampled_t_test`.

    Parameters
    ----------
    fold_metric_a, fold_metric_b : array_like, shape (k,)
        Metric of classifiers a and b on the same k >= 2 folds, in the same order.

    Returns
    -------
    TTestResult
        Mean difference (a - b), its SE ``sd / sqrt(k)``, t, df = k - 1, two-sided p-value.
    """
    a = _as_1d_float(fold_metric_a, "fold_metric_a", min_len=2)
    b = _as_1d_float(fold_metric_b, "fold_metric_b", min_len=2)
    _check_same_length(fold_metric_a=a, fold_metric_b=b)
    diffs = a - b
    k = diffs.size
    if np.ptp(diffs) == 0:  # constant differences: scipy would return nan with a warning
        return _t_result(float(diffs[0]), 0.0, k - 1)
    mean, se = float(diffs.mean()), float(np.std(diffs, ddof=1) / math.sqrt(k))
    res = scipy.stats.ttest_rel(a, b)
    return TTestResult(mean_difference=mean, se=se, t=float(res.statistic), df=k - 1, p_value=float(res.pvalue))


def corrected_resampled_t_test(diffs: ArrayLike, *, n_train: float, n_test: float) -> TTestResult:
    """Nadeau & Bengio (2003) corrected resampled t-test.

    Hand-written (not in scipy): the variance of the mean of J resampled differences is inflated to account for
    overlapping training sets, ``var = (1/J + n_test/n_train) * s**2``, with ``s**2`` the sample variance (ddof=1)
    of the differences; ``t = mean / sqrt(var)`` with J - 1 degrees of freedom. Nadeau & Bengio, "Inference for
    the generalization error", Machine Learning 52:239-281 (2003); for k-fold CV ``n_test / n_train = 1/(k-1)``
    (Bouckaert & Frank 2004). For r-times repeated k-fold cross-validation pass all J = r·k differences (every
    seed's folds): Bouckaert & Frank's corrected repeated k-fold test is this statistic with df = r·k - 1.

    Parameters
    ----------
    diffs : array_like, shape (J,)
        Per-resample (per-fold) differences of a metric between two classifiers, J >= 2.
    n_train, n_test : int or float
        Number of training and test units (lesions, not ROIs: see :func:`cv_unit_sizes`) per resample, both > 0;
        with folds of unequal size, their means over the folds.

    Returns
    -------
    TTestResult
        Mean difference, corrected SE, t, df = J - 1, two-sided p-value.
    """
    d = _as_1d_float(diffs, "diffs", min_len=2)
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating))
                or not np.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive number (of lesions); received {value!r}")
    j = d.size
    if np.ptp(d) == 0:  # constant differences (np.var would give rounding noise instead of 0)
        return _t_result(float(d[0]), 0.0, j - 1)
    var = (1.0 / j + n_test / n_train) * float(np.var(d, ddof=1))
    return _t_result(float(d.mean()), math.sqrt(var), j - 1)


def within_fold_ranks(scores: ArrayLike, folds: ArrayLike) -> np.ndarray:
    """Each score as its mid-rank within its own test fold, scaled to (0, 1): ``(rank - 1/2) / n_fold``.

    Out-of-fold scores of different folds come from different models (different Platt sigmoids, different
    decision-value scales), so an ROC curve or DeLong test over the pooled raw scores also measures how each fold's
    *level* goes with its prevalence; with a Platt slope held at its floor a whole fold is one constant at a
    fold-specific level. Within-fold ranks keep each fold's ordering and put every fold on the same scale (a fold
    of equal scores becomes all 1/2), so pooling them compares lesions of different folds only through their
    place in their own fold. Ties get their mid-rank (``scipy.stats.rankdata``).

    Parameters
    ----------
    scores : array_like, shape (n,)
        Finite out-of-fold scores.
    folds : array_like, shape (n,)
        Test fold of each case.
    """
    s = _as_1d_float(scores, "scores")
    f = np.asarray(folds)
    if f.shape != s.shape:
        raise ValueError(f"scores and folds must have one length; received {s.shape} and {f.shape}")
    out = np.empty_like(s)
    for fold in np.unique(f):
        inside = f == fold
        out[inside] = (scipy.stats.rankdata(s[inside]) - 0.5) / int(inside.sum())
    return out


def cv_unit_sizes(folds: ArrayLike, units: ArrayLike) -> tuple[float, float]:
    """Mean training and test size of a cross-validation, counted in independent units (lesions), for
    :func:`corrected_resampled_t_test`.

    With several views (ROIs) per lesion, counting ROIs would treat correlated views as separate cases. Each
    fold's test size is the number of distinct units among its cases; the training size is every other unit.

    Parameters
    ----------
    folds : array_like, shape (n,)
        Test fold of each case (ROI or lesion).
    units : array_like, shape (n,)
        Unit (lesion id) of each case; a unit must lie in one fold.

    Returns
    -------
    (n_train, n_test) : tuple of float
        Means over the folds of the number of training and test units.

    Raises
    ------
    ValueError
        If the shapes differ or a unit lies in more than one fold.
    """
    folds, units = np.asarray(folds), np.asarray(units)
    if folds.ndim != 1 or folds.shape != units.shape or folds.size == 0:
        raise ValueError(f"folds and units must be 1-D of one length; received shapes {folds.shape} and "
                         f"{units.shape}")
    pairs = np.unique(np.stack([np.unique(units, return_inverse=True)[1], np.unique(folds, return_inverse=True)[1]]),
                      axis=1)
    n_units = int(np.unique(units).size)
    if pairs.shape[1] != n_units:
        raise ValueError("a unit (lesion) lies in more than one fold; the folds must be built by lesion")
    per_fold = np.bincount(pairs[1]).astype(float)
    n_test = float(per_fold.mean())
    return n_units - n_test, n_test


def bonferroni(p_values: ArrayLike, *, alpha: float = 0.05) -> BonferroniResult:
    """Bonferroni correction for m tests.

    Parameters
    ----------
    p_values : array_like, shape (m,)
        Unadjusted p-values in [0, 1].
    alpha : float, default 0.05
        Family-wise error rate in (0, 1).

    Returns
    -------
    BonferroniResult
        ``p_adjusted = min(1, p * m)``, ``reject = p_adjusted <= alpha``.
    """
    p = _as_1d_float(p_values, "p_values")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p_values must lie in [0, 1]; received {_summarise(p[(p < 0) | (p > 1)])}")
    alpha = _as_level(alpha, "alpha")
    adjusted = np.minimum(1.0, p * p.size)
    return BonferroniResult(
        p_adjusted=_readonly(adjusted), reject=_readonly(adjusted <= alpha), alpha=alpha, n_tests=int(p.size)
    )


# --------------------------------------------------------------------------------------------------------------
# Lesion-level: clustered bootstrap, aggregation
# --------------------------------------------------------------------------------------------------------------


def _weighted_aucs(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties 1/2) for each row of case weights (bootstrap multiplicities), shape (B, n) -> (B,)."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.concatenate([[True], s_sorted[1:] != s_sorted[:-1]]))
    w = weights[:, order]
    is_pos = y[order] == 1
    wp = np.add.reduceat(np.where(is_pos, w, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(is_pos, 0.0, w), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = np.sum(wp * (below + 0.5 * wn), axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(num / den, dtype=np.float64)


def clustered_bootstrap_auc_ci(
    y_true: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike,
    *,
    seed: int,
    n_boot: int = 2000,
    level: float = 0.95,
    stratified: bool = True,
) -> BootstrapAucCI:
    """Percentile bootstrap CI of the ROI-level AUC, resampling lesions (clusters) with replacement.

    Each replicate draws lesions with replacement and keeps all ROIs of every drawn lesion (so correlated ROIs of
    one lesion stay together); the AUC of the replicate is the Mann-Whitney AUC over its ROIs, counting each ROI
    as many times as its lesion was drawn. With ``stratified=True`` (default; pROC's default too) benign and
    malignant lesions are resampled separately, keeping their numbers fixed, which requires every lesion's ROIs
    to share one label. With ``stratified=False`` lesions are drawn from the pool and replicates with a single
    class are skipped (``n_used`` counts the rest).

    Parameters
    ----------
    y_true : array_like, shape (n_rois,)
        0 (benign) / 1 (malignant) per ROI, both present.
    scores : array_like, shape (n_rois,)
        Finite ROI scores, higher = more likely malignant.
    groups : array_like, shape (n_rois,)
        Lesion (cluster) id of each ROI (ints or strings).
    seed : int
        Seed of ``numpy.random.default_rng``; the result is a deterministic function of the inputs and seed.
    n_boot : int, default 2000
        Number of bootstrap replicates, >= 100.
    level : float, default 0.95
        Confidence level in (0, 1).
    stratified : bool, default True
        Resample benign and malignant lesions separately.

    Returns
    -------
    BootstrapAucCI
        ``auc``, percentile ``lower``/``upper``, bootstrap ``se``, ``level``, ``n_boot``, ``n_used``, ``n_clusters``.
    """
    y, s = _binary_scores(y_true, scores)
    g = _as_groups(groups)
    _check_same_length(y_true=y, scores=s, groups=g)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100; received {n_boot!r}")
    level = _as_level(level)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; received {seed!r}")
    ids, cluster = _cluster_index(g)
    n_clusters = int(cluster.max()) + 1
    pos_count = np.bincount(cluster, weights=y, minlength=n_clusters)
    size = np.bincount(cluster, minlength=n_clusters)
    mixed = (pos_count > 0) & (pos_count < size)
    if stratified and mixed.any():
        raise ValueError(
            f"stratified bootstrap needs one label per lesion; {int(mixed.sum())} lesion(s) have ROIs labelled both "
            f"0 and 1 (e.g. {_summarise(ids[mixed])}); fix the labels or pass stratified=False"
        )
    rng = np.random.default_rng(int(seed))
    pools = [np.flatnonzero(pos_count == 0), np.flatnonzero(pos_count > 0)] if stratified else [np.arange(n_clusters)]
    chunk = max(1, min(n_boot, 2_000_000 // max(1, s.size)))
    boot = np.empty(n_boot)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = np.zeros((b, n_clusters))
        for pool in pools:
            draws = pool[rng.integers(0, pool.size, size=(b, pool.size))]
            flat = (draws + n_clusters * np.arange(b)[:, None]).ravel()
            counts += np.bincount(flat, minlength=b * n_clusters).reshape(b, n_clusters)
        boot[done : done + b] = _weighted_aucs(y, s, counts[:, cluster])
        done += b
    valid = boot[np.isfinite(boot)]
    if valid.size < 2:
        raise ValueError("no bootstrap replicate contained both classes; use stratified=True or more lesions")
    alpha = 1.0 - level
    lower, upper = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return BootstrapAucCI(
        auc=float(roc_auc_score(y, s)),
        lower=float(lower),
        upper=float(upper),
        se=float(np.std(valid, ddof=1)),
        level=level,
        n_boot=int(n_boot),
        n_used=int(valid.size),
        n_clusters=n_clusters,
    )


def lesion_level_scores(scores: ArrayLike, groups: ArrayLike, labels: ArrayLike) -> LesionScores:
    """Aggregate ROI scores to lesions: the mean of a lesion's ROI scores, and its (common) label.

    Parameters
    ----------
    scores : array_like, shape (n_rois,)
        Finite ROI scores.
    groups : array_like, shape (n_rois,)
        Lesion id of each ROI (ints or strings).
    labels : array_like, shape (n_rois,)
        0 (benign) / 1 (malignant) per ROI; all ROIs of a lesion must agree.

    Returns
    -------
    LesionScores
        ``groups`` (sorted unique ids), ``scores`` (means), ``labels``, ``n_rois``, each shape (n_lesions,).
    """
    s = _as_1d_float(scores, "scores")
    g = _as_groups(groups)
    y = _as_labels(labels, "labels", both_classes=False)
    _check_same_length(scores=s, groups=g, labels=y)
    ids, cluster = _cluster_index(g)
    n_rois = np.bincount(cluster)
    pos = np.bincount(cluster, weights=y)
    mixed = (pos > 0) & (pos < n_rois)
    if mixed.any():
        raise ValueError(
            f"every ROI of a lesion must have the same label; {int(mixed.sum())} lesion(s) mix 0 and 1: "
            f"{_summarise(ids[mixed])}"
        )
    means = np.bincount(cluster, weights=s) / n_rois
    return LesionScores(
        groups=_readonly(ids),
        scores=_readonly(means),
        labels=_readonly((pos > 0).astype(np.int64)),
        n_rois=_readonly(n_rois),
    )
