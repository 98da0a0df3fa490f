"""Backup and restore: every row and file and the pseudonym key come back, verified; damaged backups and non-empty
targets refused; the key is created once, whole, however many processes start at once."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import stat
import tarfile
import time
import tracemalloc
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
from tests.small_fs import nearly_full_fs
from tests.spawned import first_pseudonym_key, restore_and_stop_at
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


# ---------------------------------------------------------------------------------------- untrusted archive sizes ---
MiB = 2**20


def _peak_mib(call) -> tuple[BaseException | None, float]:
    """What ``call()`` raised, and the peak of Python's traced allocations meanwhile (bytes objects included)."""
    tracemalloc.start()
    try:
        call()
        error = None
    except BaseException as exc:  # noqa: BLE001
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak / MiB


def test_a_sparse_manifest_is_refused_before_any_of_it_is_read(workspace, tmp_path):
    # 20 KB on disk; tarfile fills in the holes of a sparse member, so reading it meant 1.5 GB (before: 1.78 GB
    # peak, and a MemoryError traceback at 3 GB)
    info = tarfile.TarInfo("manifest.json")
    info.size = 10240
    info.pax_headers = {"GNU.sparse.map": "0,10240", "GNU.sparse.size": str(1_500_000_000)}
    with tarfile.open(tmp_path / "sparse.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b" " * 10240))
        _add_member(archive, "manifest.hmac", b"{}")
    assert (tmp_path / "sparse.tar").stat().st_size < 64 * 1024
    before = _snapshot(workspace)
    error, peak = _peak_mib(lambda: restore_workspace(workspace, tmp_path / "sparse.tar", key=bytes(32)))
    assert isinstance(error, CadxInputError), error
    assert "'manifest.json' is a sparse file (declaring 1,500,000,000 bytes)" in str(error)
    assert peak < 8, f"peak {peak:.0f} MiB while refusing"
    assert _snapshot(workspace) == before


def test_a_manifest_over_the_cap_is_refused_from_its_header(workspace, tmp_path):
    # A plain (not sparse) 1.5 GB member, in an archive file that is itself sparse on disk (the test's, not the
    # archive's, economy): refused by its declared size, before any of it is read.
    signature = tarfile.TarInfo("manifest.hmac")
    signature.size = 2
    manifest = tarfile.TarInfo("manifest.json")
    manifest.size = 1_500_000_000
    with open(tmp_path / "big.tar", "wb") as handle:
        handle.write(signature.tobuf(tarfile.GNU_FORMAT) + b"{}".ljust(tarfile.BLOCKSIZE, b"\0")
                     + manifest.tobuf(tarfile.GNU_FORMAT))
        handle.truncate(handle.tell() + manifest.size + 3 * tarfile.BLOCKSIZE)  # data, padding and end blocks
    with pytest.raises(CadxInputError, match=r"manifest.json is 1,500,000,000 bytes, over the 67,108,864 a cadx "
                                             r"backup's manifest.json can have"):
        restore_workspace(workspace, tmp_path / "big.tar", key=bytes(32))


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_restore_streams_the_files_instead_of_holding_the_backup(workspace, tmp_path):
    big = workspace.data_dir / "rois" / "ab"
    big.mkdir(parents=True)
    for k in range(3):
        with open(big / f"big-{k}.png", "wb") as handle:  # 40 MiB each, written without holding them
            for _ in range(40):
                handle.write(bytes([k + 1]) * MiB)
    backup_workspace(workspace, tmp_path / "b.tar")
    assert (tmp_path / "b.tar").stat().st_size > 120 * MiB
    restored = open_workspace(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.sqlite'}")
    error, peak = _peak_mib(lambda: restore_workspace(restored, tmp_path / "b.tar",
                                                      key=workspace_backup_key(workspace)))
    assert error is None, error
    assert peak < 24, f"peak {peak:.0f} MiB restoring a {120} MiB backup"  # before: 120+ MiB (every file held)
    for k in range(3):
        assert (restored.data_dir / "rois" / "ab" / f"big-{k}.png").read_bytes() == bytes([k + 1]) * (40 * MiB)


# ------------------------------------------------------------------------------------------- a restore killed -9 ---
def _with_features(workspace) -> None:
    """Some stored CNN features (made-up vectors: the store does not care) for every ROI."""
    import numpy as np

    from cadx.workflows.features import feature_store, roi_records

    hashes = sorted({r.sha256 for r in roi_records(workspace, included_only=False)})
    vectors = np.arange(len(hashes) * 8, dtype=np.float32).reshape(len(hashes), 8)
    feature_store(workspace).write(hashes, {"fc8": vectors}, backbone="alexnet", weights_sha256="ab" * 32)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["checking stored files", "writing the database rows"])
def test_a_restore_killed_mid_way_can_simply_be_run_again(workspace_cache, workspace, tmp_path, step):
    workspace_cache.fill(workspace, import_demo, n_lesions=3, seed=4)
    _with_features(workspace)
    manifest = backup_workspace(workspace, tmp_path / "b.tar", include_features=True)
    assert any(name.startswith("features/") for name in manifest["files"])
    key_file = str(workspace.data_dir / "backup.key")
    reference = open_workspace(tmp_path / "reference", f"sqlite:///{tmp_path / 'reference.sqlite'}")
    restore_workspace(reference, tmp_path / "b.tar", key=workspace_backup_key(workspace))

    data, url = tmp_path / "target", f"sqlite:///{tmp_path / 'target.sqlite'}"
    reached = tmp_path / "reached"
    process = multiprocessing.get_context("spawn").Process(
        target=restore_and_stop_at, args=(str(data), url, str(tmp_path / "b.tar"), key_file, step, str(reached)))
    process.start()
    deadline = time.monotonic() + 300  # a limit for a loaded machine, not a measurement
    while not reached.exists() and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reached.exists(), f"the restore never reached {step!r} (exit code {process.exitcode})"
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    leftovers = [p for p in data.rglob("*") if p.is_file() and (p.parts[len(data.parts)] in ("rois", "features")
                                                                  or ".tmp-restore-" in str(p))]
    assert leftovers, "the kill must land after the restore wrote something"

    target = open_workspace(data, url)  # the next start cleans up after the killed restore ...
    assert not list(data.glob("features/**/*.npy")) and not list(data.glob("rois/**/*.png"))
    assert not list(data.glob(".tmp-restore-*"))
    restore_workspace(target, tmp_path / "b.tar", key=workspace_backup_key(workspace))  # ... so this is accepted
    assert _snapshot(target) == _snapshot(reference)
    target.engine.dispose()
    reference.engine.dispose()


def test_a_full_disk_during_backup_leaves_no_partial_backup(workspace_cache, tmp_path):
    data, _ = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=3, seed=4)
    with nearly_full_fs(tmp_path / "full", free_bytes=64 * 1024) as full:
        result = runner.invoke(app, ["backup", str(full / "b.tar"), "--data-dir", str(data)])
        assert result.exit_code == 1, result.output
        message = " ".join(result.output.split())
        assert "No space left on device" in message and "Nothing was half-written" in message
        assert sorted(p.name for p in full.iterdir()) == [".filler"]  # before: b.tar.partial was left
