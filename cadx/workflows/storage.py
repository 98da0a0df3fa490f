"""Files under the data directory: written once, atomically, under content-derived names."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from cadx.workflows.workspace import make_private_dirs

__all__ = ["write_once", "encode_mask_png"]


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
