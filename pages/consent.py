"""Consent: the ledger by scope and policy version, the consent rate over time, a user lookup
and erasure."""

from __future__ import annotations

import streamlit as st

from core.access import refusal
from core.charts import consent_rate_figure
from core.consent import (
    SCOPES,
    consent_counts,
    consent_rate_over_time,
    count_eligible,
    forget_user,
    user_consent,
)
from core.labels import label
from core.metrics import metric
from core.monitoring import cycle_actuals
from core.plan_versions import load_plan
from pages._common import (
    cached_read,
    current_plan_id,
    current_user,
    get_store,
    guarded,
    page_header,
    table,
)

page_header("Consent")
user = current_user()
erase_refused = refusal(user, "data.erase")
store = get_store()

counts = guarded(lambda: cached_read(consent_counts)) or []
if not counts:
    st.info(
        "No consent events yet. Load them on the **Data** page (kind: consent) or run "
        "`python -m core data ingest FILE --kind consent`. Until then no interaction is eligible "
        "for training: no record means no consent.",
        icon=":material/info:",
    )
else:
    eligible = guarded(lambda: cached_read(count_eligible))
    if eligible is not None:
        st.metric("Interactions eligible for training", f"{eligible:,}")
    st.markdown("#### Events per scope and policy version")
    table(counts, codes=("scope", "action"))
    scope = st.selectbox("Scope", SCOPES, key="consent_scope")
    rate = guarded(lambda: cached_read(consent_rate_over_time, scope)) or []
    if rate:
        st.plotly_chart(consent_rate_figure(rate, scope=scope), width="stretch")
        if scope == "training":
            granting = metric("consent_grant_rate")
            latest = rate[-1]
            st.caption(
                f"{granting.label} on {latest['day']}: {granting.of(float(latest['rate']))} "
                f"({int(latest['granted']):,} of {int(latest['users']):,}). "
                f"{granting.definition}"
            )
    else:
        st.caption(f"No `{scope}` events yet.")

# -- per cycle: the Overview's consent figures, with the same definitions and bases ----------
plan_id = current_plan_id()
loaded = guarded(lambda: cached_read(load_plan, plan_id)) if plan_id else None
plan = loaded[0] if loaded else None
actuals = guarded(lambda: cached_read(cycle_actuals, plan)) if plan else None
if actuals:
    consented, eligible_share = metric("consented_users"), metric("eligible_share")
    st.markdown("#### Consent in each cycle's traffic")
    table(
        [
            {
                "cycle": a.cycle,
                "users active": a.users,
                consented.column: consented.percent(a.consented_user_rate),
                "interactions": a.interactions,
                eligible_share.column: eligible_share.percent(a.consent_rate),
            }
            for a in actuals
        ]
    )
    st.caption(
        f"{consented.label}: {consented.definition} "
        f"{eligible_share.label}: {eligible_share.definition}"
    )

st.markdown("#### Look up a user")
user_id = st.text_input("User id", key="consent_user").strip()
if user_id:
    found = guarded(lambda: user_consent(store, user_id))
    if found is not None:
        cols = st.columns(len(SCOPES) + 1)
        for col, scope_name in zip(cols, SCOPES, strict=False):
            state = found["state"][scope_name]
            # A tile holds a word or two; the long "no record (no consent)" goes to the help.
            recorded = state in ("granted", "withdrawn")
            col.metric(
                label(scope_name),
                label(state) if recorded else "No record",
                help=None if recorded else "No consent event for this scope: no consent.",
            )
        cols[-1].metric("Stored interactions", found["interactions"])
        if found["events"]:
            table(found["events"], codes=("scope", "action"))
        else:
            st.caption("No consent events for this user: no consent.")

st.markdown("#### Forget a user")
st.caption(
    "Deletes the user's interactions and every copy — dataset rows, quarantined lines, "
    "consent events, redacted originals, eval items built from their text — in one "
    "transaction, then rewrites the store file so that none of their bytes is left in it "
    "(the dashboard waits a moment meanwhile). The audit log keeps a keyed hash only. "
    "Files exported earlier, backups and models trained on their rows are listed for you "
    "to act on: the store cannot reach them."
)
with st.form("forget"):
    forget_id = st.text_input("User id to erase", key="forget_user")
    confirmed = st.checkbox("I understand this cannot be undone", key="forget_confirm")
    if erase_refused:
        st.caption(erase_refused)
    go = st.form_submit_button(
        "Forget this user", icon=":material/delete_forever:", disabled=erase_refused is not None
    )
if go:
    if not forget_id.strip():
        st.warning("Enter the user id to erase.")
    elif not confirmed:
        st.warning("Tick the confirmation first.")
    else:
        result = guarded(lambda: forget_user(store, forget_id, by=user))
        if result is not None:
            st.success(
                f"Forgot {result.user_id}: {result.interactions_deleted} interactions, "
                f"{result.dataset_rows_deleted} dataset rows, "
                f"{result.eval_items_deleted} eval items, "
                f"{sum(result.rows_deleted.values())} rows in all; the store file was "
                f"rewritten in {result.rewrite_seconds:.1f} s."
            )
            beyond = [
                ("Exported files holding their rows", result.exports),
                ("Backups made before the erasure", result.backups),
                ("Models trained on dataset versions holding their rows", result.models),
            ]
            for title, rows in beyond:
                if rows:
                    st.warning(f"{title}: the store cannot reach these, act on them.")
                    table(rows)
