"""The app as a reviewer meets it, in Chromium: the first visit (a progress bar, never Streamlit's list of the
pages/ files), the sign-in screen and a deep link through it, a viewer's disabled actions, keyboard review,
marking a lesion centre on a zoomed view to within half a source pixel, and full-page screenshots of every page at
1440 × 900 and 1024 × 768 (test-artifacts/)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from cadx.workflows import import_demo, open_workspace
from cadx.workflows.accounts import add_user
from db.models import ReviewEvent, Roi
from tests.dicom_factory import disk_image, write_mammogram
from tests.e2e.conftest import choose, full_screenshot, serve_app, wait_for_app, wait_until_drawn

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough secret"
LEGACY_NAV = "[data-testid='stSidebarNav']"  # Streamlit's own sidebar navigation (the pages/ file list)
PAGES = ["Overview", "Upload case", "Review ROIs", "Layer sweep", "ROC curves", "Predictions", "Experiments"]


def _no_file_list(page) -> None:
    assert page.locator(LEGACY_NAV).count() == 0, "Streamlit's own page list is showing"
    sidebar = page.locator("[data-testid='stSidebar']")
    for name in ("app", "shared", "_shared"):
        assert sidebar.get_by_text(name, exact=True).count() == 0, f"the file name {name!r} shows in the sidebar"


def _menu(page, title: str):
    return page.locator("[data-testid='stSidebar'] [data-testid='stPageLink']").get_by_text(title, exact=True)


def _goto(page, url: str, title: str) -> None:
    """Straight to a page by its link (a first request of a fresh server too: see test_navigation.py), without
    drawing Overview first, whose backbone check is slow on a loaded machine."""
    page.set_default_timeout(180_000)
    page.goto(url + "/" + {"Upload case": "upload", "Review ROIs": "review"}[title])
    page.get_by_role("heading", name=title).first.wait_for()
    wait_for_app(page)


def _sign_in(page, username: str) -> None:
    page.get_by_role("textbox", name="User name").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


# --------------------------------------------------------------------------------------------- first visit ---
def test_first_visit_shows_a_progress_bar_and_never_the_file_list(tmp_path, browser):
    data = tmp_path / "data"  # empty: the app creates the demo data on the first visit
    with serve_app(data, CADX_DEMO_LESIONS="20") as url:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.set_default_timeout(180_000)
        try:
            page.goto(url)
            bar = page.locator("[data-testid='stProgress']")
            bar.wait_for()
            expect(page.get_by_text(re.compile(r"creating synthetic lesion \d+ of 20"))).to_be_visible()
            _no_file_list(page)
            full_screenshot(page, "first-visit-progress-1440x900")
            page.get_by_role("heading", name="cadx — lesion database").wait_for()
            wait_for_app(page)
            _no_file_list(page)
            for title in PAGES:  # the app's own menu is there instead
                expect(_menu(page, title)).to_be_visible()
            assert page.locator("[data-testid='stAppDeployButton']").count() == 0  # toolbarMode = "minimal"
            full_screenshot(page, "first-visit-overview-1440x900")
        finally:
            context.close()


# ------------------------------------------------------------------------------------- sign-in and roles ---
@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-accounts") / "data", import_demo,
                                             n_lesions=4, seed=3)
    ws = open_workspace(data)
    add_user(ws, "vera", PASSWORD, role="viewer", by="setup")
    add_user(ws, "rex", PASSWORD, role="reviewer", by="setup")
    ws.engine.dispose()
    with serve_app(data) as url:
        yield url, data


def test_a_deep_link_survives_the_sign_in_screen_which_shows_no_file_list(accounts_server, page):
    url, _data = accounts_server
    page.set_default_timeout(180_000)
    page.goto(url + "/upload")  # the first request of a fresh server, and nobody is signed in
    wait_for_app(page)
    page.get_by_role("heading", name="cadx — sign in").wait_for()
    _no_file_list(page)
    assert page.locator("[data-testid='stSidebar'] [data-testid='stPageLink']").count() == 0
    full_screenshot(page, "sign-in-1440x900")
    _sign_in(page, "rex")
    page.get_by_role("heading", name="Upload case").wait_for()  # where the link asked to go, not Overview
    wait_for_app(page)
    assert page.url.rstrip("/").endswith("/upload")
    _no_file_list(page)


def test_a_viewer_sees_the_review_actions_disabled_with_the_reason(accounts_server, page):
    url, _data = accounts_server
    page.set_default_timeout(180_000)
    page.goto(url + "/review")
    wait_for_app(page)
    _sign_in(page, "vera")
    page.get_by_role("heading", name="Review ROIs").wait_for()
    wait_for_app(page)
    page.get_by_text("can look at ROIs but not flag them").first.wait_for()
    assert page.get_by_text("set your name").count() == 0  # signed in: there is no name field to point at
    page.get_by_role("button", name="j ▶").click()
    page.get_by_role("heading", name="ROI #1").wait_for()
    wait_for_app(page)
    for name in ("Flag (f)", "Unflag (u)", "Flag selected", "Unflag selected"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_disabled()
    page.keyboard.press("f")  # the shortcut does nothing either
    wait_for_app(page)
    assert page.locator("[data-testid='stAlertContentError']").count() == 0
    full_screenshot(page, "review-viewer-1440x900")


# -------------------------------------------------------------------------------------------- keyboard ---
def _state(data, roi_id: int):
    ws = open_workspace(data)
    try:
        with ws.sessions() as session:
            roi = session.get(Roi, roi_id)
            events = session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id == roi_id)
                                     .order_by(ReviewEvent.id)).all()
            return roi.included, roi.exclusion_reason, [(e.action, e.reason) for e in events]
    finally:
        ws.engine.dispose()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-ui") / "data", import_demo, n_lesions=12,
                                             seed=2)
    with serve_app(data) as url:
        yield url, data


def _key(page, key: str) -> None:
    page.wait_for_function("() => window.__cadxReviewKeysInstalled === true")  # the page's key handler is there
    button = {"j": "review_next", "k": "review_prev", "f": "review_flag", "u": "review_unflag",
              "x": "review_toggle"}[key]
    page.wait_for_selector(f".st-key-{button} button")  # drawn (not a placeholder still)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # focus off any field
    page.keyboard.press(key)
    page.wait_for_timeout(300)
    wait_for_app(page)


def test_keyboard_review(demo_server, page):
    url, data = demo_server
    _goto(page, url, "Review ROIs")
    _key(page, "j")
    page.get_by_role("heading", name="ROI #1").wait_for()
    choose(page, page.get_by_role("combobox", name="Artifact", exact=True),
            page.get_by_role("option", name="location marker", exact=True))
    wait_for_app(page)
    _key(page, "f")  # flag #1 with the reason shown
    page.get_by_text("ROI #1 flagged: location marker").wait_for()
    assert _state(data, 1)[:2] == (False, "location_marker")
    _key(page, "j")
    page.get_by_role("heading", name="ROI #2").wait_for()
    _key(page, "f")  # the last reason is kept
    page.get_by_text("ROI #2 flagged: location marker").wait_for()
    assert _state(data, 2)[:2] == (False, "location_marker")
    _key(page, "k")
    page.get_by_role("heading", name="ROI #1").wait_for()
    _key(page, "u")
    page.get_by_text("ROI #1 included again").wait_for()
    assert _state(data, 1) == (True, None, [("exclude", "location_marker"), ("include", None)])
    _key(page, "x")  # select the current ROI
    page.get_by_text("1 selected").wait_for()
    # typing a note is not a shortcut
    note = page.get_by_role("textbox", name="Note", exact=True)
    note.fill("fuzzy")
    note.press("f")
    wait_for_app(page)
    assert _state(data, 1)[:2] == (True, None)
    # words, not codes: the flagged ROI #2 says "location marker" in the grid, the code only in a tooltip
    grid = page.locator(".st-key-review_grid")
    expect(grid.get_by_text("location marker").first).to_be_visible()
    assert grid.get_by_text("location_marker").count() == 0
    full_screenshot(page, "review-keyboard-1440x900")


# --------------------------------------------------------------------------------------- zoomed marking ---
SHAPE = (1200, 900)
TARGET_RC = (610.0, 430.0)  # the lesion's centre pixel, near the image centre so that a zoomed view holds it


def test_mark_the_centre_on_a_zoomed_view_to_half_a_source_pixel(demo_server, page, tmp_path):
    url, _data = demo_server
    dicom = write_mammogram(tmp_path / "zoom.dcm", disk_image(SHAPE, TARGET_RC, 25), pixel_spacing=(0.1, 0.1),
                            extra={"WindowCenter": ["2048", "2000"], "WindowWidth": ["4096", "1000"]})
    _goto(page, url, "Upload case")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(dicom))
    page.get_by_text("zoom.dcm: DICOM, 1200 × 900 pixels").wait_for()
    wait_for_app(page)
    page.get_by_text("4×", exact=True).click()  # the zoom control
    wait_for_app(page)
    caption = page.get_by_text(re.compile(r"Showing rows \d+–\d+ and columns \d+–\d+ of 900 × 1200, magnified 4×"))
    caption.wait_for()
    r0, r1, c0, c1 = map(int, re.search(r"rows (\d+)–(\d+) and columns (\d+)–(\d+)", caption.inner_text()).groups())
    assert r0 <= TARGET_RC[0] <= r1 and c0 <= TARGET_RC[1] <= c1
    frame = page.frame_locator("iframe[title*='streamlit_image_coordinates']")
    image = frame.locator("#image")
    image.wait_for()
    page.wait_for_timeout(500)
    width, height = image.evaluate("e => [e.width, e.height]")
    # source pixel (r, c) spans display [(c - c0) * sx, (c - c0 + 1) * sx): click the middle of the target pixel
    sx, sy = width / (c1 - c0 + 1), height / (r1 - r0 + 1)
    assert sx >= 2 and sy >= 2  # magnified: one source pixel is several screen pixels
    image.click(position={"x": (TARGET_RC[1] - c0 + 0.5) * sx, "y": (TARGET_RC[0] - r0 + 0.5) * sy})
    page.get_by_text(re.compile(r"centred at row")).wait_for()
    wait_for_app(page)
    row = float(page.get_by_role("spinbutton", name="Row (pixels from the top)").input_value())
    col = float(page.get_by_role("spinbutton", name="Column (pixels from the left)").input_value())
    assert abs(row - TARGET_RC[0]) <= 0.5 and abs(col - TARGET_RC[1]) <= 0.5, (row, col)
    # window / level: the file's second window is offered as a preset
    choose(page, page.get_by_role("combobox", name="Window / level"),
            page.get_by_role("option", name=re.compile(r"DICOM window 2 \(centre 2000, width 1000\)")))
    wait_for_app(page)
    full_screenshot(page, "upload-zoomed-1440x900")


# ----------------------------------------------------------------------------------------- screenshots ---
@pytest.fixture(scope="module")
def experiment_server(tmp_path_factory, workspace_cache):
    """Demo data and one small experiment (random AlexNet weights, fc7 and fc8), so every page has content."""
    from tests.workspace_cache import SMALL_SWEEP, demo_experiment

    data, _experiment_id = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-shots") / "data", demo_experiment,
                                                    **SMALL_SWEEP)
    with serve_app(data) as url:
        yield url, data


# [scrollWidth, clientWidth] of each data frame's scroller on the page
_TABLE_WIDTHS = """() => Array.from(document.querySelectorAll('[data-testid=stDataFrame] .dvn-scroller'))
    .map(s => [s.scrollWidth, s.clientWidth])"""
# every review grid cell has its tick box and open button (the grid is a fragment: its cells arrive after the page)
_GRID_DRAWN = """() => {
    const rows = [...document.querySelectorAll('.st-key-review_grid [class*="st-key-review_row_"]')];
    return rows.length > 0 && rows.every(row => row.querySelector('[data-testid=stCheckbox]') && row.querySelector('button'));
}"""
# per review grid cell: [its text, vertical offset between tick box and open button, how far the label's widest word
# sticks out of the cell (px; a word cut off or broken inside: "malignan")]
_GRID_CELLS = """() => Array.from(document.querySelectorAll('.st-key-review_grid [class*="st-key-review_row_"]')).map(row => {
    const box = row.querySelector('[data-testid=stCheckbox]').getBoundingClientRect();
    const button = row.querySelector('button').getBoundingClientRect();
    const label = row.parentElement.closest('[data-testid=stVerticalBlock]')
        .querySelector('[data-testid=stCaptionContainer] p');
    return [row.innerText, Math.abs((box.top + box.height / 2) - (button.top + button.height / 2)),
            label.scrollWidth - label.clientWidth];
})"""


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1440, 900), (1024, 768)], ids=["1440x900", "1024x768"])
def test_screenshots_of_every_page(experiment_server, browser, size):
    url, _data = experiment_server
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(url)
        wait_for_app(page)
        for title in PAGES:
            _menu(page, title).click()
            heading = "cadx — lesion database" if title == "Overview" else title
            page.get_by_role("heading", name=heading).first.wait_for()
            wait_for_app(page)
            wait_until_drawn(page)
            _no_file_list(page)
            assert page.locator("[data-testid='stException']").count() == 0, title
            shot = full_screenshot(page, f"page-{title.lower().replace(' ', '-')}-{size[0]}x{size[1]}")
            assert shot.stat().st_size > 10_000
            if title == "ROC curves" and size[0] >= 1440:  # Table 1 and the tests fit: no column off to the right
                widths = page.evaluate(_TABLE_WIDTHS)
                assert len(widths) >= 2 and all(scroll <= client + 1 for scroll, client in widths), widths
            if title == "Review ROIs":
                page.wait_for_function(_GRID_DRAWN)
                cells = page.evaluate(_GRID_CELLS)
                assert cells, "no grid cell measured"
                for text, row_gap, overflow in cells:
                    assert row_gap < 8, f"{text}: the open button wrapped below the tick box ({row_gap:.0f} px)"
                    assert overflow <= 1, f"{text}: a word of the label is cut off ({overflow:.0f} px too wide)"
    finally:
        context.close()
