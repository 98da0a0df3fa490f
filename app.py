"""cadx app: routes the pages, opens the shared workspace and asks for a login when accounts exist.
Run with ``bash scripts/app.sh``."""

import streamlit as st

from pages._shared import mark_routed, reviewer_sidebar, sign_in, workspace

st.set_page_config(page_title="cadx", page_icon="🩻", layout="wide")
mark_routed()
ws = workspace()  # opens the database; on an empty one, creates the synthetic demo data
sign_in(ws)
reviewer_sidebar()

navigation = st.navigation(
    {
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
            st.Page("pages/experiments.py", title="Experiments", icon=":material/history:"),
        ],
    }
)
deep_link = st.session_state.pop("_cadx_deep_link", None)
if deep_link is not None:
    st.switch_page(deep_link)  # a page opened by a direct link before app.py ever ran (see pages/_shared.py)
navigation.run()
