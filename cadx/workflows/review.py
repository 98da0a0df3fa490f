"""Reviewing ROIs: excluding an artifact ROI and including it again, each decision kept as a review event."""

from __future__ import annotations

from sqlalchemy import select

from cadx.errors import CadxInputError
from cadx.workflows.workspace import Workspace
from db.models import EXCLUSION_REASONS, ReviewEvent, Roi

__all__ = ["exclude_roi", "include_roi"]


def exclude_roi(workspace: Workspace, roi_id: int, *, reason: str, user: str, note: str | None = None) -> ReviewEvent:
    """Exclude ROI ``roi_id`` from experiments (e.g. a compression paddle in the field); the ROI itself stays."""
    if reason not in EXCLUSION_REASONS:
        raise CadxInputError("reason", f"unknown exclusion reason {reason!r}", f"use one of {list(EXCLUSION_REASONS)}")
    if reason == "other" and not (note and note.strip()):
        raise CadxInputError("note", "reason 'other' needs a note", "say what the artifact is")
    return _record(workspace, roi_id, action="exclude", reason=reason, user=user, note=note)


def include_roi(workspace: Workspace, roi_id: int, *, user: str, note: str | None = None) -> ReviewEvent:
    """Include ROI ``roi_id`` again (undo an exclusion)."""
    return _record(workspace, roi_id, action="include", reason=None, user=user, note=note)


def _record(workspace: Workspace, roi_id: int, *, action: str, reason: str | None, user: str,
            note: str | None) -> ReviewEvent:
    if not user or not user.strip():
        raise CadxInputError("user", "no reviewer name", "say who makes the decision")
    with workspace.sessions.begin() as session:
        # Lock the ROI row (PostgreSQL) so two reviewers deciding at once are serialised; SQLite serialises writers.
        roi = session.scalar(select(Roi).where(Roi.id == roi_id).with_for_update())
        if roi is None:
            raise CadxInputError(f"ROI {roi_id}", "no such ROI", "pick an ROI listed by the review page or `cadx stats`")
        event = ReviewEvent(roi=roi, user=user.strip(), action=action, reason=reason, note=note)
        session.add(event)
        roi.included = action == "include"
        roi.exclusion_reason = reason
        session.flush()
        return event
