"""ROC curves: the paper's Fig. 4 (fitted binormal ROC curves) and Table 1 (AUC, AUC.SD, time), with the
significance tests, at ROI or lesion level."""

from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cadx import words
from cadx.csvsafe import frame_csv_bytes
from cadx.methods import METHODS
from cadx.palette import METHOD_COLOURS
from cadx.records import LevelResults
from cadx.workflows import comparison_table, experiment_results, method_table, repeats_table, roc_curve_table
from cadx.workflows.report import chromium_path, report_html, report_pdf
from cadx.workflows.results import calibration_notes
from pages._shared import figure_config, figure_downloads, pick_experiment, workspace
from pages._significance import permutation_panel, power_panel

ws = workspace()
LEVELS = {"roi": "ROI level (every view)", "lesion": "Lesion level (mean of its ROIs' probabilities)"}
COLOURS = METHOD_COLOURS  # colour-blind safe (Okabe-Ito)
FOUR = "%.4f"
THREE = "%.3f"
# Long classifier names -> the short ones of the chart legend (for narrow tables).
_SHORT_NAMES = {re.escape(m.name): m.short for m in METHODS.values()}


@st.cache_data(show_spinner="Computing the lesion-level statistics…", max_entries=64)
def _results(_ws, data_dir: str, experiment_id: int, config_sha256: str, created_at: str,
             level: str) -> LevelResults:
    return experiment_results(_ws, experiment_id, level)


def _pdf_download() -> None:
    """The study report as a PDF (printed by headless Chromium on the server), or a disabled button saying why not."""
    if chromium_path() is None:
        st.download_button("Study report (PDF)", b"", file_name=f"{stem}-report.pdf", disabled=True,
                           key="roc_report_pdf", icon=":material/picture_as_pdf:",
                           help="Needs Chromium on the server (/usr/bin/chromium or $CADX_CHROMIUM): not found. "
                                "Download the HTML and print it from your browser.")
        st.caption("PDF: no Chromium on this server (install it or set CADX_CHROMIUM); the HTML prints to PDF "
                   "from any browser.")
        return
    st.download_button("Study report (PDF)", lambda: report_pdf(ws, experiment_id, level=level, results=results),
                       file_name=f"{stem}-report.pdf", mime="application/pdf", on_click="ignore",
                       key="roc_report_pdf", icon=":material/picture_as_pdf:",
                       help="The same report printed to PDF by headless Chromium on the server (seconds).")


st.title("ROC curves")
st.caption("The paper's Fig. 4 and Table 1: SVM1 on CNN features (Method A), SVM2 on analytic features "
           "(Method B) and their soft-voting ensemble p3 = (p1 + p2) / 2, from out-of-fold probabilities of "
           "cross-validation by lesion; beside them (not in the paper) the z-scored ensemble: each SVM's decision "
           "values standardised with its training fold's inner cross-validated values, then averaged. "
           + words.PAPER_AUC)

experiment = pick_experiment("roc_experiment", purpose="ROC curves")
experiment_id = experiment["id"]
level = st.radio("Level", list(LEVELS), format_func=LEVELS.get, horizontal=True, key="roc_level")

results = _results(ws, str(ws.data_dir), experiment_id, experiment["config_sha256"],
                   experiment["created_at"].isoformat(), level)
n_cases, n_pos = results.n_cases, results.n_positive
unit = "ROIs" if level == "roi" else "lesions"
st.markdown(f"**{n_cases} {unit}** ({n_pos} malignant, {n_cases - n_pos} benign), {experiment['n_folds']}-fold "
            f"cross-validation by lesion, seed {experiment['seed']}; CNN: {experiment['backbone']} "
            f"{experiment['ensemble_tap']} ({experiment['weights']}).")
if experiment["repeats"] > 1:
    st.caption(f"Cross-validation was repeated with {experiment['repeats']} seeds: the curves, Table 1 and the "
               "tests are the first seed's; the spread over all seeds is under *Repeated cross-validation*.")
if not experiment["analytic"]:
    st.info("This experiment ran SVM1 only (no analytic features): no SVM2, ensemble or comparisons.")
for note in calibration_notes(results):
    st.warning(note)

# --------------------------------------------------------------------------------------------------- Fig. 4 ---
show_left, show_right = st.columns(2)
show_binormal = show_left.toggle("Fitted binormal curves", value=True, key="roc_binormal")
show_empirical = show_right.toggle("Empirical curves", value=True, key="roc_empirical")
fig = go.Figure()
def _auc_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


for key, m in results.methods.items():
    name = METHODS[key].short if key in METHODS else key
    binormal = m.binormal
    if show_binormal and binormal.fpr is not None:
        fig.add_trace(go.Scatter(x=binormal.fpr, y=binormal.tpr, mode="lines",
                                 name=f"{name}: binormal-fit AUC {_auc_text(binormal.auc)}",
                                 line={"color": COLOURS.get(key), "width": 3}))
    if show_empirical:
        fig.add_trace(go.Scatter(x=m.roc.fpr, y=m.roc.tpr, mode="lines",
                                 name=f"{name}: pooled empirical AUC {_auc_text(m.pooled_auc)}",
                                 line={"color": COLOURS.get(key), "dash": "dot", "shape": "hv", "width": 1.5}))
    if show_binormal and binormal.error is not None:
        st.caption(f"{name}: no binormal fit ({binormal.error}).")
fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "grey", "dash": "dash",
                                                                                 "width": 1}))
warning = [w for w, on in (("SYNTHETIC DEMO DATA", experiment["uses_synthetic_data"]),
                           ("RANDOM (UNTRAINED) CNN WEIGHTS", experiment["uses_random_weights"])) if on]
fig.update_layout(
    title=f"ROC curves, {unit}" + (f" — {' · '.join(warning)}" if warning else ""),
    xaxis={"title": "false-positive fraction (1 − specificity)", "range": [0, 1], "constrain": "domain"},
    yaxis={"title": "true-positive fraction (sensitivity)", "range": [0, 1], "scaleanchor": "x"},
    height=620, legend={"orientation": "v", "x": 1.02, "y": 0.0, "yanchor": "bottom"}, margin={"t": 60},
)
if warning:
    fig.update_layout(title_font_color="#c0392b")
stem = f"cadx-roc-experiment{experiment_id}-{level}"
st.plotly_chart(fig, key="roc_chart", config=figure_config(stem, "roc_fig_format", height=800))
figure_downloads(fig, stem, height=800)

# -------------------------------------------------------------------------------------------------- Table 1 ---
st.subheader("Performance (Table 1)")
st.caption("AUC: mean of the fold AUCs; AUC.SD: their standard deviation; SE: SD / √folds. Pooled AUC: one ROC "
           "over all out-of-fold predictions, with its DeLong 95 % CI. Lesion AUC: ROIs averaged per lesion. "
           "Binormal: maximum-likelihood fit of the curve above (a, b). Time: cross-validation of the classifier "
           "(feature extraction not included). Seed SD: SD of the AUC between the seeds of a repeated "
           "cross-validation (ROI level). Degenerate folds: folds (over all seeds) where the SVM's Platt slope was "
           "held at its floor, so its probabilities are flat and p3 ranks by the other SVM alone.")
table = method_table(results)
shown = table.assign(**{"95 % CI": [f"{lo:.3f}–{hi:.3f}" if lo is not None else "" for lo, hi in
                                    zip(table["CI95 low"], table["CI95 high"], strict=True)]})
shown = shown[["classifier", "AUC", "seed SD", "AUC.SD", "SE", "pooled AUC", "95 % CI", "lesion AUC",
               "binormal AUC", "degenerate folds"]]
# Narrow number columns, so that Table 1 fits a 1440-px screen without scrolling; timing and details sit below.
st.dataframe(shown, hide_index=True, width="stretch", column_config={  # short headers; each AUC's name in its tooltip
    "classifier": st.column_config.TextColumn(pinned=True),
    "AUC": st.column_config.NumberColumn("AUC (paper)", format=THREE, width="small",
                                         help=words.AUC_NAMES["fold_mean"][1]),
    "seed SD": st.column_config.NumberColumn(format=THREE, width="small",
                                             help="SD of the AUC between the seeds of a repeated cross-validation"),
    "AUC.SD": st.column_config.NumberColumn(format=THREE, width="small", help="SD of the fold AUCs"),
    "SE": st.column_config.NumberColumn(format=THREE, width="small", help="SE of the fold mean: SD / √folds"),
    "pooled AUC": st.column_config.NumberColumn("pooled", format=THREE, width="small",
                                                help=words.AUC_NAMES["pooled"][1]),
    "95 % CI": st.column_config.TextColumn(width="small", help="DeLong 95 % CI of the pooled AUC"),
    "lesion AUC": st.column_config.NumberColumn("lesion", format=THREE, width="small",
                                                help=words.AUC_NAMES["lesion"][1]),
    "binormal AUC": st.column_config.NumberColumn("binormal", format=THREE, width="small",
                                                  help=words.AUC_NAMES["binormal"][1]),
    "degenerate folds": st.column_config.TextColumn("degenerate", width="small",
                                                    help="Folds where the SVM's Platt slope was held at its floor"),
})
with st.expander("Time and details of each classifier"):
    st.dataframe(table[["classifier", "time (s)", "detail"]], hide_index=True, width="stretch", column_config={
        "time (s)": st.column_config.NumberColumn(format="%.2f", width="small"),
        "detail": st.column_config.TextColumn(width="large")})

with st.expander("AUC of each fold"):
    folds = pd.DataFrame({row.classifier: pd.Series(results.methods[row.method].fold_aucs, dtype=float)
                          for row in table.itertuples()}).T
    folds.columns = [f"fold {k + 1}" for k in folds.columns]
    st.dataframe(folds, column_config={c: st.column_config.NumberColumn(format=THREE) for c in folds.columns})

repeats = repeats_table(results)
if not repeats.empty:
    st.subheader("Repeated cross-validation")
    st.caption("Each classifier's AUC (mean of the fold AUCs, ROI level) under every seed of the fold assignment: "
               "the SD between seeds shows how much of a difference comes from one particular split.")
    st.dataframe(repeats, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format=THREE) for c in repeats.columns if c != "classifier"})

# ---------------------------------------------------------------------------------------------- tests ---
st.subheader("Significance tests")
tests = comparison_table(results)
if tests.empty:
    st.info("No comparisons: they need SVM1, SVM2 and the ensembles.")
else:
    st.caption("Headline: Nadeau–Bengio's corrected t over every seed's folds (Bouckaert & Frank's corrected "
               "repeated k-fold test; training and test sizes counted in lesions). Beside it the paired t and "
               "Nadeau–Bengio tests on the first seed's folds, and DeLong's test on each case's rank within its own "
               "fold (probabilities of different folds are on different scales, so DeLong on them pooled is not "
               "shown). Every ΔAUC is the first classifier's AUC minus the second's. Bonferroni: p × 3 within each "
               "family (the paper's three comparisons; the z-scored ensemble's three), capped at 1.")
    # Two tables so that each fits a 1440-px screen (the CSV keeps every column in one): the headline test over every
    # seed's folds, then the first seed's tests beside it. Short classifier names; each header's full name on hover.
    comparison = tests["comparison"].replace(_SHORT_NAMES, regex=True)
    headline = {"headline ΔAUC (mean over folds)": "ΔAUC seeds×folds", "headline p": "N–B p",
                "headline p (Bonferroni)": "N–B p×3"}
    first_seed = {"ΔAUC (mean of fold AUCs)": "ΔAUC folds", "paired t p (first seed)": "t-test p",
                  "Nadeau-Bengio p (first seed)": "N–B p", "DeLong p (within-fold ranks)": "DeLong p (ranks)",
                  "DeLong p (within-fold ranks, Bonferroni)": "DeLong p×3"}
    st.markdown(f"**Headline** · {'; '.join(dict.fromkeys(tests['headline test']))}")
    st.dataframe(tests.assign(comparison=comparison)[["comparison", "family", "AUCs subtracted", *headline]],
                 hide_index=True, width="stretch", column_config={
        "comparison": st.column_config.TextColumn(pinned=True),
        "family": st.column_config.TextColumn(width="small",
                                              help="paper: the paper's three comparisons; added: the z-ensemble's"),
        **{c: st.column_config.NumberColumn(headline[c], format=FOUR, help=c, width="small") for c in headline}})
    st.markdown("**Beside it, on the first seed's folds**")
    ci = [f"{lo:.3f} to {hi:.3f}" if pd.notna(lo) else "" for lo, hi in
          zip(tests["DeLong CI95 low"], tests["DeLong CI95 high"], strict=True)]
    st.dataframe(tests.assign(comparison=comparison, **{"95 % CI": ci})[["comparison", *first_seed, "95 % CI"]],
                 hide_index=True, width="stretch", column_config={
        "comparison": st.column_config.TextColumn(pinned=True),
        "95 % CI": st.column_config.TextColumn(width="small",
                                               help="DeLong 95 % CI of the within-fold-rank AUC difference"),
        **{c: st.column_config.NumberColumn(first_seed[c], format=FOUR, help=c, width="small")
           for c in first_seed}})

permutation_panel(ws, experiment_id)  # pages/_significance.py: better than chance? what could this cohort show?
power_panel(ws, experiment_id)

st.subheader("Downloads")
st.download_button("Study report (HTML)", lambda: report_html(ws, experiment_id, level=level, results=results).encode(),
                   file_name=f"{stem}-report.html", mime="text/html", on_click="ignore", key="roc_report_html",
                   icon=":material/description:",
                   help="One self-contained page: cohort, methods paragraph, Fig. 3, Fig. 4, Table 1, tests, repeated "
                        "CV, provenance and disclaimer (print it to PDF from the browser or with `cadx report --pdf`).")
_pdf_download()
d1, d2, d3, d4 = st.columns(4)
d1.download_button("Table 1 (CSV)", frame_csv_bytes(table.rename(columns=words.AUC_COLUMNS)),
                   file_name=f"{stem}-table1.csv",
                   mime="text/csv", on_click="ignore", key="roc_table_csv")
d2.download_button("Significance tests (CSV)", frame_csv_bytes(tests), file_name=f"{stem}-tests.csv",
                   mime="text/csv", on_click="ignore", key="roc_tests_csv", disabled=tests.empty)
d3.download_button("Curve points (CSV)", frame_csv_bytes(roc_curve_table(results)),
                   file_name=f"{stem}-curves.csv", mime="text/csv", on_click="ignore", key="roc_curves_csv")
d4.download_button("Repeated CV (CSV)", frame_csv_bytes(repeats), file_name=f"{stem}-repeats.csv",
                   mime="text/csv", on_click="ignore", key="roc_repeats_csv", disabled=repeats.empty,
                   help=None if not repeats.empty else "This experiment ran one cross-validation (one seed).")
