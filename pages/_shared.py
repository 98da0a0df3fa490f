"""State shared by the pages: the workspace (database + data directory), opened once per server process."""

from __future__ import annotations

import streamlit as st

from cadx.workflows import Workspace, dataset_stats, import_demo, open_workspace

__all__ = ["workspace", "SYNTHETIC_BADGE"]

SYNTHETIC_BADGE = ":orange-badge[SYNTHETIC DEMO DATA]"


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
