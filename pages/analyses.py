"""Open questions: the analyses the paper left open, on any experiment — do the CNN and analytic classifiers err
on the same lesions; which CNN features go with which analytic features; feature-level fusion (Method D); an
embedding map of a tap's features (click a point to open its ROI)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cadx import words
from cadx.errors import CadxError
from cadx.palette import LABEL_COLOURS, STATUS_COLOURS
from cadx.workflows import METHOD_NAMES, readable_cases, roi_overlay
from cadx.workflows.analyses import (
    agreement_analysis,
    correlation_analysis,
    embedding_analysis,
    fusion_analysis,
)
from pages._shared import pick_experiment, workspace

ws = workspace()
THREE = "%.3f"
MAP_COLOURS = {**LABEL_COLOURS, **STATUS_COLOURS}  # the t-SNE map: Okabe-Ito, never red against green
NAMES = {**METHOD_NAMES, "D": "Method D: fusion (CNN + analytic features, one SVM)"}


@st.cache_data(show_spinner="Comparing the two classifiers' errors…", max_entries=32)
def _agreement(_ws, data_dir: str, experiment_id: int, config_sha256: str, level: str,
               threshold: float | None) -> dict:
    return agreement_analysis(_ws, experiment_id, level=level, threshold=threshold)


@st.cache_data(show_spinner="Principal components of the tap…", max_entries=16)
def _correlation(_ws, data_dir: str, experiment_id: int, config_sha256: str, tap: str, k: int) -> dict:
    return correlation_analysis(_ws, experiment_id, tap=tap, n_components=k)


@st.cache_data(show_spinner="Cross-validating Method D with the experiment's folds…", max_entries=8)
def _fusion(_ws, data_dir: str, experiment_id: int, config_sha256: str, tap: str) -> dict:
    return fusion_analysis(_ws, experiment_id, tap=tap)


@st.cache_data(show_spinner="t-SNE of the tap's features…", max_entries=16)
def _embedding(_ws, data_dir: str, experiment_id: int, config_sha256: str, tap: str, perplexity: float
               ) -> pd.DataFrame:
    return embedding_analysis(_ws, experiment_id, tap=tap, perplexity=perplexity)


st.title("Open questions")
st.caption("Analyses the paper left open, on the chosen experiment's out-of-fold predictions and stored features.")
experiment = pick_experiment("analyses_experiment", purpose="analyses")
experiment_id, sha = experiment["id"], experiment["config_sha256"]
key = (ws, str(ws.data_dir), experiment_id, sha)
taps = experiment["taps"]
default_tap = taps.index(experiment["ensemble_tap"]) if experiment["ensemble_tap"] in taps else len(taps) - 1

agree_tab, corr_tab, fusion_tab, map_tab = st.tabs(
    ["Same errors?", "CNN vs analytic features", "Method D: fusion", "Embedding map"])

# ------------------------------------------------------------------------------------------------ agreement ---
with agree_tab:
    if not experiment["analytic"]:
        st.info("This experiment ran SVM1 only: no SVM2 to compare with.")
    else:
        left, right = st.columns(2)
        level = left.radio("Level", ["lesion", "roi"], horizontal=True, key="agree_level",
                           format_func={"lesion": "Lesions (mean of their ROIs)", "roi": "ROIs"}.get)
        point = right.radio("Called malignant at", ["fold", "fixed"], horizontal=True, key="agree_point",
                            format_func={"fold": "each fold's operating point (its training data)",
                                         "fixed": "a fixed probability"}.get)
        threshold = (None if point == "fold" else
                     float(right.slider("p ≥", 0.05, 0.95, 0.5, 0.05, key="agree_threshold")))
        try:
            agreement = _agreement(*key, level, threshold)
        except CadxError as exc:
            st.error(str(exc))
        else:
            r = agreement["result"]
            st.caption(f"Called malignant at {agreement['called_at']}.")
            if r.refusal is not None:
                st.warning(f"φ and McNemar: {r.refusal}.")
                tested = ""
            else:
                tested = (f"; error correlation (φ) {r.error_correlation:.3f}; McNemar exact p = {r.mcnemar_p:.4g} "
                          "(do they err equally often?)")
            st.markdown(f"**{r.n} {'lesions' if level == 'lesion' else 'ROIs'}**: both wrong on **{r.both_wrong}** "
                        f"(independent errors would give {r.both_wrong_expected:.1f}){tested}; Spearman ρ(p1, p2) = "
                        f"{r.spearman_rho:.3f} (p = {r.spearman_p:.3g}).")
            st.dataframe(agreement["operating_points"], hide_index=True, key="agree_points", placeholder=words.EMPTY)
            st.dataframe(agreement["table"], key="agree_table")
            st.caption("Rows: SVM1 (CNN); columns: SVM2 (analytic). McNemar tests the off-diagonal cells against "
                       "each other (exact binomial). The cases where p1 and p2 differ most:")
            st.dataframe(readable_cases(agreement["disagreeing"], n_folds=experiment["n_folds"],
                                        seed=experiment["seed"]),
                         hide_index=True, key="agree_cases", placeholder=words.EMPTY, column_config={
                             words.column_word(c): st.column_config.NumberColumn(format=THREE)
                             for c in ("p1", "p2", "disagreement")})

# ---------------------------------------------------------------------------------------------- correlation ---
with corr_tab:
    if not experiment["analytic"]:
        st.info("This experiment has no analytic features.")
    else:
        left, right = st.columns(2)
        tap = left.selectbox("Tap", taps, index=default_tap, key="corr_tap")
        k = right.slider("Principal components", 2, 20, 10, key="corr_k")
        try:
            corr = _correlation(*key, tap, int(k))
        except CadxError as exc:
            st.error(str(exc))
        else:
            frame = corr["frame"]
            fig = go.Figure(go.Heatmap(z=frame.to_numpy(), x=list(frame.columns), y=list(frame.index),
                                       zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                                       colorbar={"title": "Pearson r"}))
            fig.update_layout(height=160 + 26 * len(frame), margin={"t": 30}, yaxis={"autorange": "reversed"},
                              title=f"{tap}: principal components (variance explained) × analytic features")
            st.plotly_chart(fig, key="corr_heatmap")
            pairs = pd.DataFrame(corr["result"].top_pairs(10), columns=["component", "analytic feature", "r"])
            st.caption("Strongest correlations (PCs of the standardised tap features over the experiment's ROIs; "
                       "analytic features where the segmentation succeeded):")
            st.dataframe(pairs, hide_index=True, key="corr_pairs",
                         column_config={"r": st.column_config.NumberColumn(format=THREE)})

# --------------------------------------------------------------------------------------------------- fusion ---
with fusion_tab:
    st.caption("Method D concatenates a tap's CNN features and the 21 analytic features into one SVM (each column "
               "standardised within the training folds; Antropova, Huynh & Giger 2017) and cross-validates it with "
               "the experiment's own folds and seed, so its tests against A, B and C are paired. Bonferroni: × 3.")
    if not experiment["analytic"]:
        st.info("This experiment has no analytic features to fuse.")
    else:
        tap_d = st.selectbox("CNN tap", taps, index=default_tap, key="fusion_tap")
        if st.button("Run Method D", key="fusion_run", icon=":material/merge:") or st.session_state.get(
                f"fusion_done_{experiment_id}_{tap_d}"):
            try:
                fusion = _fusion(*key, tap_d)
            except CadxError as exc:
                st.error(str(exc))
            else:
                st.session_state[f"fusion_done_{experiment_id}_{tap_d}"] = True
                m = fusion["method"]
                ci = m.get("pooled_ci95") or [None, None]
                st.markdown(f"**Method D** ({fusion['n_features']} features, tap {fusion['tap']}): AUC (mean of "
                            f"fold AUCs) {m['auc_mean']:.3f} ± {m['auc_sd']:.3f} (SD over the experiment's folds); "
                            f"pooled AUC (probabilities pooled over folds) {m['pooled_auc']:.3f}.")
                st.dataframe(pd.DataFrame([{"classifier": NAMES["D"], "features": fusion["n_features"],
                                            "AUC (mean of folds)": m["auc_mean"], "AUC.SD": m["auc_sd"],
                                            "SE": m["auc_se"], "pooled AUC (pooled over folds)": m["pooled_auc"],
                                            "95 % CI": f"{ci[0]:.3f}–{ci[1]:.3f}" if ci[0] is not None else "",
                                            "lesion AUC": m["lesion_auc"]}]), hide_index=True, key="fusion_table",
                             column_config={c: st.column_config.NumberColumn(format=THREE)
                                            for c in ("AUC (mean of folds)", "AUC.SD", "SE",
                                                      "pooled AUC (pooled over folds)", "lesion AUC")})
                tests = pd.DataFrame([{"comparison": f"D vs {NAMES.get(c['comparison'][-1], c['comparison'][-1])}",
                                       "ΔAUC (mean of fold AUCs, D − other)": c.get("fold_mean_auc_difference"),
                                       "Nadeau-Bengio p": c.get("repeated_nb_p"),
                                       "Nadeau-Bengio p (Bonferroni)": c.get("repeated_nb_p_bonferroni"),
                                       "paired t p (Bonferroni)": c["paired_t_p_bonferroni"],
                                       "DeLong ΔAUC (within-fold ranks)": c.get("rank_delong_auc_difference"),
                                       "DeLong p (within-fold ranks, Bonferroni)": c.get("rank_delong_p_bonferroni")}
                                      for c in fusion["comparisons"]])
                st.dataframe(tests, hide_index=True, key="fusion_tests", column_config={
                    c: st.column_config.NumberColumn(format="%.4f") for c in tests.columns if c != "comparison"})
        else:
            st.caption("Runs a nested cross-validation (seconds to minutes, depending on the tap's width).")

# ------------------------------------------------------------------------------------------------ embedding ---
with map_tab:
    left, mid, right = st.columns(3)
    tap_e = left.selectbox("Tap", taps, index=default_tap, key="map_tap")
    colour = mid.radio("Colour by", ["label", "status"], horizontal=True, key="map_colour",
                       format_func={"label": "Label", "status": "Review status"}.get)
    perplexity = right.slider("Perplexity", 5, 50, 30, key="map_perplexity")
    shown_key = f"map_done_{experiment_id}_{tap_e}_{perplexity}"
    if not (st.button("Compute the map", key="map_run", icon=":material/scatter_plot:")
            or st.session_state.get(shown_key)):
        st.caption("t-SNE of the tap's standardised features (first 50 principal components), one point per ROI.")
        st.stop()
    try:
        frame = _embedding(*key, tap_e, float(perplexity))
    except CadxError as exc:
        st.error(str(exc))
    else:
        st.session_state[shown_key] = True
        hover = frame.assign(view=[words.empty_or(v) for v in frame["view"]],
                             qc_flags=[", ".join(words.word(c.strip()) for c in q.split(",")) if q else words.EMPTY
                                       for q in frame["qc_flags"]])  # codes joined by the workflow -> words
        fig = px.scatter(hover, x="x", y="y", color=colour, custom_data=["roi_id"],
                         hover_data={"roi_id": True, "lesion_key": True, "view": True, "p1": ":.3f",
                                     "qc_flags": True, "x": False, "y": False},
                         labels={c: words.column_word(c) for c in hover.columns},
                         color_discrete_map=MAP_COLOURS)
        fig.update_layout(height=560, xaxis={"title": "t-SNE 1"}, yaxis={"title": "t-SNE 2"},
                          title=f"t-SNE of {tap_e} ({len(frame)} ROIs)")
        event = st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode="points")
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        st.caption("Click a point to open its ROI with its segmentation outline.")
        if points:
            roi_id = int(points[0]["customdata"][0])
            image, info = roi_overlay(ws, roi_id, experiment_id=experiment_id)
            row = frame[frame["roi_id"] == roi_id].iloc[0]
            st.image(image, width=360, caption=f"ROI {roi_id} · lesion {row['lesion_key']} · {row['label']} · "
                                               f"p1 {row['p1']:.3f} · {row['status']}")
