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
        What the user can do about it, in the command line's words (flags such as ``--folds 4``).
    page_fix : str, optional
        The same fix in the web page's words (its fields and buttons), where they differ: the facts are the
        error's, the two renderings its raiser's. Pages show :attr:`fix_on_page`.
    """

    def __init__(self, source: str, problem: str, fix: str, *, page_fix: str | None = None) -> None:
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        self.page_fix = page_fix
        super().__init__(f"{self.source}: {problem}. Fix: {fix}")

    @property
    def fix_on_page(self) -> str:
        """The fix as a web page says it (``page_fix``, else ``fix``)."""
        return self.page_fix or self.fix

    def on_page(self) -> str:
        """The whole message in the web page's words."""
        return f"{self.source}: {self.problem}. Fix: {self.fix_on_page}"


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
