"""Importing the real MIAS distribution (../shared/data/mini-mias/all-mias)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from cadx.roi import decode_png16
from cadx.sources import parse_mias_info
from cadx.workflows import dataset_stats, import_mias
from db.models import Image, ImportRun, Lesion, Patient, Roi


def _table_counts(workspace) -> dict[str, int]:
    with workspace.sessions() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Patient, Lesion, Image, Roi)}


@pytest.mark.slow
def test_mias_import_every_finding_with_centre_and_image(workspace, mias_dir):
    findings, skips = parse_mias_info(mias_dir / "Info.txt")
    present = [f for f in findings if (mias_dir / f"{f.refnum}.pgm").exists()]
    absent = [f for f in findings if not (mias_dir / f"{f.refnum}.pgm").exists()]
    assert present and absent, "the shared copy is partial: both kinds must exist"

    report = import_mias(workspace, mias_dir, user="tester")

    assert report.committed and report.n_errors == 0
    assert report.n_imported == len(present)
    reasons = {item.name.split()[0]: item.reason for item in report.items if item.status == "skipped"}
    assert "no centre" in reasons["mdb059"]
    assert "*NOTE 3*" in reasons["mdb216"]
    for finding in absent:
        assert any(item.name == f"{finding.refnum} finding {finding.index}" and "not in" in item.reason
                   for item in report.items)
    with workspace.sessions() as session:
        rois = session.scalars(select(Roi)).all()
        assert len(rois) == len(present)
        # mdb005 has two benign findings: two lesions, two ROIs of one image.
        mdb005 = session.scalars(select(Lesion.key).where(Lesion.key.like("mdb005#%"))).all()
        assert sorted(mdb005) == ["mdb005#1", "mdb005#2"]
        # consecutive films are one woman: mdb001 and mdb002 share a patient.
        p1 = session.scalar(select(Image.patient_id).where(Image.source_name == "mdb001.pgm"))
        p2 = session.scalar(select(Image.patient_id).where(Image.source_name == "mdb002.pgm"))
        assert p1 == p2
        image = session.scalar(select(Image).where(Image.source_name == "mdb001.pgm"))
        assert (image.rows, image.columns) == (1024, 1024)
        assert image.pixel_spacing_row_mm == 0.2 and "MIAS" in image.pixel_spacing_source
        labels = {key: label for key, label in session.execute(select(Lesion.key, Lesion.label))}
    expected = {f"{f.refnum}#{f.index}": f.label for f in present}
    assert labels == expected


@pytest.mark.slow
def test_mias_roi_has_its_finding_at_the_centre(workspace, mias_dir):
    """Each ROI, brought back to 0.2 mm, equals the source image around (row = 1024 - y, col = x)."""
    import_mias(workspace, mias_dir, user="tester")
    findings, _ = parse_mias_info(mias_dir / "Info.txt")
    by_key = {f"{f.refnum}#{f.index}": f for f in findings}
    with workspace.sessions() as session:
        rows = session.execute(select(Lesion.key, Roi.file, Roi.padded_fraction).join(Roi.lesion)).all()
    checked = 0
    for key, file, padded in rows:
        finding = by_key[key]
        source = np.asarray(PILImage.open(mias_dir / f"{finding.refnum}.pgm"), dtype=np.float64)
        roi = decode_png16((workspace.data_dir / file).read_bytes()).astype(np.float64) / 257.0
        assert roi.shape == (512, 512)
        row, col = 1024 - finding.y, finding.x
        # 512 pixels at 0.1 mm cover 256 source pixels at 0.2 mm: source pixels row-128 .. row+127.
        r0, c0 = row - 128, col - 128
        if r0 < 0 or c0 < 0 or r0 + 256 > 1024 or c0 + 256 > 1024:
            assert padded > 0
            continue
        # The ROI's middle is the centre pixel's centre, so ROI pixel pair k covers source positions
        # row - 127.75 + k and row - 127.25 + k: linear interpolation there averages to (s[k] + s[k+1]) / 2.
        def expected_at(r0: int, source: np.ndarray = source, c0: int = c0) -> np.ndarray:
            block = source[r0:r0 + 257, c0:c0 + 257]
            return (block[:-1, :-1] + block[1:, :-1] + block[:-1, 1:] + block[1:, 1:]) / 4.0

        if r0 + 257 > 1024 or c0 + 257 > 1024:
            continue
        reduced = roi.reshape(256, 2, 256, 2).mean(axis=(1, 3))
        error = np.abs(expected_at(r0) - reduced).mean()
        assert error < 0.05, (key, error)  # equal up to the 16-bit rounding
        # a centre read with the origin at the top-left (row = y) would not match
        flipped_r0 = finding.y - 128
        if 0 <= flipped_r0 and flipped_r0 + 257 <= 1024 and abs(flipped_r0 - r0) > 16:
            assert np.abs(expected_at(flipped_r0) - reduced).mean() > 2.0
        checked += 1
    assert checked >= 0.8 * len(rows)


@pytest.mark.slow
def test_mias_import_twice_changes_nothing(workspace, mias_dir):
    first = import_mias(workspace, mias_dir, user="tester")
    counts = _table_counts(workspace)
    files = sorted(p.relative_to(workspace.data_dir) for p in (workspace.data_dir / "rois").rglob("*.png"))
    second = import_mias(workspace, mias_dir, user="tester")
    assert second.n_imported == 0 and second.n_errors == 0
    assert sum(item.status == "skipped" and "already imported" in item.reason for item in second.items) \
        == first.n_imported
    assert _table_counts(workspace) == counts
    assert sorted(p.relative_to(workspace.data_dir) for p in (workspace.data_dir / "rois").rglob("*.png")) == files
    stats = dataset_stats(workspace)
    assert stats["rois"] == first.n_imported and stats["rois_excluded"] == 0
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ImportRun)) == 2
