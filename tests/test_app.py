"""The Streamlit app, page by page, with streamlit.testing's AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cadx.workflows import import_demo, open_workspace

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def demo_data_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    import_demo(open_workspace(data), n_lesions=4, seed=1)
    monkeypatch.setenv("CADX_DATA_DIR", str(data))
    monkeypatch.delenv("CADX_DATABASE_URL", raising=False)
    return data


def _run(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_overview_shows_counts_and_says_synthetic(demo_data_dir):
    at = _run()
    assert at.title[0].value.startswith("cadx")
    assert "SYNTHETIC" in at.markdown[0].value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Lesions"] == "4"
    assert int(metrics["ROIs included"]) >= 8 and metrics["ROIs excluded"] == "0"
