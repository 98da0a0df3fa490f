"""Method B: seeded lesion segmentation and analytic (hand-crafted) lesion features.

Huynh, Li & Giger (2016) segment the lesion from the marked centre "based on a multiple-transition-point,
gray-level, region-growing technique" and then compute size, shape, intensity, texture and margin features
(their refs. 14, 16, 17, from the Giger lab). This module reproduces that pipeline with scikit-image / scipy
building blocks.

Segmentation (`segment_lesion`)
-------------------------------
After Kupinski & Giger, "Automated seeded lesion segmentation on digital mammograms", IEEE TMI 17(4):510-517,
1998:

1. The ROI is scaled to 0-1 by its 1st-99th percentiles, block-averaged to a 0.2 mm working grid, smoothed
   (Gaussian, SD 0.3 mm) and offset by its minimum: ``f >= 0``. Air and padding (ROI values at or below
   ``background_level``, by default 4 % of the full scale of an unsigned-integer ROI, in areas of at least 0.5 %
   of the ROI) are set to 0 in ``f``.
2. ``f`` is multiplied by an isotropic Gaussian *constraint function* centred on the seed,
   ``h = f * exp(-r^2 / (2 s^2))``, for several widths ``s`` (2.5, 5, 10, 20 mm), so that structures far from the
   seed cannot join the lesion (Kupinski & Giger used one width tied to the expected lesion size; several cover
   2-50 mm lesions).
3. For each ``s`` and each grey level ``T`` of a sequence of thresholds (``n_levels`` equal steps from ``h(seed)``
   down to 0), the candidate partition is the 4-connected component of ``h >= T`` containing the seed; the sweep
   for ``s`` stops once it exceeds ``max_area_fraction`` of the ROI. Each partition's margin (its inner boundary
   pixels) is scored by the average radial gradient (ARG) ``mean over the margin of -grad(f') . r_hat``
   (``f'``: ``f`` smoothed by a further 0.6 mm; ``r_hat``: the unit vector from the seed; positive where the
   image falls off outward), with the gradient zeroed within 2 mm of air / padding, times a lesion-size prior
   ``exp(-r_eff^2 / (2 R0^2))``, ``R0 = size_prior_mm`` (25 mm): the constraint idea applied to the score, so that
   a far skin line or muscle edge cannot outscore the lesion's own margin. Partitions smaller than
   ``min_diameter_mm`` are not scored.
4. The partition of maximal score sits on the steepest part of the margin, inside the foot of a blurred edge.
   The threshold is then lowered (in thirds of a level, same ``s``) while the score stays at least
   ``outer_fraction`` (0.8) times the peak: the outer flank of the ARG peak, i.e. the edge's extent.
5. ``h`` is interpolated (bilinear) to the ROI grid and thresholded at the chosen level; the seed's component is
   kept and its holes are filled.

Written by hand (scikit-image has no seeded multi-threshold region grower): the threshold sweep, the ARG score,
and the windowing of each labelling to the radius within which ``h`` can still reach the threshold (exact, it
only saves time).

Quality flags (`Segmentation.flags`, most severe first as in `QUALITIES`; ``quality`` is the first, else ``"ok"``):

* ``"failed"``: flat ROI, seed in air / padding, or no partition with a positive ARG. The mask is empty.
* ``"seed_off_lesion"``: the seed is not in the mask, or the region's bright core (brighter than its margin's
  median plus a quarter of the way to its 99th percentile) lies mostly (over half its area) in components more than
  2 mm from the seed: the region grew from a background plateau around the seed into a brighter structure.
* ``"low_contrast"``: (mean inside - mean of a 1-3 mm ring outside) / SD of that ring, on the smoothed working
  image, below ``min_cnr`` (0.5).
* ``"touches_border"``: the mask reaches the ROI edge.

Features (`lesion_features`)
----------------------------
Physical units (mm) from ``pixel_size_mm``; intensities in the ROI's grey units. See `FEATURE_NAMES` and each
``_..._features`` helper for the formulas and references. A missing (empty) mask gives NaN for every feature, never
zeros, so that a classifier's imputer handles it inside its training folds.

Everything is deterministic (no randomness, no threading-dependent reductions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi
from numpy.typing import ArrayLike
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import perimeter_crofton, regionprops

from cadx import validation
from cadx.errors import CadxInputError
from cadx.labels import label_codes

__all__ = [
    "FEATURES_VERSION",
    "FEATURE_NAMES",
    "QUALITIES",
    "Segmentation",
    "analyse_roi",
    "feature_aucs",
    "lesion_features",
    "Partition",
    "WorkingImage",
    "partition_mask",
    "refine_partition",
    "search_partitions",
    "segment_lesion",
    "segmentation_quality",
    "working_image",
]

#: Stored with every segmentation; a change of the algorithm or of a default gets a new one. History:
#: analytic-1.0: size prior R0 = 15 mm. analytic-1.1 (issue 27.3): R0 = 25 mm. Scored against the DDSM experts'
#: outlines (benchmarks/bench_segmentation.py), 15 mm cut the 36 mm mass of mini-DDSM 0029 to a 13 mm core
#: (Dice 0.23; 0.75 with 25 mm), while on the SYNTHETIC demo phantoms (2-40 mm) and the MIAS masses' sizes 25 mm
#: is as good or better.
FEATURES_VERSION = "analytic-1.1"

FEATURE_NAMES = (
    # size
    "area_mm2",
    "effective_diameter_mm",
    "perimeter_mm",
    # shape
    "circularity",
    "irregularity",
    "elongation",
    "compactness",
    "solidity",
    # intensity
    "mean_intensity",
    "sd_intensity",
    "contrast",
    "normalised_contrast",
    "contrast_to_noise",
    # texture (GLCM inside the lesion)
    "glcm_contrast",
    "glcm_homogeneity",
    "glcm_energy",
    "glcm_correlation",
    "glcm_entropy",
    # margin
    "sharpness",
    "radial_gradient_index",
    "spiculation",
)

# Most severe first; `Segmentation.quality` is the first of these that applies, else "ok".
QUALITIES = ("failed", "seed_off_lesion", "low_contrast", "touches_border", "ok")

# --- segmentation constants ---------------------------------------------------------------------------------
_WORK_MM = 0.2  # working grid of the threshold search
_GRADIENT_EXTRA_MM = 0.6  # extra smoothing of the image whose gradient scores a margin (ARG)
_FLAT_EPS = 1e-9  # relative 1st-99th percentile spread below which an ROI is flat
_MIN_SEED_SHARE = 0.5  # seed_off_lesion: core components near the seed hold less than this share of the core
_CORE_FRACTION = 0.25  # ... the core: brighter than margin + this fraction of (99th percentile - margin)
_SEED_REACH_MM = 2.0  # ... "near": within this distance of the seed
_RING_MM = (1.0, 3.0)  # ring outside the mask for the segmentation's contrast-to-noise ratio
_FINE_STEPS = 3  # the descent below the ARG peak moves in 1/3 of a level ...
_MAX_FINE = 200  # ... for at most this many steps

_BACKGROUND_FULL_SCALE = 0.04  # default air / padding level of unsigned-integer ROIs: 4 % of the full scale ...
_BACKGROUND_MIN_FRACTION = 0.005  # ... in connected areas of at least 0.5 % of the ROI each
_BACKGROUND_GUARD_MM = 2.0  # margin pixels this close to air / padding do not score

# --- feature constants --------------------------------------------------------------------------------------
_CONTRAST_RING_MM = 2.0  # surrounding band for the intensity contrast
_GRADIENT_SIGMA_MM = 0.2  # Gaussian-derivative scale of the feature gradients
_MARGIN_HALF_WIDTH_MM = 0.5  # margin band |signed distance| <= this (sharpness, RGI)
_SPICULATION_INSIDE_MM = 0.5  # spiculation band: from this far inside the outline ...
_SPICULATION_OUT = (0.5, 1.0, 5.0)  # ... out to clip(0.5 * r_eff, 1 mm, 5 mm)
_GLCM_LEVELS = 32
_GLCM_DISTANCES = (1, 2)  # pixels (0.1 and 0.2 mm at the ROI's 0.1 mm)
_GLCM_ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)


def _no_array() -> np.ndarray:
    return np.zeros((0, 0))


@dataclass(frozen=True)
class Segmentation:
    """A seeded lesion segmentation and its quality control.

    Attributes
    ----------
    mask : ndarray of bool, shape (H, W)
        The lesion (read-only); all False when ``quality == "failed"``.
    quality : str
        One of `QUALITIES`: the most severe entry of `flags`, or ``"ok"``.
    reason : str
        Human-readable explanation of the quality (``"segmented"`` when ok).
    flags : tuple of str
        Every quality flag that applies, most severe first.
    threshold : float
        Chosen grey level on the constrained image ``h`` (0-1 scaled units); NaN when failed.
    constraint_sigma_mm : float
        Width of the Gaussian constraint function that gave the chosen partition; NaN when failed.
    arg : float
        Peak score: average radial gradient (per working pixel, 0-1 scaled units) times the size prior; NaN when
        failed.
    contrast_to_noise : float
        (mean inside - mean of a 1-3 mm ring outside) / SD of that ring, on the smoothed working image; NaN when
        failed.
    seed_rc : tuple of float
        The seed (row, col) in ROI pixels.
    """

    mask: np.ndarray
    quality: str
    reason: str
    flags: tuple[str, ...]
    threshold: float
    constraint_sigma_mm: float
    arg: float
    contrast_to_noise: float
    seed_rc: tuple[float, float]


@dataclass(frozen=True)
class WorkingImage:
    """Step 1 of `segment_lesion`: the ROI on the working grid, ready for the threshold search.

    Attributes
    ----------
    roi_shape : (int, int)
        Shape of the ROI.
    seed_rc : (float, float)
        The seed in ROI pixels (row, col).
    factor : int
        ROI pixels per working pixel along each axis.
    pixel_mm : float
        Working pixel size (mm).
    smooth : ndarray of float, shape (h, w)
        The 0-1 scaled, block-averaged, smoothed ROI.
    f : ndarray of float, shape (h, w)
        ``smooth`` offset by its minimum, 0 in air / padding: the image the partitions threshold.
    radial : ndarray of float, shape (h, w)
        ``-grad(f') . r_hat`` (0 within 2 mm of air / padding): what the ARG averages over a margin.
    dist_mm2 : ndarray of float, shape (h, w)
        Squared distance to the seed (mm^2).
    seed_w : (float, float)
        The seed on the working grid (fractional pixels).
    seed_px : (int, int)
        The working pixel holding the seed.
    failure : str or None
        Why no region can grow (flat ROI, seed in air or padding); the arrays are empty then.
    """

    roi_shape: tuple[int, int]
    seed_rc: tuple[float, float]
    factor: int = 1
    pixel_mm: float = math.nan
    smooth: np.ndarray = field(default_factory=_no_array)
    f: np.ndarray = field(default_factory=_no_array)
    radial: np.ndarray = field(default_factory=_no_array)
    dist_mm2: np.ndarray = field(default_factory=_no_array)
    seed_w: tuple[float, float] = (math.nan, math.nan)
    seed_px: tuple[int, int] = (0, 0)
    failure: str | None = None


@dataclass(frozen=True)
class Partition:
    """Steps 2-3 of `segment_lesion`: a candidate region of ``h >= level`` around the seed and its score.

    Attributes
    ----------
    score : float
        Average radial gradient along the region's margin times the size prior (the ARG score).
    sigma_mm : float
        Width of the Gaussian constraint function of ``h``.
    level : float
        Threshold on ``h``.
    window : (slice, slice)
        The part of the working grid the region was labelled in.
    region : ndarray of bool
        The seed's component of ``h[window] >= level``.
    h : ndarray of float, shape (h, w)
        The constrained image ``f * exp(-r^2 / (2 sigma^2))``.
    step : float
        The grey-level step of the search under this constraint.
    """

    score: float
    sigma_mm: float
    level: float
    window: tuple[slice, slice]
    region: np.ndarray
    h: np.ndarray
    step: float


@dataclass(frozen=True)
class _ScoreRule:
    """How a partition is scored: its area bounds (working pixels) and the size prior's ``R0`` (mm)."""

    area_min: float
    area_max: float
    prior_mm: float


def segment_lesion(
    roi: np.ndarray,
    *,
    pixel_size_mm: float = 0.1,
    centre_rc: Sequence[float] | None = None,
    constraint_sigmas_mm: Sequence[float] = (2.5, 5.0, 10.0, 20.0),
    size_prior_mm: float = 25.0,
    n_levels: int = 32,
    outer_fraction: float = 0.8,
    smoothing_mm: float = 0.3,
    min_diameter_mm: float = 1.5,
    max_area_fraction: float = 0.5,
    min_cnr: float = 0.5,
    background_level: float | None = None,
) -> Segmentation:
    """Segment the lesion around a seed by multiple-transition-point grey-level region growing.

    See the module docstring for the algorithm (Kupinski & Giger 1998, IEEE TMI 17:510). The named steps, each
    callable on its own: `working_image` (step 1), `search_partitions` (steps 2-3: the ARG peak),
    `refine_partition` (step 4: its outer flank), `partition_mask` (step 5) and `segmentation_quality` (the flags).

    Parameters
    ----------
    roi : ndarray of shape (H, W)
        The ROI (e.g. (512, 512) uint16 at 0.1 mm), brighter = denser; any real dtype, finite, at least 16 x 16.
    pixel_size_mm : float, optional
        ROI pixel size.
    centre_rc : (float, float), optional
        The seed in ROI pixels (row, col); default the ROI centre ``((H - 1) / 2, (W - 1) / 2)``.
    constraint_sigmas_mm : sequence of float, optional
        Widths (SD) of the Gaussian constraint functions tried.
    size_prior_mm : float, optional
        ``R0`` of the size prior ``exp(-r_eff^2 / (2 R0^2))`` on the ARG score.
    n_levels : int, optional
        Grey-level steps per constraint width, at least 4.
    outer_fraction : float, optional
        The threshold is lowered below the ARG peak while the score stays above this fraction of the peak; 1
        keeps the peak's partition.
    smoothing_mm : float, optional
        SD of the Gaussian smoothing before thresholding.
    min_diameter_mm : float, optional
        Partitions with a smaller effective diameter are not scored.
    max_area_fraction : float, optional
        The growth stops when the partition exceeds this fraction of the ROI.
    min_cnr : float, optional
        Contrast-to-noise ratio below which the result is flagged ``"low_contrast"``.
    background_level : float, optional
        ROI values at or below it are air or padding (where they form areas of at least 0.5 % of the ROI): no
        region enters them and margins within 2 mm of them do not score. Default: 4 % of the full scale for
        unsigned-integer ROIs (`cadx.roi.crop_roi` maps the value range's low end and padding to 0), none for
        floating-point ROIs.

    Returns
    -------
    Segmentation

    Raises
    ------
    CadxInputError
        If the ROI is not a finite 2-D real array of at least 16 x 16 pixels, or an option is out of range.
    """
    image = _check_roi(roi, "roi")
    px = _check_positive(pixel_size_mm, "pixel_size_mm")
    if centre_rc is not None:
        _check_centre(centre_rc, image.shape)
    sigmas = _check_sigmas(constraint_sigmas_mm)
    prior_mm = _check_positive(size_prior_mm, "size_prior_mm")
    _check_levels(n_levels)
    kappa = _check_fraction(outer_fraction, "outer_fraction")
    smooth_mm = _check_positive(smoothing_mm, "smoothing_mm")
    min_d_mm = _check_positive(min_diameter_mm, "min_diameter_mm")
    max_frac = _check_fraction(max_area_fraction, "max_area_fraction")
    min_cnr = _check_finite(min_cnr, "min_cnr")
    background_level = _background_level(roi, background_level)

    work = working_image(roi, pixel_size_mm=px, centre_rc=centre_rc, smoothing_mm=smooth_mm,
                         background_level=background_level)
    empty = np.zeros(image.shape, bool)
    if work.failure is not None:
        return _failed(empty, work.seed_rc, work.failure)
    best = search_partitions(work, constraint_sigmas_mm=sigmas, size_prior_mm=prior_mm, n_levels=n_levels,
                             min_diameter_mm=min_d_mm, max_area_fraction=max_frac)
    if best is None:
        return _failed(empty, work.seed_rc, "no region around the seed is brighter than its surroundings "
                       "(no partition with a positive average radial gradient)")
    chosen = refine_partition(work, best, outer_fraction=kappa, size_prior_mm=prior_mm, min_diameter_mm=min_d_mm,
                              max_area_fraction=max_frac)
    mask, region = partition_mask(work, chosen)
    flags, reasons, cnr = segmentation_quality(work, mask, region, min_cnr=min_cnr)
    mask.flags.writeable = False
    return Segmentation(
        mask=mask,
        quality=flags[0] if flags else "ok",
        reason="; ".join(reasons) if reasons else "segmented",
        flags=tuple(flags),
        threshold=float(chosen.level),
        constraint_sigma_mm=float(chosen.sigma_mm),
        arg=float(best.score),
        contrast_to_noise=float(cnr),
        seed_rc=(float(work.seed_rc[0]), float(work.seed_rc[1])),
    )


def working_image(roi: np.ndarray, *, pixel_size_mm: float = 0.1, centre_rc: Sequence[float] | None = None,
                  smoothing_mm: float = 0.3, background_level: float | None = None) -> WorkingImage:
    """Step 1 of `segment_lesion`: scale, block-average, smooth, mask air and padding, and the radial gradient.

    Options as in `segment_lesion`. Returns a `WorkingImage` whose ``failure`` says why nothing can grow (flat
    ROI, seed in air or padding) instead of raising: both are answers about the ROI, not input errors.
    """
    image = _check_roi(roi, "roi")
    px = _check_positive(pixel_size_mm, "pixel_size_mm")
    height, width = image.shape
    if centre_rc is None:
        seed_rc = ((height - 1) / 2.0, (width - 1) / 2.0)
    else:
        seed_rc = _check_centre(centre_rc, image.shape)
    smooth_mm = _check_positive(smoothing_mm, "smoothing_mm")
    background_level = _background_level(roi, background_level)
    shape = (int(height), int(width))

    lo, hi = np.percentile(image, [1.0, 99.0])
    spread = max(abs(float(lo)), abs(float(hi)), 1.0) * _FLAT_EPS
    if not hi - lo > spread:
        if np.ptp(image) > spread:  # e.g. a single bright pixel: still nothing to grow from
            lo, hi = float(image.min()), float(image.max())
        else:
            return WorkingImage(shape, seed_rc, failure="no contrast: the ROI is flat (all pixels have the same "
                                "value)")
    scaled = (image - lo) / (hi - lo)

    # working grid: block means of `factor` x `factor` pixels (edge-padded to a multiple)
    factor = max(1, int(round(_WORK_MM / px)))
    wpx = px * factor
    work = _block_mean(scaled, factor)
    n_rows, n_cols = work.shape
    smooth = ndi.gaussian_filter(work, smooth_mm / wpx, mode="nearest")
    score_image = ndi.gaussian_filter(smooth, _GRADIENT_EXTRA_MM / wpx, mode="nearest")
    grad_r, grad_c = np.gradient(score_image)
    f = smooth - smooth.min()

    # seed on the working grid (pixel i covers ROI rows factor*i .. factor*i + factor - 1)
    seed_w = ((seed_rc[0] - (factor - 1) / 2) / factor, (seed_rc[1] - (factor - 1) / 2) / factor)
    seed_px = (min(max(int(math.floor(seed_w[0] + 0.5)), 0), n_rows - 1),
               min(max(int(math.floor(seed_w[1] + 0.5)), 0), n_cols - 1))
    d_r = np.arange(n_rows)[:, None] - seed_w[0]
    d_c = np.arange(n_cols)[None, :] - seed_w[1]
    dist = np.hypot(d_r, d_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        radial = np.where(dist > 0, -(grad_r * d_r + grad_c * d_c) / dist, 0.0)  # -grad . r_hat
    # air and padding: a margin along them says nothing about the lesion, and no region may enter them
    background = None
    if background_level is not None:
        dark = _block_mean(image <= background_level, factor) > 0.5
        background = _background(dark, _BACKGROUND_MIN_FRACTION * dark.size)
    if background is not None:
        radial[ndi.distance_transform_edt(~background) * wpx <= _BACKGROUND_GUARD_MM] = 0.0
        f[background] = 0.0
    dist_mm2 = (dist * wpx) ** 2
    failure = None
    if f[seed_px] <= 0:
        failure = "no region to grow: the seed lies in air, padding or at the ROI's minimum"
    return WorkingImage(shape, seed_rc, factor, wpx, smooth, f, radial, dist_mm2, seed_w, seed_px, failure)


def _score_rule(work: WorkingImage, *, size_prior_mm: float, min_diameter_mm: float,
                max_area_fraction: float) -> _ScoreRule:
    prior_mm = _check_positive(size_prior_mm, "size_prior_mm")
    min_d_mm = _check_positive(min_diameter_mm, "min_diameter_mm")
    max_frac = _check_fraction(max_area_fraction, "max_area_fraction")
    n_rows, n_cols = work.f.shape
    return _ScoreRule(area_min=math.pi * (min_d_mm / 2 / work.pixel_mm) ** 2,
                      area_max=max_frac * n_rows * n_cols, prior_mm=prior_mm)


def _score(work: WorkingImage, rule: _ScoreRule, h: np.ndarray, sigma_mm: float, level: float
           ) -> tuple[float | None, tuple[tuple[slice, slice], np.ndarray]]:
    """(score or None when too large or -inf when too small, the partition as (window, region in it))."""
    sigma_px = sigma_mm / work.pixel_mm
    f_max = float(work.f.max())
    n_rows, n_cols = work.f.shape
    seed_w, seed_px = work.seed_w, work.seed_px
    # h < level wherever f_max * G < level: the partition lies within this radius of the seed
    reach = sigma_px * math.sqrt(2.0 * math.log(f_max / level)) + 2.0 if level < f_max else 2.0
    window = (slice(max(int(seed_w[0] - reach), 0), min(int(seed_w[0] + reach) + 2, n_rows)),
              slice(max(int(seed_w[1] - reach), 0), min(int(seed_w[1] + reach) + 2, n_cols)))
    local_seed = (seed_px[0] - window[0].start, seed_px[1] - window[1].start)
    region = _seed_component(h[window] >= level, local_seed)
    area = int(np.count_nonzero(region))
    if area > rule.area_max:
        return None, (window, region)
    if area < rule.area_min:
        return -math.inf, (window, region)
    arg = float(work.radial[window][_inner_boundary(region)].mean())
    r_eff_mm = math.sqrt(area / math.pi) * work.pixel_mm
    return arg * math.exp(-0.5 * (r_eff_mm / rule.prior_mm) ** 2), (window, region)


def search_partitions(work: WorkingImage, *, constraint_sigmas_mm: Sequence[float] = (2.5, 5.0, 10.0, 20.0),
                      size_prior_mm: float = 25.0, n_levels: int = 32, min_diameter_mm: float = 1.5,
                      max_area_fraction: float = 0.5) -> Partition | None:
    """Steps 2-3 of `segment_lesion`: the partition of highest ARG score over every constraint width and grey
    level (the first of equal scores); None when no partition has a positive score (or ``work`` failed).

    Options as in `segment_lesion`.
    """
    sigmas = _check_sigmas(constraint_sigmas_mm)
    _check_levels(n_levels)
    if work.failure is not None:
        return None
    rule = _score_rule(work, size_prior_mm=size_prior_mm, min_diameter_mm=min_diameter_mm,
                       max_area_fraction=max_area_fraction)
    best: Partition | None = None
    for sigma in sigmas:
        h = work.f * np.exp(-0.5 * work.dist_mm2 / sigma**2)
        top = float(h[work.seed_px])
        step = top / n_levels
        for k in range(1, n_levels):
            level = top - k * step
            value, (window, region) = _score(work, rule, h, sigma, level)
            if value is None:
                break
            if best is None or value > best.score:
                best = Partition(value, sigma, level, window, region, h, step)
    if best is None or not best.score > 0:
        return None
    return best


def refine_partition(work: WorkingImage, peak: Partition, *, outer_fraction: float = 0.8,
                     size_prior_mm: float = 25.0, min_diameter_mm: float = 1.5,
                     max_area_fraction: float = 0.5) -> Partition:
    """Step 4 of `segment_lesion`: from the ARG peak, lower the threshold (in thirds of a level, same constraint)
    while the score stays at least ``outer_fraction`` times the peak's; returns the last such partition (with its
    own score), or ``peak`` itself.

    Options as in `segment_lesion`.
    """
    kappa = _check_fraction(outer_fraction, "outer_fraction")
    rule = _score_rule(work, size_prior_mm=size_prior_mm, min_diameter_mm=min_diameter_mm,
                       max_area_fraction=max_area_fraction)
    chosen = peak
    for j in range(1, _MAX_FINE + 1):
        candidate = peak.level - j * peak.step / _FINE_STEPS
        if candidate <= 0:
            break
        value, (window, region) = _score(work, rule, peak.h, peak.sigma_mm, candidate)
        if value is None or value < kappa * peak.score:
            break
        chosen = Partition(value, peak.sigma_mm, candidate, window, region, peak.h, peak.step)
    return chosen


def partition_mask(work: WorkingImage, partition: Partition) -> tuple[np.ndarray, np.ndarray]:
    """Step 5 of `segment_lesion`: the partition as a mask on the ROI grid (``h`` interpolated bilinearly and
    thresholded, the seed's component, holes filled) and as a region on the working grid (holes filled).

    Returns
    -------
    mask : ndarray of bool, shape ``work.roi_shape``
    region : ndarray of bool, shape of the working grid
    """
    region = np.zeros(work.f.shape, bool)
    region[partition.window] = partition.region
    mask = _upsample_region(partition.h, partition.level, region, work.factor, work.roi_shape, work.seed_rc)
    return ndi.binary_fill_holes(mask), ndi.binary_fill_holes(region)


def segmentation_quality(work: WorkingImage, mask: np.ndarray, region: np.ndarray, *, min_cnr: float = 0.5
                         ) -> tuple[list[str], list[str], float]:
    """The quality flags of a segmentation (module docstring), most severe first, their reasons, and the
    contrast-to-noise ratio of ``region`` against a 1-3 mm ring outside it on the smoothed working image."""
    min_cnr = _check_finite(min_cnr, "min_cnr")
    flags, reasons = [], []
    seed_in = bool(mask[_nearest_pixel(work.seed_rc, work.roi_shape)])
    seed_share = _seed_share(work.f, region, work.seed_px, max(_SEED_REACH_MM / work.pixel_mm, 1.0))
    if not seed_in:
        flags.append("seed_off_lesion")
        reasons.append("the seed is not inside the segmented region")
    elif seed_share < _MIN_SEED_SHARE:
        flags.append("seed_off_lesion")
        reasons.append("the region's bright core is not around the seed: the region grew from the background into "
                       "a brighter structure (is the centre on the lesion?)")
    cnr = _ring_cnr(work.smooth, region, work.pixel_mm)
    if math.isnan(cnr):
        flags.append("low_contrast")
        reasons.append("no surrounding tissue to measure the lesion's contrast against")
    elif cnr < min_cnr:
        flags.append("low_contrast")
        reasons.append(f"low contrast: contrast-to-noise ratio {cnr:.2f} against the surrounding tissue "
                       f"(below {min_cnr:g})")
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        flags.append("touches_border")
        reasons.append("the segmented region touches the ROI border (lesion larger than the field, or not centred)")
    return flags, reasons, cnr


def _check_sigmas(constraint_sigmas_mm: Sequence[float]) -> tuple[float, ...]:
    sigmas = tuple(_check_positive(s, "constraint_sigmas_mm") for s in constraint_sigmas_mm)
    if not sigmas:
        raise CadxInputError("constraint_sigmas_mm", "is empty", "give e.g. (2.5, 5, 10, 20)")
    return sigmas


def _check_levels(n_levels: int) -> None:
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 4:
        raise CadxInputError("n_levels", f"{n_levels!r} is not an integer >= 4", "give e.g. 32")


def lesion_features(
    roi: np.ndarray, mask: np.ndarray, *, pixel_size_mm: float = 0.1, background_level: float | None = None
) -> dict[str, float]:
    """Size, shape, intensity, texture and margin features of a segmented lesion.

    Formulas (``A`` area, ``P`` perimeter, ``D = 2 sqrt(A / pi)`` effective diameter):

    * size: ``area_mm2 = A``; ``effective_diameter_mm = D``; ``perimeter_mm = P`` (Crofton perimeter, 4
      directions, `skimage.measure.perimeter_crofton`).
    * shape: ``circularity = 4 pi A / P^2`` (1 for a disk); ``irregularity = 1 - pi D / P`` (the perimeter in
      excess of the effective circle's, as in the Giger lab's lesion features; 0 for a disk, higher for irregular
      outlines); ``elongation`` = major / minor axis length of the ellipse with the same second central moments
      (`skimage.measure.regionprops`; >= 1, 2 for a 2:1 ellipse); ``compactness`` = fraction of the lesion inside
      its effective circle (the disk of area A centred at the centroid; 1 for a disk; the Giger lab's
      effective-circle overlap); ``solidity = A / convex-hull area``.
    * intensity: mean and SD of the ROI inside the mask; ``contrast = mean_in - mean_ring`` with the ring the
      pixels within 2 mm outside the mask; ``normalised_contrast = contrast / mean_ring`` (Weber);
      ``contrast_to_noise = contrast / SD_ring``.
    * texture: grey-level co-occurrence matrices (Haralick et al. 1973) of the lesion's pixels quantised to 32
      levels between the lesion's 1st and 99th percentiles, distances 1 and 2 pixels, angles 0, 45, 90, 135
      degrees, symmetric, only pairs with both pixels inside the lesion; `skimage.feature.graycoprops`
      ``contrast``, ``homogeneity``, ``energy``, ``correlation`` and the entropy ``-sum p log2 p`` (by hand),
      each averaged over the 8 matrices.
    * margin, on the gradient of the ROI (Gaussian derivatives, SD 0.2 mm), with ``r_hat`` the unit vector from
      the mask centroid, ``n`` the outline's inward normal (from the signed distance map) and the margin band the
      pixels within 0.5 mm of the outline:
      ``sharpness = mean(grad I . n) over the band / |contrast|`` (1/mm: the mean intensity slope across the
      margin per unit contrast, the inverse of an edge width; Giger-lab margin sharpness);
      ``radial_gradient_index = sum(-grad I . r_hat) / sum |grad I|`` over the band (Kupinski & Giger 1998; 1
      for a bright disk, about 0 for structure without radial order);
      ``spiculation = 1 - sum((grad I . r_hat)^2) / sum |grad I|^2`` in a band from 0.5 mm inside the outline to
      ``clip(r_eff / 2, 1 mm, 5 mm)`` outside it: the share of gradient energy perpendicular to the radial
      direction. After Huo et al., Med Phys 22:1569 (1995), who analysed the angle between the gradient and the
      radial direction around the margin (the width of its gradient-weighted histogram): a smooth margin puts
      its gradient along ``r_hat`` (0), spicules radiating along ``r_hat`` put theirs across it (towards 1),
      unordered texture gives 0.5. Higher = more spiculated.

    Parameters
    ----------
    roi : ndarray of shape (H, W)
        The ROI, brighter = denser, any real dtype, finite.
    mask : ndarray of bool, shape (H, W)
        The lesion (e.g. `Segmentation.mask`); with several components, the largest is measured. An empty mask
        (failed segmentation) gives all NaN.
    pixel_size_mm : float, optional
        ROI pixel size.
    background_level : float, optional
        ROI values at or below it are air or padding (where they form areas of at least 0.5 % of the ROI): pixels
        within 2 mm of them are left out of the ring, margin and spiculation bands. Default as in
        `segment_lesion`: 4 % of the full scale for unsigned-integer ROIs, none for floating-point ROIs.

    Returns
    -------
    dict of str to float
        Keys `FEATURE_NAMES` in that order. NaN where a feature is undefined (empty mask, zero ring contrast,
        a lesion without pixel pairs).

    Raises
    ------
    CadxInputError
        If the ROI or mask is malformed or their shapes differ.
    """
    image = _check_roi(roi, "roi", min_size=1)
    mask = _check_mask(mask, image.shape)
    px = _check_positive(pixel_size_mm, "pixel_size_mm")
    background_level = _background_level(roi, background_level)
    features = dict.fromkeys(FEATURE_NAMES, math.nan)
    if not mask.any():
        return features

    # work on a crop around the lesion: bands reach at most 5 mm + 2 mm beyond the outline
    reach = int(math.ceil((_SPICULATION_OUT[2] + _CONTRAST_RING_MM + 4 * _GRADIENT_SIGMA_MM) / px)) + 2
    rows, cols = np.nonzero(mask)
    r0, r1 = max(rows.min() - reach, 0), min(rows.max() + reach + 1, image.shape[0])
    c0, c1 = max(cols.min() - reach, 0), min(cols.max() + reach + 1, image.shape[1])
    crop = image[r0:r1, c0:c1]
    lesion = mask[r0:r1, c0:c1]
    # keep only the largest component: features describe one lesion
    lesion = _largest_component(lesion)

    # signed distance to the outline (mm): negative inside, positive outside
    outside = ndi.distance_transform_edt(~lesion) * px
    inside = ndi.distance_transform_edt(lesion) * px
    signed = np.where(lesion, 0.5 * px - inside, outside - 0.5 * px)
    usable = np.ones(crop.shape, bool)  # not air / padding, nor within 2 mm of it
    if background_level is not None:
        background = _background(crop <= background_level, _BACKGROUND_MIN_FRACTION * image.size)
        if background is not None:
            usable = ndi.distance_transform_edt(~background) * px > _BACKGROUND_GUARD_MM

    features.update(_size_shape_features(lesion, px))
    intensity = _intensity_features(crop, lesion, outside, usable)
    features.update(intensity)
    features.update(_texture_features(crop, lesion))
    features.update(_margin_features(crop, lesion, signed, usable, px, intensity["contrast"],
                                     features["effective_diameter_mm"]))
    return {name: float(features[name]) for name in FEATURE_NAMES}


def analyse_roi(
    roi: np.ndarray, *, pixel_size_mm: float = 0.1, centre_rc: Sequence[float] | None = None
) -> tuple[Segmentation, dict[str, float]]:
    """Segment the lesion (`segment_lesion`) and measure its features (`lesion_features`).

    Parameters
    ----------
    roi : ndarray of shape (H, W)
        The ROI, e.g. (512, 512) uint16 at 0.1 mm, lesion at the centre.
    pixel_size_mm : float, optional
        ROI pixel size.
    centre_rc : (float, float), optional
        The seed; default the ROI centre.

    Returns
    -------
    segmentation : Segmentation
    features : dict of str to float
        All NaN when ``segmentation.quality == "failed"``; measured (and flagged by the quality) otherwise.
    """
    segmentation = segment_lesion(roi, pixel_size_mm=pixel_size_mm, centre_rc=centre_rc)
    if segmentation.quality == "failed":
        return segmentation, dict.fromkeys(FEATURE_NAMES, math.nan)
    return segmentation, lesion_features(roi, segmentation.mask, pixel_size_mm=pixel_size_mm)


def feature_aucs(features: Mapping[str, ArrayLike], labels: ArrayLike) -> dict[str, float]:
    """Per-feature ROC AUC for benign vs malignant, ignoring missing values.

    The AUC of each raw feature value as a malignancy score (`sklearn.metrics.roc_auc_score`): above 0.5 when
    malignant lesions have larger values, below 0.5 when smaller. Rows where the feature is NaN are dropped for
    that feature; NaN when fewer than one lesion of each class remains.

    Parameters
    ----------
    features : mapping of str to array of shape (n,)
        Feature name to its values over the lesions (e.g. columns of `lesion_features` results).
    labels : array of shape (n,)
        1/True/"malignant" for malignant, 0/False/"benign" for benign.

    Returns
    -------
    dict of str to float
        Feature name to AUC, in the order of `features`.

    Raises
    ------
    CadxInputError
        If a label is not benign/malignant or a feature's length differs from the labels'.
    """
    from sklearn.metrics import roc_auc_score

    y = label_codes(labels, name="labels")
    result = {}
    for name, values in features.items():
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise CadxInputError(f"feature {name!r}", f"has {x.size} values for {y.size} labels",
                                 "give one value per lesion")
        keep = np.isfinite(x)
        yk = y[keep]
        if yk.sum() == 0 or yk.sum() == yk.size:
            result[name] = math.nan
        else:
            result[name] = float(roc_auc_score(yk, x[keep]))
    return result


# --- segmentation helpers ---------------------------------------------------------------------------------


def _failed(empty: np.ndarray, seed_rc, reason: str) -> Segmentation:
    empty.flags.writeable = False
    return Segmentation(
        mask=empty,
        quality="failed",
        reason=reason,
        flags=("failed",),
        threshold=math.nan,
        constraint_sigma_mm=math.nan,
        arg=math.nan,
        contrast_to_noise=math.nan,
        seed_rc=(float(seed_rc[0]), float(seed_rc[1])),
    )


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor x factor`` blocks, the image edge-padded to a multiple of ``factor``.

    Written by hand: `skimage.measure.block_reduce` pads with a constant, which darkens the last row/column.
    """
    if factor == 1:
        return image.copy()
    pad_r, pad_c = (-image.shape[0]) % factor, (-image.shape[1]) % factor
    if pad_r or pad_c:
        image = np.pad(image, ((0, pad_r), (0, pad_c)), mode="edge")
    n_r, n_c = image.shape[0] // factor, image.shape[1] // factor
    return image.reshape(n_r, factor, n_c, factor).mean(axis=(1, 3))


def _background(dark: np.ndarray, min_pixels: float) -> np.ndarray | None:
    """Air or padding: the 4-connected areas of ``dark`` of at least ``min_pixels`` each; None if there are none."""
    labels, n = ndi.label(dark)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = np.flatnonzero(sizes >= min_pixels)
    if big.size == 0:
        return None
    return np.isin(labels, big)


def _seed_component(binary: np.ndarray, seed_px: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``binary`` containing the seed (empty if the seed is not in it)."""
    labels, _ = ndi.label(binary)
    label = labels[seed_px]
    if label == 0:
        return np.zeros(binary.shape, bool)
    return labels == label


def _inner_boundary(region: np.ndarray) -> np.ndarray:
    """Region pixels with a 4-neighbour outside it (pixels beyond the array edge count as inside).

    Written by hand with slicing: `ndi.binary_erosion` does the same about 5 times slower, and this runs for
    every partition.
    """
    core = region.copy()
    core[1:] &= region[:-1]
    core[:-1] &= region[1:]
    core[:, 1:] &= region[:, :-1]
    core[:, :-1] &= region[:, 1:]
    return region & ~core


def _nearest_pixel(rc, shape) -> tuple[int, int]:
    """The pixel containing the point ``rc`` (row, col), clipped to the image."""
    return (min(max(int(math.floor(rc[0] + 0.5)), 0), shape[0] - 1),
            min(max(int(math.floor(rc[1] + 0.5)), 0), shape[1] - 1))


def _upsample_region(h, level, region, factor, shape, seed_rc) -> np.ndarray:
    """The chosen partition on the ROI grid: bilinear ``h``, thresholded, the component of the seed."""
    if factor == 1:
        return region.copy()
    fine = ndi.zoom(h, factor, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    labels, _ = ndi.label(fine >= level)
    label = labels[_nearest_pixel(seed_rc, shape)]
    if label == 0:  # interpolation moved the seed just outside: take the component overlapping the region most
        coarse = np.repeat(np.repeat(region, factor, 0), factor, 1)[: shape[0], : shape[1]]
        counts = np.bincount(labels[coarse & (labels > 0)])
        if counts.size == 0 or counts.max() == 0:
            return coarse
        label = int(np.argmax(counts))
    return labels == label


def _seed_share(f: np.ndarray, region: np.ndarray, seed_px, reach_px: float) -> float:
    """Share of the region's bright core that lies in core components within ``reach_px`` of the seed.

    The core is the part of the region brighter (in the unconstrained image ``f``) than its margin's median plus
    a quarter of the way up to its 99th percentile. For a lesion around the seed the core is around the seed; for a
    region that grew from a background plateau around the seed into a brighter structure, the core is that
    structure, away from the seed.
    """
    values = f[region]
    margin = float(np.median(f[_inner_boundary(region)]))
    core = region & (f >= margin + _CORE_FRACTION * (float(np.percentile(values, 99)) - margin))
    total = int(np.count_nonzero(core))
    if total == 0:
        return 1.0
    labels, _ = ndi.label(core)
    near = np.hypot(*(np.indices(core.shape) - np.array(seed_px)[:, None, None])) <= reach_px
    kept = np.unique(labels[near & core])
    return float(np.count_nonzero(np.isin(labels, kept[kept > 0]))) / total


def _ring_cnr(smooth: np.ndarray, region: np.ndarray, wpx: float) -> float:
    """(mean inside - mean in a 1-3 mm ring outside) / SD of the ring, on the working image."""
    outside = ndi.distance_transform_edt(~region) * wpx
    ring = (outside > _RING_MM[0]) & (outside <= _RING_MM[1])
    if not ring.any() or not region.any():
        return math.nan
    sd = float(smooth[ring].std())
    contrast = float(smooth[region].mean() - smooth[ring].mean())
    if sd <= 0:
        return math.inf if contrast > 0 else math.nan
    return contrast / sd


# --- feature helpers --------------------------------------------------------------------------------------


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    return labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)


def _size_shape_features(lesion: np.ndarray, px: float) -> dict[str, float]:
    area_px = float(np.count_nonzero(lesion))
    area = area_px * px**2
    diameter = 2.0 * math.sqrt(area / math.pi)
    perimeter = float(perimeter_crofton(lesion, directions=4)) * px
    props = regionprops(lesion.astype(np.uint8))[0]
    major, minor = props.axis_major_length, props.axis_minor_length
    # compactness: fraction of the lesion inside the equal-area disk centred at the centroid
    rows, cols = np.nonzero(lesion)
    cy, cx = props.centroid
    inside = np.count_nonzero((rows - cy) ** 2 + (cols - cx) ** 2 <= area_px / math.pi)
    return {
        "area_mm2": area,
        "effective_diameter_mm": diameter,
        "perimeter_mm": perimeter,
        "circularity": 4 * math.pi * area / perimeter**2 if perimeter > 0 else math.nan,
        "irregularity": 1.0 - math.pi * diameter / perimeter if perimeter > 0 else math.nan,
        "elongation": major / minor if minor > 0 else math.nan,
        "compactness": inside / area_px,
        "solidity": float(props.solidity),
    }


def _intensity_features(crop, lesion, outside_mm, usable) -> dict[str, float]:
    values = crop[lesion]
    ring = (outside_mm > 0) & (outside_mm <= _CONTRAST_RING_MM) & usable
    mean_in = float(values.mean())
    result = {"mean_intensity": mean_in, "sd_intensity": float(values.std()), "contrast": math.nan,
              "normalised_contrast": math.nan, "contrast_to_noise": math.nan}
    if ring.any():
        background = crop[ring]
        mean_ring, sd_ring = float(background.mean()), float(background.std())
        contrast = mean_in - mean_ring
        result["contrast"] = contrast
        result["normalised_contrast"] = contrast / mean_ring if mean_ring > 0 else math.nan
        # a ring flat to rounding (synthetic images) has no noise to compare with
        flat = sd_ring <= _FLAT_EPS * max(abs(mean_ring), abs(mean_in), 1e-300)
        result["contrast_to_noise"] = math.nan if flat else contrast / sd_ring
    return result


def _texture_features(crop: np.ndarray, lesion: np.ndarray) -> dict[str, float]:
    names = ("glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "glcm_entropy")
    rows, cols = np.nonzero(lesion)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    values, inside = crop[box], lesion[box]
    lo, hi = np.percentile(values[inside], [1.0, 99.0])
    if hi > lo:
        levels = np.clip(np.floor((values - lo) / (hi - lo) * _GLCM_LEVELS), 0, _GLCM_LEVELS - 1).astype(np.uint8)
    else:
        levels = np.zeros(values.shape, np.uint8)
    levels[~inside] = _GLCM_LEVELS  # an extra level for the outside, dropped below
    glcm = graycomatrix(levels, distances=_GLCM_DISTANCES, angles=_GLCM_ANGLES, levels=_GLCM_LEVELS + 1,
                        symmetric=True, normed=False)[:_GLCM_LEVELS, :_GLCM_LEVELS].astype(np.float64)
    totals = glcm.sum(axis=(0, 1))
    if np.any(totals == 0):  # a lesion too thin for pairs at some distance / angle
        return dict.fromkeys(names, math.nan)
    p = glcm / totals
    result = {f"glcm_{prop}": float(graycoprops(p, prop).mean())
              for prop in ("contrast", "homogeneity", "energy", "correlation")}
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=(0, 1))  # by hand: graycoprops has none
    result["glcm_entropy"] = float(entropy.mean())
    return result


def _margin_features(crop, lesion, signed_mm, usable, px, contrast, diameter_mm) -> dict[str, float]:
    sigma = _GRADIENT_SIGMA_MM / px
    image = crop.astype(np.float64)
    grad_r = ndi.gaussian_filter(image, sigma, order=(1, 0), mode="nearest") / px  # grey units per mm
    grad_c = ndi.gaussian_filter(image, sigma, order=(0, 1), mode="nearest") / px
    energy = grad_r**2 + grad_c**2
    magnitude = np.sqrt(energy)
    cy, cx = ndi.center_of_mass(lesion)
    d_r = np.arange(crop.shape[0])[:, None] - cy
    d_c = np.arange(crop.shape[1])[None, :] - cx
    dist = np.hypot(d_r, d_c)
    safe = np.where(dist > 0, dist, 1.0)
    inward = np.where(dist > 0, -(grad_r * d_r + grad_c * d_c) / safe, 0.0)  # grad I . (-r_hat)
    # inward normal of the outline: minus the gradient of the (lightly smoothed) signed distance
    n_r, n_c = np.gradient(ndi.gaussian_filter(signed_mm, 1.0, mode="nearest"))
    n_norm = np.hypot(n_r, n_c)
    across = -(grad_r * n_r + grad_c * n_c) / np.where(n_norm > 0, n_norm, 1.0)

    half = max(_MARGIN_HALF_WIDTH_MM, 1.5 * px)
    band = (np.abs(signed_mm) <= half) & usable
    result = {"sharpness": math.nan, "radial_gradient_index": math.nan, "spiculation": math.nan}
    if band.any() and np.isfinite(contrast) and contrast != 0:
        result["sharpness"] = float(across[band].mean()) / abs(contrast)
    total = float(magnitude[band].sum())
    if total > 0:
        result["radial_gradient_index"] = float(inward[band].sum()) / total

    scale, low, high = _SPICULATION_OUT
    out_mm = min(max(scale * diameter_mm / 2, low), high)
    spic_band = (signed_mm >= -_SPICULATION_INSIDE_MM) & (signed_mm <= out_mm) & (dist > 0) & usable
    total_energy = float(energy[spic_band].sum())
    if total_energy > 0:
        radial_energy = float((inward[spic_band] ** 2).sum())
        result["spiculation"] = max(0.0, 1.0 - radial_energy / total_energy)  # tangential share
    return result


# --- validation -------------------------------------------------------------------------------------------


def _check_roi(roi, name: str, *, min_size: int = 16) -> np.ndarray:
    array = np.asarray(roi)
    if array.ndim != 2 or min(array.shape) < min_size:
        raise CadxInputError(name, f"has shape {array.shape}, not a 2-D image of at least {min_size} x {min_size}",
                             "pass the (512, 512) ROI array")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CadxInputError(name, f"has dtype {array.dtype}, not real numbers", "pass a uint16 or float ROI")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise CadxInputError(name, "has non-finite values (NaN or infinity)", "replace missing values first")
    return array


def _check_mask(mask, shape) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != shape:
        raise CadxInputError("mask", f"has shape {array.shape}, the ROI {shape}", "pass the ROI's own mask")
    if array.dtype != bool:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) or not np.all(
            (array == 0) | (array == 1)
        ):
            raise CadxInputError("mask", f"has dtype {array.dtype} and values other than 0/1",
                                 "pass a boolean mask (True inside the lesion)")
        array = array == 1
    return array


def _background_level(roi, level) -> float | None:
    """The air / padding level: as given, else 4 % of the full scale of an unsigned-integer ROI, else None."""
    if level is None:
        dtype = np.asarray(roi).dtype
        if np.issubdtype(dtype, np.unsignedinteger):
            return _BACKGROUND_FULL_SCALE * float(np.iinfo(dtype).max)
        return None
    try:
        number = float(level)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise CadxInputError("background_level", f"{level!r} is not a finite grey level", "give e.g. 0.05")
    return number


def _check_positive(value, name: str) -> float:
    return validation.positive(value, name=name)


def _check_finite(value, name: str) -> float:
    return validation.finite(value, name=name)


def _check_fraction(value, name: str) -> float:
    return validation.fraction(value, name=name)


def _check_centre(centre, shape) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in centre)
    except (TypeError, ValueError):
        raise CadxInputError("centre_rc", f"{centre!r} is not a (row, col) pair", "give e.g. (255.5, 255.5)") from None
    inside = -0.5 <= row <= shape[0] - 0.5 and -0.5 <= col <= shape[1] - 0.5
    if not (math.isfinite(row) and math.isfinite(col) and inside):
        raise CadxInputError("centre_rc", f"({row}, {col}) is outside the {shape[0]} x {shape[1]} ROI",
                             "give a seed inside the ROI")
    return row, col
