"""A segmentation scored against a reference outline (an expert's: DDSM overlays, CBIS-DDSM masks; a synthetic
phantom's truth): Dice and the mean boundary distance in mm.

* Dice ``2 |A n B| / (|A| + |B|)`` of the two filled masks (1 for identical masks, 0 for disjoint ones).
* Mean boundary distance: the symmetric mean surface distance. Each mask's boundary pixels (its inner boundary,
  :func:`skimage.segmentation.find_boundaries` ``mode="inner"``) are measured to the nearest boundary pixel of the
  other with a Euclidean distance transform (:func:`scipy.ndimage.distance_transform_edt`, in mm through
  ``sampling``), and the mean is taken over both sets of boundary pixels together. For two concentric discs of
  radii r and R it is R - r.

An empty segmentation (a failed one) scores Dice 0 and no boundary distance (None): there is no boundary to measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

__all__ = ["SegmentationScore", "score_segmentation", "dice", "mean_boundary_distance_mm", "score_summary"]


@dataclass(frozen=True)
class SegmentationScore:
    """How a segmentation agrees with its reference outline."""

    dice: float
    boundary_mm: float | None  # None when either mask is empty
    segmented_mm2: float
    reference_mm2: float


def _masks(mask: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(mask, dtype=bool), np.asarray(reference, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"the segmentation {a.shape} and the reference {b.shape} must be 2-D masks of one shape")
    return a, b


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (NaN when both are empty)."""
    a, b = _masks(mask, reference)
    total = int(a.sum()) + int(b.sum())
    return math.nan if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mean_boundary_distance_mm(mask: np.ndarray, reference: np.ndarray, *,
                              pixel_size_mm: float | Sequence[float]) -> float | None:
    """Symmetric mean distance in mm between the two masks' boundaries; None when either mask is empty."""
    a, b = _masks(mask, reference)
    if not a.any() or not b.any():
        return None
    sampling = np.broadcast_to(np.asarray(pixel_size_mm, dtype=np.float64), (2,))
    edge_a = find_boundaries(a, mode="inner")
    edge_b = find_boundaries(b, mode="inner")
    to_b = ndimage.distance_transform_edt(~edge_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~edge_a, sampling=sampling)
    distances = np.concatenate([to_b[edge_a], to_a[edge_b]])
    return float(distances.mean())


def score_segmentation(mask: np.ndarray, reference: np.ndarray, *,
                       pixel_size_mm: float | Sequence[float]) -> SegmentationScore:
    """Dice and mean boundary distance of ``mask`` against ``reference`` (boolean (H, W), same grid)."""
    a, b = _masks(mask, reference)
    area = float(np.prod(np.broadcast_to(np.asarray(pixel_size_mm, dtype=np.float64), (2,))))
    value = dice(a, b)
    return SegmentationScore(dice=0.0 if math.isnan(value) else value,
                             boundary_mm=mean_boundary_distance_mm(a, b, pixel_size_mm=pixel_size_mm),
                             segmented_mm2=float(a.sum()) * area, reference_mm2=float(b.sum()) * area)


def score_summary(dices: Sequence[float], boundaries: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median and interquartile range of Dice and of the boundary distance over ROIs (None where there are none)."""
    d = np.asarray(list(dices), dtype=np.float64)
    m = np.asarray([x for x in boundaries if x is not None], dtype=np.float64)

    def quartiles(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
        if values.size == 0:
            return None, None, None
        q1, q2, q3 = np.percentile(values, [25, 50, 75])
        return float(q2), float(q1), float(q3)

    d_med, d_q1, d_q3 = quartiles(d)
    b_med, b_q1, b_q3 = quartiles(m)
    return {"n": int(d.size), "dice_median": d_med, "dice_q1": d_q1, "dice_q3": d_q3,
            "boundary_mm_median": b_med, "boundary_mm_q1": b_q1, "boundary_mm_q3": b_q3}
