"""Review workflows (single and bulk decisions, concurrency on SQLite and PostgreSQL) and the read-only browse
queries and upload helpers behind the curation pages."""

from __future__ import annotations

import io
import stat
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from cadx import io as cadx_io
from cadx.errors import CadxInputError
from cadx.workflows import (
    RoiFilters,
    browse_rois,
    display_image,
    display_to_image_rc,
    exclude_roi,
    exclude_rois,
    filter_options,
    get_roi,
    import_demo,
    import_upload,
    include_roi,
    include_rois,
    lesion_view,
    preview_roi,
    read_upload,
    review_counts,
    roi_history,
    roi_outline,
    roi_outline_image,
    roi_thumbnail,
    unpack_upload,
)
from cadx.workflows.browse import UploadedImage
from db.models import ReviewEvent, Roi, Segmentation
from tests.dicom_factory import PHI, disk_image, write_mammogram
from tests.spawned import review_one_roi


@pytest.fixture
def demo(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=3, seed=4)
    return workspace


def _state(ws, roi_id):
    with ws.sessions() as session:
        roi = session.get(Roi, roi_id)
        events = session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id == roi_id)
                                 .order_by(ReviewEvent.id)).all()
        return roi.included, roi.exclusion_reason, events


def _assert_state_is_last_event(ws, roi_id):
    included, reason, events = _state(ws, roi_id)
    if events:
        assert included == (events[-1].action == "include")
        assert reason == events[-1].reason
    return events


# ------------------------------------------------------------------------------------------- decisions ---
def test_bulk_exclude_and_include_in_one_transaction(demo):
    ids = [r.id for r in browse_rois(demo).rows][:3]
    events = exclude_rois(demo, ids, reason="compression_paddle", user="  ana ", note="paddle edge")
    assert [e.roi_id for e in events] == ids and all(e.user == "ana" for e in events)
    assert review_counts(demo)["excluded"] == 3
    for roi_id in ids:
        assert _assert_state_is_last_event(demo, roi_id)[-1].note == "paddle edge"
    include_rois(demo, ids[:2], user="ben")
    assert review_counts(demo)["excluded"] == 1
    assert [h.action for h in roi_history(demo, ids[0])] == ["exclude", "include"]
    assert [h.user for h in roi_history(demo, ids[0])] == ["ana", "ben"]


def test_review_decisions_export_every_decision_with_its_roi(demo):
    """The CSV a collaborator asked for: one row per decision with the ROI's centre, flags, reason, note, who and
    when; a note that looks like a formula cannot run in a spreadsheet."""
    import csv
    from datetime import datetime

    from cadx.csvsafe import frame_csv_bytes
    from cadx.workflows import review_decisions
    from db.models import Lesion

    assert review_decisions(demo).empty
    ids = [r.id for r in browse_rois(demo).rows][:2]
    exclude_roi(demo, ids[0], reason="other", user="ana", note="=HYPERLINK(\"http://x\")")
    exclude_roi(demo, ids[1], reason="location_marker", user="ana")
    include_roi(demo, ids[0], user="ben", note="fine after all")
    frame = review_decisions(demo)
    assert list(frame["roi_id"]) == [ids[0], ids[1], ids[0]]
    assert list(frame["user"]) == ["ana", "ana", "ben"] and list(frame["action"]) == ["exclude", "exclude", "include"]
    assert list(frame["reason"].fillna("")) == ["other", "location_marker", ""]
    assert list(frame["included_now"]) == [True, False, True]
    with demo.sessions() as session:
        roi = session.get(Roi, ids[1])
        centre, flags, key = (roi.centre_row, roi.centre_col), ";".join(roi.qc_flags), session.get(Lesion,
                                                                                                  roi.lesion_id).key
        times = [e.at for e in session.scalars(select(ReviewEvent).order_by(ReviewEvent.id))]
    second = frame.iloc[1]
    assert (second["centre_row"], second["centre_col"]) == centre and second["qc_flags"] == flags
    assert second["lesion_key"] == key and second["exclusion_reason_now"] == "location_marker"
    assert [datetime.fromisoformat(t).replace(tzinfo=None) for t in frame["at_utc"]] == \
        [t.replace(tzinfo=None, microsecond=0) for t in times]
    assert all(t.endswith("+00:00") for t in frame["at_utc"])
    rows = list(csv.DictReader(io.StringIO(frame_csv_bytes(frame).decode())))
    assert rows[0]["note"] == "'=HYPERLINK(\"http://x\")" and rows[2]["note"] == "fine after all"


def test_bulk_with_an_unknown_roi_writes_nothing(demo):
    with pytest.raises(CadxInputError, match="no such ROI"):
        exclude_rois(demo, [1, 2, 99999], reason="location_marker", user="ana")
    assert review_counts(demo)["excluded"] == 0
    with demo.sessions() as session:
        assert session.scalars(select(ReviewEvent)).all() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"reason": "dust", "user": "ana"}, "unknown exclusion reason"),
    ({"reason": "other", "user": "ana"}, "needs a note"),
    ({"reason": "other", "user": "ana", "note": "   "}, "needs a note"),
    ({"reason": "location_marker", "user": " "}, "no reviewer name"),
])
def test_bad_decisions_are_refused(demo, kwargs, message):
    with pytest.raises(CadxInputError, match=message):
        exclude_roi(demo, 1, **kwargs)


def test_empty_selection_is_refused(demo):
    with pytest.raises(CadxInputError, match="no ROI selected"):
        include_rois(demo, [], user="ana")


def _race(ws, n_threads, work):
    barrier = threading.Barrier(n_threads)
    errors = []

    def run(i):
        try:
            barrier.wait(timeout=30)
            work(i)
        except Exception as exc:  # collected and reported by the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_concurrent_reviewers_on_one_roi_leave_a_fully_audited_state(demo):
    """Reviewers deciding on the same ROI at the same moment: every decision recorded, the ROI in the last one's state."""
    n, rounds = 6, 3
    reasons = ["compression_paddle", "location_marker", None]

    def decide(i):
        for k in range(rounds):
            reason = reasons[(i + k) % 3]
            if reason is None:
                include_roi(demo, 1, user=f"reviewer-{i}")
            else:
                exclude_roi(demo, 1, reason=reason, user=f"reviewer-{i}", note=f"round {k}")

    _race(demo, n, decide)
    events = _assert_state_is_last_event(demo, 1)
    assert len(events) == n * rounds
    assert sorted((e.user, e.note) for e in events if e.action == "exclude") == sorted(
        (f"reviewer-{i}", f"round {k}") for i in range(n) for k in range(rounds) if reasons[(i + k) % 3])
    times = [e.at for e in events]
    assert times == sorted(times)  # ids and times agree: the decisions were serialised


def test_concurrent_overlapping_bulk_decisions_do_not_deadlock(demo):
    ids = [r.id for r in browse_rois(demo).rows][:4]

    def decide(i):
        for k in range(3):
            chosen = ids if i % 2 else list(reversed(ids))
            if (i + k) % 2:
                exclude_rois(demo, chosen, reason="location_marker", user=f"r{i}")
            else:
                include_rois(demo, chosen, user=f"r{i}")

    _race(demo, 4, decide)
    for roi_id in ids:
        assert len(_assert_state_is_last_event(demo, roi_id)) == 12


@pytest.mark.slow
def test_several_processes_writing_at_once_lose_no_review_event(demo):
    """Separate processes (not threads) deciding on one ROI at once: every event is there, the state is the last."""
    import multiprocessing

    n_processes, rounds = 4, 5
    url = demo.engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(n_processes)  # they start writing once every one has opened the database
    processes = [context.Process(target=review_one_roi,
                                 args=(str(demo.data_dir), url, i, rounds, barrier)) for i in range(n_processes)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    assert [p.exitcode for p in processes] == [0] * n_processes
    events = _assert_state_is_last_event(demo, 1)
    assert sorted((e.user, e.note) for e in events) == sorted(
        (f"process-{i}", f"round {k}") for i in range(n_processes) for k in range(rounds))


# -------------------------------------------------------------------------------------------- browsing ---
def test_browse_filters_and_paging(demo):
    everything = browse_rois(demo, page_size=1000)
    n = everything.total
    assert n == len(everything.rows) >= 6 and all(r.is_synthetic for r in everything.rows)
    pages = [browse_rois(demo, page=p, page_size=4) for p in range(1, 4)]
    assert pages[0].n_pages == -(-n // 4)
    assert [r.id for p in pages for r in p.rows][:n] == [r.id for r in everything.rows]
    assert browse_rois(demo, page=99, page_size=4).page == pages[0].n_pages  # past the end: the last page
    by_label = {label: browse_rois(demo, RoiFilters(labels=(label,))).total for label in ("benign", "malignant")}
    assert sum(by_label.values()) == n
    views = filter_options(demo)["views"]
    assert browse_rois(demo, RoiFilters(views=tuple(views))).total == n
    assert sum(browse_rois(demo, RoiFilters(views=(v,))).total for v in views) == n
    assert browse_rois(demo, RoiFilters(views=("unknown",))).total == 0
    assert browse_rois(demo, RoiFilters(synthetic=False)).total == 0
    first = everything.rows[0]
    assert browse_rois(demo, RoiFilters(lesion=first.lesion_key.upper())).total == len(
        [r for r in everything.rows if r.lesion_key == first.lesion_key])
    assert browse_rois(demo, RoiFilters(lesion="%")).total == 0  # LIKE wildcards are taken literally

    exclude_rois(demo, [first.id], reason="other", note="dust", user="ana")
    assert browse_rois(demo, RoiFilters(status="excluded")).total == 1
    assert browse_rois(demo, RoiFilters(status="included")).total == n - 1
    assert browse_rois(demo, RoiFilters(reasons=("other",))).rows[0].id == first.id
    assert browse_rois(demo, RoiFilters(reasons=("location_marker",))).total == 0
    with pytest.raises(CadxInputError):
        browse_rois(demo, RoiFilters(status="maybe"))


def test_qc_flag_filter(demo):
    with demo.sessions.begin() as session:
        session.get(Roi, 2).qc_flags = ["mostly_background", "padded"]
        session.get(Roi, 3).qc_flags = ["padded"]
    assert {"mostly_background", "padded"} <= set(filter_options(demo)["qc_flags"])
    mostly = browse_rois(demo, RoiFilters(qc_flags=("mostly_background",))).rows
    assert 2 in [r.id for r in mostly] and 3 not in [r.id for r in mostly]
    padded = {r.id for r in browse_rois(demo, RoiFilters(qc_flags=("padded",))).rows}
    assert {2, 3} <= padded


def test_lesion_view_outline_thumbnail_and_history(demo):
    roi = get_roi(demo, 1)
    assert get_roi(demo, 424242) is None
    lesion = lesion_view(demo, roi.lesion_id)
    assert lesion.is_synthetic and roi.id in [r.id for r in lesion.rois] and len(lesion.rois) >= 2
    outline = roi_outline(demo, roi)
    assert outline.kind == "truth" and "synthetic phantom" in outline.description
    image, drawn = roi_outline_image(demo, roi, size=256)
    assert image.shape == (256, 256, 3) and drawn == outline
    assert (np.all(image == (0, 220, 255), axis=2)).any()  # the cyan truth outline is drawn

    # A computed segmentation takes precedence, marked as such.
    mask = np.zeros((512, 512), np.uint8)
    mask[200:300, 210:320] = 255
    (demo.data_dir / "segmentations").mkdir(exist_ok=True)
    PILImage.fromarray(mask).save(demo.data_dir / "segmentations" / "m.png")
    with demo.sessions.begin() as session:
        session.add(Segmentation(roi_sha256=roi.sha256, version="t1", quality="ok", mask_file="segmentations/m.png"))
    outline = roi_outline(demo, roi)
    assert outline.kind == "segmentation" and "Method-B" in outline.description
    image, _ = roi_outline_image(demo, roi, size=512)
    yellow = np.all(image == (255, 220, 0), axis=2)
    assert yellow[200, 250] and not yellow[250, 250]

    path = roi_thumbnail(demo, roi)
    assert path.is_relative_to(demo.data_dir) and roi.sha256 in path.name
    with PILImage.open(path) as thumb:
        assert thumb.size == (128, 128) and thumb.mode == "L"
    mtime = path.stat().st_mtime_ns
    assert roi_thumbnail(demo, roi) == path and path.stat().st_mtime_ns == mtime  # made once

    assert roi_history(demo, 1) == []
    exclude_roi(demo, 1, reason="location_marker", user="ana", note="L marker")
    include_roi(demo, 1, user="ben")
    history = roi_history(demo, 1)
    assert [(h.user, h.action, h.reason, h.note) for h in history] == [
        ("ana", "exclude", "location_marker", "L marker"), ("ben", "include", None, None)]


# --------------------------------------------------------------------------------------------- uploads ---
def _zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_unpack_plain_files_and_a_study_zip():
    out = unpack_upload([("a.dcm", b"DICMfake"), ("study.zip", _zip({"s/1.dcm": b"one", "s/2.dcm": b"two",
                                                                     "s/": b"", "DICOMDIR": b"x",
                                                                     "__MACOSX/s/._1.dcm": b"junk"}))])
    assert [i.name for i in out.images] == ["a.dcm", "study.zip/s/1.dcm", "study.zip/s/2.dcm"]
    assert out.images[1].data == b"one" and len(out.images[1].sha256) == 64
    assert out.refused == []


@pytest.mark.parametrize("name", ["../evil.dcm", "a/../../evil.dcm", "/etc/passwd", "C:/x.dcm", "..\\x.dcm"])
def test_unpack_refuses_path_traversal(name):
    out = unpack_upload([("study.zip", _zip({name: b"x", "ok.dcm": b"y"}))])
    assert [i.name for i in out.images] == ["study.zip/ok.dcm"]
    assert len(out.refused) == 1 and "path traversal" in out.refused[0][1]


def test_unpack_refuses_zip_bombs_and_oversized_entries():
    bomb = _zip({"bomb.dcm": b"\0" * (20 * 1024**2)})
    out = unpack_upload([("bomb.zip", bomb)])
    assert not out.images and "zip bomb" in out.refused[0][1]
    out = unpack_upload([("big.zip", _zip({"big.dcm": b"1" * 3000}, zipfile.ZIP_STORED))], max_image_bytes=2000)
    assert not out.images and "over the" in out.refused[0][1]
    out = unpack_upload([("a.dcm", b"1" * 3000)], max_image_bytes=2000)
    assert not out.images and "limit for one image" in out.refused[0][1]
    out = unpack_upload([("many.zip", _zip({f"{i}.dcm": b"x" for i in range(5)}))], max_entries=4)
    assert not out.images and "entries" in out.refused[0][1]
    out = unpack_upload([("t.zip", _zip({f"{i}.dcm": b"x" * 100 for i in range(5)}))], max_total_bytes=250)
    assert not out.images and "limit for one upload" in out.refused[0][1]  # the whole zip, from its directory
    out = unpack_upload([("nest.zip", _zip({"inner.zip": _zip({"a.dcm": b"x"})}))])
    assert not out.images and "zip inside the zip" in out.refused[0][1]
    out = unpack_upload([("bad.zip", b"PK\x03\x04 truncated")])
    assert not out.images and "not a readable zip" in out.refused[0][1]


def test_unpack_refuses_links():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    out = unpack_upload([("links.zip", buffer.getvalue())])
    assert not out.images and "link" in out.refused[0][1]


@pytest.mark.parametrize("shape, display", [((1200, 900), (600, 450)), ((700, 500), (500, 700)),
                                            ((3328, 2560), (640, 492))])
def test_display_to_image_coordinates_are_exact(shape, display):
    rows, cols = shape
    w, h = display
    # Display pixel centres map to the centres of the source blocks they average.
    assert display_to_image_rc(0, 0, display_size=(w, h), image_shape=shape) == pytest.approx(
        (0.5 * rows / h - 0.5, 0.5 * cols / w - 0.5))
    assert display_to_image_rc(w - 1, h - 1, display_size=(w, h), image_shape=shape) == pytest.approx(
        (rows - 0.5 * rows / h - 0.5, cols - 0.5 * cols / w - 0.5))
    # The image centre.
    assert display_to_image_rc(w / 2 - 0.5, h / 2 - 0.5, display_size=(w, h), image_shape=shape) == pytest.approx(
        ((rows - 1) / 2, (cols - 1) / 2))
    # Clicks on the border stay inside the image.
    assert display_to_image_rc(w + 5, -3, display_size=(w, h), image_shape=shape) == (0.0, cols - 1)


def test_display_image_round_trip_finds_the_lesion(tmp_path):
    shape, centre = (1200, 900), (700.0, 300.0)
    image = cadx_io.read_dicom(write_mammogram(tmp_path / "m.dcm", disk_image(shape, centre, 60)))
    shown = display_image(image)
    w, h = shown.size
    assert h <= 800 and w <= 640 and shown.image_shape == shape
    grey = shown.pixels[..., 0].astype(float)
    y, x = np.argwhere(grey > grey.mean() + 0.5 * (grey.max() - grey.mean())).mean(axis=0)
    row, col = display_to_image_rc(x, y, display_size=(w, h), image_shape=shape)
    assert abs(row - centre[0]) < 1.0 and abs(col - centre[1]) < 1.0
    marked = display_image(image, centre_rc=centre)
    assert (np.all(marked.pixels == (255, 40, 40), axis=2)).any()  # the centre cross
    assert (np.all(marked.pixels == (255, 220, 0), axis=2)).any()  # the 51.2 mm field


def test_preview_is_the_roi_that_import_stores(workspace, tmp_path):
    data = write_mammogram(tmp_path / "m.dcm", disk_image((700, 500), (300, 260), 40)).read_bytes()
    upload = UploadedImage("m.dcm", data, "x")
    image = read_upload(workspace, upload)
    assert image.patient_key and image.patient_key != PHI["PatientID"]
    crop = preview_roi(image, (300.0, 260.5))
    report = import_upload(workspace, data, filename="m.dcm", patient=None, lesion="L1", label="benign",
                           centre_rc=(300.0, 260.5), user="ana")
    assert report.committed
    roi = get_roi(workspace, report.items[0].roi_id)
    from cadx.roi import roi_sha256

    assert roi.sha256 == roi_sha256(crop.pixels) and roi.centre_rc == (300.0, 260.5)
    raster = io.BytesIO()
    PILImage.fromarray(disk_image((300, 200), (100, 100), 20)).save(raster, format="PNG")
    png = read_upload(workspace, UploadedImage("p.png", raster.getvalue(), "y"))
    with pytest.raises(CadxInputError, match="pixel size"):
        preview_roi(png, (100.0, 100.0))
    assert preview_roi(png, (100.0, 100.0), pixel_size_mm=0.2).pixels.shape == (512, 512)


def test_read_upload_reports_garbage_plainly(workspace):
    with pytest.raises(CadxInputError, match="notes.txt"):
        read_upload(workspace, UploadedImage("notes.txt", b"hello", "z"))

