"""Experiments: the history of frozen experiments, what reproduces each one, and renaming or deleting them."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from cadx import words
from cadx.cohorts import CohortDefinition
from cadx.errors import CadxInputError
from cadx.records import EXPERIMENT_NAME_MAX, to_json
from cadx.workflows import delete_experiment, list_experiments, rename_experiment
from cadx.workflows.accounts import can
from cadx.workflows.experiments import load_experiment
from pages._shared import (
    RANDOM_WEIGHTS_BADGE,
    SYNTHETIC_BADGE,
    csv_download,
    current_role,
    current_user,
    plain,
    workspace,
)

ws = workspace()


def _cohort_summary(definition: dict) -> str:
    try:
        return CohortDefinition.from_dict(definition).summary()
    except CadxInputError:
        return json.dumps(definition)


st.title("Experiments")
st.caption("Every experiment is a frozen record: its config (backbone, weights checksum, taps, folds, seed, the "
           "exact ROI set and the code version) determines its numbers; rerunning the same config on the same "
           "database gives the same numbers.")

if message := st.session_state.pop("experiments_message", None):
    st.success(message)

experiments = list_experiments(ws)
if not experiments:
    st.info("No experiment yet. Start one on the Layer sweep page.")
    st.page_link("pages/sweep.py", label="Go to the Layer sweep page", icon=":material/show_chart:")
    st.stop()
cohort_names = sorted({e["cohort"] or "(before cohorts)" for e in experiments})
if len(cohort_names) > 1:
    shown_cohort = st.selectbox("Cohort", ["all cohorts", *cohort_names], key="exp_cohort_filter")
    if shown_cohort != "all cohorts":
        experiments = [e for e in experiments if (e["cohort"] or "(before cohorts)") == shown_cohort]

AUC_HEADERS = {"auc_A": "SVM1 AUC (mean of folds)", "auc_B": "SVM2 AUC (mean of folds)",
               "auc_C": "ensemble AUC (mean of folds)"}  # the paper's AUC; the CSV keeps these names
history = pd.DataFrame([{
    "id": e["id"], "name": e["name"], **{AUC_HEADERS[k]: e[k] for k in AUC_HEADERS},
    "ROIs": e["n_rois"], "excluded": e["n_excluded"], "cohort": e["cohort"],
    "ROI set": (e["roi_set_sha256"] or "")[:12],
    "SVM1 tap": e["ensemble_tap"], "backbone": e["backbone"],
    "weights": e["weights"], "created": e["created_at"], "by": e["created_by"], "kind": e["kind"],
    "taps": ", ".join(e["taps"]), "folds": e["n_folds"], "seed": e["seed"], "repeats": e["repeats"],
    "synthetic data": e["uses_synthetic_data"], "random weights": e["uses_random_weights"],
    "seconds": e["seconds"], "code version": e["code_version"],
} for e in experiments])
st.caption(words.PAPER_AUC)
st.dataframe(history, hide_index=True, width="stretch", column_config={
    "id": st.column_config.NumberColumn(pinned=True, width="small"),
    "name": st.column_config.TextColumn(pinned=True, width="medium"),
    "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    **{h: st.column_config.NumberColumn(h.replace(" (mean of folds)", ""), format="%.3f", width="small",
                                        help=words.AUC_NAMES["fold_mean"][1]) for h in AUC_HEADERS.values()},
    "taps": st.column_config.TextColumn(width="small"),
    "code version": st.column_config.TextColumn(width="small"),
    "seconds": st.column_config.NumberColumn(format="%.1f"),
})
csv_download("History (CSV)", history, "cadx-experiments.csv", key="exp_csv")

# --------------------------------------------------------------------------------------------------- details ---
st.subheader("Details")
by_id = {e["id"]: e for e in experiments}
ids = list(by_id)
remembered = st.session_state.get("cadx_experiment")
experiment_id = st.selectbox("Experiment", ids, index=ids.index(remembered) if remembered in ids else 0,
                             format_func=lambda i: f"#{i} {by_id[i]['name']}", key="exp_selected")
st.session_state["cadx_experiment"] = experiment_id
e = by_id[experiment_id]
record = load_experiment(ws, experiment_id)
config, stored = record.config, record.results
badges = [b for b, on in ((SYNTHETIC_BADGE, e["uses_synthetic_data"]),
                          (RANDOM_WEIGHTS_BADGE, e["uses_random_weights"])) if on]
if badges:
    st.markdown(" ".join(badges))
if stored.weights_note:
    st.caption(f"Weights: {plain(stored.weights_note)}")

st.markdown("**Reproducibility**")
excluded = config.excluded_roi_ids
reproducibility = pd.DataFrame([
    ("code version", e["code_version"]),
    ("config SHA-256", e["config_sha256"]),
    ("backbone", config.backbone),
    ("weights", f"{config.weights.name} ({config.weights.source})"),
    ("weights SHA-256", config.weights.sha256),
    ("preprocessing", config.preprocessing),
    ("taps", ", ".join(config.taps)),
    ("SVM1 / ensemble tap", config.ensemble_tap),
    ("analytic features", config.analytic_version or "not run"),
    ("folds (outer / inner)", f"{config.n_folds} / {config.n_inner}"),
    ("seed", str(config.seed) if config.repeats == 1
     else f"{config.seed} to {config.seeds[-1]} ({config.repeats} repeats; Table 1 and predictions from the first)"),
    ("grid", json.dumps(config.grid) if not isinstance(config.grid, str) else config.grid),
    ("cross-validation groups", config.cv_groups),
    ("cohort", (f"{config.cohort.name}: " + _cohort_summary(config.cohort.definition))
     if config.cohort is not None else "recorded before cohorts existed (every included ROI)"),
    ("ROI set SHA-256", config.roi_set_sha256 or "not recorded"),
    ("ROIs used", f"{len(config.roi_ids)} ({stored.n_lesions} lesions, {stored.n_patients} patients)"),
    ("ROIs excluded by review", f"{len(excluded)}" + (f": {', '.join(map(str, excluded))}" if excluded else "")),
    ("created", f"{e['created_at']:%Y-%m-%d %H:%M:%S} by {e['created_by']}"),
    ("run time", f"{e['seconds']:.1f} s"),
], columns=["what", "value"])
st.dataframe(reproducibility, hide_index=True)
with st.expander("Full config (JSON)"):
    st.json(to_json(config), expanded=1)
st.download_button("Config and results (JSON)", json.dumps(to_json(record), indent=1, default=str).encode(),
                   file_name=f"cadx-experiment{experiment_id}.json", mime="application/json", on_click="ignore",
                   key="exp_json")

# ----------------------------------------------------------------------------------------- rename and delete ---
rename, remove = st.columns(2)
with rename:
    st.markdown("**Rename**")
    new_name = st.text_input("New name", value=e["name"], max_chars=EXPERIMENT_NAME_MAX,
                             key=f"exp_new_name_{experiment_id}")
    if st.button("Rename", key="exp_rename", disabled=not can(current_role(), "run")):
        try:
            rename_experiment(ws, experiment_id, new_name, user=current_user())
        except CadxInputError as exc:
            st.error(plain(exc))
        else:
            st.session_state["experiments_message"] = (
                f"Experiment #{experiment_id} renamed to “{plain(new_name.strip())}”.")
            st.rerun()
with remove:
    st.markdown("**Delete**")
    st.caption("Deletes the experiment and its per-ROI predictions. ROIs, features and review history stay.")
    sure = st.checkbox(f"Yes, delete experiment #{experiment_id} “{plain(e['name'])}”",
                       key=f"exp_confirm_{experiment_id}")
    may_delete = can(current_role(), "delete")
    if not may_delete:
        st.caption("Deleting experiments needs the admin role.")
    if st.button("Delete experiment", type="primary", disabled=not (sure and may_delete), key="exp_delete"):
        n = delete_experiment(ws, experiment_id, user=current_user())
        st.session_state.pop("cadx_experiment", None)
        st.session_state["experiments_message"] = f"Experiment #{experiment_id} deleted ({n} predictions)."
        st.rerun()
