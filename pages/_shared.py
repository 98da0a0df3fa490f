"""State shared by the pages: the workspace (database + data directory), opened once per server process, and who
is working in this browser session."""

from __future__ import annotations

import streamlit as st

from cadx.workflows import Workspace, dataset_stats, import_demo, open_workspace

__all__ = ["workspace", "current_user", "reviewer_sidebar", "SYNTHETIC_BADGE", "RANDOM_WEIGHTS_BADGE"]

SYNTHETIC_BADGE = ":orange-badge[SYNTHETIC DEMO DATA]"
RANDOM_WEIGHTS_BADGE = ":red-badge[RANDOM (UNTRAINED) CNN WEIGHTS]"


@st.cache_resource(show_spinner=False)
def _open() -> Workspace:
    ws = open_workspace()
    if dataset_stats(ws)["rois"] == 0:
        with st.spinner("Empty database: creating the synthetic demo data (about 100 lesion phantoms)…"):
            import_demo(ws)
    return ws


def workspace() -> Workspace:
    """The workspace of this server (``$CADX_DATA_DIR``)."""
    return _open()


def current_user() -> str:
    """Who is working in this browser session (recorded with every change)."""
    return st.session_state.get("reviewer", "").strip() or "local user"


def reviewer_sidebar() -> None:
    """The sidebar field naming the reviewer; every upload, flag and job records it."""
    st.sidebar.text_input("Reviewer name", key="reviewer", placeholder="local user",
                          help="Recorded with every upload, review decision and job you start.")
