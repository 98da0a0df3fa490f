"""DDSM in its own format: the ``.ics`` case file and the ``.OVERLAY`` chain-code outlines (Heath et al., IWDM 2000).

Pure parsing and geometry, as in :mod:`cadx.sources`: text in, validated records out, and an outline turned into a
filled mask at the size the view is stored at. No image is read here (the importer,
:func:`cadx.workflows.datasets.import_ddsm`, reads the views).

The ``.ics`` file gives the digitizer and, per view, its **original** size (``LINES`` rows x ``PIXELS_PER_LINE``
columns) and ``RESOLUTION`` in micron. Distributions such as mini-DDSM store the views downsampled, so the pixel
size of a stored view is ``RESOLUTION x original size / stored size`` per axis (:func:`stored_pixel_mm`).
The ``.ics`` file also holds the study date and the patient's age: identifying data, never kept by the parser.

An ``.OVERLAY`` file holds one block per abnormality: ``LESION_TYPE`` (``MASS SHAPE .. MARGINS ..`` or
``CALCIFICATION TYPE .. DISTRIBUTION ..``), ``ASSESSMENT``, ``SUBTLETY``, ``PATHOLOGY``, ``TOTAL_OUTLINES`` and then
``BOUNDARY`` (and for some lesions ``CORE``) outlines, each a chain code: start column, start row in original
pixels, then directions 0-7 (0 up, clockwise to 7 up-left) ending with ``#``.

Every malformed value raises :class:`cadx.errors.ManifestError` naming the file, the abnormality and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from skimage.draw import polygon2mask

from cadx.errors import CadxInputError, ManifestError
from cadx.labels import label_name

__all__ = [
    "DIGITIZER_MICRON",
    "CHAIN_STEPS",
    "IcsView",
    "IcsCase",
    "ChainCode",
    "OverlayAbnormality",
    "parse_ics",
    "parse_overlay",
    "chain_points",
    "outline_mask",
    "stored_pixel_mm",
    "VIEW_NAMES",
]

#: Sampling of DDSM's digitizers in micron, for ``.ics`` files whose view lines lack ``RESOLUTION``.
DIGITIZER_MICRON: Final = {"LUMISYS": 50.0, "HOWTEK": 43.5, "DBA": 42.0}

#: (row, column) step of each chain-code direction: 0 up, then clockwise in 45-degree steps.
CHAIN_STEPS: Final = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))

#: The four views of a DDSM case, as the ``.ics`` file and the file names spell them.
VIEW_NAMES: Final = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")

_ICS_FIX = "restore the case's .ics file from the DDSM distribution"
_OVERLAY_FIX = "restore the .OVERLAY file from the DDSM distribution"


@dataclass(frozen=True)
class IcsView:
    """One view line of an ``.ics`` file."""

    name: str  # LEFT_CC, ...
    lines: int  # original rows
    pixels_per_line: int  # original columns
    bits_per_pixel: int | None
    micron: float  # original pixel size
    micron_source: str  # "RESOLUTION" or "DIGITIZER <name>"
    has_overlay: bool

    @property
    def side(self) -> str:
        return self.name.split("_")[0]

    @property
    def view(self) -> str:
        return self.name.split("_")[1]


@dataclass(frozen=True)
class IcsCase:
    """What cadx keeps of an ``.ics`` case file (never the study date or the age)."""

    path: Path
    case: str  # "C-0029-1", from the file's ``filename`` line (else its name)
    digitizer: str
    views: dict[str, IcsView]


@dataclass(frozen=True)
class ChainCode:
    """One outline: its start (row, column) in original pixels and its directions."""

    kind: str  # BOUNDARY or CORE
    start_rc: tuple[int, int]
    directions: tuple[int, ...]


@dataclass(frozen=True)
class OverlayAbnormality:
    """One abnormality block of an ``.OVERLAY`` file."""

    path: Path
    number: int
    lesion_type: str  # MASS | CALCIFICATION (as written)
    descriptors: dict[str, str]  # SHAPE/MARGINS for masses, TYPE/DISTRIBUTION for calcifications
    assessment: int | None
    subtlety: int | None
    pathology: str  # as written: BENIGN, MALIGNANT, BENIGN_WITHOUT_CALLBACK, ...
    label: str  # benign | malignant
    outlines: tuple[ChainCode, ...]

    @property
    def boundary(self) -> ChainCode:
        """The outline of the abnormality (the first ``BOUNDARY``; ``CORE`` outlines mark its centre part)."""
        return next(o for o in self.outlines if o.kind == "BOUNDARY")

    @property
    def description(self) -> str:
        """E.g. ``"MASS SHAPE OVAL MARGINS ILL_DEFINED"``: the type with its shape and margins as DDSM spells them."""
        return " ".join([self.lesion_type, *(f"{k} {v}" for k, v in self.descriptors.items())])


_VIEW_LINE = re.compile(r"^(LEFT|RIGHT)_(CC|MLO)\b(.*)$")


def parse_ics(path: str | Path) -> IcsCase:
    """Parse a DDSM ``.ics`` case file: the digitizer and each view's original size and pixel size.

    The study date and the patient's age are read past and never returned.
    """
    path = Path(path)
    text = _read_text(path, "point the import at the DDSM case folders (each holds one C-NNNN-N.ics file)")
    case = path.stem
    digitizer = ""
    views: dict[str, IcsView] = {}
    for line_number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        words = line.split()
        if not words:
            continue
        if words[0] == "filename" and len(words) > 1:
            case = words[1]
        elif words[0] == "DIGITIZER":
            digitizer = " ".join(words[1:])
        match = _VIEW_LINE.match(line)
        if match:
            views[f"{match.group(1)}_{match.group(2)}"] = _ics_view(path, line_number, line, digitizer)
    if not views:
        raise ManifestError(str(path), "no view lines (LEFT_CC LINES ... PIXELS_PER_LINE ...)", _ICS_FIX)
    return IcsCase(path=path, case=case, digitizer=digitizer, views=views)


def _ics_view(path: Path, line_number: int, line: str, digitizer: str) -> IcsView:
    words = line.split()
    name = words[0]
    where = f"{path}, line {line_number} ({name})"
    values: dict[str, str] = {}
    for key, value in zip(words[1:], words[2:], strict=False):
        if key in ("LINES", "PIXELS_PER_LINE", "BITS_PER_PIXEL", "RESOLUTION"):
            values[key] = value
    try:
        lines, columns = int(values["LINES"]), int(values["PIXELS_PER_LINE"])
        bits = int(values["BITS_PER_PIXEL"]) if "BITS_PER_PIXEL" in values else None
    except (KeyError, ValueError):
        raise ManifestError(where, "LINES or PIXELS_PER_LINE is missing or not a whole number", _ICS_FIX) from None
    if lines <= 0 or columns <= 0:
        raise ManifestError(where, f"original size {lines} x {columns} is not positive", _ICS_FIX)
    if "RESOLUTION" in values:
        try:
            micron = float(values["RESOLUTION"])
        except ValueError:
            micron = math.nan
        source = "RESOLUTION"
    else:
        known = next((m for name_, m in DIGITIZER_MICRON.items() if name_ in digitizer.upper()), None)
        if known is None:
            raise ManifestError(where, f"no RESOLUTION, and the digitizer {digitizer or '(none)'!r} is not one of "
                                f"DDSM's ({', '.join(DIGITIZER_MICRON)})", "add RESOLUTION (micron) to the view line")
        micron, source = known, f"DIGITIZER {digitizer}"
    if not math.isfinite(micron) or not 1.0 <= micron <= 1000.0:
        raise ManifestError(where, f"RESOLUTION {values.get('RESOLUTION')!r} is not a pixel size in micron",
                            "give RESOLUTION in micron (LUMISYS 50, HOWTEK 43.5, DBA 42)")
    has_overlay = "OVERLAY" in words[1:] and "NON_OVERLAY" not in words[1:]
    return IcsView(name=name, lines=lines, pixels_per_line=columns, bits_per_pixel=bits, micron=micron,
                   micron_source=source, has_overlay=has_overlay)


def parse_overlay(path: str | Path) -> list[OverlayAbnormality]:
    """Parse a DDSM ``.OVERLAY`` file: one :class:`OverlayAbnormality` per ``ABNORMALITY`` block."""
    path = Path(path)
    text = _read_text(path, _OVERLAY_FIX)
    blocks = re.split(r"^\s*ABNORMALITY\s+", text, flags=re.MULTILINE)
    if len(blocks) < 2:
        raise ManifestError(str(path), "no ABNORMALITY block", _OVERLAY_FIX)
    return [_abnormality(path, block) for block in blocks[1:]]


def _abnormality(path: Path, block: str) -> OverlayAbnormality:
    head, _, rest = block.partition("\n")
    try:
        number = int(head.split()[0])
    except (IndexError, ValueError):
        raise ManifestError(str(path), f"ABNORMALITY {head.strip()!r} is not numbered", _OVERLAY_FIX) from None
    where = f"{path}, abnormality {number}"
    fields: dict[str, list[str]] = {}
    outlines: list[ChainCode] = []
    lines = iter(rest.splitlines())
    for raw in lines:
        words = raw.split()
        if not words:
            continue
        if words[0] in ("BOUNDARY", "CORE"):
            outlines.append(_chain_code(where, words[0], next(lines, "")))
        else:
            fields.setdefault(words[0], words[1:])
    type_words = fields.get("LESION_TYPE")
    if not type_words or type_words[0] not in ("MASS", "CALCIFICATION"):
        raise ManifestError(f"{where}, LESION_TYPE", f"{' '.join(type_words or []) or '(missing)'!r} is neither "
                            "MASS nor CALCIFICATION", _OVERLAY_FIX)
    descriptors = dict(zip(type_words[1::2], type_words[2::2], strict=False))
    pathology = " ".join(fields.get("PATHOLOGY", []))
    try:
        label = label_name(pathology, source=f"{where}, PATHOLOGY")
    except CadxInputError as exc:
        raise ManifestError(exc.source, exc.problem, exc.fix) from None
    if not any(o.kind == "BOUNDARY" for o in outlines):
        raise ManifestError(where, "no BOUNDARY outline", _OVERLAY_FIX)
    return OverlayAbnormality(path=path, number=number, lesion_type=type_words[0], descriptors=descriptors,
                              assessment=_int_or_none(fields.get("ASSESSMENT")),
                              subtlety=_int_or_none(fields.get("SUBTLETY")), pathology=pathology, label=label,
                              outlines=tuple(outlines))


def _chain_code(where: str, kind: str, line: str) -> ChainCode:
    words = line.replace("#", " # ").split()
    if "#" not in words:
        raise ManifestError(f"{where}, {kind}", "the chain code does not end with '#' (cut short)", _OVERLAY_FIX)
    words = words[:words.index("#")]
    try:
        col, row, *steps = (int(w) for w in words)
    except ValueError:
        raise ManifestError(f"{where}, {kind}", "the chain code holds something other than whole numbers",
                            _OVERLAY_FIX) from None
    if any(not 0 <= s <= 7 for s in steps) or len(steps) < 3:
        raise ManifestError(f"{where}, {kind}", "the chain code needs a start and at least 3 directions 0-7",
                            _OVERLAY_FIX)
    return ChainCode(kind=kind, start_rc=(row, col), directions=tuple(steps))


def chain_points(chain: ChainCode) -> np.ndarray:
    """The outline's (row, column) points in original pixels, the start first, shape (n + 1, 2)."""
    steps = np.asarray(CHAIN_STEPS, dtype=np.int64)[np.asarray(chain.directions)]
    return np.vstack([[0, 0], np.cumsum(steps, axis=0)]) + np.asarray(chain.start_rc)


def outline_mask(chain: ChainCode, view: IcsView, stored_shape: tuple[int, int], *, source: str) -> np.ndarray:
    """The outline filled, as a boolean mask at the stored view's size.

    Original pixel centres map to stored coordinates by ``(x + 0.5) * stored / original - 0.5`` per axis (the
    view was resized as a whole). Raises :class:`ManifestError` naming ``source`` when the chain code leaves the
    original image.
    """
    points = chain_points(chain)
    rows, cols = points[:, 0], points[:, 1]
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= view.lines or cols.max() >= view.pixels_per_line:
        raise ManifestError(source, f"the {chain.kind} chain code leaves the {view.lines} x {view.pixels_per_line} "
                            f"image (rows {rows.min()}..{rows.max()}, columns {cols.min()}..{cols.max()})",
                            "restore the .OVERLAY file and the .ics file of this case from the DDSM distribution "
                            "(they must describe the same image)")
    scale = (stored_shape[0] / view.lines, stored_shape[1] / view.pixels_per_line)
    polygon = np.column_stack([(rows + 0.5) * scale[0] - 0.5, (cols + 0.5) * scale[1] - 0.5])
    return np.asarray(polygon2mask(stored_shape, polygon), dtype=bool)


def stored_pixel_mm(view: IcsView, stored_shape: tuple[int, int]) -> tuple[float, float]:
    """(row, column) pixel size in mm of the view stored at ``stored_shape``: RESOLUTION x original / stored."""
    return (view.micron / 1000.0 * view.lines / stored_shape[0],
            view.micron / 1000.0 * view.pixels_per_line / stored_shape[1])


def _int_or_none(words: list[str] | None) -> int | None:
    try:
        return int(words[0]) if words else None
    except ValueError:
        return None


def _read_text(path: Path, fix: str) -> str:
    try:
        return path.read_text(encoding="latin-1")
    except FileNotFoundError:
        raise ManifestError(str(path), "the file does not exist", fix) from None
    except OSError as exc:
        raise ManifestError(str(path), f"cannot be read ({exc.strerror})", fix) from None
