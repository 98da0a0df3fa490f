"""Predictions: every ROI's (or lesion's) out-of-fold probabilities from SVM1, SVM2 and the ensemble, where the
classifiers disagree, and the ROI itself with its segmentation outline."""

from __future__ import annotations

import streamlit as st

from cadx import words
from cadx.labels import label_word
from cadx.workflows import lesion_predictions, readable_cases, roi_overlay, roi_predictions
from cadx.workflows.features import segmentation_score_words
from pages._shared import csv_download, pick_experiment, plain, workspace

ws = workspace()
LEVELS = {"roi": "Per ROI", "lesion": "Per lesion (mean of its ROIs)"}
SORTS = {
    "disagreement": "Classifier disagreement |p1 − p2| (largest first)",
    "p3": "Ensemble probability p3 (highest first)",
    "wrong": "Ensemble wrong first",
    "id": "ID",
}
PROBABILITY = "%.3f"

st.title("Predictions")
st.caption("Out-of-fold probabilities of malignancy: p1 from SVM1 (CNN features), p2 from SVM2 (analytic "
           "features), p3 = (p1 + p2) / 2 from the ensemble. Each case was predicted by the classifier trained on "
           "the other folds. Right or wrong at a threshold of 0.5. " + words.PAPER_AUC)

experiment = pick_experiment("pred_experiment", purpose="predictions")
experiment_id = experiment["id"]
FOLDS = {"n_folds": experiment["n_folds"], "seed": experiment["seed"]}  # the first seed's folds, as every page shows

left, middle, right = st.columns([2, 3, 2])
level = left.radio("Level", list(LEVELS), format_func=LEVELS.get, key="pred_level")
sort = middle.selectbox("Sort by", list(SORTS), format_func=SORTS.get, key="pred_sort")
only_wrong = right.checkbox("Only cases the ensemble gets wrong", key="pred_only_wrong")

frame = roi_predictions(ws, experiment_id) if level == "roi" else lesion_predictions(ws, experiment_id)
id_column = "roi_id" if level == "roi" else "lesion_id"
right_column = "right_p3" if frame["p3"].notna().any() else "right_p1"
if sort == "disagreement":
    frame = frame.sort_values(["disagreement", id_column], ascending=[False, True], na_position="last")
elif sort == "p3":
    frame = frame.sort_values(["p3" if right_column == "right_p3" else "p1", id_column], ascending=[False, True])
elif sort == "wrong":
    frame = frame.sort_values([right_column, id_column], ascending=[True, True])
else:
    frame = frame.sort_values(id_column)
if only_wrong:
    frame = frame[frame[right_column] == False]  # noqa: E712  (None = classifier not run)

n_right = {c: int((frame[f"right_{c}"] == True).sum()) for c in ("p1", "p2", "p3", "pz")}  # noqa: E712
unit = "ROIs" if level == "roi" else "lesions"
st.markdown(f"**{len(frame)} {unit}** shown · right at 0.5: SVM1 {n_right['p1']}, SVM2 {n_right['p2']}, "
            f"ensemble {n_right['p3']}, z-ensemble (at 0) {n_right['pz']}")

columns = {
    "roi": ["roi_id", "lesion_key", "view", "truth", "fold", "p1", "p2", "p3", "pz", "disagreement", "right_p1",
            "right_p2", "right_p3", "right_pz", "patient_key", "laterality", "included_now"],
    "lesion": ["lesion_id", "lesion_key", "n_rois", "truth", "fold", "p1", "p2", "p3", "pz", "disagreement",
               "right_p1", "right_p2", "right_p3", "right_pz", "patient_key"],
}[level]
st.caption("Click a row to open it below; click a column header to sort.")
shown = readable_cases(frame[columns], **FOLDS)  # the table and its CSV: truth in words, folds as on every page
column = words.column_word
event = st.dataframe(shown, hide_index=True, key=f"pred_table_{level}", on_select="rerun",
                     selection_mode="single-row", placeholder=words.EMPTY, column_config={
    column("roi_id"): st.column_config.NumberColumn(format="%d"),
    column("lesion_id"): st.column_config.NumberColumn(format="%d"),
    **{column(c): st.column_config.NumberColumn(format=PROBABILITY) for c in ("p1", "p2", "p3", "disagreement")},
    column("pz"): st.column_config.NumberColumn(format="%.3f"),
    **{column(f"right_{c}"): st.column_config.CheckboxColumn() for c in ("p1", "p2", "p3", "pz")},
    column("included_now"): st.column_config.CheckboxColumn(help="Excluded by review since the run?"),
})
csv_download(f"Predictions per {'ROI' if level == 'roi' else 'lesion'} (CSV)", shown,
             f"cadx-predictions-experiment{experiment_id}-{level}.csv", key="pred_csv")

# ------------------------------------------------------------------------------------------------ open an ROI ---
st.subheader("Open an ROI")
rois = roi_predictions(ws, experiment_id)
picked = event.selection.rows if event is not None else []
picked_id = int(frame.iloc[picked[0]][id_column]) if picked and picked[0] < len(frame) else None
if picked_id is not None and st.session_state.get(f"pred_picked_{level}") != picked_id:
    st.session_state[f"pred_picked_{level}"] = picked_id  # a newly clicked row opens that ROI or lesion
    st.session_state["pred_open_lesion" if level == "lesion" else "pred_open_roi_roi"] = picked_id
if level == "lesion":
    lesion_ids = frame["lesion_id"].tolist()
    if not lesion_ids:
        st.stop()
    labels = dict(zip(frame["lesion_id"], frame["lesion_key"], strict=True))
    if st.session_state.get("pred_open_lesion") not in lesion_ids:
        st.session_state.pop("pred_open_lesion", None)
    lesion_id = st.selectbox("Lesion", lesion_ids, format_func=lambda i: f"{labels[i]} (lesion id {i})",
                             key="pred_open_lesion")
    rois = rois[rois["lesion_id"] == lesion_id]
    order = rois["roi_id"].tolist()
else:
    order = frame["roi_id"].tolist()
if not order:
    st.info("No ROI to open.")
    st.stop()
rows = rois.set_index("roi_id")


def _roi_label(i: int) -> str:
    r = rows.loc[i]
    label = f"ROI {i} · {r['lesion_key']} · {r['view'] or 'view ?'} · {label_word(r['truth'])}"
    return label + (f" · |p1 − p2| {r['disagreement']:.3f}" if r["disagreement"] == r["disagreement"] else "")


if st.session_state.get(f"pred_open_roi_{level}") not in order:
    st.session_state.pop(f"pred_open_roi_{level}", None)
roi_id = st.selectbox("ROI", order, key=f"pred_open_roi_{level}", format_func=_roi_label)
row = rows.loc[roi_id]
image, info = roi_overlay(ws, int(roi_id), experiment_id=experiment_id)
picture, details = st.columns([3, 2])
caption = "ROI 51.2 mm × 51.2 mm at 0.1 mm"
if info["has_outline"]:
    caption += " · yellow: Method B segmentation"
if info["has_truth_outline"]:
    caption += f" · cyan: {info['truth_outline']}"
picture.image(image, caption=caption, width=512)
scored = segmentation_score_words(ws, int(roi_id))
if scored is not None:  # the segmentation's agreement with the reference outline, beside it (issue 27.3)
    picture.caption(scored)
with details:
    st.markdown(f"**ROI {roi_id}** · lesion {plain(row['lesion_key'])} · patient {plain(row['patient_key'])} · "
                f"{row['view'] or 'view unknown'} {row['laterality'] or ''}")
    st.markdown(f"Truth: **{label_word(row['truth'])}** · {words.fold_text(row['fold'], **FOLDS)}")
    for column, name in (("p1", "p1 SVM1 (CNN)"), ("p2", "p2 SVM2 (analytic)"), ("p3", "p3 ensemble")):
        value = row[column]
        if value == value:  # not NaN
            verdict = "right" if row[f"right_{column}"] else "wrong"
            st.markdown(f"{name}: **{value:.3f}** ({verdict} at 0.5)")
    if info["segmentation_quality"] is None:
        st.caption("No Method B segmentation stored for this ROI.")
    else:
        st.markdown(f"Segmentation: **{words.word(info['segmentation_quality'])}**"
                    + (f" — {plain(info['segmentation_reason'])}" if info["segmentation_reason"] else ""),
                    help=words.meaning(info["segmentation_quality"]))
    if not row["included_now"]:
        st.warning("This ROI has been excluded by review since the experiment ran.")

# ------------------------------------------------------------------------------------ why did it say malignant? ---
with st.expander("Why did SVM1 say this? (occlusion sensitivity of p1)"):
    st.caption("A grey patch slides over the ROI; each occluded copy goes through the CNN to the SVM1 tap and is "
               "scored by this ROI's fold SVM as stored with the experiment (checked against the stored decision "
               "value). Red: hiding the region lowers p1 (it supports the call); blue: hiding it raises p1.")
    o_left, o_right = st.columns(2)
    o_patch = o_left.select_slider("Patch (pixels, 0.1 mm each)", [32, 64, 96, 128], value=64, key="occ_patch")
    o_stride = o_right.select_slider("Stride", [16, 32, 48, 64, 128], value=32, key="occ_stride")
    if st.button("Compute the occlusion map", key="occ_run", icon=":material/blur_on:"):
        from cadx.errors import CadxError
        from cadx.occlusion import colour_bar, heat_overlay
        from cadx.workflows.analyses import occlusion_analysis

        try:
            with st.spinner("Occluding and re-scoring (one CNN pass per patch position)…"):
                occlusion = occlusion_analysis(ws, experiment_id, int(roi_id), patch=int(o_patch),
                                               stride=int(o_stride))
        except CadxError as exc:
            st.error(str(exc))
        else:
            sens = occlusion["map"].sensitivity
            scale = occlusion["scale"]
            if scale.degenerate:  # said above the map, in words: full red/blue of a flat p1 is not an explanation
                st.warning(scale.message, icon=":material/warning:")
            st.image(heat_overlay(image, sens), width=512,
                     caption=f"p1 {occlusion['p1']:.3f} (stored {occlusion['p1_stored']:.3f}), "
                             f"{words.fold_text(occlusion['fold'], **FOLDS)}, tap {occlusion['tap']}; "
                             f"largest drop {sens.max():+.4f}, "
                             f"largest rise {sens.min():+.4f} in p1")
            st.image(colour_bar(scale.max_abs), width=512,
                     caption=f"Colour scale, change in p1 when the region is hidden (Δp = p1 − p1 hidden): "
                             f"blue {-scale.max_abs:+.4f} · grey 0 · red {scale.max_abs:+.4f}")
            if occlusion["model_source"] == "refit":
                st.info("This experiment was recorded before fold models were stored: its fold SVM was refitted "
                        "from the stored features with the fold's stored parameters (same decision value).")
            else:
                st.caption("Scored by the fold's stored SVM (no refit).")
