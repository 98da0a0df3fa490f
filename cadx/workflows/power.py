"""What a stored experiment's cohort could show at all (``cadx.power``): per comparison of its tests, the observed
correlation of the two lesion-level AUC estimates (DeLong's covariance, ``cadx.stats.delong_test``), the smallest
AUC difference detectable at 80 % power and the lesions the paper's effect (0.81 -> 0.86) would need at this
cohort's class ratio, at alpha = 0.05 and at the Bonferroni alpha of the comparison's family (as the tests are
reported). Counts are lesions, the unit the folds are built on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cadx import stats
from cadx.methods import METHODS
from cadx.power import PowerSummary
from cadx.workflows.experiments import load_experiment
from cadx.workflows.results import lesion_predictions
from cadx.workflows.workspace import Workspace

__all__ = ["PAPER_EFFECT", "POWER_CAPTION", "PowerRow", "power_analysis", "power_table"]

PAPER_EFFECT = (0.81, 0.86)
"""Huynh, Li & Giger (2016): SVM1 0.81 -> ensemble 0.86, the effect a replication should be able to see."""


@dataclass(frozen=True)
class PowerRow:
    """One comparison: the summary at alpha (``at_alpha``) and at the family's Bonferroni alpha (``at_family``)."""

    comparison: str
    family_size: int
    at_alpha: PowerSummary
    at_family: PowerSummary


def power_analysis(workspace: Workspace, experiment_id: int, *, alpha: float = 0.05, power: float = 0.8,
                   target: tuple[float, float] = PAPER_EFFECT) -> list[PowerRow]:
    """The power panel of an experiment: one row per comparison of its tests (none without Method B)."""
    record = load_experiment(workspace, experiment_id)
    comparisons = record.results.comparisons
    if not comparisons:
        return []
    lesions = lesion_predictions(workspace, experiment_id)
    y = lesions["truth"].to_numpy(dtype=int)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < 2:  # e.g. an old record whose ROIs are gone from this database
        return []
    families: dict[str, int] = {}
    for c in comparisons:
        families[c.family] = families.get(c.family, 0) + 1
    rows = []
    for c in comparisons:
        first, second = c.pair
        a = lesions[METHODS[first].column].to_numpy(dtype=float)
        b = lesions[METHODS[second].column].to_numpy(dtype=float)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue  # a classifier without stored scores (older records)
        test = stats.delong_test(y, a, b)
        r = test.correlation if test.correlation == test.correlation else 0.0  # NaN (a constant score): 0
        reference = min(test.auc_a, test.auc_b)
        size = families[c.family]
        r = max(min(r, 1.0), -1.0)

        def summary(level: float, name: str = c.comparison, r: float = r, reference: float = reference
                    ) -> PowerSummary:
            return PowerSummary.of(name, n_pos=n_pos, n_neg=n_neg, r=r, auc_reference=reference, alpha=level,
                                   power=power, target=target)

        rows.append(PowerRow(comparison=c.comparison, family_size=size, at_alpha=summary(alpha),
                             at_family=summary(alpha / size)))
    return rows


def power_table(rows: list[PowerRow]) -> pd.DataFrame:
    """The power panel as a table: one row per comparison."""
    out = []
    for row in rows:
        a, f = row.at_alpha, row.at_family
        out.append({"comparison": row.comparison, "r": a.r, "malignant": a.n_pos, "benign": a.n_neg,
                    "from AUC": a.auc_reference, "smallest ΔAUC (α=0.05)": a.smallest_difference,
                    f"smallest ΔAUC (α=0.05/{row.family_size})": f.smallest_difference,
                    "power for 0.81→0.86": a.power_for_target,
                    "lesions for 0.81→0.86 (α=0.05)": f"{a.lesions_for_target} ({a.malignant_for_target} malignant)",
                    f"lesions for 0.81→0.86 (α=0.05/{row.family_size})":
                        f"{f.lesions_for_target} ({f.malignant_for_target} malignant)"})
    return pd.DataFrame(out)


POWER_CAPTION = ("Analytic (not simulated): Hanley & McNeil (1982) variances of each AUC, the variance of a difference "
                 "var1 + var2 − 2 r √(var1 var2) with r the observed correlation of the two lesion-level AUC "
                 "estimates (DeLong covariance); two-sided z test, 80 % power; counts in lesions at this cohort's "
                 "class ratio. Smallest ΔAUC: the gain over the weaker classifier's lesion AUC detectable at 80 % "
                 "power. The tests are Bonferroni-corrected within their family, so the α/3 column is what the "
                 "reported tests could detect.")
