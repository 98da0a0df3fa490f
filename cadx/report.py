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

from cadx.permutation import PermutationResult, chance_sentence
from cadx.power import PowerSummary
from cadx.records import ExperimentRecord, LevelResults, MethodRecord

__all__ = ["DISCLAIMER", "SECTIONS", "CohortSummary", "LabelCounts", "ReportData", "render_report", "svg_line_chart",
           "methods_paragraph", "roi_set_sha256", "chance_section", "power_section"]

#: Section ids of a report, in order (the test checks every one is present).
SECTIONS = ("summary", "cohort", "methods", "fig3", "fig4", "table1", "tests", "chance", "power", "repeats",
            "provenance", "disclaimer")

DISCLAIMER = ("Research use only. Not a medical device. These results come from a retrospective research "
              "experiment and must not be used to diagnose, treat or manage any patient.")

_COLOURS = {"A": "#1f77b4", "B": "#2ca02c", "C": "#d62728", "D": "#9467bd"}
_NAMES = {"A": "SVM1 (CNN)", "B": "SVM2 (analytic)", "C": "Ensemble", "D": "Fusion (Method D)"}
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
    plot_w, plot_h = width - left - right, height - top - bottom
    if square:
        plot_w = plot_h = min(plot_w, plot_h)
        width = left + plot_w + right
    (x0, x1), (y0, y1) = x_range, y_range
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
        parts.append(f'<text x="{x:.2f}" y="{top + plot_h + 16}" text-anchor="middle">{_e(label)}</text>')
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


def methods_paragraph(experiment: ExperimentRecord, cohort: CohortSummary) -> str:
    """The methods as a paragraph a reader can paste into a paper (HTML-escaped plain text)."""
    config = experiment.config
    weights = config.weights
    seeds = config.seeds
    analytic = config.analytic_version
    text = [
        f"The dataset comprised {cohort.rois} regions of interest (ROIs) from {cohort.lesions} lesions of "
        f"{cohort.patients} patients ({cohort.lesions_by_label.get('malignant', 0)} malignant and "
        f"{cohort.lesions_by_label.get('benign', 0)} benign lesions); "
        f"{sum(cohort.excluded_by_reason.values())} ROIs were excluded at review.",
        "Each ROI is a 51.2 mm × 51.2 mm field centred on the lesion, resampled to 512 × 512 pixels at 0.1 mm.",
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
    text.append("The AUC is the mean of the fold AUCs (with their SD and SE); pooled ROC curves were fitted with "
                "the maximum-likelihood binormal model; classifiers were compared by DeLong's test, a fold-wise "
                "paired t-test and the Nadeau–Bengio corrected resampled t-test, with Bonferroni correction for "
                "the three comparisons.")
    return " ".join(_e(t) for t in text)


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
    if methods:
        summary += "<ul>" + "".join(
            f"<li>{_e(_NAMES.get(k, k))}: AUC {_e(_fmt(m.auc_mean))} ± {_e(_fmt(m.auc_sd))} "
            f"(SD over folds)</li>" for k, m in methods.items()) + "</ul>"
    chance = _chance_words(data)
    if chance:
        summary += f'<p id="summary-chance"><strong>{_e(chance)}</strong></p>'
    out.append(section("summary", "Summary", summary))

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

    out.append(section("methods", "Methods", f'<p id="methods-text">{methods_paragraph(experiment, cohort)}'
                                             "</p>"))

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
            f"ROC curves of the pooled out-of-fold probabilities, {unit}.</figcaption></figure>")
    out.append(section("fig4", "Fig. 4 — ROC curves", body))

    body = _table(["classifier", "AUC", "AUC.SD", "SE", "pooled AUC", "CI95 low", "CI95 high", "lesion AUC",
                   "binormal AUC", "time (s)"],
                  [[r["classifier"], r["AUC"], r["AUC.SD"], r["SE"], r["pooled AUC"], r["CI95 low"],
                    r["CI95 high"], r["lesion AUC"], r["binormal AUC"], r["time (s)"]] for r in data.table1],
                  table_id="table1")
    body += ("<p>AUC: mean of the fold AUCs; AUC.SD: their SD; SE: SD/√folds; pooled AUC with its DeLong 95 % CI; "
             "lesion AUC: ROIs averaged per lesion; binormal: ML fit.</p>")
    out.append(section("table1", "Table 1 — performance", body))

    tests = data.tests
    if tests:
        body = _table(["comparison", "AUC difference", "DeLong p", "DeLong p (Bonferroni)", "paired t p",
                       "paired t p (Bonferroni)", "Nadeau-Bengio p", "Nadeau-Bengio p (Bonferroni)"],
                      [[r["comparison"], r["AUC difference"], r["DeLong p"], r["DeLong p (Bonferroni)"],
                        r["paired t p"], r["paired t p (Bonferroni)"], r["Nadeau-Bengio p"],
                        r["Nadeau-Bengio p (Bonferroni)"]] for r in tests], table_id="tests-table", digits=4)
        body += ("<p>Bonferroni: each p-value × 3 (three comparisons), capped at 1; significant at 0.05 after "
                 "correction only where the adjusted p &lt; 0.05.</p>")
    else:
        body = "<p>No comparisons: they need SVM1, SVM2 and the ensemble.</p>"
    out.append(section("tests", "Significance tests (Bonferroni-corrected)", body))
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
