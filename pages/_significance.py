"""The ROC page's two panels on what a small cohort can conclude (issue 24): *Better than chance?* (the label-
permutation test, run as a background job from here) and *What could this cohort show?* (power and sample size)."""

from __future__ import annotations

import streamlit as st

from cadx.permutation import DEFAULT_PERMUTATIONS, chance_sentence, monte_carlo_se
from cadx.workflows.accounts import can
from cadx.workflows.experiments import load_experiment
from cadx.workflows.jobs import ensure_worker, list_jobs, submit_job
from cadx.workflows.permutation import (
    MAX_PERMUTATIONS,
    latest_permutation_test,
    permutation_caption,
    permutation_table,
)
from cadx.workflows.power import POWER_CAPTION, power_analysis, power_table
from cadx.workflows.results import sweep_best_tap_text
from pages._shared import current_role, current_user, plain

__all__ = ["permutation_panel", "power_panel"]

_ACTIVE = ("queued", "running")
_THREE = "%.3f"


def _active_tests(ws, experiment_id: int) -> list:
    return [j for j in list_jobs(ws, limit=100) if j.kind == "permutation" and j.status in _ACTIVE
            and int((j.params or {}).get("experiment_id", -1)) == int(experiment_id)]


def permutation_panel(ws, experiment_id: int) -> None:
    """The permutation test of the experiment: the newest stored result, the running job's progress, and the form
    that queues one."""
    st.subheader("Better than chance? (permutation test)")
    running = _active_tests(ws, experiment_id)

    @st.fragment(run_every=2 if running else None)
    def progress() -> None:
        jobs = _active_tests(ws, experiment_id)
        if any(j.status == "queued" for j in jobs):
            ensure_worker(ws)
        for job in jobs:
            fraction = job.progress_done / job.progress_total if job.progress_total else 0.0
            st.progress(min(max(fraction, 0.0), 1.0), text=f"job {job.id} · {job.status} · {plain(job.message)}")
        if running and not jobs:
            st.rerun()  # finished: show its result

    progress()
    test = latest_permutation_test(ws, experiment_id)
    record = load_experiment(ws, experiment_id)
    sentence = chance_sentence({k: m.pooled_ci95 for k, m in record.results.methods.items()},
                               None if test is None else test.result)
    if sentence:  # the plain words of the report's Summary
        st.warning(sentence)
    if test is None:
        st.caption("No permutation test yet. A permutation test reruns the whole nested cross-validation on "
                   "permuted labels: it tells whether the AUCs above could be chance on a cohort of this size.")
    else:
        st.caption(permutation_caption(test))
        st.dataframe(permutation_table(test.result, record), hide_index=True, width="stretch", column_config={
            **{c: st.column_config.NumberColumn(format=_THREE) for c in
               ("observed AUC", "null mean", "null SD", "null 5 %", "null 95 %")},
            "p": st.column_config.NumberColumn(format="%.3g"),
            "p MC SE": st.column_config.NumberColumn(format="%.2g", help="Monte-Carlo SE of p: √(p(1 − p)/B)")})
        if best_line := sweep_best_tap_text(record.results, record.config.repeats, permutation=test.result):
            st.markdown(best_line)
    may_run = can(current_role(), "run")
    left, right = st.columns([1, 2])
    n = left.number_input("Permutations", min_value=1, max_value=MAX_PERMUTATIONS, value=DEFAULT_PERMUTATIONS,
                          step=10, key="roc_permutations",
                          help=f"Each reruns the whole nested cross-validation. {DEFAULT_PERMUTATIONS}: Monte-Carlo SE "
                               f"{monte_carlo_se(0.05, DEFAULT_PERMUTATIONS):.3f} at p = 0.05.")
    right.write("")
    if right.button("Queue permutation test" if running else "Run permutation test", key="roc_permutation_start",
                    disabled=not may_run, help=None if may_run else "Needs the reviewer role."):
        job_id = submit_job(ws, "permutation", {"experiment_id": int(experiment_id), "permutations": int(n),
                                                "seed": 0, "name": f"permutation test of experiment "
                                                                   f"{experiment_id}"}, user=current_user())
        ensure_worker(ws)
        st.toast(f"Permutation test queued as job {job_id}.")
        st.rerun()


def power_panel(ws, experiment_id: int) -> None:
    """Power and sample size for the experiment's comparisons."""
    st.subheader("What could this cohort show at all? (power)")
    rows = power_analysis(ws, experiment_id)
    if not rows:
        st.info("No comparisons, so no power to compute: they need SVM1 and SVM2.")
        return
    st.caption(POWER_CAPTION)
    table = power_table(rows)
    # Short headers (the full name on hover) so that the table fits a 1440-px screen
    short = {c: c.replace("smallest ΔAUC", "min ΔAUC").replace("lesions for 0.81→0.86", "n for .81→.86")
              .replace("power for 0.81→0.86", "power .81→.86") for c in table.columns}
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "comparison": st.column_config.TextColumn(pinned=True),
        **{c: (st.column_config.NumberColumn(short[c], format=_THREE, help=c, width="small")
               if c not in ("comparison", "malignant", "benign") and not c.startswith("lesions")
               else st.column_config.Column(short[c], help=c, width="small"))
           for c in table.columns if c != "comparison"}})
    st.markdown(rows[0].at_alpha.sentence())
