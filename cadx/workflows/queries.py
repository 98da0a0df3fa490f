"""Read-only summaries of the database for the CLI and the app."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from cadx.workflows.workspace import Workspace
from db.models import Image, ImportRun, Lesion, Patient, Roi

__all__ = ["dataset_stats"]


def dataset_stats(workspace: Workspace) -> dict[str, Any]:
    """Counts of patients, lesions and ROIs (included/excluded), by label, view, exclusion reason and QC flag."""
    with workspace.sessions() as session:
        n_patients = session.scalar(select(func.count(Patient.id))) or 0
        n_synthetic_patients = session.scalar(select(func.count(Patient.id)).where(Patient.is_synthetic)) or 0
        lesions_by_label = dict(session.execute(select(Lesion.label, func.count(Lesion.id)).group_by(Lesion.label)).all())
        roi_rows = session.execute(
            select(Roi.included, Roi.exclusion_reason, Lesion.label, Image.view, Roi.qc_flags, Roi.is_synthetic)
            .join(Lesion, Roi.lesion_id == Lesion.id)
            .join(Image, Roi.image_id == Image.id)
        ).all()
        n_imports = session.scalar(select(func.count(ImportRun.id))) or 0
    by_label: dict[str, dict[str, int]] = {}
    by_view: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    by_flag: dict[str, int] = {}
    for included, reason, label, view, flags, _synthetic in roi_rows:
        status = "included" if included else "excluded"
        by_label.setdefault(label, {"included": 0, "excluded": 0})[status] += 1
        by_view.setdefault(view or "unknown", {"included": 0, "excluded": 0})[status] += 1
        if not included:
            by_reason[reason or "unspecified"] = by_reason.get(reason or "unspecified", 0) + 1
        for flag in flags or []:
            by_flag[flag] = by_flag.get(flag, 0) + 1
    n_included = sum(1 for row in roi_rows if row[0])
    return {
        "patients": n_patients,
        "synthetic_patients": n_synthetic_patients,
        "lesions": sum(lesions_by_label.values()),
        "lesions_by_label": dict(sorted(lesions_by_label.items())),
        "rois": len(roi_rows),
        "rois_included": n_included,
        "rois_excluded": len(roi_rows) - n_included,
        "synthetic_rois": sum(1 for row in roi_rows if row[5]),
        "rois_by_label": dict(sorted(by_label.items())),
        "rois_by_view": dict(sorted(by_view.items())),
        "excluded_by_reason": dict(sorted(by_reason.items())),
        "rois_by_qc_flag": dict(sorted(by_flag.items())),
        "imports": n_imports,
    }
