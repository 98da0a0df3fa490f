"""Sign-in, roles and session expiry in the app (AppTest)."""

from __future__ import annotations

import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cadx.workflows import import_demo, open_workspace
from cadx.workflows.accounts import add_user

from tests.apptest_support import APP, point_app_at
PASSWORD = "a long enough secret"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    workspace = open_workspace(data)
    import_demo(workspace, n_lesions=2, seed=1)
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


def test_accounts_mean_everyone_signs_in(data_dir):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert at.title[0].value == "cadx — sign in"
    assert not at.metric  # nothing of the data is shown before signing in
    _sign_in(at, "rex", "wrong password")
    assert "Wrong user name or password" in at.error[0].value
    _sign_in(at, "rex", PASSWORD)
    assert not at.exception
    assert at.title[0].value.startswith("cadx")
    assert any("Signed in as **rex** (reviewer)" in m.value for m in at.sidebar.markdown)


def test_a_viewer_cannot_upload(data_dir):
    at = AppTest.from_file(APP, default_timeout=60).run()
    _sign_in(at, "vera", PASSWORD)
    at.switch_page("pages/upload.py").run()
    assert not at.exception
    assert any("cannot upload" in info.value for info in at.info)
    assert not at.get("file_uploader")


def test_sessions_expire(data_dir, monkeypatch):
    at = AppTest.from_file(APP, default_timeout=60)
    signed_in_long_ago = {"username": "rex", "role": "reviewer", "since": 0.0}
    at.session_state["_cadx_account"] = signed_in_long_ago
    monkeypatch.setenv("CADX_SESSION_HOURS", "8")
    at.run()
    assert at.title[0].value == "cadx — sign in"
    assert "expired after 8 hours" in at.info[0].value

    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.session_state["_cadx_account"] = {**signed_in_long_ago, "since": time.time()}
    fresh.run()
    assert fresh.title[0].value != "cadx — sign in"


def test_single_sign_on_is_offered_only_when_configured(data_dir):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not [b for b in at.button if "single sign-on" in b.label]
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "cadx", "client_secret": "s",
                          "server_metadata_url": "https://sso.example.org/.well-known/openid-configuration"}
    at.run()
    assert not at.exception
    assert [b for b in at.button if "single sign-on" in b.label]
    assert at.title[0].value == "cadx — sign in"
