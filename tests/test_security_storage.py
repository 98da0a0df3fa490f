"""Security and bad-input corpus for storage (issue 10, items 1, 5, 6, 8, 10): restore never writes outside the
target, backups are tamper-evident, the audit trail is a verified hash chain, no user file or folder name is stored,
manifests with contradictory or malformed values are refused clearly, and orphan files are collected."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from cadx.cli import app
from cadx.errors import CadxInputError
from cadx.workflows import import_demo, open_workspace
from cadx.workflows.accounts import add_user, record_audit
from cadx.workflows.backup import backup_key_id, backup_workspace, restore_workspace
from db.models import AuditEvent, Lesion
from tests.test_import_files import _snapshot

runner = CliRunner()
KEY = bytes(range(32))  # a fixed test backup key


# ------------------------------------------------------------------------------------------- crafted backups ---
def _members(backup: Path) -> dict[str, bytes]:
    with tarfile.open(backup) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


def _write_tar(target: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(target, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return target


def _resigned(members: dict[str, bytes], manifest: dict, key: bytes = KEY) -> dict[str, bytes]:
    """The members with ``manifest`` written and signed by ``key``: what an attacker holding a key could make."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    members = dict(members)
    members["manifest.json"] = data
    members["manifest.hmac"] = json.dumps({"algorithm": "HMAC-SHA256", "key_id": backup_key_id(key),
                                           "hmac": hmac.new(key, data, hashlib.sha256).hexdigest()}).encode()
    return members


def _fresh(tmp_path: Path, name: str = "fresh"):
    return open_workspace(tmp_path / name, f"sqlite:///{tmp_path / (name + '.sqlite')}")


def _assert_untouched(workspace) -> None:
    rows, files = _snapshot(workspace)
    assert all(not table_rows for table_rows in rows.values())
    assert files == [".import.lock", "pseudonym.key"]


@pytest.fixture
def backup(workspace_cache, workspace, tmp_path) -> Path:
    workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=4)
    backup_workspace(workspace, tmp_path / "b.tar", key=KEY)
    return tmp_path / "b.tar"


@pytest.mark.parametrize("relative", ["/tmp/cadx-escape-abs.png", "rois/../../cadx-escape-dotdot.png",
                                      "../cadx-escape-up.png", "rois//cadx-escape-empty.png", "cadx.sqlite",
                                      "backup.key", "rois/a\\..\\..\\x.png"])
def test_restore_never_writes_outside_the_target(backup, tmp_path, relative):
    # The manifest names a stored file outside the data directory (tar member files//abs/path and friends), with
    # every hash recomputed and the manifest signed: the path check alone must stop it.
    members = _members(backup)
    manifest = json.loads(members["manifest.json"])
    payload = b"\x89PNG written by an attacker"
    manifest["files"][relative] = hashlib.sha256(payload).hexdigest()
    members[f"files/{relative}"] = payload
    crafted = _write_tar(tmp_path / "crafted.tar", _resigned(members, manifest))
    fresh = _fresh(tmp_path)
    with pytest.raises(CadxInputError, match=r"(stored file|archive member) .* (is|resolves)"):
        restore_workspace(fresh, crafted, key=KEY)
    _assert_untouched(fresh)
    assert not Path("/tmp/cadx-escape-abs.png").exists()
    assert not list(tmp_path.rglob("cadx-escape-*")) and not (tmp_path / "x.png").exists()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member, what", [
    (_special("files/rois/00/link.png", tarfile.SYMTYPE, "/etc/passwd"), "a symbolic link"),
    (_special("files/rois/00/hard.png", tarfile.LNKTYPE, "manifest.json"), "a hard link"),
    (_special("files/rois/00/dev.png", tarfile.CHRTYPE), "a device"),
    (_special("files/rois/00/fifo.png", tarfile.FIFOTYPE), "a FIFO"),
])
def test_links_devices_and_fifos_in_a_backup_are_refused(backup, tmp_path, member, what):
    crafted = _write_tar(tmp_path / "crafted.tar", _members(backup), extra=[member])
    fresh = _fresh(tmp_path)
    with pytest.raises(CadxInputError, match=f"archive member .* is {what}"):
        restore_workspace(fresh, crafted, key=KEY)
    _assert_untouched(fresh)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.98])
def test_a_truncated_backup_is_a_clear_error_on_the_command_line(backup, tmp_path, cut):
    data = backup.read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: int(len(data) * cut)])
    (tmp_path / "key").write_text(KEY.hex())
    target = tmp_path / "target"
    result = runner.invoke(app, ["restore", str(truncated), "--data-dir", str(target), "--key-file",
                                 str(tmp_path / "key")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert "truncated or corrupt" in result.output or "is missing" in result.output
    restored = open_workspace(target)
    try:
        _assert_untouched(restored)
    finally:
        restored.engine.dispose()


# --------------------------------------------------------------------------------------- tamper evidence ---
def _tampered(backup: Path, tmp_path: Path, edit, key: bytes | None = None) -> Path:
    """A copy of ``backup`` whose tables were edited by ``edit(tables)``, every SHA-256 recomputed; signed with
    ``key`` when given, else with the old signature left in place (the attacker does not hold the key)."""
    members = _members(backup)
    manifest = json.loads(members["manifest.json"])
    tables = {name[len("tables/"):-len(".jsonl")]: [json.loads(line) for line in data.decode().splitlines()]
              for name, data in members.items() if name.startswith("tables/")}
    edit(tables)
    for name, rows in tables.items():
        payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        members[f"tables/{name}.jsonl"] = payload
        manifest["tables"][name] = {"rows": len(rows), "sha256": hashlib.sha256(payload).hexdigest()}
    if key is not None:
        members = _resigned(members, manifest, key)
    else:
        members["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    return _write_tar(tmp_path / "tampered.tar", members)


def _flip_labels(tables):
    for row in tables["lesions"]:
        row["label"] = "benign" if row["label"] == "malignant" else "malignant"


def _add_admin(tables):
    tables["users"].append({"id": 99, "username": "mallory", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y",
                            "role": "admin", "disabled": False, "created_at": {"__datetime__": "2026-01-01T00:00:00"
                                                                                              "+00:00"},
                            "last_login_at": None})


def _delete_audit(tables):
    del tables["audit_events"][0]


@pytest.mark.parametrize("edit", [_flip_labels, _add_admin, _delete_audit])
def test_a_tampered_backup_with_recomputed_hashes_is_refused(backup, tmp_path, edit):
    tampered = _tampered(backup, tmp_path, edit)
    fresh = _fresh(tmp_path)
    with pytest.raises(CadxInputError, match=r"fails its authentication \(HMAC\)"):
        restore_workspace(fresh, tampered, key=KEY)
    _assert_untouched(fresh)


def test_a_backup_signed_with_another_key_or_restored_without_one_is_refused(backup, tmp_path):
    fresh = _fresh(tmp_path)
    with pytest.raises(CadxInputError, match="needs the backup key"):
        restore_workspace(fresh, backup)
    other = bytes(reversed(range(32)))
    with pytest.raises(CadxInputError, match=f"signed with backup key {backup_key_id(KEY)}, and the key given is "
                                             f"{backup_key_id(other)}"):
        restore_workspace(fresh, backup, key=other)
    _assert_untouched(fresh)
    restore_workspace(fresh, backup, key=KEY)  # the right key restores it


def test_deleted_audit_events_are_found_even_when_the_manifest_is_re_signed(workspace, tmp_path):
    # Someone holding the backup key (or editing the database directly) deletes an event: the chain shows where.
    for n in range(4):
        with workspace.sessions.begin() as session:
            record_audit(session, user="alice", action="exclude", target=f"roi {n}", detail={"n": n})
    backup_workspace(workspace, tmp_path / "b.tar", key=KEY)
    with workspace.sessions() as session:
        ids = list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))

    def delete_second(tables):
        del tables["audit_events"][1]

    tampered = _tampered(tmp_path / "b.tar", tmp_path, delete_second, key=KEY)
    fresh = _fresh(tmp_path)
    with pytest.raises(CadxInputError, match=f"audit trail breaks at audit event {ids[2]}"):
        restore_workspace(fresh, tampered, key=KEY)
    _assert_untouched(fresh)


def _break_chain(workspace, sql: str) -> None:
    """Edit the audit table behind cadx's back, as a database administrator could (triggers lifted)."""
    with workspace.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
            connection.execute(text(sql))
            connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
            connection.execute(text("DROP TRIGGER audit_events_no_delete"))
            connection.execute(text(sql))


@pytest.mark.parametrize("sql, broken_index", [
    ("DELETE FROM audit_events WHERE id = {ids[1]}", 2),
    ("UPDATE audit_events SET target = 'roi 99' WHERE id = {ids[2]}", 2),
    ("UPDATE audit_events SET \"user\" = 'mallory' WHERE id = {ids[0]}", 0),
])
def test_audit_verify_names_the_first_broken_event(workspace, sql, broken_index):
    for n in range(4):
        with workspace.sessions.begin() as session:
            record_audit(session, user="alice", action="exclude", target=f"roi {n}", detail={"n": n, "x": 0.25})
    data_dir = str(workspace.data_dir)
    env = {"CADX_DATABASE_URL": workspace.engine.url.render_as_string(hide_password=False),
           "CADX_DATA_DIR": str(workspace.data_dir)}
    result = runner.invoke(app, ["audit", "verify", "--data-dir", data_dir], env=env)
    assert result.exit_code == 0 and "4 audit events, hash chain intact" in result.output, result.output
    with workspace.sessions() as session:
        ids = list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))
    _break_chain(workspace, sql.format(ids=ids))
    result = runner.invoke(app, ["audit", "verify", "--data-dir", data_dir], env=env)
    assert result.exit_code == 1, result.output
    assert f"broken at audit event {ids[broken_index]}" in " ".join(result.output.split())


def test_concurrent_audit_events_form_one_chain(workspace):
    from concurrent.futures import ThreadPoolExecutor

    from cadx.workflows.audit import verify_audit_chain

    def write(n: int) -> None:
        with workspace.sessions.begin() as session:
            record_audit(session, user="alice", action="exclude", target=f"roi {n}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(24)))
    assert verify_audit_chain(workspace) == (24, None)


def test_backups_database_and_stored_files_are_owner_only(tmp_path):
    workspace = open_workspace(tmp_path / "data")  # the default SQLite file inside the data directory
    try:
        import_demo(workspace, n_lesions=1, seed=1)
        backup_workspace(workspace, tmp_path / "b.tar")
        modes = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode)
                 for path in [tmp_path / "data", *(tmp_path / "data").rglob("*"), tmp_path / "b.tar"]}
    finally:
        workspace.engine.dispose()
    assert "data/cadx.sqlite" in modes and "data/backup.key" in modes and any("rois/" in p for p in modes)
    loose = {path: oct(mode) for path, mode in modes.items()
             if mode != (0o700 if (tmp_path / path).is_dir() else 0o600)}
    assert not loose


def test_restored_files_are_owner_only_and_the_cli_round_trip_works(backup, tmp_path):
    (tmp_path / "key").write_text(KEY.hex() + "\n")
    target = tmp_path / "target"
    result = runner.invoke(app, ["restore", str(backup), "--data-dir", str(target), "--key-file", str(tmp_path / "key")])
    assert result.exit_code == 0, result.output
    restored = [p for p in target.rglob("*") if "rois" in p.parts]
    assert restored and all(stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600) for p in restored)


def test_an_upgraded_database_has_its_existing_audit_events_chained(database_url, tmp_path):
    from alembic import command

    from cadx.workflows.audit import verify_audit_chain
    from db.session import alembic_config, create_db_engine

    engine = create_db_engine(database_url)
    command.upgrade(alembic_config(engine), "0003")
    with engine.begin() as connection:
        for n, target in enumerate(["manifest Doe_Jane_cases.csv", "roi 1", "dicom Smith_John_2024"]):
            connection.execute(text(
                "INSERT INTO audit_events (at, \"user\", action, target, detail) VALUES "
                "(:at, 'alice', :action, :target, '{}')"),
                {"at": f"2026-11-2{n} 10:00:00.12345{n}", "action": "import" if n != 1 else "exclude",
                 "target": target})
    engine.dispose()
    workspace = open_workspace(tmp_path / "upgraded", database_url)
    try:
        assert verify_audit_chain(workspace) == (3, None)
        with workspace.sessions() as session:
            targets = list(session.scalars(select(AuditEvent.target).order_by(AuditEvent.id)))
        assert targets == ["manifest (name removed)", "roi 1", "dicom (name removed)"]
        add_user(workspace, "alice", "a long passphrase", role="admin", by="cli")  # new events join the chain
        assert verify_audit_chain(workspace) == (4, None)
    finally:
        workspace.engine.dispose()


# ------------------------------------------------------------------------------------------ no PHI in names ---
NAMES = ["Wojcik_Halina_1958", "Ndlovu-Thandiwe-MRN8831", "Kowalczyk_Study_Folder", "Okonkwo_cases",
         "Papadopoulou_labels", "Lindqvist_Upload_2024", "Fitzgerald_MIAS_copy"]


def _every_trace(workspace, backup: Path | None = None) -> str:
    """Everything stored: every row, every file's name and content in the data directory, and a backup."""
    rows, _ = _snapshot(workspace)
    text = json.dumps(rows, default=str)
    for path in workspace.data_dir.rglob("*"):
        text += "\n" + str(path.relative_to(workspace.data_dir))
        if path.is_file():
            text += path.read_bytes().decode("latin-1")
    if backup is not None:
        text += backup.read_bytes().decode("latin-1")
    return text


def test_no_file_or_folder_name_a_user_gave_is_stored(workspace, tmp_path, mias_dir):
    import numpy as np
    from PIL import Image as PILImage

    from cadx.workflows import import_dicom_folder, import_manifest, import_mias, import_upload
    from tests.dicom_factory import disk_image, write_mammogram
    from tests.test_import_files import _write_csv

    # A manifest of PNGs, in folders and files named after patients.
    study = tmp_path / NAMES[2]
    study.mkdir()
    image = np.zeros((600, 700), dtype=np.uint16)
    image[200:260, 300:360] = 40000
    PILImage.fromarray(image).save(study / f"{NAMES[0]}.png")
    manifest = _write_csv(study / f"{NAMES[3]}.csv", [
        {"image": f"{NAMES[0]}.png", "patient": "P1", "lesion": "L1", "label": "benign", "centre_x": 329.5,
         "centre_y": 229.5, "pixel_size_mm": 0.2},
        {"image": "absent_file.png", "patient": "P1", "lesion": "L2", "label": "benign", "centre_x": 10,
         "centre_y": 10, "pixel_size_mm": 0.2},
    ])
    assert import_manifest(workspace, manifest, user="ana", skip_errors=True).n_imported == 1
    # A DICOM folder with a labels file; one file not listed.
    dicoms = tmp_path / f"{NAMES[1]}"
    write_mammogram(dicoms / f"{NAMES[1]}.dcm", disk_image((400, 400), (200, 200), 30), pixel_spacing=(0.1, 0.1))
    write_mammogram(dicoms / f"{NAMES[0]}_unlisted.dcm", disk_image((400, 400), (190, 200), 30))
    labels = _write_csv(tmp_path / f"{NAMES[4]}.csv", [
        {"file": f"{NAMES[1]}.dcm", "lesion": "L9", "label": "malignant", "centre_x": 200, "centre_y": 200}])
    assert import_dicom_folder(workspace, dicoms, labels, user="ana").n_imported == 1
    # A browser upload named after the patient.
    data = write_mammogram(tmp_path / "up.dcm", disk_image((420, 400), (210, 200), 25)).read_bytes()
    assert import_upload(workspace, data, filename=f"study.zip/{NAMES[5]}/1.dcm", patient="P7", lesion="L1",
                         label="benign", centre_rc=(210.0, 200.0), user="ana").committed
    # A partial MIAS copy in a folder named after a person (rows for absent images are reported as skipped).
    mias = tmp_path / NAMES[6]
    mias.mkdir()
    (mias / "Info.txt").write_bytes((mias_dir / "Info.txt").read_bytes())
    (mias / "mdb001.pgm").symlink_to(mias_dir / "mdb001.pgm")
    assert import_mias(workspace, mias, user="ana").n_imported == 1

    backup_workspace(workspace, tmp_path / "b.tar", key=KEY)
    stored = _every_trace(workspace, tmp_path / "b.tar")
    for name in NAMES + [str(tmp_path), "absent_file", "up.dcm"]:
        assert name not in stored, f"{name!r} is stored"
    # Nor an unkeyed hash of a name (reversible by hashing candidate names), in any of the usual forms.
    for name in [f"{NAMES[0]}.png", f"{NAMES[1]}.dcm", f"{NAMES[0]}_unlisted.dcm", "1.dcm", f"{NAMES[3]}.csv",
                 NAMES[1], NAMES[2], NAMES[6]]:
        digest = hashlib.sha256(name.encode()).hexdigest()
        assert digest[:12] not in stored, f"an unkeyed hash of {name!r} is stored"
    # The names are keyed pseudonyms of this installation: the same name gives the same pseudonym here only.
    with workspace.sessions() as session:
        sources = set(session.scalars(text("SELECT source FROM import_runs")))
        lesion_sources = set(session.scalars(select(Lesion.pathology_source)))
    assert len(sources) == 4 and all(s.startswith(("file-", "folder-")) for s in sources), sources
    assert any(s.startswith("manifest file-") for s in lesion_sources), lesion_sources


# ------------------------------------------------------------------------------------------- orphan files ---
def _plant_orphans(workspace) -> list[str]:
    orphans = ["rois/ff/" + "f" * 64 + ".png", "truth/ee/" + "e" * 64 + ".png",
               "segmentations/dd/" + "d" * 64 + "-v1.png", "rois/ff/.tmp-killed"]
    for relative in orphans:
        path = workspace.data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind by a killed import")
    return orphans


def _committed_files(workspace) -> dict[str, bytes]:
    from db.models import Roi, Segmentation

    with workspace.sessions() as session:
        names = set(session.scalars(select(Roi.file))) | set(session.scalars(select(Roi.truth_mask_file)))
        names |= set(session.scalars(select(Segmentation.mask_file)))
    names.discard(None)
    return {name: (workspace.data_dir / name).read_bytes() for name in sorted(names)}


def test_gc_removes_only_orphans_and_reports_them(workspace_cache, workspace):
    from db.models import Roi, Segmentation

    workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=3)
    with workspace.sessions.begin() as session:  # a committed segmentation mask, as a sweep stores it
        sha = session.scalars(select(Roi.sha256)).first()
        mask = f"segmentations/{sha[:2]}/{sha}-test.png"
        (workspace.data_dir / mask).parent.mkdir(parents=True, exist_ok=True)
        (workspace.data_dir / mask).write_bytes(b"mask")
        session.add(Segmentation(roi_sha256=sha, version="test", quality="ok", mask_file=mask, features={}))
    committed = _committed_files(workspace)
    assert any(n.startswith("truth/") for n in committed) and mask in committed
    orphans = _plant_orphans(workspace)
    env = {"CADX_DATABASE_URL": workspace.engine.url.render_as_string(hide_password=False),
           "CADX_DATA_DIR": str(workspace.data_dir)}
    data_dir = str(workspace.data_dir)

    result = runner.invoke(app, ["gc", "--dry-run", "--data-dir", data_dir], env=env)
    assert result.exit_code == 0, result.output
    assert "3 orphan file(s) and 1 temporary file(s) would be removed" in " ".join(result.output.split())
    assert all((workspace.data_dir / o).exists() for o in orphans)  # a dry run removes nothing

    result = runner.invoke(app, ["gc", "--data-dir", data_dir, "--user", "admin"], env=env)
    assert result.exit_code == 0, result.output
    text_out = " ".join(result.output.split())
    assert all(f"removed {o}" in text_out for o in orphans)
    assert f"{len(committed)} file(s) in use kept" in text_out
    assert not any((workspace.data_dir / o).exists() for o in orphans)
    assert _committed_files(workspace) == committed  # every committed file is still there, unchanged
    with workspace.sessions() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "gc")).one()
    from cadx.workflows.accounts import cli_actor

    assert event.user == cli_actor("admin") and event.detail == {"orphans": 3, "temporaries": 1}  # + the OS account


def test_gc_never_touches_the_files_of_a_running_import(workspace):
    import numpy as np

    from cadx.workflows.gc import collect_garbage
    from cadx.workflows.importing import store_roi_png
    from cadx.workflows.storage import writing_files

    with writing_files(workspace.data_dir):  # an import between writing its ROI file and committing its rows
        relative, _, _ = store_roi_png(workspace.data_dir, np.full((512, 512), 7, np.uint16))
        report = collect_garbage(workspace)
        assert report.busy and not report.removed
        assert (workspace.data_dir / relative).exists()
    assert collect_garbage(workspace).removed == [relative]  # once it is gone without committing: an orphan


_KILLED_IMPORT = """
import os, sys
from cadx.workflows import import_manifest, open_workspace
workspace = open_workspace(sys.argv[1], sys.argv[2])
def progress(done, total, message):
    if message == "writing to the database":  # every ROI file written, no row committed yet
        os._exit(9)
import_manifest(workspace, sys.argv[3], user="ana", progress=progress)
"""


@pytest.mark.slow
def test_files_of_a_killed_import_are_removed_at_the_next_start(workspace, tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image as PILImage

    from tests.test_import_files import _write_csv

    import_demo(workspace, n_lesions=1, seed=2)
    committed = _committed_files(workspace)
    image = np.zeros((600, 700), dtype=np.uint16)
    image[200:260, 300:360] = 40000
    PILImage.fromarray(image).save(tmp_path / "a.png")
    manifest = _write_csv(tmp_path / "m.csv", [
        {"image": "a.png", "patient": "P1", "lesion": "L1", "label": "benign", "centre_x": 329.5, "centre_y": 229.5,
         "pixel_size_mm": 0.2}])
    url = workspace.engine.url.render_as_string(hide_password=False)
    killed = subprocess.run([sys.executable, "-c", _KILLED_IMPORT, str(workspace.data_dir), url, str(manifest)],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr
    rois = sorted(p.relative_to(workspace.data_dir).as_posix() for p in (workspace.data_dir / "rois").rglob("*.png"))
    orphan = [r for r in rois if r not in committed]
    assert len(orphan) == 1  # the killed import's ROI file, used by no row

    reopened = open_workspace(workspace.data_dir, url)  # the next start: a cheap check finds the dead writer
    try:
        assert reopened.collected is not None and reopened.collected.removed == orphan
        assert not (workspace.data_dir / orphan[0]).exists()
        assert _committed_files(reopened) == committed
        assert not os.listdir(workspace.data_dir / ".writers")
        again = open_workspace(workspace.data_dir, url)
        assert again.collected is None  # nothing to do: no dead writer
        again.engine.dispose()
    finally:
        reopened.engine.dispose()


# ------------------------------------------------------------------------------ contradictory or bad input ---
def _png(path: Path) -> Path:
    import numpy as np
    from PIL import Image as PILImage

    image = np.zeros((600, 700), dtype=np.uint16)
    image[200:260, 300:360] = 40000
    PILImage.fromarray(image).save(path)
    return path


def _row(**changes) -> dict:
    return {"image": "a.png", "patient": "P1", "lesion": "L1", "label": "benign", "centre_x": 329.5,
            "centre_y": 229.5, "pixel_size_mm": 0.2, **changes}


def test_one_image_with_two_pixel_sizes_is_an_error(workspace, tmp_path):
    from cadx.workflows import import_manifest
    from tests.test_import_files import _write_csv

    _png(tmp_path / "a.png")
    manifest = _write_csv(tmp_path / "m.csv", [_row(), _row(lesion="L2", pixel_size_mm=0.1)])
    with pytest.raises(CadxInputError, match=r"m.csv, row 3, column 'pixel_size_mm'.*0.1 mm.*row 2 gives 0.2 mm"):
        import_manifest(workspace, manifest, user="ana")
    # the same size written differently is one size
    manifest = _write_csv(tmp_path / "m2.csv", [_row(), _row(lesion="L2", pixel_size_mm="0.20")])
    assert import_manifest(workspace, manifest, user="ana").n_imported == 2


def _dicom_bits(path: Path, *, bits_stored: int, extra_bytes: int = 0) -> Path:
    import pydicom

    from tests.dicom_factory import disk_image, write_mammogram

    write_mammogram(path, disk_image((300, 300), (150, 150), 30), extra={"BitsStored": bits_stored,
                                                                        "HighBit": bits_stored - 1})
    if extra_bytes:
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData + b"\0" * extra_bytes
        ds.save_as(path)
    return path


def test_pixel_values_beyond_bits_stored_are_an_error(tmp_path):
    from cadx import io as cadx_io
    from cadx.errors import ImageReadError

    # values up to 3000 (12 bits) declared as 4-bit and 8-bit data: reading them masked would give a flat image
    for bits in (4, 8):
        with pytest.raises(ImageReadError, match=f"values up to 3000 do not fit the file's BitsStored {bits}"):
            cadx_io.read_image(_dicom_bits(tmp_path / f"b{bits}.dcm", bits_stored=bits))
    assert cadx_io.read_image(_dicom_bits(tmp_path / "b12.dcm", bits_stored=12)).value_range == (0.0, 4095.0)


def test_over_long_pixel_data_is_an_error(tmp_path):
    from cadx import io as cadx_io
    from cadx.errors import ImageReadError

    with pytest.raises(ImageReadError, match=r"pixel data is too long: 181000 bytes, but 300 rows x 300 columns x "
                                             r"16 bits need 180000"):
        cadx_io.read_image(_dicom_bits(tmp_path / "long.dcm", bits_stored=12, extra_bytes=1000))


@pytest.mark.parametrize("column, value, problem", [
    ("lesion", "L" * 129, "the lesion key has 129 characters; at most 128"),
    ("patient", "P" * 65, "the patient key has 65 characters; at most 64"),
    ("lesion", "L1\x07", r"the lesion key contains a control character \(U\+0007\)"),
    ("patient", "P\u200b1", r"the patient key contains a control character \(U\+200B\)"),
    ("view", "MLO\x1b[31m", r"the view contains a control character \(U\+001B\)"),  # lesion types: a closed list
    ("view", "V" * 17, "the view has 17 characters; at most 16"),
])
def test_overlong_keys_and_control_characters_are_clear_errors(workspace, tmp_path, column, value, problem):
    from cadx.workflows import import_manifest
    from tests.test_import_files import _write_csv

    _png(tmp_path / "a.png")
    manifest = _write_csv(tmp_path / "m.csv", [_row(**{column: value})])
    before = _snapshot(workspace)
    report = import_manifest(workspace, manifest, user="ana")
    assert not report.committed and [i.name for i in report.errors][0].endswith("row 2")
    assert __import__("re").search(problem, report.errors[0].reason), report.errors[0].reason
    assert "Fix:" in report.errors[0].reason and _snapshot(workspace) == before


def test_a_folder_given_as_an_image_says_it_is_a_folder(workspace, tmp_path):
    from cadx.workflows import import_manifest
    from tests.test_import_files import _write_csv

    (tmp_path / "scans").mkdir()
    manifest = _write_csv(tmp_path / "m.csv", [_row(image="scans")])
    report = import_manifest(workspace, manifest, user="ana")
    assert "is a folder, not an image file" in report.errors[0].reason


def test_a_long_manifest_shows_progress_while_it_is_checked(workspace, tmp_path):
    from cadx.workflows import import_manifest

    lines = ["image,patient,lesion,label,centre_x,centre_y,pixel_size_mm"]
    lines += [f"a{n}.png,P{n},L1,benign,10,10,0.1" for n in range(30000)]
    lines.append("last.png,P,L1,not-a-label,10,10,0.1")  # found only at the end
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    steps = []
    with pytest.raises(CadxInputError, match="row 30002, column 'label'"):
        import_manifest(workspace, tmp_path / "long.csv", user="ana", progress=lambda *s: steps.append(s))
    assert steps[0][2] == "checking the manifest" and steps[0][0] == 0
    checked = [s[0] for s in steps if s[2] == "checking the manifest"]
    assert len(checked) >= 3 and checked == sorted(checked) and checked[-1] >= 20000


# ------------------------------------------------------------------------------ sign-in state stays out ---
def test_a_backup_carries_no_sign_in_state(workspace, tmp_path):
    from cadx.workflows.accounts import authenticate, start_session

    import_demo(workspace, n_lesions=2, seed=4)
    add_user(workspace, "alice", "correct horse battery", role="admin", by="test")
    token = start_session(workspace, "alice")
    assert authenticate(workspace, "alice", "wrong password here", client="10.0.0.9") is None
    with workspace.sessions() as session:  # the state exists in the workspace itself
        assert session.execute(text("SELECT COUNT(*) FROM auth_sessions")).scalar() == 1
        assert session.execute(text("SELECT COUNT(*) FROM sign_in_attempts")).scalar() >= 1
    backup_workspace(workspace, tmp_path / "b.tar", key=KEY)
    members = _members(tmp_path / "b.tar")
    manifest = json.loads(members["manifest.json"])
    assert "users" in manifest["tables"] and "audit_events" in manifest["tables"]
    assert not {"auth_sessions", "sign_in_attempts"} & set(manifest["tables"])
    assert not [name for name in members if "auth_sessions" in name or "sign_in_attempts" in name]
    fresh = _fresh(tmp_path)
    restore_workspace(fresh, tmp_path / "b.tar", key=KEY)
    from cadx.workflows.accounts import session_account

    assert session_account(fresh, token) is None  # everyone signs in again on the restored workspace
    with fresh.sessions() as session:
        assert session.execute(text("SELECT username FROM users")).scalars().all() == ["alice"]


def test_a_session_smuggled_into_a_signed_backup_does_not_sign_anyone_in(workspace, tmp_path):
    # A backup signed with a key its maker holds (a collaborator's lab), made by an older cadx that still wrote
    # auth_sessions, or crafted: its session row names a token the maker knows. Restore must not bring it in.
    from cadx.workflows.accounts import session_account

    import_demo(workspace, n_lesions=2, seed=4)
    add_user(workspace, "alice", "correct horse battery", role="admin", by="test")
    backup_workspace(workspace, tmp_path / "b.tar", key=KEY)
    known_token = "token-the-backup-maker-knows"

    def smuggle(tables):
        alice = next(u for u in tables["users"] if u["username"] == "alice")
        tables["auth_sessions"] = [{
            "id": 1, "token_sha256": hashlib.sha256(known_token.encode()).hexdigest(), "user_id": alice["id"],
            "created_at": {"__datetime__": "2026-01-01T00:00:00+00:00"},
            "expires_at": {"__datetime__": "2099-01-01T00:00:00+00:00"}, "revoked_at": None}]

    crafted = _tampered(tmp_path / "b.tar", tmp_path, smuggle, key=KEY)
    fresh = _fresh(tmp_path)
    restore_workspace(fresh, crafted, key=KEY)
    with fresh.sessions() as session:
        assert session.execute(text("SELECT COUNT(*) FROM auth_sessions")).scalar() == 0
        assert session.execute(text("SELECT COUNT(*) FROM users")).scalar() == 1  # the rest is restored
    assert session_account(fresh, known_token) is None


@pytest.mark.slow
def test_a_whole_workspace_is_owner_only_under_a_permissive_umask(tmp_path):
    # issue 26.3: mkdir(mode=0o700, parents=True) set the last folder only, open_memmap / np.save / write_text used
    # the umask. Under 022 (files 0644, folders 0755 unless cadx says otherwise) run every kind of writer: import,
    # both feature stores and the decoded-ROI cache, a sweep, the layer explorer's cache, a report, a backup.
    from cadx.workflows.explorer import explorer_activations, explorer_rois
    from cadx.workflows.features import resolve_backbone

    data = tmp_path / "deep" / "data"  # parents cadx creates too
    previous = os.umask(0o022)
    try:
        common = ["--data-dir", str(data)]
        commands = [
            ["demo", "--lesions", "12", "--seed", "2"],
            ["extract", "--backbone", "alexnet", "--weights", "random", "--taps", "fc7,fc8", "--decoded-cache"],
            ["features"],
            ["sweep", "--backbone", "alexnet", "--weights", "random", "--taps", "fc7,fc8", "--tap", "fc8",
             "--repeats", "1", "--min-lesions-per-fold", "1"],
            ["report", "1", "--out", str(data / "exports" / "reports" / "study.html")],
            ["backup", str(tmp_path / "backup.tar")],
        ]
        for command in commands:
            result = runner.invoke(app, [*command, *common])
            assert result.exit_code == 0, (command, result.output)
        workspace = open_workspace(data)
        try:
            loaded, _ = resolve_backbone("alexnet", weights="random")
            _, cached = explorer_activations(workspace, loaded, int(explorer_rois(workspace, 1)["roi_id"].iloc[0]))
            assert not cached
        finally:
            workspace.engine.dispose()
    finally:
        os.umask(previous)
    found = {}
    for root, dirs, files in os.walk(tmp_path / "deep"):
        for name in [*dirs, *files]:
            path = Path(root) / name
            found[path.relative_to(tmp_path).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    found["backup.tar"] = stat.S_IMODE((tmp_path / "backup.tar").stat().st_mode)
    for store in ("data/features/", "data/cache/decoded-rois/", "data/rois/", "data/exports/reports/study.html",
                  "data/cadx.sqlite", "data/backup.key", "data/pseudonym.key"):
        assert any(p.startswith(f"deep/{store}") for p in found), store  # every kind of writer did write
    assert any(p.endswith(".npy") for p in found) and any(p.endswith(".npz") for p in found)
    readable = {path: oct(mode) for path, mode in found.items() if mode & 0o077}
    assert not readable
