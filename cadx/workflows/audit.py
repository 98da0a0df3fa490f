"""Checking the audit trail's hash chain (see :mod:`db.audit_chain`): ``cadx audit verify``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import select

from cadx.workflows.workspace import Workspace
from db.audit_chain import first_break
from db.models import AuditEvent

__all__ = ["verify_audit_chain"]


def verify_audit_chain(workspace: Workspace) -> tuple[int, tuple[Any, str] | None]:
    """(number of events checked, None) when the chain is intact, else (events before the break, (id, problem))."""
    table = AuditEvent.__table__
    checked = 0

    def events() -> Iterator[Mapping[str, Any]]:
        nonlocal checked
        with workspace.engine.connect() as connection:
            for row in connection.execute(select(table).order_by(table.c.id)).mappings():
                yield dict(row)
                checked += 1

    broken = first_break(events())
    return checked, broken
