"""The Streamlit app, page by page, with streamlit.testing's AppTest."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from cadx.workflows import import_demo, open_workspace
from tests.apptest_support import APP, APP_TIMEOUT, open_page, point_app_at


@pytest.fixture
def demo_data_dir(tmp_path, monkeypatch, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)
    return point_app_at(data, monkeypatch)


def _run(page: str | None = None) -> AppTest:
    return open_page(page)


def test_overview_shows_counts_and_says_synthetic(demo_data_dir):
    at = _run()
    assert at.title[0].value.startswith("cadx")
    assert "SYNTHETIC" in at.markdown[0].value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Lesions"] == "4"
    assert int(metrics["ROIs included"]) >= 8 and metrics["ROIs excluded"] == "0"


def test_a_database_from_a_newer_cadx_is_explained_not_a_stack_trace(tmp_path, monkeypatch):
    from sqlalchemy import text

    data = tmp_path / "data"
    workspace = open_workspace(data)
    with workspace.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    workspace.engine.dispose()
    point_app_at(data, monkeypatch)
    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert any("newer than this cadx knows" in e.value and "Fix:" in e.value for e in at.error)
