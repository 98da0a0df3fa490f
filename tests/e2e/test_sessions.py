"""Sign-in sessions in a real browser, with the app served as users run it (``streamlit run serve.py``): the
session lives in an HttpOnly, SameSite=Strict cookie, a refresh keeps the user signed in, and disabling the account
(or signing out) throws the browser out at its next page load."""

from __future__ import annotations

import pytest

from cadx.workflows import import_demo, open_workspace
from cadx.workflows.accounts import add_user, set_disabled
from tests.e2e.conftest import REPO, screenshot, serve_app, wait_for_app

PASSWORD = "a long enough secret"


def _serve(tmp_path_factory, workspace_cache, *, with_account: bool):
    data, _report = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-sessions") / "data", import_demo,
                                             n_lesions=4, seed=3)
    workspace = open_workspace(data)
    if with_account:
        add_user(workspace, "rex", PASSWORD, role="reviewer", by="setup")
    # serve.py: the app plus the route that sets the HttpOnly session cookie (what scripts/app.sh runs)
    with serve_app(data, script="serve.py", PYTHONPATH=str(REPO)) as url:
        yield url, workspace


@pytest.fixture(scope="module")
def served(tmp_path_factory, workspace_cache):
    yield from _serve(tmp_path_factory, workspace_cache, with_account=True)


def _sign_in(page) -> None:
    page.get_by_role("heading", name="cadx — sign in").wait_for()
    page.get_by_role("textbox", name="User name").fill("rex")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").wait_for()
    wait_for_app(page)


def _session_cookie(page) -> dict | None:
    for _ in range(50):  # the browser trades the one-time code for the cookie right after signing in
        cookies = [c for c in page.context.cookies() if c["name"] == "cadx_session"]
        if cookies:
            return cookies[0]
        page.wait_for_timeout(100)
    return None


def test_a_refresh_keeps_the_sign_in_and_disabling_the_account_ends_it(served, page):
    url, workspace = served
    page.goto(url)
    wait_for_app(page)
    _sign_in(page)
    cookie = _session_cookie(page)
    assert cookie is not None, "no session cookie was set"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert "cadx_session" not in page.evaluate("document.cookie")  # out of reach of page scripts

    page.reload()  # before: F5 showed the sign-in form again
    wait_for_app(page)
    page.get_by_text("Signed in as").wait_for()
    page.goto(url + "/review")  # a bookmark
    wait_for_app(page)
    page.get_by_role("heading", name="Review ROIs").wait_for()
    screenshot(page, "session-kept-after-refresh")

    set_disabled(workspace, "rex", True, by="admin")  # as `cadx user disable rex` does
    page.reload()
    wait_for_app(page)
    page.get_by_role("heading", name="cadx — sign in").wait_for()
    assert page.get_by_text("Signed in as").count() == 0
    set_disabled(workspace, "rex", False, by="admin")


def test_signing_out_ends_the_session_for_good(served, page):
    url, _ = served
    page.goto(url)
    wait_for_app(page)
    _sign_in(page)
    assert _session_cookie(page) is not None
    page.locator("[data-testid='stSidebar']").get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="cadx — sign in").wait_for()
    page.reload()
    wait_for_app(page)
    page.get_by_role("heading", name="cadx — sign in").wait_for()


def test_the_local_demo_on_loopback_needs_no_sign_in(tmp_path_factory, workspace_cache, page):
    """`bash scripts/app.sh` (serve.py on localhost, no account): the app opens at once, as before."""
    for url, _ in _serve(tmp_path_factory, workspace_cache, with_account=False):
        page.goto(url)
        wait_for_app(page)
        page.get_by_role("heading", name="cadx — lesion database").wait_for()
        page.locator("[data-testid='stSidebar']").get_by_text("Reviewer name").wait_for()
        assert page.get_by_role("heading", name="cadx — sign in").count() == 0
