"""Shared checks of user input: numbers, choices, pixel sizes. One rule per kind of value, one error policy.

Error policy of cadx
--------------------
* Input a user gave (a file, a manifest row, a form field, a CLI option, an argument of a public function that
  comes from one) that cadx cannot use raises :class:`~cadx.errors.CadxInputError` (or a subclass naming the kind
  of input: :class:`~cadx.errors.ImageReadError`, :class:`~cadx.errors.ManifestError`,
  :class:`~cadx.errors.RoiError`, :class:`~cadx.errors.UnknownNameError`), whose message names the input, the
  problem and the fix. ``CadxInputError`` is a ``ValueError``, so generic callers still catch it.
* ``ValueError`` / ``TypeError`` alone mean a programming error: a caller inside cadx passed something its own
  code should never pass (a registry entry with an unknown tap, arrays of different lengths between two stages).

Each check takes the ``error`` class to raise, so a module keeps the subclass its callers expect, and ``source``
(the file, row or field) for the message; the problem and fix texts are the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

import numpy as np

from cadx.errors import CadxInputError

__all__ = [
    "PIXEL_SPACING_RANGE_MM",
    "choice",
    "finite",
    "fraction",
    "in_range",
    "number",
    "pixel_spacing",
    "positive",
]

#: Plausible source pixel sizes of a mammogram in mm (row and column): 10 micrometres to 2 mm. The one range of
#: every reader (DICOM PixelSpacing, a pixel size a user types or uploads, a crop's pixel spacing).
PIXEL_SPACING_RANGE_MM: Final = (0.01, 2.0)


def number(value: object, *, name: str, ok: Callable[[float], bool] = math.isfinite,
           allowed: str = "a finite number", source: str | None = None,
           error: type[CadxInputError] = CadxInputError) -> float:
    """``value`` as a float when ``ok(number)`` holds; otherwise ``error`` naming ``name`` and what is allowed.

    Booleans and NaN are refused; a string is read as a number (``"2.5"``), as :func:`float` reads it. With
    ``source`` (a file or field that holds ``name``) the message is
    ``"<source>: <name> <value> is not <allowed>"``, else ``"<name>: <value> is not <allowed>"``.
    """
    try:
        parsed = math.nan if isinstance(value, (bool, np.bool_)) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        parsed = math.nan
    if math.isnan(parsed) or not ok(parsed):
        if source is None:
            raise error(name, f"{value!r} is not {allowed}", f"give {name} as {allowed}")
        raise error(source, f"{name} {value!r} is not {allowed}", f"give the {name} as {allowed}")
    return parsed


def finite(value: object, *, name: str, source: str | None = None,
           error: type[CadxInputError] = CadxInputError) -> float:
    """A finite number (not NaN, not infinite)."""
    return number(value, name=name, source=source, error=error)


def positive(value: object, *, name: str, source: str | None = None,
             error: type[CadxInputError] = CadxInputError) -> float:
    """A finite number > 0."""
    return number(value, name=name, ok=lambda x: x > 0 and math.isfinite(x), allowed="a number > 0",
                  source=source, error=error)


def fraction(value: object, *, name: str, source: str | None = None,
             error: type[CadxInputError] = CadxInputError) -> float:
    """A number in (0, 1]."""
    return number(value, name=name, ok=lambda x: 0 < x <= 1, allowed="a number in (0, 1]", source=source,
                  error=error)


def in_range(value: object, *, name: str, low: float, high: float, source: str | None = None,
             error: type[CadxInputError] = CadxInputError) -> float:
    """A number in ``low..high`` (both included)."""
    return number(value, name=name, ok=lambda x: low <= x <= high, allowed=f"a number in {low}..{high}",
                  source=source, error=error)


def choice(value: object, *, name: str, choices: Iterable[str], source: str | None = None,
           error: type[CadxInputError] = CadxInputError) -> str:
    """One of ``choices`` (exact spelling)."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise error(source or name, f"{value!r} is not one of {', '.join(options)}", f"give {name} as one of them")
    return value


def pixel_spacing(values: object, *, source: str, what: str = "pixel spacing",
                  fix: str = "give the pixel size in mm, e.g. 0.1 (range 0.01-2 mm)",
                  error: type[CadxInputError] = CadxInputError) -> tuple[float, float]:
    """``(row, column)`` pixel spacing in mm from one number or a pair, each in :data:`PIXEL_SPACING_RANGE_MM`.

    ``what`` names the value in the message (e.g. ``"the file's PixelSpacing"``), ``fix`` says what to do.
    """
    low, high = PIXEL_SPACING_RANGE_MM
    pair: list[object] | None
    if isinstance(values, (str, bytes, bool, np.bool_)):
        pair = None
    elif isinstance(values, (int, float, np.integer, np.floating)):
        pair = [values, values]
    else:
        try:
            items = list(values)  # type: ignore[call-overload]
        except TypeError:
            items = []
        pair = items if len(items) == 2 else None
    if pair is None:
        raise error(source, f"{what} {values!r} is not one number or a pair of numbers (row, column) in mm", fix)
    out: list[float] = []
    for v in pair:
        try:
            if isinstance(v, (bool, np.bool_, str, bytes)):
                raise TypeError
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise error(source, f"{what} {values!r} is not numeric", fix) from None
        if not math.isfinite(f) or f <= 0:
            raise error(source, f"{what} {values!r} is not a positive finite number of mm", fix)
        if not (low <= f <= high):
            raise error(source, f"{what} {values!r} is outside the plausible range {low}-{high} mm for a mammogram",
                        fix)
        out.append(f)
    return (out[0], out[1])
