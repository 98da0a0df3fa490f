"""cadx app: routes the pages, opens the shared workspace and asks for a login when accounts exist.
Run with ``bash scripts/app.sh``.

The navigation is declared before anything slow (creating the demo data); the menu is drawn by ``sidebar_menu``
(Streamlit's own is off: ``client.showSidebarNavigation = false``, so its list of the ``pages/`` files never shows,
not on the sign-in screen either) and only for a signed-in session. The sign-in screen comes first (no page runs
before it); the page a link asked for is opened once signed in.
"""

import streamlit as st

from pages._shared import (
    ensure_demo_data,
    mark_routed,
    page_asked_before_sign_in,
    reviewer_sidebar,
    sidebar_menu,
    workspace,
)

st.set_page_config(page_title="cadx", page_icon="🩻", layout="wide")
mark_routed()

PAGES = {
    "Data": [
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page("pages/upload.py", title="Upload case", icon=":material/upload_file:"),
        st.Page("pages/review.py", title="Review ROIs", icon=":material/grid_view:"),
    ],
    "Experiments": [
        st.Page("pages/sweep.py", title="Layer sweep", icon=":material/show_chart:"),
        st.Page("pages/roc.py", title="ROC curves", icon=":material/ssid_chart:"),
        st.Page("pages/predictions.py", title="Predictions", icon=":material/table_view:"),
        st.Page("pages/analyses.py", title="Open questions", icon=":material/psychology_alt:"),
        st.Page("pages/explorer.py", title="Layer explorer", icon=":material/layers:"),
        st.Page("pages/experiments.py", title="Experiments", icon=":material/history:"),
    ],
}
ws = workspace()  # opens the database (fast) and asks for the sign-in when accounts exist (stops until then)
navigation = st.navigation(PAGES, position="hidden")  # before any slow work
sidebar_menu(PAGES)
reviewer_sidebar()
ensure_demo_data(ws)  # on an empty database: creates the synthetic demo data with a progress bar
deep_link = st.session_state.pop("_cadx_deep_link", None) or page_asked_before_sign_in(PAGES, navigation)
if deep_link is not None:
    st.switch_page(deep_link)  # a page opened by a direct link before app.py ran, or before the sign-in
navigation.run()
