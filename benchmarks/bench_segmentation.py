"""Check: how well does Method B's seeded segmentation agree with the expert's outline on real DDSM lesions?

Imports ``../shared/data/mini-ddsm`` (or ``$CADX_SHARED_DATA/mini-ddsm``) with ``cadx import ddsm`` into a fresh
workspace, runs ``cadx features`` (Method B, the current ``cadx.analytic.FEATURES_VERSION``) and scores each ROI's
segmentation against its DDSM outline (``cadx.workflows.features.segmentation_scores``): Dice and mean boundary
distance in mm, per ROI, then the median and interquartile range over ROIs and by lesion type.

``--compare`` also segments the same ROIs with the settings of the previous feature version (analytic-1.0: size
prior R0 = 15 mm) to show the change made for issue 27.3 before/after. ``--phantoms N`` adds the same comparison on
N SYNTHETIC demo lesions (both views; their true outlines are known), so a change that helps the real outlines can
be seen not to hurt elsewhere. ``--json`` writes every number.

Accuracy, not speed: nothing here depends on the machine's load.

Usage::

    python benchmarks/bench_segmentation.py [--compare] [--phantoms 30] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cadx.analytic import FEATURES_VERSION, segment_lesion  # noqa: E402
from cadx.outline import decode_mask_png  # noqa: E402
from cadx.segscore import score_segmentation, score_summary  # noqa: E402
from cadx.workflows import import_ddsm, open_workspace  # noqa: E402
from cadx.workflows.features import compute_analytic_features, segmentation_scores  # noqa: E402

#: The settings of the previous feature version, for --compare (see cadx.analytic's version history).
PREVIOUS = ("analytic-1.0", {"size_prior_mm": 15.0})


def _summary_line(name: str, summary: dict[str, Any]) -> str:
    def f(key: str, spec: str) -> str:
        value = summary[key]
        return "-" if value is None else format(value, spec)

    return (f"{name:<34} n={summary['n']:<3} Dice median {f('dice_median', '.3f')} "
            f"(IQR {f('dice_q1', '.3f')}-{f('dice_q3', '.3f')}), boundary median {f('boundary_mm_median', '.2f')} mm "
            f"(IQR {f('boundary_mm_q1', '.2f')}-{f('boundary_mm_q3', '.2f')} mm)")


def _ddsm(shared: Path, work: Path, compare: bool) -> dict[str, Any]:
    workspace = open_workspace(work / "data", f"sqlite:///{work / 'cadx.sqlite'}")  # fresh, whatever the environment
    report = import_ddsm(workspace, shared / "mini-ddsm", user="bench")
    if not report.committed:
        raise SystemExit(f"the mini-DDSM import failed: {[(i.name, i.reason) for i in report.errors]}")
    compute_analytic_features(workspace)
    scores = segmentation_scores(workspace)
    from sqlalchemy import select

    from cadx.roi import decode_png16
    from db.models import Lesion, Roi

    with workspace.sessions() as session:
        rows = {r.id: (r.file, r.truth_mask_file, t) for r, t in session.execute(
            select(Roi, Lesion.lesion_type).join(Lesion, Roi.lesion_id == Lesion.id))}
    out: dict[str, Any] = {"version": FEATURES_VERSION, "rois": [], "by_type": {}}
    print(f"mini-DDSM: {len(scores)} ROIs with an expert outline; Method B {FEATURES_VERSION}")
    print(f"{'ROI':>4} {'lesion':<18} {'type':<14} {'Dice':>6} {'boundary mm':>12}"
          + (f" {'Dice ' + PREVIOUS[0]:>18} {'boundary ' + PREVIOUS[0]:>22}" if compare else ""))
    previous: list[tuple[float, float | None]] = []
    for s in scores:
        roi_file, truth_file, lesion_type = rows[s.roi_id]
        entry = {**s.to_dict(), "lesion_type": lesion_type}
        boundary = float("nan") if s.boundary_mm is None else s.boundary_mm
        line = f"{s.roi_id:>4} {s.lesion_key:<18} {lesion_type:<14} {s.dice:>6.3f} {boundary:>12.2f}"
        if compare:
            pixels = decode_png16(workspace.path(roi_file).read_bytes())
            truth = decode_mask_png(workspace.path(truth_file).read_bytes())
            old = score_segmentation(segment_lesion(pixels, pixel_size_mm=0.1, **PREVIOUS[1]).mask, truth,
                                     pixel_size_mm=0.1)
            previous.append((old.dice, old.boundary_mm))
            entry["previous"] = {"version": PREVIOUS[0], "dice": old.dice, "boundary_mm": old.boundary_mm}
            line += f" {old.dice:>18.3f} {old.boundary_mm or float('nan'):>22.2f}"
        out["rois"].append(entry)
        print(line)
    out["summary"] = score_summary([s.dice for s in scores], [s.boundary_mm for s in scores])
    print(_summary_line(f"all ({FEATURES_VERSION})", out["summary"]))
    for lesion_type in sorted({e["lesion_type"] for e in out["rois"]}):
        picked = [e for e in out["rois"] if e["lesion_type"] == lesion_type]
        out["by_type"][lesion_type] = score_summary([e["dice"] for e in picked], [e["boundary_mm"] for e in picked])
        print(_summary_line(f"{lesion_type} ({FEATURES_VERSION})", out["by_type"][lesion_type]))
    if compare:
        out["previous_summary"] = score_summary([d for d, _ in previous], [b for _, b in previous])
        print(_summary_line(f"all ({PREVIOUS[0]}, before)", out["previous_summary"]))
    return out


def _phantoms(n_lesions: int) -> dict[str, Any]:
    """Current vs previous settings on SYNTHETIC demo phantoms against their true outlines."""
    from cadx.phantoms import demo_dataset
    from cadx.roi import crop_mask, crop_roi

    now: list[Any] = []
    before: list[Any] = []
    for lesion in demo_dataset(n_lesions=n_lesions, seed=11):
        for view in lesion.views:
            roi = crop_roi(view.image, value_range=view.value_range, centre_rc=view.centre_rc,
                           pixel_spacing_mm=view.pixel_spacing_mm).pixels
            truth = crop_mask(view.true_mask, centre_rc=view.centre_rc, pixel_spacing_mm=view.pixel_spacing_mm)
            now.append(score_segmentation(segment_lesion(roi).mask, truth, pixel_size_mm=0.1))
            before.append(score_segmentation(segment_lesion(roi, **PREVIOUS[1]).mask, truth, pixel_size_mm=0.1))
    out = {"now": score_summary([s.dice for s in now], [s.boundary_mm for s in now]),
           "previous": score_summary([s.dice for s in before], [s.boundary_mm for s in before])}
    print(f"SYNTHETIC demo phantoms ({n_lesions} lesions, seed 11), against their true outlines:")
    print(_summary_line(f"SYNTHETIC ({FEATURES_VERSION})", out["now"]))
    print(_summary_line(f"SYNTHETIC ({PREVIOUS[0]}, before)", out["previous"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help=f"also score {PREVIOUS[0]}'s settings (before)")
    parser.add_argument("--phantoms", type=int, default=0, help="also compare on N SYNTHETIC demo lesions")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    shared = Path(os.environ.get("CADX_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (shared / "mini-ddsm").is_dir():
        print(f"mini-DDSM not found at {shared / 'mini-ddsm'} (set CADX_SHARED_DATA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cadx-bench-seg-") as work:
        results: dict[str, Any] = {"mini_ddsm": _ddsm(shared, Path(work), args.compare)}
    if args.phantoms:
        results["phantoms"] = _phantoms(args.phantoms)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
