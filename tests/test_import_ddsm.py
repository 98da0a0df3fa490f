"""DDSM in its own format (issue 27.2): the real mini-DDSM cases (../shared/data/mini-ddsm), and small cases the tests
write themselves (labelled synthetic in their names) for the pixel-size rule and the bad inputs; Method B scored
against the imported outline (issue 27.3)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select
from typer.testing import CliRunner

from cadx.cli import app
from cadx.ddsm import chain_points, parse_ics, parse_overlay
from cadx.outline import decode_mask_png
from cadx.workflows import import_ddsm
from cadx.workflows.features import segmentation_scores
from cadx.workflows.storage import encode_mask_png
from db.models import Image, ImportRun, Lesion, Patient, Roi, Segmentation

runner = CliRunner()


def _counts(workspace) -> dict[str, int]:
    with workspace.sessions() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Patient, Lesion, Image, Roi, ImportRun)}


def _stored_files(workspace) -> list[str]:
    return sorted(p.relative_to(workspace.data_dir).as_posix() for sub in ("rois", "truth")
                  for p in (workspace.data_dir / sub).rglob("*.png"))


def _shoelace_mm2(points_rc: np.ndarray, pixel_mm: float) -> float:
    rows, cols = points_rc[:, 0].astype(float), points_rc[:, 1].astype(float)
    return 0.5 * abs(np.dot(cols, np.roll(rows, -1)) - np.dot(rows, np.roll(cols, -1))) * pixel_mm ** 2


# ------------------------------------------------------------------------------------------- the real cases ---
@pytest.mark.slow
def test_mini_ddsm_imports_two_lesions_of_four_rois_with_their_outlines(workspace, mini_ddsm_dir):
    report = import_ddsm(workspace, mini_ddsm_dir, user="tester")

    assert report.committed and report.n_errors == 0 and report.n_imported == 4, report.to_dict()
    with workspace.sessions() as session:
        lesions = {lesion.key: lesion for lesion in session.scalars(select(Lesion))}
        assert sorted(lesions) == ["C-0029-1/LEFT/1", "C-0238-1/LEFT/1"]
        mass, calcification = lesions["C-0029-1/LEFT/1"], lesions["C-0238-1/LEFT/1"]
        assert (mass.lesion_type, mass.label) == ("mass", "benign")
        assert (mass.truth["shape"], mass.truth["margins"]) == ("OVAL", "ILL_DEFINED")
        assert (calcification.lesion_type, calcification.label) == ("calcification", "benign")
        assert calcification.truth["distribution"] == "CLUSTERED"
        assert sorted(r.image.view for r in mass.rois) == ["CC", "MLO"]  # two views of one lesion
        assert all(r.image.laterality == "L" for r in mass.rois + calcification.rois)
        rois = session.scalars(select(Roi).order_by(Roi.id)).all()
        assert len(rois) == 4 and all(r.truth_mask_file for r in rois)
        images = {r.image.source_name: r.image for r in rois}
        cc = images["C-0029-1/C_0029_1.LEFT_CC.jpg"]
        # 2672 x 4648 at 50 micron stored as 1336 x 2324: 0.1 mm per pixel, derived, not assumed
        assert (cc.rows, cc.columns) == (2324, 1336)
        assert cc.pixel_spacing_row_mm == pytest.approx(0.1) and cc.pixel_spacing_col_mm == pytest.approx(0.1)
        cc_roi = next(r for r in rois if r.image is cc)
        cc_roi_id = cc_roi.id
        # the centre is the outline's centroid: inside the drawn outline's box (README: rows 927-1264, cols 187-595)
        assert 927 < cc_roi.centre_row < 1264 and 187 < cc_roi.centre_col < 595
        truth_files = {r.image.source_name: r.truth_mask_file for r in rois}
        # identifying data of the .ics file is never stored
        stored = json.dumps([lesion.truth for lesion in lesions.values()]
                            + [image.header for image in images.values()]
                            + [image.pixel_spacing_source for image in images.values()])
        assert "1993" not in stored and "AGE" not in stored.upper() and "DATE" not in stored.upper()
    # the stored reference outline (ROI grid, 0.1 mm) encloses the chain code's own area
    ics = parse_ics(mini_ddsm_dir / "0029" / "C-0029-1.ics")
    boundary = parse_overlay(mini_ddsm_dir / "0029" / "C_0029_1.LEFT_CC.OVERLAY")[0].boundary
    expected_mm2 = _shoelace_mm2(chain_points(boundary), ics.views["LEFT_CC"].micron / 1000)
    mask = decode_mask_png(workspace.path(truth_files["C-0029-1/C_0029_1.LEFT_CC.jpg"]).read_bytes())
    assert mask is not None and mask.sum() * 0.01 == pytest.approx(expected_mm2, rel=0.02)

    # a real dataset's outline is named as the expert's, never as a synthetic phantom's truth (Predictions, Review)
    from cadx.workflows.results import roi_overlay

    _, info = roi_overlay(workspace, cc_roi_id)
    assert info["has_truth_outline"] and info["truth_outline"].startswith("the expert's outline")

    again = import_ddsm(workspace, mini_ddsm_dir, user="tester")
    assert again.n_imported == 0 and again.n_skipped == 4  # importing twice adds nothing


@pytest.mark.slow
def test_cli_imports_mini_ddsm_and_scores_the_segmentation_per_roi(tmp_path, mini_ddsm_dir):
    data = tmp_path / "data"
    result = runner.invoke(app, ["import", "ddsm", str(mini_ddsm_dir), "--data-dir", str(data), "--user", "tester"])
    assert result.exit_code == 0, result.output
    assert "4 imported, 0 skipped, 0 errors" in result.output
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["features", "--report", "--json", str(out), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert len(scores["rois"]) == 4 and {e["reference"] for e in scores["rois"]} == {"expert outline"}
    for entry in scores["rois"]:
        assert 0.0 <= entry["dice"] <= 1.0 and entry["boundary_mm"] >= 0.0
    assert scores["summary"]["n"] == 4
    assert scores["summary"]["dice_median"] == pytest.approx(float(np.median([e["dice"] for e in scores["rois"]])))
    text = " ".join(result.output.split())
    assert "Method B segmentation against the reference outline (4 ROIs)" in text and "Dice median" in text


# --------------------------------------------------------------------------------- cases the tests write ---
def _disc_chain(centre_rc: tuple[int, int], radius: float) -> tuple[tuple[int, int], list[int]]:
    """A chain code tracing a digital circle (clockwise on screen): start (row, col) and directions."""
    steps = {(-1, 0): 0, (-1, 1): 1, (0, 1): 2, (1, 1): 3, (1, 0): 4, (1, -1): 5, (0, -1): 6, (-1, -1): 7}
    angles = np.linspace(0.0, 2 * np.pi, 20000, endpoint=False)
    points = [(int(round(centre_rc[0] - radius * np.cos(a))), int(round(centre_rc[1] + radius * np.sin(a))))
              for a in angles]
    path = [points[0]]
    for point in points[1:] + [points[0]]:
        if point != path[-1]:
            path.append(point)
    directions = [steps[(b[0] - a[0], b[1] - a[1])] for a, b in zip(path, path[1:], strict=False)]
    return path[0], directions


def _write_case(folder, *, case="C-9001-1", original=(4000, 3000), stored=(1000, 750), resolution="50",
                digitizer="LUMISYS LASER", chain=None, pathology="MALIGNANT", views=("LEFT_CC",),
                write_ics=True, write_image=True, disc_mm=8.0):
    """A small DDSM case folder (synthetic: a bright disc on a dark breast), in DDSM's own file layout."""
    folder.mkdir(parents=True, exist_ok=True)
    number = case[2:6]
    resolution_words = f" RESOLUTION {resolution}" if resolution is not None else ""
    lines = ["ics_version 1.0", f"filename {case}", "DATE_OF_STUDY 2 3 1993", "PATIENT_AGE 66",
             f"DIGITIZER {digitizer}", "SEQUENCE"]
    for view in ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO"):
        lines.append(f"{view} LINES {original[0]} PIXELS_PER_LINE {original[1]} BITS_PER_PIXEL 12{resolution_words}"
                     f" {'OVERLAY' if view in views else 'NON_OVERLAY'}")
    if write_ics:
        (folder / f"{case}.ics").write_text("\n".join(lines) + "\n")
    centre = (original[0] // 2, original[1] // 2)
    micron = float(resolution) if resolution is not None else 43.5
    radius_px = disc_mm * 1000 / micron
    start, directions = chain if chain is not None else _disc_chain(centre, radius_px)
    for view in views:
        stem = f"C_{number}_1.{view}"
        (folder / f"{stem}.OVERLAY").write_text(
            "TOTAL_ABNORMALITIES 1\nABNORMALITY 1\nLESION_TYPE MASS SHAPE ROUND MARGINS CIRCUMSCRIBED\n"
            f"ASSESSMENT 4\nSUBTLETY 4\nPATHOLOGY {pathology}\nTOTAL_OUTLINES 1\nBOUNDARY\n"
            f"{start[1]} {start[0]} {' '.join(map(str, directions))} #\n")
        if write_image:
            rows, cols = np.mgrid[0:stored[0], 0:stored[1]]
            scale = stored[0] / original[0], stored[1] / original[1]
            r = np.hypot((rows + 0.5) / scale[0] - centre[0], (cols + 0.5) / scale[1] - centre[1])
            pixels = np.where(r < radius_px, 200, 90).astype(np.uint8)
            PILImage.fromarray(pixels, mode="L").save(folder / f"{stem}.jpg", quality=95)
    return folder


def test_pixel_size_is_resolution_times_original_over_stored_size(workspace, tmp_path):
    # HOWTEK without a RESOLUTION field: 43.5 micron; 4000 x 3000 stored as 1000 x 750: 0.174 mm pixels
    _write_case(tmp_path / "synthetic" / "9001", resolution=None, digitizer="HOWTEK MULTIRAD 850")
    report = import_ddsm(workspace, tmp_path / "synthetic", user="tester")
    assert report.committed and report.n_imported == 1, report.to_dict()
    with workspace.sessions() as session:
        image = session.scalar(select(Image))
        assert image.pixel_spacing_row_mm == pytest.approx(0.0435 * 4)
        assert image.pixel_spacing_col_mm == pytest.approx(0.0435 * 4)
        lesion = session.scalar(select(Lesion))
        assert lesion.label == "malignant" and lesion.size_mm == pytest.approx(16.0, abs=0.5)
        roi = session.scalar(select(Roi))
        truth = decode_mask_png(workspace.path(roi.truth_mask_file).read_bytes())
    # an 8 mm disc on the 0.1 mm ROI grid
    assert truth is not None and truth.sum() * 0.01 == pytest.approx(math.pi * 8.0 ** 2, rel=0.03)
    # before any segmentation, the review's ROI view draws the expert's outline, called that (not a phantom's truth)
    from cadx.workflows import RoiFilters, browse_rois, roi_outline

    (row,) = browse_rois(workspace, RoiFilters()).rows
    outline = roi_outline(workspace, row)
    assert outline is not None and outline.kind == "truth" and outline.description.startswith("the expert's outline")


@pytest.mark.parametrize("case", ["no_ics", "chain_leaves_image", "view_without_image", "outline_missing"])
def test_bad_ddsm_inputs_are_item_errors_naming_the_file_and_the_fix_with_nothing_written(workspace, tmp_path,
                                                                                         case):
    root = tmp_path / "synthetic-ddsm"
    _write_case(root / "9001")  # a good case beside the bad one: the import is all or nothing
    if case == "no_ics":
        _write_case(root / "9002", case="C-9002-1", write_ics=False)
        expected = ("9002/", ".ics", "Fix: put the case's own C-NNNN-N.ics")
    elif case == "chain_leaves_image":
        _write_case(root / "9002", case="C-9002-1", chain=((3990, 1500), [4] * 20 + [2] * 5 + [0] * 20))
        expected = ("9002/C_9002_1.LEFT_CC.OVERLAY", "leaves the 4000 x 3000 image", "Fix: restore the .OVERLAY")
    elif case == "view_without_image":
        _write_case(root / "9002", case="C-9002-1", write_image=False)
        expected = ("9002/C_9002_1.LEFT_CC.OVERLAY", "C_9002_1.LEFT_CC.jpg is not in 9002/", "Fix: copy the view's")
    else:  # the .ics says the view has an outline, but its .OVERLAY file is gone: an expert outline is not lost quietly
        (_write_case(root / "9002", case="C-9002-1") / "C_9002_1.LEFT_CC.OVERLAY").unlink()
        expected = ("9002/C-9002-1.ics", "LEFT_CC has an outline (OVERLAY), but no", "Fix: copy the view's .OVERLAY")
    before = _counts(workspace)

    report = import_ddsm(workspace, root, user="tester")

    assert not report.committed and report.n_errors == 1
    error = report.errors[0]
    assert error.name.startswith(expected[0]) and expected[1] in error.reason and expected[2] in error.reason
    assert _counts(workspace) == before and _stored_files(workspace) == []
    skipped = import_ddsm(workspace, root, user="tester", skip_errors=True)
    assert skipped.committed and skipped.n_imported == 1  # the good case alone, when asked


# ------------------------------------------------------------------------- scored against the expert ---
def _disc(shape: tuple[int, int], centre_rc: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(rows - centre_rc[0], cols - centre_rc[1]) <= radius


@pytest.mark.parametrize("shift_px", [0, 20, 60])
def test_a_segmentation_off_the_imported_outline_by_a_known_shift_scores_the_dice_of_two_discs(workspace, tmp_path,
                                                                                               shift_px):
    """Outline: an 8 mm disc (80 ROI pixels). Segmentation: the same disc shifted by d. Two discs of radius r whose
    centres are d apart overlap by 2 r^2 acos(d / 2r) - (d / 2) sqrt(4 r^2 - d^2), so Dice = overlap / (pi r^2)."""
    _write_case(tmp_path / "synthetic" / "9001", original=(4000, 3000), stored=(2000, 1500))  # 0.1 mm pixels
    assert import_ddsm(workspace, tmp_path / "synthetic", user="tester").committed
    with workspace.sessions.begin() as session:
        roi = session.scalar(select(Roi))
        truth = decode_mask_png(workspace.path(roi.truth_mask_file).read_bytes())
        assert truth is not None
        rows, cols = np.nonzero(truth)
        centre = (float(rows.mean()), float(cols.mean()))
        radius = math.sqrt(truth.sum() / math.pi)
        mask_file = "segmentations/test/shifted.png"
        workspace.path(mask_file).parent.mkdir(parents=True, exist_ok=True)
        workspace.path(mask_file).write_bytes(encode_mask_png(_disc(truth.shape, (centre[0], centre[1] + shift_px),
                                                                    radius)))
        from cadx.analytic import FEATURES_VERSION

        session.add(Segmentation(roi_sha256=roi.sha256, version=FEATURES_VERSION, quality="ok", mask_file=mask_file,
                                 features={}, seconds=0.0))
    r, d = 80.0, float(shift_px)
    expected = (2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)) / (math.pi * r * r)

    (score,) = segmentation_scores(workspace)

    assert radius == pytest.approx(r, rel=0.01)
    assert score.reference == "expert outline" and score.dice == pytest.approx(expected, abs=0.01)


def test_a_failed_segmentation_of_an_outlined_lesion_scores_dice_zero(workspace, tmp_path):
    """The expert saw a lesion where Method B found none: it counts, as Dice 0 with no boundary to measure."""
    from cadx.analytic import FEATURES_VERSION

    _write_case(tmp_path / "synthetic" / "9001")
    assert import_ddsm(workspace, tmp_path / "synthetic", user="tester").committed
    with workspace.sessions.begin() as session:
        roi = session.scalar(select(Roi))
        session.add(Segmentation(roi_sha256=roi.sha256, version=FEATURES_VERSION, quality="failed", mask_file=None,
                                 features={}, seconds=0.0))

    (score,) = segmentation_scores(workspace)

    assert score.quality == "failed" and score.dice == 0.0 and score.boundary_mm is None
    assert score.reference_mm2 == pytest.approx(math.pi * 8.0 ** 2, rel=0.03)
    assert segmentation_scores(workspace, version="another-version") == []  # scored per feature version

