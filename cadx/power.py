"""What a cohort of this size could show at all: power and sample size of a test of two correlated AUCs.

Analytic, not simulated: the variance of each AUC is Hanley & McNeil's (1982) formula

    var(A) = [A(1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)] / (n_pos n_neg),
    Q1 = A / (2 - A),  Q2 = 2 A^2 / (1 + A),

and the variance of the difference of two AUCs measured on the same cases with correlation ``r`` (Hanley & McNeil
1983) is ``var1 + var2 - 2 r sqrt(var1 var2)``. A two-sided test at level ``alpha`` has power
``Phi(|d|/SE - z_{alpha/2}) + Phi(-|d|/SE - z_{alpha/2})``; the smallest detectable difference at power ``1 - beta``
solves ``(z_{alpha/2} + z_beta) SE(d) = d`` (SE evaluated at the two AUCs ``A`` and ``A + d``), and the lesions
needed for a given pair of AUCs are the fewest ``n`` (at the cohort's class ratio) with ``(z_{alpha/2} + z_beta)
SE <= |d|``. Counts are lesions (the unit of the cross-validation), not ROIs.

scipy provides the normal quantiles and the root finder; no maintained Python package gives the Hanley-McNeil
sample size for correlated AUCs (R's ``pROC::power.roc.test`` does, with Obuchowski's variance), so the three
formulas above are written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.optimize
import scipy.stats

__all__ = ["PowerSummary", "auc_difference_se", "difference_power", "hanley_mcneil_variance", "lesions_needed",
           "smallest_detectable_difference"]

_METHOD = "analytic (Hanley & McNeil 1982 AUC variances; r, the correlation of the two AUCs, as in their 1983 paper)"


def _auc(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be an AUC strictly between 0 and 1; got {value!r}")
    return value


def _count(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 1.0:
        raise ValueError(f"{name} must be a count of at least 1 lesion; got {value!r}")
    return value


def _correlation(r: float) -> float:
    r = float(r)
    if not math.isfinite(r) or not -1.0 <= r <= 1.0:
        raise ValueError(f"r (the correlation of the two AUC estimates) must lie in [-1, 1]; got {r!r}")
    return r


def _probability(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {value!r}")
    return value


def hanley_mcneil_variance(auc: float, n_pos: float, n_neg: float) -> float:
    """Hanley & McNeil's (1982) variance of an empirical AUC.

    Parameters
    ----------
    auc : float
        The AUC, in (0, 1).
    n_pos, n_neg : float
        Malignant and benign lesions (at least 1 each; fractional counts allowed for sample-size searches).

    Returns
    -------
    float
        ``[A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)] / (n_pos n_neg)``.
    """
    a = _auc(auc, "auc")
    n1, n0 = _count(n_pos, "n_pos"), _count(n_neg, "n_neg")
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    return (a * (1.0 - a) + (n1 - 1.0) * (q1 - a * a) + (n0 - 1.0) * (q2 - a * a)) / (n1 * n0)


def auc_difference_se(auc1: float, auc2: float, n_pos: float, n_neg: float, r: float) -> float:
    """Standard error of ``auc2 - auc1`` measured on the same lesions, the two AUC estimates correlated by ``r``:
    ``sqrt(var1 + var2 - 2 r sqrt(var1 var2))`` with Hanley-McNeil variances."""
    r = _correlation(r)
    v1, v2 = hanley_mcneil_variance(auc1, n_pos, n_neg), hanley_mcneil_variance(auc2, n_pos, n_neg)
    return math.sqrt(max(v1 + v2 - 2.0 * r * math.sqrt(v1 * v2), 0.0))


def difference_power(auc1: float, auc2: float, n_pos: float, n_neg: float, r: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sided z test (level ``alpha``) of ``auc1 = auc2`` when the true AUCs are ``auc1``, ``auc2``."""
    alpha = _probability(alpha, "alpha")
    se = auc_difference_se(auc1, auc2, n_pos, n_neg, r)
    d = abs(float(auc2) - float(auc1))
    if se == 0.0:
        return 1.0 if d > 0 else alpha
    z = scipy.stats.norm.ppf(1.0 - alpha / 2.0)
    return float(scipy.stats.norm.cdf(d / se - z) + scipy.stats.norm.cdf(-d / se - z))


def _z_sum(alpha: float, power: float) -> float:
    return float(scipy.stats.norm.ppf(1.0 - _probability(alpha, "alpha") / 2.0)
                 + scipy.stats.norm.ppf(_probability(power, "power")))


def smallest_detectable_difference(auc: float, n_pos: float, n_neg: float, r: float, *, alpha: float = 0.05,
                                   power: float = 0.8) -> float:
    """The smallest ``d > 0`` with ``(z_{alpha/2} + z_beta) SE(auc, auc + d) = d``: the AUC gain over ``auc`` that
    a cohort of ``n_pos`` malignant and ``n_neg`` benign lesions detects with probability ``power``.

    Returns ``inf`` when no gain up to AUC 1 is detectable (the cohort is too small for any), and 0 when every gain
    is (two classifiers that rank alike, ``r`` = 1: the difference has almost no variance)."""
    base = _auc(auc, "auc")
    k = _z_sum(alpha, power)
    top = 1.0 - 1e-9

    def gap(d: float) -> float:
        return k * auc_difference_se(base, base + d, n_pos, n_neg, r) - d

    low = 1e-12
    if gap(low) <= 0:
        return 0.0
    if gap(top - base) > 0:
        return math.inf
    return float(scipy.optimize.brentq(gap, low, top - base, xtol=1e-10))


def lesions_needed(auc1: float, auc2: float, fraction_malignant: float, r: float, *, alpha: float = 0.05,
                   power: float = 0.8, max_lesions: int = 10_000_000) -> tuple[int, int]:
    """The fewest lesions ``n`` (and the malignant ones among them, ``ceil(n f)``) at the class ratio ``f`` with
    which the two-sided test of ``auc1 = auc2`` has at least ``power``: ``(z_{alpha/2} + z_beta) SE <= |d|``.

    Returns ``(n_lesions, n_malignant)``."""
    a1, a2 = _auc(auc1, "auc1"), _auc(auc2, "auc2")
    f = _probability(fraction_malignant, "fraction_malignant")
    if a1 == a2:
        raise ValueError("auc1 and auc2 are equal: no sample size detects a difference of 0")
    k = _z_sum(alpha, power)

    def enough(n: int) -> bool:
        n_pos = max(math.ceil(n * f), 1)
        return k * auc_difference_se(a1, a2, n_pos, max(n - n_pos, 1), r) <= abs(a2 - a1)

    low, high = 2, 2
    while not enough(high):
        low, high = high, high * 2
        if high > max_lesions:
            raise ValueError(f"more than {max_lesions} lesions would be needed for {a1} vs {a2} at r = {r}")
    while high - low > 1:  # the SE falls as n grows: bisect for the first n that is enough
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    n = low if enough(low) else high
    return n, max(math.ceil(n * f), 1)


@dataclass(frozen=True)
class PowerSummary:
    """What a cohort could show in one comparison (``cadx.workflows.power.power_analysis`` fills it).

    ``smallest_difference``: the AUC gain over ``auc_reference`` detectable at ``power`` (``inf``: none);
    ``power_for_target``: the power this cohort has for the paper's effect ``target_auc1 -> target_auc2``;
    ``lesions_for_target`` / ``malignant_for_target``: the lesions needed for it at the cohort's class ratio.
    """

    comparison: str
    n_pos: int
    n_neg: int
    r: float
    alpha: float
    power: float
    auc_reference: float
    smallest_difference: float
    target_auc1: float
    target_auc2: float
    power_for_target: float
    lesions_for_target: int
    malignant_for_target: int
    method: str = _METHOD

    @classmethod
    def of(cls, comparison: str, *, n_pos: int, n_neg: int, r: float, auc_reference: float, alpha: float = 0.05,
           power: float = 0.8, target: tuple[float, float] = (0.81, 0.86)) -> PowerSummary:
        """Every number of the summary from the cohort's counts and the observed correlation ``r``."""
        reference = min(max(float(auc_reference), 0.5), 0.99)  # below chance: the gain is counted from 0.5
        needed, malignant = lesions_needed(*target, n_pos / (n_pos + n_neg), r, alpha=alpha, power=power)
        return cls(comparison=comparison, n_pos=int(n_pos), n_neg=int(n_neg), r=float(r), alpha=float(alpha),
                   power=float(power), auc_reference=reference,
                   smallest_difference=smallest_detectable_difference(reference, n_pos, n_neg, r, alpha=alpha,
                                                                      power=power),
                   target_auc1=float(target[0]), target_auc2=float(target[1]),
                   power_for_target=difference_power(*target, n_pos, n_neg, r, alpha=alpha),
                   lesions_for_target=needed, malignant_for_target=malignant)

    def sentence(self) -> str:
        """One plain sentence, e.g. for the report and the CLI."""
        smallest = ("no AUC gain is detectable" if math.isinf(self.smallest_difference)
                    else f"the smallest detectable AUC difference is {self.smallest_difference:.3f} "
                         f"(from {self.auc_reference:.2f})")
        return (f"{self.comparison}: with {self.n_pos} malignant and {self.n_neg} benign lesions and r = {self.r:.2f}, "
                f"{smallest} at {self.power:.0%} power, α = {self.alpha:.3g}; the paper's "
                f"{self.target_auc1:.2f} → {self.target_auc2:.2f} has power {self.power_for_target:.2f} here and needs "
                f"{self.lesions_for_target} lesions ({self.malignant_for_target} malignant).")
