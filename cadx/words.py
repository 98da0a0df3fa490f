"""Human words for the codes cadx stores: the one registry of exclusion reasons, ROI quality-control flags and
segmentation qualities, and of the AUC names that reports quote.

The database, the CLI and the pages store and accept the codes (``location_marker``, ``mostly_background``, ...);
whatever a person reads says the words, with the code beside it (a tooltip on a page, brackets in the CLI) so that
a code in a CSV or a log can still be looked up.

Examples
--------
>>> word("lesion_exceeds_field")
'lesion larger than the field'
>>> with_code("seed_off_lesion")
'seed off the lesion (seed_off_lesion)'
"""

from __future__ import annotations

__all__ = [
    "EXCLUSION_REASONS",
    "QC_FLAGS",
    "SEGMENTATION_QUALITIES",
    "AUC_NAMES",
    "PAPER_AUC",
    "AUC_COLUMNS",
    "word",
    "meaning",
    "with_code",
    "EMPTY",
    "empty_or",
    "fold_text",
    "CASE_COLUMNS",
    "column_word",
]

#: Why a reviewer leaves an ROI out of experiments (the codes the database accepts, in this order).
EXCLUSION_REASONS: dict[str, tuple[str, str]] = {
    "compression_paddle": ("compression paddle", "The edge of the compression paddle shows in the ROI."),
    "location_marker": ("location marker", "A skin or location marker (a radio-opaque sticker or letter) shows "
                                           "in the ROI."),
    "other": ("other", "Another artifact; the note says which."),
}

#: Quality-control flags set on an ROI when it is cropped or imported (cadx.roi, cadx.workflows.importing).
QC_FLAGS: dict[str, tuple[str, str]] = {
    "padded": ("padded at the image edge", "Part of the 51.2 mm field lies outside the image and was padded."),
    "mostly_background": ("mostly background", "Most of the ROI is air or padding, not breast tissue."),
    "lesion_exceeds_field": ("lesion larger than the field", "The recorded lesion size exceeds the 51.2 mm field: "
                                                              "the ROI shows part of the lesion only."),
    "burned_in_annotation": ("burned-in annotation", "The DICOM says its pixels carry burned-in text, which may "
                                                     "identify the patient."),
}

#: Method-B segmentation qualities (cadx.analytic.QUALITIES), most severe first.
SEGMENTATION_QUALITIES: dict[str, tuple[str, str]] = {
    "failed": ("segmentation failed", "Flat ROI, seed in air or padding, or no usable region: no outline."),
    "seed_off_lesion": ("seed off the lesion", "The region grew from the background around the marked centre into "
                                               "a brighter structure elsewhere."),
    "low_contrast": ("low contrast", "The region is hardly brighter than its surroundings."),
    "touches_border": ("touches the ROI border", "The outline reaches the edge of the ROI."),
    "ok": ("ok", "No problem found."),
}

#: The three AUCs cadx reports for a classifier, and what each one is. The paper's (Huynh et al. 2016, Table 1) is
#: the mean of the per-fold AUCs with its standard error; the pooled and binormal ones are secondary.
AUC_NAMES: dict[str, tuple[str, str]] = {
    "fold_mean": ("AUC (paper: mean of fold AUCs)",
                  "The AUC the paper quotes (Table 1, Fig. 3): the mean of the per-fold AUCs, ± SE = SD / √folds."),
    "pooled": ("pooled AUC (all folds in one ROC)",
               "One empirical ROC over all out-of-fold predictions together; not the paper's number."),
    "binormal": ("binormal-fit AUC",
                 "Area under the maximum-likelihood binormal curve fitted to the pooled ratings (the curves of "
                 "Fig. 4); not the paper's Table 1 number."),
    "lesion": ("lesion-level AUC", "The ROIs' probabilities averaged per lesion, then one ROC."),
}

#: One sentence that every page and export uses to say which AUC to quote.
PAPER_AUC = ("The AUC to quote is the paper's: the mean of the per-fold AUCs ± SE (SE = SD / √folds). Pooled AUC "
             "(one ROC over all folds' predictions) and binormal-fit AUC (the fitted curve) are labelled as such.")

#: Plain names for the AUC columns of Table 1 (cadx.workflows.results.method_table) on pages and in CSV exports.
AUC_COLUMNS: dict[str, str] = {
    "AUC": "AUC (paper: mean of fold AUCs)",
    "AUC.SD": "SD of fold AUCs",
    "SE": "SE of the mean (SD/√folds)",
    "pooled AUC": "pooled AUC (one ROC, all folds)",
    "CI95 low": "pooled AUC 95% CI low",
    "CI95 high": "pooled AUC 95% CI high",
    "lesion AUC": "lesion-level pooled AUC",
    "binormal AUC": "binormal-fit AUC",
}

#: What a page shows for a value that is not there (no SVM2 run, no view in the header, ...): never ``None``/``nan``.
EMPTY = "—"

#: Readable names of the per-case (ROI or lesion) columns that result pages show and export (CSV headers), for the
#: codes the workflows return (``cadx.workflows.results.roi_predictions`` and friends).
CASE_COLUMNS: dict[str, str] = {
    "roi_id": "ROI",
    "lesion_id": "lesion id",
    "lesion_key": "lesion",
    "patient_key": "patient",
    "n_rois": "ROIs",
    "view": "view",
    "laterality": "side",
    "truth": "truth",
    "label": "truth",
    "fold": "fold",
    "p1": "p1 (SVM1, CNN)",
    "p2": "p2 (SVM2, analytic)",
    "p3": "p3 (ensemble)",
    "pz": "pz (z-scored ensemble; not a probability)",
    "disagreement": "|p1 − p2|",
    "right_p1": "SVM1 right",
    "right_p2": "SVM2 right",
    "right_p3": "ensemble right",
    "right_pz": "z-ensemble right (pz ≥ 0)",
    "included_now": "included now",
    "qc_flags": "QC flags",
    "status": "review status",
}

_REGISTRIES = (EXCLUSION_REASONS, QC_FLAGS, SEGMENTATION_QUALITIES, AUC_NAMES)


def _entry(code: str) -> tuple[str, str] | None:
    for registry in _REGISTRIES:
        if code in registry:
            return registry[code]
    return None


def word(code: str | None) -> str:
    """The human words for a stored code; an unknown code reads with spaces for underscores; None gives ''."""
    if code is None:
        return ""
    entry = _entry(str(code))
    return entry[0] if entry else str(code).replace("_", " ")


def meaning(code: str | None) -> str:
    """What a code means, in a sentence, ending with the stored code itself (for a tooltip)."""
    if code is None:
        return ""
    entry = _entry(str(code))
    return (f"{entry[1]} " if entry else "") + f"(stored code: {code})"


def with_code(code: str | None) -> str:
    """Words and code together, for plain-text outputs such as the CLI: ``'mostly background (mostly_background)'``."""
    if code is None:
        return ""
    words = word(code)
    return words if words == code else f"{words} ({code})"



def empty_or(value: object, fmt: str = "{}") -> str:
    """``value`` formatted with ``fmt``, or :data:`EMPTY` when there is none (None, NaN, ``""``).

    >>> empty_or(None), empty_or(float("nan"), "{:.3f}"), empty_or(0.25, "{:.3f}")
    ('—', '—', '0.250')
    """
    if value is None or value == "" or (isinstance(value, float) and value != value):  # NaN is not equal to itself
        return EMPTY
    return fmt.format(value)


def fold_text(fold: int, *, n_folds: int, seed: int) -> str:
    """The one way a case's cross-validation fold is shown: 1-based, out of how many, and of which seed.

    ``fold`` is the stored, 0-based fold index (``Prediction.fold``); ``seed`` is the seed of the cross-validation
    repeat the fold belongs to (the experiment's first seed on the result pages).

    >>> fold_text(0, n_folds=5, seed=0)
    'fold 1 of 5 (seed 0)'
    """
    return f"fold {int(fold) + 1} of {int(n_folds)} (seed {int(seed)})"


def column_word(name: str) -> str:
    """The readable name of a per-case column (:data:`CASE_COLUMNS`); other names unchanged."""
    return CASE_COLUMNS.get(name, name)
