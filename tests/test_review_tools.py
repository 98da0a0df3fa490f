"""The logic behind the review tools: the words registry, window/level presets, zoomed display and click mapping,
range selection and next/previous in the grid's order (SQLite and PostgreSQL), thumbnails made ahead, the demo's
per-lesion progress, and the review page's fragment moves (AppTest)."""

from __future__ import annotations

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cadx import io as cadx_io
from cadx import words
from cadx.workflows import (
    RoiFilters,
    browse_rois,
    display_image,
    display_to_image_rc,
    exclude_rois,
    import_demo,
    open_workspace,
)
from cadx.workflows.browse import (
    display_windows,
    matching_roi_ids,
    neighbour_roi,
    roi_display,
    roi_page_number,
    warm_thumbnails,
    zoom_region,
)
from db.models import EXCLUSION_REASONS
from tests.apptest_support import APP, APP_TIMEOUT, point_app_at
from tests.db_fixtures import database_url, workspace  # noqa: F401 - fixtures


# ------------------------------------------------------------------------------------------------- words ---
def test_every_stored_code_has_words_and_its_code_in_the_tooltip():
    from cadx.analytic import QUALITIES

    assert tuple(words.EXCLUSION_REASONS) == EXCLUSION_REASONS  # the database accepts exactly these
    assert set(QUALITIES) == set(words.SEGMENTATION_QUALITIES)
    for code in ("location_marker", "mostly_background", "lesion_exceeds_field", "seed_off_lesion", "padded",
                 "burned_in_annotation", "compression_paddle", "touches_border", "low_contrast"):
        assert "_" not in words.word(code), code
        assert words.meaning(code).endswith(f"(stored code: {code})")
        assert words.with_code(code) == f"{words.word(code)} ({code})"
    assert words.word("lesion_exceeds_field") == "lesion larger than the field"
    assert words.word("some_new_flag") == "some new flag"  # an unknown code still reads as words
    assert words.word(None) == "" and words.with_code("other") == "other"


def test_one_way_to_show_a_fold_and_an_empty_value():
    assert words.fold_text(0, n_folds=5, seed=0) == "fold 1 of 5 (seed 0)"  # stored folds are 0-based
    assert words.fold_text(np.int64(4), n_folds=5, seed=7) == "fold 5 of 5 (seed 7)"
    assert [words.empty_or(v) for v in (None, float("nan"), "", "CC")] == ["—", "—", "—", "CC"]
    assert words.empty_or(0.5, "{:.3f}") == "0.500" and words.EMPTY == "—"
    assert words.column_word("right_p1") == "SVM1 right" and words.column_word("tap") == "tap"


def test_cli_exclude_says_the_reason_in_words(tmp_path, workspace_cache):
    from typer.testing import CliRunner

    from cadx.cli import app

    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=1, seed=1)
    result = CliRunner().invoke(app, ["exclude", "1", "--reason", "location_marker", "--data-dir", str(data),
                                      "--user", "tester"])
    assert result.exit_code == 0, result.output
    assert "ROI 1 excluded (location marker (location_marker)) by tester" in " ".join(result.output.split())


# ------------------------------------------------------------------------------------------ window/level ---
def test_window_presets_follow_the_dicom_windows():
    header = {"WindowCenter": [2048.0, 1000.0], "WindowWidth": [4096.0, 1000.0],
              "PhotometricInterpretation": "MONOCHROME2"}
    windows = display_windows(header)
    assert windows["auto contrast (0.5–99.5 %)"] is None and windows["full range"] == (0.0, 1.0)
    first, second = [k for k in windows if k.startswith("DICOM")]
    assert windows[first] == (0.0, 1.0)  # the file's first window is the one the pixels were read through
    # window 2 spans 500..1500 in stored values; through window 1, x -> (x - 2047.5) / 4095 + 0.5
    lo, hi = windows[second]
    assert lo == pytest.approx((500 - 2047.5) / 4095 + 0.5) and hi == pytest.approx((1500 - 2047.5) / 4095 + 0.5)
    inverted = display_windows({**header, "PhotometricInterpretation": "MONOCHROME1"})
    assert inverted[second] == pytest.approx((1 - hi, 1 - lo))
    assert list(display_windows({})) == ["auto contrast (0.5–99.5 %)", "full range"]
    assert len(display_windows({"WindowCenter": "40\\400", "WindowWidth": "80\\2000"})) == 4  # DS text form


def test_a_window_maps_its_ends_to_black_and_white():
    pixels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    assert roi_display(pixels, window=(0.25, 0.5)).tolist() == [[0, 0, 255, 255]]
    assert roi_display(pixels, window=(0.0, 1.0)).tolist() == [[0, 64, 128, 255]]


# -------------------------------------------------------------------------------------- zoom and clicks ---
def _mammogram(shape=(1200, 900)) -> cadx_io.Mammogram:
    pixels = np.zeros(shape, dtype=np.float32)
    return cadx_io.Mammogram(pixels=pixels, value_range=(0.0, 1.0), pixel_spacing_mm=(0.1, 0.1),
                             pixel_spacing_source="test", source_sha256="0" * 64, source_format="png",
                             modality=None, view=None, laterality=None, photometric="MONOCHROME2", header={},
                             burned_in_annotation=False, patient_key=None)


def test_a_zoomed_view_maps_each_click_to_the_source_pixel_under_it():
    image = _mammogram()
    region = zoom_region((1200, 900), centre_rc=(610.0, 430.0), scale=4.0)
    assert region == (510, 350, 200, 160)  # 800 x 640 screen pixels at 4x, centred on the point
    shown = display_image(image, region=region)
    assert shown.size == (640, 800) and shown.scale == 4.0
    assert "rows 510–709 and columns 350–509" in shown.describe() and "magnified 4×" in shown.describe()
    # every screen pixel inside source pixel (r, c) maps back to within half a pixel of (r, c)
    for r, c in ((610, 430), (510, 350), (709, 509)):
        for dx in range(4):
            x, y = (c - 350) * 4 + dx, (r - 510) * 4 + dx
            row, col = display_to_image_rc(x, y, display_size=shown.size, image_shape=(1200, 900), region=region)
            assert abs(row - r) <= 0.5 and abs(col - c) <= 0.5
    # the view stays inside the image near its edges
    assert zoom_region((1200, 900), centre_rc=(0.0, 899.0), scale=8.0) == (0, 820, 100, 80)


def test_the_caption_never_says_downsampled_from_the_same_size():
    small = display_image(_mammogram((512, 512)))
    assert small.size == (512, 512)
    assert small.describe() == ("Showing the whole image (512 × 512 pixels), at full resolution (one screen pixel "
                                "per image pixel)")
    assert "downsampled to 600 × 800" in display_image(_mammogram()).describe()


# ----------------------------------------------------------------------------------- grid order (SQL) ---
def test_range_selection_and_neighbours_follow_the_filtered_grid(workspace_cache, workspace):  # noqa: F811
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=4)
    n = len(browse_rois(workspace, page_size=1000).rows)
    exclude_rois(workspace, [2, 4], reason="compression_paddle", user="t")
    included = RoiFilters(status="included")
    assert matching_roi_ids(workspace, included, from_id=5, to_id=1) == [1, 3, 5]
    assert matching_roi_ids(workspace, None, from_id=1, to_id=5) == [1, 2, 3, 4, 5]
    assert neighbour_roi(workspace, included, 1, step=1) == 3
    assert neighbour_roi(workspace, included, 3, step=-1) == 1
    assert neighbour_roi(workspace, included, 1, step=-1) is None
    assert neighbour_roi(workspace, None, n, step=1) is None
    assert roi_page_number(workspace, None, 1, page_size=2) == 1
    assert roi_page_number(workspace, None, 5, page_size=2) == 3
    assert roi_page_number(workspace, included, 5, page_size=2) == 2  # 1, 3 | 5, ...


def test_thumbnails_of_the_pages_beside_are_made_ahead(workspace_cache, workspace):  # noqa: F811
    workspace_cache.fill(workspace, import_demo, n_lesions=3, seed=4)
    rows = browse_rois(workspace, page=2, page_size=3).rows
    assert warm_thumbnails(workspace, None, pages=(2, 0, 99), page_size=3) == len(rows) == 3
    assert all(workspace.path(f"thumbs/128/{r.sha256[:2]}/{r.sha256}.png").exists() for r in rows)
    assert warm_thumbnails(workspace, None, pages=(2,), page_size=3) == 0  # made once


def test_the_demo_reports_progress_per_lesion(tmp_path):
    calls = []
    import_demo(open_workspace(tmp_path / "data"), n_lesions=3, seed=1, progress=lambda *a: calls.append(a))
    assert calls[:3] == [(k, 3, f"creating synthetic lesion {k + 1} of 3") for k in range(3)]
    assert calls[-1] == (3, 3, "writing to the database")


# ------------------------------------------------------------------------------------ the page (AppTest) ---
@pytest.fixture
def review_app(tmp_path, monkeypatch, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=3, seed=4)
    point_app_at(data, monkeypatch)
    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    at.switch_page("pages/review.py").run()
    assert not at.exception, at.exception
    yield at
    st.cache_resource.clear()


def test_next_flag_with_the_last_reason_and_previous(review_app):
    at = review_app
    at.button(key="review_next").click().run()
    assert [s.value for s in at.subheader] == ["ROI #1"]
    at.selectbox(key="review_reason").set_value("location_marker").run()
    at.button(key="review_flag").click().run()
    at.button(key="review_next").click().run()
    assert [s.value for s in at.subheader] == ["ROI #2"]
    at.button(key="review_flag").click().run()  # the reason shown is still the last one used
    assert any("ROI #2 flagged: location marker" in s.value for s in at.success)
    at.button(key="review_prev").click().run()
    assert [s.value for s in at.subheader] == ["ROI #1"]
    assert at.button(key="review_flag").disabled and not at.button(key="review_unflag").disabled
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Excluded"] == "2"


def test_range_select_ticks_the_whole_run(review_app):
    at = review_app
    at.toggle(key="review_range_mode").set_value(True).run()
    at.checkbox(key="review_sel_2").check().run()
    at.checkbox(key="review_sel_5").check().run()
    assert at.session_state["review_selected"] == {2, 3, 4, 5}
    assert all(at.checkbox(key=f"review_sel_{i}").value for i in (2, 3, 4, 5))
    at.button(key="review_clear").click().run()
    at.number_input(key="review_range_from").set_value(3)
    at.number_input(key="review_range_to").set_value(1).run()
    at.button(key="review_select_range").click().run()
    assert at.session_state["review_selected"] == {1, 2, 3}


def test_one_view_lesions_do_not_show_the_roi_twice(review_app):
    at = review_app
    at.number_input(key="review_goto").set_value(1).run()
    view_buttons = [b.key for b in at.button if str(b.key).startswith("review_view_")]
    assert "review_view_1" not in view_buttons  # the open ROI is never among "the other views"
