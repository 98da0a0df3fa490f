"""Parsers for the truth tables and manifests cadx imports: MIAS ``Info.txt``, CBIS-DDSM case descriptions, and
cadx's own CSV manifest. Pure parsing: text in, validated rows out; no image is read here.

Every malformed value raises :class:`cadx.errors.ManifestError` naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from cadx.errors import CadxInputError, ManifestError
from cadx.labels import label_name
from cadx.lesion_types import normalise_lesion_type

__all__ = [
    "MIAS_PIXEL_MM",
    "MIAS_IMAGE_SIZE",
    "MiasFinding",
    "MiasSkip",
    "parse_mias_info",
    "CbisName",
    "parse_cbis_name",
    "CbisRow",
    "parse_cbis_csv",
    "ManifestRow",
    "parse_manifest",
    "normalise_label",
    "MANIFEST_COLUMNS",
    "NOT_ROI_REASONS",
]

#: Why a truth-table finding can never become an ROI (import-report item codes; ``cadx stats`` counts them).
NOT_ROI_REASONS = {
    "no_centre": "no centre given in the truth table",
    "diffuse_calcifications": "diffuse calcifications (*NOTE 3*): no centre given",
    "conflicting_pathology": "its views disagree on pathology",
}

MIAS_PIXEL_MM = 0.2  # the mini-MIAS images were reduced to 200 micron pixels
MIAS_IMAGE_SIZE = 1024

def normalise_label(value: str, *, source: str) -> str:
    """Map a pathology label to ``"benign"`` or ``"malignant"`` (the codec is :func:`cadx.labels.label_name`).

    Accepts B/M, benign/malignant (any case), CBIS-DDSM's BENIGN_WITHOUT_CALLBACK (benign) and 0/1.
    """
    return label_name(value, source=source)


# ----------------------------------------------------------------------------------------------------- MIAS ---
@dataclass(frozen=True)
class MiasFinding:
    """One truth-table row with a centre: a lesion seen in one MIAS image.

    ``centre_rc`` is in image (row, col) pixels with the origin at the top-left: MIAS gives x, y with the origin at
    the bottom-left, so row = 1024 - y and col = x.
    """

    refnum: str  # "mdb005"
    index: int  # 1-based finding number within the image (mdb005 has two)
    background: str  # F, G, D
    abnormality: str  # CALC, CIRC, SPIC, MISC, ARCH, ASYM
    label: str  # benign | malignant
    x: int
    y: int
    radius_px: float
    centre_rc: tuple[float, float]
    patient_number: int  # consecutive films (mdb001/mdb002, ...) are one woman's left and right breasts
    laterality: str  # "L" for even numbers, "R" for odd (Info.txt note 1)

    @property
    def diameter_mm(self) -> float:
        return 2.0 * self.radius_px * MIAS_PIXEL_MM


@dataclass(frozen=True)
class MiasSkip:
    """A truth-table row that gives no ROI, with the reason."""

    refnum: str
    line: int
    reason: str
    code: str = ""  # "normal", or a key of NOT_ROI_REASONS


_MIAS_ROW = re.compile(r"^(mdb\d{3})\s+(\S+)\s+(\S+)(.*)$")


def parse_mias_info(path: str | Path) -> tuple[list[MiasFinding], list[MiasSkip]]:
    """Parse the original MIAS ``Info.txt`` truth table.

    Rows are ``REFNUM BG CLASS [SEVERITY X Y RADIUS]``. NORM rows, rows without a centre (e.g. mdb059) and
    calcification rows marked ``*NOTE 3*`` (diffuse, no centre) are returned as skips with their reason.

    Returns
    -------
    findings : list of MiasFinding
    skipped : list of MiasSkip
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise ManifestError(str(path), f"cannot be read ({exc.strerror})",
                            "point to the MIAS folder that holds Info.txt") from exc
    findings: list[MiasFinding] = []
    skipped: list[MiasSkip] = []
    count_per_image: dict[str, int] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        match = _MIAS_ROW.match(line.strip())
        if not match:
            continue
        refnum, background, abnormality, rest = match.groups()
        where = f"{path}, line {line_number} ({refnum})"
        fields = rest.split()
        if abnormality == "NORM":
            skipped.append(MiasSkip(refnum, line_number, "normal image: no finding", "normal"))
            continue
        if not fields:
            raise ManifestError(where, "no severity (B or M) for an abnormal finding", "add the severity column")
        label = normalise_label(fields[0], source=where)
        if "*NOTE" in rest:
            skipped.append(MiasSkip(refnum, line_number, NOT_ROI_REASONS["diffuse_calcifications"],
                                      "diffuse_calcifications"))
            continue
        if len(fields) < 4:
            skipped.append(MiasSkip(refnum, line_number, NOT_ROI_REASONS["no_centre"], "no_centre"))
            continue
        try:
            x, y = int(fields[1]), int(fields[2])
            radius = float(fields[3])
        except ValueError as exc:
            raise ManifestError(where, f"centre or radius is not a number: {' '.join(fields[1:4])!r}",
                                "give X, Y and RADIUS as pixel numbers") from exc
        if not (0 <= x < MIAS_IMAGE_SIZE and 0 < y <= MIAS_IMAGE_SIZE) or not math.isfinite(radius) or radius <= 0:
            raise ManifestError(where, f"centre ({x}, {y}) or radius {radius} is outside the 1024x1024 image",
                                "check the row against the original Info.txt")
        count_per_image[refnum] = count_per_image.get(refnum, 0) + 1
        number = int(refnum[3:])
        findings.append(
            MiasFinding(
                refnum=refnum,
                index=count_per_image[refnum],
                background=background,
                abnormality=abnormality,
                label=label,
                x=x,
                y=y,
                radius_px=radius,
                centre_rc=(float(MIAS_IMAGE_SIZE - y), float(x)),
                patient_number=(number + 1) // 2,
                laterality="L" if number % 2 == 0 else "R",
            )
        )
    if not findings and not skipped:
        raise ManifestError(str(path), "no MIAS truth-table rows found", "use the original MIAS Info.txt")
    return findings, skipped


# ------------------------------------------------------------------------------------------------ CBIS-DDSM ---
@dataclass(frozen=True)
class CbisName:
    """CBIS-DDSM's name of one image: its DICOM PatientID and its folder, e.g. ``Mass-Test_P_00820_LEFT_CC`` (the
    full mammogram) or ``Mass-Test_P_00820_LEFT_CC_1`` (abnormality 1's crop and mask).

    The name carries the view and the side, so one woman's four views have four PatientIDs: ``patient_id`` is the
    woman (``P_00820``, as in the case-description CSVs' ``patient_id`` column, shared by the mass and calc sets).
    """

    abnormality_type: str  # mass | calcification
    split: str  # Training | Test
    patient_id: str  # P_00820
    side: str  # LEFT | RIGHT
    view: str  # CC | MLO
    abnormality_id: str | None  # the crop/mask folders' suffix; None for the full mammogram

    @property
    def laterality(self) -> str:
        """``"L"`` or ``"R"``, as DICOM spells it."""
        return self.side[0]


_CBIS_NAME = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d{5})_(LEFT|RIGHT)_(CC|MLO)(?:_(\d+))?$", re.IGNORECASE)


def parse_cbis_name(value: str) -> CbisName | None:
    """The parts of a CBIS-DDSM image name (PatientID or folder name), or None when ``value`` is not one.

    >>> parse_cbis_name("Mass-Test_P_00820_LEFT_MLO").patient_id
    'P_00820'
    >>> parse_cbis_name("ANON-1234") is None
    True
    """
    match = _CBIS_NAME.match(value.strip())
    if match is None:
        return None
    kind, split, patient, side, view, abnormality = match.groups()
    return CbisName(abnormality_type="mass" if kind.lower() == "mass" else "calcification",
                    split=split.capitalize(), patient_id=patient.upper(), side=side.upper(), view=view.upper(),
                    abnormality_id=abnormality)


@dataclass(frozen=True)
class CbisRow:
    """One row of a CBIS-DDSM case-description CSV: one view (CC or MLO) of one abnormality."""

    csv_name: str
    line: int
    patient_id: str
    side: str  # LEFT | RIGHT
    view: str  # CC | MLO
    abnormality_id: str
    abnormality_type: str  # mass | calcification
    pathology: str  # as given: MALIGNANT, BENIGN, BENIGN_WITHOUT_CALLBACK
    label: str  # benign | malignant
    image_path: str
    crop_path: str
    mask_path: str

    @property
    def lesion_key(self) -> str:
        # Mass and calcification CSVs number their abnormalities separately, so the type is part of the key.
        return f"{self.patient_id}/{self.side}/{self.abnormality_type}/{self.abnormality_id}"


_CBIS_REQUIRED = (
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)


def parse_cbis_csv(path: str | Path) -> list[CbisRow]:
    """Parse an official CBIS-DDSM case-description CSV (mass or calc, train or test).

    Path cells are stripped (some end in a newline in the official files).
    """
    path = Path(path)
    rows: list[CbisRow] = []
    with _open_csv(path) as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _CBIS_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(str(path), f"missing columns {missing}",
                                "use an official CBIS-DDSM case-description CSV")
        for line, record in enumerate(reader, start=2):
            where = f"{path.name}, row {line}"
            side = record["left or right breast"].strip().upper()
            view = record["image view"].strip().upper()
            if side not in ("LEFT", "RIGHT"):
                raise ManifestError(f"{where}, column 'left or right breast'", f"unknown side {side!r}",
                                    "use LEFT or RIGHT")
            if not record["image file path"].strip() or not record["ROI mask file path"].strip():
                raise ManifestError(f"{where}", "image or ROI mask path is empty",
                                    "restore the row from the official CSV")
            _check_cbis_folder(record, where, side=side, view=view)
            rows.append(
                CbisRow(
                    csv_name=path.name,
                    line=line,
                    patient_id=record["patient_id"].strip(),
                    side=side,
                    view=view,
                    abnormality_id=record["abnormality id"].strip(),
                    abnormality_type=record["abnormality type"].strip().lower(),
                    pathology=record["pathology"].strip(),
                    label=normalise_label(record["pathology"], source=f"{where}, column 'pathology'"),
                    image_path=record["image file path"].strip(),
                    crop_path=record["cropped image file path"].strip(),
                    mask_path=record["ROI mask file path"].strip(),
                )
            )
    return rows


def _check_cbis_folder(record: dict[str, str], where: str, *, side: str, view: str) -> None:
    """The image folder's CBIS-DDSM name (patient, side, view) must agree with the row's columns: the importer reads
    the image from that folder, and a disagreeing one would store one woman's image under another."""
    folder = Path(record["image file path"].strip()).parts[0]
    name = parse_cbis_name(folder)
    if name is None:
        return  # a folder named otherwise (a user's own layout): the columns alone say who and which view
    columns = (record["patient_id"].strip(), side, view)
    if (name.patient_id, name.side, name.view) != columns:
        raise ManifestError(f"{where}, column 'image file path'",
                            f"folder {folder!r} is patient {name.patient_id} {name.side} {name.view}, but the row says "
                            f"{' '.join(columns)}", "restore the row from the official CSV")


# ------------------------------------------------------------------------------------------------- manifest ---
MANIFEST_COLUMNS = {
    "image": "path of the image file, relative to the manifest (DICOM, PGM, PNG or TIFF)",
    "patient": "patient key (any opaque id; never a name). Optional for DICOM: a pseudonym of PatientID is used",
    "lesion": "lesion key, unique within the patient; rows with the same key are views of one lesion",
    "label": "benign or malignant (pathology)",
    "centre_x": "lesion centre, column in pixels, origin at the top-left of the image",
    "centre_y": "lesion centre, row in pixels, origin at the top-left of the image",
    "pixel_size_mm": "source pixel size in mm. Optional for DICOM files that carry PixelSpacing",
    "view": "CC, MLO, ... Optional for DICOM (ViewPosition)",
    "laterality": "L or R. Optional for DICOM (ImageLaterality)",
    "lesion_type": "optional: mass, calcification, or a MIAS class (CIRC, SPIC, MISC, CALC, ARCH, ASYM)",
    "lesion_size_mm": "optional: lesion diameter in mm",
}
_MANIFEST_REQUIRED = ("image", "lesion", "label", "centre_x", "centre_y")
_PROGRESS_ROWS = 10_000


@dataclass(frozen=True)
class ManifestRow:
    """One validated row of a cadx CSV manifest: one view (ROI) of one lesion."""

    line: int
    image: Path  # absolute
    patient: str | None
    lesion: str
    label: str
    centre_rc: tuple[float, float]
    pixel_size_mm: float | None
    view: str | None
    laterality: str | None
    lesion_type: str | None
    lesion_size_mm: float | None


def parse_manifest(path: str | Path, *, image_column: str = "image", base_dir: Path | None = None,
                   progress: Callable[[int, int | None, str], None] | None = None) -> list[ManifestRow]:
    """Parse a cadx CSV manifest (columns: see ``MANIFEST_COLUMNS``).

    Parameters
    ----------
    path : path of the CSV file.
    image_column : the column naming the image file (``"image"``; ``cadx import dicom`` labels files may use
        ``"file"``).
    base_dir : folder the image paths are relative to (default: the manifest's folder).
    progress : called as ``progress(rows checked, None, "checking the manifest")`` at the start and every
        ``_PROGRESS_ROWS`` rows, so a manifest of a million rows shows progress from the start.

    Rows naming the same image must agree on its pixel size (an image has one).
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.parent
    rows: list[ManifestRow] = []
    pixel_sizes: dict[Path, tuple[int, float]] = {}  # image -> (first row, its pixel size)
    if progress is not None:
        progress(0, None, "checking the manifest")
    with _open_csv(path) as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        required = (image_column,) + _MANIFEST_REQUIRED[1:]
        missing = [c for c in required if c not in fields]
        if missing:
            raise ManifestError(str(path), f"missing columns {missing} (found {fields})",
                                "add the columns: "
                                + "; ".join(f"{c}: {MANIFEST_COLUMNS.get(c, 'the image file')}" for c in missing))
        for line, record in enumerate(reader, start=2):
            if progress is not None and line % _PROGRESS_ROWS == 0:
                progress(line - 1, None, "checking the manifest")
            where = f"{path.name}, row {line}"
            record = {k: (v or "").strip() for k, v in record.items() if k is not None}
            if not any(record.values()):
                continue
            image = record[image_column]
            if not image:
                raise ManifestError(f"{where}, column {image_column!r}", "empty image path",
                                    "give the image file's path")
            lesion = record["lesion"]
            if not lesion:
                raise ManifestError(f"{where}, column 'lesion'", "empty lesion key", "give each lesion a key")
            label = normalise_label(record["label"], source=f"{where}, column 'label'")
            centre_x = _number(record, "centre_x", where, minimum=0.0)
            centre_y = _number(record, "centre_y", where, minimum=0.0)
            pixel = _number(record, "pixel_size_mm", where, optional=True, minimum=1e-6)
            size = _number(record, "lesion_size_mm", where, optional=True, minimum=1e-6)
            try:
                lesion_type = normalise_lesion_type(record.get("lesion_type"), source=f"{where}, column 'lesion_type'")
            except CadxInputError as exc:
                raise ManifestError(exc.source, exc.problem, exc.fix) from None
            laterality = (record.get("laterality") or "").upper() or None
            if laterality is not None and laterality not in ("L", "R"):
                raise ManifestError(f"{where}, column 'laterality'", f"unknown laterality {laterality!r}", "use L or R")
            resolved = (base / image).resolve()
            if pixel is not None:
                first = pixel_sizes.setdefault(resolved, (line, pixel))
                if not math.isclose(first[1], pixel, rel_tol=1e-6):
                    raise ManifestError(f"{where}, column 'pixel_size_mm'",
                                        f"{pixel:g} mm for an image that row {first[0]} gives {first[1]:g} mm",
                                        "give one pixel size per image: an image has one, whichever lesion it shows")
            rows.append(
                ManifestRow(
                    line=line,
                    image=resolved,
                    patient=record.get("patient") or None,
                    lesion=lesion,
                    label=label,
                    centre_rc=(centre_y, centre_x),
                    pixel_size_mm=pixel,
                    view=(record.get("view") or "").upper() or None,
                    laterality=laterality,
                    lesion_type=lesion_type,
                    lesion_size_mm=size,
                )
            )
    if not rows:
        raise ManifestError(str(path), "no rows", "add one row per ROI (image + lesion + label + centre)")
    return rows


@overload
def _number(record: dict[str, str], column: str, where: str, *, optional: Literal[False] = ...,
            minimum: float) -> float: ...
@overload
def _number(record: dict[str, str], column: str, where: str, *, optional: bool, minimum: float) -> float | None: ...
def _number(record: dict[str, str], column: str, where: str, *, optional: bool = False, minimum: float) -> float | None:
    text = record.get(column, "")
    if not text:
        if optional:
            return None
        raise ManifestError(f"{where}, column {column!r}", "empty value", f"give {MANIFEST_COLUMNS[column]}")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise ManifestError(f"{where}, column {column!r}", f"{text!r} is not a valid number (at least {minimum:g})",
                            f"give {MANIFEST_COLUMNS[column]}")
    return value


def _open_csv(path: Path):
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(str(path), f"cannot be read ({exc.strerror})", "check the path of the CSV file") from exc
