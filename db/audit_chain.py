"""The audit trail as a hash chain: each event stores the hash of its predecessor and its own hash.

``hash = SHA-256(prev_hash | at | user | action | target | detail)`` over a canonical text form, so deleting,
inserting or editing an event breaks the chain at the event after it (or at the event itself), which
:func:`first_break` finds. The chain is not keyed: it shows that a trail was changed by someone who did not also
recompute every later hash. Backups add the key (their manifest, which lists the SHA-256 of the audit table, is
authenticated with an HMAC, see :mod:`cadx.workflows.backup`), and the database refuses UPDATE and DELETE on the
table (migration 0003).

Events are chained in the order of their ids; appending takes a lock (an advisory lock on PostgreSQL, the write
lock on SQLite) so that two transactions never chain to the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

__all__ = ["GENESIS", "event_hash", "first_break", "append_event"]

GENESIS = "0" * 64  # the predecessor hash of the first event
_PG_AUDIT_LOCK = 0x63617564  # "caud": serialises appends to the audit chain on PostgreSQL


def _canonical_time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(prev_hash: str, *, at: datetime, user: str, action: str, target: str,
               detail: Mapping[str, Any] | None) -> str:
    """The chain hash of one audit event, given its predecessor's hash."""
    payload = json.dumps([prev_hash, _canonical_time(at), user, action, target, detail or {}],
                         sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def first_break(events: Iterable[Mapping[str, Any]]) -> tuple[Any, str] | None:
    """The first event (its id and what is wrong) where the chain breaks, or None when it is intact.

    ``events`` are mappings with the columns of ``audit_events`` (id, at, user, action, target, detail, prev_hash,
    hash), in id order.
    """
    previous = GENESIS
    for event in events:
        if event.get("prev_hash") != previous:
            return event.get("id"), ("its predecessor hash does not match the event before it: an event before it "
                                     "was deleted, inserted or changed")
        expected = event_hash(previous, at=event["at"], user=event["user"], action=event["action"],
                              target=event["target"], detail=event.get("detail"))
        if event.get("hash") != expected:
            return event.get("id"), "its content does not match its hash: the event was changed"
        previous = expected
    return None


def append_event(session: Session, event: Any) -> None:
    """Chain ``event`` (an unsaved ``AuditEvent``) to the newest event and add it to ``session``.

    Takes the chain's lock for the rest of the caller's transaction first.
    """
    from db.models import AuditEvent

    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_AUDIT_LOCK})
    else:  # a statement that writes nothing but takes SQLite's write lock (no row, so no trigger fires)
        session.execute(text("DELETE FROM audit_events WHERE 0"))
    previous = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS
    if event.at is None:
        event.at = datetime.now(UTC)
    event.prev_hash = previous
    event.hash = event_hash(previous, at=event.at, user=event.user, action=event.action, target=event.target,
                            detail=event.detail)
    session.add(event)
