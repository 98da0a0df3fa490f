"""Backup and restore of a workspace: every database row and every stored file, verified by SHA-256.

A backup is a tar archive holding ``manifest.json`` (format version, schema revision, row counts, the SHA-256 of
every file), ``tables/<table>.jsonl`` (every row, engine-neutral, so a SQLite workspace restores into PostgreSQL and
back) and ``files/...`` (ROIs, true outlines, segmentation masks; the CNN feature store only when asked, as it can
be re-extracted) and ``secrets/pseudonym.key``: the installation's key for DICOM patient pseudonyms, without which
a restored workspace would give the next DICOM of a known patient a new pseudonym, i.e. make them a second patient
(and put one woman's views on both sides of a patient-grouped split). Leave it out (``include_pseudonym_key=False``)
only for a copy that leaves the lab. Restore refuses a non-empty target, checks every hash before writing anything,
and writes the rows in one transaction.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from alembic.migration import MigrationContext
from sqlalchemy import func, insert, select, text

from cadx.errors import CadxInputError
from cadx.workflows.importing import Progress
from cadx.workflows.workspace import PSEUDONYM_KEY_BYTES, Workspace
from db.models import Base

__all__ = ["backup_workspace", "restore_workspace", "BACKUP_FORMAT"]

BACKUP_FORMAT = 1
_FILE_DIRS = ("rois", "truth", "segmentations")
_FEATURE_DIR = "features"
_KEY_MEMBER = "secrets/pseudonym.key"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__datetime__" in value:
        return datetime.fromisoformat(value["__datetime__"])
    if isinstance(value, dict) and "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    return value


def _revision(workspace: Workspace) -> str | None:
    with workspace.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def backup_workspace(workspace: Workspace, target: str | Path, *, include_features: bool = False,
                     include_pseudonym_key: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Write a verified backup archive of ``workspace`` to ``target`` (a ``.tar`` file); returns its manifest.

    ``progress(done, total, message)`` is called per table and per stored file.
    """
    target = Path(target)
    if target.exists():
        raise CadxInputError(str(target), "already exists", "choose a new file name; backups never overwrite")
    manifest: dict[str, Any] = {"format": BACKUP_FORMAT, "schema_revision": _revision(workspace), "tables": {},
                                "files": {}}
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w") as archive:
        # One read transaction for all tables, so the rows are consistent with each other.
        with workspace.engine.connect() as connection, connection.begin():
            for table in Base.metadata.sorted_tables:
                rows = connection.execute(select(table).order_by(*table.primary_key.columns)).mappings().all()
                payload = "".join(json.dumps({k: _encode(v) for k, v in row.items()}, sort_keys=True) + "\n"
                                  for row in rows).encode()
                _add(archive, f"tables/{table.name}.jsonl", payload)
                manifest["tables"][table.name] = {"rows": len(rows), "sha256": _sha256(payload)}
                _report(progress, len(manifest["tables"]), len(Base.metadata.sorted_tables), f"table {table.name}")
        folders = _FILE_DIRS + ((_FEATURE_DIR,) if include_features else ())
        paths = [path for folder in folders if (workspace.data_dir / folder).exists()
                 for path in sorted((workspace.data_dir / folder).rglob("*"))
                 if path.is_file() and not path.name.startswith(".tmp")]
        for done, path in enumerate(paths, start=1):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed meanwhile by a failed import: no row of the snapshot uses it
                continue
            relative = path.relative_to(workspace.data_dir).as_posix()
            _add(archive, f"files/{relative}", data)
            manifest["files"][relative] = _sha256(data)
            _report(progress, done, len(paths), "backing up stored files")
        if include_pseudonym_key:
            key = workspace.pseudonym_key()
            _add(archive, _KEY_MEMBER, key)
            manifest["pseudonym_key_sha256"] = _sha256(key)
        _add(archive, "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    partial.rename(target)
    return manifest


def _report(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def restore_workspace(workspace: Workspace, source: str | Path, *, progress: Progress | None = None
                      ) -> dict[str, Any]:
    """Restore a backup into an EMPTY workspace, verifying every table and file hash first.

    The backup's pseudonym key, when it has one, replaces the new workspace's (nothing was pseudonymised with that
    yet: the workspace is empty). Returns the manifest; ``manifest["pseudonym_key_restored"]`` says which happened.
    """
    source = Path(source)
    with workspace.sessions() as session:
        if any(session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables):
            raise CadxInputError(str(workspace.data_dir), "the target workspace is not empty",
                                 "restore into a new data directory (and an empty database)")
    try:
        archive = tarfile.open(source, "r")
    except (OSError, tarfile.TarError) as exc:
        raise CadxInputError(str(source), f"not a readable cadx backup ({exc})", "give a file made by `cadx backup`") from exc
    with archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        for name in members:
            pure = PurePosixPath(name)
            if pure.is_absolute() or ".." in pure.parts:
                raise CadxInputError(str(source), f"unsafe path {name!r} in the archive", "use a backup made by cadx")

        def read(name: str) -> bytes:
            if name not in members:
                raise CadxInputError(str(source), f"{name} is missing", "the backup is incomplete; use another copy")
            return archive.extractfile(members[name]).read()

        manifest = json.loads(read("manifest.json"))
        if manifest.get("format") != BACKUP_FORMAT:
            raise CadxInputError(str(source), f"backup format {manifest.get('format')!r}", f"cadx reads format {BACKUP_FORMAT}")
        if manifest.get("schema_revision") != _revision(workspace):
            raise CadxInputError(str(source), f"made with schema {manifest.get('schema_revision')}, this cadx has "
                                 f"{_revision(workspace)}", "restore with the cadx version that made the backup, "
                                 "then upgrade")
        tables = {}
        for name, info in manifest["tables"].items():
            payload = read(f"tables/{name}.jsonl")
            if _sha256(payload) != info["sha256"]:
                raise CadxInputError(str(source), f"table {name} fails its checksum", "the backup is damaged")
            tables[name] = [json.loads(line) for line in payload.decode().splitlines() if line]
        files = {}
        for done, (relative, digest) in enumerate(manifest["files"].items(), start=1):
            data = read(f"files/{relative}")
            if _sha256(data) != digest:
                raise CadxInputError(str(source), f"file {relative} fails its checksum", "the backup is damaged")
            files[relative] = data
            _report(progress, done, len(manifest["files"]), "checking stored files")
        key = None
        if "pseudonym_key_sha256" in manifest:
            key = read(_KEY_MEMBER)
            if _sha256(key) != manifest["pseudonym_key_sha256"] or len(key) != PSEUDONYM_KEY_BYTES:
                raise CadxInputError(str(source), "the pseudonym key fails its checksum", "the backup is damaged")
    # Everything verified: now write files, then all rows in one transaction.
    if key is not None:
        fd, staged = tempfile.mkstemp(dir=workspace.data_dir, prefix=".tmp-key-")  # private (0600), then renamed
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        os.replace(staged, workspace.pseudonym_key_path)
    manifest["pseudonym_key_restored"] = key is not None
    for done, (relative, data) in enumerate(files.items(), start=1):
        path = workspace.data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        _report(progress, done, len(files), "writing stored files")
    _report(progress, 0, 1, "writing the database rows")
    with workspace.engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            rows = [{column.name: _decode(row.get(column.name)) for column in table.columns}
                    for row in tables.get(table.name, [])]
            if rows:
                connection.execute(insert(table), rows)
        if connection.dialect.name == "postgresql":  # keep the id sequences ahead of the restored ids
            for table in Base.metadata.sorted_tables:
                connection.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
    _report(progress, 1, 1, "database rows written")
    return manifest
