"""Backup and restore: every row and file and the pseudonym key come back, verified; damaged backups and non-empty
targets refused; the key is created once, whole, however many processes start at once."""

from __future__ import annotations

import io
import multiprocessing
import stat
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cadx.cli import app
from cadx.errors import CadxInputError
from cadx.workflows import exclude_roi, import_demo, import_upload, open_workspace
from cadx.workflows.backup import backup_workspace, restore_workspace, workspace_backup_key
from db.models import Patient, Roi
from tests.dicom_factory import disk_image, write_mammogram
from tests.spawned import first_pseudonym_key
from tests.test_import_files import _snapshot

runner = CliRunner()


def test_backup_restores_every_row_and_file(workspace_cache, workspace, tmp_path):
    workspace_cache.fill(workspace, import_demo, n_lesions=3, seed=4)
    with workspace.sessions() as session:
        from db.models import Roi

        roi_id = session.scalars(select(Roi.id)).first()
    exclude_roi(workspace, roi_id, reason="location_marker", user="alice")
    backed_up, restored_steps = [], []
    manifest = backup_workspace(workspace, tmp_path / "b.tar", progress=lambda *step: backed_up.append(step))
    assert manifest["tables"]["review_events"]["rows"] == 1 and manifest["files"]
    n_files = len(manifest["files"])
    assert (n_files, n_files, "backing up stored files") in backed_up  # progress reaches the end

    restored = open_workspace(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.sqlite'}")
    key = workspace_backup_key(workspace)  # created by the first backup; never inside the backup
    with tarfile.open(tmp_path / "b.tar") as archive:
        assert not [name for name in archive.getnames() if "backup" in name]
    restore_workspace(restored, tmp_path / "b.tar", key=key, progress=lambda *step: restored_steps.append(step))
    assert [s for s in restored_steps if s[2] == "writing stored files"][-1][:2] == (n_files, n_files)
    rows_before, files_before = _snapshot(workspace)
    rows_after, files_after = _snapshot(restored)
    assert rows_after == rows_before
    assert files_after == [f for f in files_before if f != "backup.key"]  # the pseudonym key included
    assert restored.pseudonym_key() == workspace.pseudonym_key()
    for relative in manifest["files"]:
        assert (restored.data_dir / relative).read_bytes() == (workspace.data_dir / relative).read_bytes()
    with pytest.raises(CadxInputError, match="not empty"):
        restore_workspace(restored, tmp_path / "b.tar", key=key)
    with pytest.raises(CadxInputError, match="already exists"):
        backup_workspace(workspace, tmp_path / "b.tar")


def _with_one_flipped_bit(backup: Path, target: Path, prefix: str) -> Path:
    """A copy of ``backup`` whose members starting with ``prefix`` each have their last bit flipped."""
    with tarfile.open(backup) as source, tarfile.open(target, "w") as copy:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.startswith(prefix):
                data = data[:-1] + bytes([data[-1] ^ 1])
            copy.addfile(member, io.BytesIO(data))
    return target


@pytest.mark.parametrize("member, message", [("files/rois/", r"file rois/\S+ fails its checksum"),
                                             ("secrets/pseudonym.key", "pseudonym key fails its checksum")])
def test_damaged_backup_is_refused_and_writes_nothing(workspace_cache, workspace, tmp_path, member, message):
    workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=4)
    backup_workspace(workspace, tmp_path / "b.tar")
    damaged = _with_one_flipped_bit(tmp_path / "b.tar", tmp_path / "damaged.tar", member)
    fresh = open_workspace(tmp_path / "fresh", f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    own_key = fresh.pseudonym_key()
    with pytest.raises(CadxInputError, match=message):
        restore_workspace(fresh, damaged, key=workspace_backup_key(workspace))
    rows, files = _snapshot(fresh)
    assert all(not table_rows for table_rows in rows.values()) and files == [".import.lock", "pseudonym.key"]
    assert fresh.pseudonym_key() == own_key


def _import_dicom_of_one_patient(workspace, tmp_path, lesion: str) -> str:
    """Upload a DICOM whose header names the same patient each time; returns the patient key cadx gave it."""
    data = write_mammogram(tmp_path / f"{lesion}.dcm", disk_image((700, 500), (300, 260), 40)).read_bytes()
    report = import_upload(workspace, data, filename=f"{lesion}.dcm", patient=None, lesion=lesion, label="benign",
                           centre_rc=(300.0, 260.5), user="ana")
    assert report.committed, report
    with workspace.sessions() as session:
        return session.get(Roi, report.items[0].roi_id).lesion.patient.key


def test_a_restored_workspace_recognises_the_patients_of_new_dicoms(workspace, tmp_path):
    before = _import_dicom_of_one_patient(workspace, tmp_path, "L1")
    backup_workspace(workspace, tmp_path / "b.tar")
    restored = open_workspace(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.sqlite'}")
    assert restore_workspace(restored, tmp_path / "b.tar", key=workspace_backup_key(workspace))[
        "pseudonym_key_restored"]
    # The next view of the same woman joins her, instead of becoming a second patient.
    assert _import_dicom_of_one_patient(restored, tmp_path, "L2") == before
    with restored.sessions() as session:
        assert len(session.scalars(select(Patient)).all()) == 1


def test_a_backup_without_the_key_says_so_on_restore(workspace, tmp_path):
    before = _import_dicom_of_one_patient(workspace, tmp_path, "L1")
    manifest = backup_workspace(workspace, tmp_path / "b.tar", include_pseudonym_key=False)
    assert "pseudonym_key_sha256" not in manifest
    with tarfile.open(tmp_path / "b.tar") as archive:
        assert not [m for m in archive.getnames() if "pseudonym" in m]
    data = tmp_path / "restored"
    result = runner.invoke(app, ["restore", str(tmp_path / "b.tar"), "--data-dir", str(data), "--key-file",
                                 str(workspace.data_dir / "backup.key")])
    assert result.exit_code == 0, result.output
    assert "has no pseudonym key" in result.output and "a second patient" in result.output
    restored = open_workspace(data)
    try:
        assert _import_dicom_of_one_patient(restored, tmp_path, "L2") != before  # what the warning is about
    finally:
        restored.engine.dispose()


@pytest.mark.slow
def test_processes_starting_at_once_share_one_complete_key(tmp_path):
    with ProcessPoolExecutor(max_workers=6, mp_context=multiprocessing.get_context("spawn")) as pool:
        keys = list(pool.map(first_pseudonym_key, [str(tmp_path)] * 12))
    assert len(keys[0]) == 32 and all(k == keys[0] for k in keys)
    assert [p.name for p in tmp_path.iterdir()] == ["pseudonym.key"]  # no temporary file left behind
    assert stat.S_IMODE((tmp_path / "pseudonym.key").stat().st_mode) == 0o600


def test_a_truncated_key_is_a_clear_error_not_a_new_pseudonym(workspace):
    path = workspace.pseudonym_key_path
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(CadxInputError, match=r"pseudonym.key.*has 5 bytes, not 32.*from a backup"):
        workspace.pseudonym_key()
