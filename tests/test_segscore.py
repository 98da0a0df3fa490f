"""Dice and mean boundary distance (cadx.segscore) against closed forms for discs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cadx.segscore import dice, mean_boundary_distance_mm, score_segmentation, score_summary


def _disc(centre_rc: tuple[float, float], radius: float, shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(rows - centre_rc[0], cols - centre_rc[1]) <= radius


@pytest.mark.parametrize("big", [110.0, 130.0, 160.0])
def test_enlarged_disc_gives_dice_two_r2_over_r2_plus_R2_and_boundary_distance_R_minus_r(big):
    small = 100.0
    score = score_segmentation(_disc((256, 256), big), _disc((256, 256), small), pixel_size_mm=0.1)
    assert score.dice == pytest.approx(2 * small ** 2 / (small ** 2 + big ** 2), abs=0.005)
    assert score.boundary_mm == pytest.approx((big - small) * 0.1, abs=0.05)
    assert score.reference_mm2 == pytest.approx(math.pi * small ** 2 * 0.01, rel=0.01)


@pytest.mark.parametrize("shift", [10.0, 50.0, 120.0])
def test_shifted_disc_gives_the_lens_area_dice(shift):
    r = 100.0
    lens = 2 * r * r * math.acos(shift / (2 * r)) - shift / 2 * math.sqrt(4 * r * r - shift * shift)
    assert dice(_disc((256, 200), r), _disc((256, 200 + shift), r)) == pytest.approx(lens / (math.pi * r * r),
                                                                                     abs=0.005)


def test_identical_empty_and_anisotropic_masks():
    disc = _disc((256, 256), 50)
    assert dice(disc, disc) == 1.0 and mean_boundary_distance_mm(disc, disc, pixel_size_mm=0.1) == 0.0
    failed = score_segmentation(np.zeros_like(disc), disc, pixel_size_mm=0.1)
    assert failed.dice == 0.0 and failed.boundary_mm is None
    # one row shift at 0.2 mm rows: every boundary pixel moves at most 0.2 mm
    moved = np.roll(disc, 1, axis=0)
    assert 0.0 < mean_boundary_distance_mm(moved, disc, pixel_size_mm=(0.2, 0.1)) <= 0.2
    with pytest.raises(ValueError, match="one shape"):
        dice(disc, disc[:10])


def test_summary_is_median_and_quartiles():
    summary = score_summary([0.1, 0.5, 0.9, 0.3], [1.0, None, 3.0, 2.0])
    assert summary["n"] == 4 and summary["dice_median"] == pytest.approx(0.4)
    assert summary["dice_q1"] == pytest.approx(0.25) and summary["dice_q3"] == pytest.approx(0.6)
    assert summary["boundary_mm_median"] == pytest.approx(2.0)
    assert score_summary([], [])["dice_median"] is None
