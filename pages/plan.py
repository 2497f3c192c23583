"""Plan: edit the six-month flywheel plan section by section, with live lint, versions, diffs,
JSON/YAML download and upload, and its documents (plan, privacy packet) as MD, HTML or PDF."""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.access import refusal
from core.charts import timeline_figure
from core.errors import FlywheelError
from core.labels import label, label_path, show
from core.lint import Finding, ab_requirement, generation_estimate_usd, lint_data
from core.plan import (
    ABDesign,
    Cadence,
    ConsentPolicy,
    Economics,
    FeatureGoal,
    Gate,
    Generation,
    Logging,
    SignOffs,
    Training,
    plan_timeline,
)
from core.plan_files import PlanFormat, dump_plan, parse_plan, plan_format_for
from core.plan_versions import diff_plans, list_versions, load_plan, save_plan_version
from core.signoffs import Decision, approval_status, record_decision
from core.starters import STARTERS, starter_plan
from pages._common import (
    current_plan_id,
    current_user,
    get_store,
    guarded,
    page_header,
    select_plan,
    table,
)
from pages._documents import plan_document_downloads
from pages._forms import edit_filters, edit_model, edit_rows, read_only

SECTIONS = {
    "goal": "1 · Goal",
    "logging": "2 · Logging",
    "consent": "3 · Consent",
    "quality_filters": "4 · Filters",
    "generation": "5 · Generation",
    "cadence": "6 · Cadence",
    "gates": "7 · Gates",
    "ab_test": "8 · A/B test",
    "economics": "9 · Economics",
    "timeline": "10 · Timeline",
    "sign_offs": "11 · Sign-offs",
}

store = get_store()
user = current_user()
edit_refused = refusal(user, "plan.edit")

page_header("Plan")
# Eleven section tabs do not fit one row at 1366 px: let the tab row wrap instead of hiding
# the last sections behind a scroll.
st.markdown(
    "<style>.stTabs [data-baseweb='tab-list'] { flex-wrap: wrap; row-gap: 0.25rem; }</style>",
    unsafe_allow_html=True,
)
if flash := st.session_state.pop("plan_flash", None):
    st.success(flash, icon=":material/save:")


def _create_from_starter(key: str) -> None:
    plan_id, _ = save_plan_version(
        store,
        starter_plan(key),
        note=f"Created from the starter '{STARTERS[key]}'",
        user=user,
    )
    select_plan(plan_id)


with st.popover("New plan from a starter", icon=":material/add:"):
    starter = st.selectbox("Starter", list(STARTERS), format_func=STARTERS.__getitem__)
    if edit_refused:
        st.caption(edit_refused)
    if st.button("Create plan", type="primary", disabled=edit_refused is not None):
        guarded(lambda: _create_from_starter(starter))
        st.rerun()

chosen = current_plan_id()
if chosen is None:
    st.info(
        "No plan yet. Create one from a starter above, or import a JSON/YAML plan file with "
        "`python -m core plan import FILE`.",
        icon=":material/info:",
    )
    st.stop()
plan_id: str = chosen

versions = guarded(lambda: list_versions(store, plan_id)) or []
if not versions:
    st.stop()
numbers = [v.version for v in versions]
if "pending_version" in st.session_state:
    st.session_state["edit_version"] = st.session_state.pop("pending_version")
if st.session_state.get("edit_version") not in numbers:
    st.session_state["edit_version"] = numbers[0]
version = st.selectbox(
    "Edit from version",
    numbers,
    key="edit_version",
    format_func=lambda n: f"v{n}" + (" (latest)" if n == numbers[0] else ""),
    help="Edits start from this version; saving always creates a new version.",
)
loaded = guarded(lambda: load_plan(store, plan_id, version))
if loaded is None:
    st.stop()
base_plan, _ = loaded
base = base_plan.to_data()
token = f"{plan_id}:v{version}:{st.session_state.get('form_generation', 0)}"

editor, side = st.columns([3, 1.15], gap="large")

# -- the sections ------------------------------------------------------------------------------
with editor, read_only(edit_refused is not None):
    if edit_refused:
        st.caption(f"Read only: {edit_refused}")
    tabs = dict(zip(SECTIONS, st.tabs(list(SECTIONS.values())), strict=True))
    draft: dict[str, Any] = {"schema_version": base["schema_version"]}
    with tabs["goal"]:
        draft["goal"] = edit_model(FeatureGoal, base["goal"], f"{token}.goal")
    with tabs["logging"]:
        draft["logging"] = edit_model(Logging, base["logging"], f"{token}.logging")
    with tabs["consent"]:
        draft["consent"] = edit_model(ConsentPolicy, base["consent"], f"{token}.consent")
    with tabs["quality_filters"]:
        st.caption(
            "Applied top to bottom. Each row is one rule; fill in the parameters its rule takes "
            "(threshold and keep for near_dedup, min/max chars for length_bounds, …) and leave "
            "the others blank."
        )
        draft["quality_filters"] = edit_filters(base["quality_filters"], f"{token}.filters")
    with tabs["generation"]:
        draft["generation"] = edit_model(Generation, base["generation"], f"{token}.generation")
    with tabs["cadence"]:
        draft["cadence"] = edit_model(Cadence, base["cadence"], f"{token}.cadence")
        st.subheader("Fine-tuning")
        draft["training"] = edit_model(Training, base["training"], f"{token}.training")
    with tabs["gates"]:
        draft["gates"] = edit_rows(
            Gate,
            base["gates"],
            f"{token}.gates",
            label="Gates",
            help_text="Every blocking gate must pass before a candidate ships.",
        )
    with tabs["ab_test"]:
        draft["ab_test"] = edit_model(ABDesign, base["ab_test"], f"{token}.ab")
    with tabs["economics"]:
        draft["economics"] = edit_model(Economics, base["economics"], f"{token}.economics")
    with tabs["sign_offs"]:
        draft["sign_offs"] = edit_model(SignOffs, base["sign_offs"], f"{token}.signoffs")

plan, report = lint_data(draft)

with editor:
    with tabs["generation"]:
        if plan is not None:
            gen = plan.generation
            cols = st.columns(3)
            cols[0].metric("Cells", gen.grid_size)
            cols[1].metric("Examples", gen.grid_size * gen.examples_per_cell)
            cols[2].metric("Estimated cost", f"${generation_estimate_usd(plan):,.2f}")
    with tabs["ab_test"]:
        if plan is not None:
            try:
                per_arm, days = ab_requirement(plan)
                shortest = min((c.ab_days for c in plan_timeline(plan)), default=0)
                cols = st.columns(3)
                cols[0].metric("Users per arm", f"{per_arm:,}")
                cols[1].metric("Days needed", days)
                cols[2].metric("Days a cycle leaves", shortest)
            except ValueError:
                st.warning("The baseline and MDE do not give a valid sample size.")
    with tabs["economics"]:
        if plan is not None:
            econ = plan.economics
            econ_cols = st.columns(4)
            econ_cols[0].metric("Teacher / month", f"${econ.teacher_monthly_cost:,.0f}")
            econ_cols[1].metric("Student / month", f"${econ.student_monthly_cost:,.0f}")
            econ_cols[2].metric("Savings / month", f"${econ.monthly_savings:,.0f}")
            factor = econ.cost_reduction
            econ_cols[3].metric("Cost reduction", f"{factor:.1f}x" if factor else "—")
    with tabs["timeline"]:
        if plan is None:
            st.info("Fix the fields flagged on the right to see the timeline.")
        else:
            cycles = plan_timeline(plan)
            if cycles:
                st.plotly_chart(timeline_figure(cycles), width="stretch")
                table(pd.DataFrame([c.model_dump() for c in cycles]))
            else:
                st.warning("No full cycle fits in the horizon.")


# -- lint and save -----------------------------------------------------------------------------
def _where(finding: Finding) -> str:
    section = finding.path.split(".")[0].split("[")[0]
    return SECTIONS.get(section, "Plan")


with side:
    changed = plan is None or plan.fingerprint() != base_plan.fingerprint()
    st.markdown("#### Readiness")
    if report.ready:
        st.success(f"Ready · {len(report.warnings)} warning(s)", icon=":material/check_circle:")
    else:
        st.error(
            f"Not ready · {len(report.errors)} error(s), {len(report.warnings)} warning(s)",
            icon=":material/block:",
        )
    with st.container(height=420):
        if not report.findings:
            st.caption("No findings: the plan is consistent.")
        for finding in report.findings:
            icon = ":material/error:" if finding.severity == "error" else ":material/warning:"
            st.markdown(f"{icon} **{_where(finding)}** · `{finding.path}`  \n{finding.message}")

    st.markdown("#### Save")
    st.caption("Unsaved changes." if changed else f"No changes since v{version}.")
    if edit_refused:
        st.caption(edit_refused)
    note = st.text_input("Change note", key=f"{token}.note", placeholder="What changed and why")
    blocked = plan is None or not changed or edit_refused is not None
    if st.button("Save as new version", type="primary", disabled=blocked):
        if plan is None:
            st.error("Fix the schema errors first.")
        elif not note.strip():
            st.error("Write a change note: reviewers read it in the history.")
        else:
            try:
                _saved_id, new_version = save_plan_version(
                    store, plan, note=note.strip(), plan_id=plan_id, user=user
                )
            except FlywheelError as exc:
                st.error(str(exc))
            else:
                state = "ready" if report.ready else "saved as a draft, not ready"
                st.session_state["plan_flash"] = f"Saved v{new_version} ({state})."
                st.session_state["pending_version"] = new_version
                st.rerun()

# -- versions, diff, files ---------------------------------------------------------------------
st.divider()
history, compare, signoff, files, documents = st.tabs(
    ["History", "Compare versions", "Sign-off", "Import / export", "Documents"]
)
with history:
    table(
        pd.DataFrame(
            [
                {
                    "version": f"v{v.version}",
                    "saved": v.created_at,
                    "by": v.author,
                    "note": v.note,
                    "ready": v.ready,
                    "errors": v.lint_errors,
                    "warnings": v.lint_warnings,
                }
                for v in versions
            ]
        )
    )

with compare:
    if len(numbers) < 2:
        st.info("Save a second version to compare versions field by field.")
    else:
        left, right = st.columns(2)
        old = left.selectbox("From", numbers, index=1, format_func=lambda n: f"v{n}")
        new = right.selectbox("To", numbers, index=0, format_func=lambda n: f"v{n}")
        pair = guarded(
            lambda: (load_plan(store, plan_id, old)[0], load_plan(store, plan_id, new)[0])
        )
        if pair is not None:
            changes = diff_plans(*pair)
            if not changes:
                st.success(f"v{old} and v{new} are identical.")
            else:
                st.caption(f"{len(changes)} field(s) differ.")
                table(
                    pd.DataFrame(
                        [
                            {
                                "field": label_path(c.path),
                                f"v{old}": show(c.before),
                                f"v{new}": show(c.after),
                            }
                            for c in changes
                        ]
                    ),
                    column_config={
                        "field": st.column_config.TextColumn(label("field"), pinned=True),
                        f"v{old}": st.column_config.TextColumn(f"Version {old}"),
                        f"v{new}": st.column_config.TextColumn(f"Version {new}"),
                    },
                )

with files:
    down, up = st.columns(2)
    with down:
        st.markdown(f"**Download v{version}**")
        downloads: tuple[tuple[PlanFormat, str], ...] = (
            ("json", "application/json"),
            ("yaml", "application/yaml"),
        )
        for fmt, mime in downloads:
            st.download_button(
                f"{fmt.upper()}",
                dump_plan(base_plan, fmt),
                file_name=f"{plan_id}-v{version}.{fmt}",
                mime=mime,
                icon=":material/download:",
                key=f"download-{fmt}",
            )
    with up:
        st.markdown("**Upload a plan file**")
        upload = st.file_uploader(
            "JSON or YAML",
            type=["json", "yaml", "yml"],
            key="plan_upload",
            disabled=edit_refused is not None,
        )
        if edit_refused:
            st.caption(edit_refused)
        target = st.radio(
            "Store as",
            ["next version of this plan", "a new plan"],
            horizontal=True,
            key="upload_target",
        )
        if upload is not None and st.button(
            "Store uploaded plan", key="store_upload", disabled=edit_refused is not None
        ):
            try:
                text = upload.getvalue().decode("utf-8")
                uploaded = parse_plan(text, plan_format_for(upload.name), source=upload.name)
                new_id, new_version = save_plan_version(
                    store,
                    uploaded,
                    note=f"Uploaded {upload.name}",
                    user=user,
                    plan_id=plan_id if target.startswith("next") else None,
                )
            except UnicodeDecodeError:
                st.error(f"{upload.name}: not UTF-8 text; nothing was stored.")
            except FlywheelError as exc:
                st.error(f"{exc} Nothing was stored.")
            else:
                st.success(f"Stored {new_id} v{new_version}.")
                select_plan(new_id)
                st.session_state["pending_version"] = new_version
                st.rerun()

with signoff:
    status = guarded(lambda: approval_status(store, plan_id, version))
    if status is not None:
        if not status.required:
            st.info("The plan names no approvers: add them in section 11.")
        elif status.approved:
            st.success(
                f"v{version} is approved by every required role.", icon=":material/verified:"
            )
        else:
            waiting = ", ".join(label(r) for r in status.missing)
            st.warning(f"v{version} waits for: {waiting}.", icon=":material/pending:")
        table(
            pd.DataFrame(
                [
                    {
                        "role": role,
                        "decision": d.decision if d else "pending",
                        "approver": d.approver if d else None,
                        "decided_at": d.decided_at if d else None,
                        "note": d.note if d else None,
                    }
                    for role in status.required
                    for d in [status.decisions.get(role)]
                ]
            ),
            codes=("role", "decision"),
        )
        mine = [r for r in status.required if r in user.roles]
        if mine:
            decide_as = st.selectbox("Decide as", mine, format_func=label, key=f"{token}.decide_as")
            reason = st.text_area("Note (required to reject)", key=f"{token}.decision_note")
            approve_col, reject_col = st.columns(2)
            choices: tuple[tuple[DeltaGenerator, Decision, str], ...] = (
                (approve_col, "approve", "Approve this version"),
                (reject_col, "reject", "Reject this version"),
            )
            for column, decision, caption in choices:
                if column.button(caption, key=f"{token}.{decision}"):
                    done = guarded(
                        partial(
                            record_decision,
                            store,
                            plan_id,
                            version,
                            role=decide_as,
                            user=user,
                            decision=decision,
                            note=reason,
                        )
                    )
                    if done is not None:
                        st.rerun()
        else:
            st.caption("You hold none of the roles this version needs.")
        st.caption("Approvals belong to this exact version: saving an edit starts a new round.")

with documents:
    plan_document_downloads(base_plan, plan_id, version)
