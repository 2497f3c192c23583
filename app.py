"""Flywheel's dashboard: ``streamlit run app.py``. Navigation and the shared sidebar."""

from __future__ import annotations

import streamlit as st

from pages._common import bootstrap_workspace, get_store, guarded, plan_selector

st.set_page_config(page_title="Flywheel", page_icon=":material/cycle:", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/plan.py", title="Plan", icon=":material/edit_note:"),
    st.Page("pages/generation.py", title="Synthetic data", icon=":material/auto_awesome:"),
    st.Page("pages/data.py", title="Data", icon=":material/database:"),
    st.Page("pages/consent.py", title="Consent", icon=":material/verified_user:"),
    st.Page("pages/cycles.py", title="Cycles", icon=":material/cycle:"),
]

navigation = st.navigation(PAGES)
guarded(bootstrap_workspace)
with st.sidebar:
    st.markdown("### :material/cycle: Flywheel")
    guarded(plan_selector)
    st.caption(f"Store: `{get_store().path.name}`")
navigation.run()
