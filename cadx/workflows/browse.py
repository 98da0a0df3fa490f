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

import dataclasses
import hashlib
import io as _io
import json
import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import ColumnElement, Select, String, and_, case, cast, func, or_, select

from cadx import io as cadx_io
from cadx import roi as cadx_roi
from cadx.errors import CadxInputError, ImageReadError
from cadx.outline import decode_mask_png, draw_outline
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
    "thumbnail_png",
    "roi_outline_image",
    "unpack_upload",
    "read_upload",
    "display_image",
    "display_to_image_rc",
    "preview_roi",
    "roi_display",
    "display_windows",
    "auto_window",
    "roi_auto_window",
    "centre_width_window",
    "window_centre_width",
    "ROI_GREY_RANGE",
    "AUTO_WINDOW",
    "REGION_WINDOW",
    "roi_image_header",
    "zoom_region",
    "matching_roi_ids",
    "neighbour_roi",
    "roi_page_number",
    "warm_thumbnails",
    "upload_patients",
    "patient_lesions",
    "lesion_key_patients",
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
    cohort: str | None = None  # a preset or saved cohort: its ROIs whatever their review status (``status`` decides)


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
    lesion_type: str | None = None  # a code of cadx.lesion_types.LESION_TYPES (None: never recorded)


@dataclass(frozen=True)
class RoiPage:
    rows: list[RoiRow]
    total: int  # ROIs matching the filters
    page: int  # 1-based
    page_size: int

    @property
    def n_pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def _roi_columns() -> tuple[Any, ...]:
    return (Roi.id, Roi.sha256, Roi.file, Roi.lesion_id, Lesion.key, Patient.key, Lesion.label, Image.view,
            Image.laterality, Roi.included, Roi.exclusion_reason, Roi.qc_flags, Roi.is_synthetic, Roi.centre_row,
            Roi.centre_col, Roi.truth_mask_file, Lesion.lesion_type)


def _joined(query: Select[Any]) -> Select[Any]:
    return (query.join(Lesion, Roi.lesion_id == Lesion.id)
            .join(Patient, Lesion.patient_id == Patient.id)
            .join(Image, Roi.image_id == Image.id))


def _to_row(r: Any) -> RoiRow:
    return RoiRow(id=r[0], sha256=r[1], file=r[2], lesion_id=r[3], lesion_key=r[4], patient_key=r[5], label=r[6],
                  view=r[7], laterality=r[8], included=bool(r[9]), exclusion_reason=r[10],
                  qc_flags=tuple(r[11] or ()), is_synthetic=bool(r[12]), centre_rc=(float(r[13]), float(r[14])),
                  truth_mask_file=r[15], lesion_type=r[16])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(filters: RoiFilters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
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


def _where(workspace: Workspace, filters: RoiFilters) -> list[ColumnElement[bool]]:
    """The conditions of ``filters``, a cohort's ROI set included."""
    where = _conditions(filters)
    if filters.cohort:
        from cadx.workflows.cohorts import get_cohort, resolve_cohort

        definition = dataclasses.replace(get_cohort(workspace, filters.cohort).definition, review="all")
        where.append(Roi.id.in_(sorted({r.id for r in resolve_cohort(workspace, definition).records})))
    return where


def browse_rois(workspace: Workspace, filters: RoiFilters | None = None, *, page: int = 1,
                page_size: int = 48) -> RoiPage:
    """One page (1-based, ordered by ROI id) of the ROIs matching ``filters``, and how many match in all.

    A page beyond the last gives the last page.
    """
    filters = filters or RoiFilters()
    if page_size < 1:
        raise CadxInputError("page size", f"{page_size} is not a positive number", "show at least one ROI per page")
    where = _where(workspace, filters)
    with workspace.sessions() as session:
        total = session.scalar(_joined(select(func.count(Roi.id)).select_from(Roi)).where(*where)) or 0
        n_pages = max(1, -(-total // page_size))
        page = min(max(1, int(page)), n_pages)
        rows = session.execute(
            _joined(select(*_roi_columns()).select_from(Roi)).where(*where).order_by(Roi.id)
            .offset((page - 1) * page_size).limit(page_size)
        ).all()
    return RoiPage(rows=[_to_row(r) for r in rows], total=total, page=page, page_size=page_size)


def matching_roi_ids(workspace: Workspace, filters: RoiFilters | None = None, *, from_id: int,
                     to_id: int) -> list[int]:
    """Ids of the ROIs matching ``filters`` from ROI ``from_id`` to ROI ``to_id`` (both included, either order),
    ascending: a range selection in the review grid's order."""
    lo, hi = sorted((int(from_id), int(to_id)))
    with workspace.sessions() as session:
        return list(session.scalars(_joined(select(Roi.id).select_from(Roi))
                                    .where(*_conditions(filters or RoiFilters()), Roi.id >= lo, Roi.id <= hi)
                                    .order_by(Roi.id)))


def neighbour_roi(workspace: Workspace, filters: RoiFilters | None, roi_id: int, *, step: int) -> int | None:
    """The ROI after (``step=1``) or before (``step=-1``) ``roi_id`` in the grid's order (by id) among those
    matching ``filters``; None at either end."""
    if step not in (1, -1):
        raise CadxInputError("step", f"{step!r} is neither 1 nor -1", "use 1 (next) or -1 (previous)")
    order = Roi.id if step == 1 else Roi.id.desc()
    beyond = Roi.id > roi_id if step == 1 else Roi.id < roi_id
    with workspace.sessions() as session:
        found: int | None = session.scalar(_joined(select(Roi.id).select_from(Roi))
                                           .where(*_conditions(filters or RoiFilters()), beyond)
                                           .order_by(order).limit(1))
    return found


def roi_page_number(workspace: Workspace, filters: RoiFilters | None, roi_id: int, *, page_size: int) -> int:
    """The grid page (1-based) on which ROI ``roi_id`` is shown with ``filters`` and ``page_size``."""
    with workspace.sessions() as session:
        before = session.scalar(_joined(select(func.count(Roi.id)).select_from(Roi))
                                .where(*_conditions(filters or RoiFilters()), Roi.id < roi_id)) or 0
    return before // max(1, int(page_size)) + 1


def get_roi(workspace: Workspace, roi_id: int) -> RoiRow | None:
    """The ROI ``roi_id``, or None when there is no such ROI."""
    with workspace.sessions() as session:
        row = session.execute(_joined(select(*_roi_columns()).select_from(Roi)).where(Roi.id == roi_id)).first()
    return None if row is None else _to_row(row)


def review_counts(workspace: Workspace, filters: RoiFilters | None = None) -> dict[str, int]:
    """ROIs in all, included, excluded and synthetic (one aggregate query); with ``filters``, of the ROIs matching
    them (the synthetic banner says what the grid shows: none when only real ROIs match)."""
    where = [] if filters is None else _where(workspace, filters)
    with workspace.sessions() as session:
        total, included, synthetic = session.execute(
            _joined(select(func.count(Roi.id),
                           func.coalesce(func.sum(case((Roi.included.is_(True), 1), else_=0)), 0),
                           func.coalesce(func.sum(case((Roi.is_synthetic.is_(True), 1), else_=0)), 0))
                    .select_from(Roi)).where(*where)
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
    """The outline to draw on ``roi``: its newest Method-B segmentation mask, else its reference outline (a synthetic
    phantom's truth, or an expert's outline from DDSM or CBIS-DDSM)."""
    with workspace.sessions() as session:
        seg = session.execute(
            select(Segmentation.mask_file, Segmentation.version, Segmentation.quality)
            .where(Segmentation.roi_sha256 == roi.sha256, Segmentation.mask_file.is_not(None))
            .order_by(Segmentation.id.desc()).limit(1)
        ).first()
    if seg is not None and seg[0] is not None and workspace.path(seg[0]).exists():
        return Outline("segmentation", seg[0], f"Method-B segmentation (version {seg[1]}, quality {seg[2]})")
    if roi.truth_mask_file and workspace.path(roi.truth_mask_file).exists():
        return Outline("truth", roi.truth_mask_file,
                       "true outline of the synthetic phantom (ground truth; no segmentation computed yet)"
                       if roi.is_synthetic else
                       "the expert's outline (reference segmentation from the dataset; no segmentation computed yet)")
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
#: The grey values of a stored ROI (16-bit PNG): the presentation range its windows are fractions of.
ROI_GREY_RANGE = (0.0, 65535.0)


def roi_display(pixels: np.ndarray, *, window: tuple[float, float] | None = None,
                value_range: tuple[float, float] = ROI_GREY_RANGE) -> np.ndarray:
    """uint8 display version of image or ROI pixels.

    ``window=None`` stretches the contrast between the 0.5th and 99.5th percentiles (minimum and maximum when
    those are equal); ``window=(low, high)``
    maps those fractions of ``value_range`` (the presentation range: 0..65535 for a stored ROI, the image's own
    range for an upload) to black and white, as :func:`display_windows` gives them.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if window is None:
        lo, hi = _stretch(pixels)
    else:
        span = float(value_range[1]) - float(value_range[0])
        lo, hi = (float(value_range[0]) + float(f) * span for f in window)
    if hi <= lo:
        hi = lo + 1.0
    shown: np.ndarray = np.rint(np.clip((pixels - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    return shown


def _stretch(pixels: np.ndarray) -> tuple[float, float]:
    """The grey values shown black and white by the automatic contrast: the 0.5th and 99.5th percentiles (minimum
    and maximum when those are equal)."""
    lo, hi = (float(v) for v in np.percentile(pixels, (0.5, 99.5)))
    if hi <= lo:  # mostly flat (a small bright lesion on a uniform field): stretch min to max instead
        lo, hi = float(pixels.min()), float(pixels.max())
    return lo, hi


def auto_window(pixels: np.ndarray, *, value_range: tuple[float, float] = ROI_GREY_RANGE) -> tuple[float, float]:
    """The automatic contrast of ``pixels`` as a window (fractions of ``value_range``): shown through it, another
    view (a zoomed region, a larger copy) keeps exactly the contrast that ``pixels`` are shown with."""
    lo, hi = _stretch(np.asarray(pixels, dtype=np.float32))
    span = float(value_range[1]) - float(value_range[0])
    return (lo - float(value_range[0])) / span, (hi - float(value_range[0])) / span


def centre_width_window(centre: float, width: float, *,
                        value_range: tuple[float, float] = ROI_GREY_RANGE) -> tuple[float, float]:
    """A window given as its centre and width in grey values (grey ``centre - width/2`` black, ``centre + width/2``
    white) as fractions of ``value_range``, the form :func:`roi_display` takes."""
    if not width > 0:
        raise CadxInputError("window width", f"{width!r} is not a positive number of grey values",
                             "give a width of at least 1")
    span = float(value_range[1]) - float(value_range[0])
    lo, hi = float(centre) - float(width) / 2, float(centre) + float(width) / 2
    return (lo - float(value_range[0])) / span, (hi - float(value_range[0])) / span


def window_centre_width(window: tuple[float, float], *,
                        value_range: tuple[float, float] = ROI_GREY_RANGE) -> tuple[float, float]:
    """The inverse of :func:`centre_width_window`: a window's (centre, width) in grey values."""
    span = float(value_range[1]) - float(value_range[0])
    lo, hi = (float(value_range[0]) + float(f) * span for f in window)
    return (lo + hi) / 2, hi - lo


AUTO_WINDOW = "auto contrast (0.5–99.5 %)"
FULL_WINDOW = "full range"
#: A zoomed view keeps the whole image's automatic contrast; this window stretches the region shown instead.
REGION_WINDOW = "auto contrast of the zoomed region"


def _numbers(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = value
    else:
        items = str(value).replace("\\", ",").strip("[]").split(",")
    out = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            continue
    return [v for v in out if np.isfinite(v)]


def display_windows(header: dict[str, Any] | None) -> dict[str, tuple[float, float] | None]:
    """Display windows (window/level presets) for an image, as (low, high) fractions of its presentation range.

    Always "auto contrast" (None: percentile stretch) and "full range" (0, 1). A DICOM's pixels are read through
    its first WindowCenter/WindowWidth already (:mod:`cadx.io`), which spans the presentation range; each further
    window in the file becomes a preset, mapped through that first window's linear function (DICOM PS3.3
    C.11.2.1.2: ``(x - (c - 0.5)) / (w - 1) + 0.5``), inverted for MONOCHROME1.
    """
    windows: dict[str, tuple[float, float] | None] = {AUTO_WINDOW: None, FULL_WINDOW: (0.0, 1.0)}
    header = header or {}
    centres, widths = _numbers(header.get("WindowCenter")), _numbers(header.get("WindowWidth"))
    pairs = [(c, w) for c, w in zip(centres, widths, strict=False) if w >= 1]
    if not pairs:
        return windows
    c1, w1 = pairs[0]
    invert = str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"

    def fraction(x: float) -> float:
        f = (x - (c1 - 0.5)) / max(w1 - 1, 1e-9) + 0.5
        return 1.0 - f if invert else f

    windows[f"DICOM window 1 (centre {c1:g}, width {w1:g})"] = (0.0, 1.0)
    for k, (c, w) in enumerate(pairs[1:], start=2):
        lo, hi = sorted((fraction(c - w / 2), fraction(c + w / 2)))
        lo, hi = max(0.0, lo), min(1.0, hi)
        if hi > lo:
            windows[f"DICOM window {k} (centre {c:g}, width {w:g})"] = (lo, hi)
    return windows


def roi_image_header(workspace: Workspace, roi: RoiRow) -> dict[str, Any]:
    """The de-identified header of the image an ROI was cut from (window presets, photometric)."""
    with workspace.sessions() as session:
        header = session.scalar(select(Image.header).join(Roi, Roi.image_id == Image.id).where(Roi.id == roi.id))
    return dict(header or {})


def _load_roi(workspace: Workspace, roi: RoiRow) -> np.ndarray:
    return cadx_roi.decode_png16(workspace.path(roi.file).read_bytes())


def roi_auto_window(workspace: Workspace, roi: RoiRow) -> tuple[float, float]:
    """The automatic contrast of a stored ROI as a window (fractions of :data:`ROI_GREY_RANGE`): where a manual
    window starts from."""
    return auto_window(_load_roi(workspace, roi), value_range=ROI_GREY_RANGE)


def roi_thumbnail(workspace: Workspace, roi: RoiRow, *, size: int = 128) -> Path:
    """A ``size`` px 8-bit PNG of the ROI, made once and cached under the data directory by the ROI's hash."""
    path = workspace.path(f"thumbs/{size}/{roi.sha256[:2]}/{roi.sha256}.png")
    if not path.exists():
        write_once(path, lambda: thumbnail_png(_load_roi(workspace, roi), size=size))
    return path


def _integer_percentiles(pixels: np.ndarray, q: tuple[float, ...]) -> list[float]:
    """``np.percentile(pixels, q)`` (its default linear method) of unsigned-integer pixels from their histogram: one
    counting pass instead of a partition of every pixel."""
    counts = np.cumsum(np.bincount(pixels.ravel()))
    out = []
    for p in q:
        position = p / 100.0 * (pixels.size - 1)
        below = int(np.floor(position))
        a, b = np.searchsorted(counts, [below, min(below + 1, pixels.size - 1)], side="right")
        out.append(float(a) + (float(b) - float(a)) * (position - below))
    return out


def thumbnail_png(pixels: np.ndarray, *, size: int) -> bytes:
    """An 8-bit ``size`` px PNG of ROI ``pixels`` (uint16, (H, W)) through the automatic contrast of the full-size
    ROI (:func:`roi_display` with no window).

    Made on the Review grid's first render, so made cheaply (issue 25.8: under load the grid stayed grey for seconds):
    the contrast limits from the histogram (the same values as ``np.percentile``), the shrink before the grey mapping
    (one mapped pixel per thumbnail pixel, not per ROI pixel) and the fastest PNG compression: 2.6-3.6x faster than
    mapping then shrinking, on MIAS. Shrinking first differs from mapping first only where a window edge cuts through
    a pixel's box (on MIAS 0.02-0.05 % of thumbnail pixels, by up to 18 grey levels); the detail view and every
    export use :func:`roi_display`."""
    pixels = np.asarray(pixels)
    if pixels.dtype.kind != "u":
        raise CadxInputError("ROI pixels", f"dtype {pixels.dtype} is not an unsigned integer type",
                             "pass the stored ROI (uint16)")
    lo, hi = _integer_percentiles(pixels, (0.5, 99.5))
    if hi <= lo:  # as in _stretch: mostly flat, stretch min to max
        lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        hi = lo + 1.0
    small = PILImage.fromarray(pixels.astype(np.float32), mode="F").resize((size, size), PILImage.Resampling.BOX)
    grey = np.rint(np.clip((np.asarray(small) - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    buffer = _io.BytesIO()
    PILImage.fromarray(grey, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def warm_thumbnails(workspace: Workspace, filters: RoiFilters | None, *, pages: Iterable[int], page_size: int,
                    size: int = 128) -> int:
    """Make the thumbnails of grid ``pages`` ahead of time (the review page runs this in a background thread for
    the pages beside the one shown, so that turning the page finds them made); returns how many were made."""
    made = 0
    for page in pages:
        if page < 1:
            continue
        listing = browse_rois(workspace, filters, page=page, page_size=page_size)
        if listing.page != page:  # beyond the last page
            continue
        for roi in listing.rows:
            path = workspace.path(f"thumbs/{size}/{roi.sha256[:2]}/{roi.sha256}.png")
            if not path.exists():
                roi_thumbnail(workspace, roi, size=size)
                made += 1
    return made


def roi_outline_image(workspace: Workspace, roi: RoiRow, *, size: int = 512,
                      window: tuple[float, float] | None = None) -> tuple[np.ndarray, Outline | None]:
    """The ROI as RGB uint8 (``size`` px) with its outline drawn (yellow: segmentation, cyan: phantom truth), shown
    through ``window`` (see :func:`roi_display`)."""
    grey = roi_display(_load_roi(workspace, roi), window=window)
    outline = roi_outline(workspace, roi)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if outline is not None:
        mask = decode_mask_png(workspace.path(outline.file).read_bytes(), shape=grey.shape)
        draw_outline(rgb, mask, outline.kind, width=1 + max(1, round(512 / size)))  # still visible once shrunk
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
    """An RGB version of (a region of) an image for the browser; ``pixels`` is (h, w, 3) uint8.

    ``region`` is the part of the source image shown, ``(first row, first column, rows, columns)`` in source
    pixels: the whole image unless zoomed.
    """

    pixels: np.ndarray
    image_shape: tuple[int, int]  # (rows, columns) of the source image
    region: tuple[int, int, int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in display pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    @property
    def shown(self) -> tuple[int, int, int, int]:
        """The region shown (the whole image when ``region`` is None)."""
        return self.region or (0, 0, *self.image_shape)

    @property
    def scale(self) -> float:
        """Display pixels per source pixel (below 1: downsampled; above 1: magnified)."""
        return self.size[0] / self.shown[3]

    def describe(self) -> str:
        """One line saying what is shown, for a caption."""
        r0, c0, h, w = self.shown
        rows, cols = self.image_shape
        width, height = self.size
        if (h, w) == (rows, cols):
            what = f"the whole image ({cols} × {rows} pixels)"
        else:
            what = f"rows {r0}–{r0 + h - 1} and columns {c0}–{c0 + w - 1} of {cols} × {rows}"
        scale = self.scale
        if abs(scale - 1) < 1e-9:
            how = "at full resolution (one screen pixel per image pixel)"
        elif scale < 1:
            how = f"downsampled to {width} × {height} ({1 / scale:.3g} image pixels per screen pixel)"
        else:
            how = f"magnified {scale:.3g}× ({scale:.3g} screen pixels per image pixel)"
        return f"Showing {what}, {how}"


def _display_shape(shape: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    rows, cols = shape
    scale = min(1.0, max_width / cols, max_height / rows)
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def zoom_region(image_shape: tuple[int, int], *, centre_rc: tuple[float, float], scale: float,
                max_width: int = 640, max_height: int = 800) -> tuple[int, int, int, int]:
    """The region ``(first row, first column, rows, columns)`` that fills a ``max_width`` x ``max_height`` view at
    ``scale`` screen pixels per image pixel, centred on ``centre_rc`` as far as the image edges allow."""
    rows, cols = image_shape
    if not scale > 0:
        raise CadxInputError("zoom", f"{scale!r} is not a positive scale", "choose a zoom level")
    h = max(1, min(rows, int(max_height // scale)))
    w = max(1, min(cols, int(max_width // scale)))
    r0 = int(np.clip(round(centre_rc[0] - h / 2), 0, rows - h))
    c0 = int(np.clip(round(centre_rc[1] - w / 2), 0, cols - w))
    return r0, c0, h, w


def _shown_pixels(pixels: np.ndarray, region: tuple[int, int, int, int] | None, max_width: int,
                  max_height: int) -> np.ndarray:
    """The grey values of (the ``region`` of) an image at its display size, before any window (float32)."""
    rows, cols = pixels.shape
    r0, c0, rh, rw = region or (0, 0, rows, cols)
    source = np.asarray(pixels[r0:r0 + rh, c0:c0 + rw], dtype=np.float32)
    scale = min(max_width / rw, max_height / rh)
    if scale >= 1:
        scale = float(int(scale)) if scale >= 2 or region is not None else 1.0
        h, w = max(1, round(rh * scale)), max(1, round(rw * scale))
        resample = PILImage.Resampling.NEAREST
    else:
        h, w = _display_shape((rh, rw), max_width, max_height)
        resample = PILImage.Resampling.BOX
    return source if (h, w) == (rh, rw) else np.asarray(PILImage.fromarray(source, mode="F").resize((w, h), resample))


def display_image(image: cadx_io.Mammogram, *, max_width: int = 640, max_height: int = 800,
                  centre_rc: tuple[float, float] | None = None,
                  pixel_spacing_mm: tuple[float, float] | None = None,
                  region: tuple[int, int, int, int] | None = None,
                  window: tuple[float, float] | None = None,
                  region_contrast: bool = False) -> DisplayImage:
    """The image (or its ``region``) fitted to ``max_width`` x ``max_height``, shown through ``window``.

    A region smaller than the view is magnified by whole pixel replication when it fits a whole number of times
    (nearest neighbour otherwise), so each image pixel stays a visible square; a larger one is area averaged.
    ``window`` is a pair of fractions of the image's presentation range (:func:`display_windows`); None is the
    automatic contrast of the whole image as the fit view shows it, so that zooming in never changes the grey of a
    pixel; ``region_contrast=True`` stretches the region shown instead. With ``centre_rc``, a red cross marks the
    centre and, when the pixel size is known, a box shows the 51.2 mm field that the ROI will cover.
    """
    rows, cols = image.pixels.shape
    r0, c0, rh, rw = region or (0, 0, rows, cols)
    if not (0 <= r0 and 0 <= c0 and rh >= 1 and rw >= 1 and r0 + rh <= rows and c0 + rw <= cols):
        raise CadxInputError("zoom region", f"{region!r} is not inside the {cols} x {rows} image",
                             "zoom out and choose the region again")
    small = _shown_pixels(image.pixels, region, max_width, max_height)
    h, w = small.shape
    if window is None and region is not None and not region_contrast:  # the fit view's contrast
        window = auto_window(_shown_pixels(image.pixels, None, max_width, max_height), value_range=image.value_range)
    grey = roi_display(small, window=window, value_range=image.value_range)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if centre_rc is not None:
        sy, sx = h / rh, w / rw
        # source pixel centre c (edges at c +- 0.5) -> display coordinate (c - origin + 0.5) * scale - 0.5
        y = (centre_rc[0] - r0 + 0.5) * sy - 0.5
        x = (centre_rc[1] - c0 + 0.5) * sx - 0.5
        red = (255, 40, 40)
        arm = max(6, round(min(h, w) * 0.03))
        yi, xi = int(round(y)), int(round(x))
        if -arm <= yi < h + arm and -arm <= xi < w + arm:
            rgb[max(0, yi - 1):max(0, yi + 2), max(0, xi - arm):max(0, xi + arm + 1)] = red
            rgb[max(0, yi - arm):max(0, yi + arm + 1), max(0, xi - 1):max(0, xi + 2)] = red
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
    return DisplayImage(pixels=rgb, image_shape=(rows, cols), region=None if region is None else (r0, c0, rh, rw))


def display_to_image_rc(x: float, y: float, *, display_size: tuple[float, float],
                        image_shape: tuple[int, int],
                        region: tuple[int, int, int, int] | None = None) -> tuple[float, float]:
    """Map a click at display pixel (``x``, ``y``) (origin top-left of the shown image) to image (row, col).

    ``display_size`` is the (width, height) the image (or its ``region``, ``(row, column, rows, columns)``, when
    zoomed) was shown at. Display pixel ``x`` spans the source interval ``c0 - 0.5 + [x, x + 1] * columns / width``
    (pixel edges), so its centre is at source column ``c0 + (x + 0.5) * columns / width - 0.5`` (pixel centres at
    integers, as in :mod:`cadx.roi`). Clipped to the image.
    """
    width, height = display_size
    rows, cols = image_shape
    r0, c0, rh, rw = region or (0, 0, rows, cols)
    if width <= 0 or height <= 0:
        raise CadxInputError("image click", "the displayed image has no size", "reload the page and click again")
    row = r0 + (float(y) + 0.5) * rh / float(height) - 0.5
    col = c0 + (float(x) + 0.5) * rw / float(width) - 0.5
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


def lesion_key_patients(workspace: Workspace, lesion_key: str, *, other_than: str | None) -> list[str]:
    """Keys of the local patients, other than ``other_than``, that already have a lesion named ``lesion_key``.

    A lesion key is unique within a patient only, so this is legal; but a view saved as a new lesion whose key
    another patient already has is often one lesion split across two patients (the patient chosen wrongly), which
    breaks the lesion and patient grouping of the folds: the upload page asks before it saves one.
    """
    if not lesion_key.strip():
        return []
    with workspace.sessions() as session:
        query = (select(Patient.key).join(Lesion, Lesion.patient_id == Patient.id)
                 .where(Patient.source == LOCAL_SOURCE, Lesion.key == lesion_key.strip()))
        if other_than:
            query = query.where(Patient.key != other_than)
        return list(session.scalars(query.distinct().order_by(Patient.key)))
