"""Flywheel's dashboard: ``streamlit run app.py``. Navigation and the shared sidebar."""

from __future__ import annotations

import streamlit as st

from pages._common import (
    bootstrap_workspace,
    current_user,
    get_store,
    guarded,
    identity_caption,
    plan_selector,
)

st.set_page_config(page_title="Flywheel", page_icon=":material/cycle:", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/plan.py", title="Plan", icon=":material/edit_note:"),
    st.Page("pages/generation.py", title="Synthetic data", icon=":material/auto_awesome:"),
    st.Page("pages/data.py", title="Data", icon=":material/database:"),
    st.Page("pages/consent.py", title="Consent", icon=":material/verified_user:"),
    st.Page("pages/cycles.py", title="Cycles", icon=":material/cycle:"),
    st.Page("pages/evals.py", title="Evals & gates", icon=":material/fact_check:"),
    st.Page("pages/abtest.py", title="A/B test", icon=":material/science:"),
    st.Page("pages/audit.py", title="Audit", icon=":material/policy:"),
]

navigation = st.navigation(PAGES)
user = current_user()
guarded(bootstrap_workspace)
with st.sidebar:
    st.markdown("### :material/cycle: Flywheel")
    guarded(plan_selector)
    st.caption(f"Store: `{get_store().path.name}`")
    identity_caption(user)
navigation.run()
