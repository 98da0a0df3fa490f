"""The paper's open questions as analyses on any experiment (pure functions; arrays in, results out).

- :func:`error_agreement`: do the CNN (SVM1) and analytic (SVM2) classifiers err on the same cases? The 2 × 2
  table of right/wrong at a threshold, McNemar's exact test on the discordant cases, the Spearman correlation of
  p1 and p2, and the cases where the two disagree most.
- :func:`pc_feature_correlation`: which CNN features go with which analytic features? Pearson correlations between
  a tap's top principal components (of the standardised features) and each analytic feature.
- :func:`fused_features`: feature-level fusion (Antropova, Huynh & Giger 2017): the CNN and analytic features
  concatenated as one matrix, for one SVM ("Method D"; the SVM standardises every column inside its training folds).
- :func:`embedding_2d`: a t-SNE map of a tap's features for a curation view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _sstats

__all__ = ["ErrorAgreement", "PcCorrelation", "error_agreement", "pc_feature_correlation", "fused_features",
           "embedding_2d"]


@dataclass(frozen=True)
class ErrorAgreement:
    """Right/wrong agreement of two classifiers on the same cases.

    Attributes
    ----------
    table : ndarray of int, shape (2, 2)
        Rows: first classifier right / wrong; columns: second classifier right / wrong.
    n : int
        Cases.
    mcnemar_p : float
        Exact two-sided McNemar p-value: binomial test of ``table[0, 1]`` in ``table[0, 1] + table[1, 0]`` trials
        with p = 1/2 (1.0 when there is no discordant case).
    both_wrong_expected : float
        Cases both would get wrong if their errors were independent: errors1 · errors2 / n.
    error_correlation : float
        Phi coefficient of the two error indicators (NaN when one classifier makes no error or only errors).
    spearman_rho, spearman_p : float
        Spearman rank correlation of the two scores and its p-value.
    most_disagreeing : ndarray of int
        Indices of the cases with the largest |score1 − score2|, largest first.
    refusal : str or None
        Why φ and McNemar were not computed (then both are NaN): a classifier that calls every case one class has
        errors that are just the cases of the other class, so their "correlation" and McNemar's test would only
        restate the class counts.
    """

    table: np.ndarray
    n: int
    mcnemar_p: float
    both_wrong_expected: float
    error_correlation: float
    spearman_rho: float
    spearman_p: float
    most_disagreeing: np.ndarray
    refusal: str | None = None

    @property
    def both_wrong(self) -> int:
        return int(self.table[1, 1])


def _scores(name: str, values: Any, n: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} values but y has {n}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has {int((~np.isfinite(array)).sum())} missing or infinite values")
    return array


def error_agreement(score1: Any, score2: Any, y: Any, *, threshold: Any = 0.5, threshold2: Any = None,
                    top: int = 10, names: tuple[str, str] = ("the first classifier", "the second classifier"),
                    unit: str = "cases") -> ErrorAgreement:
    """Do two classifiers err on the same cases?

    Parameters
    ----------
    score1, score2 : array-like of shape (n,)
        Scores (e.g. out-of-fold decision values or probabilities); a case is called positive when its score is
        at least its threshold.
    y : array-like of shape (n,)
        Truth, 0/1.
    threshold : float or array-like of shape (n,), default=0.5
        The first classifier's threshold, one for all cases or one per case (e.g. each case's fold's operating
        point); also the second's unless ``threshold2`` is given.
    threshold2 : float or array-like of shape (n,), optional
    top : int, default=10
        How many of the most disagreeing cases to return.
    names, unit : the classifiers' and the cases' names, for the refusal's wording.

    φ and McNemar are refused (NaN, with :attr:`ErrorAgreement.refusal`) when a classifier calls every case one
    class.
    """
    truth = np.asarray(y)
    if truth.ndim != 1 or not np.isin(truth, (0, 1)).all():
        raise ValueError("y must be a one-dimensional array of 0/1 labels")
    n = len(truth)
    if n == 0:
        raise ValueError("no cases")
    s1, s2 = _scores("score1", score1, n), _scores("score2", score2, n)
    t1 = _scores("threshold", np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,)), n)
    t2 = t1 if threshold2 is None else _scores("threshold2", np.broadcast_to(
        np.asarray(threshold2, dtype=np.float64), (n,)), n)
    called1, called2 = s1 >= t1, s2 >= t2
    right1 = called1 == (truth == 1)
    right2 = called2 == (truth == 1)
    table = np.array([[np.sum(right1 & right2), np.sum(right1 & ~right2)],
                      [np.sum(~right1 & right2), np.sum(~right1 & ~right2)]], dtype=int)
    discordant = int(table[0, 1] + table[1, 0])
    mcnemar = 1.0 if discordant == 0 else float(_sstats.binomtest(int(table[0, 1]), discordant, 0.5).pvalue)
    wrong1, wrong2 = (~right1).astype(float), (~right2).astype(float)
    refusal = None
    for name, called in zip(names, (called1, called2), strict=True):
        if called.all() or not called.any():
            word = "malignant" if called.all() else "benign"
            refusal = (f"{name} calls every one of the {n} {unit} {word} at its threshold, so its errors are "
                       f"simply the {'benign' if word == 'malignant' else 'malignant'} {unit}: φ and McNemar "
                       "would restate the class counts, not compare the classifiers (not computed)")
            break
    if refusal is not None:
        phi, mcnemar = float("nan"), float("nan")
    elif wrong1.std() == 0 or wrong2.std() == 0:
        phi = float("nan")
    else:
        phi = float(np.corrcoef(wrong1, wrong2)[0, 1])
    if n >= 3 and np.ptp(s1) > 0 and np.ptp(s2) > 0:
        rho, p = _sstats.spearmanr(s1, s2)
        rho, p = float(rho), float(p)
    else:
        rho, p = float("nan"), float("nan")
    order = np.argsort(-np.abs(s1 - s2), kind="stable")[: max(int(top), 0)]
    both_wrong_expected = float(wrong1.sum() * wrong2.sum() / n)
    return ErrorAgreement(table=table, n=n, mcnemar_p=mcnemar, both_wrong_expected=both_wrong_expected,
                          error_correlation=phi, spearman_rho=rho, spearman_p=p, most_disagreeing=order,
                          refusal=refusal)


@dataclass(frozen=True)
class PcCorrelation:
    """Correlations of a feature matrix's principal components with named features.

    Attributes
    ----------
    correlation : ndarray of shape (n_components, n_features)
        Pearson r of each component's scores with each feature (pairwise complete cases; NaN where a feature is
        constant on them or fewer than 3 cases remain).
    explained_variance_ratio : ndarray of shape (n_components,)
        Share of the standardised features' total variance each component explains.
    feature_names : list of str
    """

    correlation: np.ndarray
    explained_variance_ratio: np.ndarray
    feature_names: list[str]

    def top_pairs(self, k: int = 10) -> list[tuple[int, str, float]]:
        """The ``k`` (component, feature, r) pairs with the largest |r|, largest first (components from 1)."""
        flat = np.where(np.isfinite(self.correlation), np.abs(self.correlation), -1.0).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        n_features = self.correlation.shape[1]
        return [(int(i // n_features) + 1, self.feature_names[i % n_features],
                 float(self.correlation.flat[i])) for i in order if flat[i] >= 0]


def _standardise(X: np.ndarray) -> np.ndarray:
    keep = X.std(axis=0) > 0
    if not keep.any():
        raise ValueError("every column of X is constant: no principal component")
    Z = X[:, keep]
    return (Z - Z.mean(axis=0)) / Z.std(axis=0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    a, b = a[ok], b[ok]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pc_feature_correlation(X: Any, F: Any, *, feature_names: list[str], n_components: int = 10) -> PcCorrelation:
    """Pearson correlation between the top principal components of ``X`` and each column of ``F``.

    ``X`` (e.g. a CNN tap, n × p, finite) is standardised (constant columns dropped) and decomposed by SVD; a
    component's sign is fixed so that its largest loading is positive. ``F`` (e.g. the 21 analytic features, n × q)
    may hold NaN (a failed segmentation): each correlation uses the cases where the feature is known.
    """
    X = np.asarray(X, dtype=np.float64)
    F = np.asarray(F, dtype=np.float64)
    if X.ndim != 2 or F.ndim != 2 or len(X) != len(F):
        raise ValueError(f"X and F must be 2-D with the same rows; got {X.shape} and {F.shape}")
    if F.shape[1] != len(feature_names):
        raise ValueError(f"F has {F.shape[1]} columns but {len(feature_names)} feature names")
    if not np.isfinite(X).all():
        raise ValueError("X has missing or infinite values")
    Z = _standardise(X)
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)
    k = int(min(n_components, len(S)))
    if k < 1:
        raise ValueError("no principal component")
    signs = np.sign(Vt[np.arange(k), np.argmax(np.abs(Vt[:k]), axis=1)])
    signs[signs == 0] = 1.0
    scores = U[:, :k] * S[:k] * signs
    variance = S**2
    ratio = variance[:k] / variance.sum()
    corr = np.array([[_pearson(scores[:, i], F[:, j]) for j in range(F.shape[1])] for i in range(k)])
    return PcCorrelation(correlation=corr, explained_variance_ratio=ratio, feature_names=list(feature_names))


def fused_features(*blocks: Any) -> np.ndarray:
    """Feature-level fusion: the blocks (n × p_i each, same rows) side by side as one float64 matrix.

    The SVM of ``cadx.svm`` drops constant columns and standardises every column within each training fold, so the
    concatenated raw features become concatenated standardised features without any leak from the test fold.
    """
    arrays = [np.asarray(b, dtype=np.float64) for b in blocks]
    if not arrays:
        raise ValueError("no feature block")
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(f"block {i} must be 2-D; got shape {a.shape}")
        if len(a) != len(arrays[0]):
            raise ValueError(f"block {i} has {len(a)} rows but block 0 has {len(arrays[0])}")
    return np.hstack(arrays)


def embedding_2d(X: Any, *, perplexity: float = 30.0, seed: int = 0, n_pca: int = 50) -> np.ndarray:
    """t-SNE map (n × 2) of the standardised rows of ``X`` after PCA to at most ``n_pca`` components.

    The perplexity is capped at (n − 1) / 3 so that small sets work; the map is deterministic for a seed.
    """
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 4:
        raise ValueError(f"t-SNE needs a 2-D matrix with at least 4 rows; got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X has missing or infinite values")
    Z = _standardise(X)
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    k = int(min(n_pca, len(S)))
    reduced = U[:, :k] * S[:k]
    perplexity = float(min(perplexity, (len(X) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(reduced)
