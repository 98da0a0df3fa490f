"""The study report: one self-contained HTML page (no external resource: styles inline, figures as inline SVG) with
the cohort, a methods paragraph generated from the experiment's config, Fig. 3, Fig. 4, Table 1, the significance
tests, the repeated cross-validation, provenance and the research-use disclaimer.

Pure rendering: :func:`render_report` turns a :class:`ReportData` (gathered by ``cadx.workflows.report``: the typed
experiment record, its results at one level, the cohort and the display tables) into HTML, and
:func:`svg_line_chart` draws the figures as SVG without a plotting library or a browser. Every number shown in a
table also carries its full-precision value in a ``data-value`` attribute, so a reader (or a test) can check it
against the stored record.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cadx import stats
from cadx.cohorts import MIN_LESIONS_PER_CLASS_PER_FOLD, CohortDefinition
from cadx.permutation import PermutationResult, chance_sentence
from cadx.power import PowerSummary
from cadx.records import Comparison, ExperimentRecord, LevelResults, MethodRecord

__all__ = ["DISCLAIMER", "ROI_PIXEL_MM", "SECTIONS", "CohortSummary", "LabelCounts", "ReportData", "render_report",
           "svg_line_chart", "methods_paragraph", "protocol_items", "roi_set_sha256", "summary_items",
           "test_families_text", "chance_section", "power_section",
           "segmentation_section"]

#: Section ids of a report, in order (the test checks every one is present).
SECTIONS = ("summary", "protocol", "cohort", "methods", "fig3", "fig4", "table1", "segmentation", "tests", "chance",
            "power", "repeats", "provenance", "disclaimer")

DISCLAIMER = ("Research use only. Not a medical device. These results come from a retrospective research "
              "experiment and must not be used to diagnose, treat or manage any patient.")

_COLOURS = {"A": "#1f77b4", "B": "#2ca02c", "C": "#d62728", "Z": "#ff7f0e", "D": "#9467bd"}
_NAMES = {"A": "SVM1 (CNN)", "B": "SVM2 (analytic)", "C": "Ensemble", "Z": "z-ensemble", "D": "Fusion (Method D)"}
_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222;
line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;
margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #bbb;padding:.2rem .5rem;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}
.banner{background:#c0392b;color:#fff;font-weight:bold;padding:.35rem .6rem;margin:.4rem 0;text-align:center}
.print-header{display:none}
.meta{color:#555;font-size:.9rem}td.mono{font-family:monospace;font-size:.85rem;word-break:break-all;
text-align:left}
figure{margin:.5rem 0}figcaption{font-size:.9rem;color:#444}
section{page-break-inside:auto}
@media print{
 .print-header{display:block;position:fixed;top:0;left:0;right:0;background:#c0392b;color:#fff;font-weight:bold;
 text-align:center;padding:.2rem;font-size:9pt}
 @page{margin:2cm 1.5cm}
 body{margin:0 auto;max-width:none}
 figure,table{page-break-inside:avoid}
}
"""


# ------------------------------------------------------------------------------------------------ the payload ---
@dataclass(frozen=True)
class LabelCounts:
    """Patients, lesions and ROIs of one label in a cohort."""

    patients: int
    lesions: int
    rois: int


@dataclass(frozen=True)
class CohortSummary:
    """An experiment's ROI set counted from the database (``cadx.workflows.report.cohort_summary``).

    Attributes
    ----------
    patients, lesions, rois : int
        Counts over the ROIs still in the database.
    rois_deleted_since : int
        ROIs of the experiment that are no longer in the database.
    label_names : list of str
        The labels in display order (the registry's first, then any other).
    by_label : dict of str to LabelCounts
    lesions_by_label : dict of str to int
    rois_by_view : dict of str to (dict of str to int)
        View -> label -> ROIs.
    lesions_by_type : dict of str to (dict of str to int)
        Lesion type -> label -> lesions.
    excluded_by_reason : dict of str to int
        The experiment's excluded ROIs by their exclusion reason now.
    source_pixel_mm : dict of (float, float) to int
        ROIs by the (row, column) pixel spacing of their source image, in mm.
    roi_pixel_mm : dict of float to int
        ROIs by their own pixel size, in mm (cadx's ROIs: 0.1).
    """

    patients: int
    lesions: int
    rois: int
    rois_deleted_since: int
    label_names: list[str]
    by_label: dict[str, LabelCounts]
    lesions_by_label: dict[str, int]
    rois_by_view: dict[str, dict[str, int]]
    lesions_by_type: dict[str, dict[str, int]]
    excluded_by_reason: dict[str, int]
    source_pixel_mm: dict[tuple[float, float], int] = field(default_factory=dict)
    roi_pixel_mm: dict[float, int] = field(default_factory=dict)


ROI_PIXEL_MM = 0.1
"""The pixel size every ROI is resampled to (``cadx.roi``), for records whose ROIs were not counted."""


@dataclass(frozen=True)
class ReportData:
    """Everything a study report shows (made by ``cadx.workflows.report.report_data``).

    Attributes
    ----------
    experiment : cadx.records.ExperimentRecord
        The stored record (config, provenance; old records upgraded on reading).
    results : cadx.records.LevelResults
        Table 1, the tests and the repeats at the report's level (ROI: as stored; lesion: computed).
    cohort : CohortSummary
    sweep, table1, tests, repeats : list of dict
        Rows of the display tables (``cadx.workflows.results.sweep_table``, ``method_table``,
        ``comparison_table``, ``repeats_table``), keyed by column.
    roi_set_sha256 : str or None
        The ROI set's SHA-256 (recorded, or computed from the ROI hashes of an older record; None without them).
    generated_at, generator : str
        When and by which cadx the report was made.
    permutation, permutation_rows, permutation_caption, best_tap_line
        The newest permutation test (None: none ran), its table rows
        (``cadx.workflows.permutation.permutation_table``), what it permuted, and the best tap's sentence with its
        selection-adjusted p.
    power : list of (PowerSummary, PowerSummary)
        Per comparison, the power summary at alpha and at its family's Bonferroni alpha.
    """

    experiment: ExperimentRecord
    results: LevelResults
    cohort: CohortSummary
    sweep: list[dict[str, Any]]
    table1: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    repeats: list[dict[str, Any]]
    roi_set_sha256: str | None
    generated_at: str
    generator: str
    permutation: PermutationResult | None = None
    permutation_rows: list[dict[str, Any]] = field(default_factory=list)
    permutation_caption: str = ""
    best_tap_line: str = ""
    power: list[tuple[PowerSummary, PowerSummary]] = field(default_factory=list)
    segmentation: dict[str, Any] | None = None


def segmentation_section(data: ReportData) -> str:
    """The body of *Segmentation against the reference outline*: Method B's Dice and mean boundary distance over the
    experiment's ROIs that have one (``cadx.segscore.score_summary`` with the count by reference and version)."""
    seg = data.segmentation
    if not seg or not seg.get("n"):
        why = ("no Method B features" if data.experiment.config.analytic_version is None
               else "no ROI of the experiment has a reference outline (DDSM or CBIS-DDSM expert outline, synthetic "
                    "phantom truth)")
        return f"<p>Not scored: {_e(why)}.</p>"
    rows = [["Dice", seg["dice_median"], seg["dice_q1"], seg["dice_q3"]],
            ["mean boundary distance (mm)", seg["boundary_mm_median"], seg["boundary_mm_q1"], seg["boundary_mm_q3"]]]
    body = _table(["measure", "median", "Q1", "Q3"], rows, table_id="segmentation-table")
    references = ", ".join(f"{n} against the {kind}" for kind, n in seg.get("by_reference", {}).items())
    body += (f"<p>Method B's seeded segmentation (features {_e(seg['version'])}) of {_e(seg['n'])} ROIs scored "
             f"against their reference outline ({_e(references)}): Dice 2|A∩B|/(|A|+|B|), 1 for perfect agreement; "
             "mean boundary distance: the mean, over both outlines' boundary pixels, of the distance to the other "
             "outline. A failed segmentation counts as Dice 0.</p>")
    return body


# ---------------------------------------------------------------------------------------------------- helpers ---
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def _cell(value: Any, digits: int = 3, tag: str = "td") -> str:
    if _is_number(value):
        return f'<{tag} data-value="{float(value)!r}">{_e(_fmt(value, digits))}</{tag}>'
    return f"<{tag}>{_e(_fmt(value, digits))}</{tag}>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, table_id: str, digits: int = 3) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v, digits) for v in row) + "</tr>" for row in rows)
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def roi_set_sha256(roi_hashes: Sequence[str]) -> str:
    """SHA-256 of an ROI set: of its ROIs' pixel hashes, sorted and joined by newlines (order-free)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(roi_hashes)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------------- SVG ---
_CHAR_WIDTH = 0.62  # of the font size: an upper bound on Helvetica's mean advance for tap names (letters, digits)
_TICK_FONT = 12


def _text_width(text: str, font_size: float = _TICK_FONT) -> float:
    """A conservative estimate of a label's width in pixels (no font metrics without a browser)."""
    return len(text) * _CHAR_WIDTH * font_size


def svg_line_chart(series: Sequence[Mapping[str, Any]], *, title: str, x_label: str, y_label: str,
                   x_range: tuple[float, float] = (0.0, 1.0), y_range: tuple[float, float] = (0.0, 1.0),
                   x_ticks: Sequence[tuple[float, str]] | None = None, width: int = 640, height: int = 480,
                   square: bool = False, warning: str = "", legend_width: int = 190) -> str:
    """An SVG line chart (vector, no fonts or scripts loaded from anywhere).

    Parameters
    ----------
    series : sequence of mapping
        Each with ``x``, ``y`` (equal-length sequences; None values break the line), ``name``, and optionally
        ``colour``, ``dash`` (SVG dash array), ``width``, ``markers`` (bool), ``error`` (half-widths of error bars),
        ``step`` (draw as a right-continuous step curve, as an empirical ROC).
    title, x_label, y_label : str
    x_range, y_range : (float, float)
        Axis limits.
    x_ticks : sequence of (value, label), optional
        Ticks on x (default: 0, 0.2, ..., 1 of the range).
    square : bool, default=False
        Equal scales on both axes (for ROC plots).
    warning : str, default=""
        Shown in red under the title (e.g. SYNTHETIC DEMO DATA).
    legend_width : int, default=190
        Room on the right for the legend, in pixels.
    """
    left, right, top, bottom = 64, legend_width, 54 if warning else 38, 52
    (x0, x1), (y0, y1) = x_range, y_range
    plot_w = width - left - right
    tick_rotate = False
    if x_ticks is not None and len(x_ticks) > 1 and x1 > x0 and not square:
        # tap names are longer than the numbers of an ROC axis: tilt them when side by side they would overlap
        values = sorted(float(v) for v, _label in x_ticks)
        gap = min(b - a for a, b in zip(values, values[1:], strict=False)) / (x1 - x0) * plot_w
        longest = max(_text_width(str(label)) for _v, label in x_ticks)
        if longest + 4 > gap:
            tick_rotate = True
            extra = int(longest * 0.71) + 4  # the tilted label's height at 45 degrees
            bottom += extra
            height += extra
    plot_w, plot_h = width - left - right, height - top - bottom
    if square:
        plot_w = plot_h = min(plot_w, plot_h)
        width = left + plot_w + right
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"empty axis range: x {x_range}, y {y_range}")

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
             'font-family="Helvetica,Arial,sans-serif" font-size="12">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="20" font-size="14" font-weight="bold">{_e(title)}</text>']
    if warning:
        parts.append(f'<text x="{left}" y="38" font-size="12" font-weight="bold" fill="#c0392b">{_e(warning)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    ticks_y = [y0 + (y1 - y0) * k / 5 for k in range(6)]
    ticks_x = list(x_ticks) if x_ticks is not None else [(x0 + (x1 - x0) * k / 5, _fmt(x0 + (x1 - x0) * k / 5, 1))
                                                          for k in range(6)]
    for value in ticks_y:
        y = py(value)
        parts.append(f'<line x1="{left}" y1="{y:.2f}" x2="{left + plot_w}" y2="{y:.2f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">{_e(_fmt(value, 2))}</text>')
    for value, label in ticks_x:
        x = px(value)
        parts.append(f'<line x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{top + plot_h}" stroke="#e5e5e5"/>')
        if tick_rotate:
            ty = top + plot_h + 12
            parts.append(f'<text x="{x:.2f}" y="{ty}" text-anchor="end" data-tick="x" '
                         f'transform="rotate(-45 {x:.2f} {ty})">{_e(label)}</text>')
        else:
            parts.append(f'<text x="{x:.2f}" y="{top + plot_h + 16}" text-anchor="middle" data-tick="x">'
                         f'{_e(label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.2f}" y="{height - 12}" text-anchor="middle">{_e(x_label)}</text>')
    parts.append(f'<text transform="translate(16 {top + plot_h / 2:.2f}) rotate(-90)" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    for index, s in enumerate(series):
        xs, ys = list(s["x"]), list(s["y"])
        if len(xs) != len(ys):
            raise ValueError(f"series {s.get('name')!r}: {len(xs)} x values but {len(ys)} y values")
        colour = s.get("colour", "#333")
        dash = f' stroke-dasharray="{_e(s["dash"])}"' if s.get("dash") else ""
        stroke = s.get("width", 2)
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in zip(xs, ys, strict=True):
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                runs.append([])
                continue
            if s.get("step") and runs[-1]:
                runs[-1].append((x, runs[-1][-1][1]))
            runs[-1].append((x, y))
        for run in runs:
            if len(run) >= 2:
                points = " ".join(f"{px(x):.2f},{py(y):.2f}" for x, y in run)
                parts.append(f'<polyline points="{points}" fill="none" stroke="{_e(colour)}" '
                             f'stroke-width="{stroke}"{dash}/>')
        errors = s.get("error")
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if x is None or y is None:
                continue
            if errors is not None and errors[i] is not None:
                lo, hi = py(y - errors[i]), py(y + errors[i])
                parts.append(f'<line x1="{px(x):.2f}" y1="{lo:.2f}" x2="{px(x):.2f}" y2="{hi:.2f}" '
                             f'stroke="{_e(colour)}"/>')
            if s.get("markers"):
                parts.append(f'<circle cx="{px(x):.2f}" cy="{py(y):.2f}" r="3.5" fill="{_e(colour)}"/>')
        ly = top + 14 + 18 * index
        lx = left + plot_w + 12
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 22}" y2="{ly - 4}" stroke="{_e(colour)}" '
                     f'stroke-width="{stroke}"{dash}/>')
        parts.append(f'<text x="{lx + 28}" y="{ly}" font-size="11">{_e(s.get("name", ""))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _sweep_svg(sweep: Sequence[Mapping[str, Any]], warning: str) -> str:
    by_experiment: dict[str, list[Mapping[str, Any]]] = {}
    for row in sweep:
        by_experiment.setdefault(str(row["backbone"]), []).append(row)
    series, ticks = [], []
    for name, rows in by_experiment.items():
        rows = sorted(rows, key=lambda r: r["order"])
        series.append({"name": f"{name} (AUC ± SE)", "x": [r["order"] for r in rows],
                       "y": [r["auc_mean"] for r in rows], "error": [r["auc_se"] for r in rows],
                       "markers": True, "colour": _COLOURS["A"]})
        ticks = [(r["order"], r["tap"]) for r in rows]
    n = max(len(ticks), 1)
    lows = [r["auc_mean"] - (r["auc_se"] or 0) for r in sweep if r["auc_mean"] is not None]
    y_low = min(0.5, math.floor(min(lows, default=0.5) * 10) / 10)
    return svg_line_chart(series, title="Fig. 3 — AUC of SVM1 by CNN tap", x_label="tap (network order)",
                          y_label="AUC (mean of fold AUCs)", x_range=(-0.5, n - 0.5), y_range=(y_low, 1.0),
                          x_ticks=ticks, warning=warning)


def _roc_svg(methods: Mapping[str, MethodRecord], unit: str, warning: str) -> str:
    series: list[dict[str, Any]] = []
    for key, m in methods.items():
        name = _NAMES.get(key, key)
        binormal = m.binormal
        if binormal.fpr is not None and binormal.tpr is not None:  # None: the fit failed (binormal.error says why)
            series.append({"name": f"{name}: binormal {_fmt(binormal.auc)}", "x": binormal.fpr,
                           "y": binormal.tpr, "colour": _COLOURS.get(key, "#333"), "width": 2.5})
        series.append({"name": f"{name}: empirical {_fmt(m.pooled_auc)}", "x": m.roc.fpr,
                       "y": m.roc.tpr, "colour": _COLOURS.get(key, "#333"), "dash": "3 3", "width": 1.2,
                       "step": True})
    series.append({"name": "chance", "x": [0, 1], "y": [0, 1], "colour": "#999", "dash": "6 4", "width": 1})
    return svg_line_chart(series, title=f"Fig. 4 — ROC curves ({unit})", x_label="false-positive fraction",
                          y_label="true-positive fraction", square=True, width=760, height=520, warning=warning,
                          legend_width=260)


# --------------------------------------------------------------------------------------------------- methods ---
def _grid_text(grid: dict[str, list[Any]] | str) -> str:
    if isinstance(grid, Mapping):
        return "; ".join(f"{k} ∈ {{{', '.join(_fmt(v, 4) if isinstance(v, float) else str(v) for v in vals)}}}"
                         for k, vals in grid.items())
    return ("a ∈ {0.1/p, 1/p, 10/p} (p = number of features), c ∈ {0, 1}, d ∈ {1, 2, 3} "
            f"(cadx's default grid, {grid})")


def methods_paragraph(experiment: ExperimentRecord, cohort: CohortSummary,
                      comparisons: Sequence[Comparison] | None = None) -> str:
    """The methods as a paragraph a reader can paste into a paper (HTML-escaped plain text); ``comparisons``: the
    tests shown (default: the record's), named family by family."""
    config = experiment.config
    comparisons = list(experiment.results.comparisons if comparisons is None else comparisons)
    weights = config.weights
    seeds = config.seeds
    analytic = config.analytic_version
    text = [
        f"The dataset comprised {cohort.rois} regions of interest (ROIs) from {cohort.lesions} lesions of "
        f"{cohort.patients} patients ({cohort.lesions_by_label.get('malignant', 0)} malignant and "
        f"{cohort.lesions_by_label.get('benign', 0)} benign lesions); "
        f"{sum(cohort.excluded_by_reason.values())} ROIs were excluded at review.",
        "Each ROI is a 51.2 mm × 51.2 mm field centred on the lesion, resampled to 512 × 512 pixels at 0.1 mm "
        f"({_pixel_text(cohort)}).",
        f"CNN features (Method A) were extracted with {config.backbone} "
        f"(weights {weights.name}, source {weights.source}, SHA-256 {weights.sha256}) "
        f"after preprocessing {config.preprocessing} (ROI scaled to [0, 1], resized with antialiasing to "
        "256 × 256, grey replicated to three channels, normalised with the weights' own mean and SD), "
        f"at the taps {', '.join(config.taps)}; SVM1 used tap {config.ensemble_tap}.",
    ]
    if analytic:
        text.append(f"Analytic features (Method B, {analytic}) were computed from a seeded region-growing "
                    "segmentation (21 features of size, shape, intensity, texture, margin sharpness, radial gradient "
                    "and spiculation); SVM2 was trained on them, and the ensemble (Method C) averaged the two "
                    "classifiers' out-of-fold probabilities.")
    text.append(
        "Each classifier was a support vector machine with the polynomial kernel (a·xᵀy + c)^d after removal of "
        "zero-variance features and standardisation within the training folds, with a, c and d chosen by an inner "
        f"{config.n_inner}-fold grouped cross-validation over {_grid_text(config.grid)}; "
        "probabilities came from a Platt sigmoid fitted on the inner cross-validated decision values. "
        f"Performance was estimated by {config.n_folds}-fold stratified cross-validation grouped by "
        f"{config.cv_groups}, with seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(str(s) for s in seeds)}.")
    text.append("The AUC is the mean of the fold AUCs (with their SD, SE and a t interval over the folds); ROC "
                "curves of the probabilities pooled over folds were fitted with the maximum-likelihood binormal "
                "model.")
    if comparisons:
        text.append(f"Classifiers were compared in {test_families_text(comparisons)}. "
                    f"The headline test is the Nadeau–Bengio corrected resampled t-test over {_resamples(comparisons)} "
                    "(Bouckaert & Frank's corrected repeated k-fold t-test; training and test sizes counted in "
                    "lesions); beside it are the fold-wise paired t-test and the Nadeau–Bengio test on the first "
                    "seed's folds and DeLong's test on each case's rank within its own fold. DeLong's test on the "
                    "probabilities pooled over folds is not reported: probabilities of different folds come from "
                    "different Platt sigmoids and are not comparable across folds.")
    return " ".join(_e(t) for t in text)


def test_families_text(comparisons: Sequence[Comparison]) -> str:
    """The test families exactly as the tests table shows them, e.g. "6 comparisons in 2 families, each
    Bonferroni-corrected within its family (p × its size, capped at 1): the paper's 3 (C vs A, C vs B, A vs B) and
    the z-scored ensemble's 3 (Z vs C, Z vs A, Z vs B)"."""
    names = {"paper": "the paper's", "added": "the z-scored ensemble's", "requested": "the requested"}
    families: dict[str, list[str]] = {}
    for c in comparisons:
        families.setdefault(c.family, []).append(c.comparison)
    if not families:
        return "no comparisons"
    parts = [f"{names.get(f, f)} {len(pairs)} ({', '.join(pairs)})" for f, pairs in families.items()]
    n = sum(len(pairs) for pairs in families.values())
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"{n} comparison{'s' if n != 1 else ''} in {len(families)} famil{'ies' if len(families) != 1 else 'y'}, "
            f"each Bonferroni-corrected within its family (p × its size, capped at 1): {joined}")


def _resamples(comparisons: Sequence[Comparison]) -> str:
    c = comparisons[0]
    if c.repeated_nb_n_seeds is None or c.repeated_nb_n_folds is None:
        return "the first seed's folds (as recorded before every seed's folds were tested)"
    seeds = c.repeated_nb_n_seeds
    return (f"every seed's folds ({seeds} seed{'s' if seeds != 1 else ''} × "
            f"{c.repeated_nb_n_folds // max(seeds, 1)} folds)")


def _mm(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _pixel_text(cohort: CohortSummary) -> str:
    """Source pixel size(s) and the resampling to the ROIs' pixel size, e.g. "source pixels 0.2 × 0.2 mm (47 ROIs),
    upsampled ×2"."""
    if not cohort.source_pixel_mm:
        return "source pixel size not counted"
    target = next(iter(cohort.roi_pixel_mm), ROI_PIXEL_MM)
    parts = []
    for (row, col), n in sorted(cohort.source_pixel_mm.items()):
        factor = min(row, col) / target
        how = ("not resampled" if math.isclose(factor, 1.0, rel_tol=1e-6) else
               f"upsampled ×{_mm(factor)}" if factor > 1 else f"downsampled ×{_mm(1 / factor)}")
        parts.append(f"source pixels {_mm(row)} × {_mm(col)} mm ({n} ROIs), {how} to {_mm(target)} mm")
    return "; ".join(parts)


def _cohort_text(experiment: ExperimentRecord) -> str:
    """The cohort's name and definition in words, e.g. "paper: masses only, real data only, excluded ROIs out,
    5-fold CV by lesion"."""
    cohort = experiment.config.cohort
    if cohort is None:
        return "not recorded (the experiment ran before cohorts existed)"
    try:
        definition = CohortDefinition.from_dict(cohort.definition, source="config.cohort.definition")
    except ValueError as exc:  # CadxInputError: a definition of another version
        return f"{cohort.name} (definition not readable here: {exc})"
    types = ("masses only" if tuple(definition.lesion_types) == ("masses",) else
             "lesion types " + "/".join(definition.lesion_types) if definition.lesion_types else "all lesion types")
    data = {"real": "real data only", "synthetic": "SYNTHETIC data only", "both": "real and SYNTHETIC data pooled",
            "none": "no data"}.get(cohort.synthetic_used, cohort.synthetic_used)
    review = {"included": "excluded ROIs out", "excluded": "excluded ROIs only",
              "all": "excluded ROIs in"}.get(definition.review, definition.review)
    words = [types, data, review, f"{experiment.config.n_folds}-fold CV by lesion"]
    return f"{cohort.name}: {', '.join(words)} (definition: {definition.summary()})"


def protocol_items(experiment: ExperimentRecord, results: LevelResults, cohort: CohortSummary
                   ) -> list[tuple[str, str]]:
    """The protocol as (item, text) rows: the cohort and its definition, the guard rail (and whether it was
    lowered), each SVM's degenerate Platt folds, the backbone (and whether it is the paper's AlexNet) with the
    weights note, the pixel sizes and the resampling, and how the AUC is summarised."""
    config = experiment.config
    minimum = config.min_lesions_per_class_per_fold
    if minimum is None or minimum == MIN_LESIONS_PER_CLASS_PER_FOLD:
        rail = f"default: at least {MIN_LESIONS_PER_CLASS_PER_FOLD} lesions of each class per fold"
    else:
        rail = (f"{'LOWERED' if minimum < MIN_LESIONS_PER_CLASS_PER_FOLD else 'raised'} to {minimum} lesions of "
                f"each class per fold (--min-lesions-per-fold {minimum}; the default is "
                f"{MIN_LESIONS_PER_CLASS_PER_FOLD})")
    degenerate = []
    for key in ("A", "B"):
        method = results.methods.get(key)
        if method is None:
            continue
        c = method.calibration
        if c is None:
            degenerate.append(f"{_NAMES[key]}: not recorded")
            continue
        seeds = len(c.seeds)
        over = f" ({c.n_folds // seeds} folds × {seeds} seeds)" if seeds > 1 else ""
        degenerate.append(f"{_NAMES[key]}: {c.n_clamped}/{c.n_folds} folds{over}")
    degenerate_text = ("; ".join(degenerate) + ". A degenerate fold is one whose Platt slope was held at its floor "
                       "(no signal in the inner cross-validation): its probabilities are flat"
                       ) if degenerate else "none"
    weights = config.weights
    if config.backbone == "alexnet":
        backbone = (f"alexnet (torchvision's AlexNet, weights {weights.name}, {weights.source}); the paper used "
                    "Caffe's ImageNet AlexNet (96 conv1 filters; torchvision's has 64)")
    else:
        backbone = (f"{config.backbone} (weights {weights.name}, {weights.source}): NOT the paper's AlexNet "
                    "(Huynh, Li & Giger 2016 used Caffe's ImageNet AlexNet)")
    if weights.source == "random":
        backbone += "; RANDOM (untrained) weights: a control, not a result"
    note = experiment.results.weights_note
    if note:
        backbone += f"; weights note: {note}"
    return [("cohort", _cohort_text(experiment)), ("guard rail", rail),
            ("degenerate Platt folds", degenerate_text), ("backbone", backbone),
            ("pixel size", _pixel_text(cohort)),
            ("AUC (paper)", f"the mean of the {config.n_folds} fold AUCs of the first seed ({config.seed}) ± its SE, "
                            "with a 95 % t interval over the folds (Summary, Table 1); with repeated "
                            "cross-validation also the mean ± SD of that AUC over the seeds")]


def summary_items(experiment: ExperimentRecord, results: LevelResults) -> list[dict[str, Any]]:
    """Per classifier, the paper's AUC (mean of the first seed's fold AUCs) ± SE with its 95 % t interval and,
    with repeats, the mean ± SD over seeds: dicts with ``key``, ``name``, ``auc``, ``se``, ``low``, ``high``,
    ``n_folds``, ``seeds_mean``, ``seeds_sd``, ``n_seeds``."""
    by_seed = results.repeats.methods if results.repeats is not None else {}
    rows = []
    for key, m in results.methods.items():
        aucs = [a for a in m.fold_aucs if a is not None]
        low, high = stats.fold_mean_interval(aucs) if len(aucs) >= 2 else (math.nan, math.nan)
        repeated = by_seed.get(key)
        rows.append({"key": key, "name": _NAMES.get(key, key), "auc": m.auc_mean, "se": m.auc_se, "low": low,
                     "high": high, "n_folds": len(aucs),
                     "seeds_mean": None if repeated is None else repeated.auc_mean,
                     "seeds_sd": None if repeated is None else repeated.auc_sd_between_seeds,
                     "n_seeds": 0 if repeated is None else len(repeated.auc_mean_by_seed)})
    return rows


def _span(name: str, value: Any, digits: int = 3) -> str:
    attr = f' data-value="{float(value)!r}"' if _is_number(value) else ""
    return f'<span data-key="{_e(name)}"{attr}>{_e(_fmt(value, digits))}</span>'


def _summary_html(experiment: ExperimentRecord, results: LevelResults) -> str:
    items = []
    for r in summary_items(experiment, results):
        text = (f"{_e(r['name'])}: AUC (paper: mean of {r['n_folds']} fold AUCs, first seed) "
                f"{_span('auc', r['auc'])} ± {_span('se', r['se'])} (SE), 95 % t interval "
                f"{_span('low', r['low'])} to {_span('high', r['high'])}")
        if r["n_seeds"] > 1:
            text += (f"; over {r['n_seeds']} seeds {_span('seeds_mean', r['seeds_mean'])} ± "
                     f"{_span('seeds_sd', r['seeds_sd'])} (SD between seeds)")
        items.append(f'<li data-method="{_e(r["key"])}">{text}</li>')
    return '<ul id="summary-aucs">' + "".join(items) + "</ul>" if items else ""


def _protocol_html(experiment: ExperimentRecord, results: LevelResults, cohort: CohortSummary) -> str:
    rows = "".join(f'<tr><th>{_e(k)}</th><td class="text" data-key="{_e(k)}">{_e(v)}</td></tr>'
                   for k, v in protocol_items(experiment, results, cohort))
    return f'<table id="protocol-table"><tbody>{rows}</tbody></table>'


def _tests_html(results: LevelResults, tests: Sequence[Mapping[str, Any]]) -> str:
    """The tests as two tables: the headline (fold-level) test with the difference it tests, then the tests beside
    it; and why the pooled-probability DeLong test is not shown."""
    body = _table(["comparison", "family", "AUCs subtracted", "ΔAUC (mean of fold AUCs)", "headline test",
                   "headline ΔAUC (mean over folds)", "headline p", "headline p (Bonferroni)"],
                  [[r["comparison"], r["family"], r["AUCs subtracted"], r["ΔAUC (mean of fold AUCs)"],
                    r["headline test"], r["headline ΔAUC (mean over folds)"], r["headline p"],
                    r["headline p (Bonferroni)"]] for r in tests], table_id="tests-table", digits=4)
    body += "<h3>Beside the headline</h3>" + _table(
        ["comparison", "paired t p (first seed)", "paired t p (first seed, Bonferroni)",
         "Nadeau-Bengio p (first seed)", "Nadeau-Bengio p (first seed, Bonferroni)",
         "DeLong ΔAUC (within-fold ranks)", "DeLong p (within-fold ranks)",
         "DeLong p (within-fold ranks, Bonferroni)"],
        [[r["comparison"], r["paired t p (first seed)"], r["paired t p (first seed, Bonferroni)"],
          r["Nadeau-Bengio p (first seed)"], r["Nadeau-Bengio p (first seed, Bonferroni)"],
          r["DeLong ΔAUC (within-fold ranks)"], r["DeLong p (within-fold ranks)"],
          r["DeLong p (within-fold ranks, Bonferroni)"]] for r in tests], table_id="tests-secondary-table",
        digits=4)
    degenerate = [f"{_NAMES[k]} {m.calibration.n_clamped}/{m.calibration.n_folds}"
                  for k, m in results.methods.items() if m.calibration is not None and m.calibration.n_clamped]
    body += ("<p>Every ΔAUC is the first classifier's AUC minus the second's. Headline: Nadeau–Bengio's corrected t "
             "over the folds named; significant at 0.05 only where the Bonferroni-adjusted p &lt; 0.05. DeLong's "
             "test runs on within-fold ranks; on the probabilities pooled over folds it is not shown, because "
             "those probabilities are on fold-specific scales"
             + (f" (Platt slope at its floor in {_e(', '.join(degenerate))} folds: there a whole fold is one "
                "constant at its own level)" if degenerate else "") + ".</p>")
    return body



# ---------------------------------------------------------------------------------------------------- report ---
def _count_rows(by: Mapping[str, Mapping[str, int]], columns: Sequence[str]) -> list[list[Any]]:
    return [[key, *(values.get(c, 0) for c in columns)] for key, values in by.items()]


def chance_section(data: ReportData) -> str:
    """The body of *Better than chance?*: the permutation test's table, what was permuted and the best tap's
    selection-adjusted p."""
    if data.permutation is None:
        body = ("<p>No permutation test has run on this experiment: whether its AUCs beat chance on a cohort of this "
                f"size is unknown. Run <code>cadx permutation-test {data.experiment.id}</code> (or <em>Run "
                "permutation test</em> on the ROC curves page).</p>")
    else:
        columns = ["statistic", "observed AUC", "null mean", "null SD", "null 5 %", "null 95 %", "p", "p MC SE"]
        body = _table(columns, [[r[c] for c in columns] for r in data.permutation_rows], table_id="permutation-table")
        body += f"<p>{_e(data.permutation_caption)}</p>"
    if data.best_tap_line:
        body += f'<p id="best-tap">{_e(data.best_tap_line)}</p>'
    return body  # the plain sentence when nothing beats chance is the Summary's (#summary-chance)


def _chance_words(data: ReportData) -> str:
    return chance_sentence({k: m.pooled_ci95 for k, m in data.results.methods.items()}, data.permutation)


def power_section(data: ReportData) -> str:
    """The body of *What could this cohort show?*: per comparison, the smallest detectable AUC difference and the
    lesions the paper's effect needs, at alpha and at the family's Bonferroni alpha."""
    if not data.power:
        return "<p>No comparisons, so no power to compute.</p>"
    rows = [[a.comparison, a.r, a.smallest_difference, f.smallest_difference, a.power_for_target,
             f"{a.lesions_for_target} ({a.malignant_for_target} malignant)",
             f"{f.lesions_for_target} ({f.malignant_for_target} malignant)"] for a, f in data.power]
    family = data.power[0][1].alpha
    body = _table(["comparison", "r", "smallest ΔAUC (α = 0.05)", f"smallest ΔAUC (α = {family:.3g})",
                   "power for 0.81 → 0.86", "lesions needed (α = 0.05)", f"lesions needed (α = {family:.3g})"],
                  rows, table_id="power-table")
    body += (f"<p>{_e(data.power[0][0].sentence())} Not simulated: {_e(data.power[0][0].method)}; "
             "two-sided z test, 80 % power; r is the observed correlation of the two lesion-level AUC estimates "
             "(DeLong); counts in lesions at this cohort's class ratio.</p>")
    return body


def render_report(data: ReportData) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    data : ReportData
        As made by ``cadx.workflows.report.report_data``.
    """
    experiment, cohort, results = data.experiment, data.cohort, data.results
    config = experiment.config
    warnings = [w for w, on in (("SYNTHETIC DATA", experiment.uses_synthetic_data),
                                ("RANDOM (UNTRAINED) CNN WEIGHTS", experiment.uses_random_weights)) if on]
    warning = " · ".join(warnings)
    banner_text = (f"{warning}: this report is a software demonstration, not a result about real mammograms "
                   "or a trained network." if warning else "")
    banner = f'<div class="banner">{_e(banner_text)}</div>' if warning else ""
    unit = "ROIs" if results.level == "roi" else "lesions"
    title = f"cadx study report — experiment #{experiment.id} {experiment.name}"

    def section(section_id: str, heading: str, body: str) -> str:
        return f'<section id="{section_id}"><h2>{_e(heading)}</h2>{banner}{body}</section>'

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_e(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    if warning:
        out.append(f'<div class="print-header">{_e(warning)} — not a clinical result</div>')
    out.append(f"<h1>{_e(title)}</h1>")
    created_at = datetime.fromisoformat(experiment.created_at)  # shown as str(datetime): "2026-11-30 19:55:00+00:00"
    out.append(f'<p class="meta">Generated {_e(data.generated_at)} by {_e(data.generator)}; '
               f'experiment run {_e(created_at)} by {_e(experiment.created_by)}.</p>')

    summary = (f"<p>{_e(results.n_cases)} {unit} ({_e(results.n_positive)} malignant) in {_e(config.n_folds)}-fold "
               f"cross-validation by lesion; CNN {_e(config.backbone)} tap "
               f"{_e(config.ensemble_tap)}.</p>")
    methods = results.methods
    summary += _summary_html(experiment, results)
    chance = _chance_words(data)
    if chance:
        summary += f'<p id="summary-chance"><strong>{_e(chance)}</strong></p>'
    out.append(section("summary", "Summary", summary))
    out.append(section("protocol", "Protocol", _protocol_html(experiment, results, cohort)))

    # cohort
    body = _table(["label", "patients", "lesions", "ROIs"],
                  [[label, v.patients, v.lesions, v.rois] for label, v in cohort.by_label.items()]
                  + [["all", cohort.patients, cohort.lesions, cohort.rois]], table_id="cohort-by-label")
    body += "<h3>ROIs by view</h3>" + _table(["view", *cohort.label_names],
                                             _count_rows(cohort.rois_by_view, cohort.label_names),
                                             table_id="cohort-by-view")
    body += "<h3>Lesions by lesion type</h3>" + _table(["lesion type", *cohort.label_names],
                                                       _count_rows(cohort.lesions_by_type, cohort.label_names),
                                                       table_id="cohort-by-type")
    excluded = cohort.excluded_by_reason
    body += "<h3>Exclusions by reason</h3>" + (
        _table(["reason", "ROIs"], list(excluded.items()), table_id="cohort-exclusions") if excluded
        else "<p>No ROI was excluded at review when the experiment ran.</p>")
    out.append(section("cohort", "Cohort and data", body))

    paragraph = methods_paragraph(experiment, cohort, results.comparisons)
    out.append(section("methods", "Methods", f'<p id="methods-text">{paragraph}</p>'))

    sweep = data.sweep
    if sweep:
        body = (f"<figure>{_sweep_svg(sweep, warning)}<figcaption>AUC (mean ± SE of the fold AUCs) of SVM1 on each "
                "tap, in network order.</figcaption></figure>")
        body += _table(["tap", "features", "non-constant", "AUC", "AUC.SD", "SE", "time (s)"],
                       [[r["tap"], r["n_features"], r["n_features_nonconstant"], r["auc_mean"], r["auc_sd"],
                         r["auc_se"], r["seconds"]] for r in sweep], table_id="sweep-table")
    else:
        body = "<p>This experiment has no layer sweep.</p>"
    out.append(section("fig3", "Fig. 3 — layer sweep", body))

    body = (f"<figure>{_roc_svg(methods, unit, warning)}<figcaption>Fitted binormal (solid) and empirical (dotted) "
            f"ROC curves of the pooled out-of-fold probabilities, {unit}. Pooled over folds, whose probability "
            "levels differ (each fold has its own Platt sigmoid), so these curves and their AUCs describe the "
            "pooled scores, not the paper's AUC (the mean of the fold AUCs, Table 1).</figcaption></figure>")
    out.append(section("fig4", "Fig. 4 — ROC curves", body))

    body = _table(["classifier", "AUC", "AUC.SD", "SE", "pooled AUC", "CI95 low", "CI95 high", "lesion AUC",
                   "binormal AUC", "time (s)"],
                  [[r["classifier"], r["AUC"], r["AUC.SD"], r["SE"], r["pooled AUC"], r["CI95 low"],
                    r["CI95 high"], r["lesion AUC"], r["binormal AUC"], r["time (s)"]] for r in data.table1],
                  table_id="table1")
    body += ("<p>AUC: mean of the fold AUCs; AUC.SD: their SD; SE: SD/√folds; pooled AUC (probabilities pooled "
             "over folds, whose levels differ between folds: not the paper's AUC) with its DeLong 95 % CI; "
             "lesion AUC: ROIs averaged per lesion; binormal: ML fit.</p>")
    out.append(section("table1", "Table 1 — performance", body))
    out.append(section("segmentation", "Segmentation against the reference outline (Method B)",
                       segmentation_section(data)))

    tests = data.tests
    if tests:
        body = _tests_html(results, tests)
    else:
        body = "<p>No comparisons: they need SVM1, SVM2 and the ensemble.</p>"
    out.append(section("tests", "Significance tests (headline: fold-level; Bonferroni within each family)",
                       body))
    out.append(section("chance", "Better than chance? (permutation test)", chance_section(data)))
    out.append(section("power", "What could this cohort show? (power)", power_section(data)))

    repeats = data.repeats
    if repeats:
        columns = list(repeats[0].keys())
        body = _table(columns, [[r[c] for c in columns] for r in repeats], table_id="repeats-table")
        body += "<p>Each classifier's AUC under every seed of the fold assignment and the SD between seeds.</p>"
    else:
        body = "<p>One cross-validation (one seed): no repeated-CV spread. Run with <code>--repeats N</code>.</p>"
    out.append(section("repeats", "Repeated cross-validation", body))

    provenance = [("experiment", f"#{experiment.id} {experiment.name}"),
                  ("code version", experiment.code_version),
                  ("config SHA-256", experiment.config_sha256),
                  ("ROI-set SHA-256", data.roi_set_sha256 or "not recorded"),
                  ("weights SHA-256", config.weights.sha256),
                  ("synthetic data", experiment.uses_synthetic_data),
                  ("random CNN weights", experiment.uses_random_weights)]
    body = ('<table id="provenance-table"><tbody>' + "".join(
        f'<tr><th>{_e(k)}</th><td class="mono" data-key="{_e(k)}">{_e(_fmt(v))}</td></tr>' for k, v in provenance)
        + "</tbody></table>")
    body += ("<p>The ROI-set SHA-256 is the SHA-256 of the experiment's ROI pixel hashes, sorted and joined by "
             "newlines; rerunning the config on the same ROIs gives the same numbers.</p>")
    out.append(section("provenance", "Provenance", body))
    out.append(section("disclaimer", "Disclaimer", f"<p><strong>{_e(DISCLAIMER)}</strong></p>"))
    out.append("</body></html>")
    return "\n".join(out)
