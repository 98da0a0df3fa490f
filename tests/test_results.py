"""Reading experiments back (cadx.workflows.results): lesion-level aggregation checked against a hand computation,
Table 1 / tests / curve tables, the sweep table, the ROI overlay, renaming and deleting. On SQLite and PostgreSQL.

The experiments here are written directly (known predictions, no CNN), so every number can be computed by hand.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from cadx.errors import CadxInputError
from cadx.records import Binormal, Calibration, LevelResults, MethodRecord, RepeatedMethod, Repeats, RocPoints, to_json
from cadx.workflows import (
    backbone_choices,
    comparison_table,
    delete_experiment,
    experiment_results,
    import_demo,
    lesion_predictions,
    list_experiments,
    method_table,
    rename_experiment,
    roc_curve_table,
    roi_overlay,
    roi_predictions,
    sweep_table,
)
from cadx.workflows.features import roi_records
from db.models import Experiment, Job, Prediction

SWEEP = {
    "conv1": {"n_features": 290400, "n_features_nonconstant": 200000, "auc_mean": 0.6, "auc_sd": 0.1,
              "auc_se": 0.0707, "fold_aucs": [0.5, 0.7], "seconds": 3.0},
    "fc6": {"n_features": 4096, "n_features_nonconstant": 4000, "auc_mean": 0.8, "auc_sd": 0.05, "auc_se": 0.035,
            "fold_aucs": [0.75, 0.85], "seconds": 1.0},
}


def _hand_auc(y, s) -> float:
    """P(score of a malignant case > score of a benign one), ties counting one half."""
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.fixture
def demo(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=6, seed=1)
    return workspace


def _make_experiment(ws, *, name="written", taps=("conv1", "fc6"), excluded=(), analytic=True) -> int:
    """An experiment with predictions known in advance: 2 folds by lesion (both labels in each fold), p1 and p2
    fixed functions of the ROI id, p3 their mean."""
    records = roi_records(ws)
    labels = {r.lesion_id: r.label for r in records}
    order = sorted(labels, key=lambda lesion: (labels[lesion], lesion))
    fold_of = {lesion: i % 2 for i, lesion in enumerate(order)}
    methods = {"A": {"title": "SVM1 (CNN alexnet fc6)", "auc_mean": 0.7, "auc_sd": 0.1, "auc_se": 0.07,
                     "fold_aucs": [0.6, 0.8], "pooled_auc": 0.71, "pooled_ci95": [0.5, 0.9], "lesion_auc": 0.72,
                     "lesion_clustered_bootstrap_ci95": [0.55, 0.85], "roc": {"fpr": [0, 0.5, 1], "tpr": [0, 0.75, 1]},
                     "binormal": {"a": 1.0, "b": 1.0, "auc": 0.76, "fpr": [0, 0.4, 1], "tpr": [0, 0.8, 1]},
                     "seconds": 2.5}}
    if analytic:
        methods["B"] = dict(methods["A"], title="SVM2 (analytic features)", auc_mean=0.65, seconds=1.5)
        methods["C"] = dict(methods["A"], title="Ensemble (p1 + p2) / 2", auc_mean=0.75, seconds=4.0)
    comparisons = [{"comparison": c, "auc_difference": 0.05, "delong_p": 0.2, "delong_ci95": [-0.1, 0.2],
                    "paired_t_p": 0.3, "nadeau_bengio_p": 0.4, "delong_p_bonferroni": 0.6,
                    "paired_t_p_bonferroni": 0.9, "nadeau_bengio_p_bonferroni": 1.0}
                   for c in ("C vs A", "C vs B", "A vs B")] if analytic else []
    with ws.sessions.begin() as session:
        experiment = Experiment(
            name=name, kind="sweep", config_sha256="0" * 64, code_version="test", seconds=12.0,
            config={"backbone": "alexnet", "weights": {"name": "alexnet/random(seed=0)", "sha256": "ab" * 32,
                                                       "source": "random"},
                    "preprocessing": "imagenet-227-v1", "taps": list(taps), "ensemble_tap": "fc6",
                    "analytic_version": "analytic-1.0" if analytic else None, "n_folds": 2, "n_inner": 2, "seed": 0,
                    "grid": "cadx.svm.default_grid", "cv_groups": "patient", "roi_ids": [r.id for r in records],
                    "roi_sha256": [r.sha256 for r in records], "excluded_roi_ids": list(excluded)},
            results={"n_rois": len(records), "n_lesions": len(labels), "n_patients": 3,
                     "n_malignant_rois": sum(r.label for r in records), "weights_note": "",
                     "sweep": {t: SWEEP[t] for t in taps}, "methods": methods, "comparisons": comparisons},
            uses_synthetic_data=True, uses_random_weights=True, created_by="tester",
        )
        session.add(experiment)
        session.flush()
        for r in records:
            p1 = (r.id * 0.37) % 1.0
            p2 = (r.id * 0.61 + 0.2) % 1.0 if analytic else None
            session.add(Prediction(experiment_id=experiment.id, roi_id=r.id, roi_sha256=r.sha256,
                                   lesion_id=r.lesion_id, truth=r.label, fold=fold_of[r.lesion_id], p1=p1, p2=p2,
                                   p3=None if p2 is None else (p1 + p2) / 2, decision1=p1 - 0.5,
                                   decision2=None if p2 is None else p2 - 0.5))
        return experiment.id


def test_lesion_level_is_the_mean_of_each_lesions_rois(demo):
    experiment_id = _make_experiment(demo)
    rois = roi_predictions(demo, experiment_id)
    records = roi_records(demo)
    assert rois["roi_id"].tolist() == [r.id for r in records]
    assert rois["p1"].tolist() == pytest.approx([(r.id * 0.37) % 1.0 for r in records])

    # by hand: sum and count per lesion
    sums: dict[int, list[float]] = {}
    truth: dict[int, int] = {}
    folds: dict[int, int] = {}
    for row in rois.itertuples():
        entry = sums.setdefault(row.lesion_id, [0.0, 0.0, 0.0, 0])
        entry[0] += row.p1
        entry[1] += row.p2
        entry[2] += row.p3
        entry[3] += 1
        truth[row.lesion_id] = row.truth
        folds[row.lesion_id] = row.fold
    lesions = lesion_predictions(demo, experiment_id)
    assert sorted(lesions["lesion_id"]) == sorted(sums) and len(lesions) == 6
    for row in lesions.itertuples():
        s1, s2, s3, n = sums[row.lesion_id]
        assert row.n_rois == n
        assert row.p1 == pytest.approx(s1 / n) and row.p2 == pytest.approx(s2 / n)
        assert row.p3 == pytest.approx(s3 / n) == pytest.approx((row.p1 + row.p2) / 2)
        assert row.truth == truth[row.lesion_id] and row.fold == folds[row.lesion_id]
        assert row.disagreement == pytest.approx(abs(s1 / n - s2 / n))
        assert row.right_p1 == ((s1 / n >= 0.5) == (truth[row.lesion_id] == 1))

    results = experiment_results(demo, experiment_id, "lesion")
    assert results.level == "lesion" and results.n_cases == 6
    y = [truth[k] for k in sorted(sums)]
    for key, index in (("A", 0), ("B", 1), ("C", 2)):
        scores = [sums[k][index] / sums[k][3] for k in sorted(sums)]
        method = results.methods[key]
        assert method.pooled_auc == pytest.approx(_hand_auc(y, scores))
        assert method.lesion_auc == pytest.approx(_hand_auc(y, scores))
        fold_aucs = [_hand_auc([t for t, k in zip(y, sorted(sums)) if folds[k] == f],
                               [s for s, k in zip(scores, sorted(sums)) if folds[k] == f]) for f in (0, 1)]
        assert method.fold_aucs == pytest.approx(fold_aucs)
        assert method.auc_mean == pytest.approx(np.mean(fold_aucs))
        assert method.auc_sd == pytest.approx(np.std(fold_aucs, ddof=1))
        assert method.auc_se == pytest.approx(np.std(fold_aucs, ddof=1) / np.sqrt(2))
        assert method.seconds == {"A": 2.5, "B": 1.5, "C": 4.0}[key]  # training time is the ROI level's
        assert method.roc.fpr[0] == 0 and method.roc.tpr[-1] == 1
    assert [c.comparison for c in results.comparisons] == ["C vs A", "C vs B", "A vs B"]
    for c in results.comparisons:
        assert c.delong_p_bonferroni == pytest.approx(min(1.0, 3 * c.delong_p))


def test_roi_level_is_what_the_experiment_stored_and_tables_follow_it(demo):
    experiment_id = _make_experiment(demo)
    results = experiment_results(demo, experiment_id)  # ROI level by default
    with demo.sessions() as session:
        stored = session.get(Experiment, experiment_id).results
    assert to_json(results.methods) == stored["methods"]
    # a record of schema 1 (no version key): its comparisons are the paper's family
    assert to_json(results.comparisons) == [{"family": "paper", **c} for c in stored["comparisons"]]
    assert results.n_cases == stored["n_rois"]

    table = method_table(results)
    assert table["classifier"].tolist() == ["SVM1 (CNN features)", "SVM2 (analytic features)",
                                            "Ensemble (SVM1 + SVM2)"]
    assert table["AUC"].tolist() == [0.7, 0.65, 0.75]
    assert table.loc[0, ["pooled AUC", "CI95 low", "CI95 high", "lesion AUC", "binormal AUC", "time (s)"]] \
        .tolist() == [0.71, 0.5, 0.9, 0.72, 0.76, 2.5]
    tests = comparison_table(results)
    assert tests["comparison"].tolist()[0] == "Ensemble (SVM1 + SVM2) vs SVM1 (CNN features)"
    # a record of schema 1: its headline is the first seed's Nadeau-Bengio test as recorded; its DeLong test on
    # probabilities pooled over folds (0.2) is not shown, and no within-fold-rank DeLong was recorded
    assert tests.loc[0, ["headline p", "headline p (Bonferroni)", "paired t p (first seed)",
                         "Nadeau-Bengio p (first seed, Bonferroni)"]].tolist() == [0.4, 1.0, 0.3, 1.0]
    assert tests.loc[0, "headline test"].startswith("Nadeau-Bengio corrected t, 1 seed × ")
    assert 0.2 not in tests.loc[0].tolist() and pd.isna(tests.loc[0, "DeLong p (within-fold ranks)"])
    curves = roc_curve_table(results)
    assert len(curves) == 3 * (3 + 3)
    assert set(curves["curve"]) == {"empirical", "binormal"}
    with pytest.raises(CadxInputError, match="unknown level"):
        experiment_results(demo, experiment_id, "patient")


def test_an_experiment_without_method_b_has_no_ensemble_or_tests(demo):
    experiment_id = _make_experiment(demo, analytic=False)
    lesions = lesion_predictions(demo, experiment_id)
    assert lesions["p2"].isna().all() and lesions["right_p2"].isna().all()
    results = experiment_results(demo, experiment_id, "lesion")
    assert list(results.methods) == ["A"] and results.comparisons == []
    assert comparison_table(results).empty and len(method_table(results)) == 1


def test_sweep_table_and_experiment_list(demo):
    first = _make_experiment(demo, name="before exclusions")
    second = _make_experiment(demo, name="fc6 only", taps=("fc6",), excluded=(1, 2))
    table = sweep_table(demo, [first, second])
    assert table[table["experiment_id"] == first]["tap"].tolist() == ["conv1", "fc6"]
    assert table[table["experiment_id"] == first]["depth"].tolist() == [0.0, 1.0]
    row = table[(table["experiment_id"] == first) & (table["tap"] == "conv1")].iloc[0]
    assert (row["n_features"], row["n_features_nonconstant"], row["auc_mean"], row["auc_se"], row["seconds"]) == (
        290400, 200000, 0.6, 0.0707, 3.0)
    assert table[table["experiment_id"] == second]["tap"].tolist() == ["fc6"]

    listed = list_experiments(demo)
    assert [e["id"] for e in listed] == [second, first]  # newest first
    assert listed[0]["n_excluded"] == 2 and listed[1]["n_excluded"] == 0
    assert listed[1]["best_tap"] == "fc6" and listed[1]["best_tap_auc"] == 0.8
    assert listed[1]["auc_C"] == 0.75 and listed[1]["weights_source"] == "random"
    assert listed[1]["uses_random_weights"] and listed[1]["uses_synthetic_data"]
    assert [e["id"] for e in list_experiments(demo, limit=1)] == [second]
    with pytest.raises(CadxInputError, match="no such experiment"):
        sweep_table(demo, [999])


def test_rename_and_delete(demo):
    keep = _make_experiment(demo, name="keep")
    scratch = _make_experiment(demo, name="scratch")
    rename_experiment(demo, scratch, "  renamed  ", user="tester")
    with demo.sessions() as session:
        assert session.get(Experiment, scratch).name == "renamed"
    with pytest.raises(CadxInputError, match="empty"):
        rename_experiment(demo, scratch, "   ", user="tester")
    with pytest.raises(CadxInputError, match="at most 128"):
        rename_experiment(demo, scratch, "x" * 129, user="tester")
    with pytest.raises(CadxInputError, match="no such experiment"):
        rename_experiment(demo, 999, "name", user="tester")

    with demo.sessions.begin() as session:
        job = Job(kind="experiment", params={}, status="done", created_by="tester", experiment_id=scratch)
        session.add(job)
        session.flush()
        job_id = job.id
    n_rois = len(roi_records(demo))
    assert delete_experiment(demo, scratch, user="tester") == n_rois
    with demo.sessions() as session:
        assert session.get(Experiment, scratch) is None
        assert session.scalar(select(func.count()).select_from(Prediction)
                              .where(Prediction.experiment_id == scratch)) == 0
        assert session.get(Job, job_id).experiment_id is None  # the job's history stays
        assert session.get(Experiment, keep).name == "keep"
        assert session.scalar(select(func.count()).select_from(Prediction)
                              .where(Prediction.experiment_id == keep)) == n_rois
    with pytest.raises(CadxInputError, match="no such experiment"):
        delete_experiment(demo, scratch, user="tester")
    # the audit trail keeps what was renamed and deleted, and by whom
    from cadx.workflows.accounts import audit_events

    trail = {(e.action, e.target): e for e in audit_events(demo)}
    assert trail[("experiment_rename", f"experiment {scratch}")].detail == {"from": "scratch", "to": "renamed"}
    deleted = trail[("experiment_delete", f"experiment {scratch}")]
    assert deleted.user == "tester" and deleted.detail["name"] == "renamed" and deleted.detail["config_sha256"]


def test_roi_overlay_draws_the_true_outline_of_a_phantom(demo):
    record = roi_records(demo)[0]
    image, info = roi_overlay(demo, record.id)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert info["has_truth_outline"] and not info["has_outline"]  # no Method B segmentation yet
    assert info["truth_outline"] == "true outline of the synthetic phantom"
    assert info["segmentation_quality"] is None
    cyan = (image == np.array([0, 220, 255], dtype=np.uint8)).all(axis=2)
    assert 0 < cyan.sum() < 512 * 512 // 10  # an outline, not a filled region
    with pytest.raises(CadxInputError, match="no such ROI"):
        roi_overlay(demo, 10**6)


@pytest.mark.slow
def test_backbone_choices_list_taps_in_network_order():
    choices = backbone_choices()
    assert choices["alexnet"]["taps"][:2] == ["conv1", "pool1"] and choices["alexnet"]["taps"][-1] == "fc8"
    assert choices["alexnet"]["ensemble_tap"] == "fc6"
    assert set(choices) >= {"alexnet", "efficientnet_lite0"}


# ------------------------------------------------------------------------------------------- issue 12 ---
def test_nadeau_bengio_sizes_count_lesions_not_rois():
    """10 lesions in 2 folds: fold 0 holds lesions 0-3 with 3 views each (12 ROIs), fold 1 lesions 4-9 with one view
    each (6 ROIs). Counted in lesions: n_test = (4 + 6) / 2 = 5, n_train = 10 - 5 = 5 (ROIs would say 9 and 9)."""
    from cadx import stats
    from cadx.workflows.experiments import compare_methods

    lesions = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9])
    folds = (lesions >= 4).astype(int)
    assert stats.cv_unit_sizes(folds, lesions) == (5.0, 5.0)
    assert stats.cv_unit_sizes(folds, np.arange(18)) == (9.0, 9.0)  # what counting ROIs gave
    with pytest.raises(ValueError, match="more than one fold"):
        stats.cv_unit_sizes([0, 1], [7, 7])
    y = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1])
    rng = np.random.default_rng(3)
    scores = {k: rng.random(18) for k in "ABC"}
    methods = {k: {"fold_aucs": list(stats.fold_auc_summary(
        [_hand_auc(y[folds == f], scores[k][folds == f]) for f in (0, 1)]).aucs)} for k in "ABC"}
    rows = compare_methods(methods, scores, y, folds, 2, lesions=lesions)
    assert [r.comparison for r in rows] == ["C vs A", "C vs B", "A vs B"]  # no Z: only the paper's family
    for row in rows:
        first, second = row.pair
        d = np.subtract(methods[first]["fold_aucs"], methods[second]["fold_aucs"])
        assert (row.nadeau_bengio_n_train, row.nadeau_bengio_n_test) == (5.0, 5.0)
        # by hand: var = (1/2 + 5/5) * s^2, t = mean / sqrt(var), 1 df
        s2 = float(np.var(d, ddof=1))
        t = float(np.mean(d)) / np.sqrt(1.5 * s2)
        assert row.nadeau_bengio_p == pytest.approx(2 * (0.5 - np.arctan(abs(t)) / np.pi), rel=1e-9)


def _calibration(n_clamped: int, seeds: int = 5, folds: int = 5) -> Calibration:
    clamped = [[i * folds + k < n_clamped for k in range(folds)] for i in range(seeds)]
    slope = [[-0.1 if c else 0.5 for c in row] for row in clamped]
    return Calibration(seeds=list(range(seeds)), slope=slope, slope_used=slope, clamped=clamped, n_clamped=n_clamped,
                       n_folds=folds * seeds, floor="0.001 / SD of the inner decision values", inner_mean=slope,
                       inner_sd=slope)


def _method(title: str, auc_mean: float, calibration: Calibration | None = None) -> MethodRecord:
    return MethodRecord(title=title, auc_mean=auc_mean, auc_sd=0.1, auc_se=0.05, fold_aucs=[auc_mean] * 5,
                        pooled_auc=auc_mean, pooled_ci95=[0.4, 0.9], lesion_auc=auc_mean,
                        lesion_clustered_bootstrap_ci95=None, roc=RocPoints(fpr=[0.0, 1.0], tpr=[0.0, 1.0]),
                        seconds=1.0, binormal=Binormal(error="no fit"), calibration=calibration)


def _level(methods: dict[str, MethodRecord], sd_between_seeds: dict[str, float] | None = None) -> LevelResults:
    repeats = None if sd_between_seeds is None else Repeats(seeds=[0, 1, 2, 3, 4], methods={
        key: RepeatedMethod(title=methods[key].title, auc_mean_by_seed=[0.6] * 5, auc_mean=0.6,
                            auc_sd_between_seeds=sd) for key, sd in sd_between_seeds.items()})
    return LevelResults(level="roi", n_cases=10, n_positive=5, methods=methods, comparisons=[], repeats=repeats)


def test_degenerate_folds_are_flagged_in_table_1_and_the_notes():
    from cadx.workflows.results import calibration_notes

    results = _level({
        "A": _method("SVM1 (CNN efficientnet_lite0 pool)", 0.6, _calibration(15)),
        "B": _method("SVM2 (analytic features)", 0.7, _calibration(0)),
        "C": _method("Ensemble (p1 + p2) / 2", 0.71),
        "Z": _method("Ensemble (z1 + z2) / 2", 0.66)}, {"A": 0.02, "Z": 0.03})
    notes = calibration_notes(results)
    assert len(notes) == 1
    assert notes[0].startswith("SVM1 carried no signal in 15/25 folds (5 folds × 5 seeds)")
    # the folds per seed are the experiment's, not a fixed 5
    three = calibration_notes(_level({"A": _method("SVM1", 0.6, _calibration(4, seeds=2, folds=3)),
                                      "B": _method("SVM2", 0.7, _calibration(0, seeds=2, folds=3))}))
    assert three[0].startswith("SVM1 carried no signal in 4/6 folds (3 folds × 2 seeds)")
    assert "the ensemble (p1 + p2) / 2 equals SVM2 there" in notes[0] and "z-scored ensemble" in notes[0]
    table = method_table(results)
    assert table["classifier"].tolist() == ["SVM1 (CNN features)", "SVM2 (analytic features)",
                                            "Ensemble (SVM1 + SVM2)", "Ensemble of z-scored decision values"]
    assert table["degenerate folds"].tolist()[:2] == ["15/25", "0/25"] and table["degenerate folds"][2:].isna().all()
    assert table["seed SD"].tolist()[0] == 0.02 and table["seed SD"].tolist()[3] == 0.03
    assert np.isnan(table["seed SD"].tolist()[1])
    assert calibration_notes(_level({"A": _method("SVM1", 0.6, _calibration(0))})) == []


def test_best_tap_is_never_named_without_its_spread():
    from cadx.workflows.results import best_tap_text

    assert best_tap_text("fc6", 0.8123, 0.0214, 5) == "best tap fc6: 0.812 ± 0.021 (SD over 5 seeds)"
    one = best_tap_text("fc6", 0.8123, None, 1)
    assert "best tap" not in one and "one seed" in one and "no spread" in one
    assert best_tap_text("fc6", 0.8123, float("nan"), 5) == one  # NaN (a pandas cell): no spread measured
    assert best_tap_text(None, None, None, 5) == ""


def test_the_z_ensemble_is_a_row_a_curve_a_prediction_and_a_test_at_lesion_level(demo):
    """An experiment with the z-ensemble stored: its lesion-level row averages each lesion's pz, its predictions are
    called malignant at pz >= 0, and its comparisons form their own Bonferroni family."""
    experiment_id = _make_experiment(demo)
    records = roi_records(demo)
    pz = {r.id: ((r.id * 0.53) % 1.0) * 4 - 2 for r in records}
    with demo.sessions.begin() as session:
        e = session.get(Experiment, experiment_id)
        methods = dict(e.results["methods"])
        methods["Z"] = dict(methods["C"], title="Ensemble (z1 + z2) / 2")
        e.results = {**e.results, "methods": methods}
        for p in session.scalars(select(Prediction).where(Prediction.experiment_id == experiment_id)):
            p.pz = pz[p.roi_id]
    rois = roi_predictions(demo, experiment_id)
    assert rois["pz"].tolist() == pytest.approx([pz[r.id] for r in records])
    assert rois["right_pz"].tolist() == [(pz[r.id] >= 0) == (r.label == 1) for r in records]
    results = experiment_results(demo, experiment_id, "lesion")
    lesions = lesion_predictions(demo, experiment_id)
    by_lesion = {}
    for r in records:
        by_lesion.setdefault(r.lesion_id, []).append(pz[r.id])
    assert lesions["pz"].tolist() == pytest.approx([np.mean(by_lesion[k]) for k in lesions["lesion_id"]])
    assert results.methods["Z"].pooled_auc == pytest.approx(
        _hand_auc(lesions["truth"].tolist(), lesions["pz"].tolist()))
    families = [(c.comparison, c.family) for c in results.comparisons]
    assert families == [("C vs A", "paper"), ("C vs B", "paper"), ("A vs B", "paper"),
                        ("Z vs C", "added"), ("Z vs A", "added"), ("Z vs B", "added")]
    assert set(roc_curve_table(results)["method"]) == {"A", "B", "C", "Z"}
    assert comparison_table(results)["family"].tolist() == ["paper"] * 3 + ["added"] * 3
