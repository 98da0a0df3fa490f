"""SYNTHETIC lesion phantoms: the built-in demo data of cadx. These are NOT mammograms of any person.

Every image here is generated from a seed: a parenchymal background of power-law ("1/f^beta") noise, with
beta = 3 as measured for mammograms by Burgess et al. (Med. Phys. 28(4) 419, 2001), a curved skin line with air
beyond it on some images, and a simulated mass added on top. The set exists to exercise cadx end to end (import,
ROI cropping and its QC flags, features, classifiers, ROC analysis) without patient data; numbers measured on it
say nothing about clinical performance.

Lesions
-------
* ``circumscribed``: round or oval, smooth outline, sharp margin.
* ``ill-defined``: lobulated, irregular outline, margin blurred over 12-25 % of the radius.
* ``spiculated``: irregular core with pointed extensions, thin tapering spicules radiating beyond the outline.

Benign lesions are mostly circumscribed and malignant ones mostly ill-defined or spiculated, but about 15 % of
each label takes the other's look, so the task is not trivial. Diameters are 5-30 mm. A lesion is the projected
thickness of an ellipsoid-like mass with the given outline (contrast 0.08-0.16 on a 0-1 scale) added to the
background. Each of its 2-3 views (CC, MLO, sometimes ML) is a different projection: a new background, a
slightly rotated and stretched (area-preserving) lesion, a different skin-line position.

Images are 768 x 768 pixels at 0.1 mm (a 76.8 mm field) in presentation values 0-1 (brighter = denser), so a
lesion-centred 512-pixel ROI is normally interior. Placements per block of 10 lesions: 7 ``interior``, 1
``near_skin`` (the skin line 12-25 mm from the lesion crosses its ROI), 1 ``at_skin`` (a 5-8 mm lesion just
inside a curved skin line: about half the ROI is air, often flagged ``mostly_background``) and 1
``image_border`` (near the chest-wall edge of the image: the ROI is padded).

Determinism: lesion k is generated from ``SeedSequence(seed).spawn(2)[0].spawn(n)[k]`` (the same for any
``n > k``), its label, placement and patient from block ``k // 10``'s seed, so it does not depend on how many
lesions are generated; the same seed gives bit-identical images on the same platform.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.special

from cadx import validation
from cadx.errors import CadxInputError
from cadx.labels import LABELS

__all__ = [
    "IMAGE_SHAPE",
    "LABELS",
    "MORPHOLOGIES",
    "PIXEL_SPACING_MM",
    "PLACEMENTS",
    "VALUE_RANGE",
    "VIEWS",
    "PhantomLesion",
    "PhantomView",
    "demo_dataset",
    "generate_lesion",
    "power_law_background",
]

IMAGE_SHAPE = (768, 768)
PIXEL_SPACING_MM = (0.1, 0.1)
VALUE_RANGE = (0.0, 1.0)
MORPHOLOGIES = ("circumscribed", "ill-defined", "spiculated")
PLACEMENTS = ("interior", "near_skin", "at_skin", "image_border")
VIEWS = ("CC", "MLO", "ML")

_PX_MM = PIXEL_SPACING_MM[0]
_AIR = 0.03  # presentation value of air
_QUANTUM_NOISE_SD = 0.004  # white noise on the whole image
_ROLL_OFF_MM = 4.0  # tissue fades towards the skin line as 1 - exp(-d / 4 mm) (thinner compressed breast)
_SKIN_LINE = (0.04, 0.6, 0.35)  # amplitude, depth (mm) and width (mm) of the bright skin line
_N_ANGLES = 1024  # samples of an outline's radius function
_MAX_STRETCH = 1.18  # per-view area-preserving stretch factor, at most
_MARK_JITTER_MM = 0.5  # SD of the simulated marking error of the lesion centre, per axis
# P(morphology | label), in MORPHOLOGIES order: ~15 % of each label looks like the other.
_MORPHOLOGY_P = {"benign": (0.85, 0.10, 0.05), "malignant": (0.15, 0.40, 0.45)}
_MEDIAN_DIAMETER_MM = {"benign": 11.0, "malignant": 14.0}
_BLOCK = 10  # lesions per block: 5 benign + 5 malignant, 8 patients, placements as below
_BLOCK_PLACEMENTS = ("image_border", "near_skin", "at_skin") + ("interior",) * 7
_BLOCK_PATIENTS = 8


@dataclass(frozen=True)
class PhantomView:
    """One synthetic view (projection) of a phantom lesion.

    Attributes
    ----------
    view : str
        ``"CC"``, ``"MLO"`` or ``"ML"``.
    laterality : str
        ``"L"`` or ``"R"``; for ``"L"`` the chest wall is on the left of the image and the skin line (air) on
        the right, mirrored for ``"R"``.
    image : ndarray of float32, shape (768, 768)
        Presentation values in `value_range` (brighter = denser), 0.1 mm/pixel.
    value_range : tuple of float
        ``(0.0, 1.0)``.
    pixel_spacing_mm : tuple of float
        ``(0.1, 0.1)``.
    centre_rc : tuple of float
        The *marked* lesion centre (row, col) in image pixels: the true centre plus a simulated marking error
        (SD 0.5 mm per axis), always inside the true outline.
    true_mask : ndarray of bool, shape (768, 768)
        The true lesion outline (spicules beyond it are not part of it).
    true_centre_rc : tuple of float
        The true lesion centre (the origin of its outline).
    """

    view: str
    laterality: str
    image: np.ndarray
    value_range: tuple[float, float]
    pixel_spacing_mm: tuple[float, float]
    centre_rc: tuple[float, float]
    true_mask: np.ndarray
    true_centre_rc: tuple[float, float]


@dataclass(frozen=True)
class PhantomLesion:
    """A synthetic lesion with its 2-3 views.

    Attributes
    ----------
    lesion_key : str
        E.g. ``"demo-L0001"``.
    patient_key : str
        E.g. ``"demo-P0001"``; some patients have two lesions.
    label : str
        ``"benign"`` or ``"malignant"``.
    morphology : str
        ``"circumscribed"``, ``"ill-defined"`` or ``"spiculated"``.
    diameter_mm : float
        True effective diameter ``2 sqrt(area / pi)`` of the lesion's outline. Every view's outline is the
        same outline rotated and stretched without changing its area, so this is every view's (and the mean
        view's) effective diameter; the pixel masks match it up to pixelisation.
    views : tuple of PhantomView
    placement : str
        Where the lesion lies, one of `PLACEMENTS`.
    """

    lesion_key: str
    patient_key: str
    label: str
    morphology: str
    diameter_mm: float
    views: tuple[PhantomView, ...]
    placement: str


def power_law_background(
    shape: Sequence[int],
    *,
    beta: float = 3.0,
    rng: np.random.Generator | int | np.random.SeedSequence,
    mean: float = 0.45,
    sd: float = 0.08,
) -> np.ndarray:
    """Parenchymal background: isotropic 1/f^beta noise mapped into a breast-tissue range.

    White Gaussian noise is filtered in the Fourier domain (float32 real FFTs) by ``f^(-beta/2)`` so that
    its power spectrum falls as ``f^-beta``; the DC term is removed. The field is scaled to zero mean and
    unit SD, then mapped to ``mean + sd * field`` and clipped to ``VALUE_RANGE`` (the defaults reach the
    clip only beyond 5.6 SD).

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)``, each at least 8. The field is periodic over the image.
    beta : float, optional
        Spectral exponent; Burgess et al. measured about 3 for mammograms. 0 gives white noise.
    rng : numpy Generator, int or SeedSequence
        Source of randomness (``np.random.default_rng(rng)``).
    mean, sd : float, optional
        Presentation mean and SD of the tissue.

    Returns
    -------
    ndarray of float32, shape (H, W)
    """
    shape = _check_shape(shape)
    beta = _check_number(beta, "beta", 0.0, 6.0)
    mean = _check_number(mean, "mean", 0.0, 1.0)
    sd = _check_number(sd, "sd", 0.0, 1.0)
    rng = np.random.default_rng(rng)
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = scipy.fft.rfft2(white)
    spectrum *= _power_law_filter(shape, beta)
    field = scipy.fft.irfft2(spectrum, s=shape)
    field -= field.mean(dtype=np.float64)
    scale = float(field.std(dtype=np.float64))
    field *= np.float32(sd / scale if scale > 0 else 0.0)
    field += np.float32(mean)
    return np.clip(field, *VALUE_RANGE, out=field)


def generate_lesion(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence,
    *,
    label: str,
    morphology: str,
    diameter_mm: float,
    views: Sequence[str] = ("CC", "MLO"),
    laterality: str = "L",
    placement: str = "interior",
    lesion_key: str = "demo-L0001",
    patient_key: str = "demo-P0001",
) -> PhantomLesion:
    """Generate one synthetic lesion and its views.

    Parameters
    ----------
    rng_or_seed : numpy Generator, int or SeedSequence
        Source of randomness (``np.random.default_rng(rng_or_seed)``); a Generator is advanced.
    label : str
        ``"benign"`` or ``"malignant"``; stored only: the look is set by `morphology`.
    morphology : str
        One of `MORPHOLOGIES`.
    diameter_mm : float
        Effective diameter of the outline, 2-40 mm.
    views : sequence of str, optional
        1-3 distinct views from ``"CC"``, ``"MLO"``, ``"ML"``.
    laterality : str, optional
        ``"L"`` or ``"R"``.
    placement : str, optional
        One of `PLACEMENTS` (see the module docstring).
    lesion_key, patient_key : str, optional
        Identifiers stored on the result.

    Returns
    -------
    PhantomLesion
    """
    label = _check_choice(label, "label", LABELS)
    morphology = _check_choice(morphology, "morphology", MORPHOLOGIES)
    diameter_mm = _check_number(diameter_mm, "diameter_mm", 2.0, 40.0)
    laterality = _check_choice(laterality, "laterality", ("L", "R"))
    placement = _check_choice(placement, "placement", PLACEMENTS)
    views = tuple(_check_choice(view, "view", VIEWS) for view in views)
    if not 1 <= len(views) <= 3 or len(set(views)) != len(views):
        raise CadxInputError("views", f"{views!r} is not 1-3 distinct views", "give e.g. ('CC', 'MLO')")
    rng = np.random.default_rng(rng_or_seed)

    lesion = _draw_lesion(rng, morphology, diameter_mm)
    rendered = tuple(_render_view(rng, lesion, view, laterality, placement) for view in views)
    return PhantomLesion(
        lesion_key=lesion_key,
        patient_key=patient_key,
        label=label,
        morphology=morphology,
        diameter_mm=diameter_mm,
        views=rendered,
        placement=placement,
    )


def demo_dataset(*, n_lesions: int = 100, seed: int = 0) -> Iterator[PhantomLesion]:
    """The built-in SYNTHETIC demo set: lesion phantoms generated one at a time.

    Labels are balanced within each block of 10 lesions (5 benign, 5 malignant); morphology follows the
    label with ~15 % overlap; diameters are log-normal (median 11 mm benign, 14 mm malignant) clipped to
    5-30 mm (5-8 mm for ``at_skin`` lesions); 30 % of lesions have 3 views; each block of 10 lesions has 8
    patients, two of them with 2 lesions.

    Parameters
    ----------
    n_lesions : int, optional
        How many lesions, at least 1.
    seed : int, optional
        Non-negative seed; lesion k is the same for every ``n_lesions > k``.

    Yields
    ------
    PhantomLesion
        Keys ``demo-L0001``, ``demo-L0002``, ... and patients ``demo-P0001``, ...
    """
    if isinstance(n_lesions, bool) or not isinstance(n_lesions, (int, np.integer)) or n_lesions < 1:
        raise CadxInputError("n_lesions", f"{n_lesions!r} is not a positive integer", "give e.g. 100")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CadxInputError("seed", f"{seed!r} is not a non-negative integer", "give e.g. 0")
    lesion_root, block_root = np.random.SeedSequence(int(seed)).spawn(2)
    n_blocks = -(-n_lesions // _BLOCK)
    lesion_seeds = lesion_root.spawn(n_lesions)  # child k has spawn_key (k,) whatever n_lesions is
    block_seeds = block_root.spawn(n_blocks)
    return _demo_lesions(lesion_seeds, block_seeds)


def _demo_lesions(lesion_seeds, block_seeds) -> Iterator[PhantomLesion]:
    for block, block_seed in enumerate(block_seeds):
        labels, placements, patients = _draw_block(np.random.default_rng(block_seed))
        for slot in range(_BLOCK):
            k = block * _BLOCK + slot
            if k >= len(lesion_seeds):
                return
            label, placement = labels[slot], placements[slot]
            rng = np.random.default_rng(lesion_seeds[k])
            morphology = MORPHOLOGIES[int(rng.choice(3, p=_MORPHOLOGY_P[label]))]
            if placement == "at_skin":
                diameter = rng.uniform(5.0, 8.0)
            else:
                diameter = float(np.clip(_MEDIAN_DIAMETER_MM[label] * math.exp(0.4 * rng.standard_normal()), 5, 30))
            laterality = "L" if rng.random() < 0.5 else "R"
            views = VIEWS if rng.random() < 0.3 else VIEWS[:2]
            yield generate_lesion(
                rng,
                label=label,
                morphology=morphology,
                diameter_mm=round(float(diameter), 2),
                views=views,
                laterality=laterality,
                placement=placement,
                lesion_key=f"demo-L{k + 1:04d}",
                patient_key=f"demo-P{block * _BLOCK_PATIENTS + patients[slot] + 1:04d}",
            )


def _draw_block(rng: np.random.Generator):
    """Labels, placements and patient slots (0-7, two patients with 2 adjacent lesions) of 10 lesions."""
    labels = [LABELS[i] for i in rng.permutation([0] * 5 + [1] * 5)]
    placements = [_BLOCK_PLACEMENTS[i] for i in rng.permutation(_BLOCK)]
    doubles = set(int(p) for p in rng.choice(_BLOCK_PATIENTS, size=_BLOCK - _BLOCK_PATIENTS, replace=False))
    patients = [p for p in range(_BLOCK_PATIENTS) for _ in range(2 if p in doubles else 1)]
    return labels, placements, patients


# --- the lesion ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lesion:
    radius_px: float  # radius of the circle with the outline's area
    radii: np.ndarray  # (_N_ANGLES,) outline radius / radius_px at angles 2 pi k / _N_ANGLES; mean(radii**2) == 1
    margin: float  # Gaussian blur of the margin, in units of the local outline radius
    contrast: float
    orientation: float  # radians
    spicules: np.ndarray  # (n, 4): angle, length (px), width (px), relative contrast


def _draw_lesion(rng: np.random.Generator, morphology: str, diameter_mm: float) -> _Lesion:
    angles = np.linspace(0.0, 2 * np.pi, _N_ANGLES, endpoint=False)
    radius_px = diameter_mm / 2 / _PX_MM
    orientation = rng.uniform(0.0, np.pi)

    def harmonics(orders, amplitude):
        total = np.zeros_like(angles)
        for k in orders:
            total += rng.uniform(0.0, amplitude(k)) * np.cos(k * angles + rng.uniform(0.0, 2 * np.pi))
        return total

    spicules = np.zeros((0, 4))
    if morphology == "circumscribed":
        shape = rng.uniform(0.0, 0.18) * np.cos(2 * angles) + harmonics(range(3, 6), lambda k: 0.025)
        margin = rng.uniform(2.0, 4.0) / radius_px  # 0.2-0.4 mm: a sharp margin
    elif morphology == "ill-defined":
        shape = rng.uniform(0.0, 0.15) * np.cos(2 * angles) + harmonics(range(3, 10), lambda k: 0.12 / math.sqrt(k - 1))
        margin = rng.uniform(0.12, 0.25)
    else:
        shape = rng.uniform(0.0, 0.10) * np.cos(2 * angles) + harmonics(range(3, 9), lambda k: 0.05)
        n = int(rng.integers(8, 17))
        centres = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
        heights = rng.uniform(0.15, 0.45, n)
        widths = rng.uniform(0.07, 0.14, n)
        for centre, height, width in zip(centres, heights, widths, strict=True):
            distance = np.abs(np.angle(np.exp(1j * (angles - centre))))
            shape += height * np.clip(1.0 - distance / width, 0.0, None) ** 2  # pointed extension
        spicules = np.column_stack(
            [centres, rng.uniform(0.5, 1.3, n) * radius_px, rng.uniform(1.5, 3.0, n), rng.uniform(0.6, 0.9, n)]
        )
        margin = rng.uniform(0.05, 0.10)
    radii = 1.0 + shape
    radii /= math.sqrt(np.mean(radii**2))  # area of the polar outline = pi * radius_px**2 exactly
    return _Lesion(
        radius_px=radius_px,
        radii=radii,
        margin=margin,
        contrast=rng.uniform(0.08, 0.16),
        orientation=orientation,
        spicules=spicules,
    )


@functools.lru_cache(maxsize=8)
def _margin_profile(margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoid thickness ``sqrt(1 - t^2)`` of the normalised radius t, blurred by a Gaussian of SD `margin`."""
    n = 2048
    step = (1.0 + 5 * margin) / (n - 1)
    half = math.ceil(4 * margin / step)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / margin) ** 2)
    kernel /= kernel.sum()
    t_full = np.arange(-half, n + half) * step  # the profile is even in t: through the centre it continues
    thickness = np.sqrt(np.clip(1.0 - t_full**2, 0.0, None))
    profile = np.convolve(thickness, kernel, mode="valid")  # (n,)
    t = np.arange(n) * step
    return t, profile


def _render_view(rng: np.random.Generator, lesion: _Lesion, view: str, laterality: str, placement: str) -> PhantomView:
    height, width = IMAGE_SHAPE
    rotation = lesion.orientation + rng.normal(0.0, math.radians(12.0))
    stretch = float(np.clip(math.exp(rng.normal(0.0, 0.08)), 1 / _MAX_STRETCH, _MAX_STRETCH))
    extent_px = lesion.radius_px * float(lesion.radii.max()) * _MAX_STRETCH  # outline's farthest point
    extent_mm = extent_px * _PX_MM

    # lesion position and skin line (a circle of radius `bend`, `skin` mm beyond the lesion centre)
    centre = np.array([(height - 1) / 2, (width - 1) / 2]) + rng.uniform(-60.0, 60.0, 2)
    if placement == "interior":
        skin, bend = rng.uniform(45.0, 110.0), rng.uniform(70.0, 130.0)
    elif placement == "near_skin":
        skin, bend = max(rng.uniform(12.0, 25.0), extent_mm + 4.0), rng.uniform(50.0, 90.0)
    elif placement == "at_skin":
        skin, bend = extent_mm + rng.uniform(0.5, 2.0), rng.uniform(40.0, 55.0)
    else:  # image_border: near the chest-wall edge of the image (left for L, right for R)
        skin, bend = rng.uniform(45.0, 110.0), rng.uniform(70.0, 130.0)
        margin_px = max(rng.uniform(150.0, 220.0), extent_px + 20.0)
        centre[1] = margin_px if laterality == "L" else width - 1 - margin_px
    tilt = rng.uniform(-math.radians(35.0), math.radians(35.0))
    nipple = np.array([math.sin(tilt), math.cos(tilt) * (1.0 if laterality == "L" else -1.0)])  # (row, col)
    bend_centre = centre - (bend - skin) / _PX_MM * nipple

    tissue = power_law_background(
        IMAGE_SHAPE, beta=3.0, rng=rng, mean=rng.uniform(0.38, 0.50), sd=rng.uniform(0.06, 0.09)
    )
    contrast = lesion.contrast * rng.uniform(0.9, 1.1)
    lesion_image, mask = _render_lesion(lesion, centre, rotation, stretch, contrast)

    image = tissue
    corners = np.array([[0, 0], [0, width - 1], [height - 1, 0], [height - 1, width - 1]], dtype=float)
    nearest_skin_mm = (bend - np.hypot(*(corners - bend_centre).T).max() * _PX_MM)
    if nearest_skin_mm < 8 * _ROLL_OFF_MM:  # the skin line is near or in the image
        rows, cols = np.ogrid[:height, :width]
        depth = np.float32(bend) - np.hypot(
            (rows - bend_centre[0]).astype(np.float32), (cols - bend_centre[1]).astype(np.float32)
        ) * np.float32(_PX_MM)  # mm inside the skin line
        roll_off = -np.expm1(-np.maximum(depth, 0.0) / np.float32(_ROLL_OFF_MM))
        amplitude, skin_depth, skin_width = _SKIN_LINE
        image = _AIR + (tissue - _AIR) * roll_off
        near = np.nonzero((depth > 0) & (depth < skin_depth + 5 * skin_width))
        image[near] += amplitude * np.exp(-0.5 * ((depth[near] - skin_depth) / skin_width) ** 2)
        lesion_image *= np.clip(depth / 0.5, 0.0, 1.0)  # nothing beyond the skin
    image = image + lesion_image + rng.standard_normal(IMAGE_SHAPE, dtype=np.float32) * np.float32(_QUANTUM_NOISE_SD)
    image = np.clip(image, *VALUE_RANGE).astype(np.float32)

    marked = _mark_centre(rng, centre, mask)
    return PhantomView(
        view=view,
        laterality=laterality,
        image=image,
        value_range=VALUE_RANGE,
        pixel_spacing_mm=PIXEL_SPACING_MM,
        centre_rc=marked,
        true_mask=mask,
        true_centre_rc=(float(centre[0]), float(centre[1])),
    )


def _render_lesion(lesion: _Lesion, centre: np.ndarray, rotation: float, stretch: float, contrast: float):
    """The lesion's contrast image (float32) and true mask (bool), both (768, 768)."""
    height, width = IMAGE_SHAPE
    image = np.zeros(IMAGE_SHAPE, np.float32)
    mask = np.zeros(IMAGE_SHAPE, bool)
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)

    # core: outline radius at each pixel's angle in the lesion frame (undo rotation, then the stretch)
    reach = lesion.radius_px * float(lesion.radii.max()) * _MAX_STRETCH * (1 + 5 * lesion.margin) + 2
    r0, r1 = max(0, int(centre[0] - reach)), min(height, int(centre[0] + reach) + 2)
    c0, c1 = max(0, int(centre[1] - reach)), min(width, int(centre[1] + reach) + 2)
    dy = (np.arange(r0, r1) - centre[0])[:, None]
    dx = (np.arange(c0, c1) - centre[1])[None, :]
    u = (dx * cos_r + dy * sin_r) / stretch
    v = (-dx * sin_r + dy * cos_r) * stretch
    angle = np.mod(np.arctan2(v, u), 2 * np.pi)
    grid = np.linspace(0.0, 2 * np.pi, _N_ANGLES, endpoint=False)
    outline = lesion.radius_px * np.interp(angle, grid, lesion.radii, period=2 * np.pi)
    t = np.hypot(u, v) / outline
    mask[r0:r1, c0:c1] = t <= 1.0
    profile_t, profile = _margin_profile(round(lesion.margin, 6))
    image[r0:r1, c0:c1] = contrast * np.interp(t, profile_t, profile, right=0.0)

    # spicules: thin tapering lines from the pointed extensions outward, combined with the core by maximum
    for angle_k, length, line_width, relative in lesion.spicules:
        tip = lesion.radius_px * float(np.interp(angle_k, grid, lesion.radii, period=2 * np.pi))
        uk, vk = math.cos(angle_k) * stretch, math.sin(angle_k) / stretch  # direction in the image frame
        direction = np.array([uk * sin_r + vk * cos_r, uk * cos_r - vk * sin_r])  # (row, col)
        direction /= np.hypot(*direction)
        start = centre + direction * tip * 0.85 * math.hypot(uk, vk)
        end = start + direction * length
        lo = np.floor(np.minimum(start, end) - 3 * line_width).astype(int)
        hi = np.ceil(np.maximum(start, end) + 3 * line_width).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, IMAGE_SHAPE)
        if np.any(hi <= lo):
            continue
        pr = (np.arange(lo[0], hi[0]) - start[0])[:, None]
        pc = (np.arange(lo[1], hi[1]) - start[1])[None, :]
        along = pr * direction[0] + pc * direction[1]
        across = pr * direction[1] - pc * direction[0]
        fraction = np.clip(along / length, 0.0, 1.0)
        sigma = line_width * (1.0 - 0.7 * fraction)
        line = relative * contrast * (1.0 - fraction) * np.exp(-0.5 * (across / sigma) ** 2) * (along >= 0)
        region = image[lo[0] : hi[0], lo[1] : hi[1]]
        np.maximum(region, line.astype(np.float32), out=region)
    return image, mask


def _mark_centre(rng: np.random.Generator, centre: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The true centre plus a simulated marking error, shrunk until the mark is inside the mask."""
    error = rng.normal(0.0, _MARK_JITTER_MM / _PX_MM, 2)
    for _ in range(6):
        marked = centre + error
        row, col = (int(v) for v in np.rint(marked))
        if 0 <= row < mask.shape[0] and 0 <= col < mask.shape[1] and mask[row, col]:
            return float(marked[0]), float(marked[1])
        error = error / 2
    return float(centre[0]), float(centre[1])


# --- helpers ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _power_law_filter(shape: tuple[int, int], beta: float) -> np.ndarray:
    """``f^(-beta/2)`` on the real-FFT grid of `shape` (cycles/pixel), zero at DC; float32, read-only."""
    fy = scipy.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    f2 = fy**2 + fx**2
    f2[0, 0] = 1.0
    amplitude = f2 ** np.float32(-beta / 4)
    amplitude[0, 0] = 0.0
    amplitude.flags.writeable = False
    return amplitude


def _check_shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in shape)
        ok = all(float(v) == int(v) for v in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or height < 8 or width < 8:
        raise CadxInputError("shape", f"{shape!r} is not a (rows, columns) pair of integers >= 8",
                             "give e.g. (768, 768)")
    return height, width


def _check_number(value, name: str, low: float, high: float) -> float:
    return validation.in_range(value, name=name, low=low, high=high)


def _check_choice(value, name: str, choices: Sequence[str]) -> str:
    return validation.choice(value, name=name, choices=choices)
