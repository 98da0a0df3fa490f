"""The workspace: a data directory plus its database, opened and upgraded once for the CLI or the app."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cadx.errors import CadxInputError
from cadx.private import make_private_dirs

__all__ = ["IMPORT_LOCK_FILE", "Workspace", "make_private_dirs", "private_sqlite_file"]

_PSEUDONYM_KEY_FILE = "pseudonym.key"
IMPORT_LOCK_FILE = ".import.lock"  # created with the workspace, so it is there before any import
PSEUDONYM_KEY_BYTES = 32


@dataclass
class Workspace:
    """Where one cadx installation keeps everything: ROI files under ``data_dir``, rows in ``engine``'s database."""

    data_dir: Path
    engine: Engine
    sessions: sessionmaker[Session]
    collected: Any = None  # the GcReport of the clean-up after a killed import or sweep done at opening, if any

    def path(self, relative: str) -> Path:
        """Absolute path of a file stored under the data directory."""
        return self.data_dir / relative

    def pseudonym_key(self) -> bytes:
        """This installation's secret for pseudonymising DICOM patient ids (created on first use; copied only into
        backups, see :mod:`cadx.workflows.backup`).

        A keyed hash instead of a plain one, so a pseudonym cannot be reversed by hashing candidate patient ids.
        """
        path = self.pseudonym_key_path
        if not path.exists():
            _create_key_file(path)
        key = path.read_bytes()
        if len(key) != PSEUDONYM_KEY_BYTES:
            raise CadxInputError(str(path), f"the pseudonym key has {len(key)} bytes, not {PSEUDONYM_KEY_BYTES}",
                                 "put back this installation's key from a backup (`cadx restore` brings it); with "
                                 "another key, DICOM patients no longer match the pseudonyms already stored")
        return key

    @contextlib.contextmanager
    def import_lock(self, *, timeout_s: float = 600.0) -> Iterator[None]:
        """Hold the workspace's import lock: imports take turns to check their files and write their rows.

        Re-entrant in one thread; other threads and processes wait (at most ``timeout_s``, then a clear error).
        """
        lock = FileLock(self.data_dir / IMPORT_LOCK_FILE, is_singleton=True, mode=0o600)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout as exc:
            raise CadxInputError(str(self.data_dir), f"another import has been writing for over {timeout_s:.0f} s",
                                 "try again when it has finished") from exc
        try:
            yield
        finally:
            lock.release()

    @property
    def pseudonym_key_path(self) -> Path:
        """Where :meth:`pseudonym_key` lives (inside the data directory, readable by its owner only)."""
        return self.data_dir / _PSEUDONYM_KEY_FILE


def _create_key_file(path: Path, content: bytes | None = None) -> None:
    """Create a new random key (or ``content``) at ``path`` unless another process gets there first.

    The key is written whole to a private temporary file and then hard-linked into place: the link is atomic and
    fails if ``path`` exists, so concurrent first starts (app, worker, CLI) all end up with one complete key, and
    nobody ever reads a half-written one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(PSEUDONYM_KEY_BYTES) if content is None else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def private_sqlite_file(url: str) -> None:
    """Create a SQLite database file owner-only (0600; SQLite gives its -wal and -shm files the same mode), and
    take group and world access away from an existing one."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    make_private_dirs(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for sibling in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if sibling.stat().st_mode & 0o077:
                sibling.chmod(0o600)
