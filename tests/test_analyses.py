"""The open-question analyses: pure functions on hand-computed examples, then on stored experiments."""

from __future__ import annotations

import numpy as np
import pytest

from cadx.analyses import embedding_2d, error_agreement, fused_features, pc_feature_correlation

# 8 cases: y, two classifiers' scores; worked by hand below
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
S1 = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.25, 0.7, 0.4])   # right: T T F F T T F T
S2 = np.array([0.6, 0.4, 0.7, 0.1, 0.3, 0.8, 0.2, 0.45])   # right: T F T F T F T T


def test_error_agreement_by_hand():
    result = error_agreement(S1, S2, Y, top=3)
    # both right: 0, 4, 7; only SVM1 right: 1, 5; only SVM2 right: 2, 6; both wrong: 3
    assert result.table.tolist() == [[3, 2], [2, 1]] and result.n == 8 and result.both_wrong == 1
    assert result.mcnemar_p == 1.0  # 2 vs 2 discordant
    assert result.both_wrong_expected == pytest.approx(3 * 3 / 8)
    # error indicators (0 0 1 1 0 0 1 0) and (0 1 0 1 0 1 0 0): cov = 1/8 - 9/64, var = 15/64 -> phi = -1/15
    assert result.error_correlation == pytest.approx(-1 / 15)
    # ranks (8 7 4 2 1 3 6 5) and (6 4 7 1 3 8 2 5): sum d^2 = 68 -> rho = 1 - 6*68/(8*63) = 4/21
    assert result.spearman_rho == pytest.approx(4 / 21)
    # |p1 - p2| = .3 .4 .4 .1 .2 .55 .5 .05 (case 2's is 0.39999... in floating point)
    assert result.most_disagreeing.tolist() == [5, 6, 1]


def test_mcnemar_exact_on_one_sided_discordance():
    y = np.array([1] * 10 + [0])  # one benign case, so that neither classifier calls every case one class
    s1 = np.array([0.9] * 10 + [0.1])
    s2 = np.array([0.1] * 6 + [0.9] * 4 + [0.1])
    result = error_agreement(s1, s2, y)
    assert result.table.tolist() == [[5, 6], [0, 0]] and result.refusal is None
    assert result.mcnemar_p == pytest.approx(2 * 0.5**6)  # exact binomial, two-sided
    assert np.isnan(result.error_correlation)  # SVM1 never errs


def test_error_agreement_threshold_and_bad_input():
    result = error_agreement(S1, S2, Y, threshold=0.35)
    # SVM1 at 0.35: 0.3 (case 2) still wrong; 0.4 (case 7, benign) now wrong
    assert result.table.sum() == 8 and result.table[1].sum() == 4
    with pytest.raises(ValueError, match="score2 has 7 values but y has 8"):
        error_agreement(S1, S2[:7], Y)
    with pytest.raises(ValueError, match="missing"):
        error_agreement(np.r_[S1[:7], np.nan], S2, Y)
    with pytest.raises(ValueError, match="0/1"):
        error_agreement(S1, S2, Y * 2)


def test_phi_and_mcnemar_are_refused_when_a_classifier_calls_every_case_one_class():
    """Every p1 and p2 below 0.5 (as on the MIAS masses): both call every lesion benign. The old code reported
    φ = 1.000 and McNemar p = 1, as if the two classifiers erred alike; their errors are just the malignant cases."""
    low1, low2 = S1 * 0.4, S2 * 0.4  # all < 0.5
    result = error_agreement(low1, low2, Y, names=("SVM1 (CNN)", "SVM2 (analytic)"), unit="lesions")
    assert result.table.tolist() == [[4, 0], [0, 4]]  # right on the 4 benign, wrong on the 4 malignant
    assert np.isnan(result.error_correlation) and np.isnan(result.mcnemar_p)
    assert result.refusal is not None and result.refusal.startswith(
        "SVM1 (CNN) calls every one of the 8 lesions benign at its threshold")
    # one classifier calling everything malignant is refused too, and a usable pair is not
    assert error_agreement(S1 + 1, S2, Y).refusal.startswith("the first classifier calls every one of the 8 "
                                                               "cases malignant")
    assert error_agreement(S1, S2, Y).refusal is None


def test_per_case_thresholds_and_the_training_prevalence_operating_point():
    from cadx.svm import operating_point

    # inner decision values 3 1 2 5 4 with 2 malignant training cases: the 2nd highest, 4
    assert operating_point([3.0, 1.0, 2.0, 5.0, 4.0], [1, 0, 0, 1, 0]) == 4.0
    assert operating_point([3.0, 1.0], [0, 0]) == float("inf")
    # per-case thresholds (e.g. two folds with their own operating points) against a hand count
    t1 = np.array([0.5] * 4 + [0.2] * 4)  # SVM1 in the second half: 0.1 0.25 0.7 0.4 -> F T T T: wrong 5 6 7
    result = error_agreement(S1, S2, Y, threshold=t1, threshold2=0.5)
    right1 = np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    right2 = np.array([1, 0, 1, 0, 1, 0, 1, 1], dtype=bool)
    assert result.table.tolist() == [[int((right1 & right2).sum()), int((right1 & ~right2).sum())],
                                     [int((~right1 & right2).sum()), int((~right1 & ~right2).sum())]]


def test_pc_feature_correlation_by_hand():
    t = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    X = np.column_stack([t, 3 * t + 1, np.full(5, 7.0)])  # one direction of variance (+ a constant column)
    F = np.column_stack([-t, t**2, [1.0, np.nan, 3.0, 4.0, 5.0]])
    result = pc_feature_correlation(X, F, feature_names=["minus_t", "t_squared", "partly_known"], n_components=1)
    assert result.explained_variance_ratio == pytest.approx([1.0])
    # PC1 is t (sign: largest loading positive); -t -> r = -1, t^2 symmetric -> 0, t + 3 on 4 known cases -> 1
    assert result.correlation[0] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-12)
    assert result.top_pairs(2) == [(1, "minus_t", pytest.approx(-1.0)), (1, "partly_known", pytest.approx(1.0))]
    with pytest.raises(ValueError, match="2 feature names"):
        pc_feature_correlation(X, F, feature_names=["a", "b"])


def test_fused_features_and_embedding():
    a, b = np.arange(6.0).reshape(3, 2), np.ones((3, 1))
    assert fused_features(a, b).tolist() == [[0, 1, 1], [2, 3, 1], [4, 5, 1]]
    with pytest.raises(ValueError, match="block 1 has 2 rows"):
        fused_features(a, b[:2])
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (10, 5)), rng.normal(5, 0.1, (10, 5))])
    first = embedding_2d(X, seed=1)
    assert first.shape == (20, 2) and np.array_equal(first, embedding_2d(X, seed=1))
    within = max(np.ptp(first[:10], axis=0).max(), np.ptp(first[10:], axis=0).max())
    between = np.linalg.norm(first[:10].mean(axis=0) - first[10:].mean(axis=0))
    assert between > within  # two separate clusters stay apart


# ------------------------------------------------------------------------------- on a stored demo experiment ---
@pytest.mark.slow
def test_analyses_on_a_stored_experiment(workspace_cache, workspace):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from cadx.workflows import exclude_roi, lesion_predictions
    from cadx.workflows.analyses import (
        agreement_analysis,
        correlation_analysis,
        embedding_analysis,
        experiment_data,
        fusion_analysis,
    )
    from cadx.workflows.experiments import experiment_summary
    from cadx.workflows.features import analytic_matrix, feature_store, resolve_backbone
    from tests.workspace_cache import demo_experiment

    loaded, _note = resolve_backbone("alexnet", weights="random")
    settings = {"min_lesions_per_class_per_fold": 1, "repeats": 1, "taps": ("conv5", "fc8"), "ensemble_tap": "fc8",
                "n_folds": 3, "seed": 0}
    # the demo set and this experiment, built once and copied into this workspace (tests/workspace_cache.py)
    experiment_id = workspace_cache.fill(workspace, demo_experiment, n_lesions=12, seed=5, settings=settings,
                                         name="analyses")
    summary = experiment_summary(workspace, experiment_id)

    # (a) the 2 x 2 table agrees with the right/wrong columns of the lesion predictions
    lesions = lesion_predictions(workspace, experiment_id)
    agreement = agreement_analysis(workspace, experiment_id, level="lesion", top=4, threshold=0.5)
    r1, r2 = lesions["right_p1"].astype(bool), lesions["right_p2"].astype(bool)
    assert agreement["result"].table.tolist() == [[int((r1 & r2).sum()), int((r1 & ~r2).sum())],
                                                  [int((~r1 & r2).sum()), int((~r1 & ~r2).sum())]]
    # by default each fold's operating point, chosen on its training data and recorded with the experiment
    record = experiment_data(workspace, experiment_id).record
    points = {key: np.array(record.results.methods[key].calibration.operating_point[0]) for key in ("A", "B")}
    chosen = agreement_analysis(workspace, experiment_id, level="lesion", top=4)
    folds, truth = lesions["fold"].to_numpy(int), lesions["truth"].to_numpy(int) == 1
    r1 = (lesions["decision1"].to_numpy(float) >= points["A"][folds]) == truth
    r2 = (lesions["decision2"].to_numpy(float) >= points["B"][folds]) == truth
    assert chosen["result"].table.tolist() == [[int((r1 & r2).sum()), int((r1 & ~r2).sum())],
                                               [int((~r1 & r2).sum()), int((~r1 & ~r2).sum())]]
    assert chosen["operating_points"]["SVM1 decision ≥"].tolist() == points["A"].tolist()
    assert "training data" in chosen["called_at"]
    top = agreement["disagreeing"]
    assert len(top) == 4 and top["disagreement"].is_monotonic_decreasing
    assert top["disagreement"].iloc[0] == pytest.approx(lesions["disagreement"].max())
    rois = agreement_analysis(workspace, experiment_id, level="roi")
    assert rois["result"].n == summary["results"]["n_rois"]

    # (b) PCs x analytic features: each r equals sklearn's PCA scores' correlation, up to the component's sign
    data = experiment_data(workspace, experiment_id)
    corr = correlation_analysis(workspace, experiment_id, tap="conv5", n_components=3)
    X = np.asarray(feature_store(workspace).load("conv5", data.hashes, backbone="alexnet",
                                                 weights_sha256=loaded.weights.sha256), dtype=np.float64)
    X = X[:, X.std(axis=0) > 0]
    scores = PCA(n_components=3, svd_solver="full").fit_transform(StandardScaler().fit_transform(X))
    F, names, _ = analytic_matrix(workspace, data.hashes)
    j = names.index("area_mm2")
    ok = np.isfinite(F[:, j])
    expected = [abs(np.corrcoef(scores[ok, i], F[ok, j])[0, 1]) for i in range(3)]
    assert np.abs(corr["frame"]["area_mm2"].to_numpy()) == pytest.approx(expected, abs=1e-8)
    assert corr["frame"].shape == (3, 21)

    # (c) Method D: the experiment's folds, fused width, tests paired against A, B and C with Bonferroni x 3
    fusion = fusion_analysis(workspace, experiment_id, tap="fc8")
    assert fusion["n_features"] == 1000 + 21
    assert len(fusion["method"]["fold_aucs"]) == 3 and 0.0 <= fusion["method"]["pooled_auc"] <= 1.0
    assert [c["comparison"] for c in fusion["comparisons"]] == ["D vs A", "D vs B", "D vs C"]
    for c in fusion["comparisons"]:
        assert c["delong_p_bonferroni"] == pytest.approx(min(1.0, 3 * c["delong_p"]))
    again = fusion_analysis(workspace, experiment_id, tap="fc8")
    assert np.array_equal(again["proba"], fusion["proba"])  # deterministic for the experiment's seed

    # (d) the embedding: one point per ROI; an ROI excluded after the run shows as such
    excluded = int(data.predictions["roi_id"].iloc[0])
    exclude_roi(workspace, excluded, reason="location_marker", user="tester")
    frame = embedding_analysis(workspace, experiment_id, tap="fc8", perplexity=5)
    assert len(frame) == summary["results"]["n_rois"] and np.isfinite(frame[["x", "y"]].to_numpy()).all()
    assert frame.loc[frame["roi_id"] == excluded, "status"].item() == "excluded since"
    assert set(frame["label"]) == {"benign", "malignant"}
    with pytest.raises(Exception, match="no tap 'fc6'"):
        embedding_analysis(workspace, experiment_id, tap="fc6")
