"""Occlusion sensitivity ("why did it say malignant?"): slide a grey patch over an ROI, re-score every occluded
copy, and map how much the score drops where each pixel was hidden (Zeiler & Fergus 2014). A direct
implementation: the scorer is any function of a batch of images, e.g. re-extract a CNN tap and apply a fold's
fitted SVM and Platt sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["DEGENERATE_DELTA_P", "OcclusionMap", "OcclusionScale", "colour_bar", "heat_overlay", "occlusion_map",
           "occlusion_scale", "patch_positions"]

# Below this largest |change in p1| (probability units) hiding any region moves p1 by less than a rounding of its
# three shown decimals would notice: the map's colours are then noise stretched to full red/blue, not an explanation.
DEGENERATE_DELTA_P = 0.01


@dataclass(frozen=True)
class OcclusionMap:
    """Result of :func:`occlusion_map`.

    Attributes
    ----------
    sensitivity : ndarray of float64, shape (H, W)
        At each pixel, the mean over the patches covering it of ``score(original) - score(occluded)``: positive
        where hiding the pixel lowers the score (the region supports the call), negative where it raises it.
    base_score : float
        Score of the unoccluded image.
    scores : ndarray of shape (n_patches,)
        Score with each patch hidden, in the order of ``positions``.
    positions : ndarray of int, shape (n_patches, 2)
        Top-left (row, column) of each patch.
    patch : int
    """

    sensitivity: np.ndarray
    base_score: float
    scores: np.ndarray
    positions: np.ndarray
    patch: int


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis of length ``size``: every ``stride``, plus the last so that the edge is covered."""
    if not (1 <= patch <= size) or stride < 1:
        raise ValueError(f"need 1 <= patch <= {size} and stride >= 1; got patch={patch}, stride={stride}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion_map(image: np.ndarray, score: Callable[[np.ndarray], np.ndarray], *, patch: int = 64,
                  stride: int = 32, fill: float | None = None, batch_size: int = 32) -> OcclusionMap:
    """Occlusion sensitivity of ``score`` for one image.

    Parameters
    ----------
    image : ndarray of shape (H, W)
    score : callable
        ``score(stack)`` with ``stack`` of shape (k, H, W) and the image's dtype, returning k scores.
    patch, stride : int, default=64, 32
        Side of the square patch and the step between patches, in pixels.
    fill : float, optional
        Value of the hidden pixels; default the image's mean (a grey patch with no edge of its own contrast).
    batch_size : int, default=32
        Occluded copies scored per call.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {image.shape}")
    rows = patch_positions(image.shape[0], patch, stride)
    cols = patch_positions(image.shape[1], patch, stride)
    positions = np.array([(r, c) for r in rows for c in cols], dtype=int)
    value = float(image.mean()) if fill is None else float(fill)
    if np.issubdtype(image.dtype, np.integer):
        value = float(np.round(value))
    base = np.asarray(score(image[None]), dtype=np.float64)
    if base.shape != (1,):
        raise ValueError(f"score must return one value per image; got shape {base.shape} for one image")
    scores = np.empty(len(positions), dtype=np.float64)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        stack = np.repeat(image[None], len(chunk), axis=0)
        for k, (r, c) in enumerate(chunk):
            stack[k, r:r + patch, c:c + patch] = value
        out = np.asarray(score(stack), dtype=np.float64)
        if out.shape != (len(chunk),):
            raise ValueError(f"score must return one value per image; got shape {out.shape} for {len(chunk)}")
        scores[start:start + len(chunk)] = out
    total = np.zeros(image.shape, dtype=np.float64)
    count = np.zeros(image.shape, dtype=np.float64)
    for (r, c), s in zip(positions, scores, strict=True):
        total[r:r + patch, c:c + patch] += base[0] - s
        count[r:r + patch, c:c + patch] += 1.0
    return OcclusionMap(sensitivity=total / count, base_score=float(base[0]), scores=scores, positions=positions,
                        patch=patch)


def heat_overlay(rgb: np.ndarray, sensitivity: np.ndarray, *, alpha: float = 0.55) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) with the map blended in: red where hiding a region lowers the score, blue where it
    raises it, transparent where it does nothing; scaled by the largest |value|."""
    if rgb.shape[:2] != sensitivity.shape:
        raise ValueError(f"image {rgb.shape[:2]} and map {sensitivity.shape} differ in size")
    scale = float(np.abs(sensitivity).max())
    strength = np.zeros(sensitivity.shape) if scale == 0 else sensitivity / scale
    colour = np.zeros(rgb.shape, dtype=np.float64)
    colour[..., 0] = 255.0 * (strength > 0)
    colour[..., 2] = 255.0 * (strength < 0)
    weight = alpha * np.abs(strength)[..., None]
    return np.clip(np.rint(rgb * (1.0 - weight) + colour * weight), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class OcclusionScale:
    """How to read a map: the colour scale in probability units and whether the map means anything.

    Attributes
    ----------
    max_abs : float
        The largest |Δp| of the map: full red is ``+max_abs``, full blue ``-max_abs`` (symmetric around 0).
    degenerate : bool
        The map explains nothing: its largest |Δp| is below :data:`DEGENERATE_DELTA_P` or the fold's Platt slope
        was held at its floor (p1 flat by construction).
    message : str or None
        Why, in words, when ``degenerate``.
    """

    max_abs: float
    degenerate: bool
    message: str | None


def occlusion_scale(sensitivity: np.ndarray, *, platt_clamped: bool = False,
                    threshold: float = DEGENERATE_DELTA_P) -> OcclusionScale:
    """The colour scale of ``sensitivity`` (in p units) and whether the fold is degenerate (see
    :class:`OcclusionScale`); ``platt_clamped``: the fold's SVM1 Platt slope was held at its floor."""
    max_abs = float(np.abs(np.asarray(sensitivity, dtype=np.float64)).max())
    reasons = []
    if platt_clamped:
        reasons.append("this fold's Platt slope was held at its floor (SVM1's inner cross-validated scores carried "
                       "no signal), so p1 is nearly flat by construction")
    if max_abs < threshold:
        reasons.append(f"hiding any region changes p1 by at most {max_abs:.4f}, below {threshold:g}")
    if not reasons:
        return OcclusionScale(max_abs=max_abs, degenerate=False, message=None)
    return OcclusionScale(max_abs=max_abs, degenerate=True, message=(
        "Degenerate fold: " + "; ".join(reasons) + ". The colours are stretched to the largest change however small: "
        "this map means nothing about the ROI."))


def colour_bar(max_abs: float, *, width: int = 512, height: int = 24, alpha: float = 0.55,
               background: int = 128) -> np.ndarray:
    """The legend of :func:`heat_overlay` (H, W, 3 uint8): left ``-max_abs`` (full blue), centre 0 (the grey
    background unchanged), right ``+max_abs`` (full red), blended over a uniform grey as the map is."""
    values = np.linspace(-1.0, 1.0, width) * (max_abs if max_abs > 0 else 1.0)
    strip = np.broadcast_to(values, (height, width))
    grey = np.full((height, width, 3), background, dtype=np.uint8)
    return heat_overlay(grey, np.asarray(strip) if max_abs > 0 else np.zeros((height, width)), alpha=alpha)
