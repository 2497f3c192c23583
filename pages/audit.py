"""Audit: who changed, approved, viewed or erased what, and when — filtered and exported."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta

import pandas as pd
import streamlit as st

from core.audit import (
    ACTION_FAMILIES,
    action_choices,
    audit_actions,
    audit_csv,
    audit_entries,
    audit_span,
)
from core.labels import label, show
from pages._common import get_store, guarded, key_values, page_header, table

page_header("Audit")
store = get_store()
st.caption(
    "Append-only: every plan version, approval, ingest, cycle, erasure, gate override and view of "
    "raw PII is written here in the same transaction as the change. Erasures hold a keyed hash "
    "(HMAC under a key kept outside the store), never the user's id."
)

actions = guarded(lambda: audit_actions(store)) or []
if not actions:
    st.info("Nothing has been recorded yet: save a plan or load data to see entries here.")
    st.stop()


def _choice_label(choice: str) -> str:
    if choice == "(all)":
        return "every action"
    if choice in ACTION_FAMILIES:
        return f"{choice} (and its sub-actions): {ACTION_FAMILIES[choice]}"
    return choice


left, middle, right = st.columns([1.2, 1, 1.4])
action = left.selectbox(
    "Action",
    ["(all)", *action_choices(actions)],
    format_func=_choice_label,
    help="A family such as ingest or plan matches the action and every sub-action of it.",
)
actor = middle.text_input("Actor", placeholder="anyone")
target = right.text_input("Target contains", placeholder="plan id, batch id, cycle …")
today = datetime.now(UTC).date()
span = guarded(lambda: audit_span(store))
# From the first entry to the last (or today): no entry is hidden by the default window.
first = span[0].date() if span else today - timedelta(days=90)
last = max(today, span[1].date()) if span else today
window = st.date_input("Between", (first, last))
start, end = window if isinstance(window, tuple) and len(window) == 2 else (None, None)

entries = (
    guarded(
        lambda: audit_entries(
            store,
            action=None if action == "(all)" else action,
            actor=actor.strip() or None,
            target=target.strip() or None,
            since=datetime.combine(start, time.min, UTC) if start else None,
            until=datetime.combine(end + timedelta(days=1), time.min, UTC) if end else None,
        )
    )
    or []
)

st.caption(f"{len(entries):,} entr{'y' if len(entries) == 1 else 'ies'}")
st.download_button(
    "Export CSV",
    audit_csv(entries),
    file_name=f"flywheel-audit-{today.isoformat()}.csv",
    mime="text/csv",
    icon=":material/download:",
    disabled=not entries,
)
# The detail as "Key: value" text, not a JSON blob (core.labels.show), at a width that keeps
# the table inside a laptop's page; a picked row's detail reads in full below, field by field.
shown_entries = entries[:5000]
picked = table(
    pd.DataFrame([e.__dict__ for e in shown_entries]),
    column_config={
        "ts": st.column_config.DatetimeColumn(label("ts"), format="YYYY-MM-DD HH:mm"),
        **{
            key: st.column_config.TextColumn(label(key), width="medium")
            for key in ("target", "detail")
        },
    },
    on_select="rerun",
    selection_mode="single-row",
    key="audit_table",
)
picked_rows = list(picked.selection.rows) if picked is not None else []
if picked_rows and picked_rows[0] < len(shown_entries):
    entry = shown_entries[picked_rows[0]]
    st.markdown(f"**Entry {entry.audit_id}** · `{entry.action}` · {show(entry.target)}")
    try:
        parsed = json.loads(entry.detail)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed:
        key_values(parsed)
    else:
        st.caption(show(entry.detail))
elif shown_entries:
    st.caption("Pick a row to read its whole detail, field by field.")
if len(entries) > 5000:
    st.caption("Showing the newest 5,000; the CSV holds them all.")
