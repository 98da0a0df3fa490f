"""The one codec of lesion labels: benign/malignant as words (stored, shown) and as 0/1 codes (computed).

Every reader of a label goes through this module: the importers (manifests, truth tables, CBIS-DDSM CSVs), the
analytic feature AUCs, the SVMs, the ROC statistics, the workflows that turn stored rows into training labels and
the pages that show them. Accepted spellings, any case, surrounding blanks ignored:

=========================================  ===========  ====
spelling                                   word         code
=========================================  ===========  ====
``benign``, ``b``, ``0``,                  ``benign``   0
``benign_without_callback`` (CBIS-DDSM)
``malignant``, ``m``, ``1``                ``malignant`` 1
the numbers 0 and 1 (int, float, bool)     as above     as above
=========================================  ===========  ====

Anything else is a :class:`~cadx.errors.CadxInputError` naming the value and the accepted spellings.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cadx.errors import CadxInputError, ManifestError

__all__ = ["BENIGN", "LABELS", "MALIGNANT", "label_code", "label_codes", "label_name", "label_word"]

BENIGN: Final = 0
MALIGNANT: Final = 1
#: The stored words, in code order (``LABELS[code]``).
LABELS: Final = ("benign", "malignant")

_SPELLINGS: Final = {
    "b": BENIGN,
    "benign": BENIGN,
    "benign_without_callback": BENIGN,
    "0": BENIGN,
    "m": MALIGNANT,
    "malignant": MALIGNANT,
    "1": MALIGNANT,
}
_ACCEPTED: Final = "benign or malignant (B/M, BENIGN_WITHOUT_CALLBACK and 0/1 are accepted too)"


def _code_or_none(value: object) -> int | None:
    if isinstance(value, (str, np.str_)):
        return _SPELLINGS.get(str(value).strip().lower())
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        if not math.isnan(number) and number in (0.0, 1.0):
            return int(number)
    return None


def label_code(value: object, *, source: str) -> int:
    """The code (0 benign, 1 malignant) of one label.

    Raises
    ------
    ManifestError
        Naming ``source`` (file, row, column) when ``value`` is not a spelling of benign or malignant.
    """
    code = _code_or_none(value)
    if code is None:
        shown = repr(value) if str(value).strip() else "an empty value"
        raise ManifestError(source, f"unknown label {shown}", f"give the pathology as {_ACCEPTED}")
    return code


def label_name(value: object, *, source: str) -> str:
    """The stored word (``"benign"`` or ``"malignant"``) of one label; errors as :func:`label_code`."""
    return LABELS[label_code(value, source=source)]


def label_word(code: object) -> str:
    """The word of a code or a spelling, e.g. ``label_word(1) == "malignant"`` (for display)."""
    return label_name(code, source="label")


def label_codes(values: ArrayLike, *, name: str = "labels") -> NDArray[np.int8]:
    """The codes (int8 0/1) of many labels (words or numbers, mixed allowed), flattened.

    Raises
    ------
    CadxInputError
        Naming ``name`` and the values that are not benign or malignant.
    """
    numeric = np.asarray(values)
    if numeric.dtype.kind in "biuf" and np.isin(numeric, (0, 1)).all():  # the common case, without a Python loop
        return numeric.astype(np.int8).ravel()
    array = np.asarray(values, dtype=object).ravel()
    out = np.empty(array.shape, np.int8)
    bad: list[object] = []
    for i, value in enumerate(array.tolist()):
        code = _code_or_none(value)
        if code is None:
            if len(bad) < 5 and value not in bad:
                bad.append(value)
            out[i] = -1
        else:
            out[i] = code
    if bad:
        shown = ", ".join(repr(v) for v in bad)
        raise CadxInputError(
            name,
            f"must contain only 0 (benign) and 1 (malignant); received values [{shown}], which are not benign or "
            "malignant",
            "use 0/1 or the words benign/malignant (B/M)",
        )
    return out
