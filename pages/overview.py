"""Overview: the current plan at a glance — summary, readiness and the six-month timeline."""

from __future__ import annotations

import streamlit as st

from core.charts import timeline_figure
from core.lint import ab_requirement, generation_estimate_usd, lint_plan
from core.plan import plan_timeline
from core.plan_versions import load_plan
from pages._common import current_plan_id, get_store, guarded, page_header

page_header("Overview")

plan_id = current_plan_id()
if plan_id is None:
    st.info(
        "No plan yet. Open **Plan** to start from a starter plan, or run "
        "`python -m core demo` to load the demo workspace.",
        icon=":material/info:",
    )
    st.stop()

loaded = guarded(lambda: load_plan(get_store(), plan_id))
if loaded is None:
    st.stop()
plan, version = loaded
report = lint_plan(plan)
goal = plan.goal

st.subheader(f"{goal.feature} · v{version}")
st.write(goal.business_goal or "_No business goal written yet._")

st.caption(
    f"Owner **{goal.owner or '—'}** · teacher **{goal.teacher_model}** → student "
    f"**{goal.student_model}** · from {goal.start_month} for {goal.horizon_months} months"
)
cols = st.columns(4)
cols[0].metric("Quality to keep", f"{goal.target_quality_retention:.0%}")
reduction = plan.economics.cost_reduction
cols[1].metric(
    f"Cost reduction (target {goal.target_cost_reduction:g}x)",
    f"{reduction:.1f}x" if reduction else "—",
)
cols[2].metric("Teacher cost / month", f"${plan.economics.teacher_monthly_cost:,.0f}")
cols[3].metric("Projected savings / month", f"${plan.economics.monthly_savings:,.0f}")

st.markdown("#### Readiness")
if report.ready:
    st.success(
        f"Ready: no lint errors ({len(report.warnings)} warning(s)).", icon=":material/check:"
    )
else:
    st.error(
        f"Not ready: {len(report.errors)} lint error(s) and {len(report.warnings)} warning(s). "
        "Fix them on the Plan page.",
        icon=":material/block:",
    )
for finding in report.findings:
    icon = ":material/error:" if finding.severity == "error" else ":material/warning:"
    st.markdown(f"{icon} `{finding.path}` — {finding.message}")

st.markdown("#### Plan in numbers")
grid = plan.generation
numbers = st.columns(4)
numbers[0].metric("Generation grid", f"{grid.grid_size} cells × {grid.examples_per_cell}")
numbers[1].metric("Generation estimate", f"${generation_estimate_usd(plan):,.2f}")
try:
    per_arm, days = ab_requirement(plan)
    numbers[2].metric("A/B test", f"{per_arm:,} / arm", help=f"{days} days at the planned traffic")
except ValueError:
    numbers[2].metric("A/B sample per arm", "—")
numbers[3].metric("Filters · gates", f"{len(plan.quality_filters)} · {len(plan.gates)}")

timeline = plan_timeline(plan)
if timeline:
    st.plotly_chart(timeline_figure(timeline), width="stretch")
else:
    st.warning("The horizon holds no full cycle; adjust the cadence on the Plan page.")
