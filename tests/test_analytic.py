"""Tests of cadx.analytic (Method B): seeded segmentation, analytic features and per-feature AUCs.

Known answers: analytic shapes (disk, 2:1 ellipse, sharp vs blurred edge, radial spikes), the SYNTHETIC demo
phantoms whose true outlines are known, edge cases (border, flat, tiny, seed off the lesion, low contrast) and a
few real MIAS ROIs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from cadx.analytic import (
    FEATURE_NAMES,
    FEATURES_VERSION,
    QUALITIES,
    Segmentation,
    analyse_roi,
    feature_aucs,
    lesion_features,
    segment_lesion,
)
from cadx.errors import CadxInputError
from cadx.phantoms import demo_dataset, power_law_background
from cadx.roi import crop_mask, crop_roi

SHAPE = (512, 512)
CENTRE = (255.5, 255.5)


def _disk(centre=CENTRE, radius_px=100.0, shape=SHAPE):
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius_px**2


def _to_uint16(image):
    return np.rint(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16)


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _tissue(seed, sd=0.07, shape=SHAPE):
    """Parenchyma-like 1/f^3 background plus quantum noise, as in the demo phantoms."""
    rng = np.random.default_rng(seed)
    return power_law_background(shape, rng=rng, mean=0.45, sd=sd) + rng.normal(0.0, 0.004, shape)


def _spikes(n=12, r_in=90.0, r_out=180.0, width_px=3.0, height=0.15):
    """Thin bright lines radiating from the disk edge, fading outward."""
    rows, cols = np.indices(SHAPE)
    angle = np.arctan2(rows - CENTRE[0], cols - CENTRE[1])
    radius = np.hypot(rows - CENTRE[0], cols - CENTRE[1])
    out = np.zeros(SHAPE)
    for k in range(n):
        across = np.abs(np.angle(np.exp(1j * (angle - 2 * np.pi * k / n)))) * radius
        fade = np.clip(1 - (radius - r_in) / (r_out - r_in), 0, 1) * (radius > r_in)
        out = np.maximum(out, height * np.exp(-0.5 * (across / width_px) ** 2) * fade)
    return out


# --- the API --------------------------------------------------------------------------------------------------


def test_feature_names_version_and_qualities():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 21
    assert isinstance(FEATURES_VERSION, str) and 0 < len(FEATURES_VERSION) <= 64
    assert QUALITIES[0] == "failed" and QUALITIES[-1] == "ok"
    disk = _disk()
    features = lesion_features(0.3 + 0.2 * disk, disk)
    assert tuple(features) == FEATURE_NAMES
    assert all(isinstance(value, float) for value in features.values())


def test_bad_input_raises_clear_errors():
    disk = _disk()
    with pytest.raises(CadxInputError, match="shape"):
        segment_lesion(np.zeros((8, 8)))
    with pytest.raises(CadxInputError, match="non-finite"):
        segment_lesion(np.full(SHAPE, np.nan))
    with pytest.raises(CadxInputError, match="outside"):
        segment_lesion(np.zeros(SHAPE), centre_rc=(600, 10))
    with pytest.raises(CadxInputError, match="n_levels"):
        segment_lesion(np.zeros(SHAPE), n_levels=2)
    with pytest.raises(CadxInputError, match="mask"):
        lesion_features(np.zeros(SHAPE), disk[:100])
    with pytest.raises(CadxInputError, match="0/1"):
        lesion_features(np.zeros(SHAPE), disk * 2)
    with pytest.raises(CadxInputError, match="pixel_size_mm"):
        lesion_features(np.zeros(SHAPE), disk, pixel_size_mm=0)


# --- features on analytic shapes (hand-checked) ---------------------------------------------------------------


def test_disk_size_shape_intensity_known_answers():
    disk = _disk(radius_px=100)  # 10 mm radius at 0.1 mm
    f = lesion_features(0.3 + 0.2 * disk, disk)
    assert f["area_mm2"] == pytest.approx(math.pi * 10**2, rel=0.01)  # 314.16 mm^2
    assert f["effective_diameter_mm"] == pytest.approx(20.0, rel=0.01)
    assert f["perimeter_mm"] == pytest.approx(2 * math.pi * 10, rel=0.02)
    assert f["circularity"] == pytest.approx(1.0, abs=0.05)
    assert f["irregularity"] == pytest.approx(0.0, abs=0.03)
    assert f["elongation"] == pytest.approx(1.0, abs=0.02)
    assert f["compactness"] == pytest.approx(1.0, abs=0.02)
    assert f["solidity"] == pytest.approx(1.0, abs=0.02)
    assert f["mean_intensity"] == pytest.approx(0.5)
    assert f["sd_intensity"] == pytest.approx(0.0, abs=1e-12)
    assert f["contrast"] == pytest.approx(0.2)
    assert f["normalised_contrast"] == pytest.approx(0.2 / 0.3)
    assert math.isnan(f["contrast_to_noise"])  # a noise-free ring: nothing to compare with
    assert f["radial_gradient_index"] == pytest.approx(1.0, abs=0.02)
    assert f["spiculation"] < 0.02
    # a uniform lesion: one grey level, so no co-occurrence contrast and no entropy
    assert (f["glcm_contrast"], f["glcm_homogeneity"], f["glcm_energy"], f["glcm_entropy"]) == pytest.approx(
        (0.0, 1.0, 1.0, 0.0)
    )


def test_size_features_scale_with_pixel_size():
    disk = _disk(radius_px=50)
    at_01 = lesion_features(0.3 + 0.2 * disk, disk, pixel_size_mm=0.1)
    at_02 = lesion_features(0.3 + 0.2 * disk, disk, pixel_size_mm=0.2)
    assert at_02["area_mm2"] == pytest.approx(4 * at_01["area_mm2"])
    assert at_02["perimeter_mm"] == pytest.approx(2 * at_01["perimeter_mm"])
    assert at_02["circularity"] == pytest.approx(at_01["circularity"])


def test_ellipse_two_to_one():
    rows, cols = np.indices(SHAPE)
    ellipse = ((rows - 255.5) / 120) ** 2 + ((cols - 255.5) / 60) ** 2 <= 1
    f = lesion_features(0.3 + 0.2 * ellipse, ellipse)
    assert f["elongation"] == pytest.approx(2.0, abs=0.05)
    assert f["area_mm2"] == pytest.approx(math.pi * 12 * 6, rel=0.01)
    # 4 pi A / P^2 of a 2:1 ellipse (Ramanujan's perimeter 9.6884 b): 0.8407
    assert f["circularity"] == pytest.approx(0.8407, abs=0.02)
    assert f["compactness"] < 0.9


def test_sharp_edge_is_sharper_than_blurred_edge():
    disk = _disk()
    sharp = 0.3 + 0.2 * disk
    blurred = ndi.gaussian_filter(sharp, 10)  # 1 mm blur of the margin
    assert lesion_features(sharp, disk)["sharpness"] > 1.5 * lesion_features(blurred, disk)["sharpness"]


def test_spicules_raise_spiculation():
    disk = _disk()
    noise = np.random.default_rng(0).normal(0.0, 0.004, SHAPE)
    plain = 0.3 + 0.2 * disk + noise
    spiked = plain + _spikes()
    assert lesion_features(spiked, disk)["spiculation"] > lesion_features(plain, disk)["spiculation"] + 0.1
    # and through the segmentation
    seg_plain, f_plain = analyse_roi(_to_uint16(plain))
    seg_spiked, f_spiked = analyse_roi(_to_uint16(spiked))
    assert seg_plain.quality == "ok" and seg_spiked.quality == "ok"
    assert f_spiked["spiculation"] > f_plain["spiculation"] + 0.1
    assert f_spiked["circularity"] < f_plain["circularity"]


def test_texture_of_a_noisy_lesion():
    disk = _disk()
    rng = np.random.default_rng(1)
    noisy = 0.3 + 0.2 * disk + 0.05 * rng.standard_normal(SHAPE)
    f = lesion_features(noisy, disk)
    assert f["glcm_contrast"] > 10  # independent pixels over 32 levels
    assert f["glcm_entropy"] > 7  # bits; at most 2 log2(32) = 10
    assert f["glcm_energy"] < 0.1
    assert abs(f["glcm_correlation"]) < 0.1
    assert f["sd_intensity"] == pytest.approx(0.05, rel=0.05)
    assert f["contrast"] == pytest.approx(0.2, abs=0.01)
    assert f["contrast_to_noise"] == pytest.approx(0.2 / 0.05, rel=0.1)


def test_empty_mask_gives_nan_not_zero():
    features = lesion_features(np.zeros(SHAPE), np.zeros(SHAPE, bool))
    assert tuple(features) == FEATURE_NAMES
    assert all(math.isnan(value) for value in features.values())


# --- segmentation: analytic cases and edge cases -----------------------------------------------------------


def test_disk_on_tissue_is_segmented_and_deterministic():
    truth = _disk(radius_px=60)
    roi = _to_uint16(_tissue(3, sd=0.03) + 0.12 * truth)
    first, second = segment_lesion(roi), segment_lesion(roi)
    assert isinstance(first, Segmentation)
    assert first.quality == "ok" and first.reason == "segmented" and first.flags == ()
    assert first.mask.dtype == bool and first.mask.shape == SHAPE and not first.mask.flags.writeable
    assert _dice(first.mask, truth) >= 0.9
    assert np.array_equal(first.mask, second.mask) and first.threshold == second.threshold
    # grey-level scaling does not matter: the same ROI as floats 0-1 gives the same mask
    assert np.array_equal(segment_lesion(roi / 65535.0).mask, first.mask)


def test_working_grid_at_0_2_mm():
    """A 256 x 256 ROI at 0.2 mm (no block averaging) segments the same 12 mm disk."""
    truth = _disk(centre=(127.5, 127.5), radius_px=30, shape=(256, 256))
    roi = _to_uint16(_tissue(4, sd=0.03, shape=(256, 256)) + 0.12 * truth)
    seg, features = analyse_roi(roi, pixel_size_mm=0.2)
    assert seg.quality == "ok"
    assert _dice(seg.mask, truth) >= 0.85
    assert features["effective_diameter_mm"] == pytest.approx(12.0, rel=0.1)


def test_lesion_touching_the_border():
    centre = (255.5, 40.0)
    truth = _disk(centre=centre, radius_px=80)  # reaches 4 mm past the left edge
    seg, features = analyse_roi(_to_uint16(_tissue(0) + 0.15 * truth), centre_rc=centre)
    assert seg.quality == "touches_border"
    assert "border" in seg.reason
    assert _dice(seg.mask, truth) >= 0.8
    assert all(math.isfinite(value) for value in features.values())


def test_flat_roi_fails_with_reason_and_nan_features():
    seg, features = analyse_roi(np.full(SHAPE, 1234, np.uint16))
    assert seg.quality == "failed" and seg.flags == ("failed",)
    assert "no contrast" in seg.reason
    assert not seg.mask.any()
    assert math.isnan(seg.threshold)
    assert tuple(features) == FEATURE_NAMES and all(math.isnan(value) for value in features.values())


def test_seed_in_padding_fails():
    image = _tissue(0) + 0.15 * _disk(centre=(255.5, 400.0), radius_px=60)
    image[:, :300] = 0.0  # padding, as crop_roi writes beyond the source image, under the seed
    seg = segment_lesion(_to_uint16(image))
    assert seg.quality == "failed" and "padding" in seg.reason


def test_tiny_lesion():
    truth = _disk(radius_px=15)  # 3 mm diameter
    for seed in (0, 1):
        seg, features = analyse_roi(_to_uint16(_tissue(seed) + 0.12 * truth))
        assert seg.quality != "failed"
        assert _dice(seg.mask, truth) >= 0.6
        assert features["effective_diameter_mm"] == pytest.approx(3.0, rel=0.3)


@pytest.mark.parametrize("texture_sd", [0.0, 0.02])
def test_centre_off_the_lesion_is_flagged(texture_sd):
    rng = np.random.default_rng(5)
    background = 0.45 + rng.normal(0.0, 0.004, SHAPE)
    if texture_sd:
        background = background + power_law_background(SHAPE, rng=rng, mean=0.0, sd=texture_sd)
    image = background + 0.15 * _disk(centre=(255.5, 405.5), radius_px=60)  # 15 mm right of the seed
    seg, features = analyse_roi(_to_uint16(image))
    assert seg.quality == "seed_off_lesion"
    assert "seed" in seg.reason
    assert seg.mask.any() and all(math.isfinite(value) for value in features.values())


def test_low_contrast_lesion():
    truth = _disk(radius_px=60)
    for seed in (0, 1, 2):  # contrast 0.02 on tissue texture of SD 0.02: a quarter of the weakest demo lesion
        seg = segment_lesion(_to_uint16(_tissue(seed, sd=0.02) + 0.02 * truth))
        assert seg.quality in ("ok", "low_contrast")
        assert _dice(seg.mask, truth) >= 0.8
    # the flag: a contrast-to-noise ratio below min_cnr
    flagged = segment_lesion(_to_uint16(_tissue(0, sd=0.02) + 0.02 * truth), min_cnr=seg.contrast_to_noise + 5)
    assert flagged.quality == "low_contrast" and "contrast-to-noise" in flagged.reason
    assert flagged.mask.any()


# --- segmentation of the demo phantoms (known true outlines) -----------------------------------------------


@pytest.fixture(scope="module")
def phantom_results():
    rows = []
    for lesion in demo_dataset(n_lesions=16, seed=1):
        view = lesion.views[0]
        geometry = dict(centre_rc=view.centre_rc, pixel_spacing_mm=view.pixel_spacing_mm)
        roi = crop_roi(view.image, value_range=view.value_range, **geometry).pixels
        truth = crop_mask(view.true_mask, **geometry)
        seg, features = analyse_roi(roi)
        rows.append(dict(morphology=lesion.morphology, diameter_mm=lesion.diameter_mm, dice=_dice(seg.mask, truth),
                         quality=seg.quality, features=features))
    return rows


@pytest.mark.slow
def test_phantoms_dice_and_size(phantom_results):
    dice = np.array([row["dice"] for row in phantom_results])
    error = np.array([row["features"]["effective_diameter_mm"] / row["diameter_mm"] - 1 for row in phantom_results])
    assert np.median(dice) >= 0.8
    assert np.median(np.abs(error)) <= 0.10
    circumscribed = [abs(e) for e, row in zip(error, phantom_results) if row["morphology"] == "circumscribed"]
    assert len(circumscribed) >= 5 and max(circumscribed) <= 0.25
    assert sum(row["quality"] == "failed" for row in phantom_results) == 0


def test_phantoms_spiculated_vs_circumscribed(phantom_results):
    def median(morphology, name):
        return np.median([row["features"][name] for row in phantom_results if row["morphology"] == morphology])

    assert median("spiculated", "spiculation") > median("circumscribed", "spiculation") + 0.1
    assert median("spiculated", "circularity") < median("circumscribed", "circularity")


# --- per-feature AUC report ----------------------------------------------------------------------------------


def test_feature_aucs_known_answers():
    labels = ["benign", "benign", "malignant", "malignant", "malignant"]
    features = {
        "up": [1.0, 2.0, 3.0, 4.0, 5.0],
        "down": [5.0, 4.0, 3.0, 2.0, 1.0],
        "with_nan": [1.0, np.nan, 3.0, np.nan, 0.5],
        "one_class_left": [np.nan, np.nan, 1.0, 2.0, 3.0],
    }
    aucs = feature_aucs(features, labels)
    assert list(aucs) == list(features)
    assert aucs["up"] == 1.0 and aucs["down"] == 0.0
    assert aucs["with_nan"] == pytest.approx(0.5)  # benign 1.0 vs malignant 3.0 and 0.5
    assert math.isnan(aucs["one_class_left"])
    assert feature_aucs({"up": features["up"]}, [0, 0, 1, 1, 1]) == {"up": 1.0}
    with pytest.raises(CadxInputError, match="values for"):
        feature_aucs({"short": [1.0, 2.0]}, labels)
    with pytest.raises(CadxInputError, match="benign or malignant"):
        feature_aucs({"up": features["up"]}, ["benign", "benign", "malignant", "malignant", "unknown"])


# --- real MIAS ROIs ------------------------------------------------------------------------------------------


def test_real_mias_rois(mias_dir):
    from cadx.io import read_raster
    from cadx.sources import parse_mias_info

    findings, _ = parse_mias_info(mias_dir / "Info.txt")
    by_ref = {finding.refnum: finding for finding in findings if finding.index == 1}
    for refnum in ("mdb001", "mdb010", "mdb023"):
        finding = by_ref[refnum]
        assert finding.centre_rc == (1024 - finding.y, finding.x)
        mammogram = read_raster(mias_dir / f"{refnum}.pgm", pixel_spacing_mm=0.2)
        roi = crop_roi(mammogram.pixels, centre_rc=finding.centre_rc, pixel_spacing_mm=0.2,
                       value_range=mammogram.value_range).pixels
        seg, features = analyse_roi(roi)
        assert seg.quality in QUALITIES and seg.reason
        if seg.quality == "failed":
            assert all(math.isnan(value) for value in features.values())
            continue
        assert all(math.isfinite(value) for value in features.values()), (refnum, features)
        if refnum in ("mdb010", "mdb023"):  # 13.2 mm and 11.6 mm circumscribed masses inside the field
            assert seg.quality == "ok"
            assert features["effective_diameter_mm"] == pytest.approx(finding.diameter_mm, rel=0.35)


# --- the named steps of segment_lesion reproduce the single-function version bit for bit ----------------------


def _pinned(cases):
    import json

    from tests.segmentation_cases import REFERENCE, fingerprint

    reference = json.loads(REFERENCE.read_text())
    for name, roi, options in cases:
        assert fingerprint(segment_lesion(roi, **options)) == reference[name], name


def test_segmentation_reproduces_the_pinned_outputs_on_phantoms():
    from tests.segmentation_cases import synthetic_cases

    _pinned(synthetic_cases())


def test_segmentation_reproduces_the_pinned_outputs_on_mias(mias_dir):
    from tests.segmentation_cases import mias_cases

    _pinned(mias_cases(mias_dir))


def test_segmentation_steps_one_at_a_time_on_a_disk():
    from cadx.analytic import partition_mask, refine_partition, search_partitions, segmentation_quality, working_image

    roi = _to_uint16(0.3 + 0.4 * ndi.gaussian_filter(_disk(radius_px=60.0).astype(float), 3.0))
    work = working_image(roi)
    assert work.failure is None and work.factor == 2 and work.pixel_mm == pytest.approx(0.2)
    assert work.f.shape == (256, 256) and work.seed_px == (128, 128) and work.f.min() == 0.0
    peak = search_partitions(work)
    assert peak is not None and peak.score > 0 and peak.h.shape == work.f.shape
    outer = refine_partition(work, peak)
    assert outer.level <= peak.level and outer.sigma_mm == peak.sigma_mm
    assert outer.score >= 0.8 * peak.score
    assert refine_partition(work, peak, outer_fraction=1.0).level == peak.level  # 1 keeps the peak's partition
    mask, region = partition_mask(work, outer)
    assert mask.shape == SHAPE and region.shape == work.f.shape
    assert _dice(mask, _disk(radius_px=60.0)) > 0.9  # the outer flank of a 0.3 mm blurred edge
    flags, reasons, cnr = segmentation_quality(work, mask, region)
    assert flags == [] and reasons == [] and cnr > 10
    # the same answer as the one-call pipeline
    seg = segment_lesion(roi)
    assert np.array_equal(seg.mask, mask) and seg.threshold == outer.level and seg.arg == peak.score


def test_segmentation_steps_report_what_cannot_grow():
    from cadx.analytic import search_partitions, working_image

    flat = working_image(np.full((64, 64), 7, np.uint16))
    assert flat.failure is not None and "flat" in flat.failure
    assert search_partitions(flat) is None
    padded = np.full((128, 128), 30000, np.uint16)
    padded[:, :64] = 0
    assert "air, padding" in working_image(padded, centre_rc=(64.0, 20.0)).failure
    with pytest.raises(CadxInputError, match="n_levels"):
        search_partitions(working_image(padded), n_levels=2)
