"""Big files written safely on a disk that may fill: room checked before, and memory maps with reserved blocks.

A write through a memory map into a file whose blocks are not allocated yet (``numpy.lib.format.open_memmap`` makes
a sparse file) kills the process with SIGBUS when the disk is full: no message, exit status 135, and its temporary
folder left behind. :func:`preallocated_memmap` reserves the blocks first (``posix_fallocate``), which turns a full
disk into an ``OSError`` (ENOSPC) before anything is written, one its caller cleans up after and reports like any
other failed write. :func:`require_free_space` refuses work that cannot fit, with the figures, before it starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from cadx.errors import CadxInputError
from cadx.private import private_memmap

__all__ = ["preallocated_memmap", "require_free_space", "megabytes"]


def megabytes(n_bytes: float) -> str:
    """``n_bytes`` in MB for messages, e.g. ``"12.3 MB"``."""
    return f"{n_bytes / 1e6:,.1f} MB"


def require_free_space(folder: str | os.PathLike[str], needed: int, *, what: str, fix: str) -> None:
    """Raise :class:`~cadx.errors.CadxInputError` naming both figures when ``folder``'s file system has fewer than
    ``needed`` bytes free (for ``what``, e.g. "storing the features of 40 ROIs")."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise CadxInputError(str(folder), f"{what} needs about {megabytes(needed)}, and only {megabytes(free)} are "
                             "free there; nothing was written", fix)


def preallocated_memmap(path: str | os.PathLike[str], dtype: np.dtype | type, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file at ``path`` opened as a writable memory map (``open_memmap(path, "w+", ...)``) whose
    disk blocks are all allocated: an ``OSError`` (ENOSPC, naming ``path``) instead of SIGBUS when they do not fit."""
    out: np.memmap = private_memmap(path, dtype=dtype, shape=shape)  # owner-only, like every stored file
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        del out
        raise OSError(exc.errno, exc.strerror, str(Path(path))) from exc
    finally:
        os.close(fd)
    return out
