"""A direct link to a page on a freshly started server opens that page inside the app's navigation."""

from __future__ import annotations

from tests.e2e.conftest import screenshot, wait_for_app


def test_direct_link_on_a_fresh_server_opens_the_page_with_the_app_around_it(app_server, page):
    url, _data = app_server
    page.goto(url + "/review")  # the very first request this server sees
    wait_for_app(page)
    page.get_by_role("heading", name="Review ROIs").wait_for()
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Reviewer name").wait_for()  # drawn by app.py: the app's shell is there
    sidebar.get_by_text("Layer sweep").wait_for()  # and its navigation
    assert page.url.rstrip("/").endswith("/review")
    screenshot(page, "direct-link-review")
