"""Lesion-centred regions of interest (ROIs): 512 x 512 pixels at 0.1 mm/pixel.

Huynh, Li & Giger (2016) crop a 512 x 512 ROI at 0.1 mm/pixel (a 51.2 mm x 51.2 mm field) centred on the
expert-marked lesion centre. Sources come at other spacings (0.05 mm CBIS-DDSM, 0.2 mm MIAS, anisotropic scanners),
so the field is resampled, not just cut out.

Geometry
--------
Source pixel centres are at integer (row, col) positions, origin at the top-left pixel; the source image covers
``[-0.5, H - 0.5] x [-0.5, W - 0.5]``. Output pixel ``(i, j)`` has its centre at the source position::

    centre_rc + ((i - 255.5) * 0.1 / spacing_row, (j - 255.5) * 0.1 / spacing_col)

so a point exactly at ``centre_rc`` maps to the middle of the ROI (between pixels 255 and 256).

Resampling
----------
Separable, per axis, with ``scale = 0.1 mm / source spacing`` (source pixels per output pixel):

* ``scale <= 1`` (source as coarse as or coarser than 0.1 mm): linear interpolation (tent kernel).
* ``scale > 1`` (source finer than 0.1 mm): anti-aliasing by an exact **box average over the output pixel's
  footprint** (a box ``scale`` source pixels wide) of the linearly interpolated source, i.e. the tent kernel
  convolved with the box. A pattern whose period divides the footprint (a 0.05 mm checkerboard) averages to
  its mean exactly.

Output pixels whose centre lies outside the source image are padding: they get the ``value_range`` low value
(0 after mapping). Inside the image, kernel taps beyond the border repeat the edge pixel, so padding never
bleeds into image pixels. Presentation values are mapped linearly to uint16: ``lo -> 0``, ``hi -> 65535``,
clipped, rounded half-to-even (``np.rint``). Everything is float64 and sparse-matrix arithmetic without
threading, so the result is bit-identical across runs.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from PIL import Image
from skimage.filters import threshold_otsu

from cadx import validation
from cadx.errors import RoiError

__all__ = [
    "ROI_FIELD_MM",
    "ROI_PIXEL_MM",
    "ROI_SIZE_PX",
    "RoiCrop",
    "crop_mask",
    "crop_roi",
    "decode_png16",
    "encode_png16",
    "estimate_background_threshold",
    "roi_sha256",
]

ROI_SIZE_PX = 512
ROI_PIXEL_MM = 0.1
ROI_FIELD_MM = 51.2

_UINT16_MAX = 65535
_MOSTLY_BACKGROUND = 0.5
# estimate_background_threshold: bounds on the Otsu level, as fractions of the value range.
_THRESHOLD_MIN_FRACTION = 0.02
_THRESHOLD_MAX_FRACTION = 0.30
_THRESHOLD_MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class RoiCrop:
    """A lesion-centred ROI and its quality-control facts.

    Attributes
    ----------
    pixels : ndarray of uint16, shape (512, 512)
        The ROI at 0.1 mm/pixel (read-only).
    centre_rc : tuple of float
        The marked centre in source pixel coordinates (row, col), pixel centres at integers.
    source_pixel_mm : tuple of float
        The source (row, col) pixel spacing in mm.
    padded_fraction : float
        Fraction of ROI pixels whose centre fell outside the source image (filled with the pad value).
    background_fraction : float
        Fraction of ROI pixels that are background: below the background threshold, or padding.
    lesion_fits : bool or None
        Whether a lesion of the given diameter fits the 51.2 mm field; None when the size is unknown.
    flags : tuple of str
        Sorted QC flags from ``"lesion_exceeds_field"``, ``"mostly_background"``, ``"padded"``.
    """

    pixels: np.ndarray
    centre_rc: tuple[float, float]
    source_pixel_mm: tuple[float, float]
    padded_fraction: float
    background_fraction: float
    lesion_fits: bool | None
    flags: tuple[str, ...]


def crop_roi(
    image: np.ndarray,
    *,
    centre_rc: Sequence[float],
    pixel_spacing_mm: float | Sequence[float],
    value_range: Sequence[float],
    lesion_diameter_mm: float | None = None,
    background_threshold: float | None = None,
    source: str = "image",
) -> RoiCrop:
    """Crop a 51.2 mm field centred on a lesion and resample it to 512 x 512 pixels at 0.1 mm.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        The source image in presentation values (brighter = denser), any real dtype.
    centre_rc : (float, float)
        The marked lesion centre in source pixels (row, col), pixel centres at integers, origin top-left.
    pixel_spacing_mm : float or (float, float)
        Source (row, col) pixel spacing in mm; one number for square pixels.
    value_range : (float, float)
        ``(lo, hi)`` presentation values mapped to 0 and 65535. Padding gets ``lo``.
    lesion_diameter_mm : float, optional
        Lesion diameter; sets ``lesion_fits`` and the ``"lesion_exceeds_field"`` flag.
    background_threshold : float, optional
        Presentation value below which a pixel is background (air). Default:
        ``estimate_background_threshold(image, value_range=value_range)``; pass it when cropping several
        ROIs from one image, to compute it once.
    source : str, optional
        What the image is (file name, case id), named in error messages.

    Returns
    -------
    RoiCrop

    Raises
    ------
    RoiError
        If the image is not 2-D or has non-finite values in the field, the spacing or value range is bad,
        or the centre is non-finite or outside the image.
    """
    image = _check_image(image, source)
    spacing = _check_spacing(pixel_spacing_mm, source)
    lo, hi = _check_value_range(value_range, source)
    centre = _check_centre(centre_rc, image.shape, source)
    if lesion_diameter_mm is not None:
        lesion_diameter_mm = _check_positive(lesion_diameter_mm, "lesion diameter (mm)", source)
    if background_threshold is None:
        threshold = estimate_background_threshold(image, value_range=(lo, hi))
    else:
        threshold = _check_finite(background_threshold, "background threshold", source)

    values, padded = _resample(image, centre, spacing, source)
    values[padded] = lo
    background = padded | (values < threshold)

    scaled = (values - lo) * (_UINT16_MAX / (hi - lo))
    pixels = np.rint(np.clip(scaled, 0.0, _UINT16_MAX)).astype(np.uint16)
    pixels.flags.writeable = False

    padded_fraction = float(padded.mean())
    background_fraction = float(background.mean())
    lesion_fits = None if lesion_diameter_mm is None else bool(lesion_diameter_mm <= ROI_FIELD_MM)
    flags = []
    if padded_fraction > 0:
        flags.append("padded")
    if background_fraction > _MOSTLY_BACKGROUND:
        flags.append("mostly_background")
    if lesion_fits is False:
        flags.append("lesion_exceeds_field")
    return RoiCrop(
        pixels=pixels,
        centre_rc=centre,
        source_pixel_mm=spacing,
        padded_fraction=padded_fraction,
        background_fraction=background_fraction,
        lesion_fits=lesion_fits,
        flags=tuple(sorted(flags)),
    )


def crop_mask(
    mask: np.ndarray,
    *,
    centre_rc: Sequence[float],
    pixel_spacing_mm: float | Sequence[float],
    source: str = "mask",
) -> np.ndarray:
    """Crop a binary mask (e.g. a ground-truth outline) with the same geometry as `crop_roi`.

    The mask is resampled as a 0/1 image with the same kernel as `crop_roi` and an output pixel is set where
    the result exceeds 0.5: the area-majority rule when the source is finer than 0.1 mm, (close to)
    nearest-neighbour when it is coarser. Padding is False.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        The source mask (integer masks must hold only 0 and 1).
    centre_rc, pixel_spacing_mm
        As in `crop_roi`.
    source : str, optional
        What the mask is, named in error messages.

    Returns
    -------
    ndarray of bool, shape (512, 512)
    """
    mask = _check_image(mask, source)
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.integer) or not np.all((mask == 0) | (mask == 1)):
            raise RoiError(source, f"the mask has dtype {mask.dtype} and values other than 0/1",
                           "pass a boolean mask (True inside the lesion)")
    spacing = _check_spacing(pixel_spacing_mm, source)
    centre = _check_centre(centre_rc, mask.shape, source)
    values, padded = _resample(mask, centre, spacing, source)
    return (values > 0.5) & ~padded


def estimate_background_threshold(image: np.ndarray, *, value_range: Sequence[float]) -> float:
    """The presentation level separating breast from air in a whole image.

    Otsu's split (scikit-image) of the image's finite values (a regular subsample of at most about 10^6
    pixels), moved midway between the means of the two classes it separates, clamped to
    ``[lo + 2 %, lo + 30 %]`` of the value range: the upper bound keeps an image without air (all breast) from
    having its fatty tissue called background, the lower bound keeps a noise floor from being called breast.
    Compute it once per image and pass it to `crop_roi`.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        The whole source image in presentation values (brighter = denser).
    value_range : (float, float)
        ``(lo, hi)`` presentation range of the image.

    Returns
    -------
    float
        Values below it are background.
    """
    image = _check_image(image, "image")
    lo, hi = _check_value_range(value_range, "image")
    step = max(1, math.ceil(math.sqrt(image.size / _THRESHOLD_MAX_SAMPLES)))
    sample = np.asarray(image[::step, ::step], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    low = lo + _THRESHOLD_MIN_FRACTION * (hi - lo)
    high = lo + _THRESHOLD_MAX_FRACTION * (hi - lo)
    if sample.size == 0 or sample.min() == sample.max():
        return float(low)
    split = threshold_otsu(sample, nbins=256)
    below, above = sample[sample <= split], sample[sample > split]
    if below.size and above.size:
        # Midway between the two classes' means (one isodata step from Otsu's split): where air and breast
        # are cleanly separated, Otsu's criterion is flat across the gap and its split sits at the gap's edge.
        split = 0.5 * (below.mean() + above.mean())
    return float(np.clip(split, low, high))


def roi_sha256(pixels: np.ndarray) -> str:
    """The identity of an ROI's content: sha256 of its pixels and shape, independent of any PNG encoder.

    The digest is ``sha256(pixels as little-endian uint16, C order + b"shape=HxW")`` in hex.

    Parameters
    ----------
    pixels : ndarray of uint16, shape (H, W)

    Returns
    -------
    str
        64 hex digits.
    """
    pixels = _check_uint16(pixels, "ROI pixels")
    digest = hashlib.sha256(np.ascontiguousarray(pixels, dtype="<u2").tobytes())
    digest.update(f"shape={pixels.shape[0]}x{pixels.shape[1]}".encode("ascii"))
    return digest.hexdigest()


def encode_png16(pixels: np.ndarray) -> bytes:
    """Encode pixels as a lossless 16-bit greyscale PNG (Pillow mode ``"I;16"``).

    Parameters
    ----------
    pixels : ndarray of uint16, shape (H, W)

    Returns
    -------
    bytes
        The PNG file's content.
    """
    pixels = _check_uint16(pixels, "ROI pixels")
    height, width = pixels.shape
    data = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    # compress_level 1: on MIAS ROIs level 6 took 4x longer for files only 8% smaller.
    Image.frombytes("I;16", (width, height), data).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png16(data: bytes) -> np.ndarray:
    """Decode a 16-bit greyscale PNG written by `encode_png16`; the round trip is exact.

    Parameters
    ----------
    data : bytes
        The PNG file's content.

    Returns
    -------
    ndarray of uint16, shape (H, W)
        (512, 512) for an ROI.

    Raises
    ------
    RoiError
        If the data is not a 16-bit greyscale PNG.
    """
    source = "ROI PNG"
    fix = "re-create the ROI with cadx (ROIs are stored as 16-bit greyscale PNGs)"
    try:
        with Image.open(io.BytesIO(data)) as png:
            png.load()
            fmt, mode = png.format, png.mode
            array = np.array(png)
    except Exception as error:  # Pillow raises many types for bad data
        raise RoiError(source, f"cannot be read as a PNG ({error})", fix) from error
    if fmt != "PNG" or array.ndim != 2 or mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise RoiError(source, f"is a {fmt} image of mode {mode}, not a 16-bit greyscale PNG", fix)
    if array.dtype != np.uint16:  # older Pillow opens 16-bit PNGs as 32-bit "I"
        if array.min(initial=0) < 0 or array.max(initial=0) > _UINT16_MAX:
            raise RoiError(source, "has values outside 0..65535", fix)
        array = array.astype(np.uint16)
    return np.ascontiguousarray(array, dtype=np.uint16)


# --- resampling (written by hand: scipy/scikit-image have no area-averaging resampler for a non-integer,
# --- anisotropic scale around a sub-pixel centre; ndimage.zoom/map_coordinates do not anti-alias and
# --- skimage.transform.rescale uses a Gaussian that leaves a fine checkerboard visible) -------------------


def _resample(image: np.ndarray, centre: tuple[float, float], spacing: tuple[float, float], source: str):
    """Resample the field around ``centre`` to (512, 512) float64; also return the padded-pixel mask."""
    rows, row_first, row_outside = _axis_weights(centre[0], ROI_PIXEL_MM / spacing[0], image.shape[0])
    cols, col_first, col_outside = _axis_weights(centre[1], ROI_PIXEL_MM / spacing[1], image.shape[1])
    window = np.asarray(
        image[row_first : row_first + rows.shape[1], col_first : col_first + cols.shape[1]], dtype=np.float64
    )
    if not np.all(np.isfinite(window)):
        raise RoiError(source, "has non-finite values (NaN or infinity) inside the ROI field",
                       "replace missing values in the image before cropping")
    values = np.asarray(cols @ np.asarray(rows @ window).T).T  # (512, 512)
    padded = row_outside[:, None] | col_outside[None, :]
    return np.ascontiguousarray(values), padded


def _axis_weights(centre: float, scale: float, n_source: int):
    """1-D resampling weights along one axis.

    Returns a sparse (512, m) matrix over source indices ``first .. first + m - 1``, ``first`` and a (512,)
    bool array marking output pixels whose centre lies outside the source.
    """
    positions = centre + (np.arange(ROI_SIZE_PX) - (ROI_SIZE_PX - 1) / 2) * scale
    outside = (positions < -0.5) | (positions > n_source - 0.5)
    half_width = 1.0 + (scale / 2 if scale > 1 else 0.0)  # support of the kernel, in source pixels
    n_taps = math.ceil(2 * half_width) + 1
    taps = np.floor(positions - half_width)[:, None] + np.arange(n_taps)[None, :]  # (512, n_taps) indices
    offset = positions[:, None] - taps
    if scale > 1:
        # Box of width `scale` over the linearly interpolated source: integral of the tent via its CDF.
        weights = (_tent_cdf(offset + scale / 2) - _tent_cdf(offset - scale / 2)) / scale
    else:
        weights = np.maximum(0.0, 1.0 - np.abs(offset))
    indices = np.clip(taps, 0, n_source - 1).astype(np.int64)  # edge pixels repeat beyond the border
    first = int(indices.min())
    size = int(indices.max()) - first + 1
    row_ids = np.repeat(np.arange(ROI_SIZE_PX), n_taps)
    matrix = scipy.sparse.csr_matrix(
        (weights.ravel(), (row_ids, indices.ravel() - first)), shape=(ROI_SIZE_PX, size)
    )
    matrix.sum_duplicates()
    return matrix, first, outside


def _tent_cdf(u: np.ndarray) -> np.ndarray:
    """Integral of the unit tent ``max(0, 1 - |t|)`` from -inf to ``u``."""
    u = np.clip(u, -1.0, 1.0)
    return np.where(u < 0, 0.5 * (u + 1) ** 2, 1.0 - 0.5 * (1 - u) ** 2)


# --- input checks -----------------------------------------------------------------------------------------


def _check_image(image, source: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise RoiError(source, f"is an array of shape {image.shape}, not a 2-D image",
                       "pass one greyscale frame as a (rows, columns) array")
    if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer)
            or np.issubdtype(image.dtype, np.floating)):
        raise RoiError(source, f"has dtype {image.dtype}, not real numbers", "pass a numeric greyscale image")
    return image


def _check_spacing(spacing, source: str) -> tuple[float, float]:
    return validation.pixel_spacing(
        spacing, source=source, what="pixel spacing", error=RoiError,
        fix="give the source pixel size in millimetres, e.g. (0.05, 0.05) for CBIS-DDSM or 0.2 for MIAS")


def _check_value_range(value_range, source: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        lo, hi = math.nan, math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise RoiError(source, f"value range {value_range!r} is not a (low, high) pair with high > low",
                       "give the presentation range of the image, e.g. (0, 255) for 8-bit or (0, 4095) for 12-bit")
    return lo, hi


def _check_centre(centre_rc, shape: tuple[int, int], source: str) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in centre_rc)
    except (TypeError, ValueError):
        row, col = math.nan, math.nan
    height, width = shape
    inside = -0.5 <= row <= height - 0.5 and -0.5 <= col <= width - 0.5  # False for NaN
    if not inside:
        raise RoiError(
            source,
            f"the lesion centre (row, col) = {centre_rc!r} is not inside the image of {height} rows x {width} "
            "columns",
            "check the coordinate convention: centre_rc is (row, col) in source pixels with the origin at the "
            "top-left pixel centre; swap x/y if the marks are (x, y), convert 1-based or bottom-left origins "
            "(MIAS measures y from the bottom), and rescale marks made on a resized image",
        )
    return row, col


def _check_positive(value, name: str, source: str) -> float:
    return validation.positive(value, name=name, source=source, error=RoiError)


def _check_finite(value, name: str, source: str) -> float:
    return validation.finite(value, name=name, source=source, error=RoiError)


def _check_uint16(pixels, source: str) -> np.ndarray:
    if not isinstance(pixels, np.ndarray) or pixels.dtype.kind != "u" or pixels.dtype.itemsize != 2 or pixels.ndim != 2:
        what = (f"{pixels.dtype} array of shape {pixels.shape}" if isinstance(pixels, np.ndarray)
                else type(pixels).__name__)
        raise RoiError(source, f"is a {what}, not a 2-D uint16 array", "pass RoiCrop.pixels (uint16, 512 x 512)")
    return pixels
