"""Where cadx keeps its data: the data directory and the database URL, from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from cadx.private import make_private_dirs

__all__ = ["data_dir", "database_url"]

_DEFAULT_DATA_DIR = Path.home() / ".cadx"


def data_dir() -> Path:
    """The data directory: ``$CADX_DATA_DIR``, else ``~/.cadx``. Created when missing."""
    path = Path(os.environ.get("CADX_DATA_DIR") or _DEFAULT_DATA_DIR).expanduser()
    return make_private_dirs(path)  # owner-only when cadx creates it (parents included)


def database_url(directory: Path) -> str:
    """The database URL: ``$CADX_DATABASE_URL``, else a SQLite file ``cadx.sqlite`` in the data ``directory``."""
    return os.environ.get("CADX_DATABASE_URL") or f"sqlite:///{directory / 'cadx.sqlite'}"
