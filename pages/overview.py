"""Overview: the current plan at a glance — summary, readiness and the six-month timeline."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.charts import cost_per_1k_figure, cycle_rates_figure, timeline_figure
from core.lint import ab_requirement, generation_estimate_usd, lint_plan
from core.monitoring import (
    CycleActuals,
    cycle_actuals,
    plan_vs_actual,
    realised_monthly_savings,
    store_revision,
)
from core.plan import Plan, plan_timeline
from core.plan_versions import load_plan
from core.store import Store
from pages._common import get_store, guarded, page_header, plan_id_or_stop

page_header("Overview")

plan_id = plan_id_or_stop()

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


@st.cache_data(show_spinner=False, max_entries=32)
def _actuals(db: str, revision: int, fingerprint: str, _plan: Plan) -> list[CycleActuals]:
    """Per-cycle actuals, recomputed only when the store or the plan changes."""
    return cycle_actuals(Store(db), _plan)


st.markdown("#### Cycles: planned against actual")
store = get_store()
actuals = guarded(
    lambda: _actuals(str(store.path), store_revision(store), plan.fingerprint(), plan)
)
if not actuals:
    st.info(
        "No production traffic yet. Load interaction logs on the **Data** page (or "
        "`python -m core ingest FILE --cycle N`) to see each cycle's figures here.",
        icon=":material/info:",
    )
    st.stop()

by_cycle = {a.cycle: a for a in actuals}
deviations = {(d.cycle, d.metric): d for d in plan_vs_actual(plan, actuals)}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


rows = []
for milestone in timeline:
    a = by_cycle.get(milestone.cycle)
    cost = deviations.get((milestone.cycle, "cost reduction (x)"))
    rows.append(
        {
            "cycle": milestone.cycle,
            "window": f"{milestone.start:%d %b} – {milestone.end:%d %b %Y}",
            "status": "traffic logged" if a else "planned",
            "interactions": a.interactions if a else 0,
            "accepted": _pct(a.acceptance_rate if a else None),
            "thumbs up": _pct(a.thumbs_up_rate if a else None),
            "consented": _pct(a.consent_rate if a else None),
            "teacher $/1k": _money(a.teacher_cost_per_1k if a else None),
            "student $/1k": _money(a.student_cost_per_1k if a else None),
            "cost reduction": (
                f"{a.realised_reduction:.1f}x" if a and a.realised_reduction else "—"
            ),
            "PII rows redacted": a.pii_rows if a else 0,
            "plan check": cost.status if cost else "no data",
        }
    )
table = pd.DataFrame(rows)
off = [d for d in deviations.values() if d.status == "off plan"]


def _highlight(row: pd.Series) -> list[str]:
    colour = "background-color: #fde0dd" if row["plan check"] == "off plan" else ""
    return [colour] * len(row)


st.dataframe(table.style.apply(_highlight, axis=1), hide_index=True, width="stretch")
if off:
    st.warning(
        "Off plan: "
        + "; ".join(
            f"cycle {d.cycle} {d.metric} {d.actual:.2f} against {d.planned:.2f}"
            for d in off
            if d.actual is not None
        ),
        icon=":material/trending_down:",
    )
latest = actuals[-1]
realised = realised_monthly_savings(plan, latest)
if latest.realised_reduction and realised is not None:
    econ = plan.economics
    cols = st.columns(3)
    cols[0].metric(
        "Realised cost reduction",
        f"{latest.realised_reduction:.1f}x",
        delta=f"{latest.realised_reduction - goal.target_cost_reduction:+.1f}x vs target",
    )
    cols[1].metric(
        "Savings / month at planned volume",
        f"${realised:,.0f}",
        delta=f"${realised - econ.monthly_savings:+,.0f} vs projection",
    )
    cols[2].metric("Consented for training (latest)", _pct(latest.consent_rate))
left, right = st.columns(2)
left.plotly_chart(cycle_rates_figure(actuals), width="stretch")
right.plotly_chart(cost_per_1k_figure(actuals), width="stretch")
