"""Work running at once, on SQLite and PostgreSQL: imports share content-named ROI files and none may lose a file
another one committed; the same case uploaded twice at the same moment is stored once; two processes computing the
analytic features (the app's worker beside `cadx features`) both finish, with one row per ROI."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from sqlalchemy import func, select

from cadx import io as cadx_io
from cadx.workflows import import_demo, run_import
from cadx.workflows.importing import Finding
from db.models import Roi, Segmentation
from tests.dicom_factory import disk_image, write_mammogram
from tests.spawned import compute_analytic_features_in, upload_one_case


def _finding(name: str, sha_char: str, centre_rc: tuple[float, float]) -> Finding:
    pixels = np.zeros((600, 600), dtype=np.float32)
    pixels[280:320, 280:320] = 1.0
    image = cadx_io.Mammogram(
        pixels=pixels, value_range=(0.0, 1.0), pixel_spacing_mm=(0.1, 0.1), pixel_spacing_source="user",
        source_sha256=sha_char * 64, source_format="png", modality=None, view="CC", laterality="L",
        photometric="MONOCHROME2", header={}, burned_in_annotation=False, patient_key=None)
    return Finding(name=name, image_key=name, load_image=lambda: image, image_name=f"{name}.png",
                   patient_source="local", patient_key="P1", lesion_key="L1", label="benign",
                   pathology_source="test", centre_source="test", centre_rc=centre_rc)


def _missing_files(workspace) -> list[int]:
    with workspace.sessions() as session:
        return [roi.id for roi in session.scalars(select(Roi)) if not workspace.path(roi.file).exists()]


def test_a_failing_import_keeps_the_file_another_import_committed(workspace):
    good = _finding("good", "a", (300.0, 300.0))
    bad = _finding("bad", "b", (5000.0, 300.0))  # centre outside its image: this import fails
    others = []

    def meanwhile(done, total, message):
        if message.startswith("reading") and done == 1:  # the good ROI's file is written; another import runs
            others.append(run_import(workspace, [good], kind="test", source="other", user="bob"))

    failed = run_import(workspace, [good, bad], kind="test", source="first", user="ana", progress=meanwhile)
    assert not failed.committed and [(i.name, i.status) for i in failed.items] == [("bad", "error")]
    other = others[0]
    assert other.committed and [i.status for i in other.items] == ["imported"]
    # the file the failed import wrote is the committed ROI's file now: it stays
    assert _missing_files(workspace) == []
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Roi)) == 1


def test_an_import_whose_file_vanished_before_writing_writes_nothing(workspace):
    good = _finding("good", "a", (300.0, 300.0))

    def vanish(done, total, message):
        if message == "writing to the database":  # as a concurrent failed import's clean-up would do
            for path in (workspace.data_dir / "rois").rglob("*.png"):
                path.unlink()

    report = run_import(workspace, [good], kind="test", source="first", user="ana", progress=vanish)
    assert not report.committed
    assert "removed by another import" in report.items[0].reason and "run the import again" in report.items[0].reason
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Roi)) == 0
    again = run_import(workspace, [good], kind="test", source="again", user="ana")
    assert again.committed and _missing_files(workspace) == []


@pytest.mark.slow
def test_the_same_case_uploaded_at_once_is_stored_once(workspace, tmp_path):
    data = write_mammogram(tmp_path / "m.dcm", disk_image((700, 500), (300, 260), 40)).read_bytes()
    url = workspace.engine.url.render_as_string(hide_password=False)
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = sorted(pool.map(upload_one_case, [(str(workspace.data_dir), url, data)] * 4))
    # before imports took turns, some of these failed with "the database refused the rows"
    assert outcomes == ["True:imported"] + ["True:skipped"] * 3
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Roi)) == 1
    assert _missing_files(workspace) == []


@pytest.mark.slow
def test_two_processes_computing_features_at_once_both_finish(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    url = workspace.engine.url.render_as_string(hide_password=False)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        # before: the slower one failed with "UNIQUE constraint failed: segmentations.roi_sha256, ..."
        n_rois = list(pool.map(compute_analytic_features_in, [(str(workspace.data_dir), url)] * 2))
    with workspace.sessions() as session:
        hashes = session.scalars(select(Segmentation.roi_sha256)).all()
        n_unique = session.scalar(select(func.count(func.distinct(Roi.sha256))))
    assert n_rois == [n_unique, n_unique] and sorted(hashes) == sorted(set(hashes)) and len(hashes) == n_unique
