"""What the AppTest suites share: the app's path, pointing the app at a test's data directory, opening a page."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
# how long one run of a page may take before AppTest gives up: a limit for a loaded 2-core machine (the first run
# imports torch and the app), not a measurement
APP_TIMEOUT = 300


def point_app_at(data: Path, monkeypatch) -> Path:
    """Make the app under test open ``data``: the app caches one workspace (and query results) per process."""
    st.cache_resource.clear()
    st.cache_data.clear()
    monkeypatch.setenv("CADX_DATA_DIR", str(data))
    monkeypatch.delenv("CADX_DATABASE_URL", raising=False)
    return data


def open_page(page: str | None = None, *, timeout: int = APP_TIMEOUT) -> AppTest:
    """Run the app (app.py, as a browser would) and switch to ``page``; fails on any exception."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
