"""The ROIs whose segmentations are pinned bit for bit in ``tests/reference/segmentation_fingerprints.json``.

The reference file was written by the single-function ``segment_lesion`` before it was split into named steps
(``python -m tests.segmentation_cases`` rewrites it; only do that for an intended change of the algorithm). Cases:
SYNTHETIC demo phantoms (first view of 8 lesions), edge cases (flat, seed in padding, off-centre seed) and three
real MIAS ROIs (mdb001, mdb010, mdb023; skipped or failed as the shared-data fixture decides).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cadx.analytic import Segmentation, segment_lesion
from cadx.phantoms import demo_dataset
from cadx.roi import crop_roi

__all__ = ["REFERENCE", "fingerprint", "mias_cases", "synthetic_cases"]

REFERENCE = Path(__file__).resolve().parent / "reference" / "segmentation_fingerprints.json"


def fingerprint(seg: Segmentation) -> dict[str, Any]:
    """Everything a segmentation returns, exactly: the mask's SHA-256 and the floats' ``repr``."""
    return {"mask_sha256": hashlib.sha256(np.ascontiguousarray(seg.mask).tobytes()).hexdigest(),
            "mask_pixels": int(np.count_nonzero(seg.mask)), "quality": seg.quality, "reason": seg.reason,
            "flags": list(seg.flags), "threshold": repr(seg.threshold),
            "constraint_sigma_mm": repr(seg.constraint_sigma_mm), "arg": repr(seg.arg),
            "contrast_to_noise": repr(seg.contrast_to_noise), "seed_rc": [repr(v) for v in seg.seed_rc]}


def synthetic_cases() -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """(name, ROI, segment_lesion options) of the SYNTHETIC cases."""
    for i, lesion in enumerate(demo_dataset(n_lesions=8, seed=3)):
        view = lesion.views[0]
        roi = crop_roi(view.image, value_range=view.value_range, centre_rc=view.centre_rc,
                       pixel_spacing_mm=view.pixel_spacing_mm).pixels
        yield f"phantom{i}-{lesion.morphology}", roi, {}
        if i == 0:
            yield "phantom0-off-centre-seed", roi, {"centre_rc": (200.0, 330.0)}
            yield "phantom0-0.2mm", roi, {"pixel_size_mm": 0.2}
            padded = roi.copy()
            padded[:, :200] = 0
            yield "phantom0-seed-in-padding", padded, {"centre_rc": (255.5, 100.0)}
            yield "phantom0-padding-beside", padded, {}
    yield "flat", np.full((64, 64), 1000, np.uint16), {}
    yield "float-roi", np.linspace(0.0, 1.0, 128 * 128).reshape(128, 128) ** 2, {}


def mias_cases(mias_dir: Path) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """(name, ROI, options) of three real MIAS ROIs."""
    from cadx.io import read_raster
    from cadx.sources import parse_mias_info

    findings, _ = parse_mias_info(mias_dir / "Info.txt")
    by_ref = {finding.refnum: finding for finding in findings if finding.index == 1}
    for refnum in ("mdb001", "mdb010", "mdb023"):
        finding = by_ref[refnum]
        mammogram = read_raster(mias_dir / f"{refnum}.pgm", pixel_spacing_mm=0.2)
        roi = crop_roi(mammogram.pixels, centre_rc=finding.centre_rc, pixel_spacing_mm=0.2,
                       value_range=mammogram.value_range).pixels
        yield f"mias-{refnum}", roi, {}


def _write(mias_dir: Path) -> None:
    cases = [*synthetic_cases(), *mias_cases(mias_dir)]
    reference = {name: fingerprint(segment_lesion(roi, **options)) for name, roi, options in cases}
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    from tests.conftest import SHARED_DATA

    _write(SHARED_DATA / "mini-mias" / "all-mias")
