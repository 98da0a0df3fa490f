"""Local accounts, roles and the audit trail.

Roles: ``viewer`` (read only), ``reviewer`` (also uploads, review decisions, jobs), ``admin`` (also accounts and
deleting experiments). Passwords are stored only as Argon2id hashes (argon2-cffi).

Login policy (``CADX_AUTH``): ``auto`` (default) asks for a login as soon as one account exists, and runs without
login while none does — everyone acting as ``local user`` with the admin role, as the owner of the data — which
keeps the one-command local demo (the app then listens on localhost only); ``required`` always asks; ``off`` never
asks.
"""

from __future__ import annotations

import csv
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cadx.errors import CadxInputError
from cadx.workflows.workspace import Workspace
from db.audit_chain import append_event
from db.models import ROLES, AuditEvent, User

__all__ = ["ROLES", "add_user", "set_password", "set_role", "authenticate", "list_users", "login_required",
           "can", "record_audit", "export_audit_csv", "audit_events"]

_HASHER = PasswordHasher()  # Argon2id with argon2-cffi's current recommended parameters
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{2,64}$")
_MIN_PASSWORD = 10
_RANK = {role: rank for rank, role in enumerate(ROLES)}
#: the least role allowed to do each action
_NEEDS = {"view": "viewer", "upload": "reviewer", "review": "reviewer", "run": "reviewer", "delete": "admin",
          "accounts": "admin"}


def can(role: str | None, action: str) -> bool:
    """Whether ``role`` may do ``action`` (view, upload, review, run, delete, accounts)."""
    return role in _RANK and _RANK[role] >= _RANK[_NEEDS[action]]


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise CadxInputError("role", f"unknown role {role!r}", f"use one of {list(ROLES)}")


def _check_password(password: str) -> None:
    if len(password) < _MIN_PASSWORD:
        raise CadxInputError("password", f"shorter than {_MIN_PASSWORD} characters",
                             f"choose a password of at least {_MIN_PASSWORD} characters")


def record_audit(session: Session, *, user: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    """Append an audit event in the caller's transaction (so it exists exactly when the change does)."""
    append_event(session, AuditEvent(user=user, action=action, target=target, detail=detail or {}))


def add_user(workspace: Workspace, username: str, password: str, *, role: str, by: str) -> None:
    """Create an account."""
    if not _USERNAME.match(username or ""):
        raise CadxInputError("username", f"{username!r} is not a valid user name",
                             "use 2-64 letters, digits, dots, dashes, underscores or @")
    _check_role(role)
    _check_password(password)
    with workspace.sessions.begin() as session:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise CadxInputError("username", f"{username!r} already exists", "choose another name, or change its "
                                 "password with `cadx user passwd`")
        session.add(User(username=username, password_hash=_HASHER.hash(password), role=role))
        record_audit(session, user=by, action="user_add", target=f"user {username}", detail={"role": role})


def set_password(workspace: Workspace, username: str, password: str, *, by: str) -> None:
    _check_password(password)
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        user.password_hash = _HASHER.hash(password)
        record_audit(session, user=by, action="user_passwd", target=f"user {username}")


def set_role(workspace: Workspace, username: str, role: str, *, by: str) -> None:
    _check_role(role)
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        previous, user.role = user.role, role
        record_audit(session, user=by, action="user_role", target=f"user {username}",
                     detail={"from": previous, "to": role})


def _get(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise CadxInputError("username", f"no user {username!r}", "list accounts with `cadx user list`")
    return user


def authenticate(workspace: Workspace, username: str, password: str) -> User | None:
    """The account when the password is right (and the account enabled), else None; every attempt is audited."""
    with workspace.sessions.begin() as session:
        user = session.scalar(select(User).where(User.username == username))
        ok = False
        if user is not None and not user.disabled:
            try:
                ok = _HASHER.verify(user.password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                ok = False
        else:
            # Spend the same time as a real check, so response times do not reveal which user names exist.
            try:
                _HASHER.verify(_DUMMY_HASH, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                pass
        record_audit(session, user=username[:128], action="login" if ok else "login_failed", target="app")
        if not ok:
            return None
        if _HASHER.check_needs_rehash(user.password_hash):
            user.password_hash = _HASHER.hash(password)
        user.last_login_at = datetime.now(timezone.utc)
        session.flush()
        session.expunge(user)
        return user


_DUMMY_HASH = _HASHER.hash("not a password of anyone")


def list_users(workspace: Workspace) -> list[User]:
    with workspace.sessions() as session:
        return list(session.scalars(select(User).order_by(User.username)))


def login_required(workspace: Workspace) -> bool:
    """Whether the app must ask for a login (see the module docstring for ``CADX_AUTH``)."""
    mode = os.environ.get("CADX_AUTH", "auto").lower()
    if mode not in ("auto", "required", "off"):
        raise CadxInputError("CADX_AUTH", f"unknown value {mode!r}", "use auto, required or off")
    if mode != "auto":
        return mode == "required"
    with workspace.sessions() as session:
        return (session.scalar(select(func.count(User.id))) or 0) > 0


def audit_events(workspace: Workspace, *, limit: int | None = None) -> list[AuditEvent]:
    with workspace.sessions() as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if limit is not None:
            query = query.limit(limit)
        return list(session.scalars(query))


def export_audit_csv(workspace: Workspace, target: str | Path) -> int:
    """Write the whole audit trail to a CSV file; returns the number of events."""
    events = audit_events(workspace)
    with Path(target).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "at_utc", "user", "action", "target", "detail"])
        for event in events:
            writer.writerow([event.id, event.at.isoformat(), event.user, event.action, event.target,
                             json.dumps(event.detail, sort_keys=True, default=str)])
    return len(events)
