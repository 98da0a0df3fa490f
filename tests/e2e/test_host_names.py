"""DNS rebinding (issue 26, item 4): a web page under a foreign name that resolves to 127.0.0.1 must not reach the
no-sign-in local demo. Chromium maps the names to 127.0.0.1 itself (``--host-resolver-rules``), as a rebinding DNS
server would; the app runs as users run it, on loopback with no account."""

from __future__ import annotations

import pytest

from cadx.workflows import import_demo
from tests.e2e.conftest import CHROMIUM_ARGS, REPO, serve_app, wait_for_app

# what a page at the foreign origin's script can do: open Streamlit's WebSocket on the same host
_OPEN_WEBSOCKET = """() => new Promise(done => {
    const socket = new WebSocket(`ws://${location.host}/_stcore/stream`, ["streamlit"]);
    socket.onopen = () => { done("open"); socket.close(); };
    socket.onclose = () => done("closed");
})"""


@pytest.fixture(scope="module")
def rebinding_browser(browser, chromium_path):
    # A second Chromium from the session's own Playwright (tests/e2e/conftest.py: one per test process; a second
    # sync_playwright() in the same process fails, "Sync API inside the asyncio loop").
    rules = "--host-resolver-rules=MAP evil.example 127.0.0.1,MAP allowed.example 127.0.0.1"
    rebinding = browser.browser_type.launch(executable_path=str(chromium_path), args=[*CHROMIUM_ARGS, rules])
    yield rebinding
    rebinding.close()


@pytest.fixture
def rebinding_page(rebinding_browser):
    from playwright.sync_api import expect

    context = rebinding_browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(180_000)  # a limit for a loaded 2-core machine, not a measurement
    expect.set_options(timeout=180_000)
    yield page
    context.close()


def _demo_data(tmp_path_factory, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-hosts") / "data", import_demo,
                                             n_lesions=4, seed=3)
    return data


def test_serve_py_refuses_foreign_host_names_before_streamlit(tmp_path_factory, workspace_cache, rebinding_page):
    page = rebinding_page
    data = _demo_data(tmp_path_factory, workspace_cache)
    with serve_app(data, script="serve.py", PYTHONPATH=str(REPO), CADX_ALLOWED_HOSTS="allowed.example") as url:
        port = url.rsplit(":", 1)[1]
        response = page.goto(f"http://evil.example:{port}/")  # before: the app, as admin
        assert response is not None and response.status == 403
        body = page.locator("body").inner_text()
        assert "refuses the host name 'evil.example:" in body and "CADX_ALLOWED_HOSTS=evil.example" in body
        assert page.evaluate(_OPEN_WEBSOCKET) == "closed"  # nor can the page's script talk to Streamlit directly
        assert page.goto(f"http://evil.example:{port}/_stcore/health").status == 403

        page.goto(f"http://allowed.example:{port}/")  # a configured name (e.g. a reverse proxy on this machine)
        wait_for_app(page)
        page.get_by_role("heading", name="cadx — lesion database").wait_for()
        assert page.evaluate(_OPEN_WEBSOCKET) == "open"
        page.goto(url)  # and loopback, as before
        wait_for_app(page)
        page.get_by_role("heading", name="cadx — lesion database").wait_for()


def test_streamlit_run_app_py_refuses_foreign_host_names_before_any_page(tmp_path_factory, workspace_cache,
                                                                          rebinding_page):
    page = rebinding_page
    data = _demo_data(tmp_path_factory, workspace_cache)
    with serve_app(data, script="app.py") as url:
        port = url.rsplit(":", 1)[1]
        page.goto(f"http://evil.example:{port}/upload")
        wait_for_app(page)
        page.get_by_role("heading", name="cadx — host name refused").wait_for()
        assert "CADX_ALLOWED_HOSTS" in page.locator("[data-testid='stAlert']").inner_text()
        assert page.get_by_role("heading", name="cadx — lesion database").count() == 0
        assert page.get_by_role("heading", name="Upload case").count() == 0
        assert page.locator("[data-testid='stSidebar']").get_by_text("Reviewer name").count() == 0
