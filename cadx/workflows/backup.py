"""Backup and restore of a workspace: every database row and every stored file, verified by SHA-256.

A backup is a tar archive holding ``manifest.json`` (format version, schema revision, row counts, the SHA-256 of
every file), ``tables/<table>.jsonl`` (every row, engine-neutral, so a SQLite workspace restores into PostgreSQL and
back) and ``files/...`` (ROIs, true outlines, segmentation masks; the CNN feature store only when asked, as it can
be re-extracted) and ``secrets/pseudonym.key``: the installation's key for DICOM patient pseudonyms, without which
a restored workspace would give the next DICOM of a known patient a new pseudonym, i.e. make them a second patient
(and put one woman's views on both sides of a patient-grouped split). Leave it out (``include_pseudonym_key=False``)
only for a copy that leaves the lab. Restore refuses a non-empty target, checks every hash before writing anything,
and writes the rows in one transaction.

**Tamper evidence.** SHA-256s alone only catch damage: whoever edits a backup (flips labels, adds an admin, deletes
audit events) can recompute them. So ``manifest.hmac`` holds an HMAC-SHA256 of ``manifest.json`` made with the
installation's *backup key* (``backup.key`` in the data directory, created on the first backup, or a key file
given with ``--key-file`` / ``$CADX_BACKUP_KEY_FILE``), which is never inside the backup; restore needs that key and
refuses a backup whose manifest it does not authenticate. The audit trail's hash chain (:mod:`db.audit_chain`) is
checked too. **Untrusted archives.** A backup from elsewhere is untrusted input: every member must be a regular
file under a known, relative name; every stored file must resolve inside the target data directory; links, devices,
FIFOs, absolute paths and ``..`` are refused, and a truncated or corrupt archive is a one-line error. Backups are
written readable by their owner only (0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import tarfile
import tempfile
import zlib
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, overload

from alembic.migration import MigrationContext
from sqlalchemy import func, insert, select, text

from cadx.errors import CadxInputError
from cadx.workflows.importing import Progress
from cadx.workflows.storage import writing_files
from cadx.workflows.workspace import PSEUDONYM_KEY_BYTES, Workspace, _create_key_file, make_private_dirs
from db.audit_chain import first_break
from db.models import Base

__all__ = ["backup_workspace", "restore_workspace", "BACKUP_FORMAT", "BACKUP_KEY_FILE", "BACKUP_KEY_ENV",
           "load_backup_key", "workspace_backup_key", "backup_key_id"]

BACKUP_FORMAT = 2  # 2: manifest authenticated by manifest.hmac, audit events chained
BACKUP_KEY_FILE = "backup.key"  # in the data directory; never put into a backup
BACKUP_KEY_ENV = "CADX_BACKUP_KEY_FILE"
_BACKUP_KEY_BYTES = 32
_FILE_DIRS = ("rois", "truth", "segmentations")
_FEATURE_DIR = "features"
_KEY_MEMBER = "secrets/pseudonym.key"
_MANIFEST = "manifest.json"
_SIGNATURE = "manifest.hmac"
_SAFE_PART = re.compile(r"^[A-Za-z0-9._-]+$")
_KEY_FIX = (f"give the backup key of the installation that made the backup: its data directory's {BACKUP_KEY_FILE} "
            f"(`cadx restore --key-file PATH`, or ${BACKUP_KEY_ENV})")


def load_backup_key(path: str | Path) -> bytes:
    """Read a backup key file (64 hex digits, as cadx writes it); a clear error for anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        raise CadxInputError(str(path), "the backup key file does not exist", _KEY_FIX) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CadxInputError(str(path), f"not a cadx backup key ({type(exc).__name__})", _KEY_FIX) from None
    if len(key) != _BACKUP_KEY_BYTES:
        raise CadxInputError(str(path), f"the backup key has {len(key)} bytes, not {_BACKUP_KEY_BYTES}", _KEY_FIX)
    return key


@overload
def workspace_backup_key(workspace: Workspace, *, create: Literal[True] = ...) -> bytes: ...
@overload
def workspace_backup_key(workspace: Workspace, *, create: bool) -> bytes | None: ...
def workspace_backup_key(workspace: Workspace, *, create: bool = True) -> bytes | None:
    """The installation's backup key: ``$CADX_BACKUP_KEY_FILE`` when set, else ``backup.key`` in the data
    directory, created (owner-only, 0600) on first use when ``create``; None when there is none and not ``create``."""
    given = os.environ.get(BACKUP_KEY_ENV)
    if given:
        return load_backup_key(given)
    path = workspace.data_dir / BACKUP_KEY_FILE
    if not path.exists():
        if not create:
            return None
        _create_key_file(path, secrets.token_bytes(_BACKUP_KEY_BYTES).hex().encode() + b"\n")
    return load_backup_key(path)


def backup_key_id(key: bytes) -> str:
    """A short public name of a backup key (names it in messages without revealing it)."""
    return hmac.new(key, b"cadx backup key id", hashlib.sha256).hexdigest()[:16]


def _sign(key: bytes, manifest_bytes: bytes) -> bytes:
    return json.dumps({"algorithm": "HMAC-SHA256", "key_id": backup_key_id(key),
                       "hmac": hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()}).encode()


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


# This server's sign-in state (hashes of session tokens, sign-in throttling counters) and its workspace identity
# (the restored workspace keeps its own, see cadx.workflows.opening): never written to a backup,
# and ignored in one made by an older cadx, so that a restored workspace starts with everyone signed out and a
# backup from elsewhere cannot carry a session whose token its maker knows.
_SERVER_STATE_TABLES = frozenset({"auth_sessions", "sign_in_attempts", "workspace_identity"})


def _backed_up_tables() -> list[Any]:
    return [table for table in Base.metadata.sorted_tables if table.name not in _SERVER_STATE_TABLES]


def backup_workspace(workspace: Workspace, target: str | Path, *, include_features: bool = False,
                     include_pseudonym_key: bool = True, key: bytes | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Write a verified, authenticated backup archive of ``workspace`` to ``target`` (a ``.tar`` file, 0600).

    ``key`` authenticates the manifest (default: :func:`workspace_backup_key`, created on the first backup); keep a
    copy of it away from the backups: restoring needs it. Returns the manifest, with ``"key_id"`` added.
    ``progress(done, total, message)`` is called per table and per stored file.
    """
    target = Path(target)
    if target.exists():
        raise CadxInputError(str(target), "already exists", "choose a new file name; backups never overwrite")
    key = workspace_backup_key(workspace) if key is None else key
    if len(key) != _BACKUP_KEY_BYTES:
        raise CadxInputError("backup key", f"has {len(key)} bytes, not {_BACKUP_KEY_BYTES}", _KEY_FIX)
    manifest: dict[str, Any] = {"format": BACKUP_FORMAT, "schema_revision": _revision(workspace), "tables": {},
                                "files": {}}
    partial = target.with_name(target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as archive:
        # One read transaction for all tables, so the rows are consistent with each other.
        with workspace.engine.connect() as connection, connection.begin():
            for table in _backed_up_tables():
                rows = connection.execute(select(table).order_by(*table.primary_key.columns)).mappings().all()
                payload = "".join(json.dumps({k: _encode(v) for k, v in row.items()}, sort_keys=True) + "\n"
                                  for row in rows).encode()
                _add(archive, f"tables/{table.name}.jsonl", payload)
                manifest["tables"][table.name] = {"rows": len(rows), "sha256": _sha256(payload)}
                _report(progress, len(manifest["tables"]), len(_backed_up_tables()), f"table {table.name}")
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
            pseudonym_key = workspace.pseudonym_key()
            _add(archive, _KEY_MEMBER, pseudonym_key)
            manifest["pseudonym_key_sha256"] = _sha256(pseudonym_key)
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
        _add(archive, _MANIFEST, manifest_bytes)
        _add(archive, _SIGNATURE, _sign(key, manifest_bytes))
    partial.rename(target)
    return {**manifest, "key_id": backup_key_id(key)}


def _report(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


class _Damaged(Exception):
    """Reading the archive failed: truncated, corrupt or not a tar file."""


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why an archive member is refused, or None for a regular file under a safe relative name."""
    if not member.isreg():
        kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk() else
                "a FIFO" if member.isfifo() else "a device" if member.isdev() else
                "a folder" if member.isdir() else "not a regular file")
        return f"is {kind}; cadx backups hold regular files only"
    return _name_problem(member.name)


def _name_problem(name: str) -> str | None:
    if not isinstance(name, str) or not name:
        return "has no name"
    if name.startswith("/") or "\\" in name or "\0" in name:
        return "is an absolute or non-POSIX path"
    parts = name.split("/")
    if any(part in ("", ".", "..") or not _SAFE_PART.match(part) for part in parts):
        return "is not a plain relative path (empty part, '.', '..' or unusual characters)"
    return None


def _stored_file_target(workspace: Workspace, relative: Any, allowed: tuple[str, ...]) -> Path:
    """Where a manifest's stored file goes: strictly inside the data directory, under one of ``allowed``."""
    problem = _name_problem(relative) if isinstance(relative, str) else "is not a path"
    if problem is None and relative.split("/")[0] not in allowed:
        problem = f"is outside the stored-file folders {list(allowed)}"
    root = workspace.data_dir.resolve()
    if problem is None:
        path: Path = (root / relative).resolve()
        if path == root or not path.is_relative_to(root):
            problem = "resolves outside the target data directory"
    if problem is not None:
        raise CadxInputError("backup manifest", f"the stored file {relative!r} {problem}",
                             "the backup was crafted or damaged; restore only backups made by `cadx backup`")
    return path


def restore_workspace(workspace: Workspace, source: str | Path, *, key: bytes | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Restore a backup into an EMPTY workspace, verifying its authenticity and every table and file hash first.

    ``key`` is the backup key of the installation that made the backup (default: :func:`workspace_backup_key` of
    this workspace, without creating one). The backup's pseudonym key, when it has one, replaces the new
    workspace's (nothing was pseudonymised with that yet: the workspace is empty). Returns the manifest;
    ``manifest["pseudonym_key_restored"]`` says which happened. Nothing is written unless everything checks out.
    """
    source = Path(source)
    with workspace.sessions() as session:
        if any(session.scalar(select(func.count()).select_from(t)) for t in _backed_up_tables()):
            raise CadxInputError(str(workspace.data_dir), "the target workspace is not empty",
                                 "restore into a new data directory (and an empty database)")
    if key is None:
        key = workspace_backup_key(workspace, create=False)
        if key is None:
            raise CadxInputError(str(source), "restoring needs the backup key, and none was given", _KEY_FIX)
    try:
        manifest, tables, files, pseudonym_key = _read_verified(workspace, source, key, progress)
    except _Damaged as exc:
        raise CadxInputError(str(source), f"the backup is truncated or corrupt ({exc})",
                             "use an intact copy of the backup (compare its size with the original)") from None
    # Everything verified: now write the key and the files (owner-only), then all rows in one transaction.
    with writing_files(workspace.data_dir):
        _write_restored(workspace, tables, files, pseudonym_key, progress)
    manifest["pseudonym_key_restored"] = pseudonym_key is not None
    return manifest


def _write_restored(workspace: Workspace, tables: dict[str, list[dict[str, Any]]], files: dict[Path, bytes],
                    pseudonym_key: bytes | None, progress: Progress | None) -> None:
    if pseudonym_key is not None:
        fd, staged = tempfile.mkstemp(dir=workspace.data_dir, prefix=".tmp-key-")  # private (0600), then renamed
        with os.fdopen(fd, "wb") as handle:
            handle.write(pseudonym_key)
        os.replace(staged, workspace.pseudonym_key_path)
    for done, (path, data) in enumerate(files.items(), start=1):
        make_private_dirs(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _report(progress, done, len(files), "writing stored files")
    _report(progress, 0, 1, "writing the database rows")
    with workspace.engine.begin() as connection:
        for table in _backed_up_tables():
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


def _read_verified(workspace: Workspace, source: Path, key: bytes, progress: Progress | None
                   ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], dict[Path, bytes], bytes | None]:
    """Open, check and read everything of the backup; raises CadxInputError (refused) or _Damaged (unreadable)."""
    refuse = "restore only backups made by `cadx backup`; this one was crafted or damaged"
    try:
        archive = tarfile.open(source, "r:")
    except FileNotFoundError:
        raise CadxInputError(str(source), "the backup file does not exist", "check the path") from None
    except IsADirectoryError:
        raise CadxInputError(str(source), "is a folder, not a backup file", "give the .tar file made by "
                             "`cadx backup`") from None
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise CadxInputError(str(source), f"not a readable cadx backup ({exc})",
                             "give a file made by `cadx backup`") from exc
    try:
        with archive:
            members: dict[str, tarfile.TarInfo] = {}
            for member in archive.getmembers():
                problem = _member_problem(member)
                if problem is not None:
                    raise CadxInputError(str(source), f"archive member {member.name!r} {problem}", refuse)
                if member.name in members:
                    raise CadxInputError(str(source), f"archive member {member.name!r} appears twice", refuse)
                members[member.name] = member

            def read(name: str) -> bytes:
                if name not in members:
                    raise CadxInputError(str(source), f"{name} is missing",
                                         "the backup is incomplete; use another copy")
                handle = archive.extractfile(members[name])
                data = handle.read() if handle is not None else b""
                if len(data) != members[name].size:
                    raise _Damaged(f"{name} is cut short")
                return data

            manifest_bytes = read(_MANIFEST)
            _check_signature(source, key, manifest_bytes, read(_SIGNATURE))
            manifest = _parse_manifest(source, manifest_bytes)
            if manifest["schema_revision"] != _revision(workspace):
                raise CadxInputError(str(source), f"made with schema {manifest['schema_revision']}, this cadx has "
                                     f"{_revision(workspace)}", "restore with the cadx version that made the "
                                     "backup, then upgrade")
            known = {table.name for table in Base.metadata.sorted_tables}
            tables: dict[str, list[dict[str, Any]]] = {}
            for name, info in manifest["tables"].items():
                if name not in known:
                    raise CadxInputError(str(source), f"unknown table {name!r} in the manifest", refuse)
                payload = read(f"tables/{name}.jsonl")
                if _sha256(payload) != info.get("sha256"):
                    raise CadxInputError(str(source), f"table {name} fails its checksum", "the backup is damaged")
                tables[name] = [json.loads(line) for line in payload.decode().splitlines() if line]
                if len(tables[name]) != info.get("rows"):
                    raise CadxInputError(str(source), f"table {name} has {len(tables[name])} rows, the manifest "
                                         f"says {info.get('rows')}", "the backup is damaged")
            broken = first_break({k: _decode(v) for k, v in row.items()} for row in tables.get("audit_events", []))
            if broken is not None:
                raise CadxInputError(str(source), f"the audit trail breaks at audit event {broken[0]}: {broken[1]}",
                                     "the audit trail was tampered with; restore an earlier backup")
            allowed = _FILE_DIRS + (_FEATURE_DIR,)
            files: dict[Path, bytes] = {}
            for done, (relative, digest) in enumerate(manifest["files"].items(), start=1):
                path = _stored_file_target(workspace, relative, allowed)
                data = read(f"files/{relative}")
                if _sha256(data) != digest:
                    raise CadxInputError(str(source), f"file {relative} fails its checksum", "the backup is damaged")
                files[path] = data
                _report(progress, done, len(manifest["files"]), "checking stored files")
            pseudonym_key = None
            if "pseudonym_key_sha256" in manifest:
                pseudonym_key = read(_KEY_MEMBER)
                if (_sha256(pseudonym_key) != manifest["pseudonym_key_sha256"]
                        or len(pseudonym_key) != PSEUDONYM_KEY_BYTES):
                    raise CadxInputError(str(source), "the pseudonym key fails its checksum", "the backup is damaged")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise _Damaged(str(exc) or type(exc).__name__) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, CadxInputError):
            raise
        raise CadxInputError(str(source), f"the backup's contents are malformed ({type(exc).__name__}: {exc})",
                             refuse) from None
    return manifest, tables, files, pseudonym_key


def _check_signature(source: Path, key: bytes, manifest_bytes: bytes, signature_bytes: bytes) -> None:
    try:
        signature = json.loads(signature_bytes)
        claimed_id, mac = str(signature["key_id"]), str(signature["hmac"])
    except (ValueError, KeyError, TypeError):
        raise CadxInputError(str(source), f"{_SIGNATURE} is malformed", "the backup is damaged") from None
    if claimed_id != backup_key_id(key):
        raise CadxInputError(str(source), f"the backup was signed with backup key {claimed_id}, and the key given is "
                             f"{backup_key_id(key)}", _KEY_FIX)
    if not hmac.compare_digest(mac, hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()):
        raise CadxInputError(str(source), "the manifest fails its authentication (HMAC): the backup was changed "
                             "after it was made", "restore an untouched copy; do not trust this one")


def _parse_manifest(source: Path, manifest_bytes: bytes) -> dict[str, Any]:
    manifest = json.loads(manifest_bytes)
    if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CadxInputError(str(source), f"backup format {found!r}", f"cadx reads format {BACKUP_FORMAT}")
    if not isinstance(manifest.get("tables"), dict) or not isinstance(manifest.get("files"), dict):
        raise CadxInputError(str(source), "the manifest lacks its tables or files", "the backup is damaged")
    return manifest
