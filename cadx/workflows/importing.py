"""Importers: every way images and lesions enter the database (MIAS, CBIS-DDSM, CSV manifest, DICOM folder,
browser upload, built-in demo phantoms) goes through :func:`run_import`.

An import runs in two phases. First each image is read (once), its ROIs cropped and their PNGs written to the
content-addressed ROI store; nothing touches the database. Then one transaction writes every row. An item that
fails is reported with its reason; unless ``skip_errors`` is set, any failure rolls the whole import back and
removes the ROI files it created, so a bad file never leaves partial rows. Importing the same data twice adds
nothing: images are identified by their file's SHA-256, and an image's ROI for a lesion exists at most once.

Imports running at once (two reviewers uploading the same case, the app and the CLI) take turns for the second
phase under the workspace's import lock. Because ROI files are named by content, two imports can share one: a
failed import therefore removes a file it created only when no committed row points at it, and an import whose
file was removed that way before it committed reports it and writes nothing (run it again).
"""

from __future__ import annotations

import dataclasses
import itertools
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cadx import io as cadx_io
from cadx import roi as cadx_roi
from cadx.errors import CadxInputError, ImageReadError
from cadx.workflows.accounts import record_audit
from cadx.workflows.storage import encode_mask_png, write_once, writing_files
from cadx.workflows.workspace import Workspace
from db.models import Image, ImportRun, Lesion, Patient, Roi

__all__ = ["Finding", "ImportItem", "ImportReport", "Progress", "run_import", "store_roi_png"]

Progress = Callable[[int, int | None, str], None]

LOCAL_SOURCE = "local"  # patients keyed by the user (manifests, DICOM folders, uploads) share one namespace


@dataclass
class ImportItem:
    """One line of an import report: an ROI (or a row that gave none) and what happened to it."""

    name: str
    status: str  # "imported" | "skipped" | "error"
    reason: str = ""
    roi_id: int | None = None
    code: str = ""  # for skipped findings: a key of cadx.sources.NOT_ROI_REASONS, "normal", "image_absent", ...


@dataclass
class ImportReport:
    """What an import did, item by item. ``committed`` is False when nothing was written."""

    kind: str
    source: str
    items: list[ImportItem] = field(default_factory=list)
    committed: bool = False

    def add(self, name: str, status: str, reason: str = "", *, code: str = "") -> ImportItem:
        item = ImportItem(name, status, reason, code=code)
        self.items.append(item)
        return item

    def _count(self, status: str) -> int:
        return sum(item.status == status for item in self.items)

    @property
    def n_imported(self) -> int:
        return self._count("imported") if self.committed else 0

    @property
    def n_skipped(self) -> int:
        return self._count("skipped")

    @property
    def n_errors(self) -> int:
        return self._count("error")

    @property
    def errors(self) -> list[ImportItem]:
        return [item for item in self.items if item.status == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "committed": self.committed,
            "imported": self.n_imported,
            "skipped": self.n_skipped,
            "errors": self.n_errors,
            "items": [dataclasses.asdict(item) for item in self.items],
        }


@dataclass
class Finding:
    """One ROI to create: a lesion seen in one image.

    Findings of one image must come one after the other, so that each image is read once.
    """

    name: str  # how the report names this item, e.g. "mdb005 finding 2"
    image_key: str  # identifies the image within this import (path or id)
    load_image: Callable[[], cadx_io.Mammogram]
    image_name: str  # de-identified source name stored in the database
    patient_source: str
    patient_key: str | None  # None: the DICOM PatientID pseudonym
    lesion_key: str
    label: str
    pathology_source: str
    centre_source: str
    centre_rc: tuple[float, float] | None = None
    # For centres derived from the image itself (CBIS-DDSM masks): returns (centre_rc, lesion size in mm, the
    # lesion's outline as a bool (H, W) mask in source pixels or None); the outline becomes the reference outline.
    locate: Callable[[cadx_io.Mammogram],
                     tuple[tuple[float, float], float | None, np.ndarray | None]] | None = None
    lesion_type: str | None = None
    lesion_size_mm: float | None = None
    view: str | None = None
    laterality: str | None = None
    pixel_spacing_source: str | None = None  # overrides the reader's (e.g. the dataset's documented size)
    is_synthetic: bool = False
    lesion_truth: dict[str, Any] | None = None
    # bool (H, W) in source pixels: the reference outline (a phantom's truth, a DDSM expert's outline)
    truth_mask: np.ndarray | None = None


@dataclass
class _Prepared:
    finding: Finding
    image: cadx_io.Mammogram  # pixels dropped: metadata only
    image_shape: tuple[int, int]
    crop: cadx_roi.RoiCrop  # pixels dropped
    roi_sha256: str
    roi_file: str
    truth_file: str | None
    lesion_size_mm: float | None
    centre_rc: tuple[float, float]


def store_roi_png(data_dir: Path, pixels: np.ndarray) -> tuple[str, str, bool]:
    """Store ROI pixels as a lossless 16-bit PNG named by their hash.

    Returns
    -------
    relative_path : str
    sha256 : str
        :func:`cadx.roi.roi_sha256` of the pixels.
    created : bool
        False when the same pixels were stored before.
    """
    sha = cadx_roi.roi_sha256(pixels)
    relative = f"rois/{sha[:2]}/{sha}.png"
    created = write_once(data_dir / relative, lambda: cadx_roi.encode_png16(pixels))
    return relative, sha, created


def _store_truth_png(data_dir: Path, roi_sha: str, mask: np.ndarray) -> tuple[str, bool]:
    relative = f"truth/{roi_sha[:2]}/{roi_sha}.png"
    return relative, write_once(data_dir / relative, lambda: encode_mask_png(mask))


def _metadata_only(image: cadx_io.Mammogram) -> cadx_io.Mammogram:
    return dataclasses.replace(image, pixels=np.empty((0, 0), dtype=np.float32))


def run_import(
    workspace: Workspace,
    findings: Iterable[Finding],
    *,
    kind: str,
    source: str,
    user: str,
    report: ImportReport | None = None,
    skip_errors: bool = False,
    allow_burned_in: bool = False,
    total_images: int | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Read, crop and store every finding, then write all rows in one transaction.

    Parameters
    ----------
    workspace : the data directory and database.
    findings : the ROIs to create, grouped by image (consecutive findings with the same ``image_key``).
    kind, source : what is imported (e.g. ``"mias"`` and the folder), recorded with the report.
    user : who imports (recorded in the import run).
    report : a report that already holds the items the caller skipped while parsing.
    skip_errors : when True, items with errors are left out and the rest is written; when False (default), any
        error leaves the database and the ROI store as they were.
    allow_burned_in : DICOM files marked BurnedInAnnotation=YES may carry identifying text in their pixels; they
        are refused unless this is True, and then their ROIs are flagged ``burned_in_annotation`` for review.
    total_images, progress : progress reporting, ``progress(done, total, message)`` per image.
    """
    report = report or ImportReport(kind=kind, source=source)
    with writing_files(workspace.data_dir):  # until committed or cleaned up: `cadx gc` leaves our files alone
        return _run_import(workspace, findings, kind=kind, source=source, user=user, report=report,
                           skip_errors=skip_errors, allow_burned_in=allow_burned_in, total_images=total_images,
                           progress=progress)


def _run_import(workspace: Workspace, findings: Iterable[Finding], *, kind: str, source: str, user: str,
                report: ImportReport, skip_errors: bool, allow_burned_in: bool, total_images: int | None,
                progress: Progress | None) -> ImportReport:
    prepared: list[_Prepared] = []
    created_files: list[Path] = []
    seen_sha: dict[str, tuple[str, str]] = {}  # file hash -> (image key, first item name)
    try:
        for done, (_image_key, group_iter) in enumerate(itertools.groupby(findings, key=lambda f: f.image_key)):
            group = list(group_iter)
            if progress is not None:
                progress(done, total_images, f"reading {group[0].image_name}")
            prepared.extend(_prepare_image(workspace, group, report, seen_sha, created_files, allow_burned_in))
        if progress is not None:
            progress(total_images or 0, total_images, "writing to the database")
        if report.errors and not skip_errors:
            _remove_unreferenced(workspace, created_files)
            return report
        with workspace.import_lock():
            prepared = _with_files_present(workspace, prepared, report)
            if report.errors and not skip_errors:
                _remove_unreferenced(workspace, created_files)
                return report
            try:
                with workspace.sessions.begin() as session:
                    run = ImportRun(kind=kind, source=source, user=user, n_imported=0, n_skipped=0, report={})
                    session.add(run)
                    session.flush()  # its id goes on every ROI it creates (cohorts select by import run)
                    for item in prepared:
                        _write_rows(session, item, report, run.id)
                    if report.errors and not skip_errors:
                        raise _Rollback
                    n_imported = sum(i.status == "imported" for i in report.items)
                    run.n_imported, run.n_skipped = n_imported, report.n_skipped
                    run.report = {"items": [dataclasses.asdict(i) for i in report.items]}
                    record_audit(session, user=user, action="upload" if kind == "upload" else "import",
                                 target=f"{kind} {source}"[:128],
                                 detail={"imported": n_imported, "skipped": report.n_skipped,
                                         "errors": report.n_errors,
                                         "roi_ids": [i.roi_id for i in report.items if i.status == "imported"]})
            except _Rollback:
                _remove_unreferenced(workspace, created_files)
                for entry in report.items:
                    if entry.status == "imported":
                        entry.roi_id = None
                return report
            except IntegrityError as exc:
                # Another writer (not an import: they take turns) wrote the same rows: nothing of ours was kept.
                _remove_unreferenced(workspace, created_files)
                report.add(source, "error",
                           f"the database refused the rows ({exc.orig}); nothing was written — run the import again")
                return report
    except BaseException:
        _remove_unreferenced(workspace, created_files)
        raise
    report.committed = True
    return report


class _Rollback(Exception):
    pass


def _with_files_present(workspace: Workspace, prepared: list[_Prepared], report: ImportReport) -> list[_Prepared]:
    """The prepared items whose ROI (and truth) files are still there; the others are reported as errors.

    A file can vanish between the two phases only when a concurrent import that created the same content-named
    file failed and, seeing no row pointing at it yet, removed it.
    """
    kept = []
    for item in prepared:
        files = [item.roi_file] + ([item.truth_file] if item.truth_file else [])
        if all(workspace.path(f).exists() for f in files):
            kept.append(item)
        else:
            report.add(item.finding.name, "error", "its ROI file was removed by another import of the same image "
                                                   "that failed at the same moment. Fix: run the import again")
    return kept


def _remove_unreferenced(workspace: Workspace, paths: list[Path]) -> None:
    """Remove files this import created, except those a committed row (of another import) points at now."""
    if not paths:
        return
    relative = {path.relative_to(workspace.data_dir).as_posix(): path for path in paths}
    with workspace.import_lock():
        try:
            with workspace.sessions() as session:
                used = set(session.scalars(select(Roi.file).where(Roi.file.in_(relative))))
                used |= set(session.scalars(select(Roi.truth_mask_file).where(Roi.truth_mask_file.in_(relative))))
        except Exception:  # noqa: BLE001 - cannot tell which files are in use: keep them all (an unused file is harmless)
            return
        for name, path in relative.items():
            if name not in used:
                path.unlink(missing_ok=True)


def _prepare_image(
    workspace: Workspace,
    group: list[Finding],
    report: ImportReport,
    seen_sha: dict[str, tuple[str, str]],
    created_files: list[Path],
    allow_burned_in: bool,
) -> Iterator[_Prepared]:
    first = group[0]
    try:
        image = first.load_image()
        if image.burned_in_annotation and not allow_burned_in:
            raise ImageReadError(
                first.image_name,
                "the file says BurnedInAnnotation=YES: text burned into the pixels may identify the patient",
                "remove the annotation from the pixels first, or import with --allow-burned-in to keep the image "
                "flagged for review",
            )
        if image.pixel_spacing_mm is None:
            raise ImageReadError(
                first.image_name,
                "the pixel size is unknown (no PixelSpacing or ImagerPixelSpacing in the file, none given)",
                "give the pixel size in mm (manifest column pixel_size_mm, or --pixel-size-mm)",
            )
    except CadxInputError as exc:
        for finding in group:
            report.add(finding.name, "error", _reason(exc))
        return
    previous = seen_sha.get(image.source_sha256)
    if previous is not None and previous[0] != first.image_key:
        for finding in group:
            report.add(
                finding.name, "error",
                f"duplicate: the same file content as the image of {previous[1]} in this import. Fix: remove the "
                "duplicate file, or list every finding of one image under one path",
            )
        return
    seen_sha[image.source_sha256] = (first.image_key, first.name)
    existing = _existing_lesion_keys(workspace, image.source_sha256)
    threshold = None
    for finding in group:
        problem = _text_problem(finding)
        if problem is not None:
            report.add(finding.name, "error", problem)
            continue
        if finding.lesion_key in existing:
            report.add(finding.name, "skipped", "already imported (same image file and lesion)")
            continue
        try:
            outline = finding.truth_mask
            if finding.locate is not None:
                centre, size_mm, located = finding.locate(image)
                outline = located if outline is None else outline
            elif finding.centre_rc is not None:
                centre, size_mm = finding.centre_rc, finding.lesion_size_mm
            else:
                raise CadxInputError(finding.name, "no lesion centre", "give the centre (row, column) of the lesion")
            if threshold is None:
                threshold = cadx_roi.estimate_background_threshold(image.pixels, value_range=image.value_range)
            crop = cadx_roi.crop_roi(
                image.pixels,
                centre_rc=centre,
                pixel_spacing_mm=image.pixel_spacing_mm,
                value_range=image.value_range,
                lesion_diameter_mm=size_mm,
                background_threshold=threshold,
                source=finding.name,
            )
        except CadxInputError as exc:
            report.add(finding.name, "error", _reason(exc))
            continue
        if image.burned_in_annotation:
            crop = dataclasses.replace(crop, flags=tuple(sorted((*crop.flags, "burned_in_annotation"))))
        relative, sha, created = store_roi_png(workspace.data_dir, crop.pixels)
        if created:
            created_files.append(workspace.path(relative))
        truth_file = None
        if outline is not None:
            truth = cadx_roi.crop_mask(outline, centre_rc=centre, pixel_spacing_mm=image.pixel_spacing_mm)
            truth_file, created = _store_truth_png(workspace.data_dir, sha, truth)
            if created:
                created_files.append(workspace.path(truth_file))
        yield _Prepared(
            finding=dataclasses.replace(finding, truth_mask=None),
            image=_metadata_only(image),
            image_shape=(int(image.pixels.shape[0]), int(image.pixels.shape[1])),
            crop=dataclasses.replace(crop, pixels=np.empty((0, 0), dtype=np.uint16)),
            roi_sha256=sha,
            roi_file=relative,
            truth_file=truth_file,
            lesion_size_mm=size_mm,
            centre_rc=(float(centre[0]), float(centre[1])),
        )


# Text a finding carries into the database: (attribute, what to call it, the column it goes to).
_TEXT_FIELDS = (
    ("patient_key", "the patient key", Patient.__table__.c.key),
    ("lesion_key", "the lesion key", Lesion.__table__.c.key),
    ("lesion_type", "the lesion type", Lesion.__table__.c.lesion_type),
    ("view", "the view", Image.__table__.c.view),
    ("laterality", "the laterality", Image.__table__.c.laterality),
    ("pathology_source", "the pathology source", Lesion.__table__.c.pathology_source),
    ("centre_source", "the centre source", Roi.__table__.c.centre_source),
    ("image_name", "the image name", Image.__table__.c.source_name),
)


def _text_problem(finding: Finding) -> str | None:
    """Why a finding's text cannot be stored as given (too long for its column, or a control character), or None.

    Checked here, before anything is written, so SQLite (which would store it) and PostgreSQL (which would refuse
    the whole transaction with a driver error) give the same clear answer.
    """
    for attribute, what, column in _TEXT_FIELDS:
        value = getattr(finding, attribute)
        if value is None:
            continue
        value = str(value)
        limit = getattr(column.type, "length", None)
        if limit is not None and len(value) > limit:
            return (f"{what} has {len(value)} characters; at most {limit} fit the database. Fix: shorten it (keys "
                    "are short opaque codes, never descriptions)")
        bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
        if bad is not None:
            return (f"{what} contains a control character (U+{ord(bad):04X}). Fix: remove it; keys and labels are "
                    "plain printable text")
    return None


def _reason(exc: CadxInputError) -> str:
    # The item's name (e.g. "manifest.csv row 3") locates the problem; the file's own path is left out, since
    # clinical file names can hold patient names and reports are stored in the database.
    return f"{exc.problem}. Fix: {exc.fix}"


def _existing_lesion_keys(workspace: Workspace, image_sha: str) -> set[str]:
    with workspace.sessions() as session:
        return set(
            session.scalars(
                select(Lesion.key).join(Roi, Roi.lesion_id == Lesion.id).join(Image, Roi.image_id == Image.id)
                .where(Image.sha256 == image_sha)
            )
        )


def _write_rows(session: Session, item: _Prepared, report: ImportReport, import_run_id: int) -> None:
    """Add one ROI with its patient, lesion and image; validate everything before adding anything."""
    finding, image = item.finding, item.image
    patient_key = finding.patient_key or image.patient_key
    if not patient_key:
        report.add(finding.name, "error",
                   f"{finding.image_name}: no patient given and the file has no PatientID. Fix: add a patient column")
        return
    patient = session.scalar(
        select(Patient).where(Patient.source == finding.patient_source, Patient.key == patient_key)
    )
    lesion = None
    if patient is not None:
        lesion = session.scalar(select(Lesion).where(Lesion.patient_id == patient.id, Lesion.key == finding.lesion_key))
    if lesion is not None and lesion.label != finding.label:
        report.add(finding.name, "error",
                   f"lesion {finding.lesion_key!r} is already {lesion.label} in the database but this row says "
                   f"{finding.label}. Fix: correct the label, or give the lesion another key")
        return
    image_row = session.scalar(select(Image).where(Image.sha256 == image.source_sha256))
    if image_row is not None and patient is not None and image_row.patient_id != patient.id:
        report.add(finding.name, "error",
                   f"{finding.image_name} is already in the database under another patient. "
                   "Fix: check the patient column")
        return
    if image_row is not None and patient is None:
        report.add(finding.name, "error",
                   f"{finding.image_name} is already in the database under another patient. "
                   "Fix: check the patient column")
        return
    if image_row is not None and lesion is not None and session.scalar(
            select(Roi.id).where(Roi.image_id == image_row.id, Roi.lesion_id == lesion.id)) is not None:
        # committed by an import that ran at the same time (the first phase did not see it yet)
        report.add(finding.name, "skipped", "already imported (same image file and lesion)")
        return
    if patient is None:
        patient = Patient(source=finding.patient_source, key=patient_key, is_synthetic=finding.is_synthetic)
        session.add(patient)
    if lesion is None:
        lesion = Lesion(
            patient=patient,
            key=finding.lesion_key,
            label=finding.label,
            pathology_source=finding.pathology_source,
            lesion_type=finding.lesion_type,
            size_mm=item.lesion_size_mm,
            is_synthetic=finding.is_synthetic,
            truth=finding.lesion_truth,
        )
        session.add(lesion)
    elif lesion.size_mm is None and item.lesion_size_mm is not None:
        lesion.size_mm = item.lesion_size_mm
    if image_row is None:
        spacing = cadx_io.require_pixel_spacing(image, finding.name)
        image_row = Image(
            patient=patient,
            source_name=finding.image_name,
            sha256=image.source_sha256,
            source_format="synthetic" if finding.is_synthetic else image.source_format,
            modality=image.modality,
            view=finding.view or image.view,
            laterality=finding.laterality or image.laterality,
            rows=item.image_shape[0],
            columns=item.image_shape[1],
            pixel_spacing_row_mm=float(spacing[0]),
            pixel_spacing_col_mm=float(spacing[1]),
            pixel_spacing_source=finding.pixel_spacing_source or image.pixel_spacing_source or "user",
            header=dict(image.header),
            burned_in_annotation=bool(image.burned_in_annotation),
            is_synthetic=finding.is_synthetic,
        )
        session.add(image_row)
    crop = item.crop
    roi = Roi(
        lesion=lesion,
        image=image_row,
        sha256=item.roi_sha256,
        file=item.roi_file,
        centre_row=item.centre_rc[0],
        centre_col=item.centre_rc[1],
        centre_source=finding.centre_source,
        size_px=cadx_roi.ROI_SIZE_PX,
        pixel_size_mm=cadx_roi.ROI_PIXEL_MM,
        field_mm=cadx_roi.ROI_FIELD_MM,
        padded_fraction=float(crop.padded_fraction),
        background_fraction=float(crop.background_fraction),
        lesion_fits=crop.lesion_fits,
        qc_flags=list(crop.flags),
        truth_mask_file=item.truth_file,
        is_synthetic=finding.is_synthetic,
        import_run_id=import_run_id,
    )
    session.add(roi)
    session.flush()
    report.add(finding.name, "imported", ", ".join(crop.flags)).roi_id = roi.id
