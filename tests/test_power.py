"""Power and sample size of a test of two correlated AUCs (cadx.power): Hanley-McNeil by hand, the issue's
reference numbers, and the workflow's panel on a stored experiment."""

from __future__ import annotations

import math

import pytest

from cadx.power import (
    PowerSummary,
    auc_difference_se,
    difference_power,
    hanley_mcneil_variance,
    lesions_needed,
    smallest_detectable_difference,
)


def test_hanley_mcneil_variance_by_hand():
    # A = 0.8, 10 malignant, 20 benign: Q1 = 0.8/1.2 = 2/3, Q2 = 2*0.64/1.8 = 32/45
    # var = (0.8*0.2 + 9*(2/3 - 0.64) + 19*(32/45 - 0.64)) / (10*20) = (0.16 + 0.24 + 1.3511...) / 200
    by_hand = (0.16 + 9 * (2 / 3 - 0.64) + 19 * (32 / 45 - 0.64)) / 200
    assert by_hand == pytest.approx(0.0087555556, abs=1e-9)
    assert hanley_mcneil_variance(0.8, 10, 20) == pytest.approx(by_hand, rel=1e-12)


def test_the_difference_se_uses_the_correlation():
    v = hanley_mcneil_variance(0.8, 10, 20)
    assert auc_difference_se(0.8, 0.8, 10, 20, 0.5) == pytest.approx(math.sqrt(v), rel=1e-12)  # 2v - 2*0.5*v
    assert auc_difference_se(0.8, 0.8, 10, 20, 0.0) == pytest.approx(math.sqrt(2 * v), rel=1e-12)
    v2 = hanley_mcneil_variance(0.9, 10, 20)
    assert auc_difference_se(0.8, 0.9, 10, 20, 0.3) == pytest.approx(
        math.sqrt(v + v2 - 0.6 * math.sqrt(v * v2)), rel=1e-12)


def test_the_smallest_detectable_difference_solves_its_equation():
    d = smallest_detectable_difference(0.57, 20, 38, 0.78)
    # (z_0.975 + z_0.8) * SE(d) = d, i.e. power 0.8 at that difference (the far tail adds nothing visible)
    assert (1.959964 + 0.841621) * auc_difference_se(0.57, 0.57 + d, 20, 38, 0.78) == pytest.approx(d, rel=1e-5)
    assert difference_power(0.57, 0.57 + d, 20, 38, 0.78) == pytest.approx(0.8, abs=1e-4)
    assert smallest_detectable_difference(0.57, 200, 380, 0.78) < d  # more lesions, smaller detectable gains
    assert math.isinf(smallest_detectable_difference(0.9, 1, 1, 0.0))  # two lesions detect nothing
    # two classifiers ranking alike (r = 1, e.g. an ensemble that ranks by one SVM alone): no root to bracket
    assert smallest_detectable_difference(0.45 + 0.05, 6, 6, 1.0) == 0.0


def test_the_issue_s_reference_numbers():
    """On MIAS' paper cohort (20 malignant / 38 benign lesions) at the observed r = 0.78: about 400 lesions (138
    malignant) for 0.81 -> 0.86 are reproduced at the Bonferroni level 0.05/3 of the reported tests; at 0.05 alone
    about 300 (104) suffice. Power at n = 58: 0.05-0.24."""
    assert lesions_needed(0.81, 0.86, 20 / 58, 0.78, alpha=0.05 / 3) == (401, 139)
    assert lesions_needed(0.81, 0.86, 20 / 58, 0.78) == (299, 104)
    assert difference_power(0.81, 0.86, 20, 38, 0.78) == pytest.approx(0.231, abs=0.002)
    assert 0.04 < difference_power(0.81, 0.86, 20, 38, 0.3, alpha=0.05 / 3) < 0.06
    n, malignant = lesions_needed(0.81, 0.86, 20 / 58, 0.78)
    n_pos = math.ceil(n * 20 / 58)
    assert difference_power(0.81, 0.86, n_pos, n - n_pos, 0.78) >= 0.8  # enough ...
    n_pos = math.ceil((n - 1) * 20 / 58)
    assert difference_power(0.81, 0.86, n_pos, n - 1 - n_pos, 0.78) < 0.8 + 1e-3  # ... and the fewest


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match=r"auc must be an AUC strictly between 0 and 1; got 1.2"):
        hanley_mcneil_variance(1.2, 10, 10)
    with pytest.raises(ValueError, match=r"r \(the correlation of the two AUC estimates\) must lie in \[-1, 1\]"):
        auc_difference_se(0.8, 0.9, 10, 10, 1.5)
    with pytest.raises(ValueError, match="n_pos must be a count of at least 1 lesion; got 0"):
        hanley_mcneil_variance(0.8, 0, 10)
    with pytest.raises(ValueError, match="auc1 and auc2 are equal"):
        lesions_needed(0.8, 0.8, 0.3, 0.5)


def test_the_summary_sentence():
    s = PowerSummary.of("C vs A", n_pos=20, n_neg=38, r=0.78, auc_reference=0.57)
    assert s.lesions_for_target == 299 and s.malignant_for_target == 104
    text = s.sentence()
    assert "the smallest detectable AUC difference is 0.145 (from 0.57)" in text
    assert "needs 299 lesions (104 malignant)" in text and "power 0.23" in text
    assert PowerSummary.of("A vs B", n_pos=20, n_neg=38, r=0.0, auc_reference=0.3).auc_reference == 0.5


@pytest.mark.slow
def test_the_power_panel_of_a_stored_experiment(workspace, workspace_cache):
    from cadx.workflows.power import power_analysis, power_table
    from tests.workspace_cache import SMALL_SWEEP, demo_experiment

    experiment_id = workspace_cache.fill(workspace, demo_experiment, **SMALL_SWEEP)
    rows = power_analysis(workspace, experiment_id)
    assert [r.comparison for r in rows][:3] == ["C vs A", "C vs B", "A vs B"]
    first = rows[0]
    assert first.at_alpha.n_pos + first.at_alpha.n_neg == 12  # lesions, not ROIs
    assert first.at_family.alpha == pytest.approx(0.05 / 3)
    assert first.at_family.lesions_for_target > first.at_alpha.lesions_for_target
    table = power_table(rows)
    assert list(table["comparison"])[:3] == ["C vs A", "C vs B", "A vs B"]
