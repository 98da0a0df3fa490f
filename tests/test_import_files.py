"""Importing user files: CSV manifests and DICOM folders — PHI never stored, bad input rejected whole."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.uid import JPEGLSLossless
from sqlalchemy import func, select

from cadx.roi import decode_png16
from cadx.workflows import import_dicom_folder, import_manifest
from db.models import Base, Image, Lesion, Patient, Roi
from tests.dicom_factory import PHI, PRIVATE_PHI, SEQUENCE_PHI, cut_codestream, disk_image, write_mammogram


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _snapshot(workspace) -> tuple[dict, list]:
    """Every row of every table, and every file of the data directory (except the database itself)."""
    with workspace.sessions() as session:
        rows = {table.name: [tuple(r) for r in session.execute(table.select().order_by(*table.primary_key.columns))]
                for table in Base.metadata.sorted_tables}
    files = sorted(str(p.relative_to(workspace.data_dir)) for p in workspace.data_dir.rglob("*")
                   if p.is_file() and not p.name.startswith("cadx.sqlite"))
    return rows, files


def _all_stored_text(workspace) -> str:
    """Everything the database and the data directory hold, as text, for PHI scans."""
    rows, _ = _snapshot(workspace)
    text = json.dumps(rows, default=str)
    for path in workspace.data_dir.rglob("*"):
        if path.is_file():
            text += path.read_bytes().decode("latin-1")
    return text


def test_dicom_with_phi_monochrome1_becomes_the_right_roi_and_no_phi_is_stored(workspace, tmp_path):
    # MONOCHROME1: low values are bright. The lesion is a disk of LOW stored values, 6 mm across, at row 600, col 560.
    spacing = 0.05
    stored = disk_image((1200, 1100), (600, 560), radius_px=3.0 / spacing, background=3000, lesion=500)
    folder = tmp_path / "export"
    name = "Doe_Jane_MRN-4471923.dcm"  # clinical exports often put names in file names
    write_mammogram(folder / name, stored, photometric="MONOCHROME1", pixel_spacing=(spacing, spacing))
    write_mammogram(folder / "Roe_Richard_MRN-5550001.dcm", stored, pixel_spacing=(spacing, spacing))  # unlisted
    labels = _write_csv(tmp_path / "labels.csv", [
        {"file": name, "lesion": "L1", "label": "malignant", "centre_x": 560, "centre_y": 600},
    ])

    report = import_dicom_folder(workspace, folder, labels, user="tester")

    assert report.committed and report.n_imported == 1, report.to_dict()
    with workspace.sessions() as session:
        roi = session.scalars(select(Roi)).one()
        image = session.scalars(select(Image)).one()
        patient = session.scalars(select(Patient)).one()
    assert (image.pixel_spacing_row_mm, image.pixel_spacing_source) == (0.05, "PixelSpacing")
    assert (image.view, image.laterality, image.modality) == ("CC", "L", "MG")
    pixels = decode_png16((workspace.data_dir / roi.file).read_bytes())
    # inverted: the lesion is bright, centred, 6 mm = 60 ROI pixels across
    assert pixels[256, 256] > pixels[20, 20]
    bright = pixels > (int(pixels.max()) + int(pixels.min())) / 2
    assert abs(bright.sum() - np.pi * 30**2) / (np.pi * 30**2) < 0.05
    rows, cols = np.nonzero(bright)
    assert abs(rows.mean() - 255.5) < 0.5 and abs(cols.mean() - 255.5) < 0.5
    assert patient.key and patient.key != PHI["PatientID"]

    stored_text = _all_stored_text(workspace)
    for value in [*PHI.values(), PRIVATE_PHI, SEQUENCE_PHI, "Doe_Jane", "Jane", "4471923", "Roe_Richard", "5550001"]:
        assert value not in stored_text, f"PHI {value!r} found in the database or data directory"


def test_manifest_png_with_pixel_size(workspace, tmp_path):
    image = np.zeros((600, 700), dtype=np.uint16)
    image[200:260, 300:360] = 40000  # a 60x60 square at 0.2 mm = 12 mm
    PILImage.fromarray(image).save(tmp_path / "a.png")
    manifest = _write_csv(tmp_path / "m.csv", [
        {"image": "a.png", "patient": "P1", "lesion": "L1", "label": "benign", "centre_x": 329.5, "centre_y": 229.5,
         "pixel_size_mm": 0.2, "view": "MLO", "laterality": "R"},
    ])
    report = import_manifest(workspace, manifest, user="tester")
    assert report.committed and report.n_imported == 1
    with workspace.sessions() as session:
        roi = session.scalars(select(Roi)).one()
        assert roi.image.pixel_spacing_source == "user" and roi.image.view == "MLO"
    pixels = decode_png16((workspace.data_dir / roi.file).read_bytes())
    square = pixels > 20000  # half the square's value: the edge of the linear-interpolated step
    assert abs(square.sum() - 120 * 120) / (120 * 120) < 0.03


# ------------------------------------------------------------------------------------------------ bad input ---
def _good_dicom(folder: Path, name: str = "good.dcm") -> Path:
    return write_mammogram(folder / name, disk_image((400, 400), (200, 200), 30), pixel_spacing=(0.1, 0.1))


def _bad_case(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A manifest whose rows include one bad item of ``kind``; returns the manifest and a word the error must say."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = _good_dicom(folder)
    row = {"image": good.name, "patient": "P1", "lesion": "L1", "label": "benign", "centre_x": 200, "centre_y": 200,
           "pixel_size_mm": ""}
    bad = dict(row, patient="P2", lesion="L2")
    expect = ""
    if kind == "truncated":
        data = _good_dicom(tmp_path, "full.dcm").read_bytes()
        (folder / "cut.dcm").write_bytes(data[: len(data) // 2])
        bad["image"], expect = "cut.dcm", "truncated"
    elif kind == "jpegls-cut":  # a valid file whose JPEG-LS codestream stops a third of the way
        write_mammogram(folder / "third.dcm", disk_image((400, 400), (200, 200), 30), syntax=JPEGLSLossless)
        cut_codestream(folder / "third.dcm")
        bad["image"], expect = "third.dcm", "end-of-image marker"
    elif kind == "pgm-crop":  # the header gives fewer rows than the data holds
        raster = np.full((300, 300), 100, np.uint8).tobytes()
        (folder / "crop.pgm").write_bytes(b"P5\n300 200\n255\n" + raster)
        bad["image"], bad["pixel_size_mm"], expect = "crop.pgm", "0.1", "crop the image"
    elif kind == "corrupt":
        (folder / "noise.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
        bad["image"], expect = "noise.dcm", "no pixel data"
    elif kind == "non-image":
        (folder / "notes.dcm").write_text("this is a text file, not a mammogram\n" * 20)
        bad["image"], expect = "notes.dcm", "not a supported image format"
    elif kind == "centre-outside":
        bad["centre_x"], expect = 5000, "centre"
    elif kind == "unknown-pixel-size":
        PILImage.fromarray(np.full((300, 300), 100, np.uint8)).save(folder / "plain.png")
        bad["image"], expect = "plain.png", "pixel_size_mm"
    elif kind == "no-spacing-dicom":
        write_mammogram(folder / "nospacing.dcm", disk_image((300, 300), (150, 150), 20), pixel_spacing=None)
        bad["image"], expect = "nospacing.dcm", "pixel size"
    elif kind == "duplicate":
        (folder / "copy.dcm").write_bytes(good.read_bytes())
        bad["image"], expect = "copy.dcm", "duplicate"
    elif kind == "missing-file":
        bad["image"], expect = "absent.dcm", "not found"
    elif kind == "label-conflict":
        bad = dict(row, label="malignant")
        bad["image"] = _good_dicom(folder, "other.dcm").name
        (folder / "other.dcm").write_bytes(
            (folder / "other.dcm").read_bytes()[:-2] + b"\x01\x00")  # differ by one pixel: another image
        expect = "already benign"
    return _write_csv(folder / "manifest.csv", [row, bad]), expect


BAD_KINDS = ["truncated", "jpegls-cut", "pgm-crop", "corrupt", "non-image", "centre-outside", "unknown-pixel-size", "no-spacing-dicom",
             "duplicate", "missing-file", "label-conflict"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_item_names_the_problem_and_writes_nothing(workspace, tmp_path, kind):
    manifest, expect = _bad_case(kind, tmp_path)
    before = _snapshot(workspace)
    report = import_manifest(workspace, manifest, user="tester")
    assert not report.committed
    assert report.n_errors >= 1
    message = " ".join(item.reason for item in report.errors)
    assert expect.lower() in message.lower(), message
    # the row locates the file (rows are read in path order, so the duplicate is found at the good file's row); the
    # manifest is named by its keyed pseudonym, never by its file name
    row = "row 2" if kind == "duplicate" else "row 3"
    assert [i.name for i in report.errors if i.name.startswith("manifest file-") and i.name.endswith(f".csv {row}")]
    assert not [i.name for i in report.items if "manifest.csv" in i.name]
    assert "Fix:" in message, message
    assert _snapshot(workspace) == before

    # with --skip-errors the good row still gets in, and the bad one is reported
    report = import_manifest(workspace, manifest, user="tester", skip_errors=True)
    assert report.committed and report.n_imported == 1 and report.n_errors >= 1


@pytest.mark.parametrize(
    ("cell", "value", "expect"),
    [("label", "", "unknown label"), ("label", "probably bad", "unknown label"), ("centre_x", "left", "centre_x"),
     ("centre_y", "-4", "centre_y"), ("pixel_size_mm", "0", "pixel_size_mm"), ("lesion", "", "lesion")],
)
def test_malformed_manifest_row_is_refused_before_anything_is_read(workspace, tmp_path, cell, value, expect):
    from cadx.errors import ManifestError

    _good_dicom(tmp_path)
    row = {"image": "good.dcm", "patient": "P1", "lesion": "L1", "label": "benign", "centre_x": 200, "centre_y": 200,
           "pixel_size_mm": "0.1"}
    manifest = _write_csv(tmp_path / "m.csv", [row, {**row, "lesion": "L2", cell: value}])
    before = _snapshot(workspace)
    with pytest.raises(ManifestError) as caught:
        import_manifest(workspace, manifest, user="tester")
    message = str(caught.value)
    assert "m.csv, row 3" in message and expect in message and "Fix:" in message
    assert _snapshot(workspace) == before


def test_manifest_missing_columns_lists_them(tmp_path, workspace):
    from cadx.errors import ManifestError

    manifest = tmp_path / "m.csv"
    manifest.write_text("image,lesion\na.dcm,L1\n")
    with pytest.raises(ManifestError, match=r"missing columns \['label', 'centre_x', 'centre_y'\]"):
        import_manifest(workspace, manifest, user="tester")


def test_dicom_folder_reports_unlisted_files_and_is_idempotent(workspace, tmp_path):
    folder = tmp_path / "dicoms"
    _good_dicom(folder, "a.dcm")
    _good_dicom(folder, "b.dcm")  # identical pixels and header except UIDs: another file
    labels = _write_csv(tmp_path / "labels.csv", [
        {"file": "a.dcm", "lesion": "L1", "label": "M", "centre_x": 200, "centre_y": 200},
    ])
    report = import_dicom_folder(workspace, folder, labels, user="tester")
    assert report.n_imported == 1
    unlisted = [item for item in report.items if "not listed" in item.reason]
    assert len(unlisted) == 1 and unlisted[0].status == "skipped"
    # an opaque name (clinical file names may hold patient names); compared as a whole name, because the pseudonym's
    # hex digits can end in "b" by chance ("file-…8b.dcm" contains "b.dcm")
    shown = Path(unlisted[0].name).name
    assert shown != "b.dcm" and shown.startswith("file-"), shown
    again = import_dicom_folder(workspace, folder, labels, user="tester")
    assert again.n_imported == 0 and any("already imported" in item.reason for item in again.items)
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Roi)) == 1
        assert session.scalars(select(Lesion.label)).one() == "malignant"


def test_burned_in_annotation_is_refused_unless_allowed_then_flagged(workspace, tmp_path):
    folder = tmp_path / "in"
    write_mammogram(folder / "annotated.dcm", disk_image((400, 400), (200, 200), 30), pixel_spacing=(0.1, 0.1),
                    extra={"BurnedInAnnotation": "YES"})
    labels = _write_csv(tmp_path / "labels.csv", [
        {"file": "annotated.dcm", "lesion": "L1", "label": "benign", "centre_x": 200, "centre_y": 200}])
    report = import_dicom_folder(workspace, folder, labels, user="tester")
    assert not report.committed and "BurnedInAnnotation" in report.errors[0].reason
    assert "--allow-burned-in" in report.errors[0].reason
    report = import_dicom_folder(workspace, folder, labels, user="tester", allow_burned_in=True)
    assert report.committed and report.n_imported == 1
    with workspace.sessions() as session:
        roi = session.scalars(select(Roi)).one()
        assert "burned_in_annotation" in roi.qc_flags and roi.image.burned_in_annotation
