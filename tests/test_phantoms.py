"""Tests of cadx.phantoms: the SYNTHETIC demo lesion set (determinism, geometry, texture, QC coverage)."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import perimeter

from cadx import phantoms
from cadx.errors import CadxInputError
from cadx.roi import crop_roi, estimate_background_threshold

N_SAMPLE = 30  # three blocks of 10: every placement occurs three times


def _circularity(mask: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    mask = np.pad(mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], 1)
    return float(4 * np.pi * mask.sum() / perimeter(mask) ** 2)


def _band_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean inside the outline minus mean in the band 2-5 mm outside it."""
    rows, cols = np.nonzero(mask)
    r0, r1 = max(rows.min() - 60, 0), rows.max() + 61
    c0, c1 = max(cols.min() - 60, 0), cols.max() + 61
    inside = mask[r0:r1, c0:c1]
    distance = ndimage.distance_transform_edt(~inside)
    band = (distance > 20) & (distance <= 50)
    patch = image[r0:r1, c0:c1]
    return float(patch[inside].mean() - patch[band].mean())


@pytest.fixture(scope="module")
def sample():
    """Per-lesion and per-view facts of the first 30 demo lesions (images are not kept: the set is a generator)."""
    lesions, views = [], []
    for lesion in phantoms.demo_dataset(n_lesions=N_SAMPLE, seed=0):
        lesions.append(
            {
                "key": lesion.lesion_key,
                "patient": lesion.patient_key,
                "label": lesion.label,
                "morphology": lesion.morphology,
                "placement": lesion.placement,
                "diameter": lesion.diameter_mm,
                "views": [v.view for v in lesion.views],
                "lateralities": {v.laterality for v in lesion.views},
            }
        )
        for view in lesion.views:
            mask = view.true_mask
            marked = tuple(int(v) for v in np.rint(view.centre_rc))
            threshold = estimate_background_threshold(view.image, value_range=view.value_range)
            crop = crop_roi(view.image, centre_rc=view.centre_rc, pixel_spacing_mm=view.pixel_spacing_mm,
                            value_range=view.value_range, background_threshold=threshold,
                            lesion_diameter_mm=lesion.diameter_mm)
            views.append(
                {
                    "key": lesion.lesion_key,
                    "morphology": lesion.morphology,
                    "placement": lesion.placement,
                    "image_ok": view.image.dtype == np.float32 and view.image.shape == phantoms.IMAGE_SHAPE
                    and float(view.image.min()) >= 0.0 and float(view.image.max()) <= 1.0,
                    "meta": (view.value_range, view.pixel_spacing_mm),
                    "area_ratio": mask.sum() / (np.pi * (lesion.diameter_mm / 2 / 0.1) ** 2),
                    "circularity": _circularity(mask),
                    "contrast": _band_contrast(view.image, mask),
                    "marked_inside": bool(mask[marked]),
                    "mark_error_mm": 0.1 * float(np.hypot(*np.subtract(view.centre_rc, view.true_centre_rc))),
                    "padded": crop.padded_fraction,
                    "background": crop.background_fraction,
                    "flags": crop.flags,
                }
            )
    return lesions, views


def test_module_says_it_is_synthetic():
    assert "SYNTHETIC" in phantoms.__doc__ and "SYNTHETIC" in phantoms.demo_dataset.__doc__


def test_demo_dataset_is_a_lazy_generator():
    dataset = phantoms.demo_dataset(n_lesions=1000, seed=0)
    assert inspect.isgenerator(dataset)
    first = next(dataset)  # only one lesion generated
    assert first.lesion_key == "demo-L0001" and first.patient_key.startswith("demo-P")


def test_deterministic_and_independent_of_n_lesions():
    five = list(phantoms.demo_dataset(n_lesions=5, seed=3))
    first_of_ten = list(itertools.islice(phantoms.demo_dataset(n_lesions=10, seed=3), 5))
    assert len(five) == 5
    for a, b in zip(five, first_of_ten):
        assert (a.lesion_key, a.patient_key, a.label, a.morphology, a.diameter_mm, a.placement) == (
            b.lesion_key, b.patient_key, b.label, b.morphology, b.diameter_mm, b.placement)
        assert len(a.views) == len(b.views)
        for va, vb in zip(a.views, b.views):
            assert (va.view, va.laterality, va.centre_rc, va.true_centre_rc) == (
                vb.view, vb.laterality, vb.centre_rc, vb.true_centre_rc)
            np.testing.assert_array_equal(va.image, vb.image)
            np.testing.assert_array_equal(va.true_mask, vb.true_mask)
    other_seed = next(phantoms.demo_dataset(n_lesions=1, seed=4))
    assert not np.array_equal(other_seed.views[0].image, five[0].views[0].image)


def test_generate_lesion_is_deterministic():
    kwargs = {"label": "malignant", "morphology": "spiculated", "diameter_mm": 12.0, "views": ("CC",)}
    a = phantoms.generate_lesion(42, **kwargs)
    b = phantoms.generate_lesion(np.random.default_rng(42), **kwargs)
    np.testing.assert_array_equal(a.views[0].image, b.views[0].image)
    np.testing.assert_array_equal(a.views[0].true_mask, b.views[0].true_mask)
    assert a.views[0].centre_rc == b.views[0].centre_rc


def test_labels_are_balanced_and_morphology_follows_label(sample):
    lesions, _ = sample
    labels = [lesion["label"] for lesion in lesions]
    assert labels.count("benign") == labels.count("malignant") == N_SAMPLE // 2  # 5 + 5 per block of 10
    benign = [lesion["morphology"] for lesion in lesions if lesion["label"] == "benign"]
    malignant = [lesion["morphology"] for lesion in lesions if lesion["label"] == "malignant"]
    assert benign.count("circumscribed") > len(benign) / 2
    assert malignant.count("circumscribed") < len(malignant) / 2
    assert all(5.0 <= lesion["diameter"] <= 30.0 for lesion in lesions)


def test_views_keys_and_patients(sample):
    lesions, views = sample
    for lesion in lesions:
        assert lesion["views"] in (["CC", "MLO"], ["CC", "MLO", "ML"])
        assert len(lesion["lateralities"]) == 1 and lesion["lateralities"] <= {"L", "R"}
    assert [lesion["key"] for lesion in lesions] == [f"demo-L{k:04d}" for k in range(1, N_SAMPLE + 1)]
    patients = [lesion["patient"] for lesion in lesions]
    assert len(set(patients)) == 8 * N_SAMPLE // 10  # two patients per block have 2 lesions
    assert all(view["image_ok"] for view in views)
    assert all(view["meta"] == ((0.0, 1.0), (0.1, 0.1)) for view in views)


def test_mask_area_matches_the_diameter(sample):
    _, views = sample
    circumscribed = [view["area_ratio"] for view in views if view["morphology"] == "circumscribed"]
    assert circumscribed and all(abs(ratio - 1) < 0.15 for ratio in circumscribed)
    assert all(abs(view["area_ratio"] - 1) < 0.05 for view in views)  # effective diameter, every morphology


def test_marked_centre_is_inside_the_true_mask(sample):
    _, views = sample
    assert all(view["marked_inside"] for view in views)
    errors = [view["mark_error_mm"] for view in views]
    assert max(errors) < 3.0 and np.mean(errors) > 0.1  # a simulated marking error, small


def test_lesion_is_brighter_than_its_surroundings(sample):
    _, views = sample
    contrasts = np.array([view["contrast"] for view in views])
    assert contrasts.mean() > 0.04
    assert (contrasts > 0).mean() >= 0.9


def test_spiculated_outlines_are_less_circular_than_circumscribed():
    def circularities(morphology):
        return [
            _circularity(phantoms.generate_lesion(seed, label="benign", morphology=morphology, diameter_mm=15.0,
                                                  views=("CC",)).views[0].true_mask)
            for seed in range(4)
        ]

    spiculated, circumscribed = circularities("spiculated"), circularities("circumscribed")
    assert max(spiculated) < min(circumscribed)
    assert np.median(circularities("ill-defined")) < np.median(circumscribed)


def test_crop_flags_are_exercised(sample):
    _, views = sample
    interior = [view for view in views if view["placement"] == "interior"]
    assert all(view["flags"] == () and view["padded"] == 0 for view in interior)
    border = [view for view in views if view["placement"] == "image_border"]
    assert border and all("padded" in view["flags"] for view in border)
    at_skin = [view for view in views if view["placement"] == "at_skin"]
    assert at_skin and all(view["background"] > 0.3 for view in at_skin)
    assert any("mostly_background" in view["flags"] for view in at_skin)
    near_skin = [view for view in views if view["placement"] == "near_skin"]
    assert near_skin and all(view["background"] > 0.02 for view in near_skin)


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_background_power_spectrum_slope(beta):
    field = phantoms.power_law_background((512, 512), beta=beta, rng=1, mean=0.45, sd=0.08)
    assert field.dtype == np.float32 and field.shape == (512, 512)
    assert field.mean() == pytest.approx(0.45, abs=1e-4) and field.std() == pytest.approx(0.08, rel=1e-3)
    power = np.abs(np.fft.fft2(field - field.mean())) ** 2
    frequency = np.hypot(np.fft.fftfreq(512)[:, None], np.fft.fftfreq(512)[None, :]).ravel()
    edges = np.geomspace(0.02, 0.25, 16)  # a mid-frequency band, cycles/pixel
    which = np.digitize(frequency, edges)
    centres = [frequency[which == i].mean() for i in range(1, len(edges))]
    means = [power.ravel()[which == i].mean() for i in range(1, len(edges))]
    slope = np.polyfit(np.log(centres), np.log(means), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.3)


def test_background_is_deterministic():
    a = phantoms.power_law_background((64, 96), rng=5)
    b = phantoms.power_law_background((64, 96), rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 96)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"label": "unknown"},
        {"morphology": "round"},
        {"diameter_mm": 0.5},
        {"diameter_mm": float("nan")},
        {"views": ("CC", "CC")},
        {"views": ()},
        {"laterality": "X"},
        {"placement": "somewhere"},
    ],
)
def test_generate_lesion_rejects_bad_input(kwargs):
    args = {"label": "benign", "morphology": "circumscribed", "diameter_mm": 10.0}
    args.update(kwargs)
    with pytest.raises(CadxInputError):
        phantoms.generate_lesion(0, **args)


def test_bad_dataset_and_background_arguments():
    with pytest.raises(CadxInputError):
        phantoms.demo_dataset(n_lesions=0)
    with pytest.raises(CadxInputError):
        phantoms.demo_dataset(seed=-1)
    with pytest.raises(CadxInputError):
        phantoms.power_law_background((4, 4), rng=0)
    with pytest.raises(CadxInputError):
        phantoms.power_law_background((64, 64), beta=-1.0, rng=0)
