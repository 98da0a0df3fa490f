"""The curation pages (Upload case, Review ROIs) with streamlit.testing's AppTest: content, filters, flags through
the UI reaching the database and the counts, and plain errors for bad uploads."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from cadx.workflows import import_demo, open_workspace
from db.models import Image, Lesion, ReviewEvent, Roi
from tests.apptest_support import open_page, point_app_at
from tests.dicom_factory import disk_image, write_mammogram

pytestmark = pytest.mark.slow  # AppTest runs of whole pages: seconds each


@pytest.fixture
def demo_data_dir(tmp_path, monkeypatch, workspace_cache):
    data, _report = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)
    yield point_app_at(data, monkeypatch)
    st.cache_resource.clear()


def _page(page: str) -> AppTest:
    return open_page(page)


def _as(at: AppTest, reviewer: str) -> AppTest:
    # The sidebar's "Reviewer name" (key "reviewer"). AppTest drops the sidebar after switch_page, so the name is
    # put into the session state before each run that records a decision.
    at.session_state["reviewer"] = reviewer
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _db(data: Path):
    return open_workspace(data)


# ------------------------------------------------------------------------------------------------ review ---
def test_review_shows_counts_grid_and_synthetic_label(demo_data_dir):
    at = _page("pages/review.py")
    n_rois = len(_db(demo_data_dir).sessions().scalars(select(Roi.id)).all())
    metrics = _metrics(at)
    assert metrics["ROIs"] == str(n_rois) and metrics["Included"] == str(n_rois) and metrics["Excluded"] == "0"
    assert metrics["Matching the filters"] == str(n_rois)
    assert any("SYNTHETIC" in m.value for m in at.markdown)
    assert len([c for c in at.checkbox if str(c.key).startswith("review_sel_")]) == n_rois
    assert len(at.image) >= n_rois  # one thumbnail per ROI


def test_review_filters_narrow_the_grid(demo_data_dir):
    at = _page("pages/review.py")
    with _db(demo_data_dir).sessions() as session:
        n_cc = len(session.scalars(select(Roi.id).join(Image).where(Image.view == "CC")).all())
        n_padded = sum("padded" in (flags or []) for flags in session.scalars(select(Roi.qc_flags)))
    at.multiselect(key="review_f_view").set_value(["CC"]).run()
    assert _metrics(at)["Matching the filters"] == str(n_cc)
    assert len([c for c in at.checkbox if str(c.key).startswith("review_sel_")]) == n_cc
    at.multiselect(key="review_f_view").set_value([]).run()
    if n_padded:
        at.multiselect(key="review_f_flag").set_value(["padded"]).run()
        assert _metrics(at)["Matching the filters"] == str(n_padded)
        at.multiselect(key="review_f_flag").set_value([]).run()
    at.selectbox(key="review_f_status").set_value("excluded").run()
    assert _metrics(at)["Matching the filters"] == "0"
    assert any("No ROI matches" in i.value for i in at.info)
    at.selectbox(key="review_f_status").set_value("all")
    at.text_input(key="review_f_lesion").set_value("no-such-lesion").run()
    assert _metrics(at)["Matching the filters"] == "0"


def test_flag_and_unflag_through_the_ui_reach_the_database_and_counts(demo_data_dir):
    at = _page("pages/review.py")
    at.button(key="review_open_1").click().run()
    assert any(s.value == "ROI #1" for s in at.subheader)
    assert any("true outline of the synthetic phantom" in c for i in at.image for c in i.captions)
    # issue 27.5: the open ROI as DICOM SR and SEG (built on click by cadx.workflows.export.roi_dicom_bytes)
    downloads = {b.label: b for b in at.get("download_button")}
    assert not downloads["DICOM SR"].disabled and not downloads["DICOM SEG"].disabled  # a phantom has its truth
    at.selectbox(key="review_reason").set_value("location_marker")
    at.text_input(key="review_note").set_value("marker at the edge")
    _as(at, "Dr Ada").button(key="review_flag").click().run()
    assert not at.exception
    metrics = _metrics(at)
    assert metrics["Excluded"] == "1"
    assert any("flagged: location marker (by Dr Ada)" in s.value for s in at.success)
    with _db(demo_data_dir).sessions() as session:
        roi = session.get(Roi, 1)
        assert not roi.included and roi.exclusion_reason == "location_marker"
        (event,) = session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id == 1)).all()
        assert (event.user, event.action, event.note) == ("Dr Ada", "exclude", "marker at the edge")
    history = [m.value for m in at.markdown if " UTC · " in m.value]  # one wrapping line per decision
    assert len(history) == 1 and history[0].endswith("UTC · Dr Ada · flagged: location marker · note: marker at the "
                                                     "edge"), history  # words, not codes

    _as(at, "Dr Ada").button(key="review_unflag").click().run()
    assert _metrics(at)["Excluded"] == "0"
    with _db(demo_data_dir).sessions() as session:
        assert session.get(Roi, 1).included
        assert [e.action for e in session.scalars(select(ReviewEvent).order_by(ReviewEvent.id))] == ["exclude",
                                                                                                      "include"]
    assert [m.value.split(" · ")[2] for m in at.markdown if " UTC · " in m.value] == [
        "flagged: location marker", "included again"]


def test_bulk_flag_needs_a_note_for_other_then_flags_all_selected(demo_data_dir):
    at = _page("pages/review.py")
    at.checkbox(key="review_sel_2").check().run()
    at.checkbox(key="review_sel_3").check().run()
    assert any("2 selected" in m.value for m in at.markdown)
    at.selectbox(key="review_bulk_reason").set_value("other")
    at.button(key="review_bulk_flag").click().run()
    assert any("needs a note" in e.value for e in at.error)
    assert _metrics(at)["Excluded"] == "0"
    at.text_input(key="review_bulk_note").set_value("ruler in the field")
    _as(at, "Dr Bo").button(key="review_bulk_flag").click().run()
    assert _metrics(at)["Excluded"] == "2"
    assert any("0 selected" in m.value for m in at.markdown)  # the selection is cleared after the decision
    with _db(demo_data_dir).sessions() as session:
        rois = {r.id: r for r in session.scalars(select(Roi))}
        assert {i for i, r in rois.items() if not r.included} == {2, 3}
        assert {r.exclusion_reason for r in rois.values() if not r.included} == {"other"}
        assert all(e.user == "Dr Bo" for e in session.scalars(select(ReviewEvent)))
    at.selectbox(key="review_f_status").set_value("excluded").run()
    assert _metrics(at)["Matching the filters"] == "2"
    at.button(key="review_select_page").click().run()
    at.button(key="review_bulk_unflag").click().run()
    assert _metrics(at)["Excluded"] == "0"


def test_a_note_belongs_to_one_decision_and_the_bulk_preview_says_what_is_stored(demo_data_dir):
    # Issue 25, item 1: ROIs bulk-flagged "compression paddle" were stored with the note of an earlier "other" flag.
    at = _page("pages/review.py")
    at.checkbox(key="review_sel_2").check().run()
    at.selectbox(key="review_bulk_reason").set_value("other")
    at.text_input(key="review_bulk_note").set_value("ruler/skin marker in field").run()
    assert any("stores for 1 ROI: **other**, note “ruler/skin marker in field”" in _shown(c.value)
               for c in at.caption)
    _as(at, "Dr Bo").button(key="review_bulk_flag").click().run()
    assert at.text_input(key="review_bulk_note").value == ""  # used: cleared
    at.checkbox(key="review_sel_3").check().run()
    at.checkbox(key="review_sel_4").check().run()
    at.selectbox(key="review_bulk_reason").set_value("compression_paddle").run()
    assert any("stores for 2 ROIs: **compression paddle**, no note." in c.value for c in at.caption)
    _as(at, "Dr Bo").button(key="review_bulk_flag").click().run()
    # the single-ROI note too: typed for one flag, gone after it
    at.button(key="review_open_5").click().run()
    at.selectbox(key="review_reason").set_value("other")
    at.text_input(key="review_note").set_value("a ruler")
    _as(at, "Dr Bo").button(key="review_flag").click().run()
    assert at.text_input(key="review_note").value == ""
    at.button(key="review_open_6").click().run()
    at.selectbox(key="review_reason").set_value("location_marker")
    _as(at, "Dr Bo").button(key="review_flag").click().run()
    with _db(demo_data_dir).sessions() as session:
        stored = {e.roi_id: (e.reason, e.note) for e in session.scalars(select(ReviewEvent))}
    assert stored == {2: ("other", "ruler/skin marker in field"), 3: ("compression_paddle", None),
                      4: ("compression_paddle", None), 5: ("other", "a ruler"), 6: ("location_marker", None)}
    # issue 25 item 11: the five decisions are there to download as a CSV (review_decisions, tested in test_review)
    at.run()
    assert any(e.label == "Export the review decisions (5)" for e in at.expander)
    assert not next(b for b in at.get("download_button") if b.label == "Review decisions (CSV)").disabled


def test_paging_through_the_grid(tmp_path, monkeypatch):
    data = tmp_path / "data"
    ws = open_workspace(data)
    import_demo(ws, n_lesions=11, seed=3)
    n_rois = len(ws.sessions().scalars(select(Roi.id)).all())
    ws.engine.dispose()
    assert n_rois > 24
    monkeypatch.setenv("CADX_DATA_DIR", str(data))
    monkeypatch.delenv("CADX_DATABASE_URL", raising=False)
    st.cache_resource.clear()
    try:
        at = _page("pages/review.py")
        at.selectbox(key="review_page_size").set_value(24).run()
        grid = [int(str(c.key).rsplit("_", 1)[1]) for c in at.checkbox if str(c.key).startswith("review_sel_")]
        assert grid == list(range(1, 25))
        assert any(f"ROIs 1–24 of {n_rois} (page 1 of 2)" in c.value for c in at.caption)
        at.get("pagination")[0].set_value(2).run()
        grid = [int(str(c.key).rsplit("_", 1)[1]) for c in at.checkbox if str(c.key).startswith("review_sel_")]
        assert grid == list(range(25, n_rois + 1))
        # Selections are kept across pages and a bulk decision covers them all.
        at.checkbox(key=f"review_sel_{n_rois}").check().run()
        at.get("pagination")[0].set_value(1).run()
        at.checkbox(key="review_sel_1").check().run()
        assert any("2 selected" in m.value for m in at.markdown)
        at.selectbox(key="review_bulk_reason").set_value("compression_paddle")
        at.button(key="review_bulk_flag").click().run()
        assert _metrics(at)["Excluded"] == "2"
    finally:
        st.cache_resource.clear()


def test_open_unknown_roi_says_so(demo_data_dir):
    at = _page("pages/review.py")
    at.number_input(key="review_goto").set_value(9999).run()
    assert any("no ROI #9999" in w.value for w in at.warning)


# ------------------------------------------------------------------------------------------------ upload ---
def _dicom_bytes(tmp_path: Path, shape=(700, 500), centre=(350, 250)) -> bytes:
    path = write_mammogram(tmp_path / "case.dcm", disk_image(shape, centre, 40), pixel_spacing=(0.1, 0.1))
    return path.read_bytes()


def test_upload_page_says_files_are_deidentified(demo_data_dir):
    at = _page("pages/upload.py")
    assert any("de-identified on ingest" in i.value for i in at.info)


def _shown(markdown: str) -> str:
    """The text a markdown element shows: user text (file names) arrives backslash-escaped (pages._shared.plain)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def test_upload_bad_file_shows_a_plain_error(demo_data_dir):
    at = _page("pages/upload.py")
    at.file_uploader(key="upload_files").set_value(("notes.txt", b"this is not an image at all", "text/plain")).run()
    assert not at.exception
    assert at.error and "notes.txt" in _shown(at.error[0].value) and "Fix" in at.error[0].value
    assert not at.image


def test_upload_zip_with_path_traversal_is_refused(demo_data_dir, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/evil.dcm", _dicom_bytes(tmp_path))
        archive.writestr("study/cc.dcm", _dicom_bytes(tmp_path, centre=(300, 200)))
        archive.writestr("study/mlo.dcm", _dicom_bytes(tmp_path, shape=(640, 480)))
    at = _page("pages/upload.py")
    at.file_uploader(key="upload_files").set_value(("study.zip", buffer.getvalue(), "application/zip")).run()
    assert not at.exception
    assert len(at.error) == 1 and "study.zip/../../etc/evil.dcm" in _shown(at.error[0].value)
    assert "path traversal" in at.error[0].value
    images = at.selectbox[0]
    assert images.label == "Image" and len(images.options) == 2
    assert any("cc.dcm: DICOM, 700 × 500 pixels" in _shown(m.value) for m in at.markdown)
    images.set_value(1).run()
    assert any("mlo.dcm: DICOM, 640 × 480 pixels" in _shown(m.value) for m in at.markdown)


def test_upload_dicom_mark_centre_preview_and_save(demo_data_dir, tmp_path):
    data = _dicom_bytes(tmp_path)
    at = _page("pages/upload.py")
    at.file_uploader(key="upload_files").set_value(("case.dcm", data, "application/dicom")).run()
    assert not at.exception and not at.error
    assert at.button(key="upload_save").disabled
    assert any("click the lesion centre" in c.value for c in at.caption)
    rows = [n for n in at.number_input if str(n.key).startswith("upload_row_")]
    cols = [n for n in at.number_input if str(n.key).startswith("upload_col_")]
    rows[0].set_value(351.0)
    cols[0].set_value(249.5)
    at.run()
    assert any("centred at row 351.0, column 249.5" in c for i in at.image for c in i.captions)  # ROI preview
    assert at.selectbox(key="upload_patient").value.startswith("From the DICOM file")
    at.selectbox(key="upload_lesion").set_value("New lesion…").run()
    at.text_input(key="upload_new_lesion").set_value("L1")
    at.radio(key="upload_label").set_value("malignant").run()
    assert not at.button(key="upload_save").disabled
    _as(at, "Dr Cy").button(key="upload_save").click().run()
    assert not at.exception
    assert any("as ROI #" in s.value for s in at.success), [e.value for e in at.error]
    with _db(demo_data_dir).sessions() as session:
        roi = session.scalars(select(Roi).order_by(Roi.id.desc())).first()
        assert (roi.centre_row, roi.centre_col) == (351.0, 249.5)
        assert roi.lesion.label == "malignant" and roi.lesion.key == "L1"
        assert roi.lesion.patient.key != "MRN-4471923"  # the pseudonym, never the PatientID
        assert roi.image.view == "CC" and roi.image.laterality == "L"
    # The same file and lesion again: nothing new, said plainly.
    at.button(key="upload_save").click().run()
    assert any("already imported" in i.value for i in at.info)


def test_upload_cbis_cc_and_mlo_of_one_breast_as_one_lesion(demo_data_dir, cbis_dicoms):
    # Issue 25, item 2, with the real CBIS-DDSM files: the MLO got another pseudonym (the PatientID carries the view)
    # and its lesion key made a second lesion; view stayed unknown; the pixel size was typed for every image.
    files = [(f"{view}.dcm", cbis_dicoms[("P_00820", "LEFT", view)].read_bytes(), "application/dicom")
             for view in ("CC", "MLO")]
    at = _page("pages/upload.py")
    at.file_uploader(key="upload_files").set_value(files).run()
    assert not at.exception and not at.error

    def mark(view: str) -> None:
        shas = {str(n.key).removeprefix("upload_row_") for n in at.number_input if str(n.key).startswith("upload_row_")}
        (sha,) = shas
        assert at.selectbox(key=f"upload_view_{sha}").value == view
        assert at.selectbox(key=f"upload_side_{sha}").value == "L"
        assert at.selectbox(key="upload_patient").value.startswith("From the DICOM file")
        assert any("follows CBIS-DDSM's naming" in c.value for c in at.caption)
        at.number_input(key=f"upload_row_{sha}").set_value(2300.0)
        at.number_input(key=f"upload_col_{sha}").set_value(1000.0)

    mark("CC")
    (pixel,) = [n for n in at.number_input if str(n.key).startswith("upload_pixel_")]
    pixel.set_value(0.05)
    at.selectbox(key="upload_lesion").set_value("New lesion…").run()
    at.text_input(key="upload_new_lesion").set_value("L1")
    at.radio(key="upload_label").set_value("malignant").run()
    _as(at, "Dr Cy").button(key="upload_save").click().run()
    assert any("as ROI #" in s.value for s in at.success), [e.value for e in at.error]

    next(s for s in at.selectbox if s.label == "Image").set_value(1).run()  # the MLO, same upload
    mark("MLO")
    (pixel,) = [n for n in at.number_input if str(n.key).startswith("upload_pixel_")]
    assert pixel.value == 0.05 and any("as given for another image of this upload" in c.value for c in at.caption)
    at.run()
    assert any("already has lesion **L1**" in _shown(i.value) for i in at.info)  # the same patient: the same lesion
    assert not at.warning
    _as(at, "Dr Cy").button(key="upload_save").click().run()
    assert any("as ROI #" in s.value for s in at.success), [e.value for e in at.error]
    with _db(demo_data_dir).sessions() as session:
        lesions = session.scalars(select(Lesion).where(Lesion.key == "L1")).all()
        assert len(lesions) == 1
        rois = sorted(lesions[0].rois, key=lambda r: r.image.view)
        assert [(r.image.view, r.image.laterality, r.image.pixel_spacing_row_mm) for r in rois] == [
            ("CC", "L", 0.05), ("MLO", "L", 0.05)]
        pseudonym = lesions[0].patient.key

    # A new lesion key that another patient has: a warning, and Save waits for an explicit confirmation.
    at.selectbox(key="upload_patient").set_value("New patient…").run()
    at.text_input(key="upload_new_patient").set_value("STUDY-7").run()
    assert any("already exists under another patient" in w.value and pseudonym in _shown(w.value)
               for w in at.warning)
    assert at.button(key="upload_save").disabled
    assert any("confirm the lesion key that another patient has" in c.value for c in at.caption)
    (confirm,) = [c for c in at.checkbox if str(c.key).startswith("upload_confirm_")]
    confirm.check().run()
    assert not at.button(key="upload_save").disabled


def test_upload_png_needs_a_pixel_size(demo_data_dir):
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(disk_image((400, 300), (200, 150), 30)).save(buffer, format="PNG")
    at = _page("pages/upload.py")
    at.file_uploader(key="upload_files").set_value(("case.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    pixel = [n for n in at.number_input if str(n.key).startswith("upload_pixel_")]
    assert pixel and any("give the pixel size" in c.value for c in at.caption)
    pixel[0].set_value(0.2).run()
    assert not any("give the pixel size" in c.value for c in at.caption)
    assert np.all(at.button(key="upload_save").disabled)  # still needs a centre, a lesion and a label


def _mini_ddsm_segmented(workspace, folder: str) -> None:
    from cadx.workflows import import_ddsm
    from cadx.workflows.features import compute_analytic_features

    import_ddsm(workspace, folder, user="tester")
    compute_analytic_features(workspace)


def test_review_shows_method_b_s_dice_beside_the_outline(tmp_path, monkeypatch, workspace_cache, mini_ddsm_dir):
    """Issue 27.3: the Dice and boundary distance of Method B against the expert's outline are shown beside the
    outline in Review, with the numbers of cadx.segscore (the same as `cadx features --report`)."""
    from cadx.workflows.features import segmentation_score_words, segmentation_scores

    data, _ = workspace_cache.data_dir(tmp_path / "data", _mini_ddsm_segmented, folder=str(mini_ddsm_dir))
    point_app_at(data, monkeypatch)
    workspace = open_workspace(data)
    try:
        scores = {s.roi_id: s for s in segmentation_scores(workspace)}
        assert len(scores) == 4  # every mini-DDSM ROI has the expert's outline and a segmentation
        roi_id, score = min(scores.items())
        words = segmentation_score_words(workspace, roi_id)
        assert words == (f"Method B against the expert outline: Dice {score.dice:.2f}, mean boundary distance "
                         f"{score.boundary_mm:.2f} mm")
        at = _page("pages/review.py")
        at.button(key=f"review_open_{roi_id}").click().run()
        assert not at.exception, at.exception
        assert words in [c.value for c in at.caption]
    finally:
        workspace.engine.dispose()
        st.cache_resource.clear()


def test_from_pacs_searches_the_configured_server_and_fetched_images_save_like_uploads(
        demo_data_dir, orthanc, pacs, tmp_path, monkeypatch):
    """Issue 27.1 in the app: Upload case's *From PACS* searches the PACS that whoever runs cadx configured (never a
    URL typed in the browser), offers only its mammography series, and a fetched image takes the upload path: centre,
    lesion, Save — stored de-identified, its image hash the PACS file's."""
    import hashlib

    from tests.test_import_dicomweb import READER

    patient = "PACS-APP-" + tmp_path.name[-12:]
    mg_path = write_mammogram(tmp_path / "mg.dcm", disk_image((700, 500), (350, 250), 40),
                              extra={"PatientID": patient})
    ct_path = write_mammogram(tmp_path / "ct.dcm", disk_image((300, 300), (150, 150), 20),
                              extra={"PatientID": patient, "Modality": "CT"})
    pacs.upload(mg_path)
    pacs.upload(ct_path)
    at = _page("pages/upload.py")
    assert not any(e.label == "From PACS" for e in at.expander)  # no PACS configured: no such part
    monkeypatch.setenv("CADX_PACS_URL", pacs.dicomweb)
    monkeypatch.setenv("CADX_DICOMWEB_USER", READER.user)
    monkeypatch.setenv("CADX_DICOMWEB_PASSWORD", READER.password)
    at = _page("pages/upload.py")
    assert not any(t.label.startswith("PACS URL") for t in at.text_input)  # the server is not the browser's choice
    at.text_input(key="pacs_patient").set_value(patient)
    at.button(key="pacs_search").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("2 series found: 1 mammography (MG), 1 of other modalities (not offered)" in m.value
               for m in at.markdown)
    (offered,) = at.multiselect(key="pacs_chosen").options
    assert offered.startswith("MG · study 20240301 · 1 image(s)")
    at.multiselect(key="pacs_chosen").select(offered).run()
    at.button(key="pacs_fetch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rows = [n for n in at.number_input if str(n.key).startswith("upload_row_")]
    cols = [n for n in at.number_input if str(n.key).startswith("upload_col_")]
    rows[0].set_value(351.0)
    cols[0].set_value(249.5)
    at.run()
    at.selectbox(key="upload_lesion").set_value("New lesion…").run()
    at.text_input(key="upload_new_lesion").set_value("PACS-L1")
    at.radio(key="upload_label").set_value("benign").run()
    _as(at, "Dr Cy").button(key="upload_save").click().run()
    assert not at.exception
    assert any("as ROI #" in s.value for s in at.success), [e.value for e in at.error]
    with _db(demo_data_dir).sessions() as session:
        roi = session.scalars(select(Roi).order_by(Roi.id.desc())).first()
        assert roi.lesion.key == "PACS-L1" and (roi.centre_row, roi.centre_col) == (351.0, 249.5)
        assert roi.lesion.patient.key != patient  # the pseudonym, never the PACS's PatientID
        assert roi.image.sha256 == hashlib.sha256(mg_path.read_bytes()).hexdigest()
