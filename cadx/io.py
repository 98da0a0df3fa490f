"""Read mammograms from DICOM and greyscale raster files into de-identified :class:`Mammogram` objects.

Every reader returns presentation values (higher = denser/brighter) as ``float32``, the full range those values can
take (so they can be mapped to ``uint16`` deterministically), the pixel size when known, the file's SHA-256 and a
de-identified header. DICOM files go through the Modality LUT, then the VOI LUT or window stored in the file, then
MONOCHROME1 inversion (pydicom 3, with the pylibjpeg / pyjpegls plugins for compressed transfer syntaxes).

De-identification: the returned object holds no names, IDs, dates, times, UIDs (other than the transfer syntax),
institutions, descriptions, private tags or sequences. The header is built from the whitelist
:data:`DEIDENTIFIED_TAGS`; the PatientID is kept only as an HMAC pseudonym when the caller gives a secret key.

Formats are recognised by content (magic bytes), never by file extension. Every failure to read a file raises
:class:`cadx.errors.ImageReadError` naming the file, the problem and a fix.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Union

import numpy as np

from cadx import validation
from cadx.errors import CadxInputError, ImageReadError
from cadx.sources import parse_cbis_name

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "DEIDENTIFIED_TAGS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "Mammogram",
    "max_image_pixels",
    "pseudonymise",
    "read_dicom",
    "read_image",
    "read_image_bytes",
    "read_jpeg",
    "read_raster",
    "require_pixel_spacing",
    "to_uint16",
]

_PathLike = Union[str, "os.PathLike[str]"]

#: Header keywords copied from a DICOM file into :attr:`Mammogram.header`. Only acquisition/geometry/display
#: attributes that identify neither the patient nor the institution, the study, the device or the operator.
DEIDENTIFIED_TAGS: tuple[str, ...] = (
    "Modality",
    "PresentationIntentType",
    "ImageType",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "PatientOrientation",
    "BodyPartExamined",
    "BreastImplantPresent",
    "PartialView",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "EstimatedRadiographicMagnificationFactor",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
    "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign",
    "LossyImageCompression",
    "BurnedInAnnotation",
    "Manufacturer",
    "ManufacturerModelName",
    "TransferSyntaxUID",
)

_MIN_KEY_BYTES = 16

_SUPPORTED_FORMATS = (
    "DICOM (Part 10 files with the 'DICM' marker), PGM (P2 or P5, 8 or 16 bit), PNG and TIFF (8- or 16-bit greyscale)"
)
_DECODERS_HELP = (
    "pydicom itself reads uncompressed, Deflated and RLE Lossless files; pylibjpeg with pylibjpeg-libjpeg decodes "
    "JPEG Baseline/Extended/Lossless (and JPEG-LS), pyjpegls decodes JPEG-LS, pylibjpeg-openjpeg decodes "
    "JPEG 2000 (and HTJ2K), pylibjpeg-rle decodes RLE Lossless"
)
_SPACING_FIX = "pass the pixel size in mm, e.g. --pixel-size-mm 0.1 (pixel_spacing_mm=0.1)"
# Never wrapped into ImageReadError. Everything else raised while parsing/decoding is, including BaseException
# subclasses such as pyo3's PanicException (raised by the Rust RLE decoder on corrupt data).
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Decompression-bomb guard: the most pixels (Rows x Columns x frames x samples) an image may declare, checked from
#: its header before anything is decoded. The largest real mammograms (DDSM film scans at 43.5 um, about
#: 7000 x 5000) have under 40 million; ``CADX_MAX_IMAGE_PIXELS`` raises or lowers it.
DEFAULT_MAX_IMAGE_PIXELS = 80_000_000
_MAX_BYTES_PER_PIXEL = 2  # the budget in bytes is max_image_pixels x 2 (16-bit samples)
_DEFLATE_HEADER_BYTES = 8 * 1024**2  # how much of a deflated dataset is inflated to find Rows/Columns
_DEFLATE_SLACK_BYTES = 16 * 1024**2  # what a deflated dataset may hold besides its pixel data
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True, eq=False)
class Mammogram:
    """A mammogram read from a file, de-identified.

    Attributes
    ----------
    pixels : ndarray of shape (H, W), float32
        Presentation values, higher = denser/brighter (DICOM: Modality LUT, then VOI LUT or window, then
        MONOCHROME1 inverted). Read-only; copy before modifying.
    value_range : tuple of (float, float)
        ``(low, high)``, the full range ``pixels`` can take, defined by the format and not by the image content:
        ``(0, maxval)`` for PGM, ``(0, 255)`` / ``(0, 65535)`` for 8/16-bit PNG and TIFF; for DICOM the window's
        output range, the (min, max) of the VOI LUT output, or without a VOI the (min, max) of the Modality LUT
        output over all storable values.
    pixel_spacing_mm : tuple of (float, float) or None
        ``(row, column)`` spacing in mm, or None when unknown (see :func:`require_pixel_spacing`).
    pixel_spacing_source : str or None
        ``"PixelSpacing"``, ``"ImagerPixelSpacing"``, ``"user"`` or None.
    source_sha256 : str
        SHA-256 (hex) of the file's bytes.
    source_format : str
        ``"dicom"``, ``"pgm"``, ``"png"`` or ``"tiff"``.
    modality : str or None
        DICOM Modality (e.g. ``"MG"``); None for rasters.
    view : str or None
        DICOM ViewPosition (e.g. ``"CC"``, ``"MLO"``), else the view in a CBIS-DDSM PatientID; None otherwise.
    laterality : str or None
        ``"L"`` or ``"R"`` from ImageLaterality, else Laterality, else the side in a CBIS-DDSM PatientID; None
        otherwise.
    photometric : str
        ``"MONOCHROME1"`` or ``"MONOCHROME2"`` as stored (rasters: ``"MONOCHROME2"``). ``pixels`` are already
        inverted for MONOCHROME1.
    header : dict of str to object
        De-identified header subset (keywords from :data:`DEIDENTIFIED_TAGS`; values str, int, float or lists).
    burned_in_annotation : bool
        True when DICOM BurnedInAnnotation is ``"YES"`` (the pixels may show text that identifies the patient).
    patient_key : str or None
        :func:`pseudonymise` of the DICOM PatientID when a key was given, else None. A PatientID in a known
        per-image naming (``patient_naming``) is pseudonymised by its patient part alone.
    patient_naming : str or None
        ``"CBIS-DDSM"`` when the PatientID follows CBIS-DDSM's naming (patient, side and view:
        :func:`cadx.sources.parse_cbis_name`), which then also gives ``view`` and ``laterality`` where the header
        has none; None otherwise.
    """

    pixels: np.ndarray
    value_range: tuple[float, float]
    pixel_spacing_mm: tuple[float, float] | None
    pixel_spacing_source: str | None
    source_sha256: str
    source_format: str
    modality: str | None
    view: str | None
    laterality: str | None
    photometric: str
    header: dict[str, object]
    burned_in_annotation: bool
    patient_key: str | None
    patient_naming: str | None = None

    def metadata(self) -> dict[str, object]:
        """Return every field except ``pixels`` as a JSON-serialisable dict.

        Returns
        -------
        dict of str to object
            Tuples become lists; the header is copied.
        """
        out: dict[str, object] = {}
        for field in fields(self):
            if field.name == "pixels":
                continue
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[field.name] = value
        return out


# ----------------------------------------------------------------------------------------------------------------
# Public helpers


def pseudonymise(value: str, *, key: bytes) -> str:
    """Return an opaque, stable pseudonym of `value`.

    Parameters
    ----------
    value : str
        The identifier to hide, e.g. a DICOM PatientID.
    key : bytes
        A secret of at least 16 bytes, kept per installation (e.g. ``secrets.token_bytes(32)``).

    Returns
    -------
    str
        The first 16 hex digits of HMAC-SHA256(key, value as UTF-8).

    Raises
    ------
    TypeError
        If `value` is not a str or `key` is not bytes.
    ValueError
        If `key` is shorter than 16 bytes.
    """
    if not isinstance(value, str):
        raise TypeError(f"value must be a str, not {type(value).__name__}")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"key must be at least {_MIN_KEY_BYTES} bytes long, got {len(key)}")
    return hmac.new(bytes(key), value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def to_uint16(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map presentation values linearly from `value_range` onto 0..65535.

    Parameters
    ----------
    pixels : array_like of shape (H, W)
        Presentation values (any shape is accepted).
    value_range : tuple of (float, float)
        ``(low, high)`` with ``low < high``; ``low`` maps to 0 and ``high`` to 65535.

    Returns
    -------
    ndarray of shape (H, W), uint16
        ``round((pixels - low) * 65535 / (high - low))`` clipped to 0..65535 (round half to even), computed in
        float64 so the result is deterministic.

    Raises
    ------
    ValueError
        If `value_range` is not two finite numbers with ``low < high`` or `pixels` contains NaN.
    """
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be two numbers (low, high), got {value_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"value_range must be finite with low < high, got {value_range!r}")
    arr = np.asarray(pixels, dtype=np.float64)
    if np.isnan(arr).any():
        raise ValueError("pixels contain NaN")
    scaled = (arr - low) * (65535.0 / (high - low))
    np.clip(scaled, 0.0, 65535.0, out=scaled)
    return np.rint(scaled).astype(np.uint16)


def require_pixel_spacing(mammogram: Mammogram, source: str) -> tuple[float, float]:
    """Return the pixel spacing of `mammogram`, or raise when it is unknown.

    Parameters
    ----------
    mammogram : Mammogram
        An image returned by one of the readers.
    source : str
        The file or upload name, used in the message.

    Returns
    -------
    tuple of (float, float)
        ``(row, column)`` spacing in mm.

    Raises
    ------
    ImageReadError
        If ``mammogram.pixel_spacing_mm`` is None; the message tells the user to pass the pixel size.
    """
    if mammogram.pixel_spacing_mm is not None:
        return mammogram.pixel_spacing_mm
    if mammogram.source_format == "dicom":
        problem = "the pixel size is unknown: the DICOM file has neither PixelSpacing nor ImagerPixelSpacing"
    else:
        problem = f"the pixel size is unknown: {mammogram.source_format.upper()} files do not record it"
    raise ImageReadError(source, problem, _SPACING_FIX)


# ----------------------------------------------------------------------------------------------------------------
# Public readers


def read_image(
    path: _PathLike,
    *,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    pseudonym_key: bytes | None = None,
) -> Mammogram:
    """Read a DICOM, PGM, PNG or TIFF mammogram, recognised by its content.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    pixel_spacing_mm : float or tuple of (float, float), optional
        Pixel size in mm (one value for square pixels, or ``(row, column)``); overrides the file's own.
    pseudonym_key : bytes, optional
        Secret used to pseudonymise the DICOM PatientID into ``patient_key``; without it ``patient_key`` is None.

    Returns
    -------
    Mammogram
        The de-identified image.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, of an unsupported format, corrupt, or has an invalid pixel size.
    """
    source = os.fspath(path)
    spacing = _validate_user_spacing(pixel_spacing_mm, source)
    _validate_key(pseudonym_key)
    data = _read_file(path, source)
    return _read_any(data, source, spacing, pseudonym_key)


def read_image_bytes(
    data: bytes,
    *,
    name: str,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    pseudonym_key: bytes | None = None,
) -> Mammogram:
    """Read a mammogram from the bytes of a file (e.g. an upload), recognised by its content.

    Parameters
    ----------
    data : bytes
        The file's content.
    name : str
        Name shown in error messages (e.g. the uploaded file's name); not used otherwise.
    pixel_spacing_mm : float or tuple of (float, float), optional
        Pixel size in mm; overrides the file's own.
    pseudonym_key : bytes, optional
        Secret used to pseudonymise the DICOM PatientID.

    Returns
    -------
    Mammogram
        The de-identified image.

    Raises
    ------
    TypeError
        If `data` is not bytes-like.
    ImageReadError
        As :func:`read_image`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    source = str(name)
    spacing = _validate_user_spacing(pixel_spacing_mm, source)
    _validate_key(pseudonym_key)
    return _read_any(bytes(data), source, spacing, pseudonym_key)


def read_dicom(
    path: _PathLike,
    *,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    pseudonym_key: bytes | None = None,
) -> Mammogram:
    """Read a single-frame greyscale DICOM image.

    Applies the Modality LUT (or rescale), then the first VOI LUT or window in the file (without one, the whole
    Modality LUT output range is kept), then inverts MONOCHROME1 so that higher values are denser.

    Parameters
    ----------
    path : str or os.PathLike
        The DICOM file.
    pixel_spacing_mm : float or tuple of (float, float), optional
        Pixel size in mm; overrides PixelSpacing / ImagerPixelSpacing (recorded as ``"user"``).
    pseudonym_key : bytes, optional
        Secret used to pseudonymise the PatientID into ``patient_key``.

    Returns
    -------
    Mammogram
        The de-identified image; ``pixel_spacing_mm`` is None when the file has neither PixelSpacing nor
        ImagerPixelSpacing and none was given.

    Raises
    ------
    ImageReadError
        If the file is not DICOM, is truncated or corrupt, has no pixel data, is multi-frame or colour, uses a
        transfer syntax no installed package decodes, or has an invalid pixel size or VOI/Modality LUT.
    """
    source = os.fspath(path)
    spacing = _validate_user_spacing(pixel_spacing_mm, source)
    _validate_key(pseudonym_key)
    data = _read_file(path, source)
    return _dicom_from_bytes(data, source, spacing, pseudonym_key)


def read_raster(path: _PathLike, *, pixel_spacing_mm: float | tuple[float, float] | None) -> Mammogram:
    """Read a greyscale PGM (P2/P5), PNG or TIFF image.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    pixel_spacing_mm : float or tuple of (float, float) or None
        Pixel size in mm (rasters do not record it); None leaves it unknown.

    Returns
    -------
    Mammogram
        ``pixels`` as stored, ``value_range`` ``(0, maxval)`` for PGM and ``(0, 255)`` / ``(0, 65535)`` for
        8/16-bit PNG and TIFF. Colour or palette images are accepted only when all channels are equal (and any
        alpha is opaque).

    Raises
    ------
    ImageReadError
        If the file is not PGM/PNG/TIFF, is corrupt or truncated, is colour, multi-page, has an unsupported bit
        depth, or the pixel size is invalid.
    """
    source = os.fspath(path)
    spacing = _validate_user_spacing(pixel_spacing_mm, source)
    data = _read_file(path, source)
    fmt = _sniff(data)
    if fmt not in ("pgm", "png", "tiff"):
        if fmt == "dicom":
            raise ImageReadError(
                source, "this is a DICOM file, not a PGM/PNG/TIFF image", "read it with read_dicom or read_image"
            )
        raise _unknown_format_error(data, source)
    return _raster_from_bytes(data, source, fmt, spacing)


def read_jpeg(path: _PathLike, *, pixel_spacing_mm: float | tuple[float, float] | None) -> Mammogram:
    """Read a greyscale JPEG view, as datasets such as mini-DDSM distribute them (lossy: only where a dataset is
    published that way; :func:`read_image` and the manifests keep refusing JPEG).

    Parameters and result as :func:`read_raster` (``value_range`` ``(0, 255)``, ``source_format`` ``"jpeg"``).
    """
    source = os.fspath(path)
    spacing = _validate_user_spacing(pixel_spacing_mm, source)
    data = _read_file(path, source)
    if data[:3] != b"\xff\xd8\xff":
        raise ImageReadError(source, "this is not a JPEG file", "give the view's JPEG image as the dataset ships it")
    return _raster_from_bytes(data, source, "jpeg", spacing)


# ----------------------------------------------------------------------------------------------------------------
# Decompression bombs


def max_image_pixels() -> int:
    """The pixel limit in force: ``CADX_MAX_IMAGE_PIXELS`` or :data:`DEFAULT_MAX_IMAGE_PIXELS`."""
    raw = os.environ.get("CADX_MAX_IMAGE_PIXELS", "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise CadxInputError("CADX_MAX_IMAGE_PIXELS", f"must be a positive number of pixels, got {raw!r}",
                             f"unset it (default {DEFAULT_MAX_IMAGE_PIXELS}) or give a whole number of pixels")
    return value


def _too_large(source: str, what: str, n_pixels: int, limit: int) -> ImageReadError:
    return ImageReadError(
        source,
        f"the image declares {what} = {n_pixels / 1e6:.1f} million pixels, over the limit of {limit / 1e6:g} million "
        "(checked before decoding: a decompression bomb, or far larger than any mammogram)",
        f"if the image is genuine, raise the limit with the environment variable CADX_MAX_IMAGE_PIXELS (now {limit}; "
        f"e.g. CADX_MAX_IMAGE_PIXELS={2 * limit}) and run again; decoding needs about 15 bytes of memory per pixel",
    )


def _check_pixels(source: str, rows: int, cols: int, *, frames: int = 1, samples: int = 1,
                  bytes_per_sample: int = 1) -> None:
    """Refuse an image whose header declares more pixels (or decoded bytes) than the limit, before decoding."""
    limit = max_image_pixels()
    n_pixels = max(rows, 0) * max(cols, 0) * max(frames, 1) * max(samples, 1)
    what = f"{rows} rows x {cols} columns" + (f" x {frames} frames" if frames > 1 else "") + (
        f" x {samples} samples" if samples > 1 else "")
    if n_pixels > limit or n_pixels * max(bytes_per_sample, 1) > limit * _MAX_BYTES_PER_PIXEL:
        raise _too_large(source, what, n_pixels, limit)


def _int_attr(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _check_dicom_size(data: bytes, source: str) -> None:
    """Read only the DICOM header (inflating at most a few MiB of a Deflated dataset) and refuse images larger
    than the limit; for Deflated files also refuse a dataset that inflates to far more than its pixels need."""
    import zlib

    import pydicom
    from pydicom import uid as pd_uid
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble

    fp = io.BytesIO(data)
    try:
        read_preamble(fp, force=True)
        file_meta = _read_file_meta_info(fp)
        tsuid = file_meta.get("TransferSyntaxUID")
        start = fp.tell()
    except _FATAL:
        raise
    except BaseException:  # noqa: BLE001 - not parseable here: the full reader reports it properly
        return
    deflated = tsuid == pd_uid.DeflatedExplicitVRLittleEndian
    try:
        if deflated:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            head = inflater.decompress(data[start:], _DEFLATE_HEADER_BYTES)
            ds = read_dataset(io.BytesIO(head), False, True, stop_when=_at_pixel_data)
        else:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except _FATAL:
        raise
    except BaseException:  # noqa: BLE001 - a header that cannot be parsed is reported by the full reader
        if deflated:
            raise ImageReadError(source, "the deflated DICOM dataset cannot be read", "copy or export the file "
                                 "again from the original source (PACS)") from None
        return
    rows, cols = _int_attr(ds, "Rows", 0), _int_attr(ds, "Columns", 0)
    frames, samples = _int_attr(ds, "NumberOfFrames", 1), _int_attr(ds, "SamplesPerPixel", 1)
    bits = _int_attr(ds, "BitsAllocated", 16)
    bytes_per_sample = max((bits + 7) // 8, 1)
    _check_pixels(source, rows, cols, frames=frames, samples=samples, bytes_per_sample=bytes_per_sample)
    if deflated:
        if not (rows and cols):
            raise ImageReadError(source, f"no Rows/Columns in the first {_DEFLATE_HEADER_BYTES // 1024**2} MiB of "
                                 "the deflated DICOM dataset", "export the file again (uncompressed or JPEG)")
        bound = rows * cols * max(frames, 1) * max(samples, 1) * bytes_per_sample + _DEFLATE_SLACK_BYTES
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pending, total = data[start:], 0
        while pending:  # count the inflated size in 1 MiB steps, never holding it
            total += len(inflater.decompress(pending, 1024**2))
            pending = inflater.unconsumed_tail
            if total > bound:
                raise ImageReadError(
                    source, f"the deflated DICOM dataset inflates to over {bound / 1024**2:.0f} MiB, more than its "
                    f"{rows} x {cols} pixels need (a decompression bomb)", "export the file again from the original "
                    "source (PACS)")
            if inflater.eof:
                break


# ----------------------------------------------------------------------------------------------------------------
# Input handling


def _read_file(path: _PathLike, source: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ImageReadError(source, "the file does not exist", "check the path and the file name") from None
    except IsADirectoryError:
        raise ImageReadError(source, "this is a folder, not an image file", "give the path of an image file") from None
    except PermissionError:
        raise ImageReadError(
            source, "the file cannot be read (permission denied)", "check the file's permissions"
        ) from None
    except OSError as exc:
        raise ImageReadError(
            source, f"the file cannot be read ({exc.strerror or exc})", "check the path and the disk"
        ) from None


def _validate_key(key: bytes | None) -> None:
    if key is None:
        return
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"pseudonym_key must be bytes, not {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"pseudonym_key must be at least {_MIN_KEY_BYTES} bytes long, got {len(key)}")


def _check_spacing(values: object, source: str, what: str, fix: str) -> tuple[float, float]:
    """Return ``(row, col)`` floats from one number or a pair; raise ImageReadError when invalid."""
    return validation.pixel_spacing(values, source=source, what=what, fix=fix, error=ImageReadError)


def _validate_user_spacing(value: object, source: str) -> tuple[float, float] | None:
    if value is None:
        return None
    return _check_spacing(
        value, source, "the given pixel size",
        "give the pixel size in mm, e.g. --pixel-size-mm 0.1 (range {}-{:g} mm)".format(
            *validation.PIXEL_SPACING_RANGE_MM),
    )


def _sniff(data: bytes) -> str | None:
    """Return "dicom", "pgm", "png", "tiff" or None from the leading bytes."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:8] == _PNG_MAGIC:
        return "png"
    if data[:4] in _TIFF_MAGICS:
        return "tiff"
    if len(data) >= 3 and data[:2] in (b"P2", b"P5") and data[2:3].isspace():
        return "pgm"
    return None


def _looks_like_raw_dicom(data: bytes) -> bool:
    """True for a DICOM stream without preamble: starts with a group 0x0002 or 0x0008 tag (little endian)."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00")


def _describe(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "it looks like a JPEG image"
    if data[:2] in (b"P1", b"P3", b"P4", b"P6"):
        return "it looks like a PBM/PPM (bi-level or colour Netpbm) image"
    if data[:4] == b"%PDF":
        return "it looks like a PDF document"
    if data[:4] == b"PK\x03\x04":
        return "it looks like a ZIP archive"
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "its content is not recognised"
    if text and all(c.isprintable() or c.isspace() for c in text):
        return "it looks like a text file"
    return "its content is not recognised"


def _unknown_format_error(data: bytes, source: str) -> ImageReadError:
    return ImageReadError(
        source,
        f"not a supported image format ({_describe(data)}; the format is recognised by content, not by extension)",
        f"give a file in one of the supported formats: {_SUPPORTED_FORMATS}",
    )


def _empty_error(source: str) -> ImageReadError:
    return ImageReadError(
        source, "the file is empty (0 bytes)", "copy or export the image again; the file has no content"
    )


def _read_any(data: bytes, source: str, spacing: tuple[float, float] | None, key: bytes | None) -> Mammogram:
    if not data:
        raise _empty_error(source)
    fmt = _sniff(data)
    if fmt == "dicom" or (fmt is None and _looks_like_raw_dicom(data)):
        return _dicom_from_bytes(data, source, spacing, key)
    if fmt is None:
        raise _unknown_format_error(data, source)
    return _raster_from_bytes(data, source, fmt, spacing)


def _finish(pixels: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(pixels, dtype=np.float32)
    out.flags.writeable = False
    return out


# ----------------------------------------------------------------------------------------------------------------
# DICOM


def _short(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _dicom_from_bytes(
    data: bytes, source: str, user_spacing: tuple[float, float] | None, key: bytes | None
) -> Mammogram:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise _empty_error(source)
    corrupt_fix = "the file is damaged or incomplete: copy or export it again from the original source (PACS)"
    _check_dicom_size(data, source)  # before anything is decoded or inflated
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        if not _looks_like_raw_dicom(data):
            sniffed = _sniff(data)
            hint = _describe(data) if sniffed is None else f"it is a {sniffed.upper()} image"
            raise ImageReadError(
                source,
                f"not a DICOM file (no 'DICM' marker at byte 128; {hint})",
                "give a DICOM Part 10 file, or read rasters with read_image; supported formats: " + _SUPPORTED_FORMATS,
            ) from None
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - any parser failure means a corrupt file
            raise ImageReadError(source, f"the DICOM file cannot be parsed ({_short(exc)})", corrupt_fix) from None
    except _FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - pydicom raises many types on truncated/corrupt files
        raise ImageReadError(source, f"the DICOM file is truncated or corrupt ({_short(exc)})", corrupt_fix) from None

    try:
        arr = _decode_dicom_pixels(ds, source, corrupt_fix)
        pixels, value_range = _presentation(arr, ds, source)
        spacing, spacing_source = _dicom_spacing(ds, source, user_spacing)
        header = _deidentified_header(ds)
    except ImageReadError:
        raise
    except _FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - malformed attributes surface as assorted pydicom errors
        raise ImageReadError(source, f"the DICOM header is malformed ({_short(exc)})", corrupt_fix) from None

    pid = _safe_str(ds, "PatientID")
    # CBIS-DDSM's PatientID names the image, not the woman (Mass-Test_P_00820_LEFT_CC): the pseudonym is of its
    # patient part, so that all her views share it, and its side and view stand in for missing header fields.
    cbis = parse_cbis_name(pid) if pid else None
    patient_key = None
    if key is not None and pid:
        patient_key = pseudonymise(cbis.patient_id if cbis is not None else pid, key=key)
    laterality = (_safe_str(ds, "ImageLaterality").upper() or _safe_str(ds, "Laterality").upper()
                  or (cbis.laterality if cbis is not None else ""))
    return Mammogram(
        pixels=_finish(pixels),
        value_range=value_range,
        pixel_spacing_mm=spacing,
        pixel_spacing_source=spacing_source,
        source_sha256=hashlib.sha256(data).hexdigest(),
        source_format="dicom",
        modality=_safe_str(ds, "Modality") or None,
        view=_safe_str(ds, "ViewPosition").upper() or (cbis.view if cbis is not None else None),
        laterality=laterality if laterality in ("L", "R") else None,
        photometric=str(ds.PhotometricInterpretation),
        header=header,
        burned_in_annotation=_safe_str(ds, "BurnedInAnnotation").upper() == "YES",
        patient_key=patient_key,
        patient_naming="CBIS-DDSM" if cbis is not None else None,
    )


def _safe_str(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return ""
    if value is None or isinstance(value, (bytes, list)):
        return ""
    return str(value).strip()


def _decode_dicom_pixels(ds: Dataset, source: str, corrupt_fix: str) -> np.ndarray:
    from pydicom import uid as pd_uid
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError(
                source,
                "the DICOM file stores floating-point pixel data, which cadx does not read",
                "export the image with integer pixel data (a standard MG/DX image)",
            )
        raise ImageReadError(
            source,
            "the DICOM file has no pixel data: it is either cut off before the pixel data (truncated) or not an "
            "image (e.g. a report or a presentation state)",
            "give the complete DICOM file of the image itself (copy or export it again if it is truncated)",
        )
    photometric = _safe_str(ds, "PhotometricInterpretation").upper()
    samples = ds.get("SamplesPerPixel", 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or (samples not in (None, "") and int(samples) != 1):
        raise ImageReadError(
            source,
            f"the DICOM image is in colour (PhotometricInterpretation {photometric or 'missing'}, "
            f"SamplesPerPixel {samples}); mammograms are greyscale",
            "export the image as greyscale (MONOCHROME2) DICOM",
        )
    frames = ds.get("NumberOfFrames", 1)
    try:
        n_frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:
        raise ImageReadError(
            source,
            f"the DICOM file holds {n_frames} frames (e.g. tomosynthesis); cadx reads single 2-D mammograms",
            "export the 2-D mammogram (FFDM or synthetic 2-D view) as its own single-frame DICOM file",
        )

    file_meta = getattr(ds, "file_meta", None)
    tsuid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not tsuid:
        is_implicit, is_little = getattr(ds, "original_encoding", (None, None))
        if is_little is None:
            raise ImageReadError(source, "the DICOM file has no transfer syntax", corrupt_fix)
        if is_little:
            tsuid = pd_uid.ImplicitVRLittleEndian if is_implicit else pd_uid.ExplicitVRLittleEndian
        else:
            tsuid = pd_uid.ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = tsuid
    tsuid = pd_uid.UID(str(tsuid))
    ts_name = tsuid.name if tsuid.name != str(tsuid) else "unknown"
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise ImageReadError(
            source,
            f"the pixel data uses transfer syntax {tsuid} ({ts_name}), which no installed package decodes",
            f"convert the file to an uncompressed or supported syntax (e.g. `gdcmconv --raw in.dcm out.dcm`); "
            f"{_DECODERS_HELP}",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise ImageReadError(
            source,
            f"the pixel data uses transfer syntax {tsuid} ({ts_name}) but no decoder for it is installed "
            f"(missing: {missing})",
            f"install one of the missing packages, or convert the file (e.g. `gdcmconv --raw`); {_DECODERS_HELP}",
        )
    if not tsuid.is_compressed:
        _check_native_length(ds, source, n_frames, corrupt_fix)
    else:
        _check_codestream_end(ds, tsuid, ts_name, source, corrupt_fix)
    if tsuid == pd_uid.RLELossless and "pydicom" in decoder.available_plugins:
        # pydicom's own RLE decoder: ~10x slower than pylibjpeg-rle (about 1 s for a full-field mammogram) but it
        # reports corrupt data as an exception, where the Rust decoder panics and prints a backtrace to stderr.
        ds.pixel_array_options(decoding_plugin="pydicom")
    try:
        arr = ds.pixel_array
    except _FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise ValueError, RuntimeError, OSError, ...
        raise ImageReadError(
            source,
            f"the pixel data cannot be decoded ({ts_name}; {_short(exc)})",
            corrupt_fix,
        ) from None
    if arr.ndim != 2:
        raise ImageReadError(
            source,
            f"the decoded pixel data has shape {arr.shape}, not a single 2-D greyscale image",
            "export the 2-D mammogram as a single-frame greyscale DICOM file",
        )
    return arr


def _check_codestream_end(ds: Dataset, tsuid: str, ts_name: str, source: str, corrupt_fix: str) -> None:
    """Raise when a JPEG, JPEG-LS or JPEG 2000 frame lacks its closing marker (EOI / EOC, both FFD9).

    The decoders do not: pyjpegls and libjpeg decode a codestream cut to a third into an image whose missing rows
    are garbage or grey, without an error. Entropy-coded data never holds FFD9 (JPEG stuffs a 00 after every FF,
    JPEG-LS and JPEG 2000 a byte below 0x90), so a frame that does not end with it was cut. DICOM pads a fragment
    to an even length with 00 (and some writers with FF), which is stripped first. RLE needs no check here: its
    header gives the segment offsets and pydicom's decoder (the one used) refuses short segments.
    """
    from pydicom import uid as pd_uid
    from pydicom.encaps import generate_frames

    marked = (*pd_uid.JPEGTransferSyntaxes, *pd_uid.JPEGLSTransferSyntaxes, *pd_uid.JPEG2000TransferSyntaxes)
    if tsuid not in marked:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except _FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken item/fragment structure is a damaged file
        raise ImageReadError(
            source, f"the compressed pixel data ({ts_name}) cannot be split into frames ({_short(exc)})", corrupt_fix
        ) from None
    if not bytes(frame).rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
        raise ImageReadError(
            source,
            f"the compressed pixel data ({ts_name}, {len(frame)} bytes) has no end-of-image marker (FFD9): the "
            "codestream is cut off, and decoding it would give an image with missing or garbage rows",
            corrupt_fix,
        )


def _check_native_length(ds: Dataset, source: str, n_frames: int, corrupt_fix: str) -> None:
    """Raise when uncompressed pixel data is shorter than Rows x Columns x BitsAllocated requires."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        have = len(ds.PixelData)
    except (AttributeError, TypeError, ValueError, KeyError):
        return  # missing or malformed attributes: pydicom's decoder reports them
    need = (rows * cols * samples * max(n_frames, 1) * bits + 7) // 8
    if have < need:
        raise ImageReadError(
            source,
            f"the pixel data is too short: {have} bytes, but {rows} rows x {cols} columns x {bits} bits need "
            f"{need} (the file is truncated or corrupt)",
            corrupt_fix,
        )
    if have > need + (need % 2):  # one pad byte to an even length is part of the format
        raise ImageReadError(
            source,
            f"the pixel data is too long: {have} bytes, but {rows} rows x {cols} columns x {bits} bits need "
            f"{need}; the header's image size does not match the data, so the image cannot be trusted",
            corrupt_fix,
        )
    _check_stored_bits(ds, source, need, bits, corrupt_fix)


def _check_stored_bits(ds: Dataset, source: str, need: int, bits_allocated: int, corrupt_fix: str) -> None:
    """Raise when unsigned pixel values use bits above BitsStored: decoders mask them away, which would silently
    turn the image into another one (e.g. 12-bit data declared as 4-bit becomes nearly flat)."""
    try:
        stored = int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    except (AttributeError, TypeError, ValueError):
        return
    dtype = {8: "u1", 16: "<u2", 32: "<u4"}.get(bits_allocated)
    if signed or dtype is None or not 1 <= stored < bits_allocated:
        return  # signed data may sign-extend into the unused bits
    raw = np.frombuffer(ds.PixelData, dtype=dtype, count=need // np.dtype(dtype).itemsize)
    high = int(raw.max()) if raw.size else 0
    if high >> stored:
        raise ImageReadError(
            source,
            f"pixel values up to {high} do not fit the file's BitsStored {stored} (at most {2**stored - 1}); "
            "the header does not describe the data",
            "correct BitsStored/HighBit in the file, or export it again from the original source",
        )


def _stored_probe(ds: Dataset) -> np.ndarray:
    """Every storable value (BitsStored <= 16) or the two extremes, as int64."""
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if not 1 <= bits <= 32:
        raise ValueError(f"BitsStored {bits} is outside 1..32")
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if bits <= 16:
        return np.arange(low, high + 1, dtype=np.int64)
    return np.array([low, high], dtype=np.int64)


def _voi_kind(ds: Dataset) -> str | None:
    """Which VOI transform pydicom's ``apply_voi_lut`` applies: "lut", "window" or None."""
    seq = ds.get("VOILUTSequence")
    if seq:
        item = seq[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _integral(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    return arr


def _presentation(arr: np.ndarray, ds: Dataset, source: str) -> tuple[np.ndarray, tuple[float, float]]:
    """Modality LUT, VOI LUT / window, MONOCHROME1 inversion; return (values, value_range)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    fix = "correct the Modality LUT / rescale or VOI LUT / window attributes in the file, or export it again"
    try:
        modality = apply_modality_lut(arr, ds)
        modality_probe = apply_modality_lut(_stored_probe(ds), ds)
        kind = _voi_kind(ds)
        if kind == "lut":
            out = apply_voi_lut(_integral(modality), ds)
            range_probe = apply_voi_lut(_integral(np.asarray(modality_probe)), ds)
        elif kind == "window":
            out = apply_voi_lut(modality, ds, prefer_lut=False)
            with np.errstate(over="ignore"):
                range_probe = apply_voi_lut(np.array([-1e300, 1e300]), ds, prefer_lut=False)
        else:
            out = modality
            range_probe = modality_probe
    except (ValueError, NotImplementedError, AttributeError, KeyError, IndexError, TypeError, OverflowError) as exc:
        raise ImageReadError(
            source, f"the Modality LUT / VOI LUT / window cannot be applied ({_short(exc)})", fix
        ) from None
    out = np.asarray(out, dtype=np.float64)
    low, high = float(np.min(range_probe)), float(np.max(range_probe))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ImageReadError(source, f"the presentation value range ({low}, {high}) is empty or not finite", fix)
    if _safe_str(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        out = (low + high) - out
    return out, (low, high)


def _dicom_spacing(
    ds: Dataset, source: str, user_spacing: tuple[float, float] | None
) -> tuple[tuple[float, float] | None, str | None]:
    if user_spacing is not None:
        return user_spacing, "user"
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if (
            value is None
            or value == ""
            or (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0)
        ):
            continue
        spacing = _check_spacing(
            value,
            source,
            f"the file's {keyword}",
            "give the true pixel size, which overrides the file's, e.g. --pixel-size-mm 0.1",
        )
        return spacing, keyword
    return None, None


def _json_value(value: object) -> object | None:
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence
    from pydicom.valuerep import PersonName

    if value is None or isinstance(value, (bytes, bytearray, Sequence, PersonName, bool)):
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_json_value(v) for v in value]
        if not items or any(v is None for v in items):
            return None
        return items
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else str(value)
    if isinstance(value, str):
        text = str(value).strip()
        return text or None
    try:  # DSdecimal and other numeric value representations
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _deidentified_header(ds: Dataset) -> dict[str, object]:
    header: dict[str, object] = {}
    file_meta = getattr(ds, "file_meta", None)
    for keyword in DEIDENTIFIED_TAGS:
        container = file_meta if keyword == "TransferSyntaxUID" else ds
        if container is None:
            continue
        try:
            value = container.get(keyword)
            converted = _json_value(value)
        except Exception:  # noqa: BLE001 - an unreadable whitelisted value is dropped, never guessed
            continue
        if converted is not None:
            header[keyword] = converted
    return header


# ----------------------------------------------------------------------------------------------------------------
# Rasters


def _raster_from_bytes(data: bytes, source: str, fmt: str, spacing: tuple[float, float] | None) -> Mammogram:
    if fmt == "pgm":
        arr, maxval = _parse_pgm(data, source)
        value_range = (0.0, float(maxval))
        bits = max(int(maxval).bit_length(), 1)
    else:
        arr, value_range, bits = _read_pil(data, source, fmt)
    header: dict[str, object] = {
        "Rows": int(arr.shape[0]),
        "Columns": int(arr.shape[1]),
        "BitsStored": int(bits),
        "PhotometricInterpretation": "MONOCHROME2",
    }
    return Mammogram(
        pixels=_finish(arr),
        value_range=value_range,
        pixel_spacing_mm=spacing,
        pixel_spacing_source="user" if spacing is not None else None,
        source_sha256=hashlib.sha256(data).hexdigest(),
        source_format=fmt,
        modality=None,
        view=None,
        laterality=None,
        photometric="MONOCHROME2",
        header=header,
        burned_in_annotation=False,
        patient_key=None,
    )


_PGM_FIX = "export the image again as PGM (P5), or as 16-bit greyscale PNG/TIFF"


def _pgm_header(data: bytes, source: str) -> tuple[int, int, int, int]:
    """Return (width, height, maxval, offset of the raster) of a P2/P5 header."""
    pos = 2
    values: list[int] = []
    n = len(data)
    while len(values) < 3:
        while pos < n and (data[pos : pos + 1].isspace() or data[pos : pos + 1] == b"#"):
            if data[pos : pos + 1] == b"#":
                while pos < n and data[pos : pos + 1] not in (b"\n", b"\r"):
                    pos += 1
            else:
                pos += 1
        start = pos
        while pos < n and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ImageReadError(source, "the PGM header is incomplete or malformed (width, height, maxval)", _PGM_FIX)
        values.append(int(data[start:pos]))
    if pos >= n or not data[pos : pos + 1].isspace():
        raise ImageReadError(source, "the PGM header is not followed by whitespace and pixel data", _PGM_FIX)
    width, height, maxval = values
    if width <= 0 or height <= 0:
        raise ImageReadError(source, f"the PGM header gives an empty size {width}x{height}", _PGM_FIX)
    if not 1 <= maxval <= 65535:
        raise ImageReadError(source, f"the PGM maxval {maxval} is outside 1..65535", _PGM_FIX)
    return width, height, maxval, pos + 1


#: What may follow a binary PGM's raster: a line end some writers add. Anything more means the header describes
#: less than the file holds (the reader would keep only the first rows: a silent crop) or several images.
_PGM_TRAILER_BYTES = 2


def _pgm_extra_error(source: str, width: int, height: int, need: str, have: str) -> ImageReadError:
    return ImageReadError(
        source,
        f"the PGM header gives {width}x{height} pixels ({need}) but the file holds {have} of pixel data: the "
        "header does not describe the data (reading it would crop the image), or the file holds several images",
        _PGM_FIX,
    )


def _parse_pgm(data: bytes, source: str) -> tuple[np.ndarray, int]:
    width, height, maxval, offset = _pgm_header(data, source)
    _check_pixels(source, height, width, bytes_per_sample=2 if maxval > 255 else 1)
    count = width * height
    if data[:2] == b"P5":
        dtype = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")
        need = count * dtype.itemsize
        if len(data) - offset < need:
            raise ImageReadError(
                source,
                f"the PGM file is truncated: {width}x{height} pixels need {need} bytes, it has {len(data) - offset}",
                _PGM_FIX,
            )
        extra = data[offset + need :]
        if len(extra) > _PGM_TRAILER_BYTES or extra.strip():
            raise _pgm_extra_error(source, width, height, f"{need} bytes", f"{len(data) - offset} bytes")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(height, width)
    else:
        text = re.sub(rb"#[^\r\n]*", b" ", data[offset:])
        tokens = text.split()
        if len(tokens) < count:
            raise ImageReadError(
                source, f"the plain PGM (P2) file is truncated: {len(tokens)} of {count} values", _PGM_FIX
            )
        if len(tokens) > count:
            raise _pgm_extra_error(source, width, height, f"{count} values", f"{len(tokens)} values")
        try:
            arr = np.array(tokens[:count]).astype(np.int64).reshape(height, width)
        except ValueError:
            raise ImageReadError(source, "the plain PGM (P2) pixel values are not all integers", _PGM_FIX) from None
        if arr.min() < 0:
            raise ImageReadError(source, "the plain PGM (P2) file has negative pixel values", _PGM_FIX)
    if int(arr.max()) > maxval:
        raise ImageReadError(
            source, f"the PGM file has pixel values up to {int(arr.max())}, above its maxval {maxval}", _PGM_FIX
        )
    return arr, maxval


_RASTER_FIX = "save the image as 8- or 16-bit single-channel greyscale PNG or TIFF"


def _read_pil(data: bytes, source: str, fmt: str) -> tuple[np.ndarray, tuple[float, float], int]:
    from PIL import Image

    name = fmt.upper()
    bits_declared: tuple[int, ...] = ()
    if fmt == "png" and len(data) >= 26 and data[12:16] == b"IHDR":  # before PIL's own (larger) guard
        _check_pixels(source, int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"))
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
        width, height = im.size
        bands = len(im.getbands())
        _check_pixels(source, height, width, samples=bands, bytes_per_sample=2 if "16" in im.mode else 1)
        n_frames = int(getattr(im, "n_frames", 1))
        if fmt == "tiff":
            tags = getattr(im, "tag_v2")  # noqa: B009 - TIFF images only (PIL.TiffImagePlugin)
            bps = tags.get(258)
            bits_declared = tuple(int(b) for b in (bps if isinstance(bps, tuple) else (bps,))) if bps else ()
            photometric_tag = tags.get(262)
        im.load()
    except _FATAL:
        raise
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # PIL's own, larger guard
        raise _too_large(source, "more than PIL's own limit", (Image.MAX_IMAGE_PIXELS or 0) * 2,
                         max_image_pixels()) from None
    except BaseException as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise ImageReadError(
            source, f"the {name} file is corrupt or truncated ({_short(exc)})", "copy or export the image again"
        ) from None
    if n_frames > 1:
        raise ImageReadError(
            source, f"the {name} file holds {n_frames} images (pages/frames)", "save each image in its own file"
        )
    if fmt == "png":
        if len(data) < 26 or data[12:16] != b"IHDR":
            raise ImageReadError(source, "the PNG header (IHDR) is malformed", "copy or export the image again")
        depth, colour_type = data[24], data[25]
        bits_declared = (depth,)
        if depth == 16 and colour_type != 0:
            raise ImageReadError(
                source,
                "16-bit PNG with colour or alpha channels is not supported (it would lose precision)",
                _RASTER_FIX,
            )
    if fmt == "tiff":
        if photometric_tag == 0:
            raise ImageReadError(
                source,
                "TIFF with PhotometricInterpretation WhiteIsZero (inverted greyscale) is not supported",
                "save the image as BlackIsZero (min-is-black) 8- or 16-bit greyscale TIFF or PNG",
            )
        if im.mode not in ("L", "1", "I;16", "I;16B", "I;16L", "I;16N") and any(b > 8 for b in bits_declared):
            raise ImageReadError(
                source,
                f"{bits_declared}-bit TIFF in mode {im.mode} is not supported (colour above 8 bit, 32-bit or float)",
                _RASTER_FIX,
            )

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16), (0.0, 65535.0), 16
    if mode == "L":
        return np.asarray(im, dtype=np.uint8), (0.0, 255.0), min(bits_declared[0], 8) if bits_declared else 8
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8), (0.0, 255.0), 1
    if mode == "I" and fmt == "png" and bits_declared == (16,):
        arr = np.asarray(im)
        return arr.astype(np.uint16), (0.0, 65535.0), 16
    if mode in ("RGB", "RGBA", "LA", "P", "PA"):
        arr = np.asarray(im.convert("RGBA") if mode in ("P", "PA") else im)
        n_colour = 1 if mode == "LA" else 3
        has_alpha = arr.shape[2] > n_colour
        if has_alpha and np.any(arr[..., -1] != 255):
            raise ImageReadError(source, f"the {name} image has transparent pixels (alpha channel)", _RASTER_FIX)
        grey = arr[..., 0]
        for c in range(1, n_colour):
            if not np.array_equal(arr[..., c], grey):
                raise ImageReadError(
                    source,
                    f"the {name} image is in colour ({mode} with differing channels); mammograms are greyscale",
                    _RASTER_FIX,
                )
        return np.ascontiguousarray(grey, dtype=np.uint8), (0.0, 255.0), 8
    raise ImageReadError(source, f"{name} images in mode {mode!r} are not supported", _RASTER_FIX)
