"""Files under the data directory: written once, atomically, under content-derived names.

Whoever writes stored files (imports, segmentation sweeps, restores) does so inside :func:`writing_files`, until its
rows are committed or its files cleaned up. That lets :mod:`cadx.workflows.gc` tell a crashed writer's leftovers
(orphan files no committed row uses) from files a running writer has not committed yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from cadx.private import make_private_dirs

__all__ = ["write_once", "encode_mask_png", "writing_files", "lock_writers_folder", "WRITERS_DIR"]

# One marker file per running writer, locked by it (a marker nobody holds: a writer died). The folder itself is the
# garbage-collection lock: writers hold it shared, the collector exclusively.
WRITERS_DIR = ".writers"


def lock_writers_folder(data_dir: Path, operation: int) -> int:
    """Open the writers folder and ``flock`` it with ``operation``; returns the descriptor (close it to release)."""
    make_private_dirs(data_dir / WRITERS_DIR)
    fd = os.open(data_dir / WRITERS_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, operation)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def writing_files(data_dir: Path) -> Iterator[None]:
    """Mark a unit of work that writes stored files (until its rows are committed or its files removed).

    Holds the garbage-collection lock shared, so ``cadx gc`` never removes a file that is written but not yet
    committed, and holds a marker file locked: a marker left unlocked shows at the next start that a writer was
    killed, which triggers a collection (see :func:`cadx.workflows.gc.collect_after_crash`). Locks held by a process
    are released by the kernel when it dies, however it dies.
    """
    make_private_dirs(data_dir / WRITERS_DIR)
    marker = data_dir / WRITERS_DIR / f"{os.getpid()}-{secrets.token_hex(6)}"
    marker_fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o600)
    gc_fd = None
    try:
        fcntl.flock(marker_fd, fcntl.LOCK_EX)
        gc_fd = lock_writers_folder(data_dir, fcntl.LOCK_SH)  # waits while a collection runs (they are short)
        yield
    finally:
        marker.unlink(missing_ok=True)
        if gc_fd is not None:
            os.close(gc_fd)
        os.close(marker_fd)


def write_once(path: Path, encode: Callable[[], bytes]) -> bool:
    """Write ``encode()`` to ``path`` unless it exists (names are content-derived); True when written.

    A temporary file renamed into place, so a crash never leaves a half-written file under its final name. The file
    is readable by its owner only (0600, from ``mkstemp``), and so are the folders made for it (0700).
    """
    if path.exists():
        return False
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask (H, W) as an 8-bit PNG (0 / 255): true outlines and segmentations."""
    buffer = io.BytesIO()
    PILImage.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
