"""Layer explorer (live demos of per-layer performance): one ROI as the CNN receives it, the strongest activation maps
of every tap beside the tap's AUC from a chosen sweep, and where the ROI's SVM score at each tap falls among the
benign and malignant ROIs' out-of-fold scores."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from cadx.backbones import backbone_label
from cadx.cnn import BACKBONES
from cadx.errors import CadxError, WeightsUnavailableError
from cadx.explorer import mosaic, to_uint8
from cadx.palette import LABEL_COLOURS
from cadx.workflows import list_experiments, roi_overlay
from cadx.workflows.explorer import (
    explorer_activations,
    explorer_backbone,
    explorer_rois,
    explorer_start,
    tap_aucs,
    tap_scores,
)
from pages._shared import plain, workspace

ws = workspace()
NO_EXPERIMENT = 0
COLUMNS = 4
COLOURS = LABEL_COLOURS  # colour-blind safe (Okabe-Ito)


@st.cache_resource(show_spinner="Loading the backbone…", max_entries=4)
def _backbone(data_dir: str, name: str, experiment_id: int, weights: str):
    return explorer_backbone(name, experiment_id=experiment_id or None, workspace=ws, weights=weights)


@st.cache_resource(show_spinner="Running the ROI through every tap (once per ROI and weights; cached)…",
                   max_entries=64)
def _activations(data_dir: str, name: str, experiment_id: int, weights: str, weights_sha256: str, roi_id: int):
    return explorer_activations(ws, _backbone(data_dir, name, experiment_id, weights), roi_id)[0]


@st.cache_data(show_spinner=False, max_entries=64)
def _scores(data_dir: str, experiment_id: int, config_sha256: str, roi_id: int, verify: bool) -> dict:
    return tap_scores(ws, experiment_id, roi_id, verify=verify)


@st.cache_data(show_spinner=False, max_entries=64)
def _roi_picture(data_dir: str, roi_id: int, experiment_id: int):
    return roi_overlay(ws, roi_id, experiment_id=experiment_id or None)[0]


st.title("Layer explorer")
st.caption("Pick a backbone, a sweep to take AUCs from and an ROI: see the ROI as the network receives it, what every "
           "tap makes of it (its strongest activation maps), each tap's AUC, and where this ROI's SVM score at each "
           "tap falls among the benign and malignant ROIs' out-of-fold scores. The first look at an ROI runs it "
           "through the network once; afterwards every view comes from the cache.")

pick_backbone, pick_experiment, pick_weights = st.columns(3)
start_backbone, start_experiment = explorer_start(ws)  # the backbone and sweep last used, not a missing-weights error
backbone = pick_backbone.selectbox("Backbone", list(BACKBONES), format_func=backbone_label,
                                   index=list(BACKBONES).index(start_backbone), key="lx_backbone")
experiments = {e["id"]: e for e in list_experiments(ws) if e["backbone"] == backbone and e["auc_A"] is not None}
experiment_choices = [NO_EXPERIMENT, *experiments]
experiment_id = pick_experiment.selectbox(
    "AUCs and scores from", experiment_choices, key=f"lx_experiment_{backbone}",
    index=experiment_choices.index(start_experiment) if start_experiment in experiment_choices else 0,
    format_func=lambda i: "no experiment (maps only)" if i == NO_EXPERIMENT else
    f"#{i} {experiments[i]['name']} ({len(experiments[i]['taps'])} taps, {experiments[i]['n_rois']} ROIs)")
experiment = experiments.get(experiment_id)
if experiment is None:
    weights = pick_weights.radio("Weights", ["default", "random"], horizontal=True, key="lx_weights",
                                 format_func={"default": "pretrained (ImageNet)", "random": "random (control)"}.get)
else:
    weights = "random" if experiment["weights_source"] == "random" else "default"
    pick_weights.markdown(f"Weights: the experiment's own, **{plain(experiment['weights'])}** "
                          f"(`{experiment['weights_sha256'][:12]}…`)")

rois = explorer_rois(ws, experiment_id or None)
if rois.empty:
    st.info("No ROI to explore yet: import or upload cases first.")
    st.stop()
by_id = rois.set_index("roi_id")
roi_id = st.selectbox(
    "ROI", by_id.index.tolist(), key=f"lx_roi_{experiment_id}",
    format_func=lambda i: f"ROI {i} · {by_id.loc[i, 'lesion_key']} · {by_id.loc[i, 'view'] or 'view ?'} · "
                          f"{by_id.loc[i, 'label']}" + (f" · fold {int(by_id.loc[i, 'fold'])}"
                                                        if experiment_id else ""))
data_dir = str(ws.data_dir)
try:
    loaded = _backbone(data_dir, backbone, experiment_id, weights)
    acts = _activations(data_dir, backbone, experiment_id, weights, loaded.weights.sha256, int(roi_id))
except (CadxError, WeightsUnavailableError) as exc:
    st.error(str(exc))
    st.stop()

# ---------------------------------------------------------------------------------------- the network input ---
st.subheader("What the CNN receives")
stored, received = st.columns(2)
stored.image(_roi_picture(data_dir, int(roi_id), experiment_id), width=384,
             caption="The stored ROI: 51.2 mm × 51.2 mm at 0.1 mm (512 × 512)")
x = acts.network_input
received.image(to_uint8(x[0]), width=384,
               caption=f"The network input: {x.shape[1]} × {x.shape[2]}, grey in [0, 1] copied to 3 channels and "
                       f"normalised (x − mean) / SD with the weights' own "
                       f"mean {tuple(round(m, 3) for m in loaded.spec.mean)} and SD "
                       f"{tuple(round(s, 3) for s in loaded.spec.std)}; shown: channel 1, values "
                       f"{x[0].min():.2f} … {x[0].max():.2f} mapped to black … white")

# ---------------------------------------------------------------------------------------------- every tap ---
st.subheader("Strongest activation maps, tap by tap")
aucs = tap_aucs(ws, experiment_id).set_index("tap") if experiment is not None else None
st.caption("Each tap's channels with the largest mean activation for this ROI, strongest first, on one brightness "
           "scale per tap (black 0, white the tap's largest value); a 1-D tap (fully connected, pooled) shows its "
           "whole vector folded into a square. AUC: the paper's (mean of fold AUCs ± SD) of an SVM on that tap in "
           "the chosen sweep.")
taps = list(acts.taps)
for start in range(0, len(taps), COLUMNS):
    for column, tap in zip(st.columns(COLUMNS), taps[start:start + COLUMNS], strict=False):
        t = acts.taps[tap]
        if aucs is None:
            auc = ""
        elif tap in aucs.index and aucs.loc[tap, "auc_mean"] is not None:
            auc = f" · AUC {aucs.loc[tap, 'auc_mean']:.3f} ± {aucs.loc[tap, 'auc_sd']:.3f}"
        else:
            auc = " · not in this sweep"
        column.markdown(f"**{tap}** {'×'.join(map(str, t.shape))}{auc}")
        shown = (f"channels {', '.join(map(str, t.channels[:8].tolist()))}" if t.spatial
                 else f"{len(t.channel_mean)} units; largest {t.channel_mean.max():.3g}")
        column.image(mosaic(t), width="stretch", caption=shown)

# ------------------------------------------------------------------------------------- scores vs the classes ---
st.subheader("This ROI's SVM score at each tap, against the classes")
if experiment is None:
    st.info("Pick an experiment above to see each tap's AUC and this ROI's SVM scores.")
    st.stop()
verify = st.checkbox("Check: compute the scores again from the stored fold models and the feature store",
                     key="lx_verify", help="Reads the support ROIs' features of every tap (seconds for wide taps); "
                                           "each score must equal the recorded one to 1e-10.")
try:
    scores = _scores(data_dir, experiment_id, experiment["config_sha256"], int(roi_id), verify)
except CadxError as exc:
    st.error(str(exc))
    st.stop()
if scores["note"]:
    st.info(scores["note"])
dist = scores["distributions"]
frame = scores["frame"]
fig = go.Figure()
for label in ("benign", "malignant"):
    part = dist[dist["label"] == label]
    fig.add_trace(go.Box(x=part["tap"], y=part["z"], name=f"{label} ROIs (out of fold)", boxpoints="all",
                         jitter=0.4, pointpos=0, marker={"size": 3, "color": COLOURS[label]},
                         line={"color": COLOURS[label]}))
fig.add_trace(go.Scatter(x=frame["tap"], y=frame["decision"] / frame["sd"], mode="markers+lines",
                         name=f"this ROI ({by_id.loc[roi_id, 'label']})",
                         marker={"symbol": "star", "size": 14, "color": "black"}, line={"dash": "dot"}))
fig.add_hline(y=0, line_dash="dash", line_color="grey")
fig.update_layout(boxmode="group", height=440, margin={"t": 30, "b": 10}, legend={"orientation": "h"},
                  yaxis_title="SVM decision value / SD of the tap's out-of-fold values (0 = boundary)",
                  xaxis={"categoryorder": "array", "categoryarray": list(frame["tap"])})
st.plotly_chart(fig, key="lx_scores")
table = frame.assign(auc=[aucs.loc[t, "auc_mean"] if t in aucs.index else None for t in frame["tap"]])
st.dataframe(table[["tap", "auc", "fold", "decision", "proba", "below_benign", "below_malignant", "nearer",
                    "verified"]], hide_index=True, column_config={
    "auc": st.column_config.NumberColumn("AUC (paper)", format="%.3f"),
    "decision": st.column_config.NumberColumn("decision value", format="%.3f"),
    "proba": st.column_config.NumberColumn("p (fold's Platt)", format="%.3f"),
    "below_benign": st.column_config.NumberColumn("benign scores below", format="percent"),
    "below_malignant": st.column_config.NumberColumn("malignant scores below", format="percent"),
    "nearer": "nearer the median of",
    "verified": st.column_config.CheckboxColumn("recomputed"),
})
st.caption("Each score comes from the fold model (stored with the experiment) of the fold in which this ROI was a "
           "test ROI, so it is out of fold like the distributions it is compared with.")
