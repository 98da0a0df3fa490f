"""Polynomial-kernel SVMs evaluated by cross-validation by lesion (Huynh, Li & Giger 2016, Sec. 2.6).

The paper standardises every feature, trains an SVM with the polynomial kernel
``K(x, y) = (a xᵀy + c)^d`` whose ``a, c, d`` are chosen by a five-fold cross-validated grid search, and
evaluates it by five-fold cross-validation *by lesion*. This module does exactly that, two ways, and approximately
a third:

``engine="plain"``
    scikit-learn's own ``GridSearchCV(Pipeline([VarianceThreshold(0), StandardScaler(), (SimpleImputer()),
    SVC(kernel="poly")]))`` (:func:`make_plain_pipeline`), refitted in each outer fold. The reference.
``engine="approx"``
    The same grid, folds, standardisation and Platt step on explicit Tensor-Sketch features of the kernel with a
    linear SVM (:mod:`cadx.sketch`): memory and time linear in the number of ROIs, an approximation whose error
    is measured (``benchmarks/bench_approx_engine.py``). :func:`resolve_svm_engine` maps the user's
    ``exact|approx|auto`` (:data:`SVM_ENGINES`) to an engine.
``engine="gram"`` (default)
    The same numbers, much faster. The polynomial kernel sees the data only through ``zᵢᵀzⱼ`` (``z`` the
    standardised features), so each standardised Gram matrix is computed once, in float64, and every grid
    point ``(a, c, d)`` is an element-wise ``(a·G + c)^d`` fed to ``SVC(kernel="precomputed")``.

Exactness of the Gram engine
----------------------------
In every fit, the plain pipeline drops the features that are constant on *that fit's* training rows and
standardises with *that fit's* training means and standard deviations; the inner grid search therefore uses a
different scaler in each inner split. The Gram of inner split ``k`` is ``(X - 1μₖᵀ) Dₖ (X - 1μₖᵀ)ᵀ`` with a
split-specific diagonal ``Dₖ = diag(keepₖ / σₖ²)``. The centring could be applied afterwards to an n×n
cross-product (it is a rank-two update), but the per-feature weights ``Dₖ`` cannot: ``Σⱼ wₖⱼ xᵢⱼ xₗⱼ`` is not
a function of any n×n summary of the raw data. So instead of re-deriving the inner Grams from the outer one,
the engine streams the wide matrix once per outer fold, in column blocks (memory ``O(n·block + n²)``, never
``O(n·p)``), computes each block's statistics for the outer training rows and for each inner-training part
(sum, two-pass variance and peak-to-peak, with scikit-learn's formulas and its near-constant-feature rule),
standardises the block with each of those scalers and accumulates all six Grams (one outer, five inner) with a
symmetric rank-k update. Features dropped by the zero-variance filter get weight 0; missing values (Method B's
failed segmentations) are imputed with the training-column mean of the standardised feature, which is 0, as
``SimpleImputer(strategy="mean")`` after ``StandardScaler`` does. Grid-search scores are ``roc_auc_score`` on
the validation decision values, averaged over the inner splits with ``np.average`` and the first best candidate
in :class:`~sklearn.model_selection.ParameterGrid` order wins, as in ``GridSearchCV``. The remaining
differences are floating-point summation order (≈1e-14 relative), checked in ``tests/test_svm.py``.

Calibration
-----------
Soft voting (Method C) averages *probabilities*, so each classifier's decision values are mapped to
probabilities with Platt's sigmoid ``p = 1 / (1 + exp(-(A·f + B)))``, fitted on the *inner cross-validated*
decision values of the outer training rows (the grid search's own out-of-fold values for the chosen
parameters: no extra fits, no test data) with the slope constrained to ``A ≥ A_min > 0``. A strictly increasing
map cannot reorder ROIs, so the AUC of the probabilities equals the AUC of the decision values within each fold
(:attr:`CvResult.fold_auc` and :attr:`CvResult.fold_auc_proba`). Isotonic regression was rejected: it is
piecewise constant, creates ties and changes the AUC; ``SVC(probability=True)`` was rejected: it runs its own
random internal cross-validation and its sigmoid may have either sign.

The floor has a price. Where the inner cross-validated decision values carry no signal, the free maximum-likelihood
slope is ``<= 0`` and the fitted slope sits at ``A_min``: the fold's probabilities are then nearly flat (within
about ``A_min`` of one value), and the soft vote ``(p1 + p2) / 2`` ranks that fold's ROIs by the other classifier
alone, while the pooled AUC of the probabilities reflects the differences between fold intercepts. Each result
therefore records the free slope and the folds where the floor was active (:attr:`CvResult.platt_free_slope`,
:attr:`CvResult.platt_clamped`), and :func:`z_vote` offers an ensemble that does not go through the sigmoid:
each classifier's decision values z-scored with the mean and SD of its inner cross-validated decision values on
the training fold, then averaged.

Default grid
------------
``gamma = a ∈ {0.1, 1, 10} / p``, ``coef0 = c ∈ {0, 1}``, ``degree = d ∈ {1, 2, 3}`` (18 candidates, ``C = 1``),
with ``p`` the layer's raw width (before zero-variance removal, so the grid is the same in every fold and the
same numbers can be given to ``GridSearchCV``). scikit-learn's ``gamma`` multiplies ``xᵀy``; for standardised
features ``zᵀz ≈ p``, so ``a·p`` is the scale of the kernel's argument and ``a = 1/p, c = 0, d = 3`` is
scikit-learn's default ``SVC(kernel="poly")``. For ``d = 1`` the factor ``a`` plays the part of ``C``.
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from scipy.optimize import minimize
from scipy.stats import rankdata
from sklearn import config_context
from sklearn.base import clone
from sklearn.feature_selection import VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, _libsvm

from cadx.errors import CadxInputError
from cadx.foldmodel import FoldModel
from cadx.gram import _EPS, GRAM_ENGINES, GramAccumulator, _fit_scaler, _poly, resolve_gram_engine
from cadx.labels import label_codes

__all__ = [
    "CvResult",
    "LayerSummary",
    "SweepResult",
    "cross_validate_by_lesion",
    "cross_validate_with_params",
    "default_grid",
    "fold_auc",
    "make_plain_pipeline",
    "make_svm_pipeline",
    "AUTO_EXACT_MAX_TRAIN",
    "OPERATING_POINT_RULE",
    "SVM_ENGINES",
    "operating_point",
    "resolve_svm_engine",
    "soft_vote",
    "sweep_layers",
    "z_vote",
]

Progress = Callable[[int, int, str], None]
FeatureSource = Any  # array of shape (n_rois, n_features), np.memmap, path to a .npy file, or a callable returning one

_GRID_KEYS = ("gamma", "coef0", "degree", "C")
_ENGINES = ("gram", "plain", "approx")
SVM_ENGINES = ("exact", "approx", "auto")
"""What a user asks for (CLI ``--svm-engine``, the sweep page, ``ExperimentSettings.svm_engine``): ``exact`` (the Gram
engine, the default), ``approx`` (Tensor-Sketch features and a linear SVM) or ``auto`` (:func:`resolve_svm_engine`)."""
AUTO_EXACT_MAX_TRAIN = 5000
"""``auto`` runs the exact engine up to this many outer-training ROIs and the approximate one above: the exact
engine's six ``n x n`` float64 Grams per fold are 1.2 GB at 5,000 and grow with ``n^2``, its SVM fits faster still."""
_DASK_ENV = "CADX_DASK_SCHEDULER"
_DEFAULT_BLOCK_COLUMNS = 8192
_PLATT_MIN_SLOPE = 1e-3  # in units of 1 / sd(decision values)


# --------------------------------------------------------------------------------------------------------------
# Grid and sklearn pipelines
# --------------------------------------------------------------------------------------------------------------


def default_grid(n_features: int) -> dict[str, list[Any]]:
    """The default ``(a, c, d)`` grid for a layer with ``n_features`` raw features.

    Parameters
    ----------
    n_features : int
        Width of the feature matrix before zero-variance removal.

    Returns
    -------
    dict
        ``{"gamma": [0.1/p, 1/p, 10/p], "coef0": [0.0, 1.0], "degree": [1, 2, 3]}``.
    """
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise ValueError(f"n_features must be a positive integer; got {n_features!r}")
    p = float(n_features)
    return {"gamma": [0.1 / p, 1.0 / p, 10.0 / p], "coef0": [0.0, 1.0], "degree": [1, 2, 3]}


def _check_grid(grid: Mapping[str, Sequence[Any]]) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """Validate a grid; return it cleaned and its candidates in ParameterGrid (= GridSearchCV) order.

    Candidates have all of ``gamma, coef0, degree, C`` (defaults ``coef0=0, degree=3, C=1``).
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty mapping of parameter -> list of values; got {grid!r}")
    unknown = sorted(set(grid) - set(_GRID_KEYS))
    if unknown:
        raise ValueError(f"grid has unknown parameters {unknown}; allowed: {list(_GRID_KEYS)}")
    clean: dict[str, list[Any]] = {}
    for key, values in grid.items():
        values = list(np.atleast_1d(np.asarray(values, dtype=object)))
        if not values:
            raise ValueError(f"grid[{key!r}] is empty; give at least one value")
        for v in values:
            if key == "degree":
                if isinstance(v, bool) or not float(v).is_integer() or int(v) < 1:
                    raise ValueError(f"grid['degree'] must hold integers >= 1; got {v!r}")
            elif key == "coef0":
                if not np.isfinite(float(v)):
                    raise ValueError(f"grid['coef0'] must hold finite numbers; got {v!r}")
            elif not (np.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"grid[{key!r}] must hold finite numbers > 0; got {v!r}")
        clean[key] = [int(v) if key == "degree" else float(v) for v in values]
    # ParameterGrid(prefixed) orders candidates exactly as GridSearchCV does.
    candidates = []
    for params in ParameterGrid({f"svc__{k}": v for k, v in clean.items()}):
        cand = {k.removeprefix("svc__"): v for k, v in params.items()}
        cand.setdefault("gamma", None)
        cand.setdefault("coef0", 0.0)
        cand.setdefault("degree", 3)
        cand.setdefault("C", 1.0)
        if cand["gamma"] is None:
            raise ValueError("grid must give 'gamma' (a): the engines share explicit values, not gamma='scale'")
        candidates.append(cand)
    return clean, candidates


def make_svm_pipeline(*, gamma: float, coef0: float = 0.0, degree: int = 3, C: float = 1.0,
                      impute: bool = False) -> Pipeline:
    """One fold's classifier: zero-variance filter, standardisation, (imputation), polynomial SVM.

    Parameters
    ----------
    gamma, coef0, degree : float, float, int
        The kernel ``(gamma·xᵀy + coef0)^degree`` on standardised features.
    C : float, default=1.0
        SVM penalty.
    impute : bool, default=False
        Add ``SimpleImputer(strategy="mean")`` after the scaler, for features with missing values (NaN).

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``variance``, ``scaler``, (``impute``), ``svc``; refitted from scratch whenever it is fitted.
    """
    steps: list[tuple[str, Any]] = [("variance", VarianceThreshold(threshold=0.0)), ("scaler", StandardScaler())]
    if impute:
        steps.append(("impute", SimpleImputer(strategy="mean")))
    steps.append(("svc", SVC(kernel="poly", gamma=gamma, coef0=coef0, degree=degree, C=C)))
    return Pipeline(steps)


def make_plain_pipeline(*, grid: Mapping[str, Sequence[Any]], cv: Any = 5, impute: bool = False,
                        n_jobs: int | None = None) -> GridSearchCV:
    """The plain scikit-learn grid search (the baseline and the reference for the Gram engine).

    Parameters
    ----------
    grid : mapping
        Parameter -> values, keys among ``gamma``, ``coef0``, ``degree``, ``C`` (see :func:`default_grid`).
    cv : int, cross-validation generator or iterable of (train, validation) index pairs, default=5
        The inner cross-validation, as for ``GridSearchCV``.
    impute : bool, default=False
        Include ``SimpleImputer`` (needed when features contain NaN).
    n_jobs : int or None
        Passed to ``GridSearchCV``.

    Returns
    -------
    sklearn.model_selection.GridSearchCV
        Scoring ``"roc_auc"``, ``refit=True``, over :func:`make_svm_pipeline`.
    """
    clean, candidates = _check_grid(grid)
    base = make_svm_pipeline(gamma=candidates[0]["gamma"], impute=impute)
    param_grid = {f"svc__{k}": v for k, v in clean.items()}
    return GridSearchCV(base, param_grid, scoring="roc_auc", cv=cv, refit=True, n_jobs=n_jobs)


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CvResult:
    """Out-of-fold results of one cross-validation by lesion (one seed).

    Attributes
    ----------
    decision : ndarray of shape (n_rois,)
        Out-of-fold SVM decision values (positive = class 1, malignant).
    proba : ndarray of shape (n_rois,)
        Out-of-fold probabilities of class 1 (Platt, positive slope, fitted on training folds only).
    fold : ndarray of shape (n_rois,)
        Outer fold (0 .. n_folds-1) in which each ROI was a test ROI.
    y : ndarray of shape (n_rois,)
        Labels as 0/1 (1 = the larger of the two labels given).
    groups : ndarray of shape (n_rois,)
        The groups the folds were built on (lesions, or patients when given).
    fold_auc, fold_auc_proba : ndarray of shape (n_folds,)
        AUC of the decision values / of the probabilities within each test fold (equal: calibration is
        strictly increasing).
    best_params : tuple of dict
        Chosen ``{"gamma", "coef0", "degree", "C"}`` per outer fold.
    best_inner_score : ndarray of shape (n_folds,)
        Mean inner-CV AUC of the chosen parameters.
    inner_scores : ndarray of shape (n_folds, n_candidates, n_inner)
        Every candidate's AUC in every inner split.
    platt : ndarray of shape (n_folds, 2)
        Sigmoid ``(A, B)`` per fold, ``A > 0``.
    platt_free_slope : ndarray of shape (n_folds,)
        Per fold, the maximum-likelihood Platt slope *without* the floor ``A_min`` (decision-value units): ``<= 0``
        where the inner cross-validated decision values carried no signal (or the wrong sign).
    platt_clamped : ndarray of bool, shape (n_folds,)
        Folds where the floor was active: ``proba`` is (nearly) flat there, so a probability average with another
        classifier ranks by the other classifier alone in those folds (a *degenerate* fold).
    inner_decision_mean, inner_decision_sd : ndarray of shape (n_folds,)
        Mean and SD of the inner cross-validated decision values of the chosen parameters on each outer training
        set: the standardisation of :attr:`decision_z` (no test data involved).
    operating_point : ndarray of shape (n_folds,), optional
        Per fold, the decision value at and above which a case is called malignant, chosen on the training fold
        only (:func:`operating_point`).
    models : tuple of FoldModel, optional
        Each outer fold's fitted model (:class:`cadx.foldmodel.FoldModel`), when asked for with ``keep_models``.
    n_features : int
        Raw width of the feature matrix.
    n_features_kept : ndarray of shape (n_folds,)
        Features left after zero-variance removal on each outer training set.
    splits : tuple of (ndarray, ndarray)
        Outer ``(train, test)`` ROI indices, as used.
    inner_splits : tuple of tuple of (ndarray, ndarray)
        Per outer fold, the inner ``(train, validation)`` ROI indices (into the full data set), as used.
    gram_seconds, svm_seconds, fold_seconds : ndarray of shape (n_folds,)
        Time per outer fold computing Grams (or, for ``engine="plain"``, 0), fitting SVMs, in total.
    seconds : float
        Wall-clock time of the whole cross-validation.
    seed : int
    engine : str
    gram_engine : str
        Where the Gram engine's matrix products ran (:func:`cadx.gram.resolve_gram_engine`); ``"numpy"`` for the
        plain engine.
    later_seeds : tuple of CvResult
        With repeated cross-validation (``repeats > 1``), the results of the seeds after this one; see :attr:`runs`.
    """

    decision: np.ndarray
    proba: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    fold_auc: np.ndarray
    fold_auc_proba: np.ndarray
    best_params: tuple[dict[str, Any], ...]
    best_inner_score: np.ndarray
    inner_scores: np.ndarray
    platt: np.ndarray
    n_features: int
    n_features_kept: np.ndarray
    splits: tuple[Any, ...]
    inner_splits: tuple[Any, ...]
    gram_seconds: np.ndarray
    svm_seconds: np.ndarray
    fold_seconds: np.ndarray
    seconds: float
    seed: int
    engine: str
    gram_engine: str = "numpy"
    platt_free_slope: np.ndarray | None = None
    platt_clamped: np.ndarray | None = None
    inner_decision_mean: np.ndarray | None = None
    inner_decision_sd: np.ndarray | None = None
    operating_point: np.ndarray | None = None
    models: tuple[FoldModel, ...] | None = None
    later_seeds: tuple[CvResult, ...] = ()

    @property
    def runs(self) -> tuple[CvResult, ...]:
        """Every seed's result of a repeated cross-validation, this one (the first seed) first; ``(self,)`` with
        one seed."""
        return (replace(self, later_seeds=()), *self.later_seeds)

    @property
    def n_folds(self) -> int:
        """Number of outer folds."""
        return len(self.splits)

    @property
    def decision_z(self) -> np.ndarray:
        """Out-of-fold decision values standardised per fold with :attr:`inner_decision_mean` and
        :attr:`inner_decision_sd` (statistics of the training fold only)."""
        if self.inner_decision_mean is None or self.inner_decision_sd is None:
            raise ValueError("this result has no inner decision statistics (made before they were recorded)")
        z: np.ndarray = (self.decision - self.inner_decision_mean[self.fold]) / self.inner_decision_sd[self.fold]
        return z

    @property
    def n_degenerate(self) -> int:
        """Folds whose Platt slope was held at the floor (see :attr:`platt_clamped`)."""
        return 0 if self.platt_clamped is None else int(np.sum(self.platt_clamped))

    @property
    def auc_mean(self) -> float:
        """Mean over folds of the per-fold AUC (the paper's "AUC averaged for each fold")."""
        return float(np.mean(self.fold_auc))

    @property
    def auc_sd(self) -> float:
        """Standard deviation (ddof=1) of the per-fold AUC."""
        return float(np.std(self.fold_auc, ddof=1)) if self.n_folds > 1 else float("nan")

    @property
    def auc_se(self) -> float:
        """Standard error: ``auc_sd / sqrt(n_folds)`` (the paper's Fig. 3 error bars)."""
        return self.auc_sd / math.sqrt(self.n_folds)


@dataclass(frozen=True)
class LayerSummary:
    """One tap of a layer sweep.

    Attributes
    ----------
    name : str
    n_features : int
        Raw feature length.
    n_features_nonconstant : int
        Length after removing the columns that are constant over all ROIs (the paper's Fig. 2 numbers); the
        classifiers themselves remove zero-variance columns per training fold.
    auc_mean, auc_sd, auc_se : float
        Mean, SD (ddof=1) and SE (SD/sqrt(n_folds)) of the per-fold AUC; with several repeats, the mean over all
        folds of all repeats and the SD/SE averaged over repeats.
    seconds : float
        Summed time of this layer's jobs (wall time of each job, in whichever worker ran it).
    results : tuple of CvResult
        One per repeat (seed).
    """

    name: str
    n_features: int
    n_features_nonconstant: int
    auc_mean: float
    auc_sd: float
    auc_se: float
    seconds: float
    results: tuple[CvResult, ...]


@dataclass(frozen=True)
class SweepResult:
    """All taps of a layer sweep, in the order given, plus the sweep's wall-clock time.

    Attributes
    ----------
    layers : dict of str to LayerSummary
    seconds : float
        Wall-clock time of the whole sweep.
    backend : str
        ``"sequential"``, ``"loky"`` or ``"dask"``.
    """

    layers: dict[str, LayerSummary]
    seconds: float
    backend: str = "sequential"


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def _check_labels(y: Any) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per ROI); got shape {y.shape}")
    classes = np.unique(y.astype(str) if y.dtype.kind in "OSU" else y)
    try:
        codes = label_codes(y, name="y").astype(np.int64)  # the one codec: 0/1 or benign/malignant spelled any way
    except CadxInputError:
        if len(classes) <= 2:
            raise
        codes = np.unique(y)  # more than two classes: reported below
    if len(np.unique(codes)) != 2:
        raise ValueError(
            f"y must hold exactly two classes (benign/malignant); got {len(np.unique(codes))}: {classes[:5]}")
    return codes


def _check_groups(groups: Any, n: int, name: str) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"{name} must have one id per ROI, shape ({n},); got shape {groups.shape}")
    if groups.dtype.kind == "f" and np.isnan(groups).any():
        raise ValueError(f"{name} contains NaN; every ROI needs an id")
    return np.asarray(groups)


def _cv_groups(lesions: Any, patients: Any, n: int) -> np.ndarray:
    """Groups for the folds: patients when given (checked to contain whole lesions), else lesions."""
    lesion_ids = _check_groups(lesions, n, "groups")
    if patients is None:
        return lesion_ids
    patient_ids = _check_groups(patients, n, "patients")
    _, lesion_code = np.unique(lesion_ids, return_inverse=True)
    _, patient_code = np.unique(patient_ids, return_inverse=True)
    pairs = np.unique(np.stack([lesion_code, patient_code]), axis=1)
    counts = np.bincount(pairs[0])
    if (counts > 1).any():
        bad = np.unique(lesion_ids)[np.flatnonzero(counts > 1)[:5]]
        raise ValueError(f"lesions {list(bad)} belong to more than one patient; each lesion id must map to one "
                         "patient id")
    return patient_ids


def _fixed_outer_splits(outer_folds: Any, groups: np.ndarray, n_folds: int
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer splits of a given fold id per ROI (0 .. n_folds - 1), checked to keep every group in one fold."""
    folds = np.asarray(outer_folds)
    if folds.shape != groups.shape or folds.dtype.kind not in "iu":
        raise ValueError(f"outer_folds must hold one integer fold id per ROI, shape {groups.shape}; got shape "
                         f"{folds.shape}, dtype {folds.dtype}")
    if sorted(np.unique(folds).tolist()) != list(range(n_folds)):
        raise ValueError(f"outer_folds must use the fold ids 0..{n_folds - 1} (n_folds={n_folds}); got "
                         f"{sorted(np.unique(folds).tolist())}")
    _, group_code = np.unique(groups, return_inverse=True)
    if (np.unique(np.stack([group_code, folds]), axis=1).shape[1]) != group_code.max() + 1:
        raise ValueError("outer_folds splits a lesion (or patient) between folds; give folds of whole groups")
    return [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(n_folds)]


def _make_splits(y: np.ndarray, groups: np.ndarray, n_folds: int, n_inner: int, seed: int, outer_folds: Any = None
                 ) -> tuple[tuple[tuple[np.ndarray, np.ndarray], ...],
                            tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]]:
    """Outer StratifiedGroupKFold splits (or those of ``outer_folds``, a fold id per ROI) and, per outer training
    set, inner ones (indices into the full data)."""
    for name, k in (("n_folds", n_folds), ("n_inner", n_inner)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"{name} must be an integer >= 2; got {k!r}")
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} groups (lesions/patients) cannot fill n_folds={n_folds} folds; "
                         f"use n_folds <= {n_groups}")
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    inner_splits: list[tuple[tuple[np.ndarray, np.ndarray], ...]] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if outer_folds is None:
            outer = list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
                         .split(np.zeros(len(y)), y, groups))
        else:
            outer = _fixed_outer_splits(outer_folds, groups, n_folds)
        for train, test in outer:
            inner_cv = StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed)
            if len(np.unique(groups[train])) < n_inner:
                raise ValueError(f"an outer training set has {len(np.unique(groups[train]))} groups, fewer than "
                                 f"n_inner={n_inner}; use fewer folds or more lesions")
            inner = tuple((train[a], train[b]) for a, b in inner_cv.split(np.zeros(len(train)), y[train],
                                                                          groups[train]))
            for a, _ in ((train, None), *inner):
                if len(np.unique(y[a])) < 2:
                    raise ValueError("a training fold holds a single class; give more lesions of each class or "
                                     "fewer folds")
            splits.append((train, test))
            inner_splits.append(inner)
    return tuple(splits), tuple(inner_splits)


@dataclass(frozen=True)
class _MemmapSource:
    """A picklable reference to a memory-mapped array (so workers map the file instead of receiving copies)."""

    filename: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    order: str

    def __call__(self) -> np.ndarray:
        return np.memmap(self.filename, dtype=np.dtype(self.dtype), mode="r", shape=self.shape,
                         offset=self.offset, order="F" if self.order == "F" else "C")


@dataclass(frozen=True)
class _NpySource:
    path: str

    def __call__(self) -> np.ndarray:
        array: np.ndarray = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return array


def _as_source(source: FeatureSource) -> Any:
    if isinstance(source, (str, Path)):
        return _NpySource(str(source))
    if (isinstance(source, np.memmap) and getattr(source, "filename", None)
            and isinstance(source.base, mmap.mmap)  # the mapping itself, not a view into it
            and (source.flags.c_contiguous or source.flags.f_contiguous)):
        order = "F" if (source.flags.f_contiguous and not source.flags.c_contiguous) else "C"
        return _MemmapSource(str(source.filename), source.dtype.str, tuple(source.shape), int(source.offset), order)
    if callable(source) or (hasattr(source, "shape") and hasattr(source, "dtype")):
        return source
    return np.asarray(source)


def _load(source: Any, n: int, name: str = "X") -> np.ndarray:
    X: np.ndarray = source() if callable(source) else source
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise ValueError(f"{name}: features must be 2-D (n_rois, n_features); got shape {X.shape}")
    if X.shape[0] != n:
        raise ValueError(f"{name}: {X.shape[0]} feature rows but {n} labels; give one row per ROI")
    if X.shape[1] < 1:
        raise ValueError(f"{name}: no features (shape {X.shape})")
    if X.dtype.kind not in "fiub":
        raise ValueError(f"{name}: features must be numeric; got dtype {X.dtype}")
    return X


# --------------------------------------------------------------------------------------------------------------
# Gram engine
# --------------------------------------------------------------------------------------------------------------


def _group_moments(XT: np.ndarray, parts: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Count, sum, centred sum of squares, min and max of each row group ``XT[part]`` (NaN-free), each (K, b)."""
    K, b = len(parts), XT.shape[1]
    count = np.empty((K, 1))
    total, m2, lo, hi = (np.empty((K, b)) for _ in range(4))
    for g, part in enumerate(parts):
        F = XT[part]
        count[g] = len(part)
        np.sum(F, axis=0, out=total[g])
        np.min(F, axis=0, out=lo[g])
        np.max(F, axis=0, out=hi[g])
        F -= total[g] / len(part)
        m2[g] = np.einsum("ij,ij->j", F, F)
    return count, total, m2, lo, hi


def _scaler_from_moments(moments: tuple[np.ndarray, ...], use: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """The ``_fit_scaler`` statistics of the union of the row groups ``use`` (bool (K,)), by Chan et al.'s
    pairwise combination of group moments (exact in exact arithmetic, stable in floating point)."""
    count, total, m2, lo, hi = moments
    n = float(count[use].sum())
    mean = total[use].sum(axis=0) / n
    dev = total[use] / count[use] - mean
    var = (m2[use] + count[use] * dev * dev).sum(axis=0) / n
    keep = hi[use].max(axis=0) > lo[use].min(axis=0)
    constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    inv = np.where(keep, 1.0 / scale, 0.0)
    return keep, np.where(keep, mean, 0.0), inv


def _standardize(rows: np.ndarray, mean: np.ndarray, inv: np.ndarray, has_nan: bool, out: np.ndarray) -> np.ndarray:
    """``out = (rows - mean) * inv`` with NaN -> 0 (the imputer's standardised mean); dropped columns -> 0."""
    np.subtract(rows, mean, out=out)
    np.multiply(out, inv, out=out)
    if has_nan:
        np.copyto(out, 0.0, where=np.isnan(out))
    return out


def _fold_grams(X: np.ndarray, train: np.ndarray, test: np.ndarray, inner: Sequence[tuple[np.ndarray, np.ndarray]],
                *, block_columns: int = _DEFAULT_BLOCK_COLUMNS, gram_engine: str = "numpy",
                scaler_out: list[Any] | None = None) -> tuple[np.ndarray, list[np.ndarray], int, int]:
    """The standardised Grams of one outer fold, streaming ``X`` in column blocks.

    Parameters
    ----------
    X : array of shape (n_rois, n_features)
        Raw features (any float dtype; memory-mapped is fine). Converted to float64 one block at a time.
    train, test : ndarray of int
        Outer training and test ROI indices.
    inner : sequence of (ndarray, ndarray)
        Inner (train, validation) ROI indices, subsets of ``train``.
    block_columns : int
        Columns per block; memory is about ``4 · n_rois · block_columns`` float64 plus the Grams.
    gram_engine : str
        Where the rank-k updates run (:func:`cadx.gram.resolve_gram_engine`); the statistics and the
        standardisation are the same numpy code for every engine.
    scaler_out : list, optional
        When given, the outer-training scaler of each block is appended to it as ``(keep, mean, inv_scale)``
        (what a stored fold model needs).

    Returns
    -------
    outer_gram : ndarray of shape (n_train + n_test, n_train + n_test)
        Rows/columns ordered ``train`` then ``test``, standardised with the outer-training scaler.
    inner_grams : list of ndarray of shape (n_train, n_train)
        Rows/columns ordered as ``train``; entry ``k`` standardised with inner split ``k``'s training scaler.
    n_kept : int
        Features kept by the zero-variance filter on the outer training rows.
    n_nonconstant : int
        Features that are not constant over all rows (train and test).
    """
    order = np.concatenate([train, test])
    n_all, n_tr = len(order), len(train)
    position = np.empty(X.shape[0], dtype=np.int64)
    position[train] = np.arange(n_tr)
    inner_fit = [position[a] for a, _ in inner]
    inner_val = [position[v] for _, v in inner]
    # When the validation parts partition the training set (K-fold), the scaler of every inner-training part
    # and of the whole training set follows from per-part moments: one pass instead of one per fit.
    partition = (np.array_equal(np.sort(np.concatenate(inner_val)), np.arange(n_tr))
                 and all(len(np.union1d(f, v)) == len(f) + len(v) == n_tr
                         for f, v in zip(inner_fit, inner_val, strict=True)))
    G_outer = GramAccumulator(n_all, gram_engine)
    G_inner = [GramAccumulator(n_tr, gram_engine) for _ in inner]
    n_kept = n_nonconstant = 0
    p = X.shape[1]
    b = max(1, int(block_columns))
    buf = np.empty((n_all, min(b, p)))
    for j0 in range(0, p, b):
        j1 = min(p, j0 + b)
        block = np.asarray(X[:, j0:j1])
        Xb = np.asarray(block[order], dtype=np.float64, order="C")
        has_nan = bool(np.isnan(Xb).any())
        if has_nan:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                n_nonconstant += int((np.nanmax(Xb, axis=0) > np.nanmin(Xb, axis=0)).sum())
        else:
            n_nonconstant += int((Xb.max(axis=0) > Xb.min(axis=0)).sum())
        out = buf if j1 - j0 == buf.shape[1] else np.empty((n_all, j1 - j0))
        XT = Xb[:n_tr]
        outT = out[:n_tr]
        fast = partition and not has_nan
        if fast:
            moments = _group_moments(XT, inner_val)
            every = np.ones(len(inner_val), dtype=bool)
            keep, mean, inv = _scaler_from_moments(moments, every)
        else:
            keep, mean, inv = _fit_scaler(XT, has_nan)
        n_kept += int(keep.sum())
        if scaler_out is not None:
            scaler_out.append((keep.copy(), mean.copy(), inv.copy()))
        if keep.any():
            G_outer.add(_standardize(Xb, mean, inv, has_nan, out))
        for k, (G, fit_pos) in enumerate(zip(G_inner, inner_fit, strict=True)):
            if fast:
                keep, mean, inv = _scaler_from_moments(moments, np.arange(len(inner_val)) != k)
            else:
                keep, mean, inv = _fit_scaler(XT[fit_pos], has_nan)
            if keep.any():
                G.add(_standardize(XT, mean, inv, has_nan, outT))
    if not (G_outer.finite() and all(G.finite() for G in G_inner)):
        raise ValueError("features contain infinite values (or overflow float64 after standardisation); "
                         "allowed are finite numbers and NaN (missing, imputed)")
    return G_outer.result(), [G.result() for G in G_inner], n_kept, n_nonconstant


def _safe_auc(y: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")  # GridSearchCV's error_score=np.nan for a single-class validation fold
    return float(roc_auc_score(y, score))


def _rank_auc(y: np.ndarray, score: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic (average ranks for ties): equal to ``roc_auc_score`` up to rounding."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _best_index(scores: np.ndarray) -> int:
    """GridSearchCV's choice: the first candidate in grid order among those with the best mean score."""
    means = np.average(scores, axis=1)
    if np.isnan(means).all():
        return 0
    means = np.nan_to_num(means, nan=np.nanmin(means) - 1)
    return int(np.argmax(means))


_NO_SAMPLE_WEIGHT = np.empty(0, dtype=np.float64)
_UNIT_CLASS_WEIGHT = np.ones(2, dtype=np.float64)  # SVC's class_weight_ for class_weight=None: C for both classes
_SVC_DEFAULTS: dict[str, Any] = {"svm_type": 0, "kernel": "precomputed", "degree": 3, "coef0": 0.0, "gamma": 0.0,
                                 "cache_size": 200.0}


def _inner_svc_decision(G_fit: np.ndarray, y_fit: np.ndarray, G_val: np.ndarray, C: float) -> np.ndarray:
    """``SVC(kernel="precomputed", C=C).fit(G_fit, y_fit).decision_function(G_val)``, bit for bit, by calling the
    libsvm binding that ``SVC`` itself calls.

    Written by hand (the only place cadx reaches past scikit-learn's public API) because the inner grid search fits
    tens of thousands of SVMs on small Grams, and ``SVC``'s input validation per call costs ~20x the libsvm work there.
    ``G_fit`` of shape (n, n) and ``G_val`` of shape (m, n): C-contiguous float64, finite (our own Grams);
    ``y_fit`` of shape (n,) in {0, 1} with both classes. ``tests/test_svm.py`` checks the equality with ``SVC`` (the
    sklearn pin in requirements.txt keeps the binding's signature).
    """
    if G_fit.shape[0] != G_fit.shape[1] or G_val.shape[1] != G_fit.shape[0] or len(y_fit) != G_fit.shape[0]:
        raise ValueError(f"precomputed Gram shapes do not match: fit {G_fit.shape}, validation {G_val.shape}, "
                         f"labels {len(y_fit)}")
    if not (y_fit.min() == 0 and y_fit.max() == 1):
        raise ValueError("The number of classes has to be greater than one; got 1 class")
    _libsvm.set_verbosity_wrap(0)  # as SVC.fit does: else libsvm prints each fit's summary to stdout
    support, vectors, n_support, dual_coef, intercept, prob_a, prob_b, _status, _iterations = _libsvm.fit(
        G_fit, np.asarray(y_fit, dtype=np.float64), sample_weight=_NO_SAMPLE_WEIGHT,
        class_weight=_UNIT_CLASS_WEIGHT, C=float(C), nu=0.0, probability=False, shrinking=True, tol=1e-3,
        epsilon=0.0, max_iter=-1, random_seed=0, **_SVC_DEFAULTS)
    decision = _libsvm.decision_function(G_val, support, vectors, n_support, dual_coef, intercept, prob_a, prob_b,
                                         **_SVC_DEFAULTS)
    return np.asarray(-decision.ravel(), dtype=np.float64)  # SVC's sign for two classes: positive means classes_[1]


def _grid_search_gram(G_inner: Sequence[np.ndarray], inner_pos: Sequence[tuple[np.ndarray, np.ndarray]],
                      y_tr: np.ndarray, candidates: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Inner grid search on precomputed Grams. Returns scores (n_cand, n_inner) and out-of-fold decisions."""
    with config_context(assume_finite=True, skip_parameter_validation=True):  # our own finite Grams: ~2x faster
        return _grid_search_gram_unchecked(G_inner, inner_pos, y_tr, candidates)


def _grid_search_gram_unchecked(G_inner: Sequence[np.ndarray], inner_pos: Sequence[tuple[np.ndarray, np.ndarray]],
                                y_tr: np.ndarray, candidates: Sequence[dict[str, Any]]
                                ) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((len(candidates), len(inner_pos)), np.nan)
    oof = np.zeros((len(candidates), len(y_tr)))
    vals = []
    for k, (G, (fit, val)) in enumerate(zip(G_inner, inner_pos, strict=True)):
        G_ff = np.ascontiguousarray(G[np.ix_(fit, fit)])
        G_vf = np.ascontiguousarray(G[np.ix_(val, fit)])
        y_fit = np.asarray(y_tr[fit], dtype=np.float64)  # once per inner fold, not per candidate
        for ci, c in enumerate(candidates):
            dec = _inner_svc_decision(_poly(G_ff, c["gamma"], c["coef0"], c["degree"]), y_fit,
                                      _poly(G_vf, c["gamma"], c["coef0"], c["degree"]), c["C"])
            oof[ci, val] = dec
            scores[ci, k] = _rank_auc(y_tr[val], dec)
        vals.append(val)
    _rescore_contenders(scores, oof, vals, y_tr)
    return scores, oof


def _rescore_contenders(scores: np.ndarray, oof: np.ndarray, vals: Sequence[np.ndarray], y_tr: np.ndarray) -> None:
    """The rank AUC can differ from roc_auc_score in the last bit, and GridSearchCV breaks exact ties by grid
    order: rescore the contenders for the best mean with roc_auc_score itself (in place), so the choice is
    GridSearchCV's."""
    means = np.average(scores, axis=1)
    if not np.isnan(means).all():
        contenders = np.flatnonzero(means >= np.nanmax(means) - 1e-9)
        for cj in contenders:
            for k, val in enumerate(vals):
                scores[cj, k] = _safe_auc(y_tr[val], oof[cj, val])


# --------------------------------------------------------------------------------------------------------------
# Approximate engine: Tensor-Sketch features and a linear SVM (cadx.sketch)
# --------------------------------------------------------------------------------------------------------------


def _approx_scalers(X: Any, order: np.ndarray, n_tr: int, inner_fit: Sequence[np.ndarray], block_columns: int
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """The full-width scalers ``(keep, mean, inv_scale)`` of the outer training rows (first) and of each inner
    training part (rows of ``X[order]``: training rows first), in one pass over the columns; and the number of
    features not constant over all rows."""
    p = X.shape[1]
    scalers = [(np.zeros(p, dtype=bool), np.zeros(p), np.zeros(p)) for _ in range(1 + len(inner_fit))]
    n_nonconstant = 0
    for j0 in range(0, p, block_columns):
        j1 = min(p, j0 + block_columns)
        Xb = np.asarray(np.asarray(X[:, j0:j1])[order], dtype=np.float64, order="C")
        has_nan = bool(np.isnan(Xb).any())
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            n_nonconstant += int((np.nanmax(Xb, axis=0) > np.nanmin(Xb, axis=0)).sum())
        XT = Xb[:n_tr]
        for (keep, mean, inv), rows in zip(scalers, [np.arange(n_tr), *inner_fit], strict=True):
            keep[j0:j1], mean[j0:j1], inv[j0:j1] = _fit_scaler(XT[rows], has_nan)
    return scalers, n_nonconstant


def _approx_sketches(X: Any, rows: np.ndarray, scaler: tuple[np.ndarray, np.ndarray, np.ndarray],
                     hashes: Any, block_columns: int) -> np.ndarray:
    """Count sketches (max_degree, len(rows), D) of ``X[rows]`` standardised with ``scaler``, streamed by column
    blocks (memory ``O(len(rows) · (block + max_degree · D))``, whatever the width)."""
    from cadx.sketch import count_sketch_add

    _, mean, inv = scaler
    p = X.shape[1]
    out = np.zeros((hashes.max_degree, len(rows), hashes.n_components))
    for j0 in range(0, p, block_columns):
        j1 = min(p, j0 + block_columns)
        if not inv[j0:j1].any():
            continue  # every feature of the block dropped by the zero-variance filter
        Xb = np.asarray(np.asarray(X[:, j0:j1])[rows], dtype=np.float64, order="C")
        Z = _standardize(Xb, mean[j0:j1], inv[j0:j1], bool(np.isnan(Xb).any()), Xb)
        count_sketch_add(out, Z, hashes, j0)
    if not np.isfinite(out).all():
        raise ValueError("features contain infinite values (or overflow float64 after standardisation); "
                         "allowed are finite numbers and NaN (missing, imputed)")
    return out


def _approx_fold(X: Any, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 inner: Sequence[tuple[np.ndarray, np.ndarray]], candidates: Sequence[dict[str, Any]],
                 block_columns: int, components: int, sketch_seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray, int, int, float]:
    """The approximate engine's outer fold: the same inner grid search (one scaler per inner training part), refit
    and decision values as the Gram engine, on Tensor-Sketch features with a linear SVM.

    Returns ``(decision, scores, oof, best, oof_best, n_kept, n_nonconstant, sketch_seconds)``.
    """
    from cadx.sketch import linear_svm_decision, poly_features, sketch_hashes

    t0 = time.perf_counter()
    order = np.concatenate([train, test])
    n_tr = len(train)
    position = np.empty(len(y), dtype=np.int64)
    position[train] = np.arange(n_tr)
    inner_pos = [(position[a], position[v]) for a, v in inner]
    y_tr = y[train]
    b = max(1, int(block_columns))
    scalers, n_nonconstant = _approx_scalers(X, order, n_tr, [f for f, _ in inner_pos], b)
    hashes = sketch_hashes(int(X.shape[1]), max(int(c["degree"]) for c in candidates), int(components),
                           seed=sketch_seed)
    sketch_seconds = time.perf_counter() - t0
    scores = np.full((len(candidates), len(inner_pos)), np.nan)
    oof = np.zeros((len(candidates), n_tr))
    for k, (fit, val) in enumerate(inner_pos):
        t_sketch = time.perf_counter()
        S = _approx_sketches(X, train, scalers[1 + k], hashes, b)
        sketch_seconds += time.perf_counter() - t_sketch
        y_fit = y_tr[fit]
        for ci, c in enumerate(candidates):
            F = poly_features(S, hashes, gamma=c["gamma"], coef0=c["coef0"], degree=c["degree"])
            dec = linear_svm_decision(F[fit], y_fit, F[val], C=c["C"])
            oof[ci, val] = dec
            scores[ci, k] = _rank_auc(y_tr[val], dec)
        del S
    _rescore_contenders(scores, oof, [v for _, v in inner_pos], y_tr)
    best = _best_index(scores)
    c = candidates[best]
    t_sketch = time.perf_counter()
    S = _approx_sketches(X, order, scalers[0], hashes, b)
    sketch_seconds += time.perf_counter() - t_sketch
    F = poly_features(S, hashes, gamma=c["gamma"], coef0=c["coef0"], degree=c["degree"])
    decision = linear_svm_decision(F[:n_tr], y_tr, F[n_tr:], C=c["C"])
    return decision, scores, oof, best, oof[best], int(scalers[0][0].sum()), n_nonconstant, sketch_seconds


def _fit_platt(f: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid ``P(y=1|f) = 1/(1+exp(-(A f + B)))`` with ``A >= A_min > 0``.

    Maximum likelihood with Platt's smoothed targets ``(N₊+1)/(N₊+2)`` and ``1/(N₋+2)``, on standardised
    ``f`` (for conditioning), by bounded L-BFGS-B; deterministic.
    """
    f = np.asarray(f, dtype=np.float64)
    mu, sd = float(np.mean(f)), float(np.std(f))
    if not np.isfinite(sd) or sd == 0:
        sd = 1.0
    u = (f - mu) / sd
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta
        z = a * u + b
        # -[t log s(z) + (1-t) log(1-s(z))] = logaddexp(0, z) - t z
        value = np.sum(np.logaddexp(0.0, z) - t * z)
        s = 0.5 * (1.0 + np.tanh(0.5 * z))
        r = s - t
        return value, np.array([np.dot(r, u), np.sum(r)])

    prior = math.log((n_pos + 1.0) / (n_neg + 1.0))
    res = minimize(nll, x0=np.array([1.0, prior]), jac=True, method="L-BFGS-B",
                   bounds=[(_PLATT_MIN_SLOPE, None), (None, None)])
    a, b = (float(v) for v in res.x)
    a = max(a, _PLATT_MIN_SLOPE)
    return a / sd, b - a * mu / sd


def _calibrate(f: np.ndarray, y: np.ndarray) -> tuple[float, float, float, bool]:
    """Platt's sigmoid of :func:`_fit_platt` plus what the slope floor hid.

    Returns ``(A, B, A_free, clamped)``: the sigmoid used (``A >= A_min``), the maximum-likelihood slope without
    the floor (in decision-value units; ``<= 0`` when the inner cross-validated decision values rank the classes
    the wrong way round or not at all) and whether the floor was active. The negative log-likelihood is convex in
    ``(A, B)``, so when the bounded optimum lies inside the bound it is the free optimum and ``A_free = A``.
    """
    a, b = _fit_platt(f, y)
    f = np.asarray(f, dtype=np.float64)
    sd = float(np.std(f))
    sd = sd if np.isfinite(sd) and sd > 0 else 1.0
    clamped = bool(a * sd <= _PLATT_MIN_SLOPE * (1.0 + 1e-6))
    if not clamped:
        return a, b, a, False
    u = (f - float(np.mean(f))) / sd
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * u + theta[1]
        r = 0.5 * (1.0 + np.tanh(0.5 * z)) - t
        return np.sum(np.logaddexp(0.0, z) - t * z), np.array([np.dot(r, u), np.sum(r)])

    res = minimize(nll, x0=np.array([0.0, math.log((n_pos + 1.0) / (n_neg + 1.0))]), jac=True, method="L-BFGS-B")
    return a, b, float(res.x[0]) / sd, True


OPERATING_POINT_RULE = ("training prevalence quantile: the k-th highest inner cross-validated decision value of "
                        "the training fold, k = its malignant cases, so that the fold's training data are called "
                        "malignant as often as they are malignant (test data not used)")
"""How :func:`operating_point` chooses a fold's threshold (recorded with each experiment)."""


def operating_point(inner_decision: Any, y_train: Any) -> float:
    """A fold's operating point from its training data only: the decision value at and above which a case is
    called malignant (:data:`OPERATING_POINT_RULE`).

    A fixed probability threshold (0.5) calls every case benign when the probabilities sit below 0.5, as they do
    on a small cohort with a minority of malignant cases or in a fold whose Platt slope is held at its floor; the
    decision values still rank the cases, and this quantile of the inner cross-validated ones keeps the training
    prevalence.
    """
    f = np.sort(np.asarray(inner_decision, dtype=np.float64))[::-1]
    n_pos = int(np.sum(np.asarray(y_train) == 1))
    if f.size == 0 or n_pos == 0:
        return float("inf")  # no malignant training case: nothing is called malignant
    return float(f[min(n_pos, f.size) - 1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def _zscore_params(f: np.ndarray) -> tuple[float, float]:
    """Mean and SD (ddof=0) of a classifier's inner cross-validated decision values on one training fold (SD 1 when
    they are constant), the standardisation of :func:`z_vote`."""
    f = np.asarray(f, dtype=np.float64)
    sd = float(np.std(f))
    return float(np.mean(f)), sd if np.isfinite(sd) and sd > 0 else 1.0


@dataclass
class _FoldOutput:
    decision: np.ndarray
    proba: np.ndarray
    best_index: int
    scores: np.ndarray
    platt: tuple[float, float]
    platt_free_slope: float
    platt_clamped: bool
    inner_mean: float
    inner_sd: float
    n_kept: int
    n_nonconstant: int
    gram_seconds: float
    svm_seconds: float
    seconds: float
    gram_engine: str = "numpy"
    model: FoldModel | None = None
    operating_point: float = float("nan")  # NaN: a checkpoint written before operating points existed


def _fold_model(keep: np.ndarray, mean: np.ndarray, scale: np.ndarray, support: np.ndarray, svc: SVC, c: dict[str, Any],
                platt: tuple[float, float], test: np.ndarray, decision: np.ndarray, proba: np.ndarray) -> FoldModel:
    return FoldModel(keep=np.asarray(keep, dtype=bool), mean=np.where(keep, mean, 0.0).astype(np.float64),
                     scale=np.where(keep, scale, 1.0).astype(np.float64), support=np.asarray(support, np.int64),
                     dual_coef=np.asarray(svc.dual_coef_[0], dtype=np.float64), intercept=float(svc.intercept_[0]),
                     gamma=float(c["gamma"]), coef0=float(c["coef0"]), degree=int(c["degree"]), C=float(c["C"]),
                     platt_a=float(platt[0]), platt_b=float(platt[1]), test=np.asarray(test, np.int64),
                     test_decision=np.asarray(decision, np.float64), test_proba=np.asarray(proba, np.float64))


def _run_fold(source: Any, y: np.ndarray, train: np.ndarray, test: np.ndarray,
              inner: Sequence[tuple[np.ndarray, np.ndarray]], grid: Mapping[str, list[Any]], engine: str,
              block_columns: int, name: str = "X", gram_engine: str | None = None,
              keep_model: bool = False, components: int = 0, sketch_seed: int = 0) -> _FoldOutput:
    """One outer fold: inner grid search, refit on the outer training set, decision values for its test set
    (and, with ``keep_model``, the fitted model: :class:`cadx.foldmodel.FoldModel`)."""
    t0 = time.perf_counter()
    _, candidates = _check_grid(grid)
    X = _load(source, len(y), name)
    position = np.empty(len(y), dtype=np.int64)
    position[train] = np.arange(len(train))
    inner_pos = [(position[a], position[b]) for a, b in inner]
    y_tr = y[train]
    if engine == "approx":
        decision, scores, oof, best, oof_best, n_kept, n_nonconstant, sketch_s = _approx_fold(
            X, y, train, test, inner, candidates, block_columns, components, sketch_seed)
        t1 = t0 + sketch_s  # the sketching counts as the fold's "Gram" time, the linear fits as its SVM time
        keep_model = False  # a linear model on sketch features is no FoldModel (cadx.foldmodel: kernel SVMs)
    elif engine == "gram":
        gram_engine = resolve_gram_engine(gram_engine)  # here, in the worker: its own CUDA device, if any
        scalers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = [] if keep_model else None
        G_outer, G_inner, n_kept, n_nonconstant = _fold_grams(X, train, test, inner, block_columns=block_columns,
                                                              gram_engine=gram_engine, scaler_out=scalers)
        t1 = time.perf_counter()
        scores, oof = _grid_search_gram(G_inner, inner_pos, y_tr, candidates)
        best = _best_index(scores)
        c = candidates[best]
        n_tr = len(train)
        svc = SVC(kernel="precomputed", C=c["C"])
        svc.fit(_poly(np.ascontiguousarray(G_outer[:n_tr, :n_tr]), c["gamma"], c["coef0"], c["degree"]), y_tr)
        decision = svc.decision_function(
            _poly(np.ascontiguousarray(G_outer[n_tr:, :n_tr]), c["gamma"], c["coef0"], c["degree"]))
        oof_best = oof[best]
        if keep_model:
            keep, mean, inv = (np.concatenate(parts) for parts in zip(*(scalers or []), strict=True))
            fitted = (keep, mean, np.where(keep, 1.0 / np.where(keep, inv, 1.0), 1.0), train[svc.support_], svc, c)
    else:
        t_load = time.perf_counter()
        Xf = np.asarray(X, dtype=np.float64)
        has_nan = bool(np.isnan(Xf).any())
        search = make_plain_pipeline(grid=grid, cv=inner_pos, impute=has_nan)
        search.fit(Xf[train], y_tr)
        decision = search.decision_function(Xf[test])
        best = int(search.best_index_)
        scores = np.stack([search.cv_results_[f"split{k}_test_score"] for k in range(len(inner_pos))], axis=1)
        oof_best = cross_val_predict(clone(search.best_estimator_), Xf[train], y_tr, cv=inner_pos,
                                     method="decision_function")
        keep = VarianceThreshold(0.0).fit(Xf[train]).get_support()
        n_kept = int(keep.sum())
        if keep_model:
            pipe = search.best_estimator_
            keep = pipe.named_steps["variance"].get_support()
            mean, scale = np.zeros(len(keep)), np.ones(len(keep))
            mean[keep], scale[keep] = pipe.named_steps["scaler"].mean_, pipe.named_steps["scaler"].scale_
            fitted = (keep, mean, scale, train[pipe.named_steps["svc"].support_], pipe.named_steps["svc"],
                      candidates[best])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            n_nonconstant = int((np.nanmax(Xf, 0) > np.nanmin(Xf, 0)).sum())
        t1 = t_load
    a, b, free_slope, clamped = _calibrate(oof_best, y_tr)
    proba = _sigmoid(a * decision + b)
    inner_mean, inner_sd = _zscore_params(oof_best)
    threshold = operating_point(oof_best, y_tr)
    model = _fold_model(*fitted, (a, b), test, decision, proba) if keep_model else None
    t2 = time.perf_counter()
    return _FoldOutput(decision=np.asarray(decision, dtype=np.float64), proba=proba, best_index=best,
                       scores=scores, platt=(a, b), platt_free_slope=free_slope, platt_clamped=clamped,
                       inner_mean=inner_mean, inner_sd=inner_sd, n_kept=n_kept, n_nonconstant=n_nonconstant,
                       gram_seconds=t1 - t0 if engine in ("gram", "approx") else 0.0, svm_seconds=t2 - t1,
                       seconds=t2 - t0,
                       gram_engine=(gram_engine or "numpy") if engine == "gram" else "numpy", model=model,
                       operating_point=threshold)


# --------------------------------------------------------------------------------------------------------------
# Scheduling: sequential, joblib (loky) or Dask
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _backend(n_jobs: int | None, scheduler: str | None) -> Iterator[tuple[str, int]]:
    address = scheduler if scheduler is not None else os.environ.get(_DASK_ENV) or None
    if address:
        from distributed import Client
        from joblib import parallel_config

        client = Client(address, set_as_default=False)  # type: ignore[no-untyped-call]
        try:
            with parallel_config(backend="dask", client=client, wait_for_workers_timeout=60):
                yield "dask", -1
        finally:
            client.close()  # type: ignore[no-untyped-call]
        return
    if n_jobs is None or n_jobs == 1:
        yield "sequential", 1
    else:
        yield "loky", n_jobs


_FOLD_ARRAYS = ("decision", "proba", "scores")
_FOLD_SCALARS = ("best_index", "platt_free_slope", "platt_clamped", "inner_mean", "inner_sd", "n_kept", "n_nonconstant",
                 "gram_seconds", "svm_seconds", "seconds")


def _encode_fold(out: _FoldOutput) -> bytes:
    """A fold's output as ``.npz`` bytes (exact float64 values; loaded back without pickle)."""
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {k: np.asarray(getattr(out, k), dtype=np.float64) for k in _FOLD_ARRAYS}
    arrays["platt"] = np.asarray(out.platt, dtype=np.float64)
    arrays.update({k: np.asarray(getattr(out, k)) for k in _FOLD_SCALARS})
    arrays["gram_engine"] = np.asarray(np.str_(out.gram_engine))
    arrays["operating_point"] = np.asarray(out.operating_point, dtype=np.float64)
    if out.model is not None:
        arrays["model"] = np.frombuffer(out.model.to_bytes(), dtype=np.uint8)
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def _decode_fold(payload: bytes) -> _FoldOutput:
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return _FoldOutput(
            decision=data["decision"], proba=data["proba"], scores=data["scores"],
            platt=(float(data["platt"][0]), float(data["platt"][1])), best_index=int(data["best_index"]),
            platt_free_slope=float(data["platt_free_slope"]), platt_clamped=bool(data["platt_clamped"]),
            inner_mean=float(data["inner_mean"]), inner_sd=float(data["inner_sd"]),
            n_kept=int(data["n_kept"]), n_nonconstant=int(data["n_nonconstant"]),
            gram_seconds=float(data["gram_seconds"]), svm_seconds=float(data["svm_seconds"]),
            seconds=float(data["seconds"]),
            gram_engine=str(data["gram_engine"]) if "gram_engine" in data.files else "numpy",
            operating_point=float(data["operating_point"]) if "operating_point" in data.files else float("nan"),
            model=FoldModel.from_bytes(data["model"].tobytes(), where="checkpointed fold model")
            if "model" in data.files else None)


def _unit_key(key: Any) -> str:
    return "/".join(str(part) for part in (key if isinstance(key, tuple) else (key,)))


def _check_checkpoint(checkpoint: Any) -> None:
    if checkpoint is not None and not (callable(getattr(checkpoint, "load", None))
                                       and callable(getattr(checkpoint, "save", None))):
        raise TypeError("checkpoint must have load(unit) -> bytes | None and save(unit, payload) methods; got "
                        f"{type(checkpoint).__name__}")


def _run_jobs(jobs: Sequence[tuple[Any, tuple[Any, ...], dict[str, Any]]], *, n_jobs: int | None,
              scheduler: str | None, progress: Progress | None, labels: Sequence[str], checkpoint: Any = None
              ) -> tuple[dict[Any, _FoldOutput], str]:
    """Run ``_run_fold`` jobs ``(key, args, kwargs)``; returns ``{key: output}`` and the backend name.

    With a ``checkpoint`` store, a unit found there is not computed again; every computed unit is saved to it as
    soon as it finishes (in the calling process), so a run killed half-way loses at most the units in progress.
    """
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer))
                               or n_jobs == 0):
        raise ValueError(f"n_jobs must be a non-zero integer (-1 = all cores) or None; got {n_jobs!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable(done, total, message) or None; got {type(progress).__name__}")
    _check_checkpoint(checkpoint)
    total = len(jobs)
    results: dict[Any, _FoldOutput] = {}
    if checkpoint is not None:  # restored units first, so progress reports them at once
        for key, _args, _kwargs in jobs:
            payload = checkpoint.load(_unit_key(key))
            if payload is not None:
                out = _decode_fold(payload)
                if out.model is None and _kwargs.get("keep_model"):
                    continue  # checkpointed before models were kept: this unit is computed again
                results[key] = out
        if results and progress is not None:
            progress(len(results), total, f"{len(results)} of {total} units restored from checkpoints")
        label_of = dict(zip((j[0] for j in jobs), labels, strict=True))
        labels = [label_of[j[0]] for j in jobs if j[0] not in results]
        jobs = [j for j in jobs if j[0] not in results]

    def finished(key: Any, out: _FoldOutput, label: str) -> None:
        results[key] = out
        if checkpoint is not None:
            checkpoint.save(_unit_key(key), _encode_fold(out))
        if progress is not None:
            progress(len(results), total, label)

    with _backend(n_jobs, scheduler) as (backend, workers):
        if backend == "sequential":
            for (key, args, kwargs), label in zip(jobs, labels, strict=True):
                finished(key, _run_fold(*args, **kwargs), label)
        else:
            def keyed(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, _FoldOutput]:
                return key, _run_fold(*args, **kwargs)

            label_of = dict(zip((j[0] for j in jobs), labels, strict=True))
            parallel = Parallel(n_jobs=workers, return_as="generator_unordered")
            stream = parallel(delayed(keyed)(key, args, kwargs) for key, args, kwargs in jobs)
            for key, out in stream:
                finished(key, out, label_of[key])
    return results, backend


def _assemble(outputs: Sequence[_FoldOutput], y: np.ndarray, groups: np.ndarray,
              splits: tuple[tuple[np.ndarray, np.ndarray], ...],
              inner_splits: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...], candidates: Sequence[dict[str, Any]],
              n_features: int, seed: int, engine: str, seconds: float) -> CvResult:
    n = len(y)
    decision = np.full(n, np.nan)
    proba = np.full(n, np.nan)
    fold = np.full(n, -1, dtype=np.int64)
    fold_auc = np.empty(len(splits))
    fold_auc_proba = np.empty(len(splits))
    for k, ((_, test), out) in enumerate(zip(splits, outputs, strict=True)):
        decision[test] = out.decision
        proba[test] = out.proba
        fold[test] = k
        fold_auc[k] = _safe_auc(y[test], out.decision)
        fold_auc_proba[k] = _safe_auc(y[test], out.proba)
    return CvResult(
        decision=decision, proba=proba, fold=fold, y=y, groups=groups, fold_auc=fold_auc,
        fold_auc_proba=fold_auc_proba,
        best_params=tuple(dict(candidates[o.best_index]) for o in outputs),
        best_inner_score=np.array([np.average(o.scores, axis=1)[o.best_index] for o in outputs]),
        inner_scores=np.stack([o.scores for o in outputs]),
        platt=np.array([o.platt for o in outputs]),
        platt_free_slope=np.array([o.platt_free_slope for o in outputs]),
        platt_clamped=np.array([o.platt_clamped for o in outputs], dtype=bool),
        inner_decision_mean=np.array([o.inner_mean for o in outputs]),
        inner_decision_sd=np.array([o.inner_sd for o in outputs]),
        operating_point=np.array([o.operating_point for o in outputs]),
        n_features=n_features,
        n_features_kept=np.array([o.n_kept for o in outputs]),
        splits=splits, inner_splits=inner_splits,
        gram_seconds=np.array([o.gram_seconds for o in outputs]),
        svm_seconds=np.array([o.svm_seconds for o in outputs]),
        fold_seconds=np.array([o.seconds for o in outputs]),
        seconds=seconds, seed=seed, engine=engine,
        gram_engine="+".join(sorted({o.gram_engine for o in outputs})),
        models=(tuple(o.model for o in outputs if o.model is not None)
                if all(o.model is not None for o in outputs) else None),
    )


# Said wherever the approximate engine runs, until its agreement with the exact engine is shown within 0.01 AUC
# (issue 29): on MIAS (82 ROIs, near-chance features) its tap AUCs differed from exact by up to 0.12 at 2,048
# components, and the difference did not shrink with the sketch size (benchmarks/bench_approx_engine.py).
APPROX_NOT_VALIDATED = ("; NOT YET VALIDATED against the exact engine (on MIAS its tap AUCs differed by up to 0.12): "
                        "compare with --svm-engine exact on a subsample before quoting its numbers")


def resolve_svm_engine(requested: str, n_train: int) -> tuple[str, str]:
    """The engine that runs for ``requested`` (one of :data:`SVM_ENGINES`) with ``n_train`` outer-training ROIs.

    Returns
    -------
    engine : {"gram", "approx"}
        The ``engine`` argument of :func:`cross_validate_by_lesion` / :func:`sweep_layers`.
    reason : str
        Why, in words (recorded with the experiment and printed by the CLI).
    """
    if requested not in SVM_ENGINES:
        raise CadxInputError("svm_engine", f"got {requested!r}", f"use one of {', '.join(SVM_ENGINES)}")
    if requested == "exact":
        return "gram", "exact polynomial-kernel SVM (asked for)"
    if requested == "approx":
        return "approx", "Tensor-Sketch features and a linear SVM (asked for)" + APPROX_NOT_VALIDATED
    if n_train <= AUTO_EXACT_MAX_TRAIN:
        return "gram", (f"auto: {n_train:,} training ROIs <= {AUTO_EXACT_MAX_TRAIN:,}, so the exact "
                        "polynomial-kernel SVM")
    return "approx", (f"auto: {n_train:,} training ROIs > {AUTO_EXACT_MAX_TRAIN:,}, so Tensor-Sketch features and "
                      "a linear SVM (memory and time linear in n)" + APPROX_NOT_VALIDATED)


def _components(engine: str, components: int | None) -> int:
    from cadx.sketch import DEFAULT_COMPONENTS

    if components is None:
        return DEFAULT_COMPONENTS if engine == "approx" else 0
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 2:
        raise ValueError(f"components (the sketch size) must be an integer >= 2; got {components!r}")
    return int(components)


def _engine_kwargs(engine: str, components: int, seed: int) -> dict[str, Any]:
    """The approximate engine's extra job arguments (none for the others, whose jobs stay as they were)."""
    return {"components": components, "sketch_seed": seed} if engine == "approx" else {}


def _check_common(engine: str, block_columns: int, gram_engine: str | None = None) -> None:
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {list(_ENGINES)}; got {engine!r}")
    if gram_engine is not None and str(gram_engine).strip().lower() not in ("auto", *GRAM_ENGINES):
        raise ValueError(f"gram_engine must be one of {['auto', *GRAM_ENGINES]} (or None: $CADX_GRAM_ENGINE); "
                         f"got {gram_engine!r}")
    if isinstance(block_columns, bool) or not isinstance(block_columns, (int, np.integer)) or block_columns < 1:
        raise ValueError(f"block_columns must be a positive integer; got {block_columns!r}")


def _seeds(seed: int, repeats: int) -> list[int]:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer; got {repeats!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return [int(seed) + r for r in range(repeats)]


# --------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------


def cross_validate_by_lesion(X: FeatureSource, y: Any, groups: Any, *, patients: Any = None, n_folds: int = 5,
                             n_inner: int = 5, grid: Mapping[str, Sequence[Any]] | None = None, seed: int = 0,
                             repeats: int = 1, engine: str = "gram", n_jobs: int | None = 1,
                             scheduler: str | None = None, block_columns: int = _DEFAULT_BLOCK_COLUMNS,
                             progress: Progress | None = None, gram_engine: str | None = None,
                             checkpoint: Any = None, keep_models: bool = False,
                             outer_folds: Any = None, components: int | None = None) -> CvResult:
    """Nested cross-validation by lesion of the standardised polynomial-kernel SVM.

    Outer folds: ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)`` on the groups; in each
    outer training set an inner ``StratifiedGroupKFold(n_inner, shuffle=True, random_state=seed)`` grid search
    (ROC AUC) chooses ``(a, c, d)``, the SVM is refitted on the whole outer training set and scores the test
    fold. No lesion (no patient, when ``patients`` is given) is ever split between training and test, at
    either level.

    Parameters
    ----------
    X : array-like of shape (n_rois, n_features), np.memmap, path to a ``.npy`` file, or callable
        Features (NaN allowed: imputed inside training folds). A callable is called with no argument, in the
        worker, and must return the array (e.g. ``lambda: np.load(path, mmap_mode="r")``).
    y : array-like of shape (n_rois,)
        Two classes; the larger label (e.g. 1 = malignant) is the positive class.
    groups : array-like of shape (n_rois,)
        Lesion id of each ROI.
    patients : array-like of shape (n_rois,), optional
        Patient id of each ROI; when given the folds are built on patients (each lesion must map to one patient).
    n_folds, n_inner : int, default=5
        Outer and inner folds.
    grid : mapping, optional
        Parameter -> values (keys ``gamma``, ``coef0``, ``degree``, ``C``); default :func:`default_grid`.
    seed : int, default=0
        Seed of the fold assignment; results are deterministic for a seed.
    repeats : int, default=1
        With ``repeats > 1``, repeat with seeds ``seed, seed+1, ...``: the result is the first seed's and holds
        every seed's in ``runs``.
    engine : {"gram", "plain", "approx"}, default="gram"
        Fast exact Gram engine, scikit-learn's ``GridSearchCV`` (reference; slow for wide layers), or the
        approximate engine (Tensor-Sketch features and a linear SVM, :mod:`cadx.sketch`: memory and time linear
        in the number of ROIs; no fold models are kept).
    n_jobs : int or None, default=1
        Parallel outer folds with joblib (``-1`` = all cores). Ignored when a Dask scheduler is used.
    scheduler : str, optional
        Dask scheduler address; default ``$CADX_DASK_SCHEDULER``. When set, the fold jobs run on that cluster.
    block_columns : int, default=8192
        Columns streamed per block by the Gram engine; memory per job is about
        ``3 · 8 · n_rois · block_columns`` bytes plus six n_rois² Grams (≈150 MB for 607 ROIs), whatever the
        width.
    progress : callable(done, total, message), optional
        Called after each outer fold finishes.
    gram_engine : {"auto", "numpy", "torch-cpu", "torch-cuda"}, optional
        Where the Gram engine multiplies (default ``$CADX_GRAM_ENGINE``, else ``auto``: torch on CUDA when torch
        sees a GPU, numpy otherwise); see :mod:`cadx.gram`. Results agree between engines to rounding.
    checkpoint : object with ``load(unit) -> bytes | None`` and ``save(unit, payload)``, optional
        A store of finished units (one per seed and outer fold, ``unit`` like ``"X/0/3"``): units it holds are
        restored instead of computed, and each computed unit is saved as soon as it finishes, so an interrupted
        run resumed with the same store and the same inputs redoes only the missing units and returns exactly
        the numbers of an uninterrupted run. The caller keys the store by its inputs (data, grid, seeds).
    keep_models : bool, default=False
        Keep the first seed's fitted fold models (:attr:`CvResult.models`), e.g. to store them with an experiment.
    outer_folds : array-like of int, shape (n_rois,), optional
        A fixed outer fold id per ROI (``0 .. n_folds - 1``, whole lesions/patients per fold), e.g. a stored
        experiment's, instead of ``StratifiedGroupKFold``; only with ``repeats=1``. The inner splits are still
        drawn with ``seed`` from the labels given (a permutation test reruns the whole nested search this way).
    components : int, optional
        Sketch size ``D`` of the approximate engine (default :data:`cadx.sketch.DEFAULT_COMPONENTS`); each seed
        draws its own hashes from the seed.

    Returns
    -------
    CvResult
        The first seed's; with ``repeats > 1`` the others are in ``later_seeds`` and all of them, in seed order,
        in :attr:`CvResult.runs`.
    """
    _check_common(engine, block_columns, gram_engine)
    components = _components(engine, components)
    seeds = _seeds(seed, repeats)
    y01 = _check_labels(y)
    cv_groups = _cv_groups(groups, patients, len(y01))
    source = _as_source(X)
    p = int(_load(source, len(y01)).shape[1])
    grid, candidates = _check_grid(default_grid(p) if grid is None else grid)
    t0 = time.perf_counter()
    if outer_folds is not None and repeats != 1:
        raise ValueError(f"outer_folds fixes one fold assignment: give repeats=1 (got repeats={repeats})")
    plans = {s: _make_splits(y01, cv_groups, n_folds, n_inner, s, outer_folds) for s in seeds}
    jobs, labels = [], []
    for s in seeds:
        splits, inner_splits = plans[s]
        for k, ((train, test), inner) in enumerate(zip(splits, inner_splits, strict=True)):
            jobs.append((("X", s, k), (source, y01, train, test, inner, grid, engine, int(block_columns)),
                         {"gram_engine": gram_engine,
                          "keep_model": bool(keep_models) and s == seeds[0] and engine != "approx",
                          **_engine_kwargs(engine, components, s)}))
            labels.append(f"seed {s} fold {k + 1}/{n_folds}" if repeats > 1 else f"fold {k + 1}/{n_folds}")
    outputs, _ = _run_jobs(jobs, n_jobs=n_jobs, scheduler=scheduler, progress=progress, labels=labels,
                           checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    results = [
        _assemble([outputs[("X", s, k)] for k in range(n_folds)], y01, cv_groups, *plans[s], candidates, p, s, engine,
                  seconds)
        for s in seeds
    ]
    return replace(results[0], later_seeds=tuple(results[1:]))


def cross_validate_with_params(X: FeatureSource, reference: CvResult, *,
                               block_columns: int = _DEFAULT_BLOCK_COLUMNS,
                               gram_engine: str | None = None) -> CvResult:
    """Re-run ``reference``'s outer folds on other features ``X``, each with the ``(a, c, d)`` it chose there.

    No grid search: outer fold ``k`` is refitted on ``X`` with ``reference.best_params[k]`` (same splits, same
    standardisation, same Platt calibration on the inner cross-validated decision values). Comparing its
    :attr:`CvResult.auc_mean` with ``reference``'s separates two effects of a change of features (e.g. a
    reduced-precision forward pass): the change of the classifier at fixed parameters, and the grid search
    choosing other parameters.

    Parameters
    ----------
    X : feature source
        As for :func:`cross_validate_by_lesion`, with the rows of ``reference`` (same ROIs, same order).
    reference : CvResult
        A result of :func:`cross_validate_by_lesion` / :func:`sweep_layers` (one seed).
    block_columns, gram_engine
        As for :func:`cross_validate_by_lesion`.

    Returns
    -------
    CvResult
        With ``best_params`` those of ``reference`` and ``inner_scores`` of the single candidate per fold.
    """
    _check_common("gram", block_columns, gram_engine)
    if not isinstance(reference, CvResult):
        raise TypeError(f"reference must be a CvResult; got {type(reference).__name__}")
    y01 = reference.y
    source = _as_source(X)
    p = int(_load(source, len(y01)).shape[1])
    t0 = time.perf_counter()
    outputs = []
    for (train, test), inner, params in zip(reference.splits, reference.inner_splits, reference.best_params,
                                            strict=True):
        grid = {key: [params[key]] for key in _GRID_KEYS if key in params}
        outputs.append(_run_fold(source, y01, train, test, inner, grid, "gram", int(block_columns),
                                 gram_engine=gram_engine))
    result = _assemble(outputs, y01, reference.groups, reference.splits, reference.inner_splits, [{}], p,
                       reference.seed, "gram", time.perf_counter() - t0)
    return replace(result, best_params=tuple(dict(bp) for bp in reference.best_params))


def fold_auc(scores: Any, y: Any, folds: Any) -> np.ndarray:
    """AUC of ``scores`` within each fold.

    Parameters
    ----------
    scores, y, folds : array-like of shape (n_rois,)
        Out-of-fold scores, labels (two classes) and fold ids.

    Returns
    -------
    ndarray of shape (n_folds,)
        In the order of ``np.unique(folds)``; NaN for a fold holding one class.
    """
    scores, y01, folds = np.asarray(scores, dtype=np.float64), _check_labels(y), np.asarray(folds)
    if not (scores.shape == y01.shape == folds.shape):
        raise ValueError(f"scores, y and folds must have the same shape; got {scores.shape}, {y01.shape}, "
                         f"{folds.shape}")
    return np.array([_safe_auc(y01[folds == f], scores[folds == f]) for f in np.unique(folds)])


def soft_vote(p1: CvResult | Any, p2: CvResult | Any, *, folds1: Any = None, folds2: Any = None) -> np.ndarray:
    """Soft voting (Method C): ``(p1 + p2) / 2`` of two classifiers' out-of-fold probabilities.

    The two must come from the *same* folds (same groups, labels and seed), otherwise an ROI's two
    probabilities would come from models trained on different data and the average would not be a valid
    out-of-fold estimate.

    Parameters
    ----------
    p1, p2 : CvResult or array-like of shape (n_rois,)
        Results (their ``proba`` and ``fold`` are used) or probability arrays.
    folds1, folds2 : array-like of shape (n_rois,), optional
        Fold ids of ``p1`` / ``p2``; required for arrays, taken from a CvResult otherwise.

    Returns
    -------
    ndarray of shape (n_rois,)

    Raises
    ------
    ValueError
        If fold ids are missing, or differ between the two, or the shapes differ.
    """
    def unpack(p: CvResult | Any, folds: Any, name: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if isinstance(p, CvResult):
            if folds is not None and not np.array_equal(np.asarray(folds), p.fold):
                raise ValueError(f"folds{name[-1]} disagrees with {name}.fold")
            return np.asarray(p.proba, dtype=np.float64), p.fold, p.y
        if folds is None:
            raise ValueError(f"{name} is an array: give folds{name[-1]}= (its fold ids) so the folds can be "
                             "checked, or pass the CvResult")
        return np.asarray(p, dtype=np.float64), np.asarray(folds), None

    a, fa, ya = unpack(p1, folds1, "p1")
    b, fb, yb = unpack(p2, folds2, "p2")
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"p1 and p2 must be 1-D of the same length; got shapes {a.shape} and {b.shape}")
    if fa.shape != a.shape or fb.shape != b.shape:
        raise ValueError(f"fold ids must have one entry per ROI; got {fa.shape} and {fb.shape} for {a.shape}")
    if not np.array_equal(fa, fb):
        n_diff = int(np.sum(fa != fb))
        raise ValueError(f"the two classifiers were cross-validated on different folds ({n_diff} of {len(fa)} ROIs "
                         "differ); run both with the same groups, labels and seed")
    if ya is not None and yb is not None and not np.array_equal(ya, yb):
        raise ValueError("the two results have different labels y; they are not from the same ROIs")
    if not (np.all((a >= 0) & (a <= 1)) and np.all((b >= 0) & (b <= 1))):
        raise ValueError("probabilities must lie in [0, 1] (NaN not allowed)")
    mean: np.ndarray = (a + b) / 2.0
    return mean


def z_vote(r1: CvResult, r2: CvResult) -> np.ndarray:
    """Ensemble of standardised decision values: ``(z1 + z2) / 2``.

    Each classifier's out-of-fold decision values are z-scored with the mean and SD of *its own inner
    cross-validated decision values on the training fold* (:attr:`CvResult.decision_z`), then averaged. Unlike
    :func:`soft_vote` it does not pass through Platt's sigmoid, so a classifier whose calibration slope was held at
    the floor still counts with equal weight instead of silently dropping out of the ranking.

    Parameters
    ----------
    r1, r2 : CvResult
        Two results on the same folds (same groups, labels and seed).

    Returns
    -------
    ndarray of shape (n_rois,)
        Unbounded scores (not probabilities): larger means more likely malignant.

    Raises
    ------
    ValueError
        If the folds or labels differ, or a result lacks the inner decision statistics.
    """
    for name, r in (("r1", r1), ("r2", r2)):
        if not isinstance(r, CvResult):
            raise ValueError(f"{name} must be a CvResult (its folds and inner decision statistics are needed)")
    if r1.fold.shape != r2.fold.shape or not np.array_equal(r1.fold, r2.fold):
        raise ValueError("the two classifiers were cross-validated on different folds; run both with the same "
                         "groups, labels and seed")
    if not np.array_equal(r1.y, r2.y):
        raise ValueError("the two results have different labels y; they are not from the same ROIs")
    mean: np.ndarray = (r1.decision_z + r2.decision_z) / 2.0
    return mean


def sweep_layers(feature_sources: Mapping[str, FeatureSource], y: Any, groups: Any, *, patients: Any = None,
                 n_folds: int = 5, n_inner: int = 5, grid: Mapping[str, Sequence[Any]] | None = None, seed: int = 0,
                 repeats: int = 1, engine: str = "gram", n_jobs: int | None = 1, scheduler: str | None = None,
                 block_columns: int = _DEFAULT_BLOCK_COLUMNS, progress: Progress | None = None,
                 gram_engine: str | None = None, checkpoint: Any = None, keep_models: bool = False,
                 outer_folds: Any = None, components: int | None = None) -> SweepResult:
    """Cross-validate one classifier per CNN tap (the paper's Fig. 3), in parallel over taps and folds.

    Every (tap, repeat, outer fold) is one job, run sequentially (``n_jobs=1``), with joblib's loky processes
    (``n_jobs > 1`` or ``-1``) or, when ``scheduler`` / ``$CADX_DASK_SCHEDULER`` names a Dask scheduler
    (``tcp://host:port``), on that cluster through joblib's Dask backend. All taps use the same folds.

    Parameters
    ----------
    feature_sources : mapping of str to source
        Tap name -> features of shape (n_rois, n_features_tap): an array, a ``np.memmap`` (workers map the file),
        a path to a ``.npy`` file, or a cheap callable that returns the array (e.g. loads a memmap). With a
        remote Dask cluster, files must be visible to the workers at the same path.
    y, groups, patients, n_folds, n_inner, seed, repeats, engine, n_jobs, scheduler, block_columns, gram_engine
    outer_folds, components
        As for :func:`cross_validate_by_lesion`.
    grid : mapping, optional
        One grid for all taps; default :func:`default_grid` of each tap's width.
    progress : callable(done, total, message), optional
        Called after each job.
    checkpoint : object with ``load(unit) -> bytes | None`` and ``save(unit, payload)``, optional
        As for :func:`cross_validate_by_lesion`; one unit per (tap, seed, outer fold), ``unit`` like
        ``"fc6/0/3"``.
    keep_models : bool, default=False
        Keep every tap's fitted fold models of the first seed (``layer.results[0].models``).

    Returns
    -------
    SweepResult
    """
    if not isinstance(feature_sources, Mapping) or not feature_sources:
        raise ValueError("feature_sources must be a non-empty mapping of tap name -> features")
    _check_common(engine, block_columns, gram_engine)
    components = _components(engine, components)
    seeds = _seeds(seed, repeats)
    y01 = _check_labels(y)
    cv_groups = _cv_groups(groups, patients, len(y01))
    t0 = time.perf_counter()
    if outer_folds is not None and repeats != 1:
        raise ValueError(f"outer_folds fixes one fold assignment: give repeats=1 (got repeats={repeats})")
    plans = {s: _make_splits(y01, cv_groups, n_folds, n_inner, s, outer_folds) for s in seeds}
    sources, widths, grids, cands = {}, {}, {}, {}
    for name, src in feature_sources.items():
        sources[name] = _as_source(src)
        widths[name] = int(_load(sources[name], len(y01), name).shape[1])
        grids[name], cands[name] = _check_grid(default_grid(widths[name]) if grid is None else grid)
    jobs, labels = [], []
    for name in feature_sources:
        for s in seeds:
            splits, inner_splits = plans[s]
            for k, ((train, test), inner) in enumerate(zip(splits, inner_splits, strict=True)):
                jobs.append(((name, s, k), (sources[name], y01, train, test, inner, grids[name], engine,
                                            int(block_columns), name),
                             {"gram_engine": gram_engine,
                              "keep_model": bool(keep_models) and s == seeds[0] and engine != "approx",
                              **_engine_kwargs(engine, components, s)}))
                labels.append(f"{name} fold {k + 1}/{n_folds}" + (f" seed {s}" if repeats > 1 else ""))
    outputs, backend = _run_jobs(jobs, n_jobs=n_jobs, scheduler=scheduler, progress=progress, labels=labels,
                                 checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    layers = {}
    for name in feature_sources:
        per_seed = []
        for s in seeds:
            outs = [outputs[(name, s, k)] for k in range(n_folds)]
            per_seed.append(_assemble(outs, y01, cv_groups, *plans[s], cands[name], widths[name], s, engine,
                                      float(sum(o.seconds for o in outs))))
        all_auc = np.concatenate([r.fold_auc for r in per_seed])
        sd = float(np.mean([r.auc_sd for r in per_seed]))
        layers[name] = LayerSummary(
            name=name, n_features=widths[name],
            n_features_nonconstant=outputs[(name, seeds[0], 0)].n_nonconstant,
            auc_mean=float(np.mean(all_auc)), auc_sd=sd, auc_se=sd / math.sqrt(n_folds),
            seconds=float(sum(r.seconds for r in per_seed)), results=tuple(per_seed))
    return SweepResult(layers=layers, seconds=seconds, backend=backend)
