"""Explicit features for the polynomial kernel by Tensor Sketch, and the linear SVM fitted on them.

The exact engine of :mod:`cadx.svm` needs ``n x n`` Gram matrices: memory ``O(n^2)`` and SVM fits that grow faster
than ``n^2``, out of reach at archive scale (tens of thousands of ROIs). The approximate engine replaces the kernel
``K(x, y) = (a xᵀy + c)^d`` by an inner product of explicit features ``φ(x)ᵀφ(y)`` of a fixed width ``D`` (the
*sketch size*) and fits a linear SVM on them: memory ``O(n·D)`` and time linear in ``n``.

The features are scikit-learn's :class:`~sklearn.kernel_approximation.PolynomialCountSketch` (Tensor Sketch; Pham &
Pagh 2013): with ``x' = [√a·x, √c]``, ``d`` count sketches ``C_k(x') = Σ_j s_k(j) x'_j e_{h_k(j)}`` (``h_k`` a random
bucket in ``0..D-1``, ``s_k`` a random sign) are multiplied in the Fourier domain,
``φ(x) = IFFT(Π_k FFT(C_k(x')))``, so that ``E[φ(x)ᵀφ(y)] = (x'ᵀy')^d = K(x, y)``. The arithmetic is scikit-learn's
(``tests/test_scale_engines.py`` checks the features against ``PolynomialCountSketch.transform`` with the same
hashes) but computed differently, for two reasons:

* **Streaming.** A count sketch is linear in ``x``, so it is accumulated over column blocks of the (standardised)
  feature matrix: the wide matrix is never held in memory, only ``d · n · D`` numbers.
* **Shared sketches.** ``√a`` and ``√c`` enter the count sketches linearly (a scale and one extra bucket), so the
  count sketches of one scaler serve every grid point ``(a, c, d)``: one pass over the data per scaler, not one per
  candidate. (scikit-learn's ``transform`` also loops over the columns in Python: minutes for a 10⁵-wide tap.)

One deliberate difference: when the layer is narrow enough (``p + 1 <= D``, e.g. a pooled tap), the *first* count
sketch puts every feature in a bucket of its own (``h_1(j) = j``, ``s_1 = +1``). The estimate stays unbiased (the
other factors are random), ``d = 1`` becomes exact, and the variance drops.

Linear SVM
----------
``LinearSVC(loss="hinge")`` (liblinear's dual coordinate descent) solves the same problem as the kernel SVM with
``C`` unchanged, except that liblinear regularises the intercept as a weight on a constant feature. That feature is
set to the root-mean-square norm of the training features (``intercept_scaling``), so the intercept costs about as
much as any direction of the data and the solution stays close to the kernel SVM's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.fft import irfft, rfft
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

__all__ = ["DEFAULT_COMPONENTS", "SketchHashes", "count_sketch_add", "hashes_from_sklearn", "linear_svm_decision",
           "poly_features", "sketch_hashes"]

DEFAULT_COMPONENTS = 1024
"""The default sketch size ``D``. Not yet shown to keep every tap within 0.01 AUC of the exact engine. On MIAS (82
ROIs, AlexNet random weights, avgmax-pooled taps, seed 0) the differences were, for D = 256, 1024, 2048: conv3
-0.001, -0.020, +0.051; pool5 -0.002, -0.054, -0.116. On so few ROIs, with chance-level features, the grid search's
discrete choice dominates those differences, not the sketch error (with one fixed kernel the error shrinks with D:
``tests/test_scale_engines.py``). Rerun ``benchmarks/bench_approx_engine.py`` on the ~600-ROI phantom set to choose
it."""

_MAX_ITER = 5000  # liblinear epochs; a non-converged fit is still a valid (slightly less optimal) classifier


@dataclass(frozen=True)
class SketchHashes:
    """The random buckets and signs of ``d`` count sketches of ``x' = [x, 1]`` (``p + 1`` inputs).

    Attributes
    ----------
    index : ndarray of int64, shape (max_degree, n_features + 1)
        Bucket ``h_k(j)`` in ``0 .. n_components - 1``; the last column is the constant (``√c``) input.
    sign : ndarray of float64, shape (max_degree, n_features + 1)
        ``s_k(j)`` in ``{-1, +1}``.
    n_components : int
        The sketch size ``D``.
    """

    index: np.ndarray
    sign: np.ndarray
    n_components: int

    @property
    def n_features(self) -> int:
        """Width ``p`` of the features sketched (without the constant input)."""
        return int(self.index.shape[1]) - 1

    @property
    def max_degree(self) -> int:
        """The highest kernel degree these hashes serve."""
        return int(self.index.shape[0])


def sketch_hashes(n_features: int, max_degree: int, n_components: int, *, seed: int = 0) -> SketchHashes:
    """Hashes for sketching ``n_features`` inputs up to degree ``max_degree`` into ``n_components`` buckets.

    Deterministic for ``(seed, n_features, n_components)``: every fold, split and grid point of one tap shares them,
    so the only randomness of the approximate engine is fixed by its record. The first sketch is the identity (a
    bucket per input) when ``n_features + 1 <= n_components`` (see the module docstring).
    """
    for name, value, low in (("n_features", n_features, 1), ("max_degree", max_degree, 1),
                             ("n_components", n_components, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    rng = np.random.default_rng([int(seed), int(n_features), int(n_components)])
    width = int(n_features) + 1
    index = rng.integers(0, n_components, size=(max_degree, width), dtype=np.int64)
    sign = rng.choice(np.array([-1.0, 1.0]), size=(max_degree, width))
    if width <= n_components:
        index[0] = np.arange(width)
        sign[0] = 1.0
    return SketchHashes(index=index, sign=sign, n_components=int(n_components))


def hashes_from_sklearn(fitted: Any) -> SketchHashes:
    """The hashes of a fitted ``PolynomialCountSketch`` with ``coef0 != 0`` (its constant input is the last
    column), to check :func:`poly_features` against its ``transform``."""
    return SketchHashes(index=np.asarray(fitted.indexHash_, dtype=np.int64),
                        sign=np.asarray(fitted.bitHash_, dtype=np.float64), n_components=int(fitted.n_components))


def _block_matrix(hashes: SketchHashes, k: int, j0: int, j1: int) -> sparse.csr_matrix:
    cols = hashes.index[k, j0:j1]
    return sparse.csr_matrix((hashes.sign[k, j0:j1], (np.arange(j1 - j0), cols)),
                             shape=(j1 - j0, hashes.n_components))


def count_sketch_add(out: np.ndarray, Z: np.ndarray, hashes: SketchHashes, j0: int) -> None:
    """Add the count sketches of the column block ``Z = X[:, j0:j0+b]`` to ``out`` (max_degree, n, D), in place."""
    j1 = j0 + Z.shape[1]
    if j1 > hashes.n_features:
        raise ValueError(f"columns {j0}..{j1} lie beyond the {hashes.n_features} features these hashes sketch")
    for k in range(out.shape[0]):
        out[k] += np.asarray(Z @ _block_matrix(hashes, k, j0, j1))


def poly_features(sketches: np.ndarray, hashes: SketchHashes, *, gamma: float, coef0: float,
                  degree: int) -> np.ndarray:
    """Tensor-Sketch features ``φ(x)`` (n, D) with ``E[φ(x)ᵀφ(y)] = (gamma·xᵀy + coef0)^degree``, from the count
    sketches of ``x`` (without the constant input) made by :func:`count_sketch_add`."""
    if not 1 <= int(degree) <= sketches.shape[0]:
        raise ValueError(f"degree must be 1..{sketches.shape[0]} for these sketches; got {degree!r}")
    p = hashes.n_features
    root_gamma, root_coef0 = math.sqrt(float(gamma)), math.sqrt(max(float(coef0), 0.0))
    if float(coef0) < 0:
        raise ValueError(f"coef0 must be >= 0 for explicit polynomial features; got {coef0!r}")
    product = None
    for k in range(int(degree)):
        C = sketches[k] * root_gamma
        if root_coef0:
            C[:, hashes.index[k, p]] += hashes.sign[k, p] * root_coef0
        if degree == 1:
            return C
        spectrum = rfft(C, axis=1)
        product = spectrum if product is None else product * spectrum
    features: np.ndarray = irfft(product, n=hashes.n_components, axis=1)
    return features


def linear_svm_decision(F_fit: np.ndarray, y_fit: np.ndarray, F_eval: np.ndarray, *, C: float) -> np.ndarray:
    """Decision values on ``F_eval`` of ``LinearSVC(loss="hinge", C=C)`` fitted on ``(F_fit, y_fit)`` (labels 0/1;
    positive means class 1), its intercept regularised at the data's scale (module docstring)."""
    scale = float(np.sqrt(np.mean(np.einsum("ij,ij->i", F_fit, F_fit))))
    # tol: libsvm's (SVC's) default. The intercept's feature at the data's own scale, even far below 1: with a
    # floor of 1 the tiny kernels of the grid (a = 0.1/p, c = 0, d = 3) took thousands of epochs to converge.
    svm = LinearSVC(C=float(C), loss="hinge", dual=True, tol=1e-3, max_iter=_MAX_ITER, random_state=0,
                    intercept_scaling=scale if scale > 0 else 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # see _MAX_ITER
        svm.fit(F_fit, y_fit)
    decision: np.ndarray = np.asarray(svm.decision_function(F_eval), dtype=np.float64)
    return decision
