"""The classifiers an experiment evaluates: one registry for the CLI, the pages, the records and the tests.

Methods A and B are the paper's two SVMs (Huynh, Li & Giger 2016): SVM1 on a CNN tap, SVM2 on the analytic
features. Fusions combine the two from the *same* folds:

``C``
    The paper's soft voting, ``p3 = (p1 + p2) / 2`` of Platt probabilities (:func:`cadx.svm.soft_vote`).
``Z``
    Not in the paper: the average of each SVM's decision values z-scored with the mean and SD of its own inner
    cross-validated decision values on the training fold (:func:`cadx.svm.z_vote`). It shows whether soft voting
    helped or only looked like it: where SVM1's Platt slope is held at its floor, ``p3`` ranks by ``p2`` alone,
    while ``Z`` still weighs both classifiers equally.

Adding a fusion means one entry here (and a nullable column of ``predictions`` named by ``column``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["METHODS", "Method", "comparison_families", "fusions"]


@dataclass(frozen=True)
class Method:
    """One classifier of an experiment.

    Attributes
    ----------
    key : str
        Short key used in records (``results["methods"][key]``) and comparisons (``"C vs A"``).
    name : str
        Name in Table 1 and the tests.
    short : str
        Name in chart legends.
    column : str
        Per-ROI score column of the ``predictions`` table (``p1``, ``p2``, ``p3``, ``pz``).
    title : str
        Default title stored in the record (A's title adds the backbone and tap).
    threshold : float
        Score at which a case is called malignant on the Predictions page (0.5 for probabilities, 0 for z-scores).
    in_paper : bool
        Part of Huynh, Li & Giger's protocol (their Table 1 and tests).
    combine : callable or None
        For fusions: ``combine(result_a, result_b) -> scores`` from two ``cadx.svm.CvResult`` of the same folds.
    """

    key: str
    name: str
    short: str
    column: str
    title: str
    threshold: float = 0.5
    in_paper: bool = True
    combine: Callable[[Any, Any], Any] | None = None


def _soft_vote(a, b):
    from cadx.svm import soft_vote

    return soft_vote(a, b)


def _z_vote(a, b):
    from cadx.svm import z_vote

    return z_vote(a, b)


METHODS: Mapping[str, Method] = {
    "A": Method("A", "SVM1 (CNN features)", "SVM1 (CNN)", "p1", "SVM1 (CNN features)"),
    "B": Method("B", "SVM2 (analytic features)", "SVM2 (analytic)", "p2", "SVM2 (analytic features)"),
    "C": Method("C", "Ensemble (SVM1 + SVM2)", "Ensemble", "p3", "Ensemble (p1 + p2) / 2", combine=_soft_vote),
    "Z": Method("Z", "Ensemble of z-scored decision values", "z-ensemble", "pz",
                "Ensemble (z1 + z2) / 2 of decision values z-scored on the training fold", threshold=0.0,
                in_paper=False, combine=_z_vote),
}
"""Every classifier, in display order."""


def fusions() -> list[Method]:
    """The methods that combine SVM1 and SVM2, in display order."""
    return [m for m in METHODS.values() if m.combine is not None]


def comparison_families(present: set[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """The significance tests, as families that are each Bonferroni-corrected on their own.

    ``paper``: C vs A, C vs B, A vs B (the paper's three). ``added``: each fusion beyond the paper against the
    paper's ensemble and each SVM. Families whose methods are not all in ``present`` are left out.
    """
    families = {"paper": [("C", "A"), ("C", "B"), ("A", "B")],
                "added": [(m.key, other) for m in fusions() if not m.in_paper for other in ("C", "A", "B")]}
    if present is not None:
        families = {name: pairs for name, pairs in families.items()
                    if all(k in present for pair in pairs for k in pair)}
    return {name: pairs for name, pairs in families.items() if pairs}
