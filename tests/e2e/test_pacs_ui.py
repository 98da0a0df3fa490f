"""Issue 27 in Chromium: Upload case's *From PACS* against the real Orthanc (scripts/services.sh), and Method B's
Dice against the expert's outline shown beside it in Review (the real mini-DDSM cases)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cadx.workflows import import_ddsm, import_demo
from cadx.workflows.features import compute_analytic_features, segmentation_score_words
from tests.dicom_factory import disk_image, write_mammogram
from tests.e2e.conftest import choose, full_screenshot, serve_app, wait_for_app
from tests.test_import_dicomweb import READER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory, workspace_cache, orthanc):
    """The app over 4 demo lesions, its From PACS set to the real Orthanc (as whoever runs cadx sets it)."""
    data, _ = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-pacs") / "data", import_demo, n_lesions=4,
                                       seed=3)
    with serve_app(data, CADX_PACS_URL=f"{orthanc}/dicom-web", CADX_DICOMWEB_USER=READER.user,
                   CADX_DICOMWEB_PASSWORD=READER.password) as url:
        yield url, data


def test_from_pacs_finds_the_mammography_series_and_fetches_it_into_the_upload(pacs_server, pacs, page, tmp_path):
    url, _data = pacs_server
    patient = "PACS-E2E-" + tmp_path.name[-12:]
    pacs.upload(write_mammogram(tmp_path / "mg.dcm", disk_image((700, 500), (350, 250), 40),
                                extra={"PatientID": patient}))
    pacs.upload(write_mammogram(tmp_path / "ct.dcm", disk_image((300, 300), (150, 150), 20),
                                extra={"PatientID": patient, "Modality": "CT"}))
    page.set_default_timeout(180_000)
    page.goto(url + "/upload")
    page.get_by_role("heading", name="Upload case").first.wait_for()
    wait_for_app(page)
    page.get_by_text("From PACS", exact=True).click()
    wait_for_app(page)
    box = page.get_by_role("textbox", name="Patient ID on the PACS")
    box.fill(patient)
    box.press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Search the PACS").click()
    page.get_by_text("2 series found: 1 mammography (MG), 1 of other modalities (not offered).").wait_for()
    wait_for_app(page)
    choose(page, page.get_by_role("combobox", name="Series to fetch"),
           page.get_by_role("option", name=re.compile(r"^MG · study 20240301 · 1 image\(s\)")))
    page.keyboard.press("Escape")
    wait_for_app(page)
    page.get_by_role("button", name="Fetch into this upload").click()
    page.get_by_text(re.compile(r"PACS \S+ #1: DICOM, 700 × 500 pixels")).wait_for()
    wait_for_app(page)
    expect(page.get_by_text(re.compile(r"click the lesion centre"))).to_have_count(1)
    full_screenshot(page, "upload-from-pacs-1440x900")


def _mini_ddsm_segmented(workspace, folder: str) -> None:
    import_ddsm(workspace, folder, user="tester")
    compute_analytic_features(workspace)


def test_review_shows_the_dice_against_the_expert_outline(tmp_path_factory, workspace_cache, mini_ddsm_dir, page):
    from cadx.workflows import open_workspace

    data, _ = workspace_cache.data_dir(tmp_path_factory.mktemp("e2e-ddsm") / "data", _mini_ddsm_segmented,
                                       folder=str(mini_ddsm_dir))
    workspace = open_workspace(data)
    words = segmentation_score_words(workspace, 1)
    workspace.engine.dispose()
    assert words is not None and words.startswith("Method B against the expert outline: Dice ")
    with serve_app(data) as url:
        page.set_default_timeout(180_000)
        page.goto(url + "/review")
        page.get_by_role("heading", name="Review ROIs").first.wait_for()
        wait_for_app(page)
        page.locator(".st-key-review_open_1 button").first.click()
        wait_for_app(page)
        expect(page.locator(".st-key-review_detail").get_by_text(words, exact=True)).to_be_visible()
        # the ROI's DICOM downloads sit in the detail column: no dialog opens by itself over the page
        expect(page.locator(".st-key-review_detail").get_by_role("button", name="DICOM SR")).to_be_visible()
        expect(page.get_by_role("dialog")).to_have_count(0)
        full_screenshot(page, "review-ddsm-dice-1440x900")
