"""ROI outline rendering: the one way cadx reads a stored mask and draws its outline on an ROI picture.

Used by the review page's ROI view (``cadx.workflows.browse.roi_outline_image``) and the predictions page's ROI
view (``cadx.workflows.results.roi_overlay``), so both show the same edge, in the same colours.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage
from scipy import ndimage

__all__ = ["MASK_THRESHOLD", "OUTLINE_COLOURS", "decode_mask_png", "draw_outline", "outline_edge"]

#: Colour (RGB) of each kind of outline: yellow for a Method-B segmentation, cyan for a synthetic phantom's truth.
OUTLINE_COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {"segmentation": (255, 220, 0), "truth": (0, 220, 255)}
)
#: Stored masks are 8-bit PNGs of 0 / 255: a pixel is inside when its grey level is above this.
MASK_THRESHOLD: Final = 127


def decode_mask_png(data: bytes, *, shape: tuple[int, int] | None = None) -> NDArray[np.bool_] | None:
    """A stored mask PNG as a boolean array (True inside); None when ``shape`` is given and differs."""
    with PILImage.open(io.BytesIO(data)) as png:
        mask = np.asarray(png.convert("L")) > MASK_THRESHOLD
    if shape is not None and mask.shape != tuple(shape):
        return None
    return mask


def outline_edge(mask: NDArray[np.bool_], *, width: int = 2) -> NDArray[np.bool_]:
    """The pixels of ``mask`` on its boundary (inside pixels with an outside 4-neighbour), thickened outwards and
    inwards to ``width`` pixels (``width - 1`` dilations)."""
    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask)
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return np.asarray(edge, dtype=bool)


def draw_outline(rgb: NDArray[np.uint8], mask: NDArray[np.bool_] | None, kind: str, *, width: int = 2) -> bool:
    """Draw the outline of ``mask`` on ``rgb`` (H, W, 3) in place, in the colour of ``kind``.

    Returns whether anything was drawn (False for a missing, empty or differently shaped mask).
    """
    if kind not in OUTLINE_COLOURS:
        raise ValueError(f"unknown outline kind {kind!r}; known: {', '.join(OUTLINE_COLOURS)}")
    if mask is None or mask.shape != rgb.shape[:2] or not mask.any():
        return False
    rgb[outline_edge(mask, width=width)] = OUTLINE_COLOURS[kind]
    return True
