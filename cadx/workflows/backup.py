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
import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Literal, overload

from alembic.migration import MigrationContext
from sqlalchemy import insert, select, text

from cadx.errors import CadxInputError
from cadx.workflows.gc import (
    RESTORE_PLACED_FILE,
    RESTORE_STAGING_PREFIX,
    WORKSPACE_STATE_TABLES,
    has_rows,
    remove_restored_files,
)
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
# Read from an archive before its HMAC is checked, so capped: a manifest lists 150-180 bytes per stored file (its
# name and SHA-256; 159 measured on the 20-lesion demo, feature chunks have longer names), so 64 MiB holds ~400,000
# stored files (over 100,000 ROIs with their outlines and segmentations; CBIS-DDSM has ~3,600 lesions), and reading
# that much takes well under a second. It is streamed (into the staging folder, through the HMAC) and parsed only
# once authenticated.
_MANIFEST_MAX_BYTES = 64 * 2**20
_SIGNATURE_MAX_BYTES = 4096  # {"algorithm", "key_id", "hmac"}: ~130 bytes
_COPY_BYTES = 2**20  # members are copied in pieces of this size, never read whole
_INSERT_ROWS = 1000  # rows inserted per statement (a restore holds at most this many rows decoded)
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


# This server's sign-in state (hashes of session tokens, sign-in throttling counters): never written to a backup,
# and ignored in one made by an older cadx, so that a restored workspace starts with everyone signed out and a
# backup from elsewhere cannot carry a session whose token its maker knows.
_SERVER_STATE_TABLES = WORKSPACE_STATE_TABLES


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
    # Written under a unique temporary name beside the target (0600, from mkstemp), renamed when complete.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.", suffix=".partial")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as archive:
            _write_archive(workspace, archive, manifest, key, include_features=include_features,
                           include_pseudonym_key=include_pseudonym_key, progress=progress)
        partial.rename(target)
    except BaseException:  # a full disk, a failed read, Ctrl-C: no half-written backup is left behind
        partial.unlink(missing_ok=True)
        raise
    return {**manifest, "key_id": backup_key_id(key)}


def _write_archive(workspace: Workspace, archive: tarfile.TarFile, manifest: dict[str, Any], key: bytes, *,
                   include_features: bool, include_pseudonym_key: bool, progress: Progress | None) -> None:
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
             if path.is_file() and not any(part.startswith(".tmp") for part in path.parts)]
    for done, path in enumerate(paths, start=1):
        relative = path.relative_to(workspace.data_dir).as_posix()
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # removed meanwhile by a failed import: no row of the snapshot uses it
            continue
        with handle:
            info = tarfile.TarInfo(f"files/{relative}")
            info.size = os.fstat(handle.fileno()).st_size
            hashing = _Hashing(handle)
            archive.addfile(info, hashing)  # streamed: a stored file is never held whole
        manifest["files"][relative] = hashing.hexdigest()
        _report(progress, done, len(paths), "backing up stored files")
    if include_pseudonym_key:
        pseudonym_key = workspace.pseudonym_key()
        _add(archive, _KEY_MEMBER, pseudonym_key)
        manifest["pseudonym_key_sha256"] = _sha256(pseudonym_key)
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    _add(archive, _MANIFEST, manifest_bytes)
    _add(archive, _SIGNATURE, _sign(key, manifest_bytes))


class _Hashing(io.RawIOBase):
    """A reader passing through what it reads, and its SHA-256."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle, self._hash = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


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
    """Why an archive member is refused, or None for a regular file under a safe relative name (from its header
    alone: nothing of its data is read)."""
    if member.issparse():  # tarfile would fill in its holes: a few KB in the archive can read as gigabytes
        return (f"is a sparse file (declaring {member.size:,} bytes); cadx backups hold no sparse files")
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

    Every member is streamed (hashed while it is copied into a staging folder in the data directory, never held
    whole), and moved into place only when all are verified; then the rows are written in one transaction. A
    restore that fails, or is killed, leaves nothing: the next opening of the workspace removes what a killed one
    had placed (:func:`cadx.workflows.gc.collect_garbage`), so the restore can simply be run again.
    """
    source = Path(source)
    if has_rows(workspace):
        raise CadxInputError(str(workspace.data_dir), "the target workspace is not empty",
                             "restore into a new data directory (and an empty database)")
    if key is None:
        key = workspace_backup_key(workspace, create=False)
        if key is None:
            raise CadxInputError(str(source), "restoring needs the backup key, and none was given", _KEY_FIX)
    # The writer marker makes a killed restore visible at the next opening, and keeps `cadx gc` from taking the
    # placed files for orphans before their rows are committed.
    with writing_files(workspace.data_dir), _staging_folder(workspace.data_dir) as staging:
        try:
            manifest, files, pseudonym_key = _read_verified(workspace, source, key, staging, progress)
        except _Damaged as exc:
            raise CadxInputError(str(source), f"the backup is truncated or corrupt ({exc})",
                                 "use an intact copy of the backup (compare its size with the original)") from None
        # Everything verified: now move the files into place (owner-only), write the key, then all rows at once.
        committed = False
        try:
            _write_restored(workspace, staging, manifest, files, pseudonym_key, progress)
            committed = True
        finally:
            if not committed:  # e.g. a full disk or a database error: take the placed files away again
                remove_restored_files(workspace.data_dir, staging)
    manifest["pseudonym_key_restored"] = pseudonym_key is not None
    return manifest


@contextlib.contextmanager
def _staging_folder(data_dir: Path) -> Iterator[Path]:
    """A private folder in the data directory (same file system, so moving a file into place is a rename)."""
    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=RESTORE_STAGING_PREFIX))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staged_rows(staging: Path, table: str) -> Iterator[dict[str, Any]]:
    """The rows of a staged table file, one at a time."""
    path = staging / "tables" / f"{table}.jsonl"
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError(f"a row of table {table} is {type(row).__name__}, not an object")
                yield row


def _write_restored(workspace: Workspace, staging: Path, manifest: dict[str, Any], files: dict[Path, Path],
                    pseudonym_key: bytes | None, progress: Progress | None) -> None:
    # Which files are placed, written before any is: what a failed or killed restore has to take away again.
    placed = [target.relative_to(workspace.data_dir).as_posix() for target in files.values()]
    (staging / RESTORE_PLACED_FILE).write_text(json.dumps(placed))
    for done, (staged, target) in enumerate(files.items(), start=1):
        make_private_dirs(target.parent)
        os.replace(staged, target)
        _report(progress, done, len(files), "writing stored files")
    if pseudonym_key is not None:
        fd, key_file = tempfile.mkstemp(dir=workspace.data_dir, prefix=".tmp-key-")  # private (0600), then renamed
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pseudonym_key)
            os.replace(key_file, workspace.pseudonym_key_path)
        except BaseException:
            Path(key_file).unlink(missing_ok=True)
            raise
    _report(progress, 0, 1, "writing the database rows")
    with workspace.engine.begin() as connection:
        for table in _backed_up_tables():
            if table.name not in manifest["tables"]:
                continue
            batch: list[dict[str, Any]] = []
            for row in _staged_rows(staging, table.name):
                batch.append({column.name: _decode(row.get(column.name)) for column in table.columns})
                if len(batch) == _INSERT_ROWS:
                    connection.execute(insert(table), batch)
                    batch = []
            if batch:
                connection.execute(insert(table), batch)
        if connection.dialect.name == "postgresql":  # keep the id sequences ahead of the restored ids
            for table in Base.metadata.sorted_tables:
                connection.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
    _report(progress, 1, 1, "database rows written")


def _copy_member(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, digest: Any) -> int:
    """Stream ``member`` into the new file ``target`` (0600) through ``digest``; returns the newlines seen."""
    handle = archive.extractfile(member)
    if handle is None:
        raise _Damaged(f"{member.name} cannot be read")
    copied = newlines = 0
    make_private_dirs(target.parent)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with handle, os.fdopen(fd, "wb") as out:
        while piece := handle.read(_COPY_BYTES):
            digest.update(piece)
            out.write(piece)
            copied += len(piece)
            newlines += piece.count(b"\n")
    if copied != member.size:
        raise _Damaged(f"{member.name} is cut short")
    return newlines


def _read_verified(workspace: Workspace, source: Path, key: bytes, staging: Path, progress: Progress | None
                   ) -> tuple[dict[str, Any], dict[Path, Path], bytes | None]:
    """Open and check the backup, copying its members into ``staging``; returns the manifest, the staged files
    (staged path -> target path) and the pseudonym key. Raises CadxInputError (refused) or _Damaged (unreadable)."""
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
            # Every header is checked before any member's data is read.
            members: dict[str, tarfile.TarInfo] = {}
            for member in archive.getmembers():
                problem = _member_problem(member)
                if problem is not None:
                    raise CadxInputError(str(source), f"archive member {member.name!r} {problem}", refuse)
                if member.name in members:
                    raise CadxInputError(str(source), f"archive member {member.name!r} appears twice", refuse)
                members[member.name] = member

            def member_named(name: str, *, max_bytes: int | None = None) -> tarfile.TarInfo:
                if name not in members:
                    raise CadxInputError(str(source), f"{name} is missing",
                                         "the backup is incomplete; use another copy")
                if max_bytes is not None and members[name].size > max_bytes:
                    raise CadxInputError(str(source), f"{name} is {members[name].size:,} bytes, over the "
                                         f"{max_bytes:,} a cadx backup's {name} can have", refuse)
                return members[name]

            def read_small(name: str, max_bytes: int) -> bytes:
                handle = archive.extractfile(member_named(name, max_bytes=max_bytes))
                data = handle.read(max_bytes + 1) if handle is not None else b""
                if len(data) != members[name].size:
                    raise _Damaged(f"{name} is cut short")
                return data

            mac = hmac.new(key, digestmod=hashlib.sha256)
            _copy_member(archive, member_named(_MANIFEST, max_bytes=_MANIFEST_MAX_BYTES), staging / _MANIFEST,
                         mac)
            _check_signature(source, key, mac.hexdigest(), read_small(_SIGNATURE, _SIGNATURE_MAX_BYTES))
            manifest = _parse_manifest(source, (staging / _MANIFEST).read_bytes())  # authenticated: now parsed
            if manifest["schema_revision"] != _revision(workspace):
                raise CadxInputError(str(source), f"made with schema {manifest['schema_revision']}, this cadx has "
                                     f"{_revision(workspace)}", "restore with the cadx version that made the "
                                     "backup, then upgrade")
            known = {table.name for table in Base.metadata.sorted_tables}
            for name, info in manifest["tables"].items():
                if name not in known:
                    raise CadxInputError(str(source), f"unknown table {name!r} in the manifest", refuse)
                digest = hashlib.sha256()
                _copy_member(archive, member_named(f"tables/{name}.jsonl"), staging / "tables" / f"{name}.jsonl",
                             digest)
                if digest.hexdigest() != info.get("sha256"):
                    raise CadxInputError(str(source), f"table {name} fails its checksum", "the backup is damaged")
                n_rows = sum(1 for _ in _staged_rows(staging, name))
                if n_rows != info.get("rows"):
                    raise CadxInputError(str(source), f"table {name} has {n_rows} rows, the manifest "
                                         f"says {info.get('rows')}", "the backup is damaged")
            broken = first_break({k: _decode(v) for k, v in row.items()}
                                 for row in _staged_rows(staging, "audit_events"))
            if broken is not None:
                raise CadxInputError(str(source), f"the audit trail breaks at audit event {broken[0]}: {broken[1]}",
                                     "the audit trail was tampered with; restore an earlier backup")
            allowed = _FILE_DIRS + (_FEATURE_DIR,)
            files: dict[Path, Path] = {}
            for done, (relative, digest_hex) in enumerate(manifest["files"].items(), start=1):
                path = _stored_file_target(workspace, relative, allowed)
                staged = staging / "files" / relative
                digest = hashlib.sha256()
                _copy_member(archive, member_named(f"files/{relative}"), staged, digest)
                if digest.hexdigest() != digest_hex:
                    raise CadxInputError(str(source), f"file {relative} fails its checksum", "the backup is damaged")
                files[staged] = path
                _report(progress, done, len(manifest["files"]), "checking stored files")
            pseudonym_key = None
            if "pseudonym_key_sha256" in manifest:
                pseudonym_key = read_small(_KEY_MEMBER, PSEUDONYM_KEY_BYTES)
                if (_sha256(pseudonym_key) != manifest["pseudonym_key_sha256"]
                        or len(pseudonym_key) != PSEUDONYM_KEY_BYTES):
                    raise CadxInputError(str(source), "the pseudonym key fails its checksum", "the backup is damaged")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _Damaged(str(exc) or type(exc).__name__) from None
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename).is_relative_to(staging):
            raise  # writing the staged copy failed (e.g. a full disk): not the backup's fault
        raise _Damaged(str(exc) or type(exc).__name__) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, CadxInputError):
            raise
        raise CadxInputError(str(source), f"the backup's contents are malformed ({type(exc).__name__}: {exc})",
                             refuse) from None
    return manifest, files, pseudonym_key


def _check_signature(source: Path, key: bytes, manifest_mac: str, signature_bytes: bytes) -> None:
    try:
        signature = json.loads(signature_bytes)
        claimed_id, mac = str(signature["key_id"]), str(signature["hmac"])
    except (ValueError, KeyError, TypeError):
        raise CadxInputError(str(source), f"{_SIGNATURE} is malformed", "the backup is damaged") from None
    if claimed_id != backup_key_id(key):
        raise CadxInputError(str(source), f"the backup was signed with backup key {claimed_id}, and the key given is "
                             f"{backup_key_id(key)}", _KEY_FIX)
    if not hmac.compare_digest(mac, manifest_mac):
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
