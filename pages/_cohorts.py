"""The cohort picker (with its counts and the guard rails' verdict, shown before anything runs) and the form that
saves a new cohort; used wherever an experiment starts."""

from __future__ import annotations

import streamlit as st

from cadx.cohorts import DEFAULT_COHORT, LABELS, QC_CHOICES, REVIEW_CHOICES, SYNTHETIC_CHOICES, CohortDefinition
from cadx.errors import CadxInputError
from cadx.lesion_types import LESION_TYPE_GROUPS, LESION_TYPES, UNKNOWN_TYPE, lesion_type_title
from cadx.workflows.accounts import can
from cadx.workflows.cohorts import CohortInfo, cohort_options, cohort_preview, list_cohorts, save_cohort
from pages._shared import SYNTHETIC_BADGE, current_role, current_user, plain, workspace

__all__ = ["cohort_select", "cohort_verdict", "cohort_editor"]

_SYNTHETIC = {"auto": "Real data only (synthetic only when there is no real data)", "real": "Real data only",
              "synthetic": "Synthetic phantoms only", "both": "Real AND synthetic pooled (explicit)"}
_REVIEW = {"included": "Included ROIs (review kept them)", "excluded": "Excluded ROIs only",
           "all": "Included and excluded"}
_QC = {"any": "Any", "unflagged": "Only ROIs without QC flags"}


def _title(info) -> str:
    if info.preset:
        return {"paper": "paper — Paper protocol: masses only, excluded ROIs out, 5 folds",
                "all": "all — every included ROI, all lesion types"}.get(info.name, info.name)
    return info.name


def cohort_select(key: str) -> CohortInfo:
    """Choose a cohort (a cohort just saved by :func:`cohort_editor` is chosen at once); returns it."""
    ws = workspace()
    cohorts = {c.name: c for c in list_cohorts(ws)}
    names = list(cohorts)
    pending = st.session_state.pop(f"{key}_pending", None)  # a cohort just saved by cohort_editor
    if pending in cohorts:
        st.session_state[key] = pending
    if st.session_state.get(key) not in cohorts:
        st.session_state[key] = DEFAULT_COHORT
    name = st.selectbox("Cohort (which ROIs the experiment uses)", names, key=key,
                        format_func=lambda n: _title(cohorts[n]))
    return cohorts[name]


def cohort_verdict(name: str, *, n_folds: int | None = None, minimum_per_fold: int | None = None) -> dict:
    """What the cohort ``name`` selects now and whether an experiment may start on it with ``n_folds`` and the
    guard rail ``minimum_per_fold`` (the refusal's fix in the page's words: its fields, never command-line flags).

    Returns :func:`cadx.workflows.cohorts.cohort_preview`'s dict (``refused`` is the reason and fix, or None).
    """
    preview = cohort_preview(workspace(), name, n_folds=n_folds, minimum_per_fold=minimum_per_fold)
    counts = preview["counts"]
    st.caption(preview["summary"])
    patients, lesions, rois, identity = st.columns(4)
    lesion_labels = counts["lesions_by_label"]
    roi_labels = counts["rois_by_label"]
    patients.metric("Patients", counts["patients"])
    lesions.metric("Lesions (benign / malignant)", f"{counts['lesions']} "
                   f"({lesion_labels.get('benign', 0)} / {lesion_labels.get('malignant', 0)})")
    rois.metric("ROIs (benign / malignant)", f"{counts['rois']} "
                f"({roi_labels.get('benign', 0)} / {roi_labels.get('malignant', 0)})")
    identity.metric("ROI set (SHA-256)", preview["roi_set_sha256"][:12])
    if counts["lesions_by_type"]:
        st.caption("Lesion types: " + ", ".join(f"{lesion_type_title(t)}: {n}"
                                                for t, n in counts["lesions_by_type"].items()))
    if preview["synthetic_used"] in ("synthetic", "both"):
        st.markdown(f"{SYNTHETIC_BADGE} this cohort uses synthetic lesion phantoms"
                    + (" pooled with real mammograms" if preview["synthetic_used"] == "both" else ""))
    for note in preview["notes"]:
        st.info(note)
    if preview["refused"]:
        st.error(f"Cohort **{plain(name)}** cannot be used for this experiment: {preview['refused']}")
    return preview


def cohort_editor(picker_key: str) -> None:
    """An expander with the form that saves a new cohort (then chosen in the picker ``picker_key``)."""
    ws = workspace()
    with st.expander("Create a cohort"):
        options = cohort_options(ws)
        name = st.text_input("Cohort name", key="cohort_new_name", placeholder="e.g. MIAS masses")
        c1, c2, c3 = st.columns(3)
        sources = c1.multiselect("Datasets", options["sources"], key="cohort_new_sources", placeholder="any")
        synthetic = c2.selectbox("Real / synthetic", SYNTHETIC_CHOICES, format_func=_SYNTHETIC.get,
                                 key="cohort_new_synthetic")
        types = c3.multiselect("Lesion types", [*LESION_TYPE_GROUPS, *LESION_TYPES, UNKNOWN_TYPE],
                               key="cohort_new_types", placeholder="any",
                               format_func=lambda t: t if t in LESION_TYPE_GROUPS else lesion_type_title(t))
        c4, c5, c6 = st.columns(3)
        labels = c4.multiselect("Labels", LABELS, key="cohort_new_labels", placeholder="both")
        views = c5.multiselect("Views", options["views"], key="cohort_new_views", placeholder="any")
        sides = c6.multiselect("Laterality", ["L", "R"], key="cohort_new_sides", placeholder="both")
        c7, c8, c9 = st.columns(3)
        review = c7.selectbox("Review status", REVIEW_CHOICES, format_func=_REVIEW.get, key="cohort_new_review")
        qc = c8.selectbox("QC flags", QC_CHOICES, format_func=_QC.get, key="cohort_new_qc")
        flags = c9.multiselect("Leave out ROIs flagged", options["qc_flags"], key="cohort_new_flags",
                               placeholder="none")
        runs = {r["id"]: r for r in options["import_runs"]}
        c10, c11 = st.columns([2, 1])
        chosen_runs = c10.multiselect("Import runs", list(runs), key="cohort_new_runs", placeholder="any",
                                      format_func=lambda i: f"#{i} {runs[i]['kind']} {runs[i]['source']} "
                                                            f"({runs[i]['n_imported']} ROIs)")
        folds = c11.number_input("Folds", min_value=2, max_value=20, value=5, step=1, key="cohort_new_folds",
                                 help="The folds every experiment on this cohort uses by default (the sweep "
                                      "page starts from them).")
        description = st.text_input("Description (optional)", key="cohort_new_description")
        replace = st.checkbox("Replace the saved cohort of this name", key="cohort_new_replace",
                              help="Experiments run on the old definition keep their copy of it.")
        may_save = can(current_role(), "run")
        if not may_save:
            st.caption("Saving a cohort needs the reviewer role.")
        if st.button("Save cohort", key="cohort_new_save", disabled=not may_save):
            try:
                definition = CohortDefinition(
                    sources=tuple(sources), synthetic=synthetic, lesion_types=tuple(types), labels=tuple(labels),
                    views=tuple(views), lateralities=tuple(sides), qc=qc, exclude_qc_flags=tuple(flags),
                    review=review, import_runs=tuple(chosen_runs), n_folds=int(folds), description=description)
                info = save_cohort(ws, name, definition, user=current_user(), replace=replace)
            except CadxInputError as exc:
                st.error(plain(exc.on_page()))  # the fix in the page's words (no command-line flags)
            else:
                st.session_state[f"{picker_key}_pending"] = info.name
                st.toast(f"Cohort {info.name} saved.")
                st.rerun()
