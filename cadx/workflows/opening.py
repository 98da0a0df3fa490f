"""Opening a workspace: create or upgrade its database, its keys and folders, and collect what a killed writer left.

Apart from :mod:`cadx.workflows.workspace` (the handle itself) because opening needs the garbage collector, which
needs the handle.

**One workspace, one database** (issue 26.2). A workspace is a data directory (the files) and a database (the rows
naming them); the data directory comes from ``--data-dir`` / ``CADX_DATA_DIR``, the database from
``CADX_DATABASE_URL`` (default: ``cadx.sqlite`` inside the data directory), so a shell can pair a data directory with
another workspace's database. Each workspace therefore carries a random id, written both into its database (table
``workspace_identity``) and into its data directory (``workspace.json``), and every opening compares the two before
it writes anything: a data directory and a database of different workspaces are refused with the fix, instead of
adding rows whose files are elsewhere (or files no row names, which ``cadx gc`` would delete).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from pathlib import Path

from sqlalchemy import Connection, Engine, func, insert, inspect, select, update

from cadx import config
from cadx.errors import CadxInputError
from cadx.private import make_private_dirs
from cadx.workflows.gc import collect_after_crash
from cadx.workflows.workspace import (
    _PSEUDONYM_KEY_FILE,
    IMPORT_LOCK_FILE,
    Workspace,
    _create_key_file,
    private_sqlite_file,
)
from db.models import Image, WorkspaceIdentity
from db.session import SchemaNewerThanCodeError, create_db_engine, init_db, session_factory

__all__ = ["open_workspace", "IDENTITY_FILE"]

IDENTITY_FILE = "workspace.json"  # in the data directory: {"workspace_id": ..., "database": ...}


def open_workspace(data_dir: str | Path | None = None, database_url: str | None = None) -> Workspace:
    """Open (creating and migrating when needed) the workspace in ``data_dir`` (default ``$CADX_DATA_DIR``).

    Refuses (:class:`CadxInputError`, with the fix) a database that belongs to another data directory's workspace
    and a data directory whose workspace has another database, before writing to either."""
    directory = config.data_dir() if data_dir is None else Path(data_dir).expanduser()
    url = database_url or config.database_url(directory)
    engine = create_db_engine(url)
    try:
        with engine.connect() if _database_exists(engine) else contextlib.nullcontext() as connection:
            _check_identity(directory, engine, connection)  # read-only: a refused pairing leaves both untouched
        make_private_dirs(directory)
        private_sqlite_file(url)
        try:  # checked again and recorded under the upgrade's lock: processes opening at once take turns
            init_db(engine, then=lambda connection: _check_identity(directory, engine, connection, record=True))
        except SchemaNewerThanCodeError as exc:
            raise CadxInputError(_shown(engine), f"its schema revision {exc.revision!r} is newer than this cadx "
                                 f"knows (newest {exc.head!r}); nothing was changed",
                                 "open it with the cadx version that last upgraded it, or upgrade cadx") from exc
    except BaseException:
        engine.dispose()
        raise
    workspace = Workspace(data_dir=directory.resolve(), engine=engine, sessions=session_factory(engine))
    workspace.pseudonym_key()  # created with the workspace, not by whichever import first needs it
    (workspace.data_dir / IMPORT_LOCK_FILE).touch(mode=0o600, exist_ok=True)
    make_private_dirs(workspace.data_dir / ".writers")  # see cadx.workflows.storage.writing_files
    workspace.collected = collect_after_crash(workspace)  # one directory listing unless a writer was killed
    return workspace


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _database_exists(engine: Engine) -> bool:
    """False for a SQLite file not created yet (connecting would create it); True for any other database."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return not database or database == ":memory:" or database.startswith("file:") or Path(database).exists()


def _read_file_side(directory: Path) -> dict[str, str] | None:
    path = directory / IDENTITY_FILE
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict) or not isinstance(recorded.get("workspace_id"), str):
            raise ValueError("no workspace_id")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CadxInputError(str(path), f"this data directory's identity file is unreadable ({exc})",
                             "put back the file from a copy of this data directory") from exc
    return recorded


def _read_database_side(connection: Connection | None) -> tuple[str | None, str | None, int]:
    """The database's workspace id and data directory (None, None: none recorded: a new database, or one from
    before identities) and its number of images; reads only."""
    if connection is None:
        return None, None, 0
    tables = set(inspect(connection).get_table_names())
    row = None
    if WorkspaceIdentity.__tablename__ in tables:
        row = connection.execute(select(WorkspaceIdentity.workspace_id, WorkspaceIdentity.data_dir)).first()
    n_images = connection.scalar(select(func.count()).select_from(Image)) if Image.__tablename__ in tables else 0
    return (row[0] if row else None), (row[1] if row else None), int(n_images or 0)


def _check_identity(directory: Path, engine: Engine, connection: Connection | None, *, record: bool = False) -> None:
    """Refuse a data directory and a database of different workspaces (see the module's docstring); with
    ``record``, give a workspace without an identity one, on both sides."""
    recorded = _read_file_side(directory)
    workspace_id, files_in, n_images = _read_database_side(connection)
    if recorded is None and workspace_id is None:
        if n_images and not (directory / _PSEUDONYM_KEY_FILE).exists():
            # a database from before workspace identities, with images, and a data directory cadx has not used
            raise CadxInputError(
                _shown(engine), f"this database holds {n_images} images whose files are not in {directory} (a "
                "data directory cadx has not used yet); nothing was written",
                "use the data directory it was used with (--data-dir or CADX_DATA_DIR); for a workspace of its own "
                f"in {directory}, unset CADX_DATABASE_URL or point it at an empty database")
        if not record or connection is None:
            return
        identity = {"workspace_id": secrets.token_hex(16), "database": _shown(engine)}
        _create_key_file(directory / IDENTITY_FILE, (json.dumps(identity, indent=2) + "\n").encode())
        recorded = _read_file_side(directory)  # another process may have been first: then its id
        if recorded is not None and recorded["workspace_id"] == identity["workspace_id"]:
            connection.execute(insert(WorkspaceIdentity).values(
                id=1, workspace_id=identity["workspace_id"], data_dir=str(directory.resolve())))
            return
    database = recorded.get("database", "unknown") if recorded is not None else ""
    if recorded is not None and workspace_id is not None:
        if recorded["workspace_id"] == workspace_id:
            if record and connection is not None:
                _note_where(directory, engine, connection, recorded, files_in)
            return
        raise CadxInputError(
            str(directory), f"this data directory and the database {_shown(engine)} belong to different workspaces "
            f"(the database's files were in {files_in}, this directory's database was {database}, when each was "
            "last opened); nothing was written",
            f"use --data-dir {files_in} (or CADX_DATA_DIR) with this database, or set CADX_DATABASE_URL to "
            f"{database} (unset it if that is the cadx.sqlite inside the data directory) with this data directory")
    if recorded is not None:
        raise CadxInputError(
            str(directory), f"this data directory holds the files of the workspace whose database is {database}, "
            f"not {_shown(engine)}; nothing was written",
            f"set CADX_DATABASE_URL to {database} (unset it if that is the cadx.sqlite inside the data directory), "
            "or use a new data directory for this database")
    raise CadxInputError(
        _shown(engine), f"this database belongs to the workspace whose files were in {files_in} when it was last "
        f"opened, not {directory}; nothing was written",
        f"use --data-dir {files_in} (or CADX_DATA_DIR) with it; for a workspace of its own in {directory}, unset "
        "CADX_DATABASE_URL (the data directory then keeps its own SQLite database) or point it at an empty database")


def _note_where(directory: Path, engine: Engine, connection: Connection, recorded: dict[str, str],
                files_in: str | None) -> None:
    """A workspace moved or copied (its data directory, its database) keeps its identity: update where each side
    says the other is, so that a later refusal names the places in use now."""
    here = str(directory.resolve())
    if files_in != here:
        connection.execute(update(WorkspaceIdentity).values(data_dir=here))
    if recorded.get("database") != _shown(engine):
        _replace_private(directory / IDENTITY_FILE, {**recorded, "database": _shown(engine)})


def _replace_private(path: Path, identity: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # owner-only, renamed into place whole
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(identity, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
