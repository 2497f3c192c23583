"""Overview: the current plan at a glance — summary, readiness, the six-month timeline — and
each cycle planned against actual: traffic, funnel, dataset, gates, A/B lift, deviations."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.charts import (
    cost_per_1k_figure,
    cycle_rates_figure,
    dataset_sizes_figure,
    funnel_figure,
    gate_thresholds_figure,
    lift_by_cycle_figure,
    timeline_figure,
)
from core.formatting import MISSING, lift, money, percent
from core.labels import label
from core.lint import ab_requirement, generation_estimate_usd, lint_plan
from core.metrics import metric
from core.monitoring import (
    CycleRecord,
    coverage_gaps,
    cycle_monitoring,
    off_plan,
    realised_monthly_savings,
)
from core.plan import plan_timeline
from pages._common import cached_read, guarded, page_header, plan_or_stop
from pages._common import table as show_table

page_header("Overview")

plan_id, plan, version = plan_or_stop()
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
records: list[CycleRecord] = []
if timeline:
    records = guarded(lambda: cached_read(cycle_monitoring, plan_id, plan)) or []
status = {r.cycle: r.status for r in records if r.status != "planned"}
if timeline:
    st.plotly_chart(timeline_figure(timeline, status=status), width="stretch")
else:
    st.warning("The horizon holds no full cycle; adjust the cadence on the Plan page.")
    st.stop()

st.markdown("#### Cycles: planned against actual")
if not status:
    st.info(
        "No cycle has traffic or a run yet. Load interaction logs on the **Data** page (or "
        "`python -m core data ingest FILE --cycle N`) and run a cycle on the **Cycles** page to "
        "see each cycle's figures here.",
        icon=":material/info:",
    )
    st.stop()

actuals = [r.actuals for r in records if r.actuals is not None]
departures = off_plan(plan, records)  # core.monitoring: the one "off plan" rule


# Each rate is named with its base (core.metrics), the same wherever it is shown.
ACCEPTED = metric("accepted_share")
RATED_UP = metric("rated_up_share")
ELIGIBLE = metric("eligible_share")
CONSENTED = metric("consented_users")


def _interval(ci: tuple[float, float] | None) -> str:
    return MISSING if ci is None else f"[{lift(ci[0])}, {lift(ci[1])}]"


def _lift(record: CycleRecord) -> str:
    ab = record.ab
    return MISSING if ab is None else f"{lift(ab.lift)} {_interval(ab.ci)}"


def _gates(record: CycleRecord) -> str:
    gates = record.gates
    if gates is None:
        return "—"
    passed = sum(g.verdict == "pass" for g in gates.gates)
    verdict = gates.verdict.replace("_", " ")
    return f"{verdict} ({passed}/{len(gates.gates)} pass)"


rows = []
for milestone, record in zip(timeline, records, strict=True):
    a = record.actuals
    funnel = record.funnel
    dataset = record.dataset
    rows.append(
        {
            "cycle": record.cycle,
            "window": f"{milestone.start:%d %b} – {milestone.end:%d %b %Y}",
            "status": record.status,
            "interactions": a.interactions if a else 0,
            ACCEPTED.column: ACCEPTED.percent(a.acceptance_rate if a else None),
            RATED_UP.column: RATED_UP.percent(a.thumbs_up_rate if a else None),
            CONSENTED.column: CONSENTED.percent(a.consented_user_rate if a else None),
            ELIGIBLE.column: ELIGIBLE.percent(a.consent_rate if a else None),
            "teacher $/1k": money(a.teacher_cost_per_1k if a else None),
            "student $/1k": money(a.student_cost_per_1k if a else None),
            "cost reduction": (
                f"{a.realised_reduction:.1f}x" if a and a.realised_reduction else "—"
            ),
            "PII rows redacted": a.pii_rows if a else 0,
            "funnel (rows in → out)": (
                f"{funnel[0].rows_in:,} → {funnel[-1].rows_out:,}" if funnel else "—"
            ),
            "dataset rows": f"{dataset.rows:,}" if dataset else "—",
            "synthetic": percent(dataset.synthetic_share if dataset else None, 1),
            "gates": _gates(record),
            "A/B lift [interval]": _lift(record),
            "A/B decision": label(record.ab.verdict) if record.ab else "—",
            "deviations": "; ".join(departures[record.cycle]) or "—",
        }
    )
table = pd.DataFrame(rows)


def _highlight(row: pd.Series) -> list[str]:
    colour = "background-color: #fde0dd" if row["deviations"] != "—" else ""
    return [colour] * len(row)


# Three narrower tables, each led by the cycle, instead of one of 18 columns that hid its
# gates, lift and decision behind a sideways scroll on a laptop screen.
VERDICT_COLUMNS = ["cycle", "status", "gates", "A/B lift [interval]", "A/B decision", "deviations"]
TRAFFIC_COLUMNS = [
    "cycle",
    "window",
    "interactions",
    ACCEPTED.column,
    RATED_UP.column,
    CONSENTED.column,
    ELIGIBLE.column,
]
COST_COLUMNS = ["cycle", "teacher $/1k", "student $/1k", "cost reduction"]
DATA_COLUMNS = [
    "cycle",
    "PII rows redacted",
    "funnel (rows in → out)",
    "dataset rows",
    "synthetic",
]
st.markdown("**Verdicts**")
st.dataframe(
    table[VERDICT_COLUMNS].style.apply(_highlight, axis=1),
    hide_index=True,
    width="stretch",
    column_config={
        **{c: st.column_config.Column(label(c)) for c in VERDICT_COLUMNS},
        "cycle": st.column_config.NumberColumn(label("cycle"), pinned=True),
        "deviations": st.column_config.TextColumn(label("deviations"), width="medium"),
    },
)
st.markdown("**Traffic and cost**")  # two tables: together they overflow 1366 px
# A rate's column is headed by its name, its base in the caption below and on hover: four
# headers with their bases in full do not fit a laptop's width side by side.
RATES = (ACCEPTED, RATED_UP, CONSENTED, ELIGIBLE)
show_table(
    table[TRAFFIC_COLUMNS],
    pinned=("cycle",),
    column_config={
        "window": st.column_config.TextColumn("Dates"),
        **{m.column: st.column_config.TextColumn(m.label, help=m.definition) for m in RATES},
    },
)
st.caption(" · ".join(f"{m.label}: {m.short_base}" for m in RATES))
show_table(table[COST_COLUMNS], pinned=("cycle",))
st.markdown("**Data**")
show_table(table[DATA_COLUMNS], pinned=("cycle",))
deviating = [(c, found) for c, found in departures.items() if found]
if deviating:
    st.warning(
        "Off plan: " + "; ".join(f"cycle {c}: {', '.join(found)}" for c, found in deviating),
        icon=":material/trending_down:",
    )
st.caption(
    "Gates: the report recorded with the cycle's decision, else checked now on the stored eval "
    "results. A/B: the primary metric's relative lift with the interval the decision reads (a "
    "confidence sequence when the plan's test is sequential)."
)

latest = actuals[-1] if actuals else None
realised = realised_monthly_savings(plan, latest) if latest else None
if latest and latest.realised_reduction and realised is not None:
    econ = plan.economics
    st.caption(f"Cycle {latest.cycle}, the latest with traffic, against the plan:")
    realised_cols = st.columns(3)
    realised_cols[0].metric(
        "Realised cost reduction",
        f"{latest.realised_reduction:.1f}x",
        delta=f"{latest.realised_reduction - goal.target_cost_reduction:+.1f}x vs target",
    )
    realised_cols[1].metric(
        "Savings / month at planned volume",
        f"${realised:,.0f}",
        delta=f"${realised - econ.monthly_savings:+,.0f} vs projection",
    )
    realised_cols[2].metric(
        CONSENTED.column,
        CONSENTED.percent(latest.consented_user_rate),
        help=CONSENTED.definition,
    )
if actuals:
    left, right = st.columns(2)
    left.plotly_chart(cycle_rates_figure(actuals), width="stretch")
    right.plotly_chart(cost_per_1k_figure(actuals), width="stretch")
left, right = st.columns(2)
left.plotly_chart(dataset_sizes_figure(records), width="stretch")
right.plotly_chart(lift_by_cycle_figure(records), width="stretch")

# -- coverage gaps ------------------------------------------------------------------------------
st.markdown("#### Coverage gaps")
coverage = guarded(lambda: cached_read(coverage_gaps, plan_id, plan))
if coverage is None:
    pass
elif coverage.version_id is None:
    st.info(
        "No dataset version yet: once a cycle has run, this lists the grid cells its dataset "
        "leaves empty or thin, and the parts of the grid production traffic asks for more of.",
        icon=":material/info:",
    )
elif not coverage.gaps:
    st.success(
        f"Dataset `{coverage.version_id}` covers all {coverage.cells} grid cells, none thin, "
        "and no part of the grid is under-represented against production traffic.",
        icon=":material/check_circle:",
    )
else:
    show_table(
        pd.DataFrame(
            [
                {
                    "where": ", ".join(f"{k} = {v}" for k, v in gap.where.items()),
                    "gap": gap.kind,
                    "dataset rows": gap.dataset_rows,
                    "dataset share": percent(gap.dataset_share, 1),
                    "traffic share": percent(gap.traffic_share, 1),
                    "why": gap.reason,
                }
                for gap in coverage.gaps
            ]
        )
    )
    st.caption(
        f"Newest dataset `{coverage.version_id}` (cycle {coverage.cycle}) over the plan's "
        f"{coverage.cells} grid cells"
        + (
            f"; traffic labelled by {', '.join(coverage.traffic_axes)}."
            if coverage.traffic_axes
            else "; production traffic carries no grid labels."
        )
        + " The Synthetic data page suggests next round's counts per cell to close them."
    )

# -- one cycle ----------------------------------------------------------------------------------
st.markdown("#### One cycle")
by_cycle = {r.cycle: r for r in records}
started = [r.cycle for r in records if r.status != "planned"]
picked = st.selectbox(
    "Cycle",
    list(by_cycle),
    index=list(by_cycle).index(started[-1]),
    format_func=lambda n: f"Cycle {n} · {by_cycle[n].status}",
    key="overview_cycle",
)
record = by_cycle[picked]
if record.status == "planned":
    st.info(
        f"Cycle {record.cycle} has not started: nothing is logged, run or evaluated for it yet "
        f"(its window is {record.start:%d %b} – {record.end:%d %b %Y}).",
        icon=":material/schedule:",
    )
    st.stop()

a = record.actuals
# Three tiles a row: a rate's label carries its base ("of active users") and five to a row
# cut it off at 1366 px.
tiles = [*st.columns(3), *st.columns(3)]
tiles[0].metric("Interactions", f"{a.interactions:,}" if a else "—")
tiles[1].metric(
    ACCEPTED.column, ACCEPTED.percent(a.acceptance_rate if a else None), help=ACCEPTED.definition
)
tiles[2].metric(
    RATED_UP.column, RATED_UP.percent(a.thumbs_up_rate if a else None), help=RATED_UP.definition
)
tiles[3].metric(
    CONSENTED.column,
    CONSENTED.percent(a.consented_user_rate if a else None),
    help=f"{CONSENTED.definition} {ELIGIBLE.sentence(a.consent_rate if a else None)}.",
)
tiles[4].metric("PII rows redacted", f"{a.pii_rows:,}" if a else "—")

funnel_col, detail_col = st.columns(2)
with funnel_col:
    if record.funnel:
        st.plotly_chart(
            funnel_figure(
                [s.to_dict() for s in record.funnel], title=f"Cycle {record.cycle} funnel"
            ),
            width="stretch",
        )
    else:
        st.info(
            f"Cycle {record.cycle} has not run yet: run it on the **Cycles** page or with "
            f"`python -m core cycle run --cycle {record.cycle}` to see its funnel and dataset.",
            icon=":material/info:",
        )
with detail_col:
    dataset = record.dataset
    if dataset is not None:
        st.markdown(f"**Dataset** `{dataset.version_id}`")
        parts = st.columns(3)
        parts[0].metric("Rows", f"{dataset.rows:,}")
        parts[1].metric("Production", f"{dataset.production:,}")
        parts[2].metric(
            "Synthetic",
            f"{dataset.synthetic:,}",
            help=f"{percent(dataset.synthetic_share, 1)} of rows",
        )
        st.caption(f"{dataset.train:,} train · {dataset.validation:,} validation rows.")
    ab = record.ab
    st.markdown("**A/B test**")
    if ab is not None:
        st.metric(
            f"Lift of {ab.metric}",
            lift(ab.lift),
            help=f"{ab.method}; {ab.users_control:,} control and {ab.users_treatment:,} "
            "treatment users.",
        )
        st.markdown(
            f"Interval {_interval(ab.ci)} · "
            f"decision **{ab.verdict.replace('_', ' ')}**"
            + (" · :red[sample ratio mismatch]" if ab.srm_mismatch else "")
        )
    elif record.ab_error:
        st.warning(record.ab_error, icon=":material/warning:")
    else:
        st.info(
            f"No A/B data for cycle {record.cycle} yet: interactions tagged with the cycle on "
            "the plan's arms within its A/B window.",
            icon=":material/info:",
        )

gates = record.gates
if gates is None:
    st.info(
        f"Cycle {record.cycle} has no candidate or eval results yet, so no gate was checked: "
        "see the **Evals & gates** page.",
        icon=":material/info:",
    )
else:
    source = (
        f"recorded with the decision **{gates.decision}**"
        if gates.decision
        else "checked now on the stored results; no decision recorded yet"
    )
    st.caption(
        f"Gates of candidate **{gates.candidate or '—'}**: "
        f"{gates.verdict.replace('_', ' ')}, {source}."
    )
    st.plotly_chart(gate_thresholds_figure(gates.gates), width="stretch")
