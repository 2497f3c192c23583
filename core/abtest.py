"""A/B design and the analysis of a cycle's test from stored interactions.

The unit of randomisation is the user. Everything is aggregated in DuckDB to per-user sums and
then to per-arm sums (n, Σy, Σy², Σm, Σm², Σym): no raw interaction reaches Python. A rate
per interaction (acceptance, thumbs-up) is a *ratio metric* Σy/Σm over users, whose variance
comes from the delta method (``stats.ratio_metric_arm``), because interactions of one user are
not independent.

    design            ABDesignResult, design_ab_test, plan_design (the lint's own functions)
    metrics           METRICS, MetricDef, resolve_metric
    analysis          analyse_cycle → ABAnalysis (arms, SRM, primary, CUPED, secondaries,
                      guardrails, lift over time, decision, the system message the
                      student's arm logged)

Statistics errors (``ValueError`` from ``core.stats``) surface as ``AnalysisError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from core import stats
from core.errors import AnalysisError
from core.lint import ab_requirement
from core.plan import ABDesign, Plan, plan_timeline, system_message_hash
from core.settings import settings
from core.store import Store

__all__ = [
    "METRICS",
    "ABAnalysis",
    "ABDesignResult",
    "ArmSummaryRow",
    "CupedSummary",
    "GuardrailRow",
    "LiftPoint",
    "MetricDef",
    "MetricRow",
    "StudentSystemSummary",
    "ab_window",
    "analyse_cycle",
    "analyse_cycles",
    "design_ab_test",
    "guardrail_quantile",
    "plan_design",
    "resolve_metric",
]

Correction = Literal["holm", "bh"]


# -- design ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABDesignResult:
    """What a test needs: users per arm and in total, days at the traffic, the MDE in a time."""

    n_per_arm: int
    total: int
    days: int
    daily_traffic: float
    traffic_shares: tuple[float, ...]
    days_available: int | None
    fits: bool | None
    mde_in_days: float | None
    mde_days: int | None
    mde_relative: bool


def design_ab_test(
    baseline: float,
    mde: float,
    *,
    relative: bool,
    alpha: float,
    power: float,
    daily_traffic: float,
    traffic_shares: Sequence[float],
    days_available: int | None = None,
    mde_days: int | None = None,
) -> ABDesignResult:
    """Sample size, duration and the MDE reachable in ``mde_days`` (default: the days available).

    The same functions as the plan lint's AB_TOO_LONG check (``stats.sample_size_per_arm``,
    ``stats.ab_duration_days``). Raises AnalysisError on impossible inputs.
    """
    try:
        n = stats.sample_size_per_arm(baseline, mde, relative=relative, alpha=alpha, power=power)
        days = stats.ab_duration_days(n, daily_traffic, traffic_shares)
        horizon = mde_days if mde_days is not None else days_available
        reachable = None
        if horizon is not None:
            reachable = stats.mde_for_duration(
                baseline,
                horizon,
                daily_traffic,
                traffic_shares,
                relative=relative,
                alpha=alpha,
                power=power,
            )
    except ValueError as exc:
        raise AnalysisError(f"Cannot size the A/B test: {exc}.") from None
    return ABDesignResult(
        n_per_arm=n,
        total=stats.planned_total(n, traffic_shares),
        days=days,
        daily_traffic=daily_traffic,
        traffic_shares=tuple(traffic_shares),
        days_available=days_available,
        fits=None if days_available is None else days <= days_available,
        mde_in_days=reachable,
        mde_days=horizon,
        mde_relative=relative,
    )


def _shares(ab: ABDesign) -> list[float]:
    return [arm.traffic_share for arm in ab.arms]


def plan_design(plan: Plan) -> ABDesignResult:
    """The plan's A/B design sized exactly as the lint sizes it (``lint.ab_requirement``)."""
    ab = plan.ab_test
    if len(ab.arms) < 2:
        raise AnalysisError("The plan's A/B design needs two arms; add them on the Plan page.")
    try:
        n, days = ab_requirement(plan)
    except ValueError as exc:
        raise AnalysisError(f"Cannot size the plan's A/B test: {exc}.") from None
    available = min((c.ab_days for c in plan_timeline(plan)), default=None)
    result = design_ab_test(
        ab.baseline_rate,
        ab.mde,
        relative=ab.mde_relative,
        alpha=ab.alpha,
        power=ab.power,
        daily_traffic=ab.daily_traffic,
        traffic_shares=_shares(ab),
        days_available=available,
    )
    assert (result.n_per_arm, result.days) == (n, days)  # one sizing, shared with the lint
    return result


# -- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDef:
    """A metric per interaction: Σnumerator/Σdenominator over a user's interactions."""

    name: str
    label: str
    numerator: str  # SQL over one interaction row; constant text, never user input
    denominator: str
    higher_is_better: bool
    description: str
    scale: float = 1.0


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in [
        MetricDef(
            "acceptance_rate",
            "Acceptance rate",
            "CASE WHEN accepted THEN 1 ELSE 0 END",
            "CASE WHEN accepted IS NULL THEN 0 ELSE 1 END",
            True,
            "accepted answers per interaction with an acceptance signal",
        ),
        MetricDef(
            "thumbs_up_rate",
            "Thumbs-up rate",
            "CASE WHEN feedback = 'up' THEN 1 ELSE 0 END",
            "1",
            True,
            "thumbs-up ratings per interaction",
        ),
        MetricDef(
            "thumbs_down_rate",
            "Thumbs-down (complaint) rate",
            "CASE WHEN feedback = 'down' THEN 1 ELSE 0 END",
            "1",
            False,
            "thumbs-down ratings per interaction",
        ),
        MetricDef(
            "latency_ms",
            "Latency (mean ms)",
            "coalesce(latency_ms, 0)",
            "CASE WHEN latency_ms IS NULL THEN 0 ELSE 1 END",
            False,
            "mean latency per request, in ms",
        ),
        MetricDef(
            "cost_per_1k",
            "Cost per 1k requests ($)",
            "coalesce(cost_usd, 0)",
            "CASE WHEN cost_usd IS NULL THEN 0 ELSE 1 END",
            False,
            "cost of 1,000 requests, in $",
            scale=1000.0,
        ),
    ]
}

_ALIASES = {
    "acceptance": "acceptance_rate",
    "accept_rate": "acceptance_rate",
    "thumbs_up": "thumbs_up_rate",
    "positive_feedback_rate": "thumbs_up_rate",
    "thumbs_down": "thumbs_down_rate",
    "complaint_rate": "thumbs_down_rate",
    "negative_feedback_rate": "thumbs_down_rate",
    "latency": "latency_ms",
    "latency_mean_ms": "latency_ms",
    "latency_p50_ms": "latency_ms",
    "latency_p95_ms": "latency_ms",
    "latency_p99_ms": "latency_ms",
    "cost": "cost_per_1k",
    "cost_per_1k_requests": "cost_per_1k",
    "cost_per_request": "cost_per_1k",
}


def resolve_metric(name: str) -> MetricDef:
    """The metric a plan's name stands for (a ``latency_p95_ms`` guardrail is tested on the
    p95 itself: ``guardrail_quantile``; as a primary or secondary metric, on the mean).

    Raises AnalysisError for a name the analysis cannot compute from interactions.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METRICS:
        known = ", ".join([*METRICS, *_ALIASES])
        raise AnalysisError(
            f"The A/B metric '{name}' cannot be computed from interactions; use one of: {known}."
        )
    return METRICS[key]


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSummaryRow:
    """One arm at a glance: users, interactions and the descriptive metrics."""

    arm: str
    planned_share: float
    users: int
    interactions: int
    acceptance_rate: float | None
    thumbs_up_rate: float | None
    thumbs_down_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    cost_per_1k: float | None


@dataclass(frozen=True)
class MetricRow:
    """A metric's relative lift (treatment vs control), fixed-horizon, with adjusted p."""

    metric: str
    label: str
    role: Literal["primary", "secondary"]
    control: float | None
    treatment: float | None
    lift: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    adjusted_p: float | None
    significant: bool
    note: str | None = None


@dataclass(frozen=True)
class GuardrailRow:
    """A one-sided guardrail against its tolerance; ``bound`` is the one-sided limit of the lift."""

    metric: str
    tested_as: str
    tolerance: float
    harmful_direction: Literal["increase", "decrease"]
    lift: float | None
    bound: float | None
    p_value: float | None
    breached: bool
    note: str | None = None


@dataclass(frozen=True)
class CupedSummary:
    """CUPED on the primary metric's per-user count, with the pre-period before the test."""

    metric: str
    preperiod_days: int
    users_with_preperiod: int
    theta: float
    adjusted: bool
    lift: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    unadjusted_ci: tuple[float, float] | None
    variance_reduction: float | None
    note: str | None = None


@dataclass(frozen=True)
class LiftPoint:
    """The primary lift through the end of one day: estimate, fixed CI and confidence sequence."""

    day: date
    users_control: int
    users_treatment: int
    lift: float | None
    ci: tuple[float, float] | None
    cs: tuple[float, float] | None


@dataclass(frozen=True)
class StudentSystemSummary:
    """The system messages the student's arm logged, by hash (first 12 hex digits of sha256),
    most logged first, against the plan's student system message."""

    arm: str
    interactions: int
    logged: int
    hashes: tuple[tuple[str, int], ...]
    plan_hash: str | None

    @property
    def matches_plan(self) -> bool:
        """Whether every logged system message is the plan's."""
        return [h for h, _ in self.hashes] == [self.plan_hash]


@dataclass(frozen=True)
class ABAnalysis:
    """A cycle's A/B test analysed: what the page and ``ab report`` show."""

    cycle: int
    plan_id: str
    window: tuple[date, date]
    control: str
    treatment: str
    primary_metric: str
    sequential: bool
    alpha: float
    arms: tuple[ArmSummaryRow, ...]
    excluded_users: int
    srm: stats.SRMResult
    design: ABDesignResult
    primary_fixed: stats.ABResult
    primary_sequential: stats.ABResult
    metrics: tuple[MetricRow, ...]
    correction: Correction
    guardrails: tuple[GuardrailRow, ...]
    cuped: CupedSummary | None
    lift_over_time: tuple[LiftPoint, ...]
    decision: stats.ABDecision
    observed_daily_users: float | None
    warnings: tuple[str, ...] = field(default=())
    student_system: StudentSystemSummary | None = None

    @property
    def primary(self) -> stats.ABResult:
        """The result the decision reads: the confidence sequence when the plan is sequential."""
        return self.primary_sequential if self.sequential else self.primary_fixed

    def to_dict(self) -> dict[str, Any]:
        """The analysis as JSON-ready data (the keys ``ab report --json`` prints)."""
        primary = self.primary
        return {
            "cycle": self.cycle,
            "plan_id": self.plan_id,
            "window": [self.window[0].isoformat(), self.window[1].isoformat()],
            "arms": [asdict(a) for a in self.arms],
            "excluded_users": self.excluded_users,
            "srm_p": self.srm.p_value,
            "srm_status": self.srm.status,
            "primary_metric": self.primary_metric,
            "method": primary.method,
            "lift": primary.estimate,
            "ci": list(primary.ci) if primary.ci else None,
            "p_value": primary.p_value,
            "fixed_horizon": {
                "lift": self.primary_fixed.estimate,
                "ci": list(self.primary_fixed.ci) if self.primary_fixed.ci else None,
                "p_value": self.primary_fixed.p_value,
            },
            "sequential": {
                "lift": self.primary_sequential.estimate,
                "cs": list(self.primary_sequential.ci) if self.primary_sequential.ci else None,
                "p_value": self.primary_sequential.p_value,
                "n_star": self.design.total,
            },
            "metrics": [asdict(m) for m in self.metrics],
            "correction": self.correction,
            "guardrails": [asdict(g) for g in self.guardrails],
            "cuped": asdict(self.cuped) if self.cuped else None,
            "planned_n_per_arm": self.design.n_per_arm,
            "decision": self.decision.verdict,
            "reasons": list(self.decision.reasons),
            "days_remaining": self.decision.days_remaining,
            "warnings": list(self.warnings),
            "student_system": (
                {**asdict(self.student_system), "matches_plan": self.student_system.matches_plan}
                if self.student_system
                else None
            ),
        }


# -- queries -----------------------------------------------------------------------------------


def ab_window(plan: Plan, cycle: int) -> tuple[date, date]:
    """The cycle's A/B test days from the plan's timeline, first and last inclusive.

    Raises AnalysisError when the plan has no such cycle.
    """
    timeline = {c.cycle: c for c in plan_timeline(plan)}
    if cycle not in timeline:
        raise AnalysisError(
            f"The plan has no cycle {cycle}; its timeline holds cycles 1 to {len(timeline)}."
        )
    milestones = timeline[cycle]
    return milestones.ab_start, max(milestones.ab_start, milestones.ab_end)


def _utc(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def _metric_columns(prefix: str = "") -> str:
    """Per-user sums of each metric's numerator and denominator, in SQL."""
    parts = []
    for m in METRICS.values():
        parts.append(f"sum({prefix}{m.numerator}) AS {m.name}_y")
        parts.append(f"sum({prefix}{m.denominator}) AS {m.name}_m")
    return ", ".join(parts)


def _arm_sums_columns() -> str:
    """Per-arm sums over users of y, y², m, m², y·m for every metric."""
    parts = []
    for m in METRICS.values():
        y, d = f"{m.name}_y", f"{m.name}_m"
        parts += [
            f"sum({y})::DOUBLE AS {y}",
            f"sum({y} * {y})::DOUBLE AS {y}2",
            f"sum({d})::DOUBLE AS {d}",
            f"sum({d} * {d})::DOUBLE AS {d}2",
            f"sum({y} * {d})::DOUBLE AS {m.name}_ym",
        ]
    return ", ".join(parts)


# The test's users: tagged with the cycle, inside its window, on one of the plan's arms.
# A user seen on two arms breaks the randomisation and is left out (and counted).
_TEST_CTE = """
test AS (
    SELECT * FROM interactions
    WHERE cycle = $cycle AND ts >= $start AND ts < $stop AND list_contains($arms, variant)
),
exposure AS (
    SELECT user_id FROM test GROUP BY user_id HAVING min(variant) = max(variant)
),
clean AS (
    SELECT t.* FROM test t SEMI JOIN exposure e USING (user_id)
)
"""


# Several cycles' tests at once (one scan), each cycle's users apart. A user's arm is their
# only variant; a user seen on both is counted under a NULL arm, to be reported and left out.
_PER_USER_CTE = """
windows AS (
    SELECT unnest($cycles) AS cycle, unnest($starts) AS start, unnest($stops) AS stop
),
test AS (
    SELECT i.cycle, i.user_id, i.variant, i.ts, i.accepted, i.feedback, i.latency_ms, i.cost_usd
    FROM interactions i
    JOIN windows w ON i.cycle = w.cycle AND i.ts >= w.start AND i.ts < w.stop
    WHERE list_contains($arms, i.variant)
),
per_user AS (
    SELECT cycle, user_id,
        CASE WHEN min(variant) = max(variant) THEN min(variant) END AS variant,
        count(*) AS interactions, max(ts) AS last_ts, {metric_columns}
    FROM test GROUP BY cycle, user_id
)
"""


def _arm_rows(
    store: Store, windows: dict[int, tuple[datetime, datetime]], arms: list[str]
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per cycle and arm: users, interactions, the per-user metric sums and the last day with
    data; each arm's row also says how many of the cycle's users were left out for appearing
    in both arms (``excluded``)."""
    sql = f"""
    WITH {_PER_USER_CTE.format(metric_columns=_metric_columns())}
    SELECT cycle, variant, count(*) AS users, sum(interactions) AS interactions,
        CAST(timezone('UTC', max(last_ts)) AS DATE) AS last_day, {_arm_sums_columns()}
    FROM per_user GROUP BY cycle, variant
    """
    cycles = sorted(windows)
    params = {
        "cycles": cycles,
        "starts": [windows[c][0] for c in cycles],
        "stops": [windows[c][1] for c in cycles],
        "arms": arms,
    }
    out: dict[int, dict[str, dict[str, Any]]] = {}
    excluded: dict[int, int] = {}
    for row in store.fetch_dicts(sql, params):
        if row["variant"] is None:
            excluded[int(row["cycle"])] = int(row["users"])
        else:
            out.setdefault(int(row["cycle"]), {})[row["variant"]] = row
    for cycle, by_arm in out.items():
        for row in by_arm.values():
            row["excluded"] = excluded.get(cycle, 0)
    return out


def _arm_quantiles(store: Store, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sql = f"""
    WITH {_TEST_CTE}
    SELECT variant,
        quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.95) AS p95
    FROM clean GROUP BY variant
    """
    return {r["variant"]: r for r in store.fetch_dicts(sql, params)}


def _daily_rows(store: Store, params: dict[str, Any], metric: MetricDef) -> list[dict[str, Any]]:
    """Cumulative per-arm sums of one metric through the end of each day with data.

    A user's running totals change only on the days they are active, so each arm's sums are
    accumulated from what each user-day adds to them (the square of the new running total
    less the square of the old one, and so on): one pass over the user-days, where joining
    every day to every earlier user-day grows with days × users.
    """
    sql = f"""
    WITH {_TEST_CTE},
    per_user_day AS (
        SELECT variant, user_id, CAST(timezone('UTC', ts) AS DATE) AS day,
            sum({metric.numerator}) AS y, sum({metric.denominator}) AS m
        FROM clean GROUP BY ALL
    ),
    running AS (
        SELECT variant, user_id, day,
            sum(y) OVER (PARTITION BY variant, user_id ORDER BY day) AS y,
            sum(m) OVER (PARTITION BY variant, user_id ORDER BY day) AS m
        FROM per_user_day
    ),
    steps AS (
        SELECT variant, day, y, m,
            lag(day) OVER w IS NULL AS first_day,
            coalesce(lag(y) OVER w, 0) AS y0,
            coalesce(lag(m) OVER w, 0) AS m0
        FROM running
        WINDOW w AS (PARTITION BY variant, user_id ORDER BY day)
    ),
    per_day AS (
        SELECT day, variant, count(*) FILTER (WHERE first_day) AS users, sum(y - y0) AS y,
            sum(y * y - y0 * y0) AS y2, sum(m - m0) AS m, sum(m * m - m0 * m0) AS m2,
            sum(y * m - y0 * m0) AS ym
        FROM steps GROUP BY day, variant
    ),
    grid AS (
        SELECT d.day, v.variant
        FROM (SELECT DISTINCT day FROM per_user_day) d
        CROSS JOIN (SELECT DISTINCT variant FROM per_user_day) v
    ),
    cumulative AS (
        SELECT g.day, g.variant,
            sum(coalesce(p.users, 0)) OVER c AS users, sum(coalesce(p.y, 0)) OVER c AS y,
            sum(coalesce(p.y2, 0)) OVER c AS y2, sum(coalesce(p.m, 0)) OVER c AS m,
            sum(coalesce(p.m2, 0)) OVER c AS m2, sum(coalesce(p.ym, 0)) OVER c AS ym
        FROM grid g LEFT JOIN per_day p USING (day, variant)
        WINDOW c AS (PARTITION BY g.variant ORDER BY g.day)
    )
    SELECT day, variant, users::BIGINT AS users, y::DOUBLE AS y, y2::DOUBLE AS y2,
        m::DOUBLE AS m, m2::DOUBLE AS m2, ym::DOUBLE AS ym
    FROM cumulative WHERE users > 0 ORDER BY day, variant
    """
    return store.fetch_dicts(sql, params)


def _cuped_rows(
    store: Store, params: dict[str, Any], metric: MetricDef, pre_start: datetime
) -> dict[str, dict[str, Any]]:
    """Per arm: users' numerator counts in the test (y) and in the pre-period before it (x)."""
    sql = f"""
    WITH {_TEST_CTE},
    during AS (
        SELECT variant, user_id, sum({metric.numerator})::DOUBLE AS y FROM clean GROUP BY ALL
    ),
    before AS (
        SELECT user_id, sum({metric.numerator})::DOUBLE AS x, count(*) AS n
        FROM interactions
        WHERE ts >= $pre_start AND ts < $start
            AND user_id IN (SELECT user_id FROM during)
        GROUP BY user_id
    ),
    joined AS (
        SELECT d.variant, d.y, coalesce(b.x, 0) AS x, b.n IS NOT NULL AS seen
        FROM during d LEFT JOIN before b USING (user_id)
    )
    SELECT variant, count(*) AS n, sum(y) AS sy, sum(y * y) AS syy, sum(x) AS sx,
        sum(x * x) AS sxx, sum(x * y) AS sxy, count(*) FILTER (WHERE seen) AS seen
    FROM joined GROUP BY variant
    """
    return {r["variant"]: r for r in store.fetch_dicts(sql, {**params, "pre_start": pre_start})}


# -- arms --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ScaledArm:
    """An arm whose values are multiplied by a constant (the guardrail's tolerance)."""

    n: int
    mean: float
    variance: float


def _ratio_arm(row: dict[str, Any] | None, metric: MetricDef) -> stats.RatioArmStats | None:
    """The arm's ratio-metric sums, or None when the arm logged nothing for the metric."""
    if row is None:
        return None
    k, s = metric.name, metric.scale
    if not row[f"{k}_m"] or row[f"{k}_m"] <= 0:
        return None
    return stats.ratio_metric_arm(
        int(row["users"]),
        row[f"{k}_y"] * s,
        row[f"{k}_y2"] * s * s,
        row[f"{k}_m"],
        row[f"{k}_m2"],
        row[f"{k}_ym"] * s,
    )


def _rate(row: dict[str, Any] | None, metric: MetricDef) -> float | None:
    arm = _ratio_arm(row, metric)
    return None if arm is None else arm.mean


def _ci(result: stats.ABResult) -> tuple[float, float] | None:
    return None if result.ci is None else (float(result.ci[0]), float(result.ci[1]))


def _bound(result: stats.ABResult, direction: str) -> float | None:
    if result.ci is None:
        return None
    return float(result.ci[0] if direction == "increase" else result.ci[1])


# -- analysis ----------------------------------------------------------------------------------


def _two_arms(ab: ABDesign) -> tuple[str, str]:
    names = [arm.name for arm in ab.arms]
    if len(names) != 2:
        raise AnalysisError(
            f"The A/B analysis compares two arms; the plan has {len(names)}. Give the plan's "
            "A/B design one control and one treatment arm."
        )
    control = "control" if "control" in names else names[0]
    treatment = next(n for n in names if n != control)
    return control, treatment


def analyse_cycle(
    store: Store,
    plan: Plan,
    cycle: int,
    *,
    plan_id: str = "",
    correction: Correction = "holm",
    preperiod_days: int | None = None,
) -> ABAnalysis | None:
    """Analyse the cycle's A/B test from its stored interactions; None when it has none.

    Raises AnalysisError when the plan's design cannot be analysed (arms, metric names) or a
    statistic cannot be computed from the data.
    """
    found = _analyse_cycles(
        store,
        plan,
        [cycle],
        plan_id=plan_id,
        correction=correction,
        preperiod_days=settings.ab_preperiod_days if preperiod_days is None else preperiod_days,
        detail=True,
    )
    result = found.get(cycle)
    if isinstance(result, AnalysisError):
        raise result
    return result


def analyse_cycles(
    store: Store,
    plan: Plan,
    cycles: Sequence[int],
    *,
    plan_id: str = "",
    correction: Correction = "holm",
) -> dict[int, ABAnalysis | AnalysisError]:
    """The A/B tests of several cycles at a glance, from one pass over their windows: per
    cycle with data, what ``analyse_cycle`` gives (arms, SRM, primary lift with its interval,
    secondaries, guardrails, decision: the same numbers) without the details that need more
    passes: CUPED and the lift day by day are left out, and the arms' latency quantiles.

    A cycle whose data cannot be analysed maps to the AnalysisError that says why. Raises
    AnalysisError when the plan's design cannot be analysed or has no such cycle.
    """
    return _analyse_cycles(
        store, plan, cycles, plan_id=plan_id, correction=correction, preperiod_days=0, detail=False
    )


def _analyse_cycles(
    store: Store,
    plan: Plan,
    cycles: Sequence[int],
    *,
    plan_id: str,
    correction: Correction,
    preperiod_days: int,
    detail: bool,
) -> dict[int, ABAnalysis | AnalysisError]:
    ab = plan.ab_test
    control, treatment = _two_arms(ab)
    primary_def = resolve_metric(ab.primary_metric)
    guardrail_defs = [(g, resolve_metric(g.metric)) for g in ab.guardrails]
    design = plan_design(plan)
    windows = {cycle: ab_window(plan, cycle) for cycle in cycles}
    bounds = {
        c: (_utc(first), _utc(last + timedelta(days=1))) for c, (first, last) in windows.items()
    }
    by_cycle = _arm_rows(store, bounds, [control, treatment]) if windows else {}
    out: dict[int, ABAnalysis | AnalysisError] = {}
    for cycle, rows in sorted(by_cycle.items()):
        params: dict[str, Any] = {
            "cycle": cycle,
            "start": bounds[cycle][0],
            "stop": bounds[cycle][1],
            "arms": [control, treatment],
        }
        try:
            out[cycle] = _analyse(
                store,
                plan,
                cycle,
                plan_id,
                rows,
                params,
                control=control,
                treatment=treatment,
                primary_def=primary_def,
                guardrail_defs=guardrail_defs,
                design=design,
                window=windows[cycle],
                correction=correction,
                preperiod_days=preperiod_days,
                detail=detail,
            )
        except AnalysisError as exc:
            out[cycle] = exc
        except ValueError as exc:
            out[cycle] = AnalysisError(
                f"Cannot analyse cycle {cycle}'s A/B test: {exc}. Check the plan's A/B design "
                "(alpha, traffic shares) and the logged interactions."
            )
    return out


def _analyse(
    store: Store,
    plan: Plan,
    cycle: int,
    plan_id: str,
    rows: dict[str, dict[str, Any]],
    params: dict[str, Any],
    *,
    control: str,
    treatment: str,
    primary_def: MetricDef,
    guardrail_defs: list[tuple[Any, MetricDef]],
    design: ABDesignResult,
    window: tuple[date, date],
    correction: Correction,
    preperiod_days: int,
    detail: bool,
) -> ABAnalysis:
    ab = plan.ab_test
    alpha = ab.alpha
    shares = {arm.name: arm.traffic_share for arm in ab.arms}
    quantiles = _arm_quantiles(store, params) if detail else {}
    warnings: list[str] = []

    arms = tuple(
        ArmSummaryRow(
            arm=name,
            planned_share=shares[name],
            users=int(rows[name]["users"]) if name in rows else 0,
            interactions=int(rows[name]["interactions"]) if name in rows else 0,
            acceptance_rate=_rate(rows.get(name), METRICS["acceptance_rate"]),
            thumbs_up_rate=_rate(rows.get(name), METRICS["thumbs_up_rate"]),
            thumbs_down_rate=_rate(rows.get(name), METRICS["thumbs_down_rate"]),
            latency_p50_ms=_float(quantiles.get(name, {}).get("p50")),
            latency_p95_ms=_float(quantiles.get(name, {}).get("p95")),
            cost_per_1k=_rate(rows.get(name), METRICS["cost_per_1k"]),
        )
        for name in (control, treatment)
    )
    excluded = int(next(iter(rows.values()))["excluded"])
    if excluded:
        warnings.append(
            f"{excluded} user(s) appear in both arms and are left out: assignment should be "
            "sticky per user."
        )
    srm = stats.srm_test([a.users for a in arms], [a.planned_share for a in arms])

    # Primary: fixed-horizon delta-method lift and the confidence sequence at N* = plan total.
    c_arm = _ratio_arm(rows.get(control), primary_def)
    t_arm = _ratio_arm(rows.get(treatment), primary_def)
    if c_arm is None or t_arm is None:
        raise AnalysisError(
            f"The primary metric {primary_def.name} has no values in "
            f"{'the control' if c_arm is None else 'the treatment'} arm; log the fields it "
            f"needs ({primary_def.description})."
        )
    primary_fixed = stats.relative_lift(c_arm, t_arm, alpha=alpha)
    primary_seq = stats.sequential_test(
        c_arm, t_arm, alpha=alpha, n_star=design.total, effect="relative"
    )

    metrics = _metric_rows(rows, control, treatment, primary_def, primary_fixed, alpha, correction)
    checked = [
        _quantile_guardrail(
            store, params, control, treatment, g.max_relative_increase, g.metric, q, ab
        )
        if (q := guardrail_quantile(g.metric)) is not None
        else _guardrail(rows, control, treatment, g.max_relative_increase, g.metric, d, ab, design)
        for g, d in guardrail_defs
    ]
    guardrails = tuple(row for row, _ in checked)
    cuped = _cuped(store, params, primary_def, window[0], preperiod_days, alpha) if detail else None
    student_system = _student_system(store, plan, params, arms[1]) if detail else None
    if student_system is not None and not student_system.matches_plan:
        logged = ", ".join(f"{h} ×{n}" for h, n in student_system.hashes)
        warnings.append(
            f"Train/serve skew: the {treatment} arm logged system message(s) {logged} on "
            f"{student_system.logged} of {student_system.interactions} interactions, not the "
            f"plan's student system message ({student_system.plan_hash or 'none'}) that the "
            "student trains under."
        )
    lift_points = (
        _lift_over_time(store, params, primary_def, control, treatment, alpha, design)
        if detail
        else ()
    )

    # Users a day so far: the arms' users over the days from the window's start to the last
    # day with data (the lift's last point).
    last_day = max(r["last_day"] for r in rows.values())
    elapsed = (last_day - window[0]).days + 1
    observed_daily: float | None = sum(a.users for a in arms) / max(1, elapsed)
    daily_units = observed_daily or float(ab.daily_traffic)
    stat_guardrails = [check for _, check in checked if check is not None]
    mde_relative = ab.mde if ab.mde_relative else ab.mde / ab.baseline_rate
    decision = stats.ab_decision(
        primary_seq if ab.sequential else primary_fixed,
        stat_guardrails,
        srm,
        planned_n_per_arm=design.n_per_arm,
        daily_units=daily_units,
        traffic_shares=list(shares.values()),
        higher_is_better=primary_def.higher_is_better,
        min_effect=mde_relative,
    )
    return ABAnalysis(
        cycle=cycle,
        plan_id=plan_id,
        window=window,
        control=control,
        treatment=treatment,
        primary_metric=primary_def.name,
        sequential=ab.sequential,
        alpha=alpha,
        arms=arms,
        excluded_users=excluded,
        srm=srm,
        design=design,
        primary_fixed=primary_fixed,
        primary_sequential=primary_seq,
        metrics=metrics,
        correction=correction,
        guardrails=guardrails,
        cuped=cuped,
        lift_over_time=lift_points,
        decision=decision,
        observed_daily_users=observed_daily,
        warnings=tuple(warnings),
        student_system=student_system,
    )


def _student_system(
    store: Store, plan: Plan, params: dict[str, Any], arm: ArmSummaryRow
) -> StudentSystemSummary | None:
    """The system messages the student's (treatment) arm logged; None when it logged none."""
    sql = f"""
    WITH {_TEST_CTE}
    SELECT left(sha256(system), 12) AS hash, count(*) AS n FROM clean
    WHERE variant = $treatment AND coalesce(system, '') <> ''
    GROUP BY hash ORDER BY n DESC, hash
    """
    rows = store.fetch_all(sql, {**params, "treatment": arm.arm})
    if not rows:
        return None
    return StudentSystemSummary(
        arm=arm.arm,
        interactions=arm.interactions,
        logged=sum(int(n) for _, n in rows),
        hashes=tuple((str(h), int(n)) for h, n in rows),
        plan_hash=system_message_hash(plan.goal.system_message),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _metric_rows(
    rows: dict[str, dict[str, Any]],
    control: str,
    treatment: str,
    primary_def: MetricDef,
    primary_fixed: stats.ABResult,
    alpha: float,
    correction: Correction,
) -> tuple[MetricRow, ...]:
    """Every metric's fixed-horizon lift; secondaries' p-values adjusted together."""
    secondary: list[tuple[MetricDef, stats.ABResult | None, str | None]] = []
    for metric in METRICS.values():
        if metric.name == primary_def.name:
            continue
        c_arm = _ratio_arm(rows.get(control), metric)
        t_arm = _ratio_arm(rows.get(treatment), metric)
        if c_arm is None or t_arm is None:
            secondary.append((metric, None, "not logged in both arms"))
            continue
        lifted = stats.relative_lift(c_arm, t_arm, alpha=alpha)
        secondary.append((metric, lifted, lifted.reason))
    tested = [r.p_value for _, r, _ in secondary if r is not None and r.p_value is not None]
    adjust = stats.holm_adjusted if correction == "holm" else stats.bh_adjusted
    adjusted = iter(adjust(tested) if tested else ())
    out = [
        MetricRow(
            metric=primary_def.name,
            label=primary_def.label,
            role="primary",
            control=primary_fixed.mean_control,
            treatment=primary_fixed.mean_treatment,
            lift=primary_fixed.estimate,
            ci=_ci(primary_fixed),
            p_value=primary_fixed.p_value,
            adjusted_p=primary_fixed.p_value,
            significant=primary_fixed.significant,
            note=primary_fixed.reason,
        )
    ]
    for metric, result, note in secondary:
        p_adj = next(adjusted) if result is not None and result.p_value is not None else None
        out.append(
            MetricRow(
                metric=metric.name,
                label=metric.label,
                role="secondary",
                control=None if result is None else result.mean_control,
                treatment=None if result is None else result.mean_treatment,
                lift=None if result is None else result.estimate,
                ci=None if result is None else _ci(result),
                p_value=None if result is None else result.p_value,
                adjusted_p=p_adj,
                significant=p_adj is not None and p_adj < alpha,
                note=note,
            )
        )
    return tuple(out)


def _guardrail(
    rows: dict[str, dict[str, Any]],
    control: str,
    treatment: str,
    tolerance: float,
    name: str,
    metric: MetricDef,
    ab: ABDesign,
    design: ABDesignResult,
) -> tuple[GuardrailRow, stats.GuardrailResult | None]:
    """One-sided test that the metric moved the harmful way by more than its tolerance.

    Comparing the treatment with the control scaled by (1 ± tolerance) tests exactly
    "treatment/control beyond 1 ± tolerance" with the delta method; the bound is mapped back
    to a lift against the unscaled control.
    """
    direction: Literal["increase", "decrease"] = (
        "decrease" if metric.higher_is_better else "increase"
    )
    tested_as = metric.description
    c_arm = _ratio_arm(rows.get(control), metric)
    t_arm = _ratio_arm(rows.get(treatment), metric)
    if c_arm is None or t_arm is None:
        row = GuardrailRow(name, tested_as, tolerance, direction, None, None, None, False)
        return replace(row, note="not logged in both arms"), None
    factor = 1.0 + tolerance if direction == "increase" else max(1e-12, 1.0 - tolerance)
    scaled = _ScaledArm(c_arm.n, c_arm.mean * factor, c_arm.variance * factor * factor)
    check = stats.guardrail_check(
        name,
        scaled,
        t_arm,
        harmful_direction=direction,
        alpha=ab.alpha,
        sequential=ab.sequential,
        n_star=design.total,
    )
    result = check.result
    if result.estimate is None:
        row = GuardrailRow(name, tested_as, tolerance, direction, None, None, None, False)
        return replace(row, note=result.reason), None
    lift = (t_arm.mean - c_arm.mean) / abs(c_arm.mean) if c_arm.mean else None
    raw_bound = _bound(result, direction)
    bound = None if raw_bound is None else factor * (1.0 + raw_bound) - 1.0
    row = GuardrailRow(
        name, tested_as, tolerance, direction, lift, bound, result.p_value, check.breached
    )
    # The decision quotes the interval: give it on the lift against the unscaled control.
    interval: tuple[float, float] | None = None
    if bound is not None:
        interval = (bound, math.inf) if direction == "increase" else (-math.inf, bound)
    shown = replace(result, estimate=lift, ci=interval)
    return row, replace(check, result=shown)


_QUANTILE_NAMES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def guardrail_quantile(name: str) -> float | None:
    """The quantile a latency guardrail names (``latency_p95_ms`` → 0.95); None for a mean."""
    key = name.strip().lower()
    if not key.startswith("latency"):
        return None
    return next((q for part, q in _QUANTILE_NAMES.items() if part in key), None)


def _quantile_arms(
    store: Store, params: dict[str, Any], q: float, alpha: float
) -> dict[str, stats.QuantileArmStats]:
    """Per arm, the latency quantile and the two order statistics that bound it, read in
    DuckDB (the ranks come from the arm's count; no latency reaches Python)."""
    counts = store.fetch_all(
        f"WITH {_TEST_CTE} SELECT variant, count(latency_ms), quantile_cont(latency_ms, $q)"
        " FROM clean WHERE latency_ms IS NOT NULL GROUP BY variant",
        {**params, "q": q},
    )
    out: dict[str, stats.QuantileArmStats] = {}
    for variant, n, quantile in counts:
        ranks = stats.quantile_ranks(int(n), q, alpha=alpha)
        if ranks is None:
            continue
        low, high, coverage = ranks
        bounds = store.fetch_one(
            f"WITH {_TEST_CTE} SELECT list_extract(xs, $low), list_extract(xs, $high) FROM"
            " (SELECT list_sort(list(latency_ms)) AS xs FROM clean"
            "  WHERE variant = $variant AND latency_ms IS NOT NULL)",
            {**params, "low": low, "high": high, "variant": variant},
        )
        assert bounds is not None
        out[str(variant)] = stats.QuantileArmStats(
            int(n), q, float(quantile), float(bounds[0]), float(bounds[1]), coverage
        )
    return out


def _quantile_guardrail(
    store: Store,
    params: dict[str, Any],
    control: str,
    treatment: str,
    tolerance: float,
    name: str,
    q: float,
    ab: ABDesign,
) -> tuple[GuardrailRow, stats.GuardrailResult | None]:
    """A latency quantile guardrail (p95) tested on the quantile itself: one-sided, that the
    treatment's quantile exceeds the control's by more than the tolerance (Price–Bonett
    standard errors of each arm's quantile; fixed-horizon, over requests)."""
    tested_as = (
        f"p{round(q * 100)} latency per request: quantile difference (Price–Bonett), fixed-horizon"
    )
    arms = _quantile_arms(store, params, q, ab.alpha)
    if control not in arms or treatment not in arms:
        row = GuardrailRow(name, tested_as, tolerance, "increase", None, None, None, False)
        return replace(row, note="too few requests with a latency in an arm for the quantile"), None
    factor = 1.0 + tolerance
    tested = stats.quantile_difference(
        arms[control], arms[treatment], alpha=ab.alpha, alternative="greater", ratio=factor
    )
    if tested.estimate is None:
        row = GuardrailRow(name, tested_as, tolerance, "increase", None, None, None, False)
        return replace(row, note=tested.reason), None
    bound = tested.ci[0] if tested.ci else None
    check = stats.GuardrailResult(name=name, harmful_direction="increase", result=tested)
    row = GuardrailRow(
        name, tested_as, tolerance, "increase", tested.estimate, bound, tested.p_value,
        check.breached,
    )  # fmt: skip
    return row, check


def _cuped(
    store: Store,
    params: dict[str, Any],
    metric: MetricDef,
    first_day: date,
    preperiod_days: int,
    alpha: float,
) -> CupedSummary | None:
    """CUPED on the per-user count of the primary metric's numerator; None without pre-period."""
    if preperiod_days <= 0:
        return None
    rows = _cuped_rows(store, params, metric, _utc(first_day - timedelta(days=preperiod_days)))
    control, treatment = params["arms"]
    if control not in rows or treatment not in rows:
        return None
    seen = sum(int(r["seen"]) for r in rows.values())
    if seen == 0:
        return None

    def arm(r: dict[str, Any]) -> stats.CupedArmStats:
        return stats.CupedArmStats(
            int(r["n"]),
            float(r["sy"]),
            float(r["syy"]),
            float(r["sx"]),
            float(r["sxx"]),
            float(r["sxy"]),
        )

    c, t = arm(rows[control]), arm(rows[treatment])
    result = stats.cuped_test(c, t, alpha=alpha)
    plain = stats.relative_lift(
        stats.ArmStats(c.n, c.sum_y, c.sum_y_sq), stats.ArmStats(t.n, t.sum_y, t.sum_y_sq)
    )
    reduction = None
    if result.relative.se is not None and plain.se:
        reduction = 1.0 - (result.relative.se / plain.se) ** 2
    rel = result.relative
    return CupedSummary(
        metric=f"{metric.name}: {metric.description.split(' per ')[0]} per user",
        preperiod_days=preperiod_days,
        users_with_preperiod=seen,
        theta=result.theta,
        adjusted=result.adjusted,
        lift=rel.estimate,
        ci=_ci(rel),
        p_value=rel.p_value,
        unadjusted_ci=_ci(plain),
        variance_reduction=reduction,
        note=result.reason,
    )


def _lift_over_time(
    store: Store,
    params: dict[str, Any],
    metric: MetricDef,
    control: str,
    treatment: str,
    alpha: float,
    design: ABDesignResult,
) -> tuple[LiftPoint, ...]:
    """The primary lift through each day: fixed-horizon CI and the confidence sequence."""
    by_day: dict[date, dict[str, dict[str, Any]]] = {}
    for r in _daily_rows(store, params, metric):
        by_day.setdefault(r["day"], {})[r["variant"]] = r
    points: list[LiftPoint] = []
    for day in sorted(by_day):
        arms: list[stats.RatioArmStats | None] = []
        for name in (control, treatment):
            cumulative = by_day[day].get(name)
            arms.append(
                None
                if cumulative is None or not cumulative["m"]
                else stats.ratio_metric_arm(
                    int(cumulative["users"]),
                    cumulative["y"] * metric.scale,
                    cumulative["y2"] * metric.scale**2,
                    cumulative["m"],
                    cumulative["m2"],
                    cumulative["ym"] * metric.scale,
                )
            )
        c_arm, t_arm = arms
        users = [0 if a is None else a.n for a in arms]
        if c_arm is None or t_arm is None or min(users) < 2:
            points.append(LiftPoint(day, users[0], users[1], None, None, None))
            continue
        fixed = stats.relative_lift(c_arm, t_arm, alpha=alpha)
        seq = stats.sequential_test(c_arm, t_arm, alpha=alpha, n_star=design.total)
        points.append(LiftPoint(day, users[0], users[1], fixed.estimate, _ci(fixed), _ci(seq)))
    return tuple(points)
