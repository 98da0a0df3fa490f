"""cadx app: routes the pages and opens the shared workspace. Run with ``bash scripts/app.sh``."""

import streamlit as st

from pages._shared import reviewer_sidebar, workspace

st.set_page_config(page_title="cadx", page_icon="🩻", layout="wide")
workspace()  # opens the database; on an empty one, creates the synthetic demo data
reviewer_sidebar()

navigation = st.navigation(
    {
        "Data": [
            st.Page("pages/overview.py", title="Overview", icon="📊", default=True),
            st.Page("pages/upload.py", title="Upload case", icon="⬆️"),
            st.Page("pages/review.py", title="Review ROIs", icon="🔎"),
        ],
        "Experiments": [
            st.Page("pages/sweep.py", title="Layer sweep", icon="📈"),
            st.Page("pages/roc.py", title="ROC curves", icon="〽️"),
            st.Page("pages/predictions.py", title="Predictions", icon="🎯"),
            st.Page("pages/experiments.py", title="Experiments", icon="🗂️"),
        ],
    }
)
navigation.run()
