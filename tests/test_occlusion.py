"""Occlusion sensitivity: the map on hand-computed examples, on synthetic phantoms against their truth masks, and of
a stored experiment's SVM1 (refitted fold model reproducing the stored p1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cadx import phantoms
from cadx.occlusion import heat_overlay, occlusion_map, patch_positions


def test_patch_positions_cover_the_edge():
    assert patch_positions(8, 4, 2) == [0, 2, 4]
    assert patch_positions(10, 4, 4) == [0, 4, 6]  # the last patch is moved back to end at the edge
    with pytest.raises(ValueError, match="patch"):
        patch_positions(8, 9, 2)


def test_occlusion_map_by_hand():
    image = np.ones((8, 8))
    # a scorer that looks at one pixel only: each patch hiding (0, 0) drops the score by 1
    result = occlusion_map(image, lambda stack: stack[:, 0, 0], patch=4, stride=2, fill=0.0)
    assert result.base_score == 1.0 and len(result.scores) == 9
    assert result.sensitivity[0, 0] == 1.0  # the one patch covering it hides it
    assert result.sensitivity[3, 3] == pytest.approx(1 / 4)  # 4 patches cover (3, 3), one of them hides (0, 0)
    assert result.sensitivity[7, 7] == 0.0
    # a sum scorer: every patch hides 16 pixels of 1
    total = occlusion_map(image, lambda stack: stack.sum(axis=(1, 2)), patch=4, stride=4, fill=0.0)
    assert np.all(total.sensitivity == 16.0)
    with pytest.raises(ValueError, match="one value per image"):
        occlusion_map(image, lambda stack: stack.sum(axis=1), patch=4, stride=4)


def test_heat_overlay_colours_by_sign():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    out = heat_overlay(rgb, np.array([[1.0, -1.0], [0.0, 0.5]]), alpha=0.5)
    assert out[0, 0].tolist() == [178, 50, 50] and out[0, 1].tolist() == [50, 50, 178]
    assert out[1, 0].tolist() == [100, 100, 100]


def _lesion_detector(radius: float):
    """A location-free mass detector: the strongest bright blob of the lesion's size (Laplacian of Gaussian)."""
    sigma = radius / np.sqrt(2)

    def score(stack: np.ndarray) -> np.ndarray:
        return np.array([(-ndimage.gaussian_laplace(s.astype(np.float64), sigma)).max() for s in stack])

    return score, sigma


@pytest.mark.slow
def test_occlusion_highlights_the_phantom_lesion_not_the_background():
    """On SYNTHETIC phantoms: when the scorer responds to the lesion (its strongest response lies inside the true
    mask), the occlusion map is higher on the lesion than on the background."""
    checked = 0
    for seed in range(1, 7):
        for morphology, label in (("spiculated", "malignant"), ("circumscribed", "benign")):
            view = phantoms.generate_lesion(seed, label=label, morphology=morphology, diameter_mm=12.0,
                                            views=("CC",)).views[0]
            r, c = (int(x) for x in view.true_centre_rc)
            image = view.image[r - 128:r + 128, c - 128:c + 128]
            mask = view.true_mask[r - 128:r + 128, c - 128:c + 128]
            score, sigma = _lesion_detector(np.sqrt(mask.sum() / np.pi))
            response = -ndimage.gaussian_laplace(image.astype(np.float64), sigma)
            if not mask[np.unravel_index(np.argmax(response), response.shape)]:
                continue  # the background has a stronger blob of this size: nothing to explain about the lesion
            checked += 1
            result = occlusion_map(image, score, patch=32, stride=32)
            inside, outside = result.sensitivity[mask].mean(), result.sensitivity[~mask].mean()
            assert inside > 5 * max(outside, 0.0) and inside > 0, (seed, morphology, inside, outside)
    assert checked >= 10  # the detector finds most lesions; each one it finds is what the map points at


@pytest.mark.slow
def test_occlusion_of_a_stored_experiment_reproduces_p1(workspace_cache, workspace):
    from cadx.workflows import import_demo
    from cadx.workflows.analyses import experiment_data, occlusion_analysis
    from cadx.workflows.experiments import ExperimentSettings, run_experiment
    from cadx.workflows.features import resolve_backbone

    if workspace.engine.url.get_backend_name() != "sqlite":
        pytest.skip("reads the stored record only; runs once, on SQLite")
    workspace_cache.fill(workspace, import_demo, n_lesions=12, seed=5)
    loaded, _ = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(workspace, loaded, ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1, taps=("fc8",), ensemble_tap="fc8",
                                                                         n_folds=3, analytic=False),
                                   name="occlusion", user="tester")
    roi_id = int(experiment_data(workspace, experiment_id).predictions["roi_id"].iloc[3])
    out = occlusion_analysis(workspace, experiment_id, roi_id, patch=256, stride=256, loaded=loaded)
    # the refitted fold SVM + recovered sigmoid on re-extracted features give the stored p1
    assert out["decision"] == pytest.approx(out["decision_stored"], rel=1e-6)
    assert out["p1"] == pytest.approx(out["p1_stored"], abs=1e-6)
    result = out["map"]
    assert result.sensitivity.shape == (512, 512) and len(result.scores) == 4
    # four disjoint quadrants: each quadrant's value is p1 minus p1 with that quadrant hidden
    for (r, c), s in zip(result.positions, result.scores):
        assert result.sensitivity[r + 5, c + 5] == pytest.approx(out["p1"] - s)
    with pytest.raises(Exception, match="not in experiment"):
        occlusion_analysis(workspace, experiment_id, 10_000, loaded=loaded)


def test_a_flat_p1_is_called_degenerate_in_words():
    """SVM1 carried no signal: p1 moves by 0.0001 at most. The map would be full red/blue; the scale says so."""
    from cadx.occlusion import DEGENERATE_DELTA_P, occlusion_scale

    image = np.ones((8, 8))
    result = occlusion_map(image, lambda stack: 0.5 + 0.0001 * (1 - stack[:, 0, 0]), patch=4, stride=4, fill=0.0)
    scale = occlusion_scale(result.sensitivity)
    assert scale.max_abs == pytest.approx(0.0001) and DEGENERATE_DELTA_P == 0.01
    assert scale.degenerate and "at most 0.0001, below 0.01" in scale.message and "means nothing" in scale.message
    clamped = occlusion_scale(np.full((2, 2), 0.3), platt_clamped=True)  # a large change, but a floored slope
    assert clamped.degenerate and "Platt slope was held at its floor" in clamped.message


def test_a_planted_signal_gets_a_colour_bar_over_its_max_change():
    from cadx.occlusion import colour_bar, occlusion_scale

    image = np.ones((8, 8))
    # hiding (0, 0) drops the score by 0.2, hiding (7, 7) raises it by 0.3: by hand the largest |Δp| is 0.3
    result = occlusion_map(image, lambda stack: 0.5 + 0.2 * stack[:, 0, 0] - 0.3 * stack[:, 7, 7], patch=4,
                           stride=4, fill=0.0)
    assert result.sensitivity[0, 0] == pytest.approx(0.2) and result.sensitivity[7, 7] == pytest.approx(-0.3)
    scale = occlusion_scale(result.sensitivity)
    assert scale.max_abs == pytest.approx(0.3) and not scale.degenerate and scale.message is None
    bar = colour_bar(scale.max_abs, width=101, height=4, alpha=0.5)
    # the ends are full blue (-0.3) and full red (+0.3), the centre (0) the grey unchanged, as heat_overlay draws
    assert bar.shape == (4, 101, 3)
    assert bar[0, 0].tolist() == [64, 64, 192] and bar[0, 100].tolist() == [192, 64, 64]
    assert bar[0, 50].tolist() == [128, 128, 128]
    # the map's own colour at (7, 7) (Δp -0.3) is the bar's left end over the same grey
    grey = np.full((8, 8, 3), 128, np.uint8)
    assert heat_overlay(grey, result.sensitivity, alpha=0.5)[7, 7].tolist() == bar[0, 0].tolist()
