"""In a real browser: start a small layer sweep from the Layer sweep page (random AlexNet weights, two taps), let
the background worker that the page starts run it, then read the sweep chart, the ROC curves and the predictions;
a screenshot of every page of the app goes to test-artifacts/."""

from __future__ import annotations

import os
import re
import signal

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from tests.e2e.conftest import full_screenshot, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB_TIMEOUT_MS = 420_000


@pytest.fixture(scope="module")
def server(app_server):
    """The app server; afterwards stops the background worker that the page started (its pid is in the data
    directory), so no worker outlives the test."""
    yield app_server
    _url, data = app_server
    for pid_file in [data / "worker.pid", *data.glob("worker-*.pid")]:  # "PID start-time", one per run slot
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


def _open(page, url: str) -> None:
    page.goto(url)
    wait_for_app(page)


def test_start_a_sweep_and_read_its_results(server, page):
    url, data = server

    # the main page first: a fresh Streamlit server with a pages/ folder serves a deep link in its legacy
    # multipage mode until app.py has called st.navigation once
    _open(page, url)
    page.get_by_text("No experiment yet").wait_for()
    full_screenshot(page, "experiments-ui-00-overview-empty")

    _open(page, f"{url}/sweep")
    page.get_by_text("No sweep yet").wait_for()
    full_screenshot(page, "experiments-ui-01-sweep-empty")

    # backbone: AlexNet (the paper's); weights: random (offline, fast); taps: fc8 only (+ fc6, the SVM1 tap)
    page.get_by_test_id("stSelectbox").filter(has_text="Backbone").click()
    page.get_by_role("option", name=re.compile(r"^alexnet")).click()
    wait_for_app(page)
    page.get_by_text("Random (untrained)", exact=True).click()
    wait_for_app(page)
    taps = page.get_by_role("combobox", name="Taps (in network order)")
    expect(taps).to_have_count(1)  # the tap list of the newly chosen backbone only
    taps.click()
    for _ in range(12):  # remove the eleven default taps
        page.keyboard.press("Backspace")
    page.keyboard.type("fc8")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    wait_for_app(page)
    # the cohort: the paper's protocol, shown with its counts and verdict before anything runs; its 5 folds are the
    # page's (one place for the folds) and refused on 20 lesions, in the page's words; 2 folds fit them
    page.get_by_test_id("stSelectbox").filter(has_text="Cohort (which ROIs").click()
    page.get_by_role("option", name=re.compile(r"^paper")).click()
    wait_for_app(page)
    folds = page.get_by_role("spinbutton", name="Folds (cross-validation by lesion)")
    expect(folds).to_have_value("5")
    refusal = page.get_by_test_id("stAlert").filter(has_text="cannot be used for this experiment")
    expect(refusal).to_contain_text("set “Folds (cross-validation by lesion)” to 2 or fewer")
    expect(refusal).not_to_contain_text("--folds")
    folds.fill("2")
    folds.press("Enter")
    wait_for_app(page)
    expect(page.get_by_text("Cohort paper sets 5 folds; this sweep uses 2 (chosen here)")).to_be_visible()
    page.get_by_text("20 (10 / 10)").first.wait_for()
    expect(page.get_by_text("cannot be used for this experiment")).to_have_count(0)
    name = page.get_by_label("Name", exact=True)
    expect(name).to_have_count(1)
    name.fill("e2e sweep")
    name.press("Enter")
    wait_for_app(page)
    full_screenshot(page, "experiments-ui-02-sweep-form")
    page.get_by_role("button", name="Start sweep").click()

    # the page queues a job and starts the worker; the progress panel polls it until the chart appears
    page.get_by_text(re.compile(r"Job \d+")).first.wait_for(timeout=60_000)
    try:  # the progress bar and its Cancel button, unless the job is already done
        page.get_by_role("button", name="Cancel").first.wait_for(timeout=20_000)
        wait_for_app(page)
    except PlaywrightTimeoutError:
        pass
    full_screenshot(page, "experiments-ui-03-sweep-running")
    page.get_by_text(re.compile(r"finished: experiment #\d+")).wait_for(timeout=JOB_TIMEOUT_MS)
    page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=60_000)
    wait_for_app(page)
    # expect() retries: the progress fragment may still be redrawing the page when the chart first appears
    body = page.locator("body")
    for text in ("AUC per tap", "e2e sweep", "RANDOM (UNTRAINED) CNN WEIGHTS", "SYNTHETIC DEMO DATA",
                 "fc6", "fc8"):  # fc6/fc8: the table of taps
        expect(body).to_contain_text(text)
    full_screenshot(page, "experiments-ui-04-sweep")

    _open(page, f"{url}/roc")
    page.get_by_text("Performance (Table 1)").wait_for()
    page.get_by_test_id("stPlotlyChart").first.wait_for()
    for text in ("Significance tests", "RANDOM (UNTRAINED) CNN WEIGHTS"):
        expect(page.locator("body")).to_contain_text(text)
    full_screenshot(page, "experiments-ui-05-roc")
    page.get_by_text("Lesion level (mean of its ROIs' probabilities)").click()
    wait_for_app(page)
    page.get_by_text(re.compile(r"20 lesions")).wait_for()
    full_screenshot(page, "experiments-ui-06-roc-lesion")

    _open(page, f"{url}/predictions")
    page.get_by_text("Open an ROI").wait_for()
    page.get_by_test_id("stImage").first.wait_for()
    for text in ("p1 SVM1 (CNN)", "Segmentation:"):
        expect(page.locator("body")).to_contain_text(text)
    full_screenshot(page, "experiments-ui-07-predictions")

    _open(page, f"{url}/experiments")
    page.get_by_text("Reproducibility").wait_for()
    page.get_by_text(re.compile(r"Yes, delete experiment #\d+ “e2e sweep”")).wait_for()
    full_screenshot(page, "experiments-ui-08-experiments")

    _open(page, url)
    page.get_by_text("Recent experiments").wait_for()
    page.get_by_text("All experiments").wait_for()  # shown once there is an experiment
    full_screenshot(page, "experiments-ui-09-overview")

    for name in ("upload", "review"):
        _open(page, f"{url}/{name}")
        full_screenshot(page, f"experiments-ui-10-{name}")
