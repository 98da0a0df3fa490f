"""Reduced-precision (bf16/fp16 autocast) CNN features checked against fp32, the reference.

fp32 is the default and the reference of every cadx result. ``bf16`` and ``fp16`` run the network under
``torch.autocast`` (:data:`cadx.cnn.PRECISIONS`) for throughput; their features are stored apart from fp32's
(:func:`cadx.cnn.feature_preprocessing`). Two checks say what a reduced precision costs:

:func:`feature_agreement`
    Per tap, the relative error ``‖x − x₃₂‖_F / ‖x₃₂‖_F`` and the correlation of reduced-precision features with
    fp32 features of the same ROIs. :func:`sample_check` computes it on a sample of ROIs (both passes in memory);
    extraction at reduced precision records it (``ExtractionReport.precision_check``), so the loss is never silent.
:func:`sweep_agreement`
    The criterion of issue 16: per tap, the difference of the sweep's mean AUCs (reduced minus fp32) must not
    exceed :data:`AUC_TOLERANCE` (0.005). Optionally also the AUC at fp32's chosen ``(a, c, d)``
    (:func:`cadx.svm.cross_validate_with_params`), which separates the feature error from the grid search choosing
    other parameters.

Measured on the real MIAS ROIs (``benchmarks/bench_precision_mias.py``; see the README): neither bf16 (largest
difference 0.162) nor fp16 (0.052) met the AUC criterion, also at fp32's parameters, while the sweep itself is
stable to 10⁻³ relative feature noise: the error is the one autocast builds up inside the network (relative
0.1-0.17 for bf16, 0.008-0.016 for fp16, mostly from the early high-resolution layers). ``fp16-mixed`` (those
layers in fp32; EfficientNet-Lite0 only) passed with 0.0035, narrowly. So reduced precision stays opt-in, is never
mixed with fp32 features, and every reduced-precision extraction records its check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AUC_TOLERANCE",
    "MIAS_VERDICT",
    "FeatureAgreement",
    "SweepAgreement",
    "TapAgreement",
    "feature_agreement",
    "sample_check",
    "sweep_agreement",
]

AUC_TOLERANCE = 0.005
"""Largest |mean AUC difference| per tap between a reduced precision's sweep and fp32's (issue 16, item 3)."""

MIAS_VERDICT = {
    "bf16": "did not reproduce fp32's sweep AUCs on MIAS (largest difference 0.162 > 0.005)",
    "fp16": "did not reproduce fp32's sweep AUCs on MIAS (largest difference 0.052 > 0.005)",
    "fp16-mixed": "reproduced fp32's sweep AUCs on MIAS only narrowly (largest difference 0.0035 <= 0.005)",
}
"""What ``benchmarks/bench_precision_mias.py`` found for each reduced precision (82 MIAS ROIs, EfficientNet-Lite0)."""


@dataclass(frozen=True)
class FeatureAgreement:
    """Reduced-precision features of one tap against fp32 features of the same ROIs.

    Attributes
    ----------
    relative_error : float
        ``‖x − x₃₂‖_F / ‖x₃₂‖_F`` over all ROIs and features (0 when both are all zeros).
    correlation : float
        Pearson correlation of all values (NaN when either is constant).
    max_abs_error : float
        Largest absolute difference.
    n_rois : int
    """

    relative_error: float
    correlation: float
    max_abs_error: float
    n_rois: int

    def to_record(self) -> dict[str, float | int]:
        """JSON-ready dict (rounded to 6 significant digits)."""
        return {"relative_error": float(f"{self.relative_error:.6g}"),
                "correlation": float(f"{self.correlation:.6g}"),
                "max_abs_error": float(f"{self.max_abs_error:.6g}"), "n_rois": int(self.n_rois)}


def _as_matrix(values: Any, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a (n_rois, n_features) array; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values; the check needs finite features")
    return a


def feature_agreement(reference: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, FeatureAgreement]:
    """Per tap, how far ``other`` features are from the ``reference`` (fp32) features of the same ROIs.

    Parameters
    ----------
    reference, other : mapping of str to array of shape (n_rois, n_features)
        Tap -> features; the same taps, ROIs (rows, same order) and widths in both.

    Returns
    -------
    dict of str to FeatureAgreement
        In ``reference``'s tap order.
    """
    if set(reference) != set(other):
        raise ValueError(f"the taps differ: reference has {sorted(reference)}, other has {sorted(other)}")
    out = {}
    for tap in reference:
        a = _as_matrix(reference[tap], f"reference[{tap!r}]")
        b = _as_matrix(other[tap], f"other[{tap!r}]")
        if a.shape != b.shape:
            raise ValueError(f"tap {tap!r}: reference has shape {a.shape}, other {b.shape}; give the same ROIs")
        norm = float(np.linalg.norm(a))
        diff = float(np.linalg.norm(b - a))
        rel = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
        av, bv = a.ravel(), b.ravel()
        corr = float(np.corrcoef(av, bv)[0, 1]) if av.std() > 0 and bv.std() > 0 else float("nan")
        out[tap] = FeatureAgreement(relative_error=rel, correlation=corr,
                                    max_abs_error=float(np.abs(b - a).max()) if a.size else 0.0, n_rois=a.shape[0])
    return out


def sample_check(rois: Sequence[np.ndarray] | np.ndarray, *, backbone: Any, precision: str,
                 taps: Sequence[str] | None = None, batch_size: int = 16, device: Any = None,
                 num_threads: int | None = None) -> dict[str, FeatureAgreement]:
    """Extract ``rois`` (a sample) at fp32 and at ``precision`` in memory and compare them tap by tap.

    Parameters
    ----------
    rois : sequence of ndarray
        The sample of grey ROIs (e.g. the first 16 of an extraction).
    backbone : LoadedBackbone or str
        As for :func:`cadx.cnn.extract_features`.
    precision : {"bf16", "fp16", "fp32"}
        The precision to check (``fp32`` gives relative errors of 0).
    taps, batch_size, device, num_threads
        As for :func:`cadx.cnn.extract_features`; use the extraction's own ``batch_size`` and device.

    Returns
    -------
    dict of str to FeatureAgreement
    """
    from cadx.cnn import extract_features

    rois = list(rois)
    if not rois:
        raise ValueError("sample_check needs at least one ROI")
    size = min(batch_size, len(rois))
    ref = extract_features(rois, backbone=backbone, taps=taps, batch_size=size, device=device,
                           num_threads=num_threads, precision="fp32")
    low = extract_features(rois, backbone=backbone, taps=taps, batch_size=size, device=device,
                           num_threads=num_threads, precision=precision)
    return feature_agreement(ref, low)


@dataclass(frozen=True)
class TapAgreement:
    """One tap of :class:`SweepAgreement`.

    Attributes
    ----------
    tap : str
    auc_reference, auc_other : float
        Mean fold AUCs of the two sweeps (each with its own grid search).
    difference : float
        ``auc_other − auc_reference``.
    same_params_folds : int
        Outer folds (over all seeds) where both grid searches chose the same ``(a, c, d)``.
    n_folds : int
    auc_fixed : float or None
        Mean fold AUC of the other features at the reference's chosen parameters, when given.
    difference_fixed : float or None
        ``auc_fixed − auc_reference``.
    """

    tap: str
    auc_reference: float
    auc_other: float
    difference: float
    same_params_folds: int
    n_folds: int
    auc_fixed: float | None = None
    difference_fixed: float | None = None


@dataclass(frozen=True)
class SweepAgreement:
    """The AUC criterion over all taps (see :func:`sweep_agreement`)."""

    taps: tuple[TapAgreement, ...]
    tolerance: float

    @property
    def worst(self) -> float:
        """Largest |AUC difference| over the taps (grid search on both sides)."""
        return max(abs(t.difference) for t in self.taps)

    @property
    def worst_fixed(self) -> float | None:
        """Largest |AUC difference| at the reference's parameters, when they were evaluated."""
        fixed = [abs(t.difference_fixed) for t in self.taps if t.difference_fixed is not None]
        return max(fixed) if fixed else None

    @property
    def passed(self) -> bool:
        """Every tap's |AUC difference| is within the tolerance (the criterion uses the grid-searched AUCs)."""
        return self.worst <= self.tolerance

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(t.tap for t in self.taps if abs(t.difference) > self.tolerance)


def _check_sweep(sweep: Any, name: str) -> Mapping[str, Any]:
    layers = getattr(sweep, "layers", None)
    if not isinstance(layers, Mapping) or not layers:
        raise TypeError(f"{name} must be a SweepResult (cadx.svm.sweep_layers) with at least one tap")
    return layers


def sweep_agreement(reference: Any, other: Any, *, tolerance: float = AUC_TOLERANCE,
                    fixed: Any = None) -> SweepAgreement:
    """Compare two sweeps of the same ROIs, folds and grid: the reference (fp32) and another precision's.

    Parameters
    ----------
    reference, other : SweepResult
        :func:`cadx.svm.sweep_layers` results with the same taps and the same folds (same seeds).
    tolerance : float, default=AUC_TOLERANCE
        Largest allowed |mean AUC difference| per tap.
    fixed : mapping of str to CvResult or list of CvResult, optional
        Per tap, the other features evaluated at the reference's parameters
        (:func:`cadx.svm.cross_validate_with_params` of each seed's reference result).

    Returns
    -------
    SweepAgreement
    """
    if not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
            and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0; got {tolerance!r}")
    ref_layers, other_layers = _check_sweep(reference, "reference"), _check_sweep(other, "other")
    if set(ref_layers) != set(other_layers):
        raise ValueError(f"the sweeps cover different taps: {sorted(ref_layers)} vs {sorted(other_layers)}")
    rows = []
    for tap, a in ref_layers.items():
        b = other_layers[tap]
        if len(a.results) != len(b.results):
            raise ValueError(f"tap {tap!r}: {len(a.results)} seeds in reference, {len(b.results)} in other")
        same = total = 0
        for ra, rb in zip(a.results, b.results, strict=True):
            if ra.seed != rb.seed or len(ra.splits) != len(rb.splits) or not all(
                    np.array_equal(ta, tb) for (_, ta), (_, tb) in zip(ra.splits, rb.splits, strict=True)):
                raise ValueError(f"tap {tap!r}: the sweeps used different folds; compare runs with the same seed "
                                 "and ROIs")
            for pa, pb in zip(ra.best_params, rb.best_params, strict=True):
                same += int(pa == pb)
                total += 1
        auc_fixed = diff_fixed = None
        if fixed is not None and tap in fixed:
            runs = fixed[tap] if isinstance(fixed[tap], (list, tuple)) else [fixed[tap]]
            auc_fixed = float(np.mean(np.concatenate([r.fold_auc for r in runs])))
            diff_fixed = auc_fixed - a.auc_mean
        rows.append(TapAgreement(tap=tap, auc_reference=a.auc_mean, auc_other=b.auc_mean,
                                 difference=b.auc_mean - a.auc_mean, same_params_folds=same, n_folds=total,
                                 auc_fixed=auc_fixed, difference_fixed=diff_fixed))
    return SweepAgreement(taps=tuple(rows), tolerance=float(tolerance))
