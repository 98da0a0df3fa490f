"""Is a headline AUC better than chance? A label-permutation test of the whole nested cross-validation.

What is permuted: the *lesion* labels, within each outer fold of the experiment's first seed. Every ROI of a lesion
keeps its lesion's (permuted) label, every lesion and patient stays in its fold, and every fold keeps its number of
benign and malignant lesions, so each permutation is a cohort the real pipeline could have met (the same grouped
folds, the same class balance per fold, the same guard rails). The whole nested cross-validation — inner grid search
on the permuted training labels, Platt fit, every tap and Method B, the ensembles — is rerun per permutation with the
experiment's seed and grid; the statistic is the one the headline reports, each classifier's fold-mean AUC on that
fold assignment (the first seed's). Under the null hypothesis (labels independent of the images), the observed
value is exchangeable with the permuted ones.

* :func:`permute_within_folds` - one permutation of the labels (lesion level, within folds).
* :func:`permutation_p_value` - ``p = (1 + #{null >= observed}) / (1 + B)`` (Phipson & Smyth 2010: never 0) with its
  Monte-Carlo standard error ``sqrt(p (1 - p) / B)``.
* :func:`max_statistic_p_value` - the selection-adjusted p of the best of several taps: the observed maximum
  against the maximum over taps within each permutation (Westfall & Young's max-T).
* :func:`null_summary` - mean, SD, 5 and 95 % quantiles of a null distribution.
* :func:`cv_statistics` - one run of the nested cross-validation (every tap, B and the fusions) on given labels
  and fixed outer folds: the statistics of one permutation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_PERMUTATIONS", "NullSummary", "PermutationResult", "TestedStatistic", "chance_sentence",
           "cv_statistics", "max_statistic_p_value", "monte_carlo_se", "null_summary", "permutation_p_value",
           "permute_within_folds", "tap_name"]

DEFAULT_PERMUTATIONS = 100
"""Permutations when the user names none: each reruns the whole nested cross-validation, so this is a compromise of
time and precision: the Monte-Carlo SE of p is ``sqrt(p (1 - p) / B)`` = 0.022 at p = 0.05 and the smallest
reachable p is 1/101 ≈ 0.0099; 1000 permutations give 0.0069 and 0.001."""

_TAP = "tap:"


def tap_name(tap: str) -> str:
    """The statistic's key of a sweep tap (``"tap:fc6"``); methods use their own keys (``"A"``, ``"C"``...)."""
    return f"{_TAP}{tap}"


def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must be a 1-d array of 0/1 labels; got shape {y.shape} with values "
                         f"{sorted(set(np.unique(y).tolist()))[:5]}")
    return y.astype(np.int64)


def permute_within_folds(y: Any, lesions: Any, folds: Any, rng: np.random.Generator) -> np.ndarray:
    """The ROI labels after permuting the lesion labels within each fold.

    Parameters
    ----------
    y : array-like of 0/1, shape (n_rois,)
        Labels; all ROIs of a lesion must share one.
    lesions : array-like, shape (n_rois,)
        Lesion id per ROI.
    folds : array-like of int, shape (n_rois,)
        Outer fold per ROI; a lesion lies in one fold.
    rng : numpy.random.Generator
        Source of the permutation.

    Returns
    -------
    numpy.ndarray
        The permuted labels per ROI: each lesion's ROIs share one label and each fold keeps its count of malignant
        lesions.
    """
    y = _labels(y)
    lesions, folds = np.asarray(lesions), np.asarray(folds)
    if lesions.shape != y.shape or folds.shape != y.shape:
        raise ValueError(f"y, lesions and folds must have one entry per ROI; got shapes {y.shape}, {lesions.shape}, "
                         f"{folds.shape}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    ids, first, code = np.unique(lesions, return_index=True, return_inverse=True)
    if (y != y[first][code]).any() or (folds != folds[first][code]).any():
        raise ValueError("every ROI of a lesion must share its lesion's label and fold")
    lesion_y, lesion_fold = y[first].copy(), folds[first]
    for k in np.unique(lesion_fold):
        members = np.flatnonzero(lesion_fold == k)
        lesion_y[members] = lesion_y[rng.permutation(members)]
    permuted: np.ndarray = lesion_y[code]
    return permuted


def _null(null: Any, name: str = "null") -> np.ndarray:
    values = np.asarray(null, dtype=float).ravel()
    if values.size == 0:
        raise ValueError(f"{name} is empty: run at least one permutation")
    return values


def monte_carlo_se(p: float, n_permutations: int) -> float:
    """Monte-Carlo standard error of a permutation p-value estimated from ``n_permutations``:
    ``sqrt(p (1 - p) / B)``."""
    if isinstance(n_permutations, bool) or int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1; got {n_permutations!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1]; got {p!r}")
    return math.sqrt(p * (1.0 - p) / int(n_permutations))


def permutation_p_value(observed: float, null: Any) -> tuple[float, float]:
    """One-sided p of ``observed`` against the permutation null (larger is better, as an AUC):
    ``(1 + #{null >= observed}) / (1 + B)``; NaN permutations (a statistic that could not be computed) are left
    out of B. Returns ``(p, Monte-Carlo SE)``."""
    values = _null(null)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no permutation gave a finite statistic")
    observed = float(observed)
    if not math.isfinite(observed):
        raise ValueError(f"observed must be finite; got {observed!r}")
    p = (1.0 + float(np.sum(values >= observed))) / (1.0 + values.size)
    return p, monte_carlo_se(p, values.size)


def max_statistic_p_value(observed: Mapping[str, float], null: Mapping[str, Any]) -> tuple[float, float]:
    """Selection-adjusted p of the largest observed statistic among ``observed``'s keys (e.g. the best of 11 taps):
    the observed maximum against, per permutation, the maximum over the same keys (Westfall & Young 1993).
    Returns ``(p, Monte-Carlo SE)``."""
    if not observed:
        raise ValueError("observed is empty: give the statistics of at least one tap")
    missing = [k for k in observed if k not in null]
    if missing:
        raise ValueError(f"the null lacks {missing}; every observed statistic needs its permutations")
    table = np.vstack([_null(null[k], k) for k in observed])
    if len({len(null[k]) for k in observed}) != 1:
        raise ValueError("every statistic needs the same permutations (one null value per permutation each)")
    return permutation_p_value(max(float(v) for v in observed.values()), np.nanmax(table, axis=0))


@dataclass(frozen=True)
class NullSummary:
    """A permutation null: mean, SD (ddof=1), 5 and 95 % quantiles, and B."""

    mean: float
    sd: float | None  # None with a single permutation
    q05: float
    q95: float
    n: int


def null_summary(null: Any) -> NullSummary:
    """Mean, SD, 5-95 % quantiles of the finite values of a null distribution."""
    values = _null(null)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no permutation gave a finite statistic")
    sd = float(np.std(values, ddof=1)) if values.size > 1 else None
    q05, q95 = np.quantile(values, [0.05, 0.95])
    return NullSummary(mean=float(np.mean(values)), sd=sd, q05=float(q05), q95=float(q95), n=int(values.size))


@dataclass(frozen=True)
class TestedStatistic:
    """One statistic's test: observed fold-mean AUC, its permutation p and Monte-Carlo SE, and the null."""

    observed: float
    p_value: float
    p_mc_se: float
    null: NullSummary


@dataclass(frozen=True)
class PermutationResult:
    """The permutation test of an experiment's headline AUCs.

    ``statistics``: by key (``"A"``, ``"B"``, ``"C"``, ``"Z"`` and ``tap_name(t)`` per tap); ``best_tap``: the tap
    with the highest observed AUC on the first seed's folds (the pages name the best tap by its mean over seeds,
    which may be another), ``best_tap_p_max``: the selection-adjusted p of the best of the taps (max-statistic,
    with its MC SE; it holds whichever tap is named) and ``best_tap_p_bonferroni``: ``min(1, n_taps x p)`` of
    ``best_tap``; ``null_values``: every permutation's statistics (for plots).
    """

    n_permutations: int
    seed: int
    statistics: dict[str, TestedStatistic]
    best_tap: str | None
    n_taps: int
    best_tap_p_max: float | None
    best_tap_p_max_mc_se: float | None
    best_tap_p_bonferroni: float | None
    null_values: dict[str, list[float | None]]

    @classmethod
    def from_null(cls, observed: Mapping[str, float], null: Mapping[str, Sequence[float]], *,
                  seed: int) -> PermutationResult:
        """Every p-value from the observed statistics and their nulls (one value per permutation each)."""
        keys = [k for k in observed if k in null and math.isfinite(float(observed[k]))]
        lengths = {len(null[k]) for k in keys}
        if len(lengths) != 1:
            raise ValueError("every statistic needs the same number of permutations")
        tested = {}
        for key in keys:
            p, se = permutation_p_value(observed[key], null[key])
            tested[key] = TestedStatistic(observed=float(observed[key]), p_value=p, p_mc_se=se,
                                          null=null_summary(null[key]))
        taps = {k: float(observed[k]) for k in keys if k.startswith(_TAP)}
        best = p_max = se_max = p_bonf = None
        if taps:
            top = max(taps, key=lambda k: taps[k])
            best = top[len(_TAP):]
            p_max, se_max = max_statistic_p_value(taps, null)
            p_bonf = min(1.0, len(taps) * tested[top].p_value)
        return cls(n_permutations=lengths.pop(), seed=int(seed), statistics=tested, best_tap=best,
                   n_taps=len(taps), best_tap_p_max=p_max, best_tap_p_max_mc_se=se_max,
                   best_tap_p_bonferroni=p_bonf,
                   null_values={k: [float(v) if math.isfinite(float(v)) else None for v in null[k]]
                                for k in keys})

    def beating_chance(self, *, alpha: float = 0.05) -> list[str]:
        """The keys whose permutation p is below ``alpha`` (empty: no classifier or tap is distinguishable from
        chance on this cohort)."""
        return [k for k, s in self.statistics.items() if s.p_value < alpha]


def cv_statistics(features: Mapping[str, Any], y: Any, lesions: Any, *, patients: Any, folds: Any, n_inner: int,
                  grid: Mapping[str, Sequence[Any]] | None, seed: int, ensemble_tap: str | None,
                  analytic: Any = None, fusions: Mapping[str, Any] | None = None) -> dict[str, float]:
    """One run of the nested cross-validation on labels ``y`` and fixed outer ``folds``: the fold-mean AUC of
    every tap (``tap_name(t)``), of SVM1 on ``ensemble_tap`` (``"A"``), of SVM2 on ``analytic`` (``"B"``) and of each
    fusion ``{key: combine(result_a, result_b)}`` (``cadx.methods``).

    The statistics are those the experiment reports: ``cadx.svm.CvResult.fold_auc`` (decision values) averaged over
    folds for the SVMs, ``cadx.svm.fold_auc`` of the fused scores for the fusions.
    """
    from cadx.svm import cross_validate_by_lesion, fold_auc, sweep_layers

    folds = np.asarray(folds)
    n_folds = len(np.unique(folds))
    common: dict[str, Any] = dict(patients=patients, n_folds=n_folds, n_inner=n_inner, grid=grid, seed=seed,
                                  repeats=1, n_jobs=1, outer_folds=folds)
    out: dict[str, float] = {}
    sweep = sweep_layers(dict(features), y, lesions, **common)
    for tap, layer in sweep.layers.items():
        out[tap_name(tap)] = float(np.mean(layer.results[0].fold_auc))
    if ensemble_tap is None:
        return out
    result_a = sweep.layers[ensemble_tap].results[0]
    out["A"] = float(np.mean(result_a.fold_auc))
    if analytic is None:
        return out
    result_b = cross_validate_by_lesion(analytic, y, lesions, **common)
    out["B"] = float(np.mean(result_b.fold_auc))
    for key, combine in (fusions or {}).items():
        out[key] = float(np.mean(fold_auc(combine(result_a, result_b), result_a.y, result_a.fold)))
    return out


def chance_sentence(intervals: Mapping[str, Sequence[float | None]], result: PermutationResult | None = None, *,
                    alpha: float = 0.05) -> str:
    """Plain words when nothing on the cohort beats chance, else ``""``.

    ``intervals``: each classifier's 95 % CI of its AUC (key -> ``[low, high]``; None ends count as open);
    ``result``: its permutation test, when one ran (its classifiers' p-values, taps left out)."""
    def holds_half(ci: Sequence[float | None]) -> bool:
        low, high = (list(ci) + [None, None])[:2]
        return (low is None or low <= 0.5) and (high is None or high >= 0.5)

    every_ci = bool(intervals) and all(holds_half(ci) for ci in intervals.values())
    beating = [] if result is None else [k for k in result.beating_chance(alpha=alpha) if not k.startswith(_TAP)]
    tested = result is not None and any(not k.startswith(_TAP) for k in result.statistics)
    if beating or not (every_ci or tested):
        return ""
    reasons = []
    if every_ci:
        reasons.append("every 95 % CI of an AUC includes 0.5")
    if tested and result is not None:
        reasons.append(f"no permutation p is below {alpha:g} ({result.n_permutations} permutations)")
    elif result is None:
        reasons.append("no permutation test has run yet")
    if not every_ci:  # the permutation test alone says so
        return ("No classifier is distinguishable from chance by the permutation test on this cohort: "
                + "; ".join(reasons) + ".")
    return "No classifier is distinguishable from chance on this cohort: " + "; ".join(reasons) + "."
