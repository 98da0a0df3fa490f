"""Reviewing ROIs: excluding an artifact ROI and including it again, each decision kept as a review event.

Every decision is an append-only :class:`~db.models.ReviewEvent` (who, when, what, why); ``Roi.included`` and
``Roi.exclusion_reason`` are the state the newest event left, updated in the same transaction. Decisions on one
ROI are serialised, so two reviewers deciding at the same moment both get recorded and the ROI ends in the state of
the later event: PostgreSQL locks the ROI rows (``SELECT ... FOR UPDATE``, in id order so that two bulk decisions
never deadlock); SQLite takes its write lock when the transaction begins (``BEGIN IMMEDIATE``) and a second
writer waits for it (busy timeout).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from cadx.errors import CadxInputError
from cadx.workflows.accounts import record_audit
from cadx.workflows.workspace import Workspace
from db.models import EXCLUSION_REASONS, Image, Lesion, Patient, ReviewEvent, Roi

__all__ = ["exclude_roi", "include_roi", "exclude_rois", "include_rois", "review_decisions",
           "REVIEW_DECISION_COLUMNS"]

REVIEW_DECISION_COLUMNS = (
    "event_id", "at_utc", "user", "action", "reason", "note", "roi_id", "lesion_key", "patient_key", "label",
    "view", "laterality", "image", "centre_row", "centre_col", "centre_source", "qc_flags", "included_now",
    "exclusion_reason_now")

MAX_BULK = 10_000


def exclude_roi(workspace: Workspace, roi_id: int, *, reason: str, user: str, note: str | None = None) -> ReviewEvent:
    """Exclude ROI ``roi_id`` from experiments (e.g. a compression paddle in the field); the ROI itself stays."""
    return exclude_rois(workspace, [roi_id], reason=reason, user=user, note=note)[0]


def include_roi(workspace: Workspace, roi_id: int, *, user: str, note: str | None = None) -> ReviewEvent:
    """Include ROI ``roi_id`` again (undo an exclusion)."""
    return include_rois(workspace, [roi_id], user=user, note=note)[0]


def exclude_rois(workspace: Workspace, roi_ids: Iterable[int], *, reason: str, user: str,
                 note: str | None = None) -> list[ReviewEvent]:
    """Exclude several ROIs in one transaction (all or none), one review event each, in the order given."""
    if reason not in EXCLUSION_REASONS:
        raise CadxInputError("reason", f"unknown exclusion reason {reason!r}", f"use one of {list(EXCLUSION_REASONS)}")
    if reason == "other" and not (note and note.strip()):
        raise CadxInputError("note", "reason 'other' needs a note", "say what the artifact is")
    return _record(workspace, roi_ids, action="exclude", reason=reason, user=user, note=note)


def include_rois(workspace: Workspace, roi_ids: Iterable[int], *, user: str,
                 note: str | None = None) -> list[ReviewEvent]:
    """Include several ROIs again in one transaction (all or none), one review event each."""
    return _record(workspace, roi_ids, action="include", reason=None, user=user, note=note)


@contextmanager
def _serialised(workspace: Workspace) -> Iterator[Session]:
    """A transaction that holds the database's write lock from its start on SQLite (rows are locked on PostgreSQL)."""
    with workspace.sessions() as session, session.begin():
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            # pysqlite would begin lazily at the first write, after our reads: take the write lock now instead.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield session


def _record(workspace: Workspace, roi_ids: Iterable[int], *, action: str, reason: str | None, user: str,
            note: str | None) -> list[ReviewEvent]:
    if not user or not user.strip():
        raise CadxInputError("user", "no reviewer name", "say who makes the decision")
    try:
        ids = list(dict.fromkeys(int(i) for i in roi_ids))
    except (TypeError, ValueError) as exc:
        raise CadxInputError("ROI ids", f"not ROI numbers ({exc})", "pass ROI ids as integers") from None
    if not ids:
        raise CadxInputError("selection", "no ROI selected", "select at least one ROI")
    if len(ids) > MAX_BULK:
        raise CadxInputError("selection", f"{len(ids)} ROIs at once", f"decide on at most {MAX_BULK} ROIs at a time")
    note = note.strip() if note and note.strip() else None
    with _serialised(workspace) as session:
        # Lock in id order: two bulk decisions over overlapping ROIs then queue instead of deadlocking.
        rois = {roi.id: roi for roi in session.scalars(
            select(Roi).where(Roi.id.in_(ids)).order_by(Roi.id).with_for_update())}
        missing = [i for i in ids if i not in rois]
        if missing:
            raise CadxInputError("ROI " + ", ".join(map(str, missing[:10])) + ("…" if len(missing) > 10 else ""),
                                 "no such ROI", "pick ROIs listed by the review page or `cadx stats`")
        events = []
        for roi_id in ids:
            roi = rois[roi_id]
            event = ReviewEvent(roi=roi, user=user.strip(), action=action, reason=reason, note=note)
            session.add(event)
            roi.included = action == "include"
            roi.exclusion_reason = reason
            events.append(event)
        record_audit(session, user=user.strip(), action=action, target=_targets(ids),
                     detail={"roi_ids": ids, "reason": reason, "note": note})
        session.flush()
    return events


def _targets(ids: list[int]) -> str:
    return f"roi {ids[0]}" if len(ids) == 1 else f"{len(ids)} rois"


def review_decisions(workspace: Workspace) -> pd.DataFrame:
    """Every review decision, oldest first, with the ROI it was about: the export a collaborator asks for.

    One row per :class:`~db.models.ReviewEvent` (:data:`REVIEW_DECISION_COLUMNS`): when (ISO 8601, UTC), who,
    what (``exclude``/``include``), why (the reason code) and the note; the ROI's lesion, patient key (opaque),
    label, view, laterality, source image name, marked centre (row, column in source-image pixels) with how it was
    obtained, its quality-control flags (``;``-joined) and its state now. Written as CSV through
    ``cadx.csvsafe`` (free-text cells cannot act as spreadsheet formulas).
    """
    with workspace.sessions() as session:
        rows = session.execute(
            select(ReviewEvent, Roi, Lesion.key, Lesion.label, Patient.key, Image.source_name, Image.view,
                   Image.laterality)
            .join(Roi, ReviewEvent.roi_id == Roi.id).join(Lesion, Roi.lesion_id == Lesion.id)
            .join(Patient, Lesion.patient_id == Patient.id).join(Image, Roi.image_id == Image.id)
            .order_by(ReviewEvent.at, ReviewEvent.id)).all()
        records = [{
            "event_id": event.id, "at_utc": _utc_text(event.at), "user": event.user, "action": event.action,
            "reason": event.reason, "note": event.note, "roi_id": roi.id, "lesion_key": lesion_key,
            "patient_key": patient_key, "label": label, "view": view, "laterality": laterality, "image": image,
            "centre_row": roi.centre_row, "centre_col": roi.centre_col, "centre_source": roi.centre_source,
            "qc_flags": ";".join(roi.qc_flags or []), "included_now": bool(roi.included),
            "exclusion_reason_now": roi.exclusion_reason,
        } for event, roi, lesion_key, label, patient_key, image, view, laterality in rows]
    return pd.DataFrame(records, columns=list(REVIEW_DECISION_COLUMNS))


def _utc_text(at: datetime) -> str:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones: one spelling for both
    aware = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return aware.isoformat(timespec="seconds")
