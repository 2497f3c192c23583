"""A/B test: size the test, watch it safely while it runs, and read the recommendation."""

from __future__ import annotations

import math

import streamlit as st

from core.abtest import ABAnalysis, ab_window, analyse_cycle, design_ab_test, plan_design
from core.charts import ab_lift_figure
from core.errors import FlywheelError
from core.formatting import MISSING, lift, money, percent, rounded, significant
from core.plan import Plan, plan_timeline
from core.stats import format_p_value
from pages._common import cached_read, guarded, page_header, plan_or_stop, table

page_header("A/B test")

VERDICTS = {
    "ship": ("Ship the treatment", st.success, ":material/rocket_launch:"),
    "keep_running": ("Keep running", st.warning, ":material/hourglass_top:"),
    "stop_no_effect": ("Stop: no worthwhile effect", st.info, ":material/block:"),
    "roll_back": ("Roll back the treatment", st.error, ":material/undo:"),
    "invalid_srm": ("Do not trust this test", st.error, ":material/report:"),
}


def _interval(ci: tuple[float, float] | None) -> str:
    return MISSING if ci is None else f"{lift(ci[0])} to {lift(ci[1])}"


def design_calculator(plan: Plan) -> None:
    """Sample size, duration and reachable MDE, with the plan's design as the defaults."""
    ab = plan.ab_test
    shares = [arm.traffic_share for arm in ab.arms] or [0.5, 0.5]
    planned = guarded(lambda: plan_design(plan))
    if planned is not None:
        fits = "fits" if planned.fits else "does **not** fit"
        st.markdown(
            f"The plan needs **{planned.n_per_arm:,} users per arm** ({planned.total:,} in "
            f"total), **{planned.days} days** at {ab.daily_traffic:,} users a day; that "
            f"{fits} the {planned.days_available} days a cycle leaves for the test. "
            "The plan lint sizes the test with these same functions."
        )
    st.markdown("##### Try other numbers")
    cols = st.columns(3)
    baseline = cols[0].number_input(
        "Baseline rate", 0.001, 0.999, float(ab.baseline_rate), 0.01, format="%.3f"
    )
    relative = cols[1].toggle("MDE relative to the baseline", value=ab.mde_relative)
    mde = cols[2].number_input("Minimum detectable effect", 0.0001, 10.0, float(ab.mde), 0.01)
    cols = st.columns(3)
    alpha = cols[0].number_input("Alpha (two-sided)", 0.001, 0.49, float(ab.alpha), 0.01)
    power = cols[1].number_input("Power", 0.51, 0.99, float(ab.power), 0.05)
    traffic = cols[2].number_input(
        "Users a day (all arms)", 1, 10_000_000, int(ab.daily_traffic), 100
    )
    days = st.slider("MDE reachable in this many days", 1, 90, planned.days if planned else 14)
    result = guarded(
        lambda: design_ab_test(
            baseline,
            mde,
            relative=relative,
            alpha=alpha,
            power=power,
            daily_traffic=traffic,
            traffic_shares=shares,
            mde_days=days,
        )
    )
    if result is None:
        return
    out = st.columns(3)
    out[0].metric("Users per arm", f"{result.n_per_arm:,}")
    out[1].metric("Days at this traffic", f"{result.days}")
    reach = result.mde_in_days
    label = f"MDE in {days} days" + (" (relative)" if relative else " (absolute)")
    if reach is None or not math.isfinite(reach):
        out[2].metric(label, "none reachable")
    else:
        out[2].metric(label, percent(reach, 1) if relative else f"{reach:.4f}")


def results(analysis: ABAnalysis) -> None:
    """The decision, the SRM banner, the arms, the lift over time, guardrails and metrics."""
    if analysis.srm.mismatch:
        observed = ", ".join(f"{c:,}" for c in analysis.srm.counts)
        expected = ", ".join(f"{e:,.0f}" for e in analysis.srm.expected)
        st.error(
            f"**Sample ratio mismatch** (p = {format_p_value(analysis.srm.p_value)} < "
            f"{analysis.srm.threshold:g}): the arms hold {observed} users where the plan "
            f"expects {expected}. "
            "Assignment or logging is broken, so no metric of this test can be trusted.",
            icon=":material/report:",
        )
    title, box, icon = VERDICTS[analysis.decision.verdict]
    days = analysis.decision.days_remaining
    if analysis.decision.verdict == "keep_running" and days is not None:
        title += f" — about {days} more day(s) to the planned sample"
    box(
        f"**{title}**\n\n" + "\n".join(f"- {r}" for r in analysis.decision.reasons),
        icon=icon,
    )
    for warning in analysis.warnings:
        st.warning(warning, icon=":material/warning:")

    st.markdown("#### Arms")
    table(
        [
            {
                "arm": a.arm,
                "planned share": percent(a.planned_share, 1),
                "users": a.users,
                "interactions": a.interactions,
                "acceptance": percent(a.acceptance_rate, 1),
                "thumbs-up": percent(a.thumbs_up_rate, 1),
                "thumbs-down": percent(a.thumbs_down_rate, 1),
                # one column for both quantiles: ten columns would run past a laptop's width
                "latency p50 / p95 (ms)": f"{rounded(a.latency_p50_ms)} / "
                f"{rounded(a.latency_p95_ms)}",
                "cost / 1k requests": money(a.cost_per_1k, 3),
            }
            for a in analysis.arms
        ],
    )
    served = analysis.student_system
    if served is not None:
        st.caption(
            f"System message the {served.arm} arm logged (sha256, first 12 digits): "
            + ", ".join(f"`{h}` on {n:,}" for h, n in served.hashes)
            + f" of {served.interactions:,} interactions; the plan's student system message: "
            + (f"`{served.plan_hash}`" if served.plan_hash else "none")
            + (" ✓" if served.matches_plan else " — not the one the student trains under.")
        )
    srm = analysis.srm
    st.caption(
        f"Sample ratio check: {srm.status.replace('_', ' ')}"
        + (
            f", χ² = {srm.statistic:.2f}, p = {format_p_value(srm.p_value)}"
            if srm.p_value is not None
            else ""
        )
        + ". The unit of randomisation is the user; every rate is per interaction, so it is a "
        "ratio metric whose variance comes from the delta method over users."
    )

    if analysis.srm.mismatch:
        # A broken split: the lift and every "significant" would mislead, so they wait
        # behind the warning, for whoever needs to debug the assignment.
        with st.expander(
            "Lift, guardrails and metrics of this test (not trustworthy: the split is broken)",
            icon=":material/report:",
        ):
            st.caption(
                "Shown for debugging the assignment only: with a sample ratio mismatch, no "
                "difference between the arms can be attributed to the treatment."
            )
            effects(analysis)
    else:
        effects(analysis)


def effects(analysis: ABAnalysis) -> None:
    """The primary lift over time, CUPED, guardrails and every metric's lift."""
    st.markdown(f"#### Primary metric: {analysis.primary_metric}")
    fixed, seq = analysis.primary_fixed, analysis.primary_sequential
    cols = st.columns(3)
    cols[0].metric("Relative lift", lift(fixed.estimate))
    cols[1].metric(
        "Fixed-horizon CI", _interval(fixed.ci), help="Valid only read once, at the planned sample."
    )
    cols[2].metric(
        "Confidence sequence",
        _interval(seq.ci),
        help=f"Valid at every look (N* = {analysis.design.total:,}, the planned total sample).",
    )
    st.caption(
        f"Fixed-horizon p = {format_p_value(fixed.p_value)}; always-valid p = "
        f"{format_p_value(seq.p_value)}. The decision reads the "
        f"{'confidence sequence' if analysis.sequential else 'fixed-horizon test'}, "
        f"as the plan's design says. Planned sample: {analysis.design.n_per_arm:,} users per arm."
        + (f" Not computable: {fixed.reason}." if fixed.reason else "")
    )
    st.plotly_chart(
        ab_lift_figure(
            analysis.lift_over_time,
            metric=analysis.primary_metric,
            planned_total=analysis.design.total,
        ),
        width="stretch",
    )
    if analysis.cuped is not None:
        c = analysis.cuped
        reduction = percent(c.variance_reduction)
        st.markdown(
            f"**CUPED** on {c.metric}, with the {c.preperiod_days} days before the test as "
            f"pre-period ({c.users_with_preperiod:,} users active then): lift {lift(c.lift)}, "
            f"CI {_interval(c.ci)} (unadjusted {_interval(c.unadjusted_ci)}), variance "
            f"reduced by {reduction}, θ = {c.theta:.3f}." + (f" {c.note}." if c.note else "")
        )

    st.markdown("#### Guardrails")
    if not analysis.guardrails:
        st.info("The plan names no guardrails; add them to its A/B design.", icon=":material/info:")
    else:
        table(
            [
                {
                    "guardrail": g.metric,
                    "status": "BREACHED" if g.breached else ("not tested" if g.note else "ok"),
                    "tested as": g.tested_as,
                    "tolerance": lift(g.tolerance),
                    "lift": lift(g.lift),
                    "one-sided bound": lift(g.bound),
                    "p (vs tolerance)": format_p_value(g.p_value),
                    "note": g.note or "",
                }
                for g in analysis.guardrails
            ],
        )
        st.caption(
            "One-sided: a guardrail is breached when the bound shows it moved the harmful way by "
            "more than its tolerance. Guardrails stay outside the multiplicity correction."
        )

    st.markdown("#### All metrics")
    table(
        [
            {
                "metric": m.label,
                "role": m.role,
                "control": significant(m.control, missing=MISSING),
                "treatment": significant(m.treatment, missing=MISSING),
                "lift": lift(m.lift),
                "95% CI": _interval(m.ci),
                "p": format_p_value(m.p_value),
                f"p ({analysis.correction})": format_p_value(m.adjusted_p),
                "significant": m.significant,
                "note": m.note or "",
            }
            for m in analysis.metrics
        ],
    )


plan_id, plan, _ = plan_or_stop(
    "No plan yet. Open **Plan** to write one with an A/B design, or run "
    "`python -m core demo` to load the demo workspace."
)

results_tab, design_tab = st.tabs(["Results", "Design calculator"])
with design_tab:
    design_calculator(plan)

with results_tab:
    cycles = [c.cycle for c in plan_timeline(plan)]
    if not cycles:
        st.info("The plan's horizon holds no full cycle; adjust the cadence on the Plan page.")
        st.stop()
    cols = st.columns([1, 1, 2])
    cycle = cols[0].selectbox("Cycle", cycles, format_func=lambda n: f"Cycle {n}", key="ab_cycle")
    correction = cols[1].radio(
        "Secondary metrics corrected by",
        ["holm", "bh"],
        format_func={"holm": "Holm", "bh": "Benjamini–Hochberg"}.__getitem__,
        horizontal=True,
    )
    window = guarded(lambda: ab_window(plan, cycle))
    if window is not None:
        cols[2].caption(f"Test window: {window[0]:%d %b %Y} to {window[1]:%d %b %Y}")
    try:
        analysis = cached_read(analyse_cycle, plan, cycle, plan_id=plan_id, correction=correction)
    except FlywheelError as exc:
        st.error(str(exc), icon=":material/error:")
        st.stop()
    if analysis is None:
        if window is not None:
            st.info(
                f"Cycle {cycle} has no A/B data yet: no interactions tagged with this cycle on "
                f"the plan's arms ({', '.join(a.name for a in plan.ab_test.arms)}) between "
                f"{window[0]:%d %b} and {window[1]:%d %b}. Load them on the **Data** page or "
                f"with `python -m core data ingest FILE --cycle {cycle}`.",
                icon=":material/info:",
            )
        st.stop()
    results(analysis)
