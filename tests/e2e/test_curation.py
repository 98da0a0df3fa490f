"""The curation pages in a real browser: upload a DICOM and mark its lesion centre with a click, flag and unflag an
ROI, and two reviewers flagging the same ROI at once. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from cadx.workflows import display_to_image_rc, open_workspace
from db.models import Lesion, ReviewEvent, Roi
from tests.dicom_factory import disk_image, write_mammogram
from tests.e2e.conftest import screenshot, wait_for_app

pytestmark = pytest.mark.e2e

SHAPE = (1200, 900)  # shown at 800 x 600: one display pixel is 1.5 image pixels
LESION_RC = (700.0, 300.0)


def _goto(page, url: str, title: str) -> None:
    # From the app's root, then through the sidebar navigation: a fresh server learns the st.navigation routes on
    # the first run of app.py (a first request straight to /review would get Streamlit's pages/ folder routing).
    page.goto(url)
    wait_for_app(page)
    page.get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title).wait_for()
    wait_for_app(page)


def _set_reviewer(page, name: str) -> None:
    field = page.get_by_role("textbox", name="Reviewer name")
    field.fill(name)
    field.press("Enter")
    wait_for_app(page)


def _choose(page, label: str, option: str) -> None:
    combobox = page.get_by_role("combobox", name=label, exact=True)
    if combobox.input_value() == option:
        return
    combobox.click()
    combobox.fill(option)  # the list opens filtered to the typed text
    page.get_by_role("option", name=option, exact=True).click()
    wait_for_app(page)


def _open_roi(page, roi_id: int) -> None:
    field = page.get_by_role("spinbutton", name="Open ROI number")
    field.fill(str(roi_id))
    field.press("Enter")
    page.get_by_role("heading", name=f"ROI #{roi_id}").wait_for()
    wait_for_app(page)


def _events(data, roi_id):
    ws = open_workspace(data)
    try:
        with ws.sessions() as session:
            roi = session.get(Roi, roi_id)
            events = session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id == roi_id)
                                     .order_by(ReviewEvent.id)).all()
            return roi.included, roi.exclusion_reason, [(e.user, e.action, e.reason) for e in events]
    finally:
        ws.engine.dispose()


def test_upload_dicom_and_click_the_lesion_centre(app_server, page, tmp_path):
    url, data = app_server
    dicom = write_mammogram(tmp_path / "study-1.dcm", disk_image(SHAPE, LESION_RC, 60), pixel_spacing=(0.1, 0.1))
    _goto(page, url, "Upload case")
    _set_reviewer(page, "E2E Uploader")
    page.get_by_text("de-identified on ingest").wait_for()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(dicom))
    chip = page.get_by_test_id("stFileChip").filter(has_text="study-1.dcm")
    chip.wait_for()
    expect(chip.get_by_test_id("stFileChipIconSpinner")).to_have_count(0)  # the upload has finished ...
    assert chip.get_by_test_id("stFileChipIconError").count() == 0, chip.inner_text()  # ... and was accepted
    wait_for_app(page)
    page.get_by_text("study-1.dcm: DICOM, 1200 × 900 pixels").wait_for()
    frame = page.frame_locator("iframe[title*='streamlit_image_coordinates']")
    image = frame.locator("#image")
    image.wait_for()
    page.wait_for_timeout(500)  # the component sizes its image once loaded
    width, height = image.evaluate("e => [e.width, e.height]")
    assert (width, height) == (600, 800)
    # Click on the lesion: its centre in display pixels.
    x = round((LESION_RC[1] + 0.5) * width / SHAPE[1] - 0.5)
    y = round((LESION_RC[0] + 0.5) * height / SHAPE[0] - 0.5)
    image.click(position={"x": x, "y": y})
    expected = display_to_image_rc(x, y, display_size=(width, height), image_shape=SHAPE)
    page.get_by_text(re.compile(r"centred at row")).wait_for()
    wait_for_app(page)

    lesion_key = page.get_by_role("textbox", name="New lesion key")
    lesion_key.fill("E2E-L1")
    lesion_key.press("Enter")
    wait_for_app(page)
    page.locator("[data-testid='stRadio']").get_by_text("malignant").click()
    wait_for_app(page)
    screenshot(page, "upload-page")
    page.get_by_role("button", name="Save ROI").click()
    page.get_by_text(re.compile(r"as ROI #\d+")).wait_for()
    wait_for_app(page)
    screenshot(page, "upload-saved")

    ws = open_workspace(data)
    try:
        with ws.sessions() as session:
            roi = session.scalars(select(Roi).join(Lesion).where(Lesion.key == "E2E-L1")).one()
            centre = (roi.centre_row, roi.centre_col)
            assert roi.lesion.label == "malignant" and roi.image.source_format == "dicom"
            assert roi.centre_source == "marked in the browser"
    finally:
        ws.engine.dispose()
    # Where the click was, within the rounding of the browser's click position (one display pixel = 1.5 px) ...
    assert abs(centre[0] - expected[0]) <= 1.5 and abs(centre[1] - expected[1]) <= 1.5, (centre, expected)
    # ... and on the lesion that was drawn there.
    assert abs(centre[0] - LESION_RC[0]) <= 2 and abs(centre[1] - LESION_RC[1]) <= 2, centre


def test_flag_and_unflag_an_roi(app_server, page):
    url, data = app_server
    _goto(page, url, "Review ROIs")
    _set_reviewer(page, "E2E Reviewer")
    page.get_by_text("SYNTHETIC DEMO DATA").first.wait_for()
    _open_roi(page, 3)
    _choose(page, "Artifact", "location marker")
    page.get_by_role("button", name="Flag (f)").click()
    page.get_by_text("ROI #3 flagged: location marker (by E2E Reviewer)").wait_for()
    wait_for_app(page)
    screenshot(page, "review-page")
    included, reason, events = _events(data, 3)
    assert (included, reason) == (False, "location_marker")
    assert events == [("E2E Reviewer", "exclude", "location_marker")]

    page.get_by_role("button", name="Unflag (u)").click()
    page.get_by_text("ROI #3 included again (by E2E Reviewer)").wait_for()
    wait_for_app(page)
    included, reason, events = _events(data, 3)
    assert (included, reason) == (True, None)
    assert [e[1] for e in events] == ["exclude", "include"]


def test_two_reviewers_flag_the_same_roi_at_once(app_server, browser):
    url, data = app_server
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    try:
        pages = [context.new_page() for context in contexts]
        for page, name, reason in zip(pages, ["Reviewer A", "Reviewer B"], ["compression paddle", "location marker"]):
            page.set_default_timeout(60_000)
            _goto(page, url, "Review ROIs")
            _set_reviewer(page, name)
            _open_roi(page, 5)
            _choose(page, "Artifact", reason)
        buttons = [page.get_by_role("button", name="Flag (f)") for page in pages]
        for button in buttons:
            button.wait_for()
        for button in buttons:  # both clicks go out before either page has redrawn
            button.click(no_wait_after=True)
        for page, name in zip(pages, ["Reviewer A", "Reviewer B"]):
            page.get_by_text("ROI #5 flagged:").wait_for()
            page.get_by_text(f"(by {name}).").wait_for()
            wait_for_app(page)
        screenshot(pages[1], "review-two-reviewers")
    finally:
        for context in contexts:
            context.close()
    included, reason, events = _events(data, 5)
    assert sorted(e[0] for e in events) == ["Reviewer A", "Reviewer B"]
    assert all(e[1] == "exclude" for e in events)
    assert not included and reason == events[-1][2]
