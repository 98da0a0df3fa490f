"""``cadx import dicomweb`` and ``cadx export dicomweb`` against a real Orthanc PACS (scripts/services.sh starts it).

Each test uploads what it needs through Orthanc's REST API and deletes it afterwards, so tests do not see each
other's instances; queries are narrowed to the test's own studies all the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cadx import io as cadx_io
from cadx.cli import app
from cadx.config import DicomwebCredentials, dicomweb_credentials
from cadx.dicomweb import DicomwebServer
from cadx.errors import CadxInputError
from cadx.workflows import import_dicom_folder, open_workspace
from cadx.workflows.pacs import export_dicomweb_folder, find_series, import_dicomweb, stow_instances
from db.models import Base, Image, Lesion, Patient, Roi
from tests.dicom_factory import PHI, disk_image, write_mammogram

runner = CliRunner()
# scripts/services.sh registers this reader; its password is a string nothing else in the suite contains
READER = DicomwebCredentials(user="cadx-reader", password="Rdr-7Qx2-Vb9K-pacs")
WRONG_PASSWORD = "Wrong-9Zt4-Hq1M-never"


def _labels(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _snapshot(workspace) -> dict:
    with workspace.sessions() as session:
        return {table.name: [tuple(r) for r in session.execute(table.select())]
                for table in Base.metadata.sorted_tables if table.name != "alembic_version"}


def _all_stored_text(workspace) -> str:
    text = json.dumps(_snapshot(workspace), default=str)
    for path in workspace.data_dir.rglob("*"):
        if path.is_file():
            text += path.read_bytes().decode("latin-1")
    return text


def _cli_env(workspace) -> dict[str, str]:
    """The CLI opens the test's workspace (SQLite or PostgreSQL) as a user's shell would name it."""
    return {"CADX_DATA_DIR": str(workspace.data_dir),
            "CADX_DATABASE_URL": workspace.engine.url.render_as_string(hide_password=False)}


def _factory(path: Path, **kwargs) -> tuple[Path, pydicom.Dataset]:
    """A 400 x 400 MG with a 6 mm disk at (200, 200), 0.1 mm pixels, PHI in its header."""
    write_mammogram(path, disk_image((400, 400), (200, 200), 30), pixel_spacing=(0.1, 0.1), **kwargs)
    return path, pydicom.dcmread(path, stop_before_pixels=True)


def test_real_cbis_mammograms_import_from_orthanc_like_from_a_folder_and_twice_is_idempotent(
        workspace, pacs, cbis_dicoms, tmp_path):
    keys = [("P_00820", "LEFT", "CC"), ("P_00173", "LEFT", "CC")]
    files = [cbis_dicoms[k] for k in keys]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for path in files:
        pacs.upload(path)
    labels = _labels(tmp_path / "labels.csv", [
        {"file": headers[0].SOPInstanceUID, "lesion": "M1", "label": "malignant", "centre_x": 1300,
         "centre_y": 2400, "pixel_size_mm": 0.05},
        {"file": headers[1].SOPInstanceUID, "lesion": "B1", "label": "benign", "centre_x": 1400,
         "centre_y": 2200, "pixel_size_mm": 0.05},
    ])
    done: list[tuple[int, int | None, str]] = []
    started = time.perf_counter()
    # the CBIS studies are dated 20161004 (the factory files of other tests 20240301): the date range selects them
    report = import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=READER,
                             date_from="20161004", date_to="20161004", progress=lambda *a: done.append(a))
    seconds = time.perf_counter() - started
    print(f"dicomweb import: {report.n_imported} instances in {seconds:.1f} s")  # the number the report quotes

    assert report.committed and report.n_imported == 2 and report.n_errors == 0, report.to_dict()
    assert [d[:2] for d in done if d[2].startswith("reading")] == [(0, 2), (1, 2)]  # progress by instance
    with workspace.sessions() as session:
        images = {i.sha256: i for i in session.scalars(select(Image))}
        patients = sorted(p.key for p in session.scalars(select(Patient)))
        lesions = sorted((lesion.key, lesion.label) for lesion in session.scalars(select(Lesion)))
        assert session.scalar(select(func.count()).select_from(Roi)) == 2
    # the bytes as stored: the image is the file (same SHA-256), read through the same de-identification
    assert set(images) == {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    key = workspace.pseudonym_key()
    # the PatientID names the view (Mass-Test_P_00820_LEFT_CC): cadx keys the patient, P_00820, pseudonymised
    assert patients == sorted(cadx_io.pseudonymise(k[0], key=key) for k in keys)
    assert not any(h.PatientID in _all_stored_text(workspace) for h in headers)
    assert lesions == [("B1", "benign"), ("M1", "malignant")]
    assert all(i.modality == "MG" and i.pixel_spacing_source == "user" for i in images.values())

    again = import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=READER,
                            date_from="20161004", date_to="20161004")
    assert again.committed and again.n_imported == 0
    assert [i.reason for i in again.items] == ["already imported (same image file and lesion)"] * 2
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Roi)) == 2

    # the same file imported from a folder gives the same ROI (one import path, not two)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(files[0].read_bytes())
    other = open_workspace(tmp_path / "other-workspace")
    folder_labels = _labels(tmp_path / "folder-labels.csv", [
        {"file": "a.dcm", "lesion": "M1", "label": "malignant", "centre_x": 1300, "centre_y": 2400,
         "pixel_size_mm": 0.05}])
    assert import_dicom_folder(other, folder, folder_labels, user="tester").n_imported == 1
    with other.sessions() as session:
        folder_roi = session.scalars(select(Roi.sha256)).one()
    with workspace.sessions() as session:
        assert folder_roi in set(session.scalars(select(Roi.sha256)))


def test_cli_imports_with_a_credentials_file_and_never_shows_or_stores_the_password(workspace, pacs, tmp_path):
    path, header = _factory(tmp_path / "dicoms" / "Doe_Jane.dcm")
    _, unlisted = _factory(tmp_path / "dicoms" / "other.dcm")
    pacs.upload(path)
    secret = tmp_path / "pacs.credentials"
    secret.write_text(f"{READER.user}:{READER.password}\n")
    labels = _labels(tmp_path / "labels.csv", [
        {"file": header.SOPInstanceUID, "lesion": "L1", "label": "malignant", "centre_x": 200, "centre_y": 200}])

    result = runner.invoke(app, ["import", "dicomweb", pacs.dicomweb, "--labels", str(labels), "--study",
                                 header.StudyInstanceUID, "--credentials", str(secret),
                                 "--data-dir", str(workspace.data_dir), "--user", "tester"],
                           env=_cli_env(workspace))
    assert result.exit_code == 0, result.output
    assert "1 imported, 0 skipped, 0 errors" in " ".join(result.output.split())
    stored = _all_stored_text(workspace)
    for text in (READER.password, PHI["PatientID"], PHI["PatientName"], "Doe_Jane"):
        assert text not in result.output and text not in stored, text
    with workspace.sessions() as session:
        assert session.scalars(select(Patient.key)).one() == cadx_io.pseudonymise(
            PHI["PatientID"], key=workspace.pseudonym_key())
        assert session.scalars(select(Roi.centre_row)).one() == 200
    assert unlisted.SOPInstanceUID not in result.output


def test_wrong_password_is_refused_with_the_server_named_and_the_password_never_shown(workspace, pacs, tmp_path,
                                                                                      monkeypatch):
    path, header = _factory(tmp_path / "a.dcm")
    pacs.upload(path)
    labels = _labels(tmp_path / "labels.csv", [
        {"file": header.SOPInstanceUID, "lesion": "L1", "label": "benign", "centre_x": 200, "centre_y": 200}])
    monkeypatch.setenv("CADX_DICOMWEB_USER", "cadx-reader")
    monkeypatch.setenv("CADX_DICOMWEB_PASSWORD", WRONG_PASSWORD)
    before = _snapshot(workspace)
    with pytest.raises(CadxInputError) as caught:
        import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=dicomweb_credentials())
    message = str(caught.value)
    assert caught.value.source == pacs.dicomweb and "refused the credentials (HTTP 401)" in message
    assert "--credentials" in caught.value.fix and WRONG_PASSWORD not in message
    assert WRONG_PASSWORD not in repr(dicomweb_credentials())
    assert _snapshot(workspace) == before

    monkeypatch.delenv("CADX_DICOMWEB_USER")
    monkeypatch.delenv("CADX_DICOMWEB_PASSWORD")
    secret = tmp_path / "bad.credentials"
    secret.write_text(f"cadx-reader:{WRONG_PASSWORD}")
    result = runner.invoke(app, ["import", "dicomweb", pacs.dicomweb, "--labels", str(labels), "--credentials",
                                 str(secret)],
                           env=_cli_env(workspace))
    assert result.exit_code == 2 and "HTTP 401" in result.output and WRONG_PASSWORD not in result.output
    assert WRONG_PASSWORD not in _all_stored_text(workspace)


def test_unreachable_server_is_named_with_the_fix(workspace, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    labels = _labels(tmp_path / "labels.csv", [
        {"file": "1.2.3", "lesion": "L1", "label": "benign", "centre_x": 1, "centre_y": 1}])
    with pytest.raises(CadxInputError, match="the server cannot be reached") as caught:
        import_dicomweb(workspace, f"http://127.0.0.1:{port}/dicom-web", labels, user="tester", credentials=READER)
    assert caught.value.source == f"http://127.0.0.1:{port}/dicom-web" and "running" in caught.value.fix
    with pytest.raises(CadxInputError, match="carries a user or password") as caught:
        import_dicomweb(workspace, f"http://u:{WRONG_PASSWORD}@127.0.0.1:{port}/dicom-web", labels, user="tester")
    assert WRONG_PASSWORD not in str(caught.value)


def test_a_series_that_is_not_mammography_is_refused_and_nothing_is_imported(workspace, pacs, tmp_path):
    ct_path, ct = _factory(tmp_path / "ct.dcm", extra={"Modality": "CT"})
    mg_path, mg = _factory(tmp_path / "mg.dcm", extra={"StudyInstanceUID": ct.StudyInstanceUID})
    pacs.upload(ct_path)
    pacs.upload(mg_path)
    labels = _labels(tmp_path / "labels.csv", [
        {"file": ct.SOPInstanceUID, "lesion": "L1", "label": "benign", "centre_x": 200, "centre_y": 200},
        {"file": mg.SOPInstanceUID, "lesion": "L2", "label": "benign", "centre_x": 200, "centre_y": 200}])
    before = _snapshot(workspace)
    with pytest.raises(CadxInputError, match="is a CT series, not a mammogram") as caught:
        import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=READER,
                        series_uid=ct.SeriesInstanceUID)
    assert caught.value.source == f"{pacs.dicomweb} series {ct.SeriesInstanceUID}"
    # the whole study: the CT row is an error, so the good MG row is not imported either
    report = import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=READER,
                             study_uid=ct.StudyInstanceUID)
    assert not report.committed and report.n_imported == 0
    assert [(i.status, "is in a CT series, not a mammogram (MG)" in i.reason) for i in report.items] == [
        ("error", True)]
    assert _snapshot(workspace) == before
    # with --skip-errors the mammogram alone is imported
    report = import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=READER,
                             study_uid=ct.StudyInstanceUID, skip_errors=True)
    assert report.committed and report.n_imported == 1 and report.n_errors == 1


def test_unreadable_and_too_large_instances_are_errors_and_nothing_is_written(workspace, pacs, tmp_path,
                                                                              monkeypatch):
    path, header = _factory(tmp_path / "short.dcm")
    dataset = pydicom.dcmread(path)
    dataset.PixelData = dataset.PixelData[:1000]  # Rows x Columns say 320 000 bytes: a cut-off image
    dataset.save_as(path)
    pacs.upload(path)
    good_path, good = _factory(tmp_path / "good.dcm", extra={"StudyInstanceUID": header.StudyInstanceUID})
    pacs.upload(good_path)
    labels = _labels(tmp_path / "labels.csv", [
        {"file": header.SOPInstanceUID, "lesion": "L1", "label": "benign", "centre_x": 200, "centre_y": 200},
        {"file": good.SOPInstanceUID, "lesion": "L2", "label": "benign", "centre_x": 200, "centre_y": 200}])
    before = _snapshot(workspace)
    report = import_dicomweb(workspace, pacs.dicomweb, labels, user="tester", credentials=READER,
                             study_uid=header.StudyInstanceUID)
    assert not report.committed and [i.status for i in report.errors] == ["error"]
    assert "pixel data" in report.errors[0].reason.lower(), report.errors[0].reason
    assert _snapshot(workspace) == before
    assert not list(workspace.data_dir.glob("rois/*/*.png"))

    # over the pixel limit: refused from the header, before decoding
    monkeypatch.setenv("CADX_MAX_IMAGE_PIXELS", "100000")
    good_only = _labels(tmp_path / "good.csv", [
        {"file": good.SOPInstanceUID, "lesion": "L2", "label": "benign", "centre_x": 200, "centre_y": 200}])
    report = import_dicomweb(workspace, pacs.dicomweb, good_only, user="tester", credentials=READER,
                             study_uid=header.StudyInstanceUID)
    assert not report.committed and "over the limit" in report.errors[0].reason
    assert _snapshot(workspace) == before
    # and the download itself stops at its byte cap
    server = DicomwebServer(pacs.dicomweb, credentials=READER)
    with pytest.raises(CadxInputError, match="MiB an image within the pixel limit can need"):
        server.retrieve_instance(good.StudyInstanceUID, good.SeriesInstanceUID, good.SOPInstanceUID,
                                 max_bytes=100_000)


def test_a_transfer_shorter_than_its_content_length_is_truncated(tmp_path):
    """A server that announces more bytes than it sends, then hangs up (a real socket, a broken server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: multipart/related; type=\"application/dicom\"; "
                               b"boundary=b1\r\nContent-Length: 100000\r\n\r\n--b1\r\nContent-Type: "
                               b"application/dicom\r\n\r\n" + b"\0" * 5000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server = DicomwebServer(f"http://127.0.0.1:{port}/dicom-web")
    with pytest.raises(CadxInputError, match="the transfer was truncated") as caught:
        server.retrieve_instance("1.2.3", "1.2.4", "1.2.5")
    assert caught.value.source == f"http://127.0.0.1:{port}/dicom-web instance 1.2.5"
    thread.join(5)
    listener.close()


def test_stow_then_qido_finds_it_and_export_sends_a_folder(pacs, tmp_path):
    path, header = _factory(tmp_path / "out" / "sr.dcm")
    stored = stow_instances(pacs.dicomweb, [path.read_bytes()], credentials=DicomwebCredentials("cadx", "cadx"))
    pacs.forget_after(header.SOPInstanceUID)
    assert stored == [header.SOPInstanceUID]
    found = find_series(pacs.dicomweb, credentials=READER, study_uid=header.StudyInstanceUID)
    assert [(s.series_uid, s.modality, s.n_instances) for s in found] == [(header.SeriesInstanceUID, "MG", 1)]
    server = DicomwebServer(pacs.dicomweb, credentials=READER)
    assert server.search_instances(found[0]) == [header.SOPInstanceUID]
    assert server.retrieve_instance(header.StudyInstanceUID, header.SeriesInstanceUID,
                                    header.SOPInstanceUID) == path.read_bytes()

    second, other = _factory(tmp_path / "out" / "nested" / "seg.dcm")
    (tmp_path / "out" / "notes.txt").write_text("not DICOM")
    secret = tmp_path / "admin.credentials"
    secret.write_text("cadx:cadx")
    result = runner.invoke(app, ["export", "dicomweb", pacs.dicomweb, "--from", str(tmp_path / "out"),
                                 "--credentials", str(secret)])
    pacs.forget_after(other.SOPInstanceUID)
    assert result.exit_code == 0, result.output
    assert "2 instance(s) stored" in result.output and other.SOPInstanceUID in result.output
    assert [s.series_uid for s in find_series(pacs.dicomweb, credentials=READER,
                                              study_uid=other.StudyInstanceUID)] == [other.SeriesInstanceUID]
    # a folder without DICOM files is refused before anything is sent
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "a.dcm").write_text("not DICOM, whatever the name says")
    with pytest.raises(CadxInputError, match="holds no DICOM file"):
        export_dicomweb_folder(pacs.dicomweb, tmp_path / "text-only", credentials=READER)


def test_credentials_file_forms_and_bad_filters(tmp_path, monkeypatch):
    file = tmp_path / "c"
    file.write_text("Bearer abc.def\n")
    assert dicomweb_credentials(file).token == "abc.def"
    file.write_text("tok123")
    assert dicomweb_credentials(file).token == "tok123"
    file.write_text("me:pa:ss")
    assert (dicomweb_credentials(file).user, dicomweb_credentials(file).password) == ("me", "pa:ss")
    assert "pa:ss" not in repr(dicomweb_credentials(file))
    file.write_text("me:")
    with pytest.raises(CadxInputError, match="empty user or password"):
        dicomweb_credentials(file)
    assert dicomweb_credentials() is None
    monkeypatch.setenv("CADX_DICOMWEB_TOKEN", "t")
    assert dicomweb_credentials().token == "t"
    monkeypatch.setenv("CADX_DICOMWEB_USER", "u")
    with pytest.raises(CadxInputError, match="not both"):
        dicomweb_credentials()
    with pytest.raises(CadxInputError, match="is not a date YYYYMMDD"):
        find_series("http://127.0.0.1:1/dicom-web", date_from="2024-03-01")
    with pytest.raises(CadxInputError, match="is not a DICOM UID"):
        find_series("http://127.0.0.1:1/dicom-web", study_uid="1.2; DROP")


def test_sr_and_seg_exported_to_orthanc_come_back_byte_for_byte(workspace_cache, workspace, mini_ddsm_dir, pacs,
                                                                  tmp_path):
    """Issue 27's round trip, the export half: the mini-DDSM ROIs' SR and SEG files (``cadx export sr|seg``, checked
    value by value against the database in tests/test_export_dicom.py) stored with ``cadx export dicomweb`` into the
    real Orthanc, found there by QIDO-RS as SR and SEG series, and retrieved by WADO-RS equal byte for byte (so every
    value survives the trip), and still read by highdicom."""
    import highdicom as hd

    from tests.test_export_dicom import _cli, _ddsm_with_segmentations

    workspace_cache.fill(workspace, _ddsm_with_segmentations, folder=str(mini_ddsm_dir))
    out = tmp_path / "out"
    for kind in ("sr", "seg"):
        done = _cli(workspace, "export", kind, "all", "--out", str(out))
        assert done.exit_code == 0, done.output
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 8  # 4 ROIs x (SR, SEG)
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    secret = tmp_path / "admin.credentials"
    secret.write_text("cadx:cadx")
    result = runner.invoke(app, ["export", "dicomweb", pacs.dicomweb, "--from", str(out), "--credentials",
                                 str(secret)])
    for header in headers.values():
        pacs.forget_after(header.SOPInstanceUID)
    assert result.exit_code == 0, result.output
    assert "8 instance(s) stored" in result.output
    server = DicomwebServer(pacs.dicomweb, credentials=READER)
    for path, header in headers.items():
        found = find_series(pacs.dicomweb, credentials=READER, study_uid=header.StudyInstanceUID,
                            series_uid=header.SeriesInstanceUID)
        assert [s.modality for s in found] == [header.Modality] and header.Modality in ("SR", "SEG")
        assert header.SOPInstanceUID in server.search_instances(found[0])
        back = server.retrieve_instance(header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
        assert back == path.read_bytes(), path.name
        copy = tmp_path / "back" / path.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(back)
        read = hd.sr.srread(copy) if header.Modality == "SR" else hd.seg.segread(copy)
        assert read.SOPInstanceUID == header.SOPInstanceUID
