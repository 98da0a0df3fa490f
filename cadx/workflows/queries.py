"""Read-only summaries of the database for the CLI and the app."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from cadx.sources import NOT_ROI_REASONS
from cadx.workflows.workspace import Workspace
from db.models import Image, ImportRun, Lesion, Patient, Roi

__all__ = ["dataset_stats", "findings_without_roi"]


def dataset_stats(workspace: Workspace) -> dict[str, Any]:
    """Counts of patients, lesions and ROIs (included/excluded), by label, view, exclusion reason and QC flag, and
    real and synthetic apart (``by_origin``)."""
    with workspace.sessions() as session:
        n_patients = session.scalar(select(func.count(Patient.id))) or 0
        n_synthetic_patients = session.scalar(select(func.count(Patient.id)).where(Patient.is_synthetic)) or 0
        lesions_by_label = dict(
            session.execute(select(Lesion.label, func.count(Lesion.id)).group_by(Lesion.label)).all())
        roi_rows = session.execute(
            select(Roi.included, Roi.exclusion_reason, Lesion.label, Image.view, Roi.qc_flags, Roi.is_synthetic)
            .join(Lesion, Roi.lesion_id == Lesion.id)
            .join(Image, Roi.image_id == Image.id)
        ).all()
        synthetic_lesions = session.scalar(select(func.count(Lesion.id)).where(Lesion.is_synthetic)) or 0
        n_imports = session.scalar(select(func.count(ImportRun.id))) or 0
        lesions_by_type = dict(session.execute(
            select(Lesion.lesion_type, func.count(Lesion.id)).group_by(Lesion.lesion_type)).all())
        reports = session.execute(select(ImportRun.kind, ImportRun.report)).all()
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
    by_origin = {}
    for origin, synthetic in (("real", False), ("synthetic", True)):
        rows = [row for row in roi_rows if bool(row[5]) is synthetic]
        kept = sum(1 for row in rows if row[0])
        by_origin[origin] = {
            "patients": n_synthetic_patients if synthetic else n_patients - n_synthetic_patients,
            "lesions": synthetic_lesions if synthetic else sum(lesions_by_label.values()) - synthetic_lesions,
            "rois": len(rows), "rois_included": kept, "rois_excluded": len(rows) - kept}
    return {
        "patients": n_patients,
        "synthetic_patients": n_synthetic_patients,
        "lesions": sum(lesions_by_label.values()),
        "lesions_by_label": dict(sorted(lesions_by_label.items())),
        "rois": len(roi_rows),
        "rois_included": n_included,
        "rois_excluded": len(roi_rows) - n_included,
        "synthetic_rois": sum(1 for row in roi_rows if row[5]),
        "by_origin": by_origin,  # real and synthetic totals apart: {"real": {"patients": n, ...}, "synthetic": ...}
        "rois_by_label": dict(sorted(by_label.items())),
        "rois_by_view": dict(sorted(by_view.items())),
        "excluded_by_reason": dict(sorted(by_reason.items())),
        "rois_by_qc_flag": dict(sorted(by_flag.items())),
        "lesions_by_type": {(k or "unknown"): v for k, v in sorted(lesions_by_type.items(), key=lambda kv: str(kv[0]))},
        "imports": n_imports,
        "findings_without_roi": findings_without_roi(reports),
    }


def findings_without_roi(reports: Iterable[tuple[str, dict[str, Any] | None]]) -> dict[str, Any]:
    """Findings of the imported truth tables that can never become ROIs (e.g. MIAS mdb059 and the *NOTE 3*
    calcification clusters have no centre), counted once however often their dataset was imported.

    ``reports``: (kind, report JSON) of the import runs. Returns ``{"count": n, "by_reason": {reason: n}}``; no
    names (a finding's name may come from a clinical file).
    """
    seen: dict[tuple[str, str], str] = {}
    for kind, report in reports:
        for item in (report or {}).get("items", []):
            code = item.get("code") or ""
            if item.get("status") == "skipped" and code in NOT_ROI_REASONS:
                seen[(kind, item.get("name", ""))] = NOT_ROI_REASONS[code]
    by_reason: dict[str, int] = {}
    for reason in seen.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {"count": len(seen), "by_reason": dict(sorted(by_reason.items()))}
