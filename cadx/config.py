"""Where cadx keeps its data: the data directory and the database URL, from the environment."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir", "database_url", "roi_dir"]

_DEFAULT_DATA_DIR = Path.home() / ".cadx"


def data_dir() -> Path:
    """The data directory: ``$CADX_DATA_DIR``, else ``~/.cadx``. Created when missing."""
    path = Path(os.environ.get("CADX_DATA_DIR") or _DEFAULT_DATA_DIR).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only when cadx creates it
    return path


def database_url() -> str:
    """The database URL: ``$CADX_DATABASE_URL``, else a SQLite file ``cadx.sqlite`` in the data directory."""
    url = os.environ.get("CADX_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{data_dir() / 'cadx.sqlite'}"


def roi_dir() -> Path:
    """Where ROI images are stored (content-addressed 16-bit PNGs)."""
    path = data_dir() / "rois"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
