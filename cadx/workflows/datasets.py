"""One function per kind of input, each turning its source into :class:`Finding` s for :func:`run_import`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from cadx import io as cadx_io
from cadx.errors import CadxInputError, ImageReadError, ManifestError
from cadx.lesion_types import normalise_lesion_type
from cadx.sources import (
    MIAS_PIXEL_MM,
    CbisRow,
    ManifestRow,
    parse_cbis_csv,
    parse_manifest,
    parse_mias_info,
)
from cadx.workflows.importing import LOCAL_SOURCE, Finding, ImportReport, Progress, run_import
from cadx.workflows.workspace import Workspace

if TYPE_CHECKING:
    from cadx.ddsm import IcsView, OverlayAbnormality
    from cadx.phantoms import PhantomLesion, PhantomView
    from cadx.sources import MiasFinding

__all__ = ["import_mias", "import_cbis_ddsm", "import_ddsm", "import_manifest", "import_dicom_folder", "import_demo",
           "import_upload"]


# ----------------------------------------------------------------------------------------------------- MIAS ---
def import_mias(workspace: Workspace, folder: str | Path, *, user: str, skip_errors: bool = False,
                progress: Progress | None = None) -> ImportReport:
    """Import the original MIAS distribution (``Info.txt`` + ``mdbNNN.pgm``) from ``folder``.

    Every truth-table finding with a centre and an image file becomes an ROI of its own lesion; rows without a
    centre, normal images and image files absent from a partial copy are reported as skipped.
    """
    folder = Path(folder)
    findings, skips = parse_mias_info(folder / "Info.txt")
    source = _opaque_name(workspace.pseudonym_key(), folder.name, prefix="folder")
    report = ImportReport(kind="mias", source=source)
    reported_normal: set[str] = set()
    for skip in skips:
        if skip.reason.startswith("normal") and skip.refnum in reported_normal:
            continue
        reported_normal.add(skip.refnum)
        report.add(f"{skip.refnum} (Info.txt line {skip.line})", "skipped", skip.reason, code=skip.code)
    present = []
    for finding in findings:
        if (folder / f"{finding.refnum}.pgm").exists():
            present.append(finding)
        else:
            report.add(f"{finding.refnum} finding {finding.index}", "skipped",
                       f"image file {finding.refnum}.pgm is not in the folder (partial copy)", code="image_absent")

    def make(finding: MiasFinding) -> Finding:
        path = folder / f"{finding.refnum}.pgm"
        return Finding(
            name=f"{finding.refnum} finding {finding.index}",
            image_key=str(path),
            load_image=lambda: cadx_io.read_raster(path, pixel_spacing_mm=MIAS_PIXEL_MM),
            image_name=path.name,
            patient_source="mias",
            patient_key=f"mias-{finding.patient_number:03d}",
            lesion_key=f"{finding.refnum}#{finding.index}",
            label=finding.label,
            pathology_source="MIAS truth table (Info.txt)",
            lesion_type=normalise_lesion_type(finding.abnormality),  # CIRC/SPIC/MISC are masses; see cadx.lesion_types
            lesion_size_mm=finding.diameter_mm,
            centre_rc=finding.centre_rc,
            centre_source=f"Info.txt x={finding.x} y={finding.y} (origin bottom-left; row = 1024 - y)",
            view="MLO",
            laterality=finding.laterality,
            pixel_spacing_source="dataset (MIAS: 200 micron pixels)",
        )

    images = {f.refnum for f in present}
    return run_import(workspace, (make(f) for f in present), kind="mias", source=source, user=user,
                      report=report, skip_errors=skip_errors, total_images=len(images), progress=progress)


# ------------------------------------------------------------------------------------------------ CBIS-DDSM ---
def import_cbis_ddsm(workspace: Workspace, folder: str | Path, csv_paths: Sequence[str | Path], *, user: str,
                     pixel_size_mm: float | None = None, skip_errors: bool = False, allow_burned_in: bool = False,
                     progress: Progress | None = None) -> ImportReport:
    """Import CBIS-DDSM from its case-description CSVs and the DICOM tree under ``folder``.

    A lesion is patient + side + abnormality type + abnormality id; its CC and MLO rows become ROIs of that lesion.
    The centre is the centroid of the ROI mask, and the mask is stored as the ROI's reference outline. Files are
    matched by folder, not by name (the CSVs say ``000000.dcm`` where TCIA downloads say ``1-1.dcm``), and the mask
    is told from the crop by content: the mask is binary and has the full image's size. ``pixel_size_mm`` is used
    for files whose header gives none.
    """
    folder = Path(folder)
    rows: list[CbisRow] = []
    for csv_path in csv_paths:
        rows.extend(parse_cbis_csv(csv_path))
    key = workspace.pseudonym_key()
    csv_names = {Path(p).name: _opaque_name(key, Path(p).name) for p in csv_paths}
    report = ImportReport(kind="cbis-ddsm", source=", ".join(csv_names.values()))
    by_lesion: dict[str, list[CbisRow]] = {}
    for row in rows:
        by_lesion.setdefault(row.lesion_key, []).append(row)
    conflicting = {key for key, group in by_lesion.items() if len({r.label for r in group}) > 1}
    for lesion_key in sorted(conflicting):
        for row in by_lesion[lesion_key]:
            report.add(f"{csv_names[row.csv_name]} row {row.line} ({lesion_key} {row.view})", "skipped",
                       "its views disagree on pathology ("
                       + ", ".join(f"{r.view}: {r.pathology}" for r in by_lesion[lesion_key]) + "); not imported",
                       code="conflicting_pathology")
    usable = sorted((r for r in rows if r.lesion_key not in conflicting), key=lambda r: r.image_path)

    def make(row: CbisRow) -> Finding:
        image_dir = folder / Path(row.image_path).parts[0]
        return Finding(
            name=f"{csv_names[row.csv_name]} row {row.line} ({row.lesion_key} {row.view})",
            image_key=row.image_path,
            load_image=lambda: _read_dicom_with_fallback(_single_dicom(image_dir, row), pixel_size_mm),
            image_name=f"{Path(row.image_path).parts[0]}.dcm",
            patient_source="cbis-ddsm",
            patient_key=row.patient_id,
            lesion_key=row.lesion_key,
            label=row.label,
            pathology_source=f"CBIS-DDSM pathology ({row.pathology})",
            lesion_type=normalise_lesion_type(row.abnormality_type, source=f"{row.csv_name} row {row.line}"),
            centre_source="centroid of the CBIS-DDSM ROI mask",
            locate=lambda image: _centre_from_mask(folder, row, image, pixel_size_mm),
            view=row.view,
            laterality=row.side[0],
        )

    n_images = len({r.image_path for r in usable})
    return run_import(workspace, (make(r) for r in usable), kind="cbis-ddsm", source=report.source, user=user,
                      report=report, skip_errors=skip_errors, allow_burned_in=allow_burned_in,
                      total_images=n_images, progress=progress)


def _dicoms_under(directory: Path, row: CbisRow) -> list[Path]:
    if not directory.is_dir():
        raise ImageReadError(str(directory), f"folder for {row.csv_name} row {row.line} not found",
                             "point --folder at the root of the CBIS-DDSM DICOM tree (the folder holding "
                             f"{directory.name}/)")
    return sorted(directory.rglob("*.dcm"))


def _single_dicom(directory: Path, row: CbisRow) -> Path:
    files = _dicoms_under(directory, row)
    if len(files) != 1:
        raise ImageReadError(str(directory), f"expected one full-mammogram DICOM, found {len(files)}",
                             "keep one image per CBIS-DDSM series folder, as TCIA delivers it")
    return files[0]


def _read_dicom_with_fallback(path: Path, pixel_size_mm: float | None) -> cadx_io.Mammogram:
    image = cadx_io.read_dicom(path)
    if image.pixel_spacing_mm is None and pixel_size_mm is not None:
        image = cadx_io.read_dicom(path, pixel_spacing_mm=pixel_size_mm)
    return image


def _centre_from_mask(folder: Path, row: CbisRow, image: cadx_io.Mammogram,
                      pixel_size_mm: float | None) -> tuple[tuple[float, float], float, np.ndarray]:
    """The ROI mask's centroid, its extent in mm and the mask itself (the expert's outline: the reference)."""
    directory = folder / Path(row.mask_path).parts[0]
    candidates = _dicoms_under(directory, row)
    for path in candidates:
        mask = cadx_io.read_dicom(path, pixel_spacing_mm=image.pixel_spacing_mm).pixels
        if mask.shape != image.pixels.shape:
            continue  # the cropped lesion image
        values = np.unique(mask)
        if values.size > 2:
            continue
        inside = mask > values.min() if values.size == 2 else np.zeros(mask.shape, bool)
        if not inside.any():
            raise ImageReadError(str(path), "the ROI mask is empty", "restore the mask file from TCIA")
        rows_idx, cols_idx = np.nonzero(inside)
        centre = (float(rows_idx.mean()), float(cols_idx.mean()))
        # Size: the larger side of the mask's bounding box, so "does the lesion fit the field" is judged on extent.
        spacing = cadx_io.require_pixel_spacing(image, str(path))
        extent_rows = (rows_idx.max() - rows_idx.min() + 1) * spacing[0]
        extent_cols = (cols_idx.max() - cols_idx.min() + 1) * spacing[1]
        return centre, float(max(extent_rows, extent_cols)), inside
    raise ImageReadError(str(directory), f"no binary full-size ROI mask among {len(candidates)} DICOM file(s)",
                         "download the ROI mask series of this row from TCIA")


# ----------------------------------------------------------------------------------------------------- DDSM ---
@dataclass(frozen=True)
class _DdsmView:
    """One outlined abnormality of one view, checked and ready to become a finding."""

    name: str  # report item name: "0029/C_0029_1.LEFT_CC.OVERLAY abnormality 1"
    case: str
    view: IcsView
    image: Path
    stored_shape: tuple[int, int]
    abnormality: OverlayAbnormality

    @property
    def lesion_key(self) -> str:
        # DDSM numbers a case's abnormalities per breast: one number in the CC and MLO overlays is one lesion.
        return f"{self.case}/{self.view.side}/{self.abnormality.number}"


def import_ddsm(workspace: Workspace, folder: str | Path, *, user: str, skip_errors: bool = False,
                progress: Progress | None = None) -> ImportReport:
    """Import DDSM cases in their own format (the mini-DDSM layout): under ``folder``, each case folder holds its
    ``.ics`` case file, the views (``C_NNNN_N.LEFT_CC.jpg``, ...) and one ``.OVERLAY`` file per outlined view.

    Each outlined abnormality of a view becomes an ROI; the CC and MLO outlines of one abnormality number are two
    views of one lesion. The centre is the outline's centroid and the outline itself is stored as the ROI's
    reference segmentation (``Roi.truth_mask_file``). Pixel size per view: the ``.ics`` RESOLUTION times the
    original size over the stored size. The lesion keeps its DDSM type, shape and margins (or calcification type
    and distribution), assessment and subtlety in ``Lesion.truth``; study date and age are never stored.

    A case without its ``.ics`` file, an outline leaving its image or a view without its image is an item error
    naming the file and the fix; with any error nothing is written unless ``skip_errors``.
    """
    from cadx.ddsm import VIEW_NAMES

    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(str(folder), "is not a folder", "give the folder holding the DDSM case folders")
    source = _opaque_name(workspace.pseudonym_key(), folder.name, prefix="folder")
    report = ImportReport(kind="ddsm", source=source)
    case_dirs = sorted({p.parent for pattern in ("*.ics", "*.OVERLAY") for p in folder.rglob(pattern)})
    if not case_dirs:
        raise ManifestError(str(folder), "holds no DDSM case (no .ics or .OVERLAY file in it or below)",
                            "give the folder holding the DDSM case folders (each with C-NNNN-N.ics)")
    views: list[_DdsmView] = []
    for case_dir in case_dirs:
        views.extend(_ddsm_case(folder, case_dir, report, VIEW_NAMES))
    by_lesion: dict[str, list[_DdsmView]] = {}
    for view in views:
        by_lesion.setdefault(view.lesion_key, []).append(view)
    usable = []
    for group in by_lesion.values():
        if len({v.abnormality.label for v in group}) > 1:
            for view in group:
                report.add(view.name, "skipped", "its views disagree on pathology ("
                           + ", ".join(f"{v.view.view}: {v.abnormality.pathology}" for v in group) + "); not imported",
                           code="conflicting_pathology")
        else:
            usable.extend(group)
    usable.sort(key=lambda v: (str(v.image), v.abnormality.number))
    return run_import(workspace, (f for v in usable if (f := _ddsm_finding(v, report)) is not None), kind="ddsm",
                      source=source, user=user, report=report, skip_errors=skip_errors,
                      total_images=len({v.image for v in usable}), progress=progress)


def _ddsm_case(folder: Path, case_dir: Path, report: ImportReport, view_names: Sequence[str]) -> list[_DdsmView]:
    """The outlined views of one case folder; its problems go to ``report`` as item errors."""
    from cadx.ddsm import parse_ics, parse_overlay

    where = case_dir.relative_to(folder).as_posix() if case_dir != folder else case_dir.name
    ics_files = sorted(case_dir.glob("*.ics"))
    if len(ics_files) != 1:
        problem = ("has no .ics case file" if not ics_files
                   else f"has {len(ics_files)} .ics files ({', '.join(p.name for p in ics_files)})")
        report.add(f"{where}/", "error", f"the case folder {problem}: without it the views' original size and pixel "
                   "size are unknown. Fix: put the case's own C-NNNN-N.ics file (from the DDSM distribution) in the "
                   "folder, one per case folder")
        return []
    try:
        case = parse_ics(ics_files[0])
    except CadxInputError as exc:
        report.add(f"{where}/{ics_files[0].name}", "error", _ddsm_reason(exc))
        return []
    out: list[_DdsmView] = []
    overlays = sorted(case_dir.glob("*.OVERLAY"))
    for view in case.views.values():
        if view.has_overlay and not any(p.name.endswith(f".{view.name}.OVERLAY") for p in overlays):
            report.add(f"{where}/{ics_files[0].name}", "error",
                       f"{ics_files[0].name} says {view.name} has an outline (OVERLAY), but no "
                       f"*.{view.name}.OVERLAY file is in {where}/. Fix: copy the view's .OVERLAY file from the DDSM "
                       "distribution into the case folder")
    for overlay in overlays:
        name = f"{where}/{overlay.name}"
        view_name = next((v for v in view_names if overlay.name.endswith(f".{v}.OVERLAY")), None)
        if view_name is None or view_name not in case.views:
            report.add(name, "error", f"the file name names no view of {ics_files[0].name} "
                       f"({', '.join(case.views)}). Fix: keep DDSM's names, C_NNNN_N.<SIDE>_<VIEW>.OVERLAY")
            continue
        try:
            abnormalities = parse_overlay(overlay)
        except CadxInputError as exc:
            report.add(name, "error", _ddsm_reason(exc))
            continue
        image = _ddsm_view_image(overlay)
        if image is None:
            for abnormality in abnormalities:
                report.add(f"{name} abnormality {abnormality.number}", "error",
                           f"the view {view_name} has an outline but no image: "
                           f"{overlay.name.removesuffix('.OVERLAY')}.jpg is not in {where}/. Fix: copy the view's "
                           "image (the mini-DDSM JPEG) next to its .OVERLAY file, or remove the .OVERLAY file")
            continue
        try:
            stored_shape = _jpeg_shape(image)
        except CadxInputError as exc:
            report.add(f"{where}/{image.name}", "error", _ddsm_reason(exc))
            continue
        out.extend(_DdsmView(f"{name} abnormality {a.number}", case.case, case.views[view_name], image,
                              stored_shape, a) for a in abnormalities)
    return out


def _ddsm_view_image(overlay: Path) -> Path | None:
    stem = overlay.name.removesuffix(".OVERLAY")
    candidates = (overlay.with_name(stem + suffix) for suffix in (".jpg", ".jpeg", ".JPG", ".JPEG"))
    return next((p for p in candidates if p.is_file()), None)


def _jpeg_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) from the JPEG's header, without decoding it."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(str(path), f"the JPEG cannot be read ({exc})", "copy the view's image again") from None


def _ddsm_reason(exc: CadxInputError) -> str:
    # DDSM's file names are the dataset's public case ids (never a patient's): the file is named, not its full path.
    where = Path(exc.source.split(",")[0]).name
    rest = exc.source.partition(",")[2].strip()
    return f"{where}{f' ({rest})' if rest else ''}: {exc.problem}. Fix: {exc.fix}"


def _ddsm_finding(view: _DdsmView, report: ImportReport) -> Finding | None:
    """The finding of one outlined view, or None (reported) when its outline does not fit its image."""
    from cadx.ddsm import outline_mask, stored_pixel_mm

    abnormality = view.abnormality
    try:
        mask = outline_mask(abnormality.boundary, view.view, view.stored_shape,
                            source=f"{abnormality.path.name}, abnormality {abnormality.number}")
    except CadxInputError as exc:
        report.add(view.name, "error", _ddsm_reason(exc))
        return None
    if not mask.any():
        report.add(view.name, "error", f"{abnormality.path.name}: the outline encloses no pixel of the stored view. "
                   "Fix: restore the .OVERLAY file from the DDSM distribution")
        return None
    spacing = stored_pixel_mm(view.view, view.stored_shape)
    rows, cols = np.nonzero(mask)
    size_mm = max((rows.max() - rows.min() + 1) * spacing[0], (cols.max() - cols.min() + 1) * spacing[1])
    original = f"{view.view.lines}x{view.view.pixels_per_line}"
    descriptors = {k.lower(): v for k, v in abnormality.descriptors.items()}
    return Finding(
        name=view.name,
        image_key=str(view.image),
        load_image=lambda: cadx_io.read_jpeg(view.image, pixel_spacing_mm=spacing),
        image_name=f"{view.case}/{view.image.name}",
        patient_source="ddsm",
        patient_key=view.case,
        lesion_key=view.lesion_key,
        label=abnormality.label,
        pathology_source=f"DDSM overlay ({abnormality.pathology})",
        lesion_type=normalise_lesion_type(abnormality.lesion_type.lower()),
        lesion_size_mm=float(size_mm),
        centre_rc=(float(rows.mean()), float(cols.mean())),
        centre_source="centroid of the DDSM outline (.OVERLAY chain code)",
        view=view.view.view,
        laterality=view.view.side[0],
        pixel_spacing_source=(f"DDSM .ics {view.view.micron:g} um x original {original} / stored "
                              f"{view.stored_shape[0]}x{view.stored_shape[1]}"),
        lesion_truth={"source": "DDSM overlay", "lesion_type": abnormality.lesion_type, **descriptors,
                      "assessment": abnormality.assessment, "subtlety": abnormality.subtlety,
                      "pathology": abnormality.pathology},
        truth_mask=mask,
    )


# ------------------------------------------------------------------------------------ manifests and DICOM ---
def import_manifest(workspace: Workspace, manifest: str | Path, *, user: str, skip_errors: bool = False,
                    allow_burned_in: bool = False, progress: Progress | None = None) -> ImportReport:
    """Import a cadx CSV manifest: one row per ROI (see ``cadx.sources.MANIFEST_COLUMNS``)."""
    rows = parse_manifest(manifest, progress=progress)
    source = _opaque_name(workspace.pseudonym_key(), Path(manifest).name)
    return _import_rows(workspace, rows, kind="manifest", source=source, user=user,
                        skip_errors=skip_errors, allow_burned_in=allow_burned_in, progress=progress)


def import_dicom_folder(workspace: Workspace, folder: str | Path, labels: str | Path, *, user: str,
                        skip_errors: bool = False, allow_burned_in: bool = False,
                        progress: Progress | None = None) -> ImportReport:
    """Import the DICOM files under ``folder`` that a labels file describes.

    The labels file is a manifest whose ``file`` column is relative to ``folder``; patient, view and laterality
    may be left out and are then taken from the DICOM header (the patient as a pseudonym of PatientID). DICOM files
    the labels file does not mention are reported as skipped.
    """
    folder = Path(folder)
    rows = parse_manifest(labels, image_column="file", base_dir=folder, progress=progress)
    key = workspace.pseudonym_key()
    source = _opaque_name(key, folder.name, prefix="folder")
    report = ImportReport(kind="dicom", source=source)
    listed = {row.image for row in rows}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.resolve() not in listed and path.resolve() != Path(labels).resolve():
            report.add(_opaque_name(key, path.name), "skipped", "not listed in the labels file")
    return _import_rows(workspace, rows, kind="dicom", source=source, user=user, report=report,
                        skip_errors=skip_errors, allow_burned_in=allow_burned_in, progress=progress)


def _import_rows(workspace: Workspace, rows: list[ManifestRow], *, kind: str, source: str, user: str,
                 report: ImportReport | None = None, skip_errors: bool, allow_burned_in: bool,
                 progress: Progress | None, fetch: Callable[[ManifestRow], bytes] | None = None,
                 check: Callable[[cadx_io.Mammogram], None] | None = None) -> ImportReport:
    """Import manifest rows. ``fetch(row)`` gives an image's bytes when they come from elsewhere than the row's
    path (a PACS); ``check(image)`` may refuse an image once read (e.g. one that is not a mammogram)."""
    key = workspace.pseudonym_key()
    rows = sorted(rows, key=lambda r: (str(r.image), r.line))

    def load(row: ManifestRow) -> cadx_io.Mammogram:
        image = _read_row_image(row, key, fetch=fetch)
        if check is not None:
            check(image)
        return image

    def make(row: ManifestRow) -> Finding:
        return Finding(
            name=f"{'labels' if kind in ('dicom', 'dicomweb') else kind} {source} row {row.line}",
            image_key=str(row.image),
            load_image=lambda: load(row),
            image_name=_opaque_name(key, row.image.name),
            patient_source=LOCAL_SOURCE,
            patient_key=row.patient,
            lesion_key=row.lesion,
            label=row.label,
            pathology_source=f"{kind} {source}",
            lesion_type=row.lesion_type,
            lesion_size_mm=row.lesion_size_mm,
            centre_rc=row.centre_rc,
            centre_source="manifest centre_x/centre_y (origin top-left)",
            view=row.view,
            laterality=row.laterality,
        )

    return run_import(workspace, (make(r) for r in rows), kind=kind, source=source, user=user, report=report,
                      skip_errors=skip_errors, allow_burned_in=allow_burned_in,
                      total_images=len({r.image for r in rows}), progress=progress)


def _read_row_image(row: ManifestRow, key: bytes, *,
                    fetch: Callable[[ManifestRow], bytes] | None = None) -> cadx_io.Mammogram:
    if fetch is not None:
        data = fetch(row)  # downloaded once, read from memory (twice when the row gives the pixel size)
        name = _opaque_name(key, row.image.name)

        def read(spacing: float | None, *, keyed: bool = True) -> cadx_io.Mammogram:
            return cadx_io.read_image_bytes(data, name=name, pixel_spacing_mm=spacing,
                                            pseudonym_key=key if keyed else None)
    else:
        if row.image.is_dir():
            raise ImageReadError(str(row.image), "this is a folder, not an image file",
                                 "give the path of an image file in the folder (relative to the manifest)")
        if not row.image.is_file():
            raise ImageReadError(str(row.image), "file not found", "check the image path (relative to the manifest)")

        def read(spacing: float | None, *, keyed: bool = True) -> cadx_io.Mammogram:
            return cadx_io.read_image(row.image, pixel_spacing_mm=spacing, pseudonym_key=key if keyed else None)
    image = read(None)
    if image.source_format != "dicom":
        if row.pixel_size_mm is None:
            raise ManifestError(f"row {row.line}, column 'pixel_size_mm'",
                                f"the image is a {image.source_format.upper()} file, which carries no pixel size",
                                "give the pixel size in mm in the pixel_size_mm column")
        return read(row.pixel_size_mm, keyed=False)
    if row.pixel_size_mm is not None:
        if image.pixel_spacing_mm is None:
            return read(row.pixel_size_mm)
        if not np.allclose(image.pixel_spacing_mm, row.pixel_size_mm, rtol=0.01):
            raise ManifestError(f"row {row.line}, column 'pixel_size_mm'",
                                f"{row.pixel_size_mm} mm disagrees with the file's {image.pixel_spacing_source} "
                                f"{image.pixel_spacing_mm}", "leave pixel_size_mm empty to use the file's value, "
                                "or correct it")
    return image


_KNOWN_SUFFIXES = (".dcm", ".dicom", ".png", ".tif", ".tiff", ".pgm", ".csv", ".txt")


def _opaque_name(key: bytes, name: str, *, prefix: str = "file") -> str:
    """The name a user's file or folder is stored under: a keyed pseudonym (this installation's HMAC key, as for
    patients), never the name, nor an unkeyed hash of it, which anyone could reverse by hashing candidate names.

    File and folder names of clinical exports often hold patient names or ids. The same name gives the same
    pseudonym in one installation, so reports still tell items apart; a common suffix is kept.
    """
    suffix = Path(name).suffix.lower()
    return f"{prefix}-{cadx_io.pseudonymise(name, key=key)}{suffix if suffix in _KNOWN_SUFFIXES else ''}"


def import_upload(workspace: Workspace, data: bytes, *, filename: str, patient: str | None, lesion: str, label: str,
                  centre_rc: tuple[float, float], user: str, pixel_size_mm: float | None = None,
                  view: str | None = None, laterality: str | None = None,
                  allow_burned_in: bool = False) -> ImportReport:
    """Import one uploaded image (DICOM, PNG, TIFF, PGM bytes) with its lesion centre, as the app's upload page does."""
    key = workspace.pseudonym_key()
    image_name = _opaque_name(key, PurePosixPath(filename.replace("\\", "/")).name)

    def load() -> cadx_io.Mammogram:
        image = cadx_io.read_image_bytes(data, name=image_name, pseudonym_key=key)
        if image.pixel_spacing_mm is None or (pixel_size_mm is not None and image.source_format != "dicom"):
            image = cadx_io.read_image_bytes(data, name=image_name, pixel_spacing_mm=pixel_size_mm, pseudonym_key=key)
        return image

    finding = Finding(
        name=image_name, image_key=image_name, load_image=load, image_name=image_name, patient_source=LOCAL_SOURCE,
        patient_key=patient, lesion_key=lesion, label=label, pathology_source="upload",
        centre_rc=centre_rc, centre_source="marked in the browser", view=view, laterality=laterality,
    )
    return run_import(workspace, [finding], kind="upload", source=image_name, user=user, total_images=1,
                      allow_burned_in=allow_burned_in)


# ---------------------------------------------------------------------------------------------------- demo ---
def import_demo(workspace: Workspace, *, n_lesions: int = 100, seed: int = 0, user: str = "cadx demo",
                progress: Progress | None = None) -> ImportReport:
    """Generate the SYNTHETIC lesion-phantom set and import it, marked synthetic in every row.

    ``progress(done, total, message)`` is called once per lesion (``total`` = ``n_lesions``: "lesion 12 of 100"),
    then once with ``done == total`` before the rows are written.
    """
    from cadx import phantoms  # only the demo needs the phantom generator

    def findings() -> Iterator[Finding]:
        for k, lesion in enumerate(phantoms.demo_dataset(n_lesions=n_lesions, seed=seed)):
            if progress is not None:
                progress(k, n_lesions, f"creating synthetic lesion {k + 1} of {n_lesions}")
            for view in lesion.views:
                yield _phantom_finding(lesion, view, seed)

    def per_lesion(done: int, total: int | None, message: str) -> None:
        if progress is not None and not message.startswith("reading"):  # the per-image calls say nothing new here
            progress(n_lesions, n_lesions, message)

    report = ImportReport(kind="demo", source=f"synthetic phantoms (seed {seed}, {n_lesions} lesions)")
    return run_import(workspace, findings(), kind="demo", source=report.source, user=user, report=report,
                      total_images=None, progress=per_lesion)


def _phantom_finding(lesion: PhantomLesion, view: PhantomView, seed: int) -> Finding:
    pixels = np.ascontiguousarray(view.image, dtype=np.float32)
    sha = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
    name = f"{lesion.lesion_key}-{view.laterality}{view.view}"
    image = cadx_io.Mammogram(
        pixels=pixels,
        value_range=(float(view.value_range[0]), float(view.value_range[1])),
        pixel_spacing_mm=(float(view.pixel_spacing_mm[0]), float(view.pixel_spacing_mm[1])),
        pixel_spacing_source="synthetic",
        source_sha256=sha,
        source_format="synthetic",
        modality="synthetic",
        view=view.view,
        laterality=view.laterality,
        photometric="MONOCHROME2",
        header={"synthetic": True, "generator": "cadx.phantoms", "seed": seed},
        burned_in_annotation=False,
        patient_key=None,
    )
    return Finding(
        name=f"{name} (synthetic)",
        image_key=name,
        load_image=lambda: image,
        image_name=f"{name} (synthetic phantom)",
        patient_source="demo",
        patient_key=lesion.patient_key,
        lesion_key=lesion.lesion_key,
        label=lesion.label,
        pathology_source="synthetic phantom ground truth",
        lesion_type="mass",  # every phantom is a mass; its morphology is in the lesion's truth
        lesion_size_mm=float(lesion.diameter_mm),
        centre_rc=(float(view.centre_rc[0]), float(view.centre_rc[1])),
        centre_source="synthetic phantom: marked centre",
        view=view.view,
        laterality=view.laterality,
        pixel_spacing_source="synthetic",
        is_synthetic=True,
        lesion_truth={"morphology": lesion.morphology, "diameter_mm": float(lesion.diameter_mm), "seed": seed},
        truth_mask=view.true_mask,
    )
