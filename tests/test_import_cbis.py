"""Importing CBIS-DDSM: the real case-description CSVs with small DICOM trees written at their paths."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cadx.outline import decode_mask_png
from cadx.sources import parse_cbis_csv
from cadx.workflows import import_cbis_ddsm
from db.models import Image, Lesion, Roi
from tests.dicom_factory import disk_image, write_mammogram

SPACING = 0.1
SHAPE = (700, 600)


def _write_row_tree(root: Path, row, centre_rc, *, tcia_names: bool, spacing=(SPACING, SPACING)) -> None:
    """The full image, the lesion crop and the binary mask at the row's folders (TCIA file names when asked)."""
    image_path = root / row.image_path
    mask_path = root / row.mask_path
    crop_path = root / row.crop_path
    if tcia_names:
        image_path = image_path.with_name("1-1.dcm")
        # TCIA may put the crop and the mask in one folder as 1-1/1-2, in either order
        mask_path, crop_path = mask_path.parent / "1-1.dcm", mask_path.parent / "1-2.dcm"
    write_mammogram(image_path, disk_image(SHAPE, centre_rc, 40, background=800, lesion=2400),
                    pixel_spacing=spacing, with_phi=False, view=row.view, laterality=row.side[0])
    mask = disk_image(SHAPE, centre_rc, 40, background=0, lesion=255).astype(np.uint16)
    write_mammogram(mask_path, mask, pixel_spacing=spacing, with_phi=False)
    crop = disk_image((90, 90), (45, 45), 40, background=800, lesion=2400)
    write_mammogram(crop_path, crop, pixel_spacing=spacing, with_phi=False)


def _subset_csv(source: Path, target: Path, keep) -> Path:
    """The official CSV's header and the rows ``keep`` accepts, written with the csv module (cells keep their newlines)."""
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        records = [record for record in reader if keep(record)]
        fields = reader.fieldnames
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return target


@pytest.fixture(scope="module")
def mass_rows(cbis_csv_dir):
    return parse_cbis_csv(cbis_csv_dir / "mass_case_description_train_set.csv")


def test_cc_and_mlo_become_rois_of_one_lesion_with_mask_centres(workspace, tmp_path, mass_rows, cbis_csv_dir):
    lesion_rows = [r for r in mass_rows if r.lesion_key == "P_00001/LEFT/mass/1"]
    assert {r.view for r in lesion_rows} == {"CC", "MLO"}
    centres = {"CC": (300.0, 250.0), "MLO": (410.0, 330.0)}
    root = tmp_path / "CBIS-DDSM"
    for row in lesion_rows:
        _write_row_tree(root, row, centres[row.view], tcia_names=row.view == "MLO")
    subset = _subset_csv(cbis_csv_dir / "mass_case_description_train_set.csv", tmp_path / "subset.csv",
                         lambda record: record["patient_id"] == "P_00001")
    assert len(parse_cbis_csv(subset)) == 2

    report = import_cbis_ddsm(workspace, root, [subset], user="tester")

    assert report.committed and report.n_imported == 2, report.to_dict()
    with workspace.sessions() as session:
        lesion = session.scalars(select(Lesion)).one()
        assert lesion.key == "P_00001/LEFT/mass/1" and lesion.label == "malignant"
        assert lesion.size_mm == pytest.approx(81 * SPACING)
        rois = session.scalars(select(Roi).join(Roi.image).order_by(Image.view)).all()
        assert [r.image.view for r in rois] == ["CC", "MLO"]
        for roi in rois:
            expected = centres[roi.image.view]
            assert (roi.centre_row, roi.centre_col) == pytest.approx(expected, abs=1e-6)
            assert roi.image.laterality == "L"
            # the mask is the ROI's reference outline (issue 27.3): a disc of radius 40 pixels (4 mm), centred
            reference = decode_mask_png(workspace.path(roi.truth_mask_file).read_bytes())
            assert reference is not None and reference.sum() == pytest.approx(np.pi * 40 ** 2, rel=0.02)
            rows, cols = np.nonzero(reference)
            assert (rows.mean(), cols.mean()) == pytest.approx((255.5, 255.5), abs=0.6)
    again = import_cbis_ddsm(workspace, root, [subset], user="tester")
    assert again.n_imported == 0 and again.n_errors == 0


def test_missing_pixel_size_needs_the_option(workspace, tmp_path, mass_rows, cbis_csv_dir):
    row = next(r for r in mass_rows if r.view == "CC")
    root = tmp_path / "tree"
    _write_row_tree(root, row, (300.0, 250.0), tcia_names=True, spacing=None)
    csv_path = _subset_csv(cbis_csv_dir / "mass_case_description_train_set.csv", tmp_path / "one.csv",
                           lambda record: record["image file path"].strip() == row.image_path
                           and record["abnormality id"].strip() == row.abnormality_id)
    report = import_cbis_ddsm(workspace, root, [csv_path], user="tester")
    assert not report.committed and "pixel size" in report.errors[0].reason
    report = import_cbis_ddsm(workspace, root, [csv_path], user="tester", pixel_size_mm=0.05)
    assert report.committed and report.n_imported == 1
    with workspace.sessions() as session:
        image = session.scalars(select(Image)).one()
        assert image.pixel_spacing_row_mm == 0.05 and image.pixel_spacing_source == "user"


def test_views_with_different_pathology_are_reported_not_guessed(tmp_path, workspace, cbis_csv_dir):
    rows = []
    for name in ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
                 "calc_case_description_train_set.csv", "calc_case_description_test_set.csv"):
        rows.extend(parse_cbis_csv(cbis_csv_dir / name))
    labels: dict[str, set] = {}
    for row in rows:
        labels.setdefault(row.lesion_key, set()).add(row.label)
    conflicting = [key for key, values in labels.items() if len(values) > 1]
    assert conflicting, "the official CSVs hold a few lesions whose views disagree"
    csv_files = [cbis_csv_dir / n for n in ("mass_case_description_train_set.csv",)]
    in_train = {r.lesion_key for r in parse_cbis_csv(csv_files[0])}
    key = next((k for k in conflicting if k in in_train), None)
    if key is None:
        pytest.skip("no conflicting lesion in the mass training CSV")
    report = import_cbis_ddsm(workspace, tmp_path / "no-images", csv_files, user="tester")
    skipped = [item for item in report.items if key in item.name]
    assert skipped and all(item.status == "skipped" and "disagree" in item.reason for item in skipped)
