"""Safe to deploy (issue 26, items 4-7), on SQLite and PostgreSQL: which host names a loopback-only server answers
to, sign-in throttling that holds under parallel attempts and cannot be used to lock someone else out, the
password rule against common passwords, single sign-on mapped by issuer and subject only, and no usage statistics.
The browser side of item 4 is tests/e2e/test_host_names.py."""

from __future__ import annotations

import threading
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cadx.errors import CadxInputError
from cadx.workflows.accounts import (
    Account,
    SignInThrottled,
    add_user,
    audit_events,
    authenticate,
    create_first_admin,
    host_refusal,
    link_oidc,
    list_oidc_identities,
    oidc_account,
    set_disabled,
    set_password,
    unlink_oidc,
)
from db.models import SignInAttempt

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # every attempt of a test at one instant: no delay runs out meanwhile


# ---------------------------------------------------------------------------------- item 4: DNS rebinding ---
@pytest.mark.parametrize("host, served", [
    ("localhost:8501", True), ("LOCALHOST.:8501", True), ("127.0.0.1:8501", True), ("127.0.0.1", True),
    ("[::1]:8501", True), ("127.1.2.3:80", True), ("evil.example:8501", False), ("evil.example", False),
    ("localhost.evil.example:8501", False), ("127.0.0.1.nip.io:8501", False), ("", False), (None, False),
    ("[::ffff:203.0.113.5]:8501", False), ("cadx.lab.example:443", True),
])
def test_a_loopback_server_answers_only_to_loopback_and_configured_host_names(host, served, monkeypatch):
    monkeypatch.setenv("CADX_ALLOWED_HOSTS", " Cadx.Lab.Example , other.example")
    why = host_refusal(host, server_address="127.0.0.1")
    assert (why is None) is served
    if not served:
        assert "DNS rebinding" in why and "CADX_ALLOWED_HOSTS=" in why


def test_a_server_reachable_from_the_network_answers_to_any_host_name(monkeypatch):
    monkeypatch.delenv("CADX_ALLOWED_HOSTS", raising=False)
    for address in ("0.0.0.0", None, "192.168.1.20"):  # accounts or the first-run setup guard these
        assert host_refusal("cadx.example.org", server_address=address) is None
    assert host_refusal("cadx.example.org", server_address="localhost") is not None


# ------------------------------------------------------------------------------------- item 5: throttling ---
def _try(workspace, username: str, password: str, client: str | None, now: datetime = T0) -> str:
    try:
        return "ok" if authenticate(workspace, username, password, client=client, now=now) else "failed"
    except SignInThrottled:
        return "throttled"


def test_parallel_wrong_passwords_are_checked_only_as_often_as_one_after_another(workspace):
    """16 wrong passwords for one account from one client at the same moment: only the 3 free ones are checked
    (before, all 16 were: each checked the throttle before any of them had recorded its failure)."""
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    n = 16
    barrier, results = threading.Barrier(n), []

    def guess() -> None:
        barrier.wait(timeout=120)
        results.append(_try(workspace, "alice", "wrong password!", "203.0.113.9"))

    threads = [threading.Thread(target=guess) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["failed"] * 3 + ["throttled"] * 13
    actions = [e.action for e in audit_events(workspace)]
    assert actions.count("login_failed") == 3 and actions.count("login_throttled") == 13


def test_a_clients_own_sign_ins_do_not_clear_its_failures(workspace):
    """A guesser with an account of its own signs in to it between guesses: before, that reset its count."""
    add_user(workspace, "mallory", PASSWORD, role="viewer", by="setup")
    for i in range(9):  # one guess each at nine names
        assert _try(workspace, f"user{i}", "Summer2026!!", "203.0.113.9") == "failed"
    assert _try(workspace, "mallory", PASSWORD, "203.0.113.9") == "ok"
    assert _try(workspace, "user9", "Summer2026!!", "203.0.113.9") == "failed"  # the 10th failure from it
    assert _try(workspace, "user10", "Summer2026!!", "203.0.113.9") == "throttled"
    assert _try(workspace, "mallory", PASSWORD, "203.0.113.9") == "throttled"
    # one host, many IPv6 addresses of its /64: one client
    assert _try(workspace, "user11", "Summer2026!!", "2001:db8:1:2::99") == "failed"
    for i in range(9):
        _try(workspace, f"v6user{i}", "Summer2026!!", f"2001:db8:1:2::{i + 1:x}")
    assert _try(workspace, "user12", "Summer2026!!", "2001:db8:1:2:aaaa::1") == "throttled"


def test_failures_from_another_client_do_not_make_the_right_password_wait(workspace):
    """An anonymous client guessing at a named account locked its owner out (a victim waited 868 s)."""
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    for _ in range(3):
        assert _try(workspace, "alice", "wrong password!", "203.0.113.9") == "failed"
    assert _try(workspace, "alice", "wrong password!", "203.0.113.9") == "throttled"  # the guesser waits
    assert _try(workspace, "alice", PASSWORD, "192.0.2.1") == "ok"  # the owner, from her own browser, does not
    assert _try(workspace, "alice", PASSWORD, "203.0.113.9") == "throttled"
    assert _try(workspace, "alice", PASSWORD, "203.0.113.9", T0 + timedelta(seconds=1)) == "ok"


def test_a_guess_spread_over_very_many_clients_meets_the_cap(workspace):
    add_user(workspace, "alice", PASSWORD, role="admin", by="setup")
    with workspace.sessions.begin() as session:  # 100 failures recorded from 100 clients (no need to hash 100 times)
        session.add_all(SignInAttempt(at=T0, account="alice", client=f"c-{i:032x}", ok=False) for i in range(100))
    assert _try(workspace, "alice", PASSWORD, "192.0.2.1") == "throttled"
    assert _try(workspace, "alice", PASSWORD, "192.0.2.1", T0 + timedelta(seconds=1)) == "ok"


def test_the_first_run_setup_is_throttled_per_client_too(workspace):
    from cadx.workflows import accounts

    accounts._forget_setup_token()
    for _ in range(3):
        with pytest.raises(CadxInputError, match="wrong"):
            create_first_admin(workspace, "alice", PASSWORD, token="guess", client="203.0.113.9", now=T0)
    with pytest.raises(SignInThrottled):
        create_first_admin(workspace, "alice", PASSWORD, token="guess", client="203.0.113.9", now=T0)
    user = create_first_admin(workspace, "alice", PASSWORD, token=accounts.setup_token(), client="192.0.2.1", now=T0)
    assert user.username == "alice"


@pytest.mark.parametrize("password", ["1234567890", "0987654321", "qwertyuiop", "aaaaaaaaaaaa", "abcdefghijkl",
                                      "password123", "Password123!", "1qaz2wsx3edc", "summer2026"])
def test_common_and_sequential_passwords_are_refused(workspace, password):
    with pytest.raises(CadxInputError, match="password.*too easy to guess"):
        add_user(workspace, "alice.smith", password, role="viewer", by="setup")
    add_user(workspace, "bob", PASSWORD, role="viewer", by="setup")
    with pytest.raises(CadxInputError, match="too easy to guess"):
        set_password(workspace, "bob", password, by="admin")
    assert authenticate(workspace, "bob", PASSWORD) is not None  # the old password stays


def test_a_password_made_of_the_user_name_is_refused(workspace):
    with pytest.raises(CadxInputError, match="too easy to guess"):
        add_user(workspace, "alice.smith", "alice.smith2026", role="viewer", by="setup")
    add_user(workspace, "bob", "alice.smith2026", role="viewer", by="setup")  # for someone else it is a password


# -------------------------------------------------------------------------------- item 6: single sign-on ---
IDP = "https://idp.lab.example"
_AUTH_SECRETS = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                 "client_id": "cadx", "client_secret": "s",
                 "server_metadata_url": "https://idp.lab.example/.well-known/openid-configuration"}


def test_single_sign_on_maps_by_issuer_and_subject_only(workspace):
    add_user(workspace, "alice@lab.example", PASSWORD, role="admin", by="setup")
    add_user(workspace, "rex", PASSWORD, role="reviewer", by="setup")
    forged = oidc_account(workspace, {"iss": IDP, "sub": "mallory-7", "email": "alice@lab.example", "name": "rex"})
    assert forged == Account("sso #1", "viewer", unlinked_identity=1)  # before: alice@lab.example, admin
    assert oidc_account(workspace, {"iss": IDP, "sub": "mallory-8", "name": "rex"}).role == "viewer"
    assert oidc_account(workspace, {"iss": IDP, "email": "alice@lab.example"}) is None  # no subject: nobody
    assert oidc_account(workspace, {"sub": "alice-1", "email": "alice@lab.example"}) is None  # no issuer

    number = link_oidc(workspace, "alice@lab.example", issuer=IDP, subject="alice-1", by="admin")
    assert oidc_account(workspace, {"iss": IDP, "sub": "alice-1", "email": "a.new.address@elsewhere.example"}) \
        == Account("alice@lab.example", "admin")  # her provider-side name may change; the link holds
    assert oidc_account(workspace, {"iss": "https://other-idp.example", "sub": "alice-1"}).role == "viewer"
    assert oidc_account(workspace, {"iss": IDP, "sub": "mallory-7", "email": "alice@lab.example"}).role == "viewer"
    with pytest.raises(CadxInputError, match="linked to alice@lab.example already"):
        link_oidc(workspace, "rex", identity=number, by="admin")
    link_oidc(workspace, "rex", identity=1, by="admin")  # mallory-7's identity, seen at its first sign-in
    assert oidc_account(workspace, {"iss": IDP, "sub": "mallory-7"}) == Account("rex", "reviewer")
    set_disabled(workspace, "rex", True, by="admin")
    assert oidc_account(workspace, {"iss": IDP, "sub": "mallory-7"}) is None
    unlink_oidc(workspace, identity=1, by="admin")
    assert oidc_account(workspace, {"iss": IDP, "sub": "mallory-7"}).role == "viewer"
    assert [(i["id"], i["issuer"], i["subject"], i["account"]) for i in list_oidc_identities(workspace)] == [
        (1, IDP, "mallory-7", None), (2, IDP, "mallory-8", None), (3, IDP, "alice-1", "alice@lab.example"),
        (4, "https://other-idp.example", "alice-1", None)]
    actions = [e.action for e in audit_events(workspace)]
    assert actions.count("sso_first_sign_in") == 3 and actions.count("sso_link") == 2 and "sso_unlink" in actions


def test_link_oidc_commands(tmp_path):
    from typer.testing import CliRunner

    from cadx.cli import app

    runner, data = CliRunner(), str(tmp_path / "data")
    assert runner.invoke(app, ["user", "add", "carol", "--password-stdin", "--data-dir", data],
                         input=PASSWORD + "\n").exit_code == 0
    result = runner.invoke(app, ["user", "link-oidc", "carol", "--issuer", IDP, "--subject", "c-42",
                                 "--data-dir", data])
    assert result.exit_code == 0 and "#1 is linked to carol" in result.output, result.output
    assert runner.invoke(app, ["user", "oidc-list", "--data-dir", data]).output.split() == [
        "#1", IDP, "c-42", "carol"]
    result = runner.invoke(app, ["user", "link-oidc", "carol", "--data-dir", data])
    assert result.exit_code == 2 and "--identity N" in " ".join(result.output.split())
    assert runner.invoke(app, ["user", "unlink-oidc", "--identity", "1", "--data-dir", data]).exit_code == 0
    result = runner.invoke(app, ["user", "unlink-oidc", "--identity", "7", "--data-dir", data])
    assert result.exit_code == 2 and "no single sign-on identity #7" in " ".join(result.output.split())


@pytest.fixture
def sso_data_dir(workspace_cache, tmp_path, monkeypatch):
    import streamlit as st

    from cadx.workflows import import_demo, open_workspace
    from tests.apptest_support import point_app_at

    data = tmp_path / "data"
    workspace = open_workspace(data)
    workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=1)
    add_user(workspace, "alice@lab.example", PASSWORD, role="admin", by="setup")
    monkeypatch.delenv("CADX_AUTH", raising=False)
    yield point_app_at(data, monkeypatch), workspace
    st.cache_resource.clear()


def _app_as(claims: dict):
    from streamlit.testing.v1 import AppTest

    from tests.apptest_support import APP

    at = AppTest.from_file(APP, default_timeout=180)
    at.secrets["auth"] = dict(_AUTH_SECRETS)
    at.user = {"is_logged_in": True, **claims}
    return at.run()


def _signed_in_as(at) -> str | None:
    import re

    for m in at.sidebar.markdown:
        if m.value.startswith("Signed in as"):
            # the text as the reader sees it: plain()'s markdown escapes and invisible word joiners (which keep
            # an e-mail address from becoming a link) removed
            return re.sub(r"\\(.)", r"\1", m.value).replace("\u2060", "")
    return None


def test_a_forged_email_claim_does_not_sign_in_as_that_account(sso_data_dir):
    """In the app: an identity whose e-mail claim equals an admin's account name only views (before: admin)."""
    _, workspace = sso_data_dir
    at = _app_as({"iss": IDP, "sub": "mallory-7", "email": "alice@lab.example", "name": "alice@lab.example"})
    assert not at.exception
    assert _signed_in_as(at) == "Signed in as **sso #1** (viewer)"
    assert any("link-oidc ACCOUNT --identity 1" in c.value for c in at.sidebar.caption)
    link_oidc(workspace, "alice@lab.example", issuer=IDP, subject="alice-1", by="admin")
    at = _app_as({"iss": IDP, "sub": "alice-1", "name": "Alice"})
    assert _signed_in_as(at) == "Signed in as **alice@lab.example** (admin)"
    at = _app_as({"iss": IDP, "email": "alice@lab.example"})  # no subject claim: the sign-in screen
    assert at.title[0].value == "cadx — sign in" and _signed_in_as(at) is None


# ----------------------------------------------------------------------------- item 7: usage statistics ---
def test_plain_streamlit_run_sends_no_usage_statistics():
    """`streamlit run serve.py` typed by hand reads .streamlit/config.toml of the working directory."""
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
