"""DICOM SR and SEG export (issue 27.5): the mini-DDSM cases exported, read back with highdicom and compared value by
value with what the database holds (centre, outlines, pathology, review decisions, UIDs, mask pixels); dciodvfy
(Debian dicom3tools, installed by scripts/services.sh) finds no error in the files; bad targets and out folders."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from skimage.measure import find_contours
from sqlalchemy import select
from typer.testing import CliRunner

from cadx import words
from cadx.cli import app
from cadx.cohorts import CohortDefinition
from cadx.errors import CadxInputError
from cadx.export import CADX_CODES, EXCLUSION_REASON_CODES, mask_to_source, source_uids
from cadx.outline import decode_mask_png
from cadx.workflows import exclude_roi, import_ddsm, import_demo, include_roi
from cadx.workflows.cohorts import save_cohort
from cadx.workflows.export import export_dicom, roi_dicom_bytes
from cadx.workflows.features import compute_analytic_features
from db.models import Image, Lesion, Patient, ReviewEvent, Roi, Segmentation

runner = CliRunner()


def _ddsm_with_segmentations(workspace, folder: str) -> None:
    import_ddsm(workspace, folder, user="tester")
    compute_analytic_features(workspace)


def _cli(workspace, *args: str):
    """``cadx ARGS`` on ``workspace`` (its database, whichever engine, paired with its data directory)."""
    return runner.invoke(app, list(args), env={
        "CADX_DATABASE_URL": workspace.engine.url.render_as_string(hide_password=False),
        "CADX_DATA_DIR": str(workspace.data_dir)})


def _dciodvfy_errors(path) -> list[str] | None:
    """dciodvfy's error lines for ``path``; None when dciodvfy is not installed (CI requires it)."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy is missing: scripts/services.sh installs dicom3tools")
        return None
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def _expected_outline_xy(mask, centre_rc, spacing_mm):
    """The outline written by hand: the longest iso-0.5 contour on the ROI grid, in source pixels, as SCOORD."""
    contours = find_contours(np.pad(mask.astype(float), 1), 0.5)
    points = max(contours, key=len) - 1.0
    source = np.asarray(centre_rc) + (points - 255.5) * (0.1 / np.asarray(spacing_mm))
    return (source[:, ::-1] + 0.5).astype(np.float32)


def _stored(workspace):
    """What the database says of every ROI: the rows, the review events and the masks."""
    out = {}
    with workspace.sessions() as session:
        for roi, lesion, image, patient in session.execute(
                select(Roi, Lesion, Image, Patient).join(Lesion, Roi.lesion_id == Lesion.id)
                .join(Image, Roi.image_id == Image.id).join(Patient, Image.patient_id == Patient.id)):
            events = [(e.user, e.at, e.action, e.reason, e.note)
                      for e in session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id == roi.id)
                                               .order_by(ReviewEvent.id))]
            seg = session.scalars(select(Segmentation).where(Segmentation.roi_sha256 == roi.sha256,
                                                             Segmentation.mask_file.is_not(None))
                                  .order_by(Segmentation.id.desc())).first()
            masks = []
            if seg is not None:
                masks.append(("method_b", decode_mask_png(workspace.path(seg.mask_file).read_bytes())))
            masks.append(("reference", decode_mask_png(workspace.path(roi.truth_mask_file).read_bytes())))
            out[roi.id] = {
                "centre": (roi.centre_row, roi.centre_col), "label": lesion.label, "key": lesion.key,
                "laterality": image.laterality, "included": roi.included, "reason": roi.exclusion_reason,
                "events": events, "masks": masks, "shape": (image.rows, image.columns),
                "spacing": (image.pixel_spacing_row_mm, image.pixel_spacing_col_mm),
                "sop": source_uids(patient.source, patient.key, image.sha256)[2]}
    return out


@pytest.mark.slow
def test_sr_and_seg_of_mini_ddsm_read_back_equal_to_the_database(workspace_cache, workspace, mini_ddsm_dir,
                                                                    tmp_path):
    workspace_cache.fill(workspace, _ddsm_with_segmentations, folder=str(mini_ddsm_dir))
    exclude_roi(workspace, 1, reason="compression_paddle", user="alice", note="paddle edge at the top")
    exclude_roi(workspace, 2, reason="other", user="bob", note="a ruler")
    include_roi(workspace, 2, user="carol")
    save_cohort(workspace, "everything", CohortDefinition(review="all"), user="tester")
    stored = _stored(workspace)
    assert len(stored) == 4 and all(len(s["masks"]) == 2 for s in stored.values())  # Method B + the expert's
    out = tmp_path / "out"
    for kind in ("sr", "seg"):
        result = _cli(workspace, "export", kind, "everything", "--out", str(out))
        assert result.exit_code == 0, result.output
        assert f"4 {kind.upper()} file(s) of 4 ROI(s) of cohort everything" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"roi-{i:06d}.{k}.dcm" for i in stored for k in ("sr", "seg"))

    for roi_id, want in stored.items():
        sr_path, seg_path = out / f"roi-{roi_id:06d}.sr.dcm", out / f"roi-{roi_id:06d}.seg.dcm"
        # ---- SR
        sr = hd.sr.srread(sr_path)
        report = sr.content
        (lesion,) = report.get_image_measurement_groups()
        assert lesion.finding_type == codes.SCT.Mass or lesion.finding_type == CADX_CODES["calcification"]
        site = lesion.finding_sites[0]
        assert site.value == codes.SCT.Breast and site.laterality == codes.SCT.Left and want["laterality"] == "L"
        evaluations = {e.name: e.value for e in lesion.get_qualitative_evaluations()}
        assert evaluations[codes.DCM.Pathology] == (codes.SCT.Benign if want["label"] == "benign"
                                                     else codes.SCT.Malignant)
        assert evaluations[CADX_CODES["review_status"]] == CADX_CODES["include" if want["included"] else "exclude"]
        if want["reason"]:
            assert evaluations[CADX_CODES["exclusion_reason"]] == EXCLUSION_REASON_CODES[want["reason"]]
        else:
            assert CADX_CODES["exclusion_reason"] not in evaluations
        items = lesion[0].ContentSequence
        (centre,) = [i for i in items if i.name == codes.DCM.Center]
        row, col = want["centre"]
        assert centre.GraphicType == "POINT"
        np.testing.assert_array_equal(centre.value, np.array([[col + 0.5, row + 0.5]], dtype=np.float32))
        assert centre.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == want["sop"]
        assert [i.value for i in items if i.name == CADX_CODES["lesion_key"]] == [want["key"]]
        decisions = [i for i in items if i.name == CADX_CODES["review_decision"]]
        assert len(decisions) == len(want["events"])
        for item, (user, at, action, reason, note) in zip(decisions, want["events"], strict=True):
            parts = {c.name: c for c in item.ContentSequence}
            assert str(parts[codes.DCM.PersonObserverName].value) == f"{user}^"
            assert parts[Code("111526", "DCM", "DateTime Started")].value \
                .replace(tzinfo=UTC) == at.astimezone(UTC)
            assert parts[CADX_CODES["review_action"]].value == CADX_CODES[action]
            if reason:
                assert parts[CADX_CODES["exclusion_reason"]].value == EXCLUSION_REASON_CODES[reason]
            if note:
                assert parts[codes.DCM.Comment].value == note
        observers = report.get_observer_contexts(observer_type=codes.DCM.Person)
        if want["events"]:
            assert str(observers[0].observer_identifying_attributes.name) == f"{want['events'][-1][0]}^"
        else:
            assert not observers
        outlines = report.get_planar_roi_measurement_groups()
        assert len(outlines) == 2
        for group, (kind, mask) in zip(outlines, want["masks"], strict=True):
            algorithm = [i.value for i in group[0].ContentSequence if i.name == codes.DCM.AlgorithmName]
            assert algorithm == (["cadx Method B"] if kind == "method_b" else [])
            region = group.roi
            assert region.GraphicType == "POLYLINE"
            assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == want["sop"]
            np.testing.assert_array_equal(region.value,
                                          _expected_outline_xy(mask, want["centre"], want["spacing"]))
        assert [sop.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence] == [want["sop"]]
        # ---- SEG
        seg = hd.seg.segread(seg_path)
        assert seg.get_segment_numbers() == [1, 2]
        assert [seg.get_segment_description(n).segment_label.split()[0] for n in (1, 2)] == ["Method", "expert"]
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[want["sop"]], segment_numbers=[1, 2])
        assert pixels.shape == (1, *want["shape"], 2)
        scale = 0.1 / np.asarray(want["spacing"])
        assert np.all(scale > 1 - 1e-9)  # mini-DDSM is stored at 0.1 mm: every ROI pixel has its own source pixel
        positions = [want["centre"][a] + (np.arange(512) - 255.5) * scale[a] for a in (0, 1)]
        picks = [np.ceil(p - 0.5).astype(int) for p in positions]
        inside = [(p >= 0) & (p < n) for p, n in zip(picks, want["shape"], strict=True)]
        for segment, (_, mask) in enumerate(want["masks"]):
            sampled = pixels[0, :, :, segment][np.ix_(picks[0][inside[0]], picks[1][inside[1]])].astype(bool)
            np.testing.assert_array_equal(sampled, mask[np.ix_(inside[0], inside[1])])
            assert pixels[0, :, :, segment].sum() == mask[np.ix_(inside[0], inside[1])].sum()  # nothing else set
        for path in (sr_path, seg_path):
            errors = _dciodvfy_errors(path)
            if errors is not None:
                assert errors == [], f"{path.name}: {errors}"


def test_mask_on_a_coarser_source_takes_the_nearest_roi_pixel():
    """MIAS-like 0.2 mm source: a source pixel holds the ROI pixel nearest its centre (written out by hand)."""
    rng = np.random.default_rng(3)
    mask = rng.random((512, 512)) > 0.5
    centre, spacing, shape = (100.3, 140.0), (0.2, 0.25), (300, 310)
    got = mask_to_source(mask, centre_rc=centre, spacing_mm=spacing, shape=shape)
    want = np.zeros(shape, bool)
    for r in range(shape[0]):
        i = int(np.floor((r - centre[0]) * spacing[0] / 0.1 + 255.5 + 0.5))
        for c in range(shape[1]):
            j = int(np.floor((c - centre[1]) * spacing[1] / 0.1 + 255.5 + 0.5))
            if 0 <= i < 512 and 0 <= j < 512:
                want[r, c] = mask[i, j]
    np.testing.assert_array_equal(got, want)


def test_every_exclusion_reason_has_a_code_of_at_most_16_characters():
    assert set(EXCLUSION_REASON_CODES) == set(words.EXCLUSION_REASONS)
    assert all(len(code.value) <= 16 for code in [*EXCLUSION_REASON_CODES.values(), *CADX_CODES.values()])


@pytest.fixture
def demo(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=3, seed=4)
    return workspace


def test_one_roi_as_bytes_for_the_download(demo):
    exclude_roi(demo, 1, reason="location_marker", user="dora")
    files = roi_dicom_bytes(demo, 1)
    assert set(files) == {"sr", "seg"}  # the phantom's truth is a segment
    from io import BytesIO

    sr = hd.sr.srread(BytesIO(files["sr"][1]))
    (lesion,) = sr.content.get_image_measurement_groups()
    values = {e.name: e.value for e in lesion.get_qualitative_evaluations()}
    assert values[CADX_CODES["exclusion_reason"]] == EXCLUSION_REASON_CODES["location_marker"]
    seg = hd.seg.segread(BytesIO(files["seg"][1]))
    assert seg.get_segment_description(1).segment_label == "synthetic phantom truth"
    assert files["sr"][0] == "roi-000001.sr.dcm" and files["seg"][0] == "roi-000001.seg.dcm"


def test_bad_targets_and_out_folders_are_refused_with_nothing_written(demo, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CadxInputError, match="experiment 999: no such experiment"):
        export_dicom(demo, "sr", "999", out)
    with pytest.raises(CadxInputError, match="cohort 'nope': no such cohort"):
        export_dicom(demo, "seg", "nope", out)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(CadxInputError, match="is a file, not a folder"):
        export_dicom(demo, "sr", "all", a_file)
    with pytest.raises(CadxInputError, match="unknown export"):
        export_dicom(demo, "pdf", "all", out)
    assert not out.exists() and a_file.read_text() == "x"
    result = _cli(demo, "export", "sr", "nope", "--out", str(out))
    assert result.exit_code == 2 and "no such cohort" in result.output and not out.exists()
