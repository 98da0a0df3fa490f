"""Opening a workspace: create or upgrade its database, its keys and folders, and collect what a killed writer left.

Apart from :mod:`cadx.workflows.workspace` (the handle itself) because opening needs the garbage collector, which
needs the handle.
"""

from __future__ import annotations

from pathlib import Path

from cadx import config
from cadx.errors import CadxInputError
from cadx.private import make_private_dirs
from cadx.workflows.gc import collect_after_crash
from cadx.workflows.workspace import IMPORT_LOCK_FILE, Workspace, private_sqlite_file
from db.session import SchemaNewerThanCodeError, create_db_engine, init_db, session_factory

__all__ = ["open_workspace"]


def open_workspace(data_dir: str | Path | None = None, database_url: str | None = None) -> Workspace:
    """Open (creating and migrating when needed) the workspace in ``data_dir`` (default ``$CADX_DATA_DIR``)."""
    directory = config.data_dir_path() if data_dir is None else Path(data_dir).expanduser()
    url = database_url or config.database_url(directory)  # refuses a split workspace before anything is written
    make_private_dirs(directory)
    private_sqlite_file(url)
    engine = create_db_engine(url)
    try:
        init_db(engine)
    except SchemaNewerThanCodeError as exc:
        engine.dispose()
        raise CadxInputError(engine.url.render_as_string(hide_password=True),
                             f"its schema revision {exc.revision!r} is newer than this cadx knows (newest "
                             f"{exc.head!r}); nothing was changed",
                             "open it with the cadx version that last upgraded it, or upgrade cadx") from exc
    workspace = Workspace(data_dir=directory.resolve(), engine=engine, sessions=session_factory(engine))
    workspace.pseudonym_key()  # created with the workspace, not by whichever import first needs it
    (workspace.data_dir / IMPORT_LOCK_FILE).touch(mode=0o600, exist_ok=True)
    make_private_dirs(workspace.data_dir / ".writers")  # see cadx.workflows.storage.writing_files
    workspace.collected = collect_after_crash(workspace)  # one directory listing unless a writer was killed
    return workspace
