"""DICOM SR and SEG export of ROIs (an experiment's, a cohort's, or one for the ROI page's download): the stored rows
and masks become :class:`cadx.export.RoiExportRecord`, which :mod:`cadx.export` turns into DICOM.

What goes in, per ROI: the source image (its pseudonymous patient, size, spacing, laterality, view; UIDs generated
deterministically, see :func:`cadx.export.source_uids`), the lesion (key, label, type family), the marked centre,
the review state and every review decision (who, when, action, reason, note), and the masks: Method B's newest stored
segmentation (``segmentations``) and the reference outline (``Roi.truth_mask_file``: an expert's, or a synthetic
phantom's truth).

Files are written into a fresh folder beside the target and moved into it only when every one was built, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select

from cadx.errors import CadxInputError
from cadx.export import (
    MAMMOGRAPHY_FOR_PRESENTATION,
    SECONDARY_CAPTURE,
    ReviewRecord,
    RoiExportRecord,
    SegmentRecord,
    SourceImageRecord,
    build_seg,
    build_sr,
    source_uids,
)
from cadx.workflows.workspace import Workspace
from db.models import Image, Lesion, Patient, ReviewEvent, Roi, Segmentation

__all__ = ["EXPORT_KINDS", "ExportReport", "export_dicom", "export_roi_ids", "roi_dicom_bytes", "roi_export_records"]

EXPORT_KINDS = ("sr", "seg")


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: the files (in ``out``), the ROIs without anything to write (SEG of an ROI with no
    mask) and the time it took."""

    kind: str
    target: str
    out: Path
    files: list[Path]
    n_rois: int
    skipped_roi_ids: list[int]
    seconds: float


def export_roi_ids(workspace: Workspace, target: str) -> tuple[str, list[int]]:
    """The ROIs of ``target``: an experiment id (its included and excluded ROIs: the exclusions are part of what
    the export reports) or a cohort name (preset or saved). Returns (a description, ROI ids)."""
    from cadx.workflows.cohorts import resolve_cohort
    from cadx.workflows.experiments import load_experiment

    text = str(target).strip()
    if not text:
        raise CadxInputError("EXPERIMENT-or-COHORT", "nothing given",
                             "give an experiment id (`cadx experiments`) or a cohort name (`cadx cohort list`)")
    if text.isdigit():
        record = load_experiment(workspace, int(text))
        ids = list(dict.fromkeys([*record.config.roi_ids, *record.config.excluded_roi_ids]))
        return f"experiment {record.id}", ids
    resolved = resolve_cohort(workspace, text)
    return f"cohort {resolved.name}", [r.id for r in resolved.records]


def roi_export_records(workspace: Workspace, roi_ids: Iterable[int]) -> list[RoiExportRecord]:
    """The export records of ``roi_ids`` (in that order); an unknown id is a :class:`CadxInputError`."""
    from cadx import __version__, lesion_types
    from cadx.outline import decode_mask_png

    ids = list(dict.fromkeys(int(i) for i in roi_ids))
    with workspace.sessions() as session:
        rows = {roi.id: (roi, lesion, image, patient) for roi, lesion, image, patient in session.execute(
            select(Roi, Lesion, Image, Patient).join(Lesion, Roi.lesion_id == Lesion.id)
            .join(Image, Roi.image_id == Image.id).join(Patient, Image.patient_id == Patient.id)
            .where(Roi.id.in_(ids))).all()}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise CadxInputError("ROI " + ", ".join(map(str, missing[:10])), "no such ROI",
                                 "pick ROIs listed by the review page or `cadx stats`")
        events: dict[int, list[ReviewRecord]] = {i: [] for i in ids}
        for event in session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id.in_(ids)).order_by(ReviewEvent.id)):
            events[event.roi_id].append(ReviewRecord(event.user, event.at, event.action, event.reason, event.note))
        hashes = {rows[i][0].sha256 for i in ids}
        newest: dict[str, Segmentation] = {}
        for seg in session.scalars(select(Segmentation).where(Segmentation.roi_sha256.in_(hashes),
                                                              Segmentation.mask_file.is_not(None))
                                   .order_by(Segmentation.id)):
            newest[seg.roi_sha256] = seg  # the newest stored mask, as the review page draws it
        records = []
        for roi_id in ids:
            roi, lesion, image, patient = rows[roi_id]
            study, series, instance = source_uids(patient.source, patient.key, image.sha256)
            source = SourceImageRecord(
                study_uid=study, series_uid=series, sop_instance_uid=instance,
                sop_class_uid=MAMMOGRAPHY_FOR_PRESENTATION if image.source_format == "dicom" else SECONDARY_CAPTURE,
                rows=image.rows, columns=image.columns,
                spacing_mm=(image.pixel_spacing_row_mm, image.pixel_spacing_col_mm), patient_id=patient.key,
                laterality=image.laterality, view=image.view)
            segments = []
            method_b = newest.get(roi.sha256)
            if method_b is not None and method_b.mask_file:
                mask = decode_mask_png(workspace.path(method_b.mask_file).read_bytes())
                assert mask is not None  # no shape asked for: always a mask
                segments.append(SegmentRecord("method_b", f"Method B {method_b.version} ({method_b.quality})",
                                              mask, method_b.version))
            if roi.truth_mask_file:
                mask = decode_mask_png(workspace.path(roi.truth_mask_file).read_bytes())
                assert mask is not None
                segments.append(SegmentRecord(
                    "reference", "synthetic phantom truth" if roi.is_synthetic else "expert outline", mask))
            family = lesion_types.LESION_TYPES[lesion.lesion_type].family if lesion.lesion_type in \
                lesion_types.LESION_TYPES else None
            records.append(RoiExportRecord(
                roi_id=roi.id, roi_sha256=roi.sha256, lesion_key=lesion.key, label=lesion.label,
                lesion_family=family, centre_rc=(roi.centre_row, roi.centre_col), image=source,
                included=bool(roi.included), exclusion_reason=roi.exclusion_reason,
                decisions=tuple(events[roi_id]), segments=tuple(segments), created_at=roi.created_at,
                software_version=f"cadx {__version__}"))
    return records


def _file_name(kind: str, record: RoiExportRecord) -> str:
    return f"roi-{record.roi_id:06d}.{kind}.dcm"


def _encode(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def roi_dicom_bytes(workspace: Workspace, roi_id: int) -> dict[str, tuple[str, bytes]]:
    """The SR and SEG of ROI ``roi_id`` as ``{"sr": (file name, bytes), "seg": (file name, bytes)}`` (no ``"seg"``
    when the ROI has no mask): the ROI page's downloads."""
    record = roi_export_records(workspace, [roi_id])[0]
    out = {"sr": (_file_name("sr", record), _encode(build_sr(record)))}
    seg = build_seg(record)
    if seg is not None:
        out["seg"] = (_file_name("seg", record), _encode(seg))
    return out


def _check_out_dir(out: Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise CadxInputError(str(out), "is a file, not a folder", "give --out a folder (it is created if missing)")
    parent = out.parent if not out.exists() else out
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise CadxInputError(str(out), "cannot be written", "give --out a folder you can write to")
    return out


def export_dicom(workspace: Workspace, kind: str, target: str, out: Path) -> ExportReport:
    """Write the SR (``kind="sr"``) or SEG (``"seg"``) of every ROI of ``target`` (an experiment id or a cohort
    name) into folder ``out`` as ``roi-<id>.<kind>.dcm``; all files or none (an existing file of the same name is
    replaced)."""
    if kind not in EXPORT_KINDS:
        raise CadxInputError("kind", f"unknown export {kind!r}", f"use one of {list(EXPORT_KINDS)}")
    out = _check_out_dir(out)
    started = time.perf_counter()
    description, ids = export_roi_ids(workspace, target)
    if not ids:
        raise CadxInputError(description, "holds no ROIs", "pick an experiment or cohort with ROIs")
    builder = build_sr if kind == "sr" else build_seg
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cadx-export-", dir=out))
    names, skipped = [], []
    try:
        # a batch at a time: the records of a whole cohort hold every mask (512 x 512 each) at once otherwise
        for start in range(0, len(ids), 64):
            for record in roi_export_records(workspace, ids[start:start + 64]):
                dataset = builder(record)
                if dataset is None:
                    skipped.append(record.roi_id)
                    continue
                name = _file_name(kind, record)
                dataset.save_as(staging / name, enforce_file_format=True)
                names.append(name)
        for name in names:  # every file was built: move them in (a rename within one folder)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(kind, description, out, [out / n for n in names], len(ids), skipped,
                        time.perf_counter() - started)
