"""End-to-end fixtures: the real app served by Streamlit on loopback, driven by Debian's headless Chromium through
Playwright (never `playwright install`). Screenshots go to ``test-artifacts/``.

Without /usr/bin/chromium these tests skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cadx.workflows import import_demo

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CADX_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        reason = f"Chromium not found at {CHROMIUM}: apt-get install chromium (scripts/services.sh does it as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " - under CI=true the browser tests must run")
        pytest.skip(reason)
    return CHROMIUM


@contextlib.contextmanager
def serve_app(data: Path, *, script: str = "app.py", **env_vars: str):
    """The app served by Streamlit on a free loopback port over the data directory ``data`` (with extra environment
    variables); yields its base URL and stops it afterwards."""
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, CADX_DATA_DIR=str(data), **env_vars)
    env.pop("CADX_DATABASE_URL", None)
    if "CADX_AUTH" not in env_vars:
        env.pop("CADX_AUTH", None)  # the sign-in policy is the app's default unless a test sets it
    log = open(data / "streamlit.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / script), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError((data / "streamlit.log").read_text()) from None
                time.sleep(0.5)
        else:
            raise RuntimeError("the app did not start in 90 s: " + (data / "streamlit.log").read_text())
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, workspace_cache):
    """The app on a free loopback port over a small synthetic demo set; yields (base URL, data directory)."""
    # 20 lesions (10 benign, 10 malignant): the fewest a cohort needs for 2-fold cross-validation (5 of each class
    # per fold), so the browser tests can start a sweep. Each module gets its own copy (tests/workspace_cache.py).
    data, _report = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e") / "data", import_demo, n_lesions=20,
                                             seed=2)
    with serve_app(data) as url:
        yield url, data


@pytest.fixture(scope="session")
def browser(chromium_path):
    """One headless Chromium per test process (each test gets a fresh context: cookies and storage of its own)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"_cadx_report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, request):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(180_000)  # a limit for a loaded 2-core machine, not a measurement
    # expect()'s own default is 5 s, which a loaded machine overruns while a page is still redrawing; an assertion
    # that must hold keeps retrying until the same limit instead
    expect.set_options(timeout=180_000)
    yield page
    report = getattr(request.node, "_cadx_report_call", None)
    if report is not None and report.failed:
        _record_failure(request, page)
    context.close()


def _record_failure(request, page) -> None:
    """A failed browser test leaves what the browser showed and what the server said, for whoever reads the CI log."""
    name = re.sub(r"[^\w.-]", "_", request.node.name)
    try:
        shot = screenshot(page, f"FAILED-{name}")
        print(f"\nscreenshot of the page at failure: {shot} (URL {page.url})")
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not mask the failure itself
        print(f"\nno screenshot at failure: {exc}")
    if "app_server" in request.fixturenames:
        log = request.getfixturevalue("app_server")[1] / "streamlit.log"
        if log.exists():
            print(f"--- last lines of the app's log {log} ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot to test-artifacts/NAME.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def full_screenshot(page, name: str) -> Path:
    """A screenshot of the whole page: Streamlit scrolls inside its main container, so the viewport is first made
    as tall as that container's content (at the viewport's width), then put back."""
    size = dict(page.viewport_size)
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        "[data-testid='stMain'], [data-testid='stAppViewContainer'], [data-testid='stSidebarContent']")]
        .map(e => e.scrollHeight), document.body.scrollHeight)""")
    page.set_viewport_size({"width": size["width"], "height": min(max(int(height) + 40, size["height"]), 8000)})
    wait_until_drawn(page)
    try:
        return screenshot(page, name)
    finally:
        page.set_viewport_size(size)


# every shown image loaded, every shown plotly chart and data frame drawn (its SVG, its scroller); one inside a closed
# expander is never drawn
_DRAWN = """() => {
    const shown = selector => [...document.querySelectorAll(selector)].filter(e => e.checkVisibility());
    return shown("img").every(image => image.complete)
        && shown("[data-testid='stPlotlyChart']").every(chart => chart.querySelector(".main-svg"))
        && shown("[data-testid='stDataFrame']").every(frame => frame.querySelector(".dvn-scroller"));
}"""


def wait_until_drawn(page) -> None:
    """Wait until the page's images have loaded and its charts and tables are drawn, then for the paint after two
    animation frames: what a screenshot or a layout measurement needs, on a fast machine or a loaded one (a fixed
    sleep is too short on the one and wasted on the other)."""
    page.wait_for_function(_DRAWN)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def wait_for_app(page) -> None:
    """Wait until the browser is connected and Streamlit has finished running the page's script.

    Reads the script state that Streamlit's frontend puts on the app root (its own end-to-end tests wait on the same
    attributes): unlike the "Running..." status widget, which appears only after a delay, it says ``rerunRequested``
    from the moment a widget change is sent, so a wait right after a key press cannot slip through before the rerun.
    """
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']")
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
    page.wait_for_timeout(100)  # let the last delta batch paint


def choose(page, combobox, option) -> None:
    """Open a select box and pick an option; a rerun landing while it opens can close the list, so try again.

    The box is scrolled into view first: a click that has to scroll the page to reach it opens the list and the
    scroll closes it again (each such miss cost the 30 s wait below)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        wait_for_app(page)
        combobox.scroll_into_view_if_needed()
        combobox.click()
        try:
            option.click(timeout=30_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    wait_for_app(page)
