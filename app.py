"""cadx app: routes the pages and opens the shared workspace. Run with ``bash scripts/app.sh``."""

import streamlit as st

from pages._shared import workspace

st.set_page_config(page_title="cadx", page_icon="🩻", layout="wide")
workspace()  # opens the database; on an empty one, creates the synthetic demo data

navigation = st.navigation([st.Page("pages/overview.py", title="Overview", icon="📊", default=True)])
navigation.run()
