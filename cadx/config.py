"""Where cadx keeps its data: the data directory and the database URL, from the environment."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir", "database_url"]

_DEFAULT_DATA_DIR = Path.home() / ".cadx"


def data_dir() -> Path:
    """The data directory: ``$CADX_DATA_DIR``, else ``~/.cadx`` (:func:`cadx.workflows.open_workspace` creates it,
    owner-only, once it has checked that it and the database are one workspace)."""
    return Path(os.environ.get("CADX_DATA_DIR") or _DEFAULT_DATA_DIR).expanduser()


def database_url(directory: Path) -> str:
    """The database URL: ``$CADX_DATABASE_URL``, else a SQLite file ``cadx.sqlite`` in the data ``directory``."""
    return os.environ.get("CADX_DATABASE_URL") or f"sqlite:///{directory / 'cadx.sqlite'}"
