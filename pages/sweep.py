"""Layer sweep: the paper's Fig. 3 (AUC ± SE of an SVM on each CNN tap), started here as a background job."""

from __future__ import annotations

import logging

import plotly.graph_objects as go
import streamlit as st

from cadx import cohorts, words
from cadx.cohorts import FOLDS_FIELD, MINIMUM_FIELD
from cadx.errors import CadxError, CadxInputError
from cadx.planning import duration_words
from cadx.records import EXPERIMENT_NAME_MAX
from cadx.workflows import backbone_choices, backbone_status, list_experiments, sweep_table
from cadx.workflows.accounts import can
from cadx.workflows.experiments import MAX_REPEATS, SWEEP_PRESETS, ExperimentSettings, estimate_experiment
from cadx.workflows.features import resolve_backbone
from cadx.workflows.jobs import (
    cancel_job,
    ensure_worker,
    get_job,
    job_history,
    kept_work,
    max_parallel_jobs,
    retry_job,
    submit_job,
)
from cadx.workflows.permutation import latest_permutation_test
from cadx.workflows.results import best_tap_text
from pages._cohorts import cohort_editor, cohort_select, cohort_verdict
from pages._shared import (
    RANDOM_WEIGHTS_BADGE,
    SYNTHETIC_BADGE,
    csv_download,
    current_role,
    current_user,
    figure_config,
    figure_downloads,
    plain,
    workspace,
)

_log = logging.getLogger(__name__)
ws = workspace()
WEIGHTS = {"default": "Pretrained (ImageNet)", "random": "Random (untrained)"}
PRESET_WORDS = {"quick": f"Quick ({SWEEP_PRESETS['quick']} seed: a live demo)",
                "full": f"Full ({SWEEP_PRESETS['full']} seeds: the numbers to quote)"}


@st.cache_data(ttl=600, show_spinner="Checking which CNN backbone and weights are available…")
def _backbone_status() -> dict:
    return backbone_status()


@st.cache_resource(show_spinner=False)
def _choices() -> dict:
    return backbone_choices()


@st.cache_resource(show_spinner="Loading the backbone for the estimate…")
def _loaded(backbone: str, weights: str):
    return resolve_backbone(backbone, weights=weights)[0]


@st.cache_data(ttl=600, show_spinner="Estimating the time on this machine…")
def _estimate(backbone: str, weights: str, params: dict, n_experiments: int) -> dict:
    # n_experiments: a new experiment's measured seconds refine the estimate, so it is part of the cache key
    return estimate_experiment(ws, _loaded(backbone, weights), ExperimentSettings.from_params(params)).to_dict()


def _show_estimate(backbone: str, weights: str, settings: ExperimentSettings) -> None:
    """Before Start: how long the sweep will take here, with its range and what the rates were measured on."""
    try:
        planned = _estimate(backbone, weights, settings.to_params(), len(experiments))
    except CadxError as exc:  # e.g. weights that are not on this machine: said above, the estimate waits
        st.caption(f"No time estimate: {plain(exc)}")
        return
    except Exception as exc:  # noqa: BLE001 - advice only: a failed estimate (e.g. a busy database) never blocks Start
        _log.warning("sweep time estimate failed", exc_info=True)
        st.caption(f"No time estimate now ({type(exc).__name__}); Start works without it, and the estimate is tried "
                   "again when the page next runs.")
        return
    st.info(f"Estimated time on this machine: **about {duration_words(planned['seconds'])}** "
            f"({duration_words(planned['low'])} – {duration_words(planned['high'])}) for "
            f"{planned['n_units']} units of work, from {planned['basis']}."
            + ("" if settings.repeats == 1 else " For a live demo, the Quick preset (1 seed) is about "
               f"{settings.repeats} times faster in the cross-validation."))


def _badges(experiments: list[dict]) -> str:
    badges = []
    if any(e["uses_synthetic_data"] for e in experiments):
        badges.append(SYNTHETIC_BADGE)
    if any(e["uses_random_weights"] for e in experiments):
        badges.append(RANDOM_WEIGHTS_BADGE)
    return " ".join(badges)


st.title("Layer sweep")
st.caption("The paper's Fig. 3: for every tap (layer) of the CNN, an SVM on that tap's features, evaluated by "
           "cross-validation by lesion. Points are the mean of the fold AUCs over all seeds (the paper's AUC, the "
           "one to quote); error bars the SD between seeds of a repeated cross-validation (with one seed, the SE of "
           "the fold AUCs, SD / √folds).")

# ------------------------------------------------------------------------------------------- start a sweep ---
status = _backbone_status()
choices = _choices()
experiments = list_experiments(ws)

# ------------------------------------------------------------------------- jobs: at the top while they run ---
ACTIVE = ("queued", "running")


def _active_jobs() -> list:
    return [j for j in job_history(ws, limit=50) if j.status in ACTIVE]


active_at_start = _active_jobs()


@st.fragment(run_every=2 if active_at_start else None)
def job_panel() -> None:
    jobs = _active_jobs()
    if any(j.status == "queued" for j in jobs):
        ensure_worker(ws)  # e.g. after a server restart
    for job in sorted(jobs, key=lambda j: j.id):
        with st.container(border=True):
            resumed = f" · resumed (attempt {job.attempts})" if job.attempts > 1 else ""
            st.markdown(f"**Job {job.id}** · {job.kind} · {plain(job.name)} · {job.status}{resumed} · "
                        f"by {plain(job.created_by)}")
            if job.status == "queued":
                st.progress(0.0, text=f"queued: number {job.queue_position} in line ({job.message})")
            else:
                st.progress(job.fraction, text=f"{job.fraction:.0%} · {job.message}")
                left = job.eta  # smoothed per-unit cost, with its range (cadx.planning.EtaSmoother)
                eta = f" · {left.words()} left" if left is not None else " · estimating the time left"
                st.caption(f"elapsed {duration_words(job.seconds)}{eta}")
            may = can(current_role(), "run")
            if st.session_state.get("sweep_confirm_cancel") == job.id:
                st.warning(f"Cancel job {job.id}? Its finished units ({kept_work(ws, job.id)} so far) are kept: "
                           "Resume continues from them.")
                yes, no = st.columns(2)
                if yes.button(f"Yes, cancel job {job.id}", key=f"confirm_cancel_{job.id}", disabled=not may):
                    cancel_job(ws, job.id, user=current_user())
                    st.session_state.pop("sweep_confirm_cancel", None)
                    if job.id not in st.session_state.setdefault("sweep_jobs", []):
                        st.session_state["sweep_jobs"].append(job.id)  # so that Resume is offered below
                    st.rerun()
                if no.button("Keep it running", key=f"keep_job_{job.id}"):
                    st.session_state.pop("sweep_confirm_cancel", None)
                    st.rerun()
            elif st.button("Cancel…", key=f"cancel_job_{job.id}", disabled=not may):
                st.session_state["sweep_confirm_cancel"] = job.id
                st.rerun()
    for job_id in reversed(st.session_state.get("sweep_jobs", [])[-3:]):
        job = get_job(ws, job_id)
        if job is None or job.status in ACTIVE:
            continue
        if job.status == "done":
            st.success(f"Job {job.id} finished: experiment #{job.experiment_id} “{plain(job.params.get('name', ''))}”.")
            st.caption(plain(job.message))  # e.g. what a resumed job restored and what it computed
        elif job.status == "failed":
            st.error(f"Job {job.id} failed: {plain(job.error)}")
        else:
            st.warning(f"Job {job.id} {job.status}: {plain(job.message)}. Kept: {kept_work(ws, job.id)}.")
            if job.status == "cancelled" and st.button(f"Resume job {job.id}", key=f"resume_job_{job.id}",
                                                       disabled=not can(current_role(), "run")):
                if retry_job(ws, job.id, user=current_user()):
                    ensure_worker(ws)
                    st.rerun()
                st.error(f"Job {job.id} is still stopping at its next unit; resume it in a moment.")
    if active_at_start and not jobs:
        st.rerun()  # a job finished: redraw the page with its results


job_panel()
if st.session_state.pop("sweep_queued_toast", None):
    st.toast(st.session_state.get("sweep_last_toast", "Sweep queued."))

with st.expander("Job history (every user's jobs: done, failed with the reason, cancelled)"):
    history = job_history(ws, limit=50)
    if not history:
        st.caption("No jobs yet.")
    else:
        st.dataframe(
            [{"job": h.id, "kind": h.kind, "name": h.name, "status": h.status, "by": h.created_by,
              "queued at": h.created_at.strftime("%Y-%m-%d %H:%M:%S") if h.created_at else "",
              "took": duration_words(h.seconds), "done": f"{h.fraction:.0%}", "attempts": h.attempts,
              "experiment": h.experiment_id, "message / error": (h.error or h.message or "")[:300]}
             for h in history], hide_index=True)
        stopped = [h for h in history if h.status in ("failed", "cancelled")]
        if stopped and can(current_role(), "run"):
            left, right = st.columns([3, 1])
            chosen = left.selectbox("Queue a failed or cancelled job again (it resumes from its finished folds)",
                                    [h.id for h in stopped], key="job_retry_choice",
                                    format_func=lambda i: next(f"job {h.id} · {h.name} · {h.status}"
                                                               for h in stopped if h.id == i))
            if right.button("Retry", key="job_retry"):
                if retry_job(ws, chosen, user=current_user()):
                    ensure_worker(ws)
                    st.rerun()
                st.error(f"Job {chosen} cannot be queued again now (it is still stopping); try in a moment.")

with st.expander("Start a sweep", expanded=not experiments):
    if status["fallback"]:
        st.warning("AlexNet's ImageNet weights are missing here, so the default backbone is **EfficientNet-Lite0** "
                   "with its real ImageNet weights (not the paper's AlexNet). AlexNet is still available with "
                   "random weights.")
    else:
        st.success(f"Default backbone: **{status['backbone']}** with {status['weights']} ({status['source']}).")
    names = list(choices)
    left, right = st.columns(2)
    backbone = left.selectbox("Backbone", names, index=names.index(status["backbone"]),
                              format_func=lambda n: f"{n} — {choices[n]['description']}", key="sweep_backbone")
    weights = right.radio("Weights", list(WEIGHTS), format_func=WEIGHTS.get, horizontal=True, key="sweep_weights")
    if weights == "default" and backbone == "alexnet" and status["fallback"]:
        st.error("AlexNet's ImageNet weights are not available on this machine: this sweep would fail. "
                 "Choose random weights, another backbone, or install the weights file.")
        with st.expander("How to install AlexNet's weights"):
            st.write(status["note"])
    if weights == "random":
        st.markdown(f"{RANDOM_WEIGHTS_BADGE} Features of an untrained network: a baseline, not the paper's method.")
    info = choices[backbone]
    taps = st.multiselect("Taps (in network order)", info["taps"], default=info["default_taps"],
                          key=f"sweep_taps_{backbone}",
                          help="Each tap is one point of the chart. Fewer taps run faster.")
    ensemble_tap = st.selectbox("Tap for SVM1 and the ensemble", info["taps"],
                                index=info["taps"].index(info["ensemble_tap"]), key=f"sweep_ensemble_{backbone}",
                                help="The paper used AlexNet's fc6. This tap is always part of the sweep.")
    defaults = ExperimentSettings()  # the one home of the defaults (the CLI and the job runner read them too)
    # the cohort first: its folds are this sweep's folds unless chosen otherwise here (one place for the folds)
    cohort_info = cohort_select("sweep_cohort")
    cohort_folds = cohort_info.definition.n_folds
    # another cohort (or the page opened again, which drops the field's state): start from the cohort's folds
    if st.session_state.get("sweep_folds_of") != cohort_info.name or "sweep_folds" not in st.session_state:
        st.session_state["sweep_folds_of"] = cohort_info.name
        st.session_state["sweep_folds"] = cohort_folds
    st.session_state.setdefault("sweep_repeats", defaults.repeats)
    st.session_state.setdefault("sweep_min_lesions", cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD)

    def _preset_changed() -> None:
        st.session_state["sweep_repeats"] = SWEEP_PRESETS[st.session_state["sweep_preset"]]

    st.radio("Preset", list(SWEEP_PRESETS), key="sweep_preset", horizontal=True, on_change=_preset_changed,
             index=list(SWEEP_PRESETS).index("full"), format_func=PRESET_WORDS.get,
             help="Quick: one seed, for a live demo (one split's luck). Full: the repeated cross-validation whose "
                  "numbers are the ones to quote.")
    c1, c2, c3, c4, c5 = st.columns(5)
    n_folds = c1.number_input(FOLDS_FIELD, min_value=2, max_value=20, step=1, key="sweep_folds",
                              help="Starts from the cohort's folds.")
    minimum = c2.number_input(MINIMUM_FIELD, min_value=1, max_value=50, step=1, key="sweep_min_lesions",
                              help="The guard rail: a cohort with fewer lesions of a class than this per fold is "
                                   f"refused (default {cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD}). Lower it only to "
                                   "try the pipeline on a small set; the experiment records it.")
    seed = c3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=defaults.seed, step=1, key="sweep_seed")
    repeats = c4.number_input("Repeats (seeds)", min_value=1, max_value=MAX_REPEATS, step=1, key="sweep_repeats",
                              help="Repeat the cross-validation with seeds seed, seed+1, …: the chart averages "
                                   "over them and shows the SD between seeds; the time grows in proportion. One "
                                   "seed is one split's luck.")
    analytic = c5.checkbox("Also run SVM2 (analytic features) and the ensemble", value=defaults.analytic,
                           key="sweep_analytic")
    folds_note = None
    if int(n_folds) != cohort_folds:
        folds_note = (f"Cohort {plain(cohort_info.name)} sets {cohort_folds} folds; this sweep uses "
                      f"{int(n_folds)} (chosen here); the experiment records both.")
        st.info(folds_note)
    lowered = int(minimum) < cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD
    if lowered:
        st.warning(f"Guard rail lowered to {int(minimum)} lesions of each class per fold (default "
                   f"{cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD}): fold AUCs on so few lesions move in coarse steps. "
                   "The experiment records the lowered guard rail.")
    from cadx.cnn import TAP_POOLINGS  # here, not at the top: torch and scikit-learn load when the page renders
    from cadx.svm import AUTO_EXACT_MAX_TRAIN, SVM_ENGINES

    p1, p2 = st.columns(2)
    tap_pooling = p1.selectbox(
        "Tap pooling", TAP_POOLINGS, index=TAP_POOLINGS.index(defaults.tap_pooling), key="sweep_tap_pooling",
        help="flatten: the paper's whole convolutional map (10⁴–10⁵ values); avg / max / avgmax: each map reduced "
             "to its channels by global average / max pooling (64–512 values, twice that for avgmax). fc taps are "
             "unchanged. Pooled and flattened features are stored apart and never mix.")
    svm_engine = p2.selectbox(
        "SVM engine", SVM_ENGINES, index=SVM_ENGINES.index(defaults.svm_engine), key="sweep_svm_engine",
        help="exact: the polynomial-kernel SVM (the default). approx: Tensor-Sketch features and a linear SVM, "
             "memory and time linear in the ROIs (an approximation; its error is measured in the README). auto: "
             f"exact up to {AUTO_EXACT_MAX_TRAIN:,} training ROIs, then approx. The experiment records which ran.")
    if svm_engine == "approx":
        st.warning("The approximate engine is not yet validated against the exact one (on MIAS its tap AUCs "
                   "differed by up to 0.12): compare with the exact engine on a subsample before quoting its numbers.")
    cohort = cohort_verdict(cohort_info.name, n_folds=int(n_folds), minimum_per_fold=int(minimum))
    cohort_editor("sweep_cohort")
    name = st.text_input("Name", value=f"{backbone} sweep", max_chars=EXPERIMENT_NAME_MAX,
                         key=f"sweep_name_{backbone}")
    settings = ExperimentSettings(
        taps=tuple(t for t in info["taps"] if t in taps), ensemble_tap=ensemble_tap, analytic=analytic,
        n_folds=int(n_folds), seed=int(seed), repeats=int(repeats), cohort=cohort["name"],
        tap_pooling=str(tap_pooling), svm_engine=str(svm_engine),
        min_lesions_per_class_per_fold=int(minimum) if int(minimum) != cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD
        else None,
        extra={"folds_chosen_over_cohort": {"cohort": cohort_folds, "sweep": int(n_folds)}} if folds_note else {})
    # the estimate's slot sits above Start but is filled after it: Start is on the page (and clickable) while the
    # estimate is still being computed, which can take a while on a loaded machine
    estimate_slot = st.empty()
    may_run = can(current_role(), "run")
    if not may_run:
        st.caption("Starting a sweep needs the reviewer role.")
    busy = len(active_at_start)
    if busy:
        st.info(f"{busy} job(s) queued or running (shown above). A new sweep is queued behind them: jobs run in "
                f"the order queued, {max_parallel_jobs()} at a time (CADX_MAX_PARALLEL_JOBS).")
    if st.button("Queue sweep" if busy else "Start sweep", type="primary", key="sweep_start",
                 disabled=not may_run or bool(cohort["refused"])):
        if not taps:
            st.error("Choose at least one tap.")
        else:
            params = {"backbone": backbone, "weights": weights, "name": name.strip() or f"{backbone} sweep",
                      **settings.to_params()}
            try:
                job_id = submit_job(ws, "experiment", params, user=current_user())
            except CadxInputError as exc:  # e.g. a name over EXPERIMENT_NAME_MAX (a session from before the limit)
                st.error(plain(exc))
            else:
                ensure_worker(ws)
                st.session_state.setdefault("sweep_jobs", []).append(job_id)
                st.session_state["sweep_queued_toast"] = True
                st.session_state["sweep_last_toast"] = f"Sweep queued as job {job_id}."
                st.rerun()  # the job panel at the top shows it
    if taps and not cohort["refused"]:
        with estimate_slot.container():
            _show_estimate(backbone, weights, settings)

# ------------------------------------------------------------------------------------------------- chart ---
st.subheader("AUC per tap")
swept = [e for e in experiments if e["taps"]]
if not swept:
    st.info("No sweep yet. Start one above: it runs in the background and its chart appears here.")
    st.stop()

labels = {e["id"]: f"#{e['id']} {e['name']} ({e['backbone']}, "
                   f"{'random weights' if e['uses_random_weights'] else e['weights']}, cohort {e['cohort'] or '–'}, "
                   f"{e['n_rois']} ROIs, {e['n_excluded']} excluded)" for e in swept}
selected = st.multiselect("Experiments (choose two or more to compare, e.g. before/after exclusions or two "
                          "backbones)", list(labels), default=[swept[0]["id"]], format_func=labels.get,
                          key="sweep_selected")
if not selected:
    st.info("Choose at least one experiment.")
    st.stop()
chosen = [e for e in swept if e["id"] in selected]
table = sweep_table(ws, selected)
badges = _badges(chosen)
if badges:
    st.markdown(badges)

same_backbone = table["backbone"].nunique() == 1
fig = go.Figure()
for experiment_id in selected:
    rows = table[table["experiment_id"] == experiment_id]
    x = rows["tap"] if same_backbone else rows["depth"]
    seeded = rows["auc_sd_between_seeds"].notna().all() and len(rows) > 0
    fig.add_trace(go.Scatter(
        x=x, y=rows["auc_mean"], mode="lines+markers", name=labels[experiment_id], text=rows["tap"],
        error_y={"type": "data", "array": rows["auc_sd_between_seeds" if seeded else "auc_se"], "visible": True},
        hovertemplate="%{text}: AUC %{y:.3f} ± %{error_y.array:.3f} "
                      + (f"(SD over {int(rows['repeats'].iloc[0])} seeds)" if seeded else "(SE of folds, one seed)")
                      + "<extra></extra>",
    ))
fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance", annotation_position="bottom right")
if same_backbone:
    order = choices.get(table["backbone"].iloc[0], {}).get("taps", [])
    present = [t for t in order if t in set(table["tap"])]
    fig.update_xaxes(title="tap (network order)", type="category", categoryorder="array", categoryarray=present)
else:
    fig.update_xaxes(title="relative depth of the tap (first tap 0, last tap 1; hover for its name)")
fig.update_yaxes(title="AUC (mean of fold AUCs) ± SD over seeds (one seed: ± SE)", range=[0, 1.05])
warning = []
if any(e["uses_synthetic_data"] for e in chosen):
    warning.append("SYNTHETIC DEMO DATA")
if any(e["uses_random_weights"] for e in chosen):
    warning.append("RANDOM (UNTRAINED) CNN WEIGHTS")
fig.update_layout(title="AUC per CNN tap" + (f" — {' · '.join(warning)}" if warning else ""),
                  legend={"orientation": "h", "yanchor": "top", "y": -0.2}, height=520,
                  margin={"t": 60, "b": 40})
if warning:
    fig.update_layout(title_font_color="#c0392b")
config = figure_config("cadx-layer-sweep", "sweep_fig_format")
st.plotly_chart(fig, config=config, key="sweep_chart")
figure_downloads(fig, "cadx-layer-sweep")

for experiment_id in selected:
    rows = table[table["experiment_id"] == experiment_id]
    if not rows.empty:
        top = rows.loc[rows["auc_mean"].idxmax()]
        tested = latest_permutation_test(ws, int(experiment_id))  # the selection-adjusted p, once one ran
        text = best_tap_text(top["tap"], top["auc_mean"], top["auc_sd_between_seeds"], int(top["repeats"]),
                             n_taps=len(rows), permutation=None if tested is None else tested.result)
        st.markdown(f"#{experiment_id}: {text}")

st.subheader("Feature lengths and time per tap")
st.caption("Feature length: the tap's flattened output. After zero-variance removal: features that vary across "
           "the ROIs (the SVM's input, as in the paper's Fig. 2). Seconds: cross-validation of that tap's SVM. "
           "With several seeds, AUC is the mean over all their folds, seed SD the SD between the seeds' fold-mean "
           "AUCs, and AUC.SD/SE (between folds) are averaged over the seeds.")
shown = table.rename(columns={"experiment": "experiment", "tap": "tap", "n_features": "feature length",
                              "n_features_nonconstant": "after zero-variance removal", "auc_mean": "AUC",
                              "auc_sd": "AUC.SD", "auc_se": "SE", "seconds": "seconds", "n_folds": "folds",
                              "repeats": "seeds", "auc_sd_between_seeds": "seed SD"})
shown = shown[["experiment", "tap", "feature length", "after zero-variance removal", "AUC", "seed SD", "AUC.SD",
               "SE", "folds", "seeds", "seconds"]]
st.dataframe(shown, hide_index=True, column_config={
    "AUC": st.column_config.NumberColumn("AUC (paper: mean of folds)", format="%.3f"),
    "AUC.SD": st.column_config.NumberColumn(format="%.3f"),
    "seed SD": st.column_config.NumberColumn(format="%.3f"),
    "SE": st.column_config.NumberColumn(format="%.3f"), "seconds": st.column_config.NumberColumn(format="%.2f"),
})
csv_download("Table (CSV)", table.rename(columns={"auc_mean": words.AUC_COLUMNS["AUC"]}), "cadx-layer-sweep.csv",
             key="sweep_csv")
