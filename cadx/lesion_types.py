"""The one registry of lesion types: what each stored code means, and which are masses (the paper's protocol).

Huynh, Li & Giger (2016) classify **masses**. MIAS also holds calcifications, architectural distortions and
asymmetries, and CBIS-DDSM holds calcifications; an experiment pools them only when its cohort asks for it. Every
importer stores one of these codes in ``Lesion.lesion_type``; the CLI, the pages and the cohorts read them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cadx.errors import CadxInputError

__all__ = [
    "LesionType",
    "LESION_TYPES",
    "LESION_TYPE_GROUPS",
    "MASS_TYPES",
    "UNKNOWN_TYPE",
    "normalise_lesion_type",
    "expand_lesion_types",
    "lesion_type_title",
    "is_mass",
]


@dataclass(frozen=True)
class LesionType:
    """One lesion type: its stored code, a title for people, and its family (``"mass"`` for the paper's masses)."""

    code: str
    title: str
    family: str  # "mass", "calcification", "architectural distortion", "asymmetry"

    @property
    def is_mass(self) -> bool:
        return self.family == "mass"


_TYPES = (
    LesionType("CIRC", "MIAS circumscribed (well-defined) mass", "mass"),
    LesionType("SPIC", "MIAS spiculated mass", "mass"),
    LesionType("MISC", "MIAS ill-defined (other) mass", "mass"),
    LesionType("CALC", "MIAS calcification", "calcification"),
    LesionType("ARCH", "MIAS architectural distortion", "architectural distortion"),
    LesionType("ASYM", "MIAS asymmetry", "asymmetry"),
    LesionType("mass", "mass (CBIS-DDSM, manifests; the synthetic demo phantoms)", "mass"),
    LesionType("calcification", "calcification (CBIS-DDSM, manifests)", "calcification"),
)

#: code -> :class:`LesionType`.
LESION_TYPES: dict[str, LesionType] = {t.code: t for t in _TYPES}

#: Lesions whose type was never recorded (e.g. a browser upload) are matched in cohorts by this name.
UNKNOWN_TYPE = "unknown"

#: Named groups of codes: ``masses`` is the paper's protocol (CIRC/SPIC/MISC in MIAS, mass in CBIS-DDSM).
LESION_TYPE_GROUPS: dict[str, frozenset[str]] = {
    "masses": frozenset(t.code for t in _TYPES if t.family == "mass"),
    "calcifications": frozenset(t.code for t in _TYPES if t.family == "calcification"),
}

MASS_TYPES: frozenset[str] = LESION_TYPE_GROUPS["masses"]

# Other spellings accepted from manifests and found in databases written before the registry (see migration 0004).
_ALIASES = {
    "masses": "mass",
    "calcifications": "calcification",
    "circumscribed mass": "CIRC",
    "spiculated mass": "SPIC",
    "architectural distortion": "ARCH",
    "asymmetry": "ASYM",
}
_LEGACY_MIAS = re.compile(r"^(CALC|CIRC|SPIC|MISC|ARCH|ASYM) \((mass|calcification)\)$")
_LEGACY_SYNTHETIC = re.compile(r"^synthetic \w[\w-]* mass$")


def normalise_lesion_type(value: str | None, *, source: str = "lesion_type") -> str | None:
    """The registry code of ``value`` (``None`` stays ``None``: type not recorded).

    Accepts the codes in any case (``circ``, ``Mass``), a few plain-English names (``calcifications``,
    ``spiculated mass``)
    and the strings cadx stored before the registry (``"ARCH (mass)"``, ``"synthetic spiculated mass"``).

    Raises
    ------
    CadxInputError
        For anything else, naming ``source`` and listing the known types.
    """
    if value is None or not str(value).strip():
        return None
    text = " ".join(str(value).split())
    legacy = _LEGACY_MIAS.match(text)
    if legacy:
        return legacy.group(1)
    if _LEGACY_SYNTHETIC.match(text):
        return "mass"
    lowered = text.lower()
    for code in LESION_TYPES:
        if lowered == code.lower():
            return code
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    raise CadxInputError(source, f"unknown lesion type {text!r}",
                         f"use one of {', '.join(LESION_TYPES)} (or leave it empty when unknown)")


def expand_lesion_types(values, *, source: str = "lesion types") -> frozenset[str]:
    """The codes meant by ``values``: codes, group names (``masses``, ``calcifications``) or ``unknown``."""
    codes: set[str] = set()
    for value in values:
        name = str(value).strip()
        if name.lower() in LESION_TYPE_GROUPS:
            codes |= LESION_TYPE_GROUPS[name.lower()]
        elif name.lower() == UNKNOWN_TYPE:
            codes.add(UNKNOWN_TYPE)
        else:
            try:
                code = normalise_lesion_type(name, source=source)
                if code is not None:
                    codes.add(code)
            except CadxInputError as exc:
                raise CadxInputError(source, exc.problem,
                                     f"use one of {', '.join([*LESION_TYPE_GROUPS, *LESION_TYPES, UNKNOWN_TYPE])}"
                                     ) from None
    return frozenset(codes)


def lesion_type_title(code: str | None) -> str:
    """A title for people: ``"SPIC — MIAS spiculated mass"``; ``"type not recorded"`` for None."""
    if code is None or code == UNKNOWN_TYPE:
        return "type not recorded"
    known = LESION_TYPES.get(code)
    return f"{code} — {known.title}" if known else code


def is_mass(code: str | None) -> bool:
    """True for the types the paper's protocol keeps."""
    return code in MASS_TYPES
