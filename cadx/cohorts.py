"""Cohorts: a named selection of the lesions and ROIs an experiment uses, and the guard rails it must pass.

A :class:`CohortDefinition` is pure data (validated on creation, stored as versioned JSON); resolving it against a
database to the exact ROI set is ``cadx.workflows.cohorts``' job. Two presets are built in:

``paper``
    The paper's protocol (Huynh, Li & Giger 2016): masses only (CIRC/SPIC/MISC in MIAS, mass in CBIS-DDSM, the demo
    phantoms), excluded ROIs left out, 5-fold cross-validation by lesion.
``all``
    Every included ROI, all lesion types.

Both use ``synthetic="auto"``: real data only as soon as any real ROI exists, so no experiment silently pools the
synthetic demo phantoms with real mammograms; a cohort pools them only when it says ``synthetic="both"``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cadx.errors import CadxInputError
from cadx.labels import LABELS
from cadx.lesion_types import LESION_TYPE_GROUPS, UNKNOWN_TYPE, expand_lesion_types, normalise_lesion_type

__all__ = [
    "COHORT_SCHEMA_VERSION",
    "LABELS",
    "SYNTHETIC_CHOICES",
    "REVIEW_CHOICES",
    "QC_CHOICES",
    "MIN_LESIONS_PER_CLASS_PER_FOLD",
    "FOLDS_FIELD",
    "MINIMUM_FIELD",
    "CohortDefinition",
    "CohortTooSmallError",
    "PRESETS",
    "DEFAULT_COHORT",
    "check_cohort_name",
    "check_cohort_size",
    "roi_set_sha256",
]

COHORT_SCHEMA_VERSION = 1
#: auto: real only when real ROIs exist, else the synthetic ones; real / synthetic: only those; both: pooled.
SYNTHETIC_CHOICES = ("auto", "real", "synthetic", "both")
#: included: the review kept them (experiments' default); excluded: only the excluded ones; all: both.
REVIEW_CHOICES = ("included", "excluded", "all")
#: any: QC flags do not matter; unflagged: only ROIs without any QC flag.
QC_CHOICES = ("any", "unflagged")
#: Guard rail: each class needs at least this many lesions per cross-validation fold.
MIN_LESIONS_PER_CLASS_PER_FOLD = 5
#: The web page's names of the two settings a refusal's fix names (the CLI's are ``--folds`` and
#: ``--min-lesions-per-fold``); the sweep page labels its fields with these.
FOLDS_FIELD = "Folds (cross-validation by lesion)"
MINIMUM_FIELD = "Minimum lesions of each class per fold"
_MAX_FOLDS = 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


class CohortTooSmallError(CadxInputError):
    """A cohort that cannot give a meaningful cross-validated AUC (one class only, or too few lesions per fold)."""


def _strings(value, *, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, Iterable):
        raise CadxInputError(source, f"expected a list, got {value!r}", "give a list of values (or leave it empty)")
    out = []
    for item in value:
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise CadxInputError(source, f"{item!r} is not a name", "give names as text")
        text = str(item).strip()
        if text:
            out.append(text)
    return tuple(out)


def _choice(value, *, source: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise CadxInputError(source, f"got {value!r}", f"use one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class CohortDefinition:
    """Which ROIs an experiment uses. Empty tuples mean "any".

    Parameters
    ----------
    sources : datasets by patient source: ``mias``, ``cbis-ddsm``, ``ddsm``, ``local`` (manifests, DICOM folders,
        uploads), ``demo``.
    synthetic : one of :data:`SYNTHETIC_CHOICES`.
    lesion_types : registry codes (``CIRC``, ``mass``, ...), groups (``masses``, ``calcifications``) or ``unknown``.
    labels : ``benign`` and/or ``malignant``.
    views, lateralities : e.g. ``CC``/``MLO``; ``L``/``R``.
    qc : one of :data:`QC_CHOICES`; ``exclude_qc_flags`` leaves out ROIs carrying any of these flags.
    review : one of :data:`REVIEW_CHOICES`.
    import_runs : ids of import runs (``cadx cohort create --import-run``): only ROIs those imports created.
    n_folds : the cross-validation folds (by lesion) experiments on this cohort use unless told otherwise.
    description : free text for people.
    """

    sources: tuple[str, ...] = ()
    synthetic: str = "auto"
    lesion_types: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    lateralities: tuple[str, ...] = ()
    qc: str = "any"
    exclude_qc_flags: tuple[str, ...] = ()
    review: str = "included"
    import_runs: tuple[int, ...] = ()
    n_folds: int = 5
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        put("sources", tuple(sorted({s.lower() for s in _strings(self.sources, source="cohort sources")})))
        put("synthetic", _choice(self.synthetic, source="cohort synthetic", choices=SYNTHETIC_CHOICES))
        types = _strings(self.lesion_types, source="cohort lesion types")
        expand_lesion_types(types, source="cohort lesion types")  # validates
        canonical = set()
        for name in types:
            low = name.lower()
            canonical.add(low if low in LESION_TYPE_GROUPS or low == UNKNOWN_TYPE
                          else normalise_lesion_type(name, source="cohort lesion types"))
        put("lesion_types", tuple(sorted(canonical)))
        labels = {s.lower() for s in _strings(self.labels, source="cohort labels")}
        for label in labels:
            _choice(label, source="cohort labels", choices=LABELS)
        put("labels", tuple(sorted(labels)))
        put("views", tuple(sorted({s.upper() for s in _strings(self.views, source="cohort views")})))
        sides = {s.upper()[:1] for s in _strings(self.lateralities, source="cohort lateralities")}
        for side in sides:
            _choice(side, source="cohort lateralities", choices=("L", "R"))
        put("lateralities", tuple(sorted(sides)))
        put("qc", _choice(self.qc, source="cohort qc", choices=QC_CHOICES))
        put("exclude_qc_flags", tuple(sorted(set(_strings(self.exclude_qc_flags, source="cohort QC flags")))))
        put("review", _choice(self.review, source="cohort review", choices=REVIEW_CHOICES))
        runs = set()
        for run in _strings(self.import_runs, source="cohort import runs"):
            if not run.isdigit() or int(run) < 1:
                raise CadxInputError("cohort import runs", f"{run!r} is not an import run id",
                                     "give the import run ids that `cadx cohort list` shows, as whole numbers")
            runs.add(int(run))
        put("import_runs", tuple(sorted(runs)))
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, int) or not 2 <= self.n_folds <= _MAX_FOLDS:
            raise CadxInputError("cohort folds", f"got {self.n_folds!r}",
                                 f"give a whole number of folds from 2 to {_MAX_FOLDS} (the paper used 5)")
        put("description", str(self.description or "").strip()[:500])

    @property
    def lesion_type_codes(self) -> frozenset[str]:
        """The codes the lesion-type filter keeps (empty: every type)."""
        return expand_lesion_types(self.lesion_types)

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON form stored in the database and in experiment records."""
        data = asdict(self)
        for name, value in data.items():
            if isinstance(value, tuple):
                data[name] = list(value)
        return {"version": COHORT_SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "cohort definition") -> CohortDefinition:
        """Read :meth:`to_dict`'s form back, refusing unknown versions and keys."""
        if not isinstance(data, Mapping):
            raise CadxInputError(source, "is not a JSON object", "store the output of CohortDefinition.to_dict()")
        version = data.get("version")
        if version != COHORT_SCHEMA_VERSION:
            raise CadxInputError(source, f"has version {version!r}; this cadx reads version {COHORT_SCHEMA_VERSION}",
                                 "upgrade cadx, or create the cohort again")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"version"})
        if unknown:
            raise CadxInputError(source, f"has unknown keys {unknown}", f"use only {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k != "version"})

    def summary(self) -> str:
        """One line for people: ``masses · real only · included ROIs · 5 folds``."""
        parts = []
        if self.sources:
            parts.append("sources " + "/".join(self.sources))
        parts.append({"auto": "real data only (synthetic only if it selects no real ROI)", "real": "real data only",
                      "synthetic": "SYNTHETIC only", "both": "real AND SYNTHETIC pooled"}[self.synthetic])
        parts.append("lesion types " + "/".join(self.lesion_types) if self.lesion_types else "all lesion types")
        for title, values in (("labels", self.labels), ("views", self.views), ("sides", self.lateralities)):
            if values:
                parts.append(f"{title} " + "/".join(values))
        if self.qc == "unflagged":
            parts.append("no QC flags")
        if self.exclude_qc_flags:
            parts.append("without QC flags " + "/".join(self.exclude_qc_flags))
        parts.append({"included": "included ROIs", "excluded": "EXCLUDED ROIs only",
                      "all": "included and excluded ROIs"}[self.review])
        if self.import_runs:
            parts.append("import runs " + ", ".join(map(str, self.import_runs)))
        parts.append(f"{self.n_folds}-fold CV by lesion")
        return " · ".join(parts)


PRESETS: dict[str, CohortDefinition] = {
    "paper": CohortDefinition(
        lesion_types=("masses",), review="included", n_folds=5,
        description="Paper protocol (Huynh, Li & Giger 2016): masses only (MIAS CIRC/SPIC/MISC, CBIS-DDSM mass, "
                    "the demo phantoms), excluded ROIs out, 5-fold cross-validation by lesion; real data only when "
                    "real data exists."),
    "all": CohortDefinition(
        description="Every included ROI of every lesion type; real data only when real data exists."),
}
DEFAULT_COHORT = "all"


def check_cohort_name(name: str) -> str:
    """A saved cohort's name: 1–64 letters, digits, spaces or ``_.+-``, not a preset's name."""
    text = str(name or "").strip()
    if not _NAME.match(text):
        raise CadxInputError("cohort name", f"{text!r} is not a usable name",
                             "use 1-64 letters, digits, spaces, '_', '.', '+' or '-', starting with a letter or digit")
    if text.lower() in PRESETS:
        raise CadxInputError("cohort name", f"{text!r} is a built-in preset", "choose another name")
    return text


def check_cohort_size(lesions_by_label: Mapping[str, int], *, n_folds: int, cohort: str = "cohort",
                      minimum_per_fold: int | None = None) -> None:
    """Refuse a cohort with one class only, or with fewer than ``minimum_per_fold`` lesions of a class per fold
    (default :data:`MIN_LESIONS_PER_CLASS_PER_FOLD`, 5).

    Raises
    ------
    CohortTooSmallError
        Stating the counts and what to change.
    """
    if minimum_per_fold is None:
        minimum_per_fold = MIN_LESIONS_PER_CLASS_PER_FOLD
    if isinstance(minimum_per_fold, bool) or not isinstance(minimum_per_fold, int) or minimum_per_fold < 1:
        raise CadxInputError("minimum lesions per class per fold", f"got {minimum_per_fold!r}",
                             f"give a whole number of at least 1 (default {MIN_LESIONS_PER_CLASS_PER_FOLD})")
    counts = {label: int(lesions_by_label.get(label, 0)) for label in LABELS}
    shown = f"{counts['benign']} benign and {counts['malignant']} malignant lesions"
    if min(counts.values()) == 0:
        fix = ("widen the cohort (labels, lesion types, sources, review status) or import cases of the missing "
               "class")
        raise CohortTooSmallError(cohort, f"has {shown}: one class only, so no AUC can be computed", fix,
                                  page_fix=fix)
    needed = minimum_per_fold * n_folds
    fewest = min(counts.values())
    if fewest < needed:
        short = [label for label, n in counts.items() if n < needed]
        folds_fit = fewest // minimum_per_fold
        keep = _keep_folds_facts(counts, n_folds=n_folds)
        # one set of facts (folds_fit, keep), two renderings: the command line's flags and the page's fields
        if folds_fit >= 2:
            fix = f"use at most {folds_fit} folds (--folds {folds_fit}), or widen the cohort / import more cases"
            page_fix = (f"set “{FOLDS_FIELD}” to {folds_fit} or fewer, or widen the cohort / import more cases")
        else:
            fix = page_fix = (f"widen the cohort (e.g. more lesion types or sources) or import more cases: at least "
                              f"{2 * minimum_per_fold} lesions of each class are needed even for 2 folds")
        if keep is not None:
            lowest, cost = keep
            fix += (f"; or keep {n_folds} folds with --min-lesions-per-fold {lowest} (the record keeps the lowered "
                    f"guard rail), at a cost: {cost}")
            page_fix += (f"; or keep {n_folds} folds by setting “{MINIMUM_FIELD}” to {lowest} (the experiment "
                         f"records the lowered guard rail), at a cost: {cost}")
        raise CohortTooSmallError(
            cohort, f"has {shown}: fewer than {minimum_per_fold} {' and '.join(short)} lesions per fold for "
            f"{n_folds}-fold cross-validation (needs {needed} of each class)", fix, page_fix=page_fix)


def _keep_folds_facts(counts: Mapping[str, int], *, n_folds: int) -> tuple[int, str] | None:
    """The other way out of the guard rail: keep ``n_folds`` (e.g. the paper's 5) by lowering the minimum to what
    the rarer class gives per fold, and what that costs: each test fold's AUC is a Mann-Whitney statistic over
    (malignant x benign) pairs of that fold, so it moves in steps of 1 / (pairs in the fold). Returns (the minimum
    that keeps the folds, the cost in words), or None when it would leave one lesion of a class per fold."""
    per_fold = {label: (n // n_folds, -(-n // n_folds)) for label, n in counts.items()}  # fewest, most per fold
    rarer = min(counts, key=lambda label: counts[label])
    other = next(label for label in counts if label != rarer)
    lowest = per_fold[rarer][0]
    if lowest < 2:  # one lesion of a class per fold: every fold AUC is a single ranking, not an estimate
        return None
    pairs = sorted({lowest * per_fold[other][0], lowest * per_fold[other][1]})
    steps = " to ".join(f"1/({lowest} × {p // lowest}) = {1 / p:.3f}" for p in pairs)
    return lowest, (f"about {lowest} {rarer} lesions per test fold, so each fold AUC moves in steps of {steps} "
                    f"(with {per_fold[other][0]}-{per_fold[other][1]} {other} lesions per fold)")


def roi_set_sha256(roi_hashes: Iterable[str]) -> str:
    """SHA-256 of the sorted ROI pixel hashes: the identity of an ROI set, whatever order or ids it came in."""
    return hashlib.sha256("\n".join(sorted(roi_hashes)).encode("ascii")).hexdigest()
