"""Read-only views of the database and of uploads for the app's curation pages (Upload case, Review ROIs).

Nothing here writes a database row. Two caches are written under the data directory, both keyed by content hash
so that they can never go stale: 8-bit thumbnails of the ROIs (``thumbs/<size>/``) for the review grid.

Review
    :func:`browse_rois` lists ROIs with filters and paging (one counted, ordered, offset query, fast with thousands
    of ROIs); :func:`review_counts`, :func:`filter_options`, :func:`get_roi`, :func:`lesion_view`,
    :func:`roi_history`; :func:`roi_thumbnail` and :func:`roi_outline_image` (the ROI with its segmentation outline, or
    a synthetic phantom's true outline, marked as such).

Upload
    :func:`unpack_upload` turns uploaded files (single images or zips of a study) into images, refusing unsafe zip
    entries with a plain reason; :func:`read_upload` reads one (de-identified); :func:`display_image` downsamples
    it for the browser and :func:`display_to_image_rc` maps a click on that display back to image pixels exactly;
    :func:`preview_roi` crops the ROI that an import would store, with the same code.
"""

from __future__ import annotations

import hashlib
import json
import io as _io
import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage
from sqlalchemy import String, and_, case, cast, func, or_, select

from cadx import io as cadx_io
from cadx import roi as cadx_roi
from cadx.errors import CadxInputError, ImageReadError
from cadx.workflows.importing import LOCAL_SOURCE
from cadx.workflows.storage import write_once
from cadx.workflows.workspace import Workspace
from db.models import EXCLUSION_REASONS, LABELS, Image, Lesion, Patient, ReviewEvent, Roi, Segmentation

__all__ = [
    "RoiFilters",
    "RoiRow",
    "RoiPage",
    "Outline",
    "LesionView",
    "HistoryEntry",
    "UploadedImage",
    "UnpackedUpload",
    "DisplayImage",
    "LesionChoice",
    "browse_rois",
    "review_counts",
    "filter_options",
    "get_roi",
    "lesion_view",
    "roi_history",
    "roi_outline",
    "roi_thumbnail",
    "roi_outline_image",
    "unpack_upload",
    "read_upload",
    "display_image",
    "display_to_image_rc",
    "preview_roi",
    "roi_display",
    "upload_patients",
    "patient_lesions",
    "MAX_IMAGE_BYTES",
    "MAX_UPLOAD_BYTES",
    "MAX_ZIP_ENTRIES",
    "MAX_COMPRESSION_RATIO",
]

UNKNOWN_VIEW = "unknown"
MAX_IMAGE_BYTES = 200 * 1024**2  # one image (a full-field DICOM mammogram is 10-60 MB)
MAX_UPLOAD_BYTES = 1024**3  # everything unpacked from one upload together (CADX_MAX_UPLOAD_MB overrides)
MAX_ZIP_ENTRIES = 500
MAX_COMPRESSION_RATIO = 100  # images compress 2-10x; a zip entry inflating far more is refused as a zip bomb
_RATIO_FLOOR_BYTES = 1024**2  # small entries may compress well (flat test images); the ratio applies above this


# =========================================================================================== review: listing ===
@dataclass(frozen=True)
class RoiFilters:
    """Which ROIs the review grid shows. Empty tuples mean "any"."""

    labels: tuple[str, ...] = ()
    views: tuple[str, ...] = ()  # Image.view values; "unknown" for images without a view
    status: str = "all"  # "all" | "included" | "excluded"
    reasons: tuple[str, ...] = ()  # exclusion reasons (implies excluded ROIs)
    qc_flags: tuple[str, ...] = ()  # ROIs carrying any of these QC flags
    synthetic: bool | None = None  # True: synthetic only; False: real only
    lesion: str = ""  # lesion key contains (case-insensitive)
    lesion_id: int | None = None


@dataclass(frozen=True)
class RoiRow:
    """One ROI as the review pages show it."""

    id: int
    sha256: str
    file: str
    lesion_id: int
    lesion_key: str
    patient_key: str
    label: str
    view: str | None
    laterality: str | None
    included: bool
    exclusion_reason: str | None
    qc_flags: tuple[str, ...]
    is_synthetic: bool
    centre_rc: tuple[float, float]
    truth_mask_file: str | None


@dataclass(frozen=True)
class RoiPage:
    rows: list[RoiRow]
    total: int  # ROIs matching the filters
    page: int  # 1-based
    page_size: int

    @property
    def n_pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def _roi_columns():
    return (Roi.id, Roi.sha256, Roi.file, Roi.lesion_id, Lesion.key, Patient.key, Lesion.label, Image.view,
            Image.laterality, Roi.included, Roi.exclusion_reason, Roi.qc_flags, Roi.is_synthetic, Roi.centre_row,
            Roi.centre_col, Roi.truth_mask_file)


def _joined(query):
    return (query.join(Lesion, Roi.lesion_id == Lesion.id)
            .join(Patient, Lesion.patient_id == Patient.id)
            .join(Image, Roi.image_id == Image.id))


def _to_row(r) -> RoiRow:
    return RoiRow(id=r[0], sha256=r[1], file=r[2], lesion_id=r[3], lesion_key=r[4], patient_key=r[5], label=r[6],
                  view=r[7], laterality=r[8], included=bool(r[9]), exclusion_reason=r[10],
                  qc_flags=tuple(r[11] or ()), is_synthetic=bool(r[12]), centre_rc=(float(r[13]), float(r[14])),
                  truth_mask_file=r[15])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(filters: RoiFilters) -> list:
    where = []
    if filters.labels:
        where.append(Lesion.label.in_(filters.labels))
    if filters.views:
        named = [v for v in filters.views if v != UNKNOWN_VIEW]
        options = [Image.view.in_(named)] if named else []
        if UNKNOWN_VIEW in filters.views:
            options.append(Image.view.is_(None))
        where.append(or_(*options))
    if filters.status == "included":
        where.append(Roi.included.is_(True))
    elif filters.status == "excluded":
        where.append(Roi.included.is_(False))
    elif filters.status != "all":
        raise CadxInputError("status filter", f"unknown status {filters.status!r}", "use all, included or excluded")
    if filters.reasons:
        where.append(and_(Roi.included.is_(False), Roi.exclusion_reason.in_(filters.reasons)))
    if filters.qc_flags:
        # JSON list stored as text on SQLite and json on PostgreSQL: both render as '["padded", ...]'.
        text = cast(Roi.qc_flags, String)
        where.append(or_(*[text.like(f'%"{_escape_like(flag)}"%', escape="\\") for flag in filters.qc_flags]))
    if filters.synthetic is not None:
        where.append(Roi.is_synthetic.is_(filters.synthetic))
    if filters.lesion.strip():
        where.append(Lesion.key.ilike(f"%{_escape_like(filters.lesion.strip())}%", escape="\\"))
    if filters.lesion_id is not None:
        where.append(Roi.lesion_id == filters.lesion_id)
    return where


def browse_rois(workspace: Workspace, filters: RoiFilters | None = None, *, page: int = 1,
                page_size: int = 48) -> RoiPage:
    """One page (1-based, ordered by ROI id) of the ROIs matching ``filters``, and how many match in all.

    A page beyond the last gives the last page.
    """
    filters = filters or RoiFilters()
    if page_size < 1:
        raise CadxInputError("page size", f"{page_size} is not a positive number", "show at least one ROI per page")
    where = _conditions(filters)
    with workspace.sessions() as session:
        total = session.scalar(_joined(select(func.count(Roi.id)).select_from(Roi)).where(*where)) or 0
        n_pages = max(1, -(-total // page_size))
        page = min(max(1, int(page)), n_pages)
        rows = session.execute(
            _joined(select(*_roi_columns()).select_from(Roi)).where(*where).order_by(Roi.id)
            .offset((page - 1) * page_size).limit(page_size)
        ).all()
    return RoiPage(rows=[_to_row(r) for r in rows], total=total, page=page, page_size=page_size)


def get_roi(workspace: Workspace, roi_id: int) -> RoiRow | None:
    """The ROI ``roi_id``, or None when there is no such ROI."""
    with workspace.sessions() as session:
        row = session.execute(_joined(select(*_roi_columns()).select_from(Roi)).where(Roi.id == roi_id)).first()
    return None if row is None else _to_row(row)


def review_counts(workspace: Workspace) -> dict[str, int]:
    """ROIs in all, included, excluded and synthetic (one aggregate query)."""
    with workspace.sessions() as session:
        total, included, synthetic = session.execute(
            select(func.count(Roi.id),
                   func.coalesce(func.sum(case((Roi.included.is_(True), 1), else_=0)), 0),
                   func.coalesce(func.sum(case((Roi.is_synthetic.is_(True), 1), else_=0)), 0))
        ).one()
    return {"rois": int(total), "included": int(included), "excluded": int(total) - int(included),
            "synthetic": int(synthetic)}


def filter_options(workspace: Workspace) -> dict[str, list[str]]:
    """The values the review filters offer: labels, views and QC flags present, exclusion reasons."""
    with workspace.sessions() as session:
        views = sorted({v or UNKNOWN_VIEW for v in session.scalars(select(Image.view).distinct())})
        flags: set[str] = set()
        # DISTINCT on the text form: PostgreSQL has no equality operator for json.
        for value in session.scalars(select(cast(Roi.qc_flags, String)).distinct()):
            flags.update(json.loads(value) if value else ())
    return {"labels": list(LABELS), "views": views, "qc_flags": sorted(flags), "reasons": list(EXCLUSION_REASONS)}


# ======================================================================================= review: one lesion ===
@dataclass(frozen=True)
class Outline:
    """The lesion outline drawn on an ROI: the Method-B segmentation when computed, else a phantom's true outline."""

    kind: str  # "segmentation" | "truth"
    file: str  # PNG under the data directory, 512 x 512, white inside
    description: str


@dataclass(frozen=True)
class LesionView:
    id: int
    key: str
    patient_key: str
    label: str
    lesion_type: str | None
    size_mm: float | None
    pathology_source: str
    is_synthetic: bool
    rois: list[RoiRow] = field(default_factory=list)


def lesion_view(workspace: Workspace, lesion_id: int) -> LesionView | None:
    """Lesion ``lesion_id`` with all its ROIs (views), or None when there is no such lesion."""
    with workspace.sessions() as session:
        lesion = session.execute(
            select(Lesion.id, Lesion.key, Patient.key, Lesion.label, Lesion.lesion_type, Lesion.size_mm,
                   Lesion.pathology_source, Lesion.is_synthetic)
            .join(Patient, Lesion.patient_id == Patient.id).where(Lesion.id == lesion_id)
        ).first()
    if lesion is None:
        return None
    rois = browse_rois(workspace, RoiFilters(lesion_id=lesion_id), page_size=1000).rows
    return LesionView(*lesion, rois=rois)


def roi_outline(workspace: Workspace, roi: RoiRow) -> Outline | None:
    """The outline to draw on ``roi``: its newest Method-B segmentation mask, else a synthetic phantom's truth."""
    with workspace.sessions() as session:
        seg = session.execute(
            select(Segmentation.mask_file, Segmentation.version, Segmentation.quality)
            .where(Segmentation.roi_sha256 == roi.sha256, Segmentation.mask_file.is_not(None))
            .order_by(Segmentation.id.desc()).limit(1)
        ).first()
    if seg is not None and workspace.path(seg[0]).exists():
        return Outline("segmentation", seg[0], f"Method-B segmentation (version {seg[1]}, quality {seg[2]})")
    if roi.truth_mask_file and workspace.path(roi.truth_mask_file).exists():
        return Outline("truth", roi.truth_mask_file,
                       "true outline of the synthetic phantom (ground truth; no segmentation computed yet)")
    return None


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    at: datetime
    user: str
    action: str  # "exclude" | "include"
    reason: str | None
    note: str | None


def roi_history(workspace: Workspace, roi_id: int) -> list[HistoryEntry]:
    """Every review decision on ROI ``roi_id``, oldest first (the last one is the ROI's current state)."""
    with workspace.sessions() as session:
        rows = session.execute(
            select(ReviewEvent.id, ReviewEvent.at, ReviewEvent.user, ReviewEvent.action, ReviewEvent.reason,
                   ReviewEvent.note).where(ReviewEvent.roi_id == roi_id).order_by(ReviewEvent.id)
        ).all()
    return [HistoryEntry(*r) for r in rows]


# ========================================================================================== review: images ===
def roi_display(pixels: np.ndarray) -> np.ndarray:
    """uint8 display version of ROI pixels: contrast stretched between the 0.5th and 99.5th percentiles."""
    pixels = np.asarray(pixels, dtype=np.float32)
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.rint(np.clip((pixels - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def _load_roi(workspace: Workspace, roi: RoiRow) -> np.ndarray:
    return cadx_roi.decode_png16(workspace.path(roi.file).read_bytes())


def roi_thumbnail(workspace: Workspace, roi: RoiRow, *, size: int = 128) -> Path:
    """A ``size`` px 8-bit PNG of the ROI, made once and cached under the data directory by the ROI's hash."""
    path = workspace.path(f"thumbs/{size}/{roi.sha256[:2]}/{roi.sha256}.png")
    if not path.exists():
        def encode() -> bytes:
            image = PILImage.fromarray(roi_display(_load_roi(workspace, roi)), mode="L")
            buffer = _io.BytesIO()
            image.resize((size, size), PILImage.Resampling.BOX).save(buffer, format="PNG")
            return buffer.getvalue()

        write_once(path, encode)
    return path


_OUTLINE_COLOURS = {"segmentation": (255, 220, 0), "truth": (0, 220, 255)}


def roi_outline_image(workspace: Workspace, roi: RoiRow, *, size: int = 512) -> tuple[np.ndarray, Outline | None]:
    """The ROI as RGB uint8 (``size`` px) with its outline drawn (yellow: segmentation, cyan: phantom truth)."""
    grey = roi_display(_load_roi(workspace, roi))
    outline = roi_outline(workspace, roi)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if outline is not None:
        with PILImage.open(workspace.path(outline.file)) as png:
            mask = np.array(png.convert("L")) > 127
        if mask.shape == grey.shape and mask.any():
            edge = mask & ~ndimage.binary_erosion(mask)
            edge = ndimage.binary_dilation(edge, iterations=max(1, round(512 / size)))
            rgb[edge] = _OUTLINE_COLOURS[outline.kind]
    if size != rgb.shape[0]:
        rgb = np.asarray(PILImage.fromarray(rgb).resize((size, size), PILImage.Resampling.BOX))
    return rgb, outline


# ================================================================================================ upload ===
@dataclass(frozen=True)
class UploadedImage:
    """One image file of an upload (a file, or an entry of an uploaded zip)."""

    name: str
    data: bytes = field(repr=False)
    sha256: str


@dataclass
class UnpackedUpload:
    images: list[UploadedImage] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, plain reason)


def _mb(n: int) -> str:
    return f"{n / 1024**2:.0f} MB"


def _is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _unsafe_name(name: str) -> str | None:
    if "\x00" in name:
        return "its name contains a NUL character"
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        return "its path is absolute (path traversal); cadx refuses it"
    if ".." in PurePosixPath(normal).parts:
        return "its path climbs out of the archive with '..' (path traversal); cadx refuses it"
    return None


def _max_upload_bytes() -> int:
    raw = os.environ.get("CADX_MAX_UPLOAD_MB", "").strip()
    if not raw:
        return MAX_UPLOAD_BYTES
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise CadxInputError("CADX_MAX_UPLOAD_MB", f"got {raw!r}", "give a positive number of megabytes")
    return int(value * 1024**2)


def unpack_upload(files: Iterable[tuple[str, bytes]], *, max_image_bytes: int = MAX_IMAGE_BYTES,
                  max_total_bytes: int | None = None, max_entries: int = MAX_ZIP_ENTRIES,
                  max_ratio: float = MAX_COMPRESSION_RATIO) -> UnpackedUpload:
    """The images in uploaded files: plain files as they are, zips (of a study) unpacked in memory.

    Nothing is written to disk. Refused, each with a plain reason: files or entries over ``max_image_bytes``,
    zips with more than ``max_entries`` entries or unpacking to more than ``max_total_bytes``, entries with an
    absolute path or ``..`` (path traversal), links, entries that inflate more than ``max_ratio`` times (zip
    bombs), zips inside zips, encrypted or corrupt entries. Folders, ``DICOMDIR`` and macOS metadata are skipped
    silently; whether a file is an image is decided later, by :func:`read_upload`.

    A zip's total is checked twice: from its central directory before anything is unpacked (the whole zip is
    refused when its entries together exceed ``max_total_bytes`` (``CADX_MAX_UPLOAD_MB``, default 1024) or
    inflate more than ``max_ratio`` times in all, however small each entry), and while unpacking, since a
    directory can lie.
    """
    if max_total_bytes is None:
        max_total_bytes = _max_upload_bytes()
    out = UnpackedUpload()
    total = 0
    for name, data in files:
        data = bytes(data)
        if not _is_zip(data):
            if len(data) > max_image_bytes:
                out.refused.append((name, f"the file is {_mb(len(data))}, over the {_mb(max_image_bytes)} limit "
                                          "for one image"))
                continue
            total += len(data)
            if total > max_total_bytes:
                out.refused.append((name, f"the upload is over {_mb(max_total_bytes)} in all; upload fewer files"))
                continue
            out.images.append(UploadedImage(name, data, hashlib.sha256(data).hexdigest()))
            continue
        try:
            archive = zipfile.ZipFile(_io.BytesIO(data))
            entries = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            out.refused.append((name, f"not a readable zip file ({exc})"))
            continue
        if len(entries) > max_entries:
            out.refused.append((name, f"the zip holds {len(entries)} entries, over the limit of {max_entries}; "
                                      "zip one study (a few images) at a time"))
            continue
        files_in_zip = [i for i in entries if not i.is_dir()]
        declared = sum(i.file_size for i in files_in_zip)
        packed = sum(i.compress_size for i in files_in_zip)
        if total + declared > max_total_bytes:
            out.refused.append((name, f"the zip unpacks to {_mb(declared)} in all (its directory says), over the "
                                      f"{_mb(max_total_bytes)} limit for one upload; zip fewer images, or raise "
                                      "CADX_MAX_UPLOAD_MB"))
            continue
        if declared > _RATIO_FLOOR_BYTES and declared > max_ratio * max(packed, 1):
            out.refused.append((name, f"the zip inflates {declared / max(packed, 1):.0f}x in all (over "
                                      f"{max_ratio:.0f}x): refused as a possible zip bomb"))
            continue
        for info in entries:
            entry = f"{name}/{info.filename}"
            base = PurePosixPath(info.filename.replace("\\", "/")).name
            if info.is_dir() or base in ("", "DICOMDIR", ".DS_Store") or "__MACOSX" in info.filename:
                continue
            reason = _unsafe_name(info.filename)
            if reason is None and stat.S_ISLNK(info.external_attr >> 16):
                reason = "it is a symbolic link; cadx refuses links in archives"
            if reason is None and info.flag_bits & 0x1:
                reason = "it is encrypted; unpack it yourself and upload the files"
            if reason is None and info.file_size > max_image_bytes:
                reason = f"it unpacks to {_mb(info.file_size)}, over the {_mb(max_image_bytes)} limit for one image"
            if (reason is None and info.file_size > _RATIO_FLOOR_BYTES
                    and info.file_size > max_ratio * max(info.compress_size, 1)):
                reason = (f"it inflates {info.file_size / max(info.compress_size, 1):.0f}x (over {max_ratio:.0f}x): "
                          "refused as a possible zip bomb")
            if reason is None and total + info.file_size > max_total_bytes:
                reason = f"the upload unpacks to over {_mb(max_total_bytes)} in all; zip fewer images"
            if reason is not None:
                out.refused.append((entry, reason))
                continue
            room = min(max_image_bytes, max_total_bytes - total, info.file_size)
            try:
                with archive.open(info) as handle:
                    content = handle.read(room + 1)  # never trust the declared size alone
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                out.refused.append((entry, f"the entry cannot be unpacked ({exc})"))
                continue
            if len(content) > max_image_bytes or len(content) != info.file_size:
                out.refused.append((entry, "the entry's size differs from what the zip declares; refused"))
                continue
            if _is_zip(content):
                out.refused.append((entry, "a zip inside the zip; cadx unpacks one level only"))
                continue
            total += len(content)
            out.images.append(UploadedImage(entry, content, hashlib.sha256(content).hexdigest()))
    return out


def read_upload(workspace: Workspace, image: UploadedImage,
                pixel_size_mm: float | None = None) -> cadx_io.Mammogram:
    """Read an uploaded image, de-identified (a DICOM PatientID becomes this installation's pseudonym).

    Raises :class:`~cadx.errors.ImageReadError` with the file, the problem and the fix.
    """
    return cadx_io.read_image_bytes(image.data, name=image.name, pixel_spacing_mm=pixel_size_mm,
                                    pseudonym_key=workspace.pseudonym_key())


@dataclass(frozen=True)
class DisplayImage:
    """A downsampled RGB version of an image for the browser; ``pixels`` is (h, w, 3) uint8."""

    pixels: np.ndarray
    image_shape: tuple[int, int]  # (rows, columns) of the source image

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in display pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def _display_shape(shape: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    rows, cols = shape
    scale = min(1.0, max_width / cols, max_height / rows)
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def display_image(image: cadx_io.Mammogram, *, max_width: int = 640, max_height: int = 800,
                  centre_rc: tuple[float, float] | None = None,
                  pixel_spacing_mm: tuple[float, float] | None = None) -> DisplayImage:
    """The image downsampled (area average) to fit ``max_width`` x ``max_height``, contrast stretched.

    With ``centre_rc``, a red cross marks the centre and, when the pixel size is known, a box shows the 51.2 mm
    field that the ROI will cover.
    """
    rows, cols = image.pixels.shape
    h, w = _display_shape((rows, cols), max_width, max_height)
    small = np.asarray(PILImage.fromarray(np.asarray(image.pixels, dtype=np.float32), mode="F")
                       .resize((w, h), PILImage.Resampling.BOX))
    grey = roi_display(small)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if centre_rc is not None:
        sy, sx = h / rows, w / cols
        # source pixel centre c (edges at c +- 0.5) -> display coordinate (c + 0.5) * scale - 0.5
        y = (centre_rc[0] + 0.5) * sy - 0.5
        x = (centre_rc[1] + 0.5) * sx - 0.5
        red = (255, 40, 40)
        arm = max(6, round(min(h, w) * 0.03))
        yi, xi = int(round(y)), int(round(x))
        rgb[max(0, yi - 1):yi + 2, max(0, xi - arm):xi + arm + 1] = red
        rgb[max(0, yi - arm):yi + arm + 1, max(0, xi - 1):xi + 2] = red
        spacing = pixel_spacing_mm or image.pixel_spacing_mm
        if spacing is not None:
            half_r = cadx_roi.ROI_FIELD_MM / 2 / spacing[0] * sy
            half_c = cadx_roi.ROI_FIELD_MM / 2 / spacing[1] * sx
            top, bottom = int(round(y - half_r)), int(round(y + half_r))
            left, right = int(round(x - half_c)), int(round(x + half_c))
            yellow = (255, 220, 0)
            for r in (top, bottom):
                if 0 <= r < h:
                    rgb[r, max(0, left):max(0, min(w, right + 1))] = yellow
            for c in (left, right):
                if 0 <= c < w:
                    rgb[max(0, top):max(0, min(h, bottom + 1)), c] = yellow
    return DisplayImage(pixels=rgb, image_shape=(rows, cols))


def display_to_image_rc(x: float, y: float, *, display_size: tuple[float, float],
                        image_shape: tuple[int, int]) -> tuple[float, float]:
    """Map a click at display pixel (``x``, ``y``) (origin top-left of the shown image) to image (row, col).

    ``display_size`` is the (width, height) the image was shown at. Display pixel ``x`` spans the source interval
    ``[x, x + 1] * columns / width`` (pixel edges), so its centre is at source column
    ``(x + 0.5) * columns / width - 0.5`` (pixel centres at integers, as in :mod:`cadx.roi`). Clipped to the image.
    """
    width, height = display_size
    rows, cols = image_shape
    if width <= 0 or height <= 0:
        raise CadxInputError("image click", "the displayed image has no size", "reload the page and click again")
    row = (float(y) + 0.5) * rows / float(height) - 0.5
    col = (float(x) + 0.5) * cols / float(width) - 0.5
    return float(np.clip(row, 0, rows - 1)), float(np.clip(col, 0, cols - 1))


def preview_roi(image: cadx_io.Mammogram, centre_rc: tuple[float, float], *,
                pixel_size_mm: float | None = None, name: str = "upload") -> cadx_roi.RoiCrop:
    """The ROI that importing this image with this centre will store (same crop, same threshold, same pixels)."""
    spacing = image.pixel_spacing_mm
    if spacing is None:
        if pixel_size_mm is None:
            raise ImageReadError(name, "the pixel size is unknown (the file carries none)",
                                 "give the pixel size in mm")
        spacing = (float(pixel_size_mm), float(pixel_size_mm))
    return cadx_roi.crop_roi(image.pixels, centre_rc=centre_rc, pixel_spacing_mm=spacing,
                             value_range=image.value_range, source=name)


@dataclass(frozen=True)
class LesionChoice:
    key: str
    label: str
    n_rois: int


def upload_patients(workspace: Workspace) -> list[str]:
    """Keys of the patients that uploads, manifests and DICOM folders created (the shared local namespace)."""
    with workspace.sessions() as session:
        return list(session.scalars(select(Patient.key).where(Patient.source == LOCAL_SOURCE).order_by(Patient.key)))


def patient_lesions(workspace: Workspace, patient_key: str | None) -> list[LesionChoice]:
    """The lesions of local patient ``patient_key`` with their label and number of ROIs."""
    if not patient_key:
        return []
    with workspace.sessions() as session:
        rows = session.execute(
            select(Lesion.key, Lesion.label, func.count(Roi.id))
            .join(Patient, Lesion.patient_id == Patient.id).outerjoin(Roi, Roi.lesion_id == Lesion.id)
            .where(Patient.source == LOCAL_SOURCE, Patient.key == patient_key)
            .group_by(Lesion.id, Lesion.key, Lesion.label).order_by(Lesion.key)
        ).all()
    return [LesionChoice(*r) for r in rows]
