"""The Streamlit app, page by page, with streamlit.testing's AppTest."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from cadx.workflows import import_demo, open_workspace
from tests.apptest_support import open_page, point_app_at


@pytest.fixture
def demo_data_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    import_demo(open_workspace(data), n_lesions=4, seed=1)
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
