"""Accounts, roles and the append-only audit trail, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from cadx.cli import app
from cadx.errors import CadxInputError
from cadx.workflows import import_demo
from cadx.workflows.accounts import (
    access_mode,
    add_user,
    audit_events,
    authenticate,
    can,
    export_audit_csv,
    set_password,
    set_role,
)
from db.models import User

PASSWORD = "correct horse battery"


def test_passwords_are_stored_only_as_argon2id_hashes(workspace):
    add_user(workspace, "alice", PASSWORD, role="reviewer", by="admin")
    with workspace.sessions() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "alice"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert authenticate(workspace, "alice", PASSWORD).role == "reviewer"
    assert authenticate(workspace, "alice", "wrong password!!") is None
    assert authenticate(workspace, "mallory", PASSWORD) is None
    set_password(workspace, "alice", "another long secret", by="admin")
    assert authenticate(workspace, "alice", PASSWORD) is None
    assert authenticate(workspace, "alice", "another long secret") is not None
    actions = [(e.user, e.action) for e in audit_events(workspace)]
    assert ("alice", "login") in actions and ("alice", "login_failed") in actions
    # an unknown name (it may be a password typed in the wrong field) is recorded only as a keyed hash
    assert not [a for a in actions if "mallory" in a[0]]
    assert [a for a in actions if a[0].startswith("unknown-")] == [(actions[3][0], "login_failed")]


@pytest.mark.parametrize(("call", "message"), [
    (lambda ws: add_user(ws, "bob", "short", role="viewer", by="x"), "shorter than"),
    (lambda ws: add_user(ws, "bob", PASSWORD, role="superuser", by="x"), "unknown role"),
    (lambda ws: add_user(ws, "b o b", PASSWORD, role="viewer", by="x"), "not a valid user name"),
    (lambda ws: set_role(ws, "nobody", "admin", by="x"), "no user"),
])
def test_bad_account_input_is_refused(workspace, call, message):
    with pytest.raises(CadxInputError, match=message):
        call(workspace)


def test_roles_allow_what_they_should():
    assert can("viewer", "view") and not can("viewer", "upload") and not can("viewer", "review")
    assert not can("viewer", "run") and can("reviewer", "run") and can("reviewer", "review")
    assert not can("reviewer", "delete") and can("admin", "delete") and can("admin", "accounts")
    assert not can(None, "view")


def test_login_is_required_once_an_account_exists(workspace, monkeypatch):
    monkeypatch.delenv("CADX_AUTH", raising=False)
    assert access_mode(workspace, server_address="127.0.0.1") == "open"
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    assert access_mode(workspace, server_address="127.0.0.1") == "sign_in"
    monkeypatch.setenv("CADX_AUTH", "off")
    assert access_mode(workspace, server_address="127.0.0.1") == "open"
    monkeypatch.setenv("CADX_AUTH", "sometimes")
    with pytest.raises(CadxInputError, match="CADX_AUTH"):
        access_mode(workspace, server_address="127.0.0.1")


def test_audit_trail_is_append_only_and_exports_to_csv(workspace_cache, workspace, tmp_path):
    workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=1)
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    events = audit_events(workspace)
    assert [e.action for e in events] == ["import", "user_add"]
    assert events[0].detail["imported"] >= 4
    for statement in ("UPDATE audit_events SET \"user\" = 'eve'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with workspace.engine.begin() as connection:
                connection.execute(text(statement))
    assert len(audit_events(workspace)) == 2
    assert export_audit_csv(workspace, tmp_path / "audit.csv") == 2
    rows = list(csv.DictReader((tmp_path / "audit.csv").open()))
    assert [r["action"] for r in rows] == ["import", "user_add"] and rows[1]["target"] == "user alice"


def test_user_commands(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["user", "add", "carol", "--role", "viewer", "--password-stdin", "--data-dir", data],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["user", "role", "carol", "admin", "--data-dir", data])
    assert result.exit_code == 0 and "admin" in result.output
    result = runner.invoke(app, ["user", "list", "--data-dir", data])
    assert result.output.split() == ["carol", "admin"]
    result = runner.invoke(app, ["user", "add", "dave", "--password-stdin", "--data-dir", data], input="short\n")
    assert result.exit_code == 2 and "at least 10 characters" in " ".join(result.output.split())
