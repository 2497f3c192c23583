"""Cycle monitoring: what each cycle actually did, next to what the plan promised.

Every figure is aggregated inside DuckDB, over the live interactions and the daily metrics that
retention keeps once raw rows expire; no raw row is loaded into Python for a chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from core.consent import eligible_interactions_sql
from core.plan import Plan, plan_timeline
from core.store import Store

__all__ = [
    "CycleActuals",
    "Deviation",
    "cycle_actuals",
    "plan_vs_actual",
    "realised_monthly_savings",
    "store_revision",
]


@dataclass(frozen=True)
class CycleActuals:
    """What one cycle's production traffic showed."""

    cycle: int
    interactions: int
    users: int
    accepted: int
    thumbs_up: int
    thumbs_down: int
    latency_p95_ms: float | None
    teacher_requests: int
    teacher_cost_usd: float
    student_requests: int
    student_cost_usd: float
    eligible: int
    pii_rows: int

    def _rate(self, part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def acceptance_rate(self) -> float | None:
        """Share of interactions whose answer the user accepted."""
        return self._rate(self.accepted, self.interactions)

    @property
    def thumbs_up_rate(self) -> float | None:
        """Share of rated interactions rated up."""
        return self._rate(self.thumbs_up, self.thumbs_up + self.thumbs_down)

    @property
    def consent_rate(self) -> float | None:
        """Share of interactions whose user's consent lets them into training."""
        return self._rate(self.eligible, self.interactions)

    @property
    def teacher_cost_per_1k(self) -> float | None:
        """Cost of 1,000 requests answered by the teacher, in $."""
        if not self.teacher_requests:
            return None
        return 1000 * self.teacher_cost_usd / self.teacher_requests

    @property
    def student_cost_per_1k(self) -> float | None:
        """Cost of 1,000 requests answered by the student, in $."""
        if not self.student_requests:
            return None
        return 1000 * self.student_cost_usd / self.student_requests

    @property
    def realised_reduction(self) -> float | None:
        """How many times cheaper the student answered than the teacher."""
        teacher, student = self.teacher_cost_per_1k, self.student_cost_per_1k
        return teacher / student if teacher and student else None


def realised_monthly_savings(plan: Plan, actual: CycleActuals) -> float | None:
    """Monthly savings at the plan's volume if the teacher's cost fell by the reduction the
    cycle realised; None when the cycle served no teacher or no student traffic."""
    reduction = actual.realised_reduction
    if not reduction:
        return None
    return plan.economics.teacher_monthly_cost * (1 - 1 / reduction)


def store_revision(store: Store) -> int:
    """A number that changes whenever the store changes: every change writes an audit entry,
    so the newest audit id serves as a cache key for the dashboard's queries."""
    row = store.fetch_one("SELECT coalesce(max(audit_id), 0) FROM audit_log")
    return int(row[0]) if row else 0


_LIVE = """
SELECT cycle,
       count(*) AS n,
       count(DISTINCT user_id) AS users,
       count(*) FILTER (WHERE accepted) AS accepted,
       count(*) FILTER (WHERE feedback = 'up') AS up,
       count(*) FILTER (WHERE feedback = 'down') AS down,
       quantile_cont(latency_ms, 0.95) AS p95,
       count(*) FILTER (WHERE model = $teacher) AS t_n,
       coalesce(sum(cost_usd) FILTER (WHERE model = $teacher), 0) AS t_cost,
       count(*) FILTER (WHERE model <> $teacher) AS s_n,
       coalesce(sum(cost_usd) FILTER (WHERE model <> $teacher), 0) AS s_cost,
       count(*) FILTER (WHERE len(pii) > 0) AS pii_rows
FROM interactions WHERE cycle IS NOT NULL GROUP BY cycle
"""

_ROLLED = """
SELECT cycle,
       sum(interactions) AS n, 0 AS users, sum(accepted) AS accepted,
       sum(thumbs_up) AS up, sum(thumbs_down) AS down, NULL AS p95,
       sum(interactions) FILTER (WHERE model = $teacher) AS t_n,
       coalesce(sum(cost_usd) FILTER (WHERE model = $teacher), 0) AS t_cost,
       sum(interactions) FILTER (WHERE model <> $teacher) AS s_n,
       coalesce(sum(cost_usd) FILTER (WHERE model <> $teacher), 0) AS s_cost,
       0 AS pii_rows
FROM interaction_daily_metrics WHERE cycle IS NOT NULL GROUP BY cycle
"""


def cycle_actuals(store: Store, plan: Plan) -> list[CycleActuals]:
    """Per cycle with any traffic: volume, rates, latency, cost by teacher and student, the
    consented share and the rows in which PII was found and redacted."""
    sql = f"""
    WITH parts AS ({_LIVE} UNION ALL {_ROLLED}),
    eligible AS (
        SELECT cycle, count(*) AS eligible FROM ({eligible_interactions_sql("training")})
        WHERE cycle IS NOT NULL GROUP BY cycle
    )
    SELECT p.cycle, sum(n), sum(users), sum(accepted), sum(up), sum(down), max(p95),
           coalesce(sum(t_n), 0), sum(t_cost), coalesce(sum(s_n), 0), sum(s_cost),
           coalesce(any_value(e.eligible), 0), sum(pii_rows)
    FROM parts p LEFT JOIN eligible e USING (cycle)
    GROUP BY p.cycle ORDER BY p.cycle
    """
    rows = store.fetch_all(sql, {"teacher": plan.goal.teacher_model})
    return [
        CycleActuals(
            cycle=int(r[0]),
            interactions=int(r[1]),
            users=int(r[2]),
            accepted=int(r[3]),
            thumbs_up=int(r[4]),
            thumbs_down=int(r[5]),
            latency_p95_ms=None if r[6] is None else float(r[6]),
            teacher_requests=int(r[7]),
            teacher_cost_usd=float(r[8]),
            student_requests=int(r[9]),
            student_cost_usd=float(r[10]),
            eligible=int(r[11]),
            pii_rows=int(r[12]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Deviation:
    """One planned figure against the actual one."""

    cycle: int
    metric: str
    planned: float | None
    actual: float | None
    status: Literal["on plan", "off plan", "no data"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return self.__dict__.copy()


def plan_vs_actual(
    plan: Plan, actuals: list[CycleActuals], *, tolerance: float = 0.2
) -> list[Deviation]:
    """Each cycle's primary metric against the plan's baseline and its realised cost reduction
    against the target; off plan when the actual falls short by more than ``tolerance``
    (relative)."""
    by_cycle = {a.cycle: a for a in actuals}
    out: list[Deviation] = []
    for milestone in plan_timeline(plan):
        actual = by_cycle.get(milestone.cycle)
        checks: list[tuple[str, float, float | None]] = [
            (
                f"{plan.ab_test.primary_metric} (baseline)",
                plan.ab_test.baseline_rate,
                actual.acceptance_rate if actual else None,
            ),
            (
                "cost reduction (x)",
                plan.goal.target_cost_reduction,
                actual.realised_reduction if actual else None,
            ),
        ]
        for metric, planned, value in checks:
            status: Literal["on plan", "off plan", "no data"] = "no data"
            if value is not None:
                status = "off plan" if value < planned * (1 - tolerance) else "on plan"
            out.append(Deviation(milestone.cycle, metric, planned, value, status))
    return out
