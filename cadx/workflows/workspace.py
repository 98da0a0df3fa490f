"""The workspace: a data directory plus its database, opened and upgraded once for the CLI or the app."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cadx import config
from db.session import create_db_engine, init_db, session_factory

__all__ = ["Workspace", "open_workspace"]

_PSEUDONYM_KEY_FILE = "pseudonym.key"


@dataclass
class Workspace:
    """Where one cadx installation keeps everything: ROI files under ``data_dir``, rows in ``engine``'s database."""

    data_dir: Path
    engine: Engine
    sessions: sessionmaker[Session]

    def path(self, relative: str) -> Path:
        """Absolute path of a file stored under the data directory."""
        return self.data_dir / relative

    def pseudonym_key(self) -> bytes:
        """This installation's secret for pseudonymising DICOM patient ids (created on first use, never exported).

        A keyed hash instead of a plain one, so a pseudonym cannot be reversed by hashing candidate patient ids.
        """
        path = self.data_dir / _PSEUDONYM_KEY_FILE
        if not path.exists():
            key = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
        return path.read_bytes()


def open_workspace(data_dir: str | Path | None = None, database_url: str | None = None) -> Workspace:
    """Open (creating and migrating when needed) the workspace in ``data_dir`` (default ``$CADX_DATA_DIR``)."""
    if data_dir is None:
        directory = config.data_dir()
    else:
        directory = Path(data_dir).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
    url = database_url or os.environ.get("CADX_DATABASE_URL") or f"sqlite:///{directory / 'cadx.sqlite'}"
    engine = create_db_engine(url)
    init_db(engine)
    workspace = Workspace(data_dir=directory.resolve(), engine=engine, sessions=session_factory(engine))
    workspace.pseudonym_key()  # created with the workspace, not by whichever import first needs it
    return workspace
