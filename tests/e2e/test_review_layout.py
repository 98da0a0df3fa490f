"""The Review page at the collaborator's two screen sizes (issue 25 item 6): the current ROI and its actions stay in
view while moving with j, *Open large* fits the viewport, no button label is cut at 1024 px, the filters survive a
reload, and the thumbnails name the lesion's source id and type. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from cadx.workflows import import_demo
from tests.e2e.conftest import choose, full_screenshot, screenshot, serve_app, wait_for_app, wait_until_drawn

pytestmark = pytest.mark.e2e

SIZES = [(1440, 900), (1024, 768)]


@pytest.fixture(scope="module")
def review_server(tmp_path_factory, workspace_cache):
    # 20 demo lesions: about 50 ROIs, as many as the collaborator reviewed (two grid pages of 24)
    data, _report = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-layout") / "data", import_demo,
                                             n_lesions=20, seed=2)
    with serve_app(data) as url:
        yield url, data


def _review(browser, url: str, size: tuple[int, int], query: str = ""):
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    page.set_default_timeout(180_000)
    expect.set_options(timeout=180_000)
    page.goto(url + "/review" + query)
    page.get_by_role("heading", name="Review ROIs").first.wait_for()
    wait_for_app(page)
    return context, page


def _key(page, key: str) -> None:
    page.wait_for_function("() => window.__cadxReviewKeysInstalled === true")  # the page's key handler is there
    button = {"j": "review_next", "f": "review_flag", "u": "review_unflag", "o": "review_enlarge"}[key]
    page.wait_for_selector(f".st-key-{button} button:not([disabled])")  # drawn, and enabled (the fragment's own run)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press(key)
    page.wait_for_timeout(300)
    wait_for_app(page)


# the viewport and the boxes of what must be seen: the current ROI's grid cell, its heading, image and flag button
_BOXES = """(id) => {
    const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
                       return [r.left, r.top, r.right, r.bottom]; };
    const cell = document.querySelector(`.st-key-review_open_${id} button`);
    const detail = document.querySelector('.st-key-review_detail');
    const header = document.querySelector('[data-testid="stHeader"]');
    return {viewport: [window.innerWidth, window.innerHeight],
            header: header ? header.getBoundingClientRect().bottom : 0,
            cell: box(cell && cell.closest('[data-testid="stVerticalBlock"]')),
            heading: box([...detail.querySelectorAll('h3')].find(h => h.innerText.includes(`ROI #${id}`))),
            image: box(detail.querySelector('.st-key-review_detail_image img')),
            flag: box(detail.querySelector('.st-key-review_flag button')),
            unflag: box(detail.querySelector('.st-key-review_unflag button'))};
}"""

# every button in the detail column whose label does not fit inside it (text wider than the button, or the button
# sticking out of the column)
_CUT_BUTTONS = """() => {
    const detail = document.querySelector('.st-key-review_detail');
    const edge = detail.getBoundingClientRect();
    return [...detail.querySelectorAll('button')].filter(b => b.checkVisibility()).map(b => {
        const r = b.getBoundingClientRect(), p = b.querySelector('p') || b;
        return [b.innerText, p.scrollWidth > p.clientWidth + 1 || r.right > edge.right + 1 || r.left < edge.left - 1];
    }).filter(([, cut]) => cut).map(([text]) => text);
}"""


def _inside(box, viewport, header: float = 0) -> bool:
    """The box lies inside the viewport, below the app's header (which covers the top of the page)."""
    left, top, right, bottom = box
    return left >= 0 and top >= header - 0.5 and right <= viewport[0] + 0.5 and bottom <= viewport[1] + 0.5


def _boxes_once_placed(page, roi_id: int, whats: tuple[str, ...]) -> dict:
    """The boxes of ``whats`` once the page has placed them inside the viewport (the page scrolls after its rerun has
    drawn: a state to wait for, not a delay), or as they are after 30 s, for the assertion to show."""
    deadline = time.monotonic() + 30
    while True:
        boxes = page.evaluate(_BOXES, roi_id)
        placed = all(boxes[w] is not None and _inside(boxes[w], boxes["viewport"], boxes["header"]) for w in whats)
        if placed or time.monotonic() > deadline:
            return boxes
        page.wait_for_timeout(100)


@pytest.mark.parametrize("size", SIZES, ids=["1440x900", "1024x768"])
def test_the_current_roi_and_its_actions_stay_in_view_while_pressing_j(review_server, browser, size):
    url, _data = review_server
    context, page = _review(browser, url, size)
    try:
        # 24 per page: the 13 presses below cross to the second grid page (a fragment rerun that turns the page)
        choose(page, page.get_by_role("combobox", name="ROIs per page"),
               page.get_by_role("option", name="24", exact=True))
        for n in range(1, 14):
            _key(page, "j")
            page.locator(".st-key-review_detail").get_by_role("heading", name=f"ROI #{n}").wait_for()
            wait_for_app(page)
            wait_until_drawn(page)
            boxes = _boxes_once_placed(page, n, ("cell", "heading", "image", "flag", "unflag"))
            for what in ("cell", "heading", "image", "flag", "unflag"):
                assert boxes[what] is not None, f"after {n} j: no {what}"
                assert _inside(boxes[what], boxes["viewport"], boxes["header"]), (f"after {n} j the current ROI's {what} is out of "
                                                                 f"the {size} viewport: {boxes}")
            if n == 5:  # the "after a few j presses"
                screenshot(page, f"review-current-roi-after-5-j-{size[0]}x{size[1]}")
        assert page.evaluate(_CUT_BUTTONS) == [], f"cut button labels at {size}"
        for key, done in (("f", "ROI #13 flagged: compression paddle"), ("u", "ROI #13 included again")):
            _key(page, key)  # flag the one in view with the reason shown, then unflag it (the next size starts over)
            page.get_by_text(done).wait_for()
            wait_for_app(page)
            boxes = _boxes_once_placed(page, 13, ("cell", "heading", "flag", "unflag"))
            for what in ("cell", "heading", "flag", "unflag"):
                assert _inside(boxes[what], boxes["viewport"], boxes["header"]), (key, what, boxes)
            assert page.evaluate(_CUT_BUTTONS) == [], f"cut button labels at {size}"
        # the history is lines that wrap: nothing cut off
        history = page.locator(".st-key-review_history")
        expect(history.get_by_text(re.compile(r"flagged: compression paddle")).last).to_be_visible()
        expect(history.get_by_text(re.compile(r"included again")).last).to_be_visible()
        assert history.evaluate("h => [...h.querySelectorAll('p')].every(p => p.scrollWidth <= p.clientWidth + 1)")
    finally:
        context.close()


@pytest.mark.parametrize("size", SIZES, ids=["1440x900", "1024x768"])
def test_open_large_fits_the_viewport(review_server, browser, size):
    url, _data = review_server
    context, page = _review(browser, url, size)
    try:
        _key(page, "j")
        page.locator(".st-key-review_detail").get_by_role("heading", name="ROI #1").wait_for()
        _key(page, "o")
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        wait_for_app(page)
        wait_until_drawn(page)
        image = dialog.locator("[data-testid='stImage'] img")
        expect(image).to_be_visible()
        viewport = page.viewport_size
        for what, box in (("dialog", dialog.bounding_box()), ("image", image.bounding_box())):
            assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] + 0.5, (what, box, viewport)
            assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5, (what, box, viewport)
        assert image.bounding_box()["height"] >= 250  # still large
        screenshot(page, f"review-open-large-{size[0]}x{size[1]}")
    finally:
        context.close()


def test_filters_survive_a_reload_and_thumbnails_name_source_and_type(review_server, browser):
    url, _data = review_server
    context, page = _review(browser, url, (1440, 900))
    try:
        choose(page, page.get_by_role("combobox", name="Label"), page.get_by_role("option", name="malignant"))
        page.keyboard.press("Escape")  # a multiselect's list stays open (and hides the rest of the page)
        wait_for_app(page)
        choose(page, page.get_by_role("combobox", name="Data", exact=True),
               page.get_by_role("option", name="synthetic only"))
        lesion = page.get_by_role("textbox", name="Lesion key contains")
        lesion.fill("demo-L000")
        lesion.press("Enter")
        wait_for_app(page)
        expect(page).to_have_url(re.compile(r"label=malignant"))
        matching = page.get_by_test_id("stMetric").filter(has_text="Matching the filters")
        shown = matching.get_by_test_id("stMetricValue").inner_text()
        page.reload()
        page.get_by_role("heading", name="Review ROIs").first.wait_for()
        wait_for_app(page)
        expect(page.get_by_role("combobox", name="Data", exact=True)).to_have_value("synthetic only")
        expect(page.locator("[data-testid='stMultiSelect']").filter(has_text="Label")
               .get_by_text("malignant")).to_be_visible()
        expect(page.get_by_role("textbox", name="Lesion key contains")).to_have_value("demo-L000")
        expect(matching.get_by_test_id("stMetricValue")).to_have_text(shown)
        # each thumbnail: the lesion key (the source's own id), label and lesion type, view and side
        captions = page.locator(".st-key-review_grid [data-testid='stCaptionContainer']")
        expect(captions.first).to_be_visible()
        first = captions.first.inner_text()
        assert re.match(r"demo-L000\d\s+malignant mass\s+(CC|MLO) [LR]", first), first
        full_screenshot(page, "review-filters-after-reload-1440x900")
    finally:
        context.close()
