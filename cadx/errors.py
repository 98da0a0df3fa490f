"""Exceptions raised by cadx for bad input.

Errors at the edges name the file (or row, or form field), what is wrong with it, and how to fix it, so a user can
act on the message without reading a stack trace.
"""

from __future__ import annotations

__all__ = [
    "CadxError", "CadxInputError", "ImageReadError", "ManifestError", "RoiError", "UnknownNameError",
    "WeightsUnavailableError",
]


class CadxError(Exception):
    """Base class of every exception cadx raises on purpose."""


class CadxInputError(CadxError, ValueError):
    """Input that cadx cannot use.

    Parameters
    ----------
    source : str
        The file, row or field that is wrong, e.g. ``"scans/a.dcm"`` or ``"manifest.csv, row 7, column label"``.
    problem : str
        What is wrong with it.
    fix : str
        What the user can do about it.
    """

    def __init__(self, source: str, problem: str, fix: str) -> None:
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.source}: {problem}. Fix: {fix}")


class ImageReadError(CadxInputError):
    """An image file that cannot be read as a mammogram (corrupt, truncated, unsupported, no pixel size)."""


class ManifestError(CadxInputError):
    """A manifest, truth table or labels file with a missing or malformed value."""


class RoiError(CadxInputError):
    """An ROI that cannot be cropped (e.g. the centre lies outside the image)."""


class UnknownNameError(CadxInputError, KeyError):
    """A name that is not in a registry or store: a backbone, a tap, a weights file, features not extracted yet.

    Also a ``KeyError``, as a failed look-up; its message reads like every other :class:`CadxInputError`.
    """

    __str__ = CadxError.__str__  # not KeyError's, which would quote the message


class WeightsUnavailableError(CadxError):
    """Pretrained weights that are neither cached, nor given as a file, nor downloadable."""
