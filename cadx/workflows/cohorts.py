"""Cohorts in the database: save, list and resolve a :class:`cadx.cohorts.CohortDefinition` to the exact ROI set.

Resolving gives the ROIs (ordered by id, the order every experiment uses), their counts (patients, lesions and ROIs
by label, lesion type and source) and the SHA-256 of the set, so the same cohort on a changed database is visibly a
different ROI set. The guard rails (:func:`cadx.cohorts.check_cohort_size`) run on the resolution before any work.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cadx.cohorts import (
    DEFAULT_COHORT,
    PRESETS,
    CohortDefinition,
    check_cohort_name,
    check_cohort_size,
    roi_set_sha256,
)
from cadx.errors import CadxInputError
from cadx.labels import label_code
from cadx.lesion_types import UNKNOWN_TYPE
from cadx.workflows.accounts import record_audit
from cadx.workflows.features import RoiRecord
from cadx.workflows.workspace import Workspace
from db.models import Cohort, Image, ImportRun, Lesion, Patient, Roi

__all__ = [
    "ResolvedCohort",
    "CohortInfo",
    "save_cohort",
    "delete_cohort",
    "list_cohorts",
    "get_cohort",
    "resolve_cohort",
    "cohort_options",
    "cohort_roi_ids",
    "cohort_preview",
]


@dataclass(frozen=True)
class CohortInfo:
    """A cohort as listed: a preset or a saved one."""

    name: str
    definition: CohortDefinition
    preset: bool
    created_by: str | None = None
    created_at: Any = None


@dataclass(frozen=True)
class ResolvedCohort:
    """A cohort resolved against the database: the exact ROIs and their counts."""

    name: str
    definition: CohortDefinition
    records: list[RoiRecord]
    synthetic_used: str  # "real", "synthetic", "both" or "none" (what the ROI set actually holds)
    roi_set_sha256: str
    patients: int
    lesions: int
    rois: int
    lesions_by_label: dict[str, int]
    rois_by_label: dict[str, int]
    patients_by_label: dict[str, int]
    lesions_by_type: dict[str, int]
    rois_by_source: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def check(self, *, n_folds: int | None = None, minimum_per_fold: int | None = None) -> None:
        """The guard rails: refuse one class only, or fewer than ``minimum_per_fold`` lesions of a class per fold."""
        check_cohort_size(self.lesions_by_label, n_folds=n_folds or self.definition.n_folds,
                          cohort=f"cohort {self.name!r}", minimum_per_fold=minimum_per_fold)

    def to_record(self) -> dict[str, Any]:
        """What an experiment's config keeps of its cohort."""
        return {"name": self.name, "definition": self.definition.to_dict(), "synthetic_used": self.synthetic_used,
                "roi_set_sha256": self.roi_set_sha256, "counts": self.counts()}

    def counts(self) -> dict[str, Any]:
        return {"patients": self.patients, "lesions": self.lesions, "rois": self.rois,
                "lesions_by_label": dict(self.lesions_by_label), "rois_by_label": dict(self.rois_by_label),
                "patients_by_label": dict(self.patients_by_label), "lesions_by_type": dict(self.lesions_by_type),
                "rois_by_source": dict(self.rois_by_source)}


# ------------------------------------------------------------------------------------------------ storage ---
def save_cohort(workspace: Workspace, name: str, definition: CohortDefinition, *, user: str,
                replace: bool = False) -> CohortInfo:
    """Save ``definition`` under ``name`` (``replace=True`` overwrites a saved cohort of that name)."""
    name = check_cohort_name(name)
    if not isinstance(definition, CohortDefinition):
        raise CadxInputError("cohort definition", f"got {type(definition).__name__}", "pass a CohortDefinition")
    data = definition.to_dict()
    try:
        with workspace.sessions.begin() as session:
            row = session.scalar(select(Cohort).where(Cohort.name == name))
            if row is not None and not replace:
                raise CadxInputError(f"cohort {name!r}", "exists already",
                                     "choose another name, or replace it (--replace)",
                                     page_fix="choose another name, or tick “Replace the saved cohort of this "
                                              "name” and save again")
            if row is None:
                row = Cohort(name=name, definition=data, version=data["version"], created_by=user)
                session.add(row)
            else:
                row.definition, row.version, row.created_by = data, data["version"], user
            record_audit(session, user=user, action="cohort_save", target=f"cohort {name}"[:128],
                         detail={"definition": data})
    except IntegrityError as exc:  # saved by someone else at the same moment
        raise CadxInputError(f"cohort {name!r}", "exists already", "choose another name") from exc
    return get_cohort(workspace, name)


def delete_cohort(workspace: Workspace, name: str, *, user: str) -> None:
    """Delete a saved cohort (experiments keep their copy of its definition)."""
    with workspace.sessions.begin() as session:
        row = session.scalar(select(Cohort).where(Cohort.name == name))
        if row is None:
            raise CadxInputError(f"cohort {name!r}", "no such saved cohort", "list them with `cadx cohort list`")
        session.delete(row)
        record_audit(session, user=user, action="cohort_delete", target=f"cohort {name}"[:128], detail={})


def list_cohorts(workspace: Workspace) -> list[CohortInfo]:
    """The presets, then the saved cohorts by name."""
    out = [CohortInfo(name, definition, True) for name, definition in PRESETS.items()]
    with workspace.sessions() as session:
        for row in session.scalars(select(Cohort).order_by(Cohort.name)):
            out.append(CohortInfo(row.name, CohortDefinition.from_dict(row.definition, source=f"cohort {row.name!r}"),
                                  False, row.created_by, row.created_at))
    return out


def get_cohort(workspace: Workspace, name: str | None) -> CohortInfo:
    """A preset or saved cohort by name (``None``: the default, ``all``)."""
    name = DEFAULT_COHORT if name is None or not str(name).strip() else str(name).strip()
    if name.lower() in PRESETS:
        return CohortInfo(name.lower(), PRESETS[name.lower()], True)
    with workspace.sessions() as session:
        row = session.scalar(select(Cohort).where(Cohort.name == name))
        if row is None:
            known = [c.name for c in list_cohorts(workspace)]
            raise CadxInputError(f"cohort {name!r}", "no such cohort",
                                 f"use one of {', '.join(known)}, or create it with `cadx cohort create`")
        return CohortInfo(row.name, CohortDefinition.from_dict(row.definition, source=f"cohort {row.name!r}"),
                          False, row.created_by, row.created_at)


# -------------------------------------------------------------------------------------------------- resolve ---
def _rows(workspace: Workspace) -> list[Any]:
    query = (
        select(Roi.id, Roi.sha256, Roi.file, Roi.lesion_id, Lesion.patient_id, Lesion.label, Roi.included,
               Roi.is_synthetic, Image.view, Image.laterality, Lesion.lesion_type, Patient.source, Roi.qc_flags,
               Roi.import_run_id)
        .join(Lesion, Roi.lesion_id == Lesion.id)
        .join(Image, Roi.image_id == Image.id)
        .join(Patient, Lesion.patient_id == Patient.id)
        .order_by(Roi.id)
    )
    with workspace.sessions() as session:
        return list(session.execute(query).all())


def _matches(row: Any, definition: CohortDefinition, types: frozenset[str]) -> bool:
    if definition.sources and row.source not in definition.sources:
        return False
    if types and (row.lesion_type or UNKNOWN_TYPE) not in types:
        return False
    if definition.labels and row.label not in definition.labels:
        return False
    if definition.views and (row.view or "").upper() not in definition.views:
        return False
    if definition.lateralities and (row.laterality or "").upper() not in definition.lateralities:
        return False
    flags = set(row.qc_flags or [])
    if definition.qc == "unflagged" and flags:
        return False
    if definition.exclude_qc_flags and flags & set(definition.exclude_qc_flags):
        return False
    if definition.review == "included" and not row.included:
        return False
    if definition.review == "excluded" and row.included:
        return False
    if definition.import_runs and row.import_run_id not in definition.import_runs:
        return False
    return True


def resolve_cohort(workspace: Workspace, cohort: str | CohortDefinition | None = None, *,
                   name: str | None = None) -> ResolvedCohort:
    """The exact ROI set of ``cohort`` (a name, a definition, or None for the default) in this database.

    ``synthetic="auto"`` keeps the real ROIs when the other filters select any, else the synthetic ones: a cohort
    never pools synthetic phantoms with real mammograms unless it says ``synthetic="both"``.
    """
    if isinstance(cohort, CohortDefinition):
        definition, label = cohort, name or "unsaved cohort"
    else:
        info = get_cohort(workspace, cohort)
        definition, label = info.definition, info.name
    if definition.import_runs:
        with workspace.sessions() as session:
            known = set(session.scalars(select(ImportRun.id).where(ImportRun.id.in_(definition.import_runs))))
        missing = sorted(set(definition.import_runs) - known)
        if missing:
            raise CadxInputError(f"cohort {label!r}", f"names import runs {missing} that do not exist",
                                 "see the import runs that `cadx cohort list` shows, and edit the cohort")
    types = definition.lesion_type_codes
    selected = [row for row in _rows(workspace) if _matches(row, definition, types)]
    notes = []
    n_real = sum(not row.is_synthetic for row in selected)
    n_synthetic = len(selected) - n_real
    if definition.synthetic == "real" or (definition.synthetic == "auto" and n_real):
        if definition.synthetic == "auto" and n_synthetic:
            notes.append(f"{n_synthetic} synthetic ROIs left out: real data exists (choose synthetic 'both' to "
                         "pool them, explicitly)")
        selected = [row for row in selected if not row.is_synthetic]
    elif definition.synthetic == "synthetic" or definition.synthetic == "auto":
        if definition.synthetic == "auto" and selected:
            notes.append("no real data in this selection: the SYNTHETIC demo phantoms are used")
        selected = [row for row in selected if row.is_synthetic]
    kinds = {bool(row.is_synthetic) for row in selected}
    synthetic_used = {frozenset(): "none", frozenset({False}): "real", frozenset({True}): "synthetic"}.get(
        frozenset(kinds), "both")
    records = [RoiRecord(r.id, r.sha256, r.file, r.lesion_id, r.patient_id,
                         label_code(r.label, source=f"ROI {r.id}"), r.included,
                         r.is_synthetic, r.view) for r in selected]
    lesion_label = {r.lesion_id: r.label for r in selected}
    lesion_type = {r.lesion_id: r.lesion_type or UNKNOWN_TYPE for r in selected}
    patient_labels: dict[str, set[int]] = {}
    for r in selected:
        patient_labels.setdefault(r.label, set()).add(r.patient_id)
    return ResolvedCohort(
        name=label,
        definition=definition,
        records=records,
        synthetic_used=synthetic_used,
        roi_set_sha256=roi_set_sha256(r.sha256 for r in selected),
        patients=len({r.patient_id for r in selected}),
        lesions=len(lesion_label),
        rois=len(selected),
        lesions_by_label={k: v for k, v in sorted(Counter(lesion_label.values()).items())},
        rois_by_label={k: v for k, v in sorted(Counter(r.label for r in selected).items())},
        patients_by_label={k: len(v) for k, v in sorted(patient_labels.items())},
        lesions_by_type={k: v for k, v in sorted(Counter(lesion_type.values()).items())},
        rois_by_source={k: v for k, v in sorted(Counter(r.source for r in selected).items())},
        notes=notes,
    )


def cohort_roi_ids(workspace: Workspace, cohort: str | CohortDefinition | None) -> set[int]:
    """The ids of a cohort's ROIs (for filters on the review, ROC and predictions pages)."""
    return {r.id for r in resolve_cohort(workspace, cohort).records}


def cohort_options(workspace: Workspace) -> dict[str, list[Any]]:
    """The values a cohort can filter on in this database: sources, lesion types, views, QC flags, import runs."""
    rows = _rows(workspace)
    with workspace.sessions() as session:
        runs = session.execute(select(ImportRun.id, ImportRun.kind, ImportRun.source, ImportRun.n_imported)
                               .order_by(ImportRun.id)).all()
    return {
        "sources": sorted({r.source for r in rows}),
        "lesion_types": sorted({r.lesion_type or UNKNOWN_TYPE for r in rows}),
        "views": sorted({(r.view or "").upper() for r in rows if r.view}),
        "qc_flags": sorted({flag for r in rows for flag in (r.qc_flags or [])}),
        "import_runs": [{"id": r.id, "kind": r.kind, "source": r.source, "n_imported": r.n_imported}
                        for r in runs if r.n_imported],
    }


def cohort_preview(workspace: Workspace, cohort: str | None, *, n_folds: int | None = None,
                   minimum_per_fold: int | None = None) -> dict[str, Any]:
    """What a page shows before anything runs: the cohort's selection, counts, notes and the guard rails' verdict
    (``refused``: the reason and the fix in the page's words, or None when an experiment may start with
    ``n_folds`` folds and the guard rail ``minimum_per_fold``)."""
    resolved = resolve_cohort(workspace, cohort)
    try:
        resolved.check(n_folds=n_folds, minimum_per_fold=minimum_per_fold)
        refused = None
    except CadxInputError as exc:
        refused = f"{exc.problem}. Fix: {exc.fix_on_page}"
    return {"name": resolved.name, "summary": resolved.definition.summary(),
            "description": resolved.definition.description, "n_folds": resolved.definition.n_folds,
            "counts": resolved.counts(), "synthetic_used": resolved.synthetic_used,
            "roi_set_sha256": resolved.roi_set_sha256, "notes": list(resolved.notes), "refused": refused}
