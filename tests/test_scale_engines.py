"""Sweeps at archive scale (issue 29, items 1 and 2): pooled taps and the approximate polynomial-kernel engine."""

import json

import numpy as np
import pytest
import torch
from sklearn.kernel_approximation import PolynomialCountSketch
from typer.testing import CliRunner

from cadx.cli import app
from cadx.cnn import PREPROCESSING_VERSION, TAP_POOLINGS, feature_preprocessing, pool_tap, tap_widths
from cadx.errors import CadxInputError
from cadx.records import ExperimentConfig, SvmEngineRecord, to_json
from cadx.sketch import count_sketch_add, hashes_from_sklearn, poly_features, sketch_hashes
from cadx.svm import APPROX_NOT_VALIDATED, AUTO_EXACT_MAX_TRAIN, cross_validate_by_lesion, resolve_svm_engine

runner = CliRunner()


# ------------------------------------------------------------------------------------------------ pooled taps ---
def test_pooling_of_a_known_map_by_hand():
    # two ROIs, two channels, 2x2 maps
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-1.0, 0.0], [0.0, 5.0]]],
                      [[[0.0, 0.0], [0.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    assert pool_tap(x, "avg").tolist() == [[3.0, 1.0], [1.0, 2.0]]
    assert pool_tap(x, "max").tolist() == [[6.0, 5.0], [4.0, 2.0]]
    assert pool_tap(x, "avgmax").tolist() == [[3.0, 1.0, 6.0, 5.0], [1.0, 2.0, 4.0, 2.0]]
    assert pool_tap(x, "flatten").tolist() == x.reshape(2, -1).tolist()  # C, H, W order, as before
    fc = torch.arange(6.0).reshape(2, 3)
    for pooling in TAP_POOLINGS:  # vectors are unchanged by pooling
        assert pool_tap(fc, pooling).tolist() == fc.tolist()
    with pytest.raises(CadxInputError, match="tap_pooling"):
        pool_tap(x, "median")


def test_pooled_widths_are_the_channels():
    widths = tap_widths("alexnet", pooling="avg")
    assert widths["conv1"] == 64 and widths["conv3"] == 384 and widths["pool5"] == 256 and widths["fc6"] == 4096
    assert tap_widths("alexnet", pooling="avgmax")["conv2"] == 2 * 192
    assert tap_widths("alexnet")["conv1"] == 64 * 63 * 63  # the paper's flattened map stays the default


def test_feature_store_key_differs_per_pooling():
    keys = {pooling: feature_preprocessing("fp32", pooling=pooling) for pooling in TAP_POOLINGS}
    assert keys["flatten"] == PREPROCESSING_VERSION == feature_preprocessing()  # stores written so far keep theirs
    assert len(set(keys.values())) == len(TAP_POOLINGS)
    assert keys["avg"] == f"{PREPROCESSING_VERSION}+pool-avg"
    assert feature_preprocessing("bf16", pooling="max") == f"{PREPROCESSING_VERSION}+bf16+pool-max"


def test_pooled_extraction_equals_pooling_the_flattened_map():
    from cadx.cnn import extract_features, load_backbone

    loaded = load_backbone("alexnet", weights="random")
    rois = np.random.default_rng(0).integers(0, 65535, size=(2, 64, 64), dtype=np.uint16)
    flat = extract_features(rois, backbone=loaded, taps=["conv5", "fc8"], num_threads=1)
    pooled = extract_features(rois, backbone=loaded, taps=["conv5", "fc8"], num_threads=1, pooling="avgmax")
    maps = flat["conv5"].reshape(2, 256, -1)
    assert pooled["conv5"].shape == (2, 512)
    np.testing.assert_allclose(pooled["conv5"], np.concatenate([maps.mean(axis=2), maps.max(axis=2)], axis=1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pooled["fc8"], flat["fc8"])


# ------------------------------------------------------------------------------------------ approximate engine ---
@pytest.mark.parametrize("degree", [1, 2, 3])
def test_sketch_features_equal_scikit_learns_polynomial_count_sketch(degree):
    X = np.random.default_rng(1).standard_normal((9, 13))
    reference = PolynomialCountSketch(gamma=0.4, coef0=2.0, degree=degree, n_components=32, random_state=3).fit(X)
    hashes = hashes_from_sklearn(reference)
    sketches = np.zeros((degree, 9, 32))
    count_sketch_add(sketches, X[:, :5], hashes, 0)  # streamed in two column blocks
    count_sketch_add(sketches, X[:, 5:], hashes, 5)
    ours = poly_features(sketches, hashes, gamma=0.4, coef0=2.0, degree=degree)
    np.testing.assert_allclose(ours, reference.transform(X), rtol=1e-12, atol=1e-12)


def test_first_sketch_is_exact_for_a_narrow_layer():
    X = np.random.default_rng(2).standard_normal((7, 10))
    hashes = sketch_hashes(10, 1, 16, seed=0)
    sketches = np.zeros((1, 7, 16))
    count_sketch_add(sketches, X, hashes, 0)
    F = poly_features(sketches, hashes, gamma=0.5, coef0=1.0, degree=1)
    np.testing.assert_allclose(F @ F.T, 0.5 * X @ X.T + 1.0, rtol=1e-12)  # degree 1: the kernel itself


def _small_set():
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 30)
    X = rng.standard_normal((60, 24))
    X[:, :6] += 0.9 * y[:, None]
    return X, y


APPROX_BOUND_FIXED_KERNEL = 0.02
"""Measured on :func:`_small_set` with one kernel (a = 1/p, c = 1, d = 2), D = 4096: largest fold-AUC difference 0.010,
decision values correlated 0.9988 with the exact engine's."""


def test_approx_agrees_with_exact_on_the_same_folds():
    X, y = _small_set()
    grid = {"gamma": [1 / 24], "coef0": [1.0], "degree": [2]}
    common = dict(seed=3, n_folds=3, n_inner=3, grid=grid)
    exact = cross_validate_by_lesion(X, y, np.arange(60), **common)
    approx = cross_validate_by_lesion(X, y, np.arange(60), engine="approx", components=4096, **common)
    assert approx.engine == "approx" and approx.models is None
    np.testing.assert_array_equal(approx.fold, exact.fold)  # the same folds
    assert np.abs(approx.fold_auc - exact.fold_auc).max() <= APPROX_BOUND_FIXED_KERNEL
    assert np.corrcoef(approx.decision, exact.decision)[0, 1] >= 0.99
    coarse = cross_validate_by_lesion(X, y, np.arange(60), engine="approx", components=64, **common)
    assert np.corrcoef(coarse.decision, exact.decision)[0, 1] < np.corrcoef(approx.decision, exact.decision)[0, 1]
    # Platt step as the exact engine's: strictly increasing, so the fold AUCs of the probabilities are the same
    np.testing.assert_allclose(approx.fold_auc_proba, approx.fold_auc)
    again = cross_validate_by_lesion(X, y, np.arange(60), engine="approx", components=4096, **common)
    np.testing.assert_array_equal(again.decision, approx.decision)  # deterministic for a seed


def test_exact_engine_is_the_default_and_equals_scikit_learns_grid_search():
    X, y = _small_set()
    common = dict(seed=1, n_folds=3, n_inner=3)
    default = cross_validate_by_lesion(X, y, np.arange(60), **common)
    plain = cross_validate_by_lesion(X, y, np.arange(60), engine="plain", **common)
    assert default.engine == "gram"
    np.testing.assert_allclose(default.decision, plain.decision, rtol=1e-7, atol=1e-9)
    assert default.best_params == plain.best_params


def test_auto_engine_switches_at_the_documented_size():
    assert resolve_svm_engine("exact", 10**6)[0] == "gram"
    assert resolve_svm_engine("approx", 10)[0] == "approx"
    engine, reason = resolve_svm_engine("auto", AUTO_EXACT_MAX_TRAIN)
    assert engine == "gram" and "5,000 training ROIs <= 5,000" in reason
    engine, reason = resolve_svm_engine("auto", AUTO_EXACT_MAX_TRAIN + 1)
    assert engine == "approx" and "5,001 training ROIs > 5,000" in reason and "NOT YET VALIDATED" in reason
    with pytest.raises(CadxInputError, match="svm_engine"):
        resolve_svm_engine("fast", 10)


def test_config_leaves_the_defaults_out_of_the_record():
    fields = dict(backbone="alexnet", weights={"name": "w", "sha256": "0" * 64, "source": "random"},
                  preprocessing=PREPROCESSING_VERSION, taps=["fc8"], ensemble_tap="fc8", analytic_version=None,
                  n_folds=5, n_inner=5, seed=0, grid="cadx.svm.default_grid", cv_groups="patient", roi_ids=[1],
                  roi_sha256=["a"], excluded_roi_ids=[])
    from cadx.records import WeightsRecord

    fields["weights"] = WeightsRecord(**fields["weights"])
    default = to_json(ExperimentConfig(**fields))
    assert "tap_pooling" not in default and "svm_engine" not in default  # old records keep their SHA-256
    scaled = to_json(ExperimentConfig(**fields, tap_pooling="avg",
                                      svm_engine=SvmEngineRecord("auto", "gram", "auto: ...", 0)))
    assert scaled["tap_pooling"] == "avg" and scaled["svm_engine"]["requested"] == "auto"


# ------------------------------------------------------------------------------------------------------- CLI ---
def test_cli_options_are_parsed_and_recorded(tmp_path):
    data = tmp_path / "data"
    assert runner.invoke(app, ["demo", "--lesions", "12", "--seed", "2", "--data-dir", str(data)]).exit_code == 0
    common = ["--backbone", "alexnet", "--weights", "random", "--data-dir", str(data), "--user", "tester",
              "--min-lesions-per-fold", "1", "--taps", "conv5,fc8", "--tap", "fc8", "--no-analytic",
              "--repeats", "1"]
    bad = runner.invoke(app, ["sweep", "--tap-pooling", "median", *common])
    assert bad.exit_code != 0 and "--tap-pooling" in bad.output
    bad = runner.invoke(app, ["sweep", "--svm-engine", "fast", *common])
    assert bad.exit_code != 0 and "--svm-engine" in bad.output
    out = tmp_path / "sweep.json"
    result = runner.invoke(app, ["sweep", "--tap-pooling", "avgmax", "--svm-engine", "approx",
                                 "--sketch-components", "256", "--json", str(out), *common])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "SVM engine: approx (Tensor-Sketch features and a linear SVM (asked for); NOT YET VALIDATED" in said
    assert "compare with --svm-engine exact on a subsample before quoting its numbers; sketch size 256)" in said
    record = json.loads(out.read_text())
    config = record["config"]
    assert config["tap_pooling"] == "avgmax" and config["preprocessing"].endswith("+pool-avgmax")
    assert config["svm_engine"] == {"requested": "approx", "engine": "approx",
                                    "reason": "Tensor-Sketch features and a linear SVM (asked for)"
                                              + APPROX_NOT_VALIDATED,
                                    "components": 256}
    assert record["results"]["sweep"]["conv5"]["n_features"] == 512  # 256 channels, average and maximum
    assert record["results"]["sweep"]["fc8"]["n_features"] == 1000
