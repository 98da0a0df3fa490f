"""The label-permutation test (cadx.permutation, cadx.workflows.permutation): the permutation keeps the grouped folds,
p-values with known answers, a null cohort (labels independent of the features) whose p-values are not small, a
planted signal found (p < 0.01), the selection-adjusted best tap, and the resumable job."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cadx.permutation import (
    PermutationResult,
    chance_sentence,
    cv_statistics,
    max_statistic_p_value,
    monte_carlo_se,
    null_summary,
    permutation_p_value,
    permute_within_folds,
    tap_name,
)
from cadx.records import from_json, to_json

_GRID = {"gamma": [0.1], "coef0": [1.0], "degree": [1], "C": [1.0]}  # one candidate: the nested CV stays cheap


def _cohort(n_lesions: int, seed: int, *, signal: float) -> dict:
    """Two ROIs per lesion, a third of the lesions malignant, patients of one or two lesions; four features of
    which the first carries ``signal`` x label (0: labels independent of the features)."""
    rng = np.random.default_rng(seed)
    lesions = np.repeat(np.arange(n_lesions), 2)
    y = np.repeat((rng.permutation(n_lesions) % 3 == 0).astype(int), 2)
    patients = lesions // 2 + 1000
    X = rng.normal(size=(len(y), 4))
    X[:, 0] += signal * y
    return {"X": X, "y": y, "lesions": lesions, "patients": patients}


def _folds(c: dict, n_folds: int = 3) -> np.ndarray:
    from cadx.svm import cross_validate_by_lesion

    return cross_validate_by_lesion(c["X"], c["y"], c["lesions"], patients=c["patients"], n_folds=n_folds,
                                    n_inner=2, grid=_GRID, seed=0).fold


def _test(c: dict, n_permutations: int, seed: int = 0) -> PermutationResult:
    folds = _folds(c)
    common = dict(patients=c["patients"], folds=folds, n_inner=2, grid=_GRID, seed=0, ensemble_tap=None)
    observed = cv_statistics({"x": c["X"]}, c["y"], c["lesions"], **common)
    null: dict[str, list[float]] = {k: [] for k in observed}
    for b in range(n_permutations):
        y = permute_within_folds(c["y"], c["lesions"], folds, np.random.default_rng([seed, b]))
        for k, v in cv_statistics({"x": c["X"]}, y, c["lesions"], **common).items():
            null[k].append(v)
    return PermutationResult.from_null(observed, null, seed=seed)


# ------------------------------------------------------------------------------------------- the permutation ---
def test_labels_are_permuted_by_lesion_within_each_fold():
    rng = np.random.default_rng(3)
    lesions = np.repeat(np.arange(30), [1, 2, 3] * 10)
    y = (lesions % 3 == 0).astype(int)
    folds = lesions % 5
    seen = set()
    for b in range(20):
        permuted = permute_within_folds(y, lesions, folds, np.random.default_rng([7, b]))
        for lesion in np.unique(lesions):  # a lesion's ROIs share one label
            assert len(set(permuted[lesions == lesion])) == 1
        for k in range(5):  # every fold keeps its malignant lesions' count
            first = np.unique(lesions[folds == k], return_index=True)[1]
            assert permuted[folds == k][first].sum() == y[folds == k][first].sum()
        seen.add(permuted.tobytes())
    assert len(seen) > 15  # and it does permute
    again = permute_within_folds(y, lesions, folds, np.random.default_rng([7, 0]))
    assert np.array_equal(again, permute_within_folds(y, lesions, folds, np.random.default_rng([7, 0])))
    with pytest.raises(ValueError, match="every ROI of a lesion must share its lesion's label and fold"):
        permute_within_folds(np.array([0, 1]), np.array([4, 4]), np.array([0, 0]), rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        permute_within_folds(y, lesions, folds, 3)


@pytest.mark.slow
def test_fixed_outer_folds_are_kept_and_checked():
    from cadx.svm import cross_validate_by_lesion

    c = _cohort(18, 1, signal=1.0)
    folds = _folds(c)
    y = permute_within_folds(c["y"], c["lesions"], folds, np.random.default_rng(0))
    rerun = cross_validate_by_lesion(c["X"], y, c["lesions"], patients=c["patients"], n_folds=3, n_inner=2,
                                     grid=_GRID, seed=0, outer_folds=folds)
    assert np.array_equal(rerun.fold, folds)
    split = folds.copy()
    split[0] = (split[1] + 1) % 3  # lesion 0's two ROIs in two folds
    with pytest.raises(ValueError, match="outer_folds splits a lesion"):
        cross_validate_by_lesion(c["X"], c["y"], c["lesions"], n_folds=3, n_inner=2, grid=_GRID, outer_folds=split)
    with pytest.raises(ValueError, match="give repeats=1"):
        cross_validate_by_lesion(c["X"], c["y"], c["lesions"], n_folds=3, n_inner=2, grid=_GRID, repeats=2,
                                 outer_folds=folds)


# ------------------------------------------------------------------------------------- p-values, known answers ---
def test_p_values_with_known_answers():
    p, se = permutation_p_value(0.8, [0.5, 0.9, 0.7, 0.85])
    assert p == pytest.approx(3 / 5) and se == pytest.approx(math.sqrt(0.6 * 0.4 / 4))
    assert permutation_p_value(0.99, [0.5] * 99)[0] == pytest.approx(0.01)  # never 0: (1 + 0) / (1 + 99)
    assert permutation_p_value(0.8, [0.5, float("nan"), 0.9])[0] == pytest.approx(2 / 3)  # NaN left out of B
    assert monte_carlo_se(0.05, 100) == pytest.approx(0.0218, abs=1e-4)  # the default's SE at p = 0.05
    # best of two taps: observed max 0.8 (tap b); per permutation maxima 0.75, 0.85, 0.7 -> p = (1 + 1) / 4
    observed = {"a": 0.6, "b": 0.8}
    null = {"a": [0.75, 0.5, 0.7], "b": [0.6, 0.85, 0.65]}
    assert max_statistic_p_value(observed, null)[0] == pytest.approx(0.5)
    assert permutation_p_value(0.8, null["b"])[0] == pytest.approx(0.5)
    assert max_statistic_p_value({"a": 0.9, "b": 0.8}, null)[0] == pytest.approx(0.25)
    s = null_summary([0.4, 0.5, 0.6])
    assert (s.mean, s.sd, s.n) == (pytest.approx(0.5), pytest.approx(0.1), 3)
    with pytest.raises(ValueError, match="the null lacks"):
        max_statistic_p_value({"c": 0.5}, null)


@pytest.mark.slow
def test_the_p_values_of_a_null_statistic_are_uniform():
    """The p-value machinery, on a statistic cheap enough for 300 cohorts (the AUC of a fixed score): labels
    independent of the score give p-values that a KS test cannot tell from uniform (fixed seed: deterministic)."""
    import scipy.stats

    rng = np.random.default_rng(20261207)
    lesions = np.arange(40)
    folds = lesions % 4
    ps = []
    for _ in range(300):
        y = (rng.permutation(40) < 14).astype(int)
        ranks = scipy.stats.rankdata(rng.normal(size=40))  # the rank sum of the malignant: the AUC, rescaled
        null = [ranks[permute_within_folds(y, lesions, folds, rng) == 1].sum() for _ in range(99)]
        ps.append(permutation_p_value(ranks[y == 1].sum(), null)[0])
    ps = np.array(ps)
    assert scipy.stats.kstest(ps, "uniform").pvalue > 0.01
    assert 0.02 < np.mean(ps < 0.05) < 0.09


def test_the_result_with_its_best_tap_and_its_json():
    observed = {"tap:conv1": 0.55, "tap:fc6": 0.66, "A": 0.66}
    null = {"tap:conv1": [0.5, 0.6, 0.7, 0.4], "tap:fc6": [0.45, 0.55, 0.5, 0.7], "A": [0.45, 0.55, 0.5, 0.7]}
    result = PermutationResult.from_null(observed, null, seed=4)
    assert result.best_tap == "fc6" and result.n_taps == 2 and result.n_permutations == 4
    assert result.statistics["tap:fc6"].p_value == pytest.approx(2 / 5)
    assert result.best_tap_p_max == pytest.approx(3 / 5)  # maxima 0.5, 0.6, 0.7, 0.7: two reach 0.66
    assert result.best_tap_p_bonferroni == pytest.approx(min(1.0, 2 * 2 / 5))
    assert result.beating_chance(alpha=0.5) == ["tap:fc6", "A"]
    assert from_json(PermutationResult, to_json(result)) == result


def test_the_best_tap_says_it_is_the_maximum_of_eleven_with_its_adjusted_p():
    from cadx.workflows.results import best_tap_text

    taps = [f"t{i}" for i in range(11)]
    observed = {tap_name(t): 0.5 + 0.01 * i for i, t in enumerate(taps)}
    rng = np.random.default_rng(0)
    null = {k: list(0.537 + 0.104 * rng.standard_normal(100)) for k in observed}
    result = PermutationResult.from_null(observed, null, seed=0)
    text = best_tap_text("t10", 0.658, 0.081, 5, n_taps=11, permutation=result)
    p = result.best_tap_p_max
    own = result.statistics["tap:t10"].p_value
    assert text.startswith("best tap t10: 0.658 ± 0.081 (SD over 5 seeds); the maximum of 11 taps: "
                           f"selection-adjusted p = {p:.3g} ± {result.best_tap_p_max_mc_se:.2g} (max-statistic over "
                           f"11 taps, 100 permutations; t10's own p {own:.3g} × 11 taps (Bonferroni): "
                           f"{min(1.0, 11 * own):.3g})")
    # the tap named is the one with the best mean over seeds, which need not be the first seed's best
    other = best_tap_text("t3", 0.6, 0.05, 5, n_taps=11, permutation=result)
    assert f"t3's own p {result.statistics['tap:t3'].p_value:.3g} × 11 taps" in other
    sd = result.statistics["tap:t10"].null.sd
    assert f"one run's spread under the null: SD {sd:.3f}" in text and "seed SD understates" in text
    assert p > result.statistics["tap:t10"].p_value  # choosing the best of 11 costs
    plain = best_tap_text("t10", 0.658, 0.081, 5, n_taps=11)
    assert plain.endswith("the maximum of 11 taps, not adjusted for choosing it (a permutation test gives the "
                          "selection-adjusted p: `cadx permutation-test`)")
    assert best_tap_text("t10", 0.658, 0.081, 5) == "best tap t10: 0.658 ± 0.081 (SD over 5 seeds)"


def test_the_summary_says_when_nothing_beats_chance():
    ci = {"A": [0.40, 0.70], "B": [0.45, 0.62]}
    assert chance_sentence(ci) == ("No classifier is distinguishable from chance on this cohort: every 95 % CI of "
                                   "an AUC includes 0.5; no permutation test has run yet.")
    assert chance_sentence({"A": [0.40, 0.70], "B": [0.55, 0.8]}) == ""
    null = {"A": [0.5, 0.6, 0.55], "B": [0.5, 0.52, 0.6]}
    result = PermutationResult.from_null({"A": 0.57, "B": 0.58}, null, seed=0)
    assert chance_sentence(ci, result).endswith("no permutation p is below 0.05 (3 permutations).")
    strong = PermutationResult.from_null({"A": 0.9, "B": 0.58}, {k: v * 10 for k, v in null.items()}, seed=0)
    assert chance_sentence(ci, strong, alpha=0.1) == ""


# -------------------------------------------------------------------------- the whole nested CV, permuted ---
@pytest.mark.slow
def test_a_cohort_with_labels_independent_of_the_features_is_not_called_significant():
    """Four phantom cohorts whose labels are independent of their features, 29 permutations each (the whole
    nested CV each time; fixed seeds: deterministic): no p is below 0.05 and they spread over (0, 1)."""
    ps = [_test(_cohort(18, seed, signal=0.0), 29, seed=seed).statistics["tap:x"].p_value for seed in range(4)]
    assert min(ps) >= 0.05, ps
    assert max(ps) - min(ps) > 0.3 and np.mean(ps) > 0.25, ps


@pytest.mark.slow
def test_a_planted_signal_is_found():
    result = _test(_cohort(18, 11, signal=3.0), 120)
    tested = result.statistics["tap:x"]
    assert tested.observed > 0.9
    assert tested.p_value < 0.01 and tested.p_value == pytest.approx(1 / 121)
    assert tested.null.mean == pytest.approx(0.5, abs=0.1)


# ----------------------------------------------------------------------------------------- the stored job ---
@pytest.mark.slow
def test_the_permutation_job_resumes_and_stores_the_uninterrupted_result(workspace, workspace_cache):
    from sqlalchemy import func, select

    from cadx.workflows.analyses import experiment_data
    from cadx.workflows.experiments import load_experiment
    from cadx.workflows.jobs import JobCancelled, JobCheckpoints, get_job, run_next_job, submit_job
    from cadx.workflows.permutation import (
        _analytic,
        _tap_matrix,
        latest_permutation_test,
        observed_statistics,
        permutation_table,
        run_permutation_test,
    )
    from db.models import PermutationTest
    from tests.workspace_cache import SMALL_SWEEP, demo_experiment

    experiment_id = workspace_cache.fill(workspace, demo_experiment, **SMALL_SWEEP)
    record = load_experiment(workspace, experiment_id)
    # the observed statistics are what one unpermuted run of the permutation's pipeline gives
    data = experiment_data(workspace, experiment_id)
    config = data.config
    from cadx.methods import fusions

    again = cv_statistics(dict(_tap_matrix(workspace, data, t) for t in config.taps), data.y, data.lesions,
                          patients=data.patients, folds=data.folds, n_inner=config.n_inner, grid=None,
                          seed=config.seed, ensemble_tap=config.ensemble_tap,
                          analytic=_analytic(workspace, data)[0], fusions={m.key: m.combine for m in fusions()})
    observed = observed_statistics(record)
    assert set(again) == set(observed) == {"tap:fc7", "tap:fc8", "A", "B", "C", "Z"}
    assert again == pytest.approx(observed, abs=1e-12)

    # uninterrupted, as a job
    job = submit_job(workspace, "permutation", {"experiment_id": experiment_id, "permutations": 2, "seed": 1},
                     user="tester")
    assert run_next_job(workspace) == job
    finished = get_job(workspace, job)
    assert finished.status == "done", finished.error
    assert finished.message == f"permutation test 1 of experiment {experiment_id} done (2 permutations)"
    whole = latest_permutation_test(workspace, experiment_id)
    assert whole.n_permutations == 2 and whole.result.n_taps == 2

    # interrupted after one permutation, then resumed with the same checkpoints
    second = submit_job(workspace, "permutation", {"experiment_id": experiment_id}, user="tester")
    checkpoints = JobCheckpoints(workspace, second)

    def stop_after_one(done, total, message):
        if done == 1:
            raise JobCancelled("stopped")

    with pytest.raises(JobCancelled):
        run_permutation_test(workspace, experiment_id, permutations=2, seed=1, user="tester",
                             progress=stop_after_one, checkpoints=checkpoints)
    resumed = JobCheckpoints(workspace, second)
    run_permutation_test(workspace, experiment_id, permutations=2, seed=1, user="tester", checkpoints=resumed)
    assert (resumed.restored, resumed.computed) == (1, 1)
    latest = latest_permutation_test(workspace, experiment_id)
    assert latest.id == 2 and latest.result == whole.result
    table = permutation_table(latest.result, record)
    assert list(table["statistic"])[-2:] == ["SVM1 on tap fc7", "SVM1 on tap fc8"]
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PermutationTest)) == 2


# ------------------------------------------------------------------------------------------------ the report ---
def test_the_report_shows_the_permutation_test_the_power_and_says_nothing_beats_chance():
    import dataclasses

    from cadx.power import PowerSummary
    from cadx.records import LevelResults
    from cadx.report import SECTIONS, CohortSummary, LabelCounts, ReportData, render_report
    from tests.test_report import _old_record, _parse, _row, _value

    record = _old_record("one_seed")
    record = dataclasses.replace(record, id=5, uses_synthetic_data=False, uses_random_weights=False)
    methods = record.results.methods
    cohort = CohortSummary(
        patients=3, lesions=4, rois=6, rois_deleted_since=0, label_names=["benign", "malignant"],
        by_label={"benign": LabelCounts(patients=2, lesions=2, rois=3),
                  "malignant": LabelCounts(patients=1, lesions=2, rois=3)},
        lesions_by_label={"benign": 2, "malignant": 2}, rois_by_view={"CC": {"benign": 3, "malignant": 3}},
        lesions_by_type={"mass": {"benign": 2, "malignant": 2}}, excluded_by_reason={})
    wide = {k: dataclasses.replace(m, pooled_ci95=[0.3, 0.8]) for k, m in methods.items()}
    level = LevelResults(level="roi", n_cases=6, n_positive=3, methods=wide, comparisons=[])
    observed = {"tap:fc6": 0.57, "A": 0.57}
    result = PermutationResult.from_null(observed, {k: [0.5, 0.6, 0.45, 0.7] for k in observed}, seed=0)
    rows = [{"statistic": "SVM1", "observed AUC": 0.57, "null mean": 0.5625, "null SD": 0.1, "null 5 %": 0.46,
             "null 95 %": 0.68, "p": 0.6, "p MC SE": 0.24}]
    summary = PowerSummary.of("C vs A", n_pos=20, n_neg=38, r=0.78, auc_reference=0.57)
    family = PowerSummary.of("C vs A", n_pos=20, n_neg=38, r=0.78, auc_reference=0.57, alpha=0.05 / 3)
    base = dict(experiment=record, cohort=cohort, results=level, sweep=[], table1=[], tests=[], repeats=[],
                roi_set_sha256=None, generated_at="2026-12-07T00:00:00+00:00", generator="cadx test")
    page = _parse(render_report(ReportData(**base, permutation=result, permutation_rows=rows,
                                           permutation_caption="Permutation test 1 (4 permutations)",
                                           best_tap_line="best tap fc6: the maximum of 2 taps",
                                           power=[(summary, family)])))
    assert list(page.sections) == list(SECTIONS)
    assert "No classifier is distinguishable from chance on this cohort: every 95 % CI of an AUC includes 0.5; no " \
           "permutation p is below 0.05 (4 permutations)." in " ".join(page.sections["summary"].split())
    assert _value(_row(page, "permutation-table", "SVM1")[6]) == 0.6
    assert "the maximum of 2 taps" in page.sections["chance"]
    power = _row(page, "power-table", "C vs A")
    assert _value(power[1]) == pytest.approx(0.78) and power[5][0] == "299 (104 malignant)"
    assert power[6][0] == "401 (139 malignant)"
    assert "Hanley & McNeil 1982" in page.sections["power"]
    # without a test the report says how to run one; a CI above 0.5 silences the sentence
    narrow = dataclasses.replace(level, methods={k: dataclasses.replace(m, pooled_ci95=[0.6, 0.9])
                                                 for k, m in methods.items()})
    page = _parse(render_report(ReportData(**{**base, "results": narrow})))
    assert "cadx permutation-test 5" in page.sections["chance"]
    assert "distinguishable" not in page.sections["summary"]
    assert "No comparisons, so no power" in page.sections["power"]


@pytest.mark.slow
def test_the_cli_runs_or_queues_a_permutation_test(tmp_path, workspace_cache):
    from typer.testing import CliRunner

    from cadx.cli import app
    from cadx.workflows import open_workspace
    from cadx.workflows.jobs import list_jobs
    from tests.workspace_cache import SMALL_SWEEP, demo_experiment

    data, experiment_id = workspace_cache.data_dir(tmp_path / "data", demo_experiment, **SMALL_SWEEP)
    runner = CliRunner()
    import cadx.cli

    # the plain-words sentence, whatever this small cohort's intervals say: printed as words, not as a markup tag
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cadx.cli, "chance_sentence", lambda *a, **k: "No classifier is distinguishable from chance.")
        result = runner.invoke(app, ["permutation-test", str(experiment_id), "--permutations", "1", "--data-dir",
                                     str(data), "--user", "tester"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "No classifier is distinguishable from chance." in text and "[yellow]" not in text and "[/]" not in text
    assert f"Better than chance? Experiment {experiment_id} against its permutation null" in text
    assert "lesion labels permuted within the first seed's outer folds" in text
    assert "the maximum of 2 taps: selection-adjusted p = " in text and "(max-statistic over 2 taps, 1 perm" in text
    result = runner.invoke(app, ["permutation-test", str(experiment_id), "--queue", "--permutations", "20",
                                 "--data-dir", str(data)])
    assert result.exit_code == 0 and "queued as job" in result.output, result.output
    ws = open_workspace(data)
    try:
        [job] = [j for j in list_jobs(ws) if j.kind == "permutation"]
        assert job.params["permutations"] == 20 and job.params["experiment_id"] == experiment_id
    finally:
        ws.engine.dispose()
    result = runner.invoke(app, ["permutation-test", str(experiment_id), "--permutations", "0", "--data-dir",
                                 str(data)])
    assert result.exit_code == 2 and "give a whole number from 1 to 100000" in result.output, result.output
