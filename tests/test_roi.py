"""Tests of cadx.roi: ROI geometry, anti-aliasing, QC flags, PNG storage and content hashes (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from cadx.errors import RoiError
from cadx.roi import (
    ROI_FIELD_MM,
    ROI_PIXEL_MM,
    ROI_SIZE_PX,
    RoiCrop,
    crop_mask,
    crop_roi,
    decode_png16,
    encode_png16,
    estimate_background_threshold,
    roi_sha256,
)

FULL = (0.0, 1.0)


def _crop(image, centre, spacing, **kwargs):
    kwargs.setdefault("value_range", FULL)
    kwargs.setdefault("background_threshold", -1.0)  # nothing is background unless a test says so
    return crop_roi(image, centre_rc=centre, pixel_spacing_mm=spacing, **kwargs)


def _disk(shape, centre, radius_px):
    rr, cc = np.indices(shape)
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius_px**2


def test_constants():
    assert (ROI_SIZE_PX, ROI_PIXEL_MM, ROI_FIELD_MM) == (512, 0.1, 51.2)
    assert ROI_SIZE_PX * ROI_PIXEL_MM == pytest.approx(ROI_FIELD_MM)


def test_single_bright_pixel_at_01mm_lands_in_the_roi_middle():
    image = np.zeros((700, 800))
    image[300, 410] = 1.0
    roi = _crop(image, (300, 410), 0.1)
    assert isinstance(roi, RoiCrop)
    assert roi.pixels.dtype == np.uint16 and roi.pixels.shape == (512, 512)
    # the centre lies between output pixels 255 and 256: linear interpolation splits the pixel 4 ways
    expected = np.zeros((512, 512), dtype=np.uint16)
    expected[255:257, 255:257] = np.rint(0.25 * 65535)
    np.testing.assert_array_equal(roi.pixels, expected)
    assert roi.flags == () and roi.padded_fraction == 0 and roi.lesion_fits is None


def test_integer_shift_at_01mm_is_a_plain_cut_out():
    rng = np.random.default_rng(1)
    image = rng.random((600, 600))
    roi = _crop(image, (300.5, 250.5), 0.1)  # output pixel (i, j) sits on source pixel (i + 45, j - 5)
    np.testing.assert_array_equal(roi.pixels[:, 5:], np.rint(image[45:557, 0:507] * 65535))
    assert roi.padded_fraction == pytest.approx(5 / 512)
    assert np.all(roi.pixels[:, :5] == 0)


def test_coarse_02mm_ramp_gives_exact_interpolated_values():
    rows, cols = 400, 300
    ramp = np.tile(np.arange(cols, dtype=np.float64) / 1000.0, (rows, 1))  # value = col / 1000
    centre = (200.0, 150.25)
    roi = _crop(ramp, centre, 0.2)
    positions = centre[1] + (np.arange(512) - 255.5) * 0.5  # source columns of the output columns
    expected_row = np.rint(positions / 1000.0 * 65535).astype(np.uint16)
    np.testing.assert_array_equal(roi.pixels, np.tile(expected_row, (512, 1)))
    assert roi.padded_fraction == 0


def test_anisotropic_spacing_scales_each_axis():
    rows, cols = 500, 500
    ramp_r = np.tile(np.arange(rows, dtype=np.float64)[:, None] / 1000.0, (1, cols))
    roi = _crop(ramp_r, (250.0, 250.0), (0.2, 0.1))
    positions = 250.0 + (np.arange(512) - 255.5) * 0.5
    np.testing.assert_array_equal(roi.pixels[:, 100], np.rint(positions / 1000.0 * 65535).astype(np.uint16))


def test_fine_05mm_checkerboard_does_not_alias():
    rr, cc = np.indices((1400, 1400))
    checker = ((rr + cc) % 2).astype(np.float64)  # period 0.1 mm at 0.05 mm/pixel
    stripes = (cc % 2).astype(np.float64)
    for image in (checker, stripes):
        for centre in ((700.0, 700.0), (700.3, 699.8)):
            roi = _crop(image, centre, 0.05)
            mid = 0.5 * 65535
            assert np.abs(roi.pixels.astype(float) - mid).max() <= 1  # flat mid grey, only rounding


@pytest.mark.parametrize("spacing", [0.05, 0.1, 0.2, (0.05, 0.2)])
def test_disk_keeps_its_area_at_any_source_spacing(spacing):
    spacing_rc = np.broadcast_to(np.asarray(spacing, dtype=float), (2,))
    diameter_mm = 20.0
    shape = tuple(int(round(60.0 / s)) for s in spacing_rc)
    centre = (shape[0] / 2 - 0.3, shape[1] / 2 + 0.2)
    rr, cc = np.indices(shape)
    disk = ((rr - centre[0]) * spacing_rc[0]) ** 2 + ((cc - centre[1]) * spacing_rc[1]) ** 2 <= (diameter_mm / 2) ** 2
    roi = _crop(disk.astype(float), centre, spacing)
    expected_px = np.pi * (diameter_mm / 2 / 0.1) ** 2
    area = (roi.pixels > 32767).sum()
    assert area == pytest.approx(expected_px, rel=0.03)
    mask = crop_mask(disk, centre_rc=centre, pixel_spacing_mm=spacing)
    assert mask.sum() == pytest.approx(expected_px, rel=0.03)
    # the disk is centred in the ROI
    r, c = np.nonzero(mask)
    assert r.mean() == pytest.approx(255.5, abs=0.5) and c.mean() == pytest.approx(255.5, abs=0.5)


def test_crop_mask_agrees_with_crop_roi_geometry():
    shape = (900, 1000)
    rng = np.random.default_rng(3)
    mask = np.zeros(shape, bool)
    for _ in range(5):
        mask |= _disk(shape, rng.uniform(300, 600, 2), rng.uniform(20, 60))
    for spacing, centre in ((0.1, (450.0, 500.0)), (0.05, (450.2, 480.7)), (0.2, (440.0, 510.5))):
        roi = _crop(mask.astype(float), centre, spacing)
        cropped = crop_mask(mask, centre_rc=centre, pixel_spacing_mm=spacing)
        assert cropped.dtype == bool and cropped.shape == (512, 512)
        decided = np.abs(roi.pixels.astype(float) - 32767.5) > 2  # exact ties (0.5) may go either way
        assert decided.mean() > 0.99
        np.testing.assert_array_equal(cropped[decided], roi.pixels[decided] > 32767.5)


def test_corner_centre_pads_three_quarters():
    image = np.full((600, 600), 0.6)
    roi = _crop(image, (0.0, 0.0), 0.1)
    # output pixel centres at (i - 255.5); the image starts at -0.5, so i >= 255 are inside: 257 of 512 per axis
    expected = 1 - (257 / 512) ** 2
    assert roi.padded_fraction == pytest.approx(expected)
    assert roi.padded_fraction == pytest.approx(0.75, abs=0.01)
    assert roi.flags == ("mostly_background", "padded")  # padding counts as background
    assert roi.background_fraction == pytest.approx(expected)
    assert np.all(roi.pixels[:255, :] == 0) and np.all(roi.pixels[:, :255] == 0)
    assert np.all(roi.pixels[255:, 255:] == np.rint(0.6 * 65535))  # edge pixels repeat, padding never bleeds


def test_mostly_air_image_is_mostly_background():
    rng = np.random.default_rng(5)
    image = 0.03 + 0.01 * rng.random((800, 800))  # air
    rr, cc = np.indices(image.shape)
    breast = cc < 300
    image[breast] = 0.5 + 0.05 * rng.random(breast.sum())
    threshold = estimate_background_threshold(image, value_range=FULL)
    assert 0.04 < threshold < 0.5
    roi = crop_roi(image, centre_rc=(400, 300), pixel_spacing_mm=0.1, value_range=FULL)  # threshold estimated
    assert roi.padded_fraction == 0
    assert roi.background_fraction == pytest.approx(256.5 / 512, abs=0.01)
    roi = crop_roi(image, centre_rc=(400, 350), pixel_spacing_mm=0.1, value_range=FULL,
                   background_threshold=threshold)
    assert roi.background_fraction > 0.5 and roi.flags == ("mostly_background",)


def test_background_threshold_is_bounded():
    rng = np.random.default_rng(6)
    all_breast = 0.4 + 0.3 * (rng.random((300, 300)) > 0.5)  # fat and dense tissue, no air
    assert estimate_background_threshold(all_breast, value_range=FULL) == pytest.approx(0.30)
    assert estimate_background_threshold(np.zeros((10, 10)), value_range=(0, 255)) == pytest.approx(0.02 * 255)


def test_value_range_mapping_clips_and_rounds_half_even():
    image = np.full((600, 600), 300.0)
    assert np.all(_crop(image, (300, 300), 0.1, value_range=(0, 255)).pixels == 65535)
    image = np.full((600, 600), -3.0)
    assert np.all(_crop(image, (300, 300), 0.1, value_range=(0, 255)).pixels == 0)
    # 0.5 / 65535 * 65535 = 0.5 -> 0 (half to even); 1.5 -> 2
    for value, expected in ((0.5, 0), (1.5, 2), (2.5, 2)):
        image = np.full((600, 600), value)
        assert np.all(_crop(image, (300, 300), 0.1, value_range=(0, 65535)).pixels == expected)


def test_lesion_size_flags():
    image = np.full((600, 600), 0.5)
    assert _crop(image, (300, 300), 0.1, lesion_diameter_mm=60).flags == ("lesion_exceeds_field",)
    roi = _crop(image, (300, 300), 0.1, lesion_diameter_mm=60)
    assert roi.lesion_fits is False
    assert _crop(image, (300, 300), 0.1, lesion_diameter_mm=51.2).lesion_fits is True
    assert _crop(image, (300, 300), 0.1).lesion_fits is None


@pytest.mark.parametrize("centre", [(-3.0, 10.0), (10.0, 600.0), (np.nan, 5.0), (5.0, np.inf)])
def test_centre_outside_the_image_raises(centre):
    image = np.zeros((500, 600))
    with pytest.raises(RoiError) as info:
        crop_roi(image, centre_rc=centre, pixel_spacing_mm=0.1, value_range=FULL, source="case-17.dcm")
    message = str(info.value)
    assert "case-17.dcm" in message and str(centre[0]) in message and "500 rows x 600 columns" in message
    assert "row" in info.value.fix and "x/y" in info.value.fix


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"image": np.zeros((5, 5, 3))}, "not a 2-D image"),
        ({"image": np.zeros(100)}, "not a 2-D image"),
        ({"pixel_spacing_mm": 0.0}, "pixel spacing"),
        ({"pixel_spacing_mm": (0.1, -0.1)}, "pixel spacing"),
        ({"pixel_spacing_mm": (0.1, 0.1, 0.1)}, "pixel spacing"),
        ({"pixel_spacing_mm": np.nan}, "pixel spacing"),
        ({"value_range": (1.0, 1.0)}, "value range"),
        ({"value_range": (1.0, 0.0)}, "value range"),
        ({"lesion_diameter_mm": -2}, "lesion diameter"),
        ({"background_threshold": np.nan}, "background threshold"),
    ],
)
def test_bad_input_raises_roi_error(kwargs, needle):
    args = {"image": np.zeros((50, 50)), "centre_rc": (25, 25), "pixel_spacing_mm": 0.1, "value_range": FULL}
    args.update(kwargs)
    image = args.pop("image")
    with pytest.raises(RoiError, match=needle):
        crop_roi(image, **args)


def test_nan_inside_the_field_raises():
    image = np.zeros((600, 600))
    image[300, 300] = np.nan
    with pytest.raises(RoiError, match="non-finite"):
        _crop(image, (300, 300), 0.1)


def test_png_round_trip_is_exact_and_hash_is_stable():
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 65536, (512, 512), dtype=np.uint16)
    pixels[0, :3] = (0, 65535, 256)
    data = encode_png16(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_png16(data)
    assert back.dtype == np.uint16 and back.shape == (512, 512)
    np.testing.assert_array_equal(back, pixels)
    assert encode_png16(pixels) == data
    assert roi_sha256(back) == roi_sha256(pixels)
    assert roi_sha256(pixels.byteswap().view(">u2")) == roi_sha256(pixels)  # byte order does not matter
    assert roi_sha256(pixels.reshape(256, 1024)) != roi_sha256(pixels)  # the shape is part of the identity
    changed = pixels.copy()
    changed[100, 100] ^= 1
    assert roi_sha256(changed) != roi_sha256(pixels)
    # a known answer, independent of PNG encoders
    zeros = np.zeros((512, 512), np.uint16)
    import hashlib

    assert roi_sha256(zeros) == hashlib.sha256(bytes(512 * 512 * 2) + b"shape=512x512").hexdigest()


def test_png_and_hash_reject_bad_input():
    with pytest.raises(RoiError):
        encode_png16(np.zeros((4, 4), np.float32))
    with pytest.raises(RoiError):
        roi_sha256(np.zeros((4, 4, 1), np.uint16))
    with pytest.raises(RoiError):
        decode_png16(b"not a png")


def test_crop_is_deterministic_and_read_only():
    rng = np.random.default_rng(11)
    image = rng.random((1500, 1300)).astype(np.float32)
    a = crop_roi(image, centre_rc=(700.3, 640.9), pixel_spacing_mm=(0.05, 0.07), value_range=FULL)
    b = crop_roi(image.copy(), centre_rc=(700.3, 640.9), pixel_spacing_mm=(0.05, 0.07), value_range=FULL)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert roi_sha256(a.pixels) == roi_sha256(b.pixels)
    assert a.source_pixel_mm == (0.05, 0.07) and a.centre_rc == (700.3, 640.9)
    with pytest.raises(ValueError):
        a.pixels[0, 0] = 1
