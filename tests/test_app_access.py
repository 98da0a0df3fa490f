"""Sign-in, roles, server-side sessions, revocation and the first-run setup in the app (AppTest)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from cadx.workflows import accounts, import_demo, open_workspace
from cadx.workflows.accounts import add_user, set_disabled, set_password, set_role, setup_token, start_session
from tests.apptest_support import APP, point_app_at

PASSWORD = "a long enough secret"


@pytest.fixture
def data_dir(workspace_cache, tmp_path, monkeypatch):
    data = tmp_path / "data"
    workspace = open_workspace(data)
    workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=1)
    add_user(workspace, "vera", PASSWORD, role="viewer", by="setup")
    add_user(workspace, "rex", PASSWORD, role="reviewer", by="setup")
    monkeypatch.delenv("CADX_AUTH", raising=False)
    yield point_app_at(data, monkeypatch)
    st.cache_resource.clear()


def _sign_in(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    at.button[0].click().run()
    return at


def _signed_in_as(at: AppTest) -> str | None:
    for m in at.sidebar.markdown:
        if m.value.startswith("Signed in as"):
            return m.value
    return None


def test_accounts_mean_everyone_signs_in(data_dir):
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert at.title[0].value == "cadx — sign in"
    assert not at.metric  # nothing of the data is shown before signing in
    _sign_in(at, "rex", "wrong password")
    assert "Wrong user name or password" in at.error[0].value
    _sign_in(at, "rex", PASSWORD)
    assert not at.exception
    assert at.title[0].value.startswith("cadx")
    assert _signed_in_as(at) == "Signed in as **rex** (reviewer)"


def test_a_viewer_cannot_upload(data_dir):
    at = AppTest.from_file(APP, default_timeout=180).run()
    _sign_in(at, "vera", PASSWORD)
    at.switch_page("pages/upload.py").run()
    assert not at.exception
    assert any("cannot upload" in info.value for info in at.info)
    assert not at.get("file_uploader")


def test_sessions_expire(data_dir):
    workspace = open_workspace(data_dir)
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["_cadx_token"] = start_session(workspace, "rex", hours=8,
                                                    now=datetime(2020, 1, 1, tzinfo=UTC))
    at.run()
    assert at.title[0].value == "cadx — sign in"
    assert "expired after 8 hours" in at.info[0].value

    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.session_state["_cadx_token"] = start_session(workspace, "rex", hours=8)
    fresh.run()
    assert fresh.title[0].value != "cadx — sign in"
    # a forged or unknown token is nobody
    forged = AppTest.from_file(APP, default_timeout=180)
    forged.session_state["_cadx_token"] = "x" * 43
    forged.run()
    assert forged.title[0].value == "cadx — sign in"


def test_a_refresh_keeps_the_sign_in_through_the_session_cookie(data_dir, monkeypatch):
    """A refresh is a new browser session whose only memory is the HttpOnly cookie (serve.py sets it)."""
    import pages._shared as shared

    at = AppTest.from_file(APP, default_timeout=180).run()
    _sign_in(at, "rex", PASSWORD)
    token = at.session_state["_cadx_token"]
    assert len(token) >= 40
    refreshed = AppTest.from_file(APP, default_timeout=180)
    monkeypatch.setattr(shared, "_cookie_token", lambda: token)
    refreshed.run()
    assert not refreshed.exception
    assert _signed_in_as(refreshed) == "Signed in as **rex** (reviewer)"
    # without the cookie (before this change: always), a refresh asks to sign in again
    monkeypatch.setattr(shared, "_cookie_token", lambda: None)
    assert AppTest.from_file(APP, default_timeout=180).run().title[0].value == "cadx — sign in"


@pytest.mark.parametrize("change", ["demote", "disable", "password"])
def test_revoking_access_takes_effect_at_the_next_rerun(data_dir, change):
    workspace = open_workspace(data_dir)
    at = AppTest.from_file(APP, default_timeout=180).run()
    _sign_in(at, "rex", PASSWORD)
    assert _signed_in_as(at) == "Signed in as **rex** (reviewer)"
    if change == "demote":
        at.switch_page("pages/upload.py").run()
        assert at.get("file_uploader")
        set_role(workspace, "rex", "viewer", by="admin")
        at.run()
        assert not at.get("file_uploader")
        assert any("cannot upload" in info.value for info in at.info)
        return
    if change == "disable":
        set_disabled(workspace, "rex", True, by="admin")
    else:
        set_password(workspace, "rex", "a brand new secret", by="admin")
    at.run()
    assert at.title[0].value == "cadx — sign in"
    assert "Your session ended" in at.info[0].value
    if change == "disable":
        _sign_in(at, "rex", PASSWORD)
        assert "Wrong user name or password" in at.error[0].value


def test_sign_out_ends_the_server_side_session(data_dir):
    workspace = open_workspace(data_dir)
    at = AppTest.from_file(APP, default_timeout=180).run()
    _sign_in(at, "rex", PASSWORD)
    token = at.session_state["_cadx_token"]
    at.sidebar.button[0].click().run()
    assert at.title[0].value == "cadx — sign in"
    from cadx.workflows.accounts import session_account
    assert session_account(workspace, token) is None  # a copied cookie is useless after signing out


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=2, seed=1)
    monkeypatch.delenv("CADX_AUTH", raising=False)
    accounts._forget_setup_token()  # a fresh server process
    yield point_app_at(data, monkeypatch)
    st.cache_resource.clear()


@pytest.mark.parametrize("address", [None, "0.0.0.0", "192.168.1.20", "::"])
def test_an_exposed_server_without_accounts_shows_only_the_first_run_setup(empty_data_dir, address, capfd):
    with patch_config_options({"server.address": address}):
        at = AppTest.from_file(APP, default_timeout=180).run()
        assert not at.exception
        assert at.title[0].value == "cadx — first-run setup"
        assert not at.metric and not at.get("file_uploader")
        other = AppTest.from_file(APP, default_timeout=180).run()
        other.switch_page("pages/upload.py").run()  # nothing else is reachable
        assert other.title[0].value == "cadx — first-run setup" and not other.get("file_uploader")
        token = setup_token()
        assert token in capfd.readouterr().err  # printed in the server log, Jupyter-style

        def setup(with_token):
            at.text_input[0].input(with_token)
            at.text_input[1].input("alice")
            at.text_input[2].input(PASSWORD)
            at.text_input[3].input(PASSWORD)
            at.button[0].click().run()

        setup("a wrong token")
        assert "wrong one-time setup token" in at.error[0].value
        setup(token)
        assert not at.exception
        assert _signed_in_as(at) == "Signed in as **alice** (admin)"
        assert accounts._SETUP_TOKEN is None  # one-time: used up


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_server_without_accounts_needs_no_sign_in(empty_data_dir, address):
    with patch_config_options({"server.address": address}):
        at = AppTest.from_file(APP, default_timeout=180).run()
        assert not at.exception
        assert at.title[0].value not in ("cadx — sign in", "cadx — first-run setup")
        assert at.metric  # the overview's numbers


def test_auth_off_is_refused_on_an_exposed_server(empty_data_dir, monkeypatch):
    monkeypatch.setenv("CADX_AUTH", "off")
    with patch_config_options({"server.address": "0.0.0.0"}):
        at = AppTest.from_file(APP, default_timeout=180).run()
        assert not at.metric
        assert "anyone who can reach the port would be admin" in at.error[0].value


def test_admin_password_file_creates_the_first_admin(empty_data_dir, tmp_path, monkeypatch):
    secret = tmp_path / "admin-password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("CADX_ADMIN_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("CADX_ADMIN_USER", "root-admin")
    with patch_config_options({"server.address": "0.0.0.0"}):
        at = AppTest.from_file(APP, default_timeout=180).run()
        assert at.title[0].value == "cadx — sign in"
        _sign_in(at, "root-admin", PASSWORD)
        assert _signed_in_as(at) == "Signed in as **root\\-admin** (admin)"


def test_single_sign_on_is_offered_only_when_configured(data_dir):
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not [b for b in at.button if "single sign-on" in b.label]
    at = AppTest.from_file(APP, default_timeout=180)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "cadx", "client_secret": "s",
                          "server_metadata_url": "https://sso.example.org/.well-known/openid-configuration"}
    at.run()
    assert not at.exception
    assert [b for b in at.button if "single sign-on" in b.label]
    assert at.title[0].value == "cadx — sign in"


EVIL_KEY = "![x](http://evil.example/pixel.png) [click](http://evil.example) <img src=x onerror=alert(1)> :red[!]"


def test_user_text_is_shown_as_plain_text(empty_data_dir):
    """A lesion key with markdown rendered a link and fetched an external image; now every user string is
    escaped before it reaches markdown (lesion and patient keys, reviewer names, notes, experiment names)."""
    from sqlalchemy import select, update

    from db.models import Lesion, Roi

    workspace = open_workspace(empty_data_dir)
    with workspace.sessions.begin() as session:
        roi = session.scalars(select(Roi).order_by(Roi.id)).first()
        roi_id, lesion_id = roi.id, roi.lesion_id
        session.execute(update(Lesion).where(Lesion.id == lesion_id).values(key=EVIL_KEY))
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["review_open"] = roi_id
    at.session_state["reviewer"] = "**boss** [me](http://evil.example)"
    at.run()
    at.switch_page("pages/review.py").run()
    assert not at.exception
    texts = [e.value for kind in ("markdown", "caption", "info", "success", "error", "warning")
             for e in getattr(at, kind)]
    shown = [t for t in texts if "evil" in t]
    assert len(shown) >= 3, texts  # the lesion key twice (ROI and lesion panels) and the reviewer name
    for text in shown:  # every markdown construct of the user's text arrives backslash-escaped
        for unescaped in (r"(?<!\\)\]\(", r"(?<!\\)<img", r"(?<!\\):red", r"(?<!\\)\*\*boss", r"(?<!\\)!\["):
            assert re.search(unescaped, text) is None, (unescaped, text)
    assert any("\\!\\[x\\]\\(http\u2060\\:" in t for t in shown)  # U+2060: no autolink either


# remark-gfm (mdast-util-gfm-autolink-literal) links what these find in a text node, after escapes are resolved
_GFM_AUTOLINKS = (re.compile(r"(https?://|www(?=\.))[-.\w]+", re.IGNORECASE),
                  re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+"))


@pytest.mark.parametrize("payload", ["https://evil.example/login", "see http://evil.example.", "www.evil.example",
                                     "WWW.evil.example/x", "mail a@b.example now", "mailto:boss@evil.example"])
def test_plain_leaves_urls_and_addresses_inert(payload):
    """Backslashes did not stop GFM's autolinks (tests/e2e/test_markdown_autolinks.py shows them in the browser)."""
    from pages._shared import plain

    text = re.sub(r"\\(.)", r"\1", plain(payload))  # the text node remark-gfm sees
    assert [r.pattern for r in _GFM_AUTOLINKS if r.search(text)] == []
    assert text.replace("\u2060", "") == payload


@pytest.mark.parametrize("payload", [
    "[click](http://evil.example)", "![x](http://evil.example/p.png)", "<img src=x onerror=alert(1)>",
    ":red[alarm]", ":material/lock:", "$x^2$", "`code`", "**bold** _it_", "a\n# Heading", "<http://evil.example>",
    "&lt;script&gt;",
])
def test_plain_escapes_every_markdown_construct(payload):
    from pages._shared import plain

    escaped = plain(payload)
    assert "\n" not in escaped
    # every markdown-significant character is backslash-escaped; unescaping (and dropping the word joiners that
    # break autolinks) gives the text back (one line)
    assert re.sub(r"\\(.)", r"\1", escaped).replace("\u2060", "") == " ".join(payload.split())
    for special in "[]()<>`*_:$#&!":
        assert re.search(r"(?<!\\)" + re.escape(special), escaped) is None, (special, escaped)


def test_every_failed_sign_in_says_why(data_dir, monkeypatch):
    # Issue 25.8: under load a sign-in failed with no word (it worked on a second try). Each way it can fail has one.
    at = AppTest.from_file(APP, default_timeout=180).run()
    _sign_in(at, "rex", "")
    assert at.title[0].value == "cadx — sign in" and len(at.error) == 1
    assert at.error[0].value.startswith("Enter both your user name and your password")
    _sign_in(at, "   ", PASSWORD)
    assert at.error[0].value.startswith("Enter both your user name and your password")

    from sqlalchemy.exc import OperationalError

    import pages._shared as shared

    def locked(*args, **kwargs):
        raise OperationalError("UPDATE sign_in_attempts", {}, Exception("database is locked"))

    monkeypatch.setattr(shared, "authenticate", locked)
    _sign_in(at, "rex", PASSWORD)
    assert not at.exception and at.title[0].value == "cadx — sign in"
    assert at.error[0].value.startswith("Signing in failed: ") and "database is locked" in at.error[0].value
    assert at.error[0].value.endswith("Nothing was changed; try again in a moment.")
    monkeypatch.undo()
    _sign_in(at, "rex", PASSWORD)  # and the same form then signs in
    assert _signed_in_as(at) == "Signed in as **rex** (reviewer)"
