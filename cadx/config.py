"""Where cadx keeps its data: the data directory and the database URL, from the environment.

A data directory and a database are one workspace: the database's rows name files in the data directory. A
database URL from the environment (``CADX_DATABASE_URL``) therefore pairs only with the data directory named beside it
(``CADX_DATA_DIR``); any other directory (``--data-dir D``, or the default, which differs between the CLI's
``~/.cadx`` and the app's ``./data``) would put rows in that database and their files in D — one workspace split in
two (issue 26.2). Such an opening is refused, with the fix, before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from cadx.errors import CadxInputError
from cadx.private import make_private_dirs

__all__ = ["data_dir", "data_dir_path", "database_url"]

_DEFAULT_DATA_DIR = Path.home() / ".cadx"


def data_dir_path() -> Path:
    """The data directory, ``$CADX_DATA_DIR`` else ``~/.cadx``, without creating it."""
    return Path(os.environ.get("CADX_DATA_DIR") or _DEFAULT_DATA_DIR).expanduser()


def data_dir() -> Path:
    """The data directory: ``$CADX_DATA_DIR``, else ``~/.cadx``. Created when missing."""
    return make_private_dirs(data_dir_path())  # owner-only when cadx creates it (parents included)


def _same_directory(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def database_url(directory: Path) -> str:
    """The database URL of the data ``directory``: a SQLite file ``cadx.sqlite`` in it, or ``$CADX_DATABASE_URL``
    when ``$CADX_DATA_DIR`` names this same directory.

    Raises
    ------
    CadxInputError
        ``$CADX_DATABASE_URL`` is set while ``$CADX_DATA_DIR`` is unset or names another directory.
    """
    url = os.environ.get("CADX_DATABASE_URL")
    if not url:
        return f"sqlite:///{directory / 'cadx.sqlite'}"
    named = os.environ.get("CADX_DATA_DIR")
    if named and _same_directory(named, directory):
        return url
    paired = f"CADX_DATA_DIR is {named}" if named else "CADX_DATA_DIR is not set"
    raise CadxInputError(
        f"data directory {directory}",
        f"CADX_DATABASE_URL names a database while {paired}: its rows would go into that database and their files "
        f"into {directory}, one workspace split in two; nothing was opened or written",
        f"export CADX_DATA_DIR with the data directory that belongs to that database (then --data-dir is not "
        f"needed), or unset CADX_DATABASE_URL so that {directory} keeps its own SQLite database")
