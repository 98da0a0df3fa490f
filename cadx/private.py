"""Owner-only folders and files: the one way cadx creates what it stores (issue 26.3).

A workspace holds patient images, pseudonym keys and everything derived from them, so nothing under the data
directory may be readable by the group or by others, whatever the umask of the process that writes it. ``mkdir``'s
``mode`` applies to the last folder only (``parents=True`` makes the others with the umask), and ``open``,
``Path.write_text`` and NumPy's ``open_memmap`` / ``np.save`` create files with the umask (often 0644): so every
store (the workspace itself, ROI files, the feature store, the decoded-ROI cache, the layer-explorer cache, fold
models, job files) creates its folders and files through the functions here. ``tempfile.mkstemp`` / ``mkdtemp``
are owner-only already (0600 / 0700) and need no wrapper.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["FOLDER_MODE", "FILE_MODE", "make_private_dirs", "open_private", "write_private", "private_memmap"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` and any missing parents readable by their owner only (0700); returns it.

    Folders that exist already are left as they are (a data directory the user made, or ``/tmp``)."""
    path = Path(path)
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass
    return path


def open_private(path: str | os.PathLike[str], mode: str = "wb", *, exclusive: bool = False) -> IO[Any]:
    """``open(path, mode)`` for writing (``"w"``, ``"a"``, with ``"b"`` / ``"+"``), creating the file owner-only
    (0600) when missing; ``exclusive`` fails (``FileExistsError``) when it exists. Its folder must exist (see
    :func:`make_private_dirs`)."""
    if mode[0] not in "wa":
        raise ValueError(f"open_private is for writing; mode {mode!r} does not create a file")
    flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    flags |= os.O_TRUNC if mode[0] == "w" else os.O_APPEND
    if exclusive:
        flags |= os.O_EXCL
    fd = os.open(path, flags, FILE_MODE)
    try:
        return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path``, created owner-only (0600). Not atomic: for files
    in a temporary folder renamed into place whole, or for small status files (a PID) that readers re-read."""
    with open_private(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def private_memmap(path: str | os.PathLike[str], *, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file at ``path`` mapped for writing (``np.lib.format.open_memmap(..., mode="w+")``), owner-only.

    ``open_memmap`` creates the file itself with the umask; opening an existing file keeps its mode, so it is made
    first."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE))
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
