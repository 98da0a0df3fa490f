"""cadx app: routes the pages, opens the shared workspace and asks for a login when accounts exist.
Run with ``bash scripts/app.sh``.

The navigation is declared before anything slow (opening the database, creating the demo data) and before the
sign-in screen, so the browser never falls back to Streamlit's list of the ``pages/`` files. The menu itself is
drawn by ``sidebar_menu`` (Streamlit's own is off: ``client.showSidebarNavigation = false``) and only for a
signed-in session.
"""

import streamlit as st

from pages._shared import ensure_demo_data, mark_routed, reviewer_sidebar, sidebar_menu, sign_in, workspace

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
        st.Page("pages/experiments.py", title="Experiments", icon=":material/history:"),
    ],
}
navigation = st.navigation(PAGES, position="hidden")  # first: the URL's page is known from here on
ws = workspace()  # opens the database (fast)
sign_in(ws)  # stops here until signed in, when accounts exist; the page asked for stays the current one
sidebar_menu(PAGES)
reviewer_sidebar()
ensure_demo_data(ws)  # on an empty database: creates the synthetic demo data with a progress bar
deep_link = st.session_state.pop("_cadx_deep_link", None)
if deep_link is not None:
    st.switch_page(deep_link)  # a page opened by a direct link before app.py ever ran (see pages/_shared.py)
navigation.run()
