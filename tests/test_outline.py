"""Tests of cadx.outline: one outline renderer for every ROI view (review page, predictions page)."""

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from cadx.outline import MASK_THRESHOLD, OUTLINE_COLOURS, decode_mask_png, draw_outline, outline_edge


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _square(n=9, lo=2, hi=7):
    mask = np.zeros((n, n), bool)
    mask[lo:hi, lo:hi] = True
    return mask


def test_decode_reads_a_stored_mask_and_checks_its_shape():
    mask = _square()
    assert np.array_equal(decode_mask_png(_png(mask)), mask)
    assert np.array_equal(decode_mask_png(_png(mask), shape=(9, 9)), mask)
    assert decode_mask_png(_png(mask), shape=(8, 9)) is None
    grey = np.full((4, 4), MASK_THRESHOLD, np.uint8)
    grey[0, 0] = MASK_THRESHOLD + 1
    buffer = io.BytesIO()
    PILImage.fromarray(grey, mode="L").save(buffer, format="PNG")
    assert decode_mask_png(buffer.getvalue()).sum() == 1  # above the threshold only


def test_edge_of_a_square_is_its_border_ring():
    edge = outline_edge(_square(), width=1)
    expected = _square() & ~_square(lo=3, hi=6)
    assert np.array_equal(edge, expected)  # 5x5 square: 16 border pixels
    assert edge.sum() == 16
    thick = outline_edge(_square(), width=2)
    assert thick.sum() > edge.sum() and np.all(thick[edge])


def test_draw_in_the_kinds_colour_and_report_whether_drawn():
    rgb = np.zeros((9, 9, 3), np.uint8)
    assert draw_outline(rgb, _square(), "truth", width=1)
    assert tuple(rgb[2, 2]) == OUTLINE_COLOURS["truth"] and tuple(rgb[4, 4]) == (0, 0, 0)
    assert not draw_outline(rgb, np.zeros((9, 9), bool), "segmentation")
    assert not draw_outline(rgb, None, "segmentation")
    assert not draw_outline(rgb, np.ones((8, 8), bool), "segmentation")
    with pytest.raises(ValueError, match="unknown outline kind"):
        draw_outline(rgb, _square(), "contour")
