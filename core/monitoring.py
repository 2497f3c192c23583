"""Cycle monitoring: what each cycle actually did, next to what the plan promised.

Every figure is aggregated inside DuckDB, over the live interactions and the daily metrics that
retention keeps once raw rows expire; no raw row is loaded into Python for a chart.

    cycle_actuals       production traffic per cycle: volume, rates, cost, consent, PII
    cycle_monitoring    per planned cycle, everything the Overview shows: the traffic, the
                        funnel of its newest run, its dataset's size and composition, the gates
                        against their thresholds (the recorded decision's report, else a look
                        at the current results) and the A/B lift with its interval
    plan_vs_actual      the plan's figures against the actual ones
    coverage_gaps       where the newest dataset version is thin on the generation grid, or
                        thinner than production traffic asks for
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from core.consent import consented_since_sql
from core.errors import AnalysisError, GateError
from core.escaping import sql_identifier
from core.plan import Plan, grid_cells, plan_timeline
from core.store import Store
from core.traffic import interaction_columns, traffic_by_axes

__all__ = [
    "Coverage",
    "CoverageGap",
    "CycleActuals",
    "CycleRecord",
    "DatasetFigures",
    "Deviation",
    "FunnelStage",
    "GateFigure",
    "GateFigures",
    "LiftFigures",
    "coverage_gaps",
    "cycle_actuals",
    "cycle_monitoring",
    "cycle_status",
    "gate_figure",
    "off_plan",
    "plan_vs_actual",
    "realised_monthly_savings",
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
    consented_users: int = 0
    """Users active in the cycle whose training consent is in force (core.metrics)."""

    def _rate(self, part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def acceptance_rate(self) -> float | None:
        """Share of interactions whose answer the user accepted: ``accepted_share`` in
        core.metrics."""
        return self._rate(self.accepted, self.interactions)

    @property
    def thumbs_up_rate(self) -> float | None:
        """Share of rated interactions rated up: ``rated_up_share`` in core.metrics."""
        return self._rate(self.thumbs_up, self.thumbs_up + self.thumbs_down)

    @property
    def consent_rate(self) -> float | None:
        """Share of interactions whose user's consent lets them into training:
        ``eligible_share`` in core.metrics."""
        return self._rate(self.eligible, self.interactions)

    @property
    def consented_user_rate(self) -> float | None:
        """Share of the cycle's active users whose training consent is in force:
        ``consented_users`` in core.metrics (None when only rolled-up days remain)."""
        return self._rate(self.consented_users, self.users)

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


_LIVE = f"""
SELECT i.cycle,
       count(*) AS n,
       count(DISTINCT i.user_id) AS users,
       count(*) FILTER (WHERE i.accepted) AS accepted,
       count(*) FILTER (WHERE i.feedback = 'up') AS up,
       count(*) FILTER (WHERE i.feedback = 'down') AS down,
       quantile_cont(i.latency_ms, 0.95) AS p95,
       count(*) FILTER (WHERE i.model = $teacher) AS t_n,
       coalesce(sum(i.cost_usd) FILTER (WHERE i.model = $teacher), 0) AS t_cost,
       count(*) FILTER (WHERE i.model <> $teacher) AS s_n,
       coalesce(sum(i.cost_usd) FILTER (WHERE i.model <> $teacher), 0) AS s_cost,
       count(*) FILTER (WHERE len(i.pii) > 0) AS pii_rows,
       count(*) FILTER (WHERE i.ts >= c.since) AS eligible,
       count(DISTINCT i.user_id) FILTER (WHERE c.since IS NOT NULL) AS consented_users
FROM interactions i LEFT JOIN ({consented_since_sql()}) c USING (user_id)
WHERE i.cycle IS NOT NULL GROUP BY i.cycle
"""

_ROLLED = """
SELECT cycle,
       sum(interactions) AS n, 0 AS users, sum(accepted) AS accepted,
       sum(thumbs_up) AS up, sum(thumbs_down) AS down, NULL AS p95,
       sum(interactions) FILTER (WHERE model = $teacher) AS t_n,
       coalesce(sum(cost_usd) FILTER (WHERE model = $teacher), 0) AS t_cost,
       sum(interactions) FILTER (WHERE model <> $teacher) AS s_n,
       coalesce(sum(cost_usd) FILTER (WHERE model <> $teacher), 0) AS s_cost,
       0 AS pii_rows, 0 AS eligible, 0 AS consented_users
FROM interaction_daily_metrics WHERE cycle IS NOT NULL GROUP BY cycle
"""


def cycle_actuals(store: Store, plan: Plan) -> list[CycleActuals]:
    """Per cycle with any traffic: volume, rates, latency, cost by teacher and student, the
    consented share and the rows in which PII was found and redacted."""
    sql = f"""
    WITH parts AS ({_LIVE} UNION ALL {_ROLLED})
    SELECT cycle, sum(n), sum(users), sum(accepted), sum(up), sum(down), max(p95),
           coalesce(sum(t_n), 0), sum(t_cost), coalesce(sum(s_n), 0), sum(s_cost),
           sum(eligible), sum(pii_rows), sum(consented_users)
    FROM parts GROUP BY cycle ORDER BY cycle
    """
    rows = store.fetch_all(sql, {"teacher": plan.goal.teacher_model, "scope": "training"})
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
            consented_users=int(r[13]),
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


# -- per cycle: funnel, dataset, gates, A/B ----------------------------------------------------


@dataclass(frozen=True)
class FunnelStage:
    """One stage of a cycle run: rows in and out, rows removed and added."""

    name: str
    rows_in: int
    rows_out: int
    removed: int
    added: int

    def to_dict(self) -> dict[str, Any]:
        """The mapping core.charts.funnel_figure takes."""
        return self.__dict__.copy()


@dataclass(frozen=True)
class DatasetFigures:
    """The dataset version a cycle's newest run built, as it holds now (after any erasure)."""

    version_id: str
    rows: int
    production: int
    synthetic: int
    train: int
    validation: int
    by_origin: tuple[tuple[str, int, int], ...] = ()
    """(source, cycle that added them, rows): what the version carries from each cycle."""

    @property
    def synthetic_share(self) -> float | None:
        """Share of the version's rows that the teacher generated."""
        return self.synthetic / self.rows if self.rows else None


@dataclass(frozen=True)
class GateFigure:
    """One gate on a cycle's candidate: its value against its threshold, and the verdict."""

    name: str
    comparator: str
    metric: str
    blocking: bool
    verdict: str  # pass | fail | insufficient_data
    value: float | None
    threshold: float | None
    interval: tuple[float, float] | None = None
    explanation: str = ""


@dataclass(frozen=True)
class GateFigures:
    """A cycle's gates: the report a decision recorded, else a look at the current results."""

    verdict: str  # pass | fail | insufficient_data
    candidate: str | None
    decision: str | None  # approved | overridden | rejected; None: not decided yet
    gates: tuple[GateFigure, ...]

    @property
    def failed(self) -> list[str]:
        """Names of the gates that failed (blocking or not)."""
        return [g.name for g in self.gates if g.verdict == "fail"]


@dataclass(frozen=True)
class LiftFigures:
    """A cycle's A/B test at a glance: the primary metric's relative lift with the interval the
    decision reads (the confidence sequence when the plan is sequential), and the decision."""

    metric: str
    method: str
    higher_is_better: bool
    lift: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    users_control: int
    users_treatment: int
    verdict: str  # ship | keep_running | stop_no_effect | roll_back | invalid_srm
    srm_mismatch: bool
    note: str | None = None

    @property
    def harmful(self) -> bool:
        """The whole interval lies on the wrong side of zero (below it for a metric where
        higher is better)."""
        if self.ci is None:
            return False
        return self.ci[1] < 0 if self.higher_is_better else self.ci[0] > 0


CycleStatus = Literal[
    "planned", "traffic logged", "dataset built", "evaluated", "approved", "shipped", "rejected"
]


def cycle_status(
    *,
    decision: str | None,
    ab_verdict: str | None,
    evaluated: bool,
    dataset_built: bool,
    traffic: bool,
) -> CycleStatus:
    """How far a cycle got, from what happened: rejected (by a recorded decision or an A/B
    roll-back), shipped (approved or overridden, and the A/B test says ship), approved,
    evaluated (eval results are stored for its candidate: a registered candidate, a failed
    run or a gate report on no results is not an evaluation), dataset built, traffic logged,
    or only planned."""
    if decision == "rejected" or ab_verdict == "roll_back":
        return "rejected"
    if decision in ("approved", "overridden"):
        return "shipped" if ab_verdict == "ship" else "approved"
    if evaluated:
        return "evaluated"
    if dataset_built:
        return "dataset built"
    if traffic:
        return "traffic logged"
    return "planned"


@dataclass(frozen=True)
class CycleRecord:
    """Everything the Overview shows for one planned cycle; parts are None until they exist."""

    cycle: int
    start: date
    end: date
    actuals: CycleActuals | None = None
    run_id: str | None = None
    funnel: tuple[FunnelStage, ...] = ()
    dataset: DatasetFigures | None = None
    gates: GateFigures | None = None
    ab: LiftFigures | None = None
    ab_error: str | None = None
    evaluated: bool = False
    """Whether eval results are stored for the cycle's candidate (a finished run with scores)."""

    @property
    def status(self) -> CycleStatus:
        """How far the cycle got (``cycle_status``)."""
        return cycle_status(
            decision=self.gates.decision if self.gates else None,
            ab_verdict=self.ab.verdict if self.ab else None,
            evaluated=self.evaluated,
            dataset_built=self.run_id is not None,
            traffic=self.actuals is not None,
        )

    @property
    def deviations(self) -> list[str]:
        """What went against the plan in this cycle, in words: failed gates, a decision to
        ship against the gates, an A/B test that harms the primary metric, says roll back,
        or cannot be trusted."""
        found: list[str] = []
        if self.gates is not None:
            for gate in self.gates.gates:
                if gate.verdict == "fail":
                    kind = "gate" if gate.blocking else "non-blocking gate"
                    found.append(f"{kind} '{gate.name}' failed")
            if self.gates.decision == "overridden":
                found.append("shipped against the gates (override)")
            if self.gates.decision == "rejected":
                found.append("candidate rejected")
        if self.ab is not None:
            if self.ab.srm_mismatch:
                found.append("A/B sample ratio mismatch")
            if self.ab.harmful:
                found.append("A/B lift interval below zero")
            if self.ab.verdict == "roll_back":
                found.append("A/B says roll back")
        return found


def off_plan(
    plan: Plan, records: Sequence[CycleRecord], *, tolerance: float = 0.2
) -> dict[int, list[str]]:
    """Each cycle's departures from the plan, in words: the plan's checks that fell short by
    more than ``tolerance`` (``plan_vs_actual``), then what went wrong in the cycle
    (``CycleRecord.deviations``). One rule for the Overview, the CLI and the documents."""
    actuals = [r.actuals for r in records if r.actuals is not None]
    short: dict[int, list[str]] = {}
    for d in plan_vs_actual(plan, actuals, tolerance=tolerance):
        if d.status == "off plan" and d.actual is not None and d.planned is not None:
            short.setdefault(d.cycle, []).append(
                f"{d.metric} {d.actual:.2f} vs {d.planned:.2f} planned"
            )
    return {r.cycle: short.get(r.cycle, []) + r.deviations for r in records}


def _funnels(store: Store, plan_id: str) -> dict[int, tuple[str, list[FunnelStage]]]:
    rows = store.fetch_all(
        """
        WITH newest AS (
            SELECT cycle, arg_max(run_id, started_at) AS run_id FROM cycle_runs
            WHERE plan_id = ? GROUP BY cycle
        )
        SELECT n.cycle, n.run_id, s.name, s.rows_in, s.rows_out, s.removed, s.added
        FROM newest n JOIN cycle_stages s USING (run_id) ORDER BY n.cycle, s.position
        """,
        [plan_id],
    )
    out: dict[int, tuple[str, list[FunnelStage]]] = {}
    for cycle, run_id, name, rows_in, rows_out, removed, added in rows:
        stage = FunnelStage(str(name), int(rows_in), int(rows_out), int(removed), int(added))
        out.setdefault(int(cycle), (str(run_id), []))[1].append(stage)
    return out


def cycle_datasets(store: Store, plan_id: str) -> dict[int, DatasetFigures]:
    """The dataset version of each cycle's newest run, as it holds now, with what it carries
    from each cycle (``DatasetFigures.by_origin``)."""
    return _datasets(store, plan_id)


def _datasets(store: Store, plan_id: str) -> dict[int, DatasetFigures]:
    rows = store.fetch_all(
        """
        WITH newest AS (
            SELECT cycle, arg_max(dataset_version, started_at) AS version_id FROM cycle_runs
            WHERE plan_id = ? GROUP BY cycle
        )
        SELECT n.cycle, n.version_id, count(r.row_key),
            count(*) FILTER (WHERE r.source = 'production'),
            count(*) FILTER (WHERE r.source = 'synthetic'),
            count(*) FILTER (WHERE r.split = 'train'),
            count(*) FILTER (WHERE r.split = 'validation')
        FROM newest n LEFT JOIN dataset_rows r USING (version_id)
        GROUP BY n.cycle, n.version_id
        """,
        [plan_id],
    )
    origins: dict[str, list[tuple[str, int, int]]] = {}
    for version, source, origin, count in store.fetch_all(
        """
        WITH newest AS (
            SELECT cycle, arg_max(dataset_version, started_at) AS version_id FROM cycle_runs
            WHERE plan_id = ? GROUP BY cycle
        )
        SELECT r.version_id, r.source, r.origin_cycle, count(*)
        FROM dataset_rows r SEMI JOIN newest n USING (version_id)
        GROUP BY ALL ORDER BY r.version_id, r.source, r.origin_cycle
        """,
        [plan_id],
    ):
        origins.setdefault(str(version), []).append((str(source), int(origin), int(count)))
    return {
        int(c): DatasetFigures(
            str(v), int(n), int(p), int(s), int(t), int(val), tuple(origins.get(str(v), ()))
        )
        for c, v, n, p, s, t, val in rows
    }


def gate_figure(gate: Mapping[str, Any]) -> GateFigure:
    """One gate of a report (``GateResult.to_dict()``, live or as stored with a decision) as
    the charts draw it: value, interval and threshold, and the verdict in a sentence."""
    from core.gates import explain_gate

    interval = gate.get("interval")
    return GateFigure(
        name=str(gate["name"]),
        comparator=str(gate["comparator"]),
        metric=str(gate["metric"]),
        blocking=bool(gate["blocking"]),
        verdict=str(gate["verdict"]),
        value=None if gate["value"] is None else float(gate["value"]),
        threshold=None if gate["threshold"] is None else float(gate["threshold"]),
        interval=None if interval is None else (float(interval[0]), float(interval[1])),
        explanation=explain_gate(gate),
    )


def _evaluated(store: Store, plan_id: str) -> set[int]:
    """The cycles whose candidate has stored eval results: a finished candidate run of the
    cycle (of its registered model, when one is registered) with at least one score."""
    rows = store.fetch_all(
        """
        SELECT DISTINCT r.cycle FROM eval_runs r
        LEFT JOIN cycle_candidates c ON c.plan_id = $plan AND c.cycle = r.cycle
        WHERE r.role = 'candidate' AND r.status = 'done' AND r.cycle IS NOT NULL
            AND (r.plan_id = $plan OR r.plan_id IS NULL)
            AND (c.model IS NULL OR c.model = r.model)
            AND EXISTS (
                SELECT 1 FROM eval_scores s WHERE s.run_id = r.run_id AND s.score IS NOT NULL
            )
        """,
        {"plan": plan_id},
    )
    return {int(r[0]) for r in rows}


def _gates(
    store: Store, plan_id: str, cycles: list[int], evaluated: set[int]
) -> dict[int, GateFigures]:
    """The newest decision's report per cycle; for an undecided cycle whose candidate has
    eval results, the gates checked now (without freezing anything)."""
    from core.gates import check_gates  # the statistics stack, only when there is a plan

    out: dict[int, GateFigures] = {}
    decided = store.fetch_all(
        "SELECT cycle, arg_max(decision, decided_at), arg_max(report, decided_at)"
        " FROM gate_decisions WHERE plan_id = ? GROUP BY cycle",
        [plan_id],
    )
    for cycle, decision, report in decided:
        body = json.loads(report)
        out[int(cycle)] = GateFigures(
            verdict=str(body["verdict"]),
            candidate=body.get("candidate"),
            decision=str(decision),
            gates=tuple(gate_figure(g) for g in body["gates"]),
        )
    for cycle in sorted(evaluated):
        if cycle in out or cycle not in cycles:
            continue
        try:
            report = check_gates(store, plan_id, int(cycle), freeze=False, verify_weights=False)
        except GateError:
            return out  # the plan has no gates: nothing to look at for any cycle
        out[int(cycle)] = GateFigures(
            verdict=report.verdict,
            candidate=report.candidate,
            decision=None,
            gates=tuple(gate_figure(g.to_dict()) for g in report.gates),
        )
    return out


def _lifts(
    store: Store, plan_id: str, plan: Plan, cycles: list[int]
) -> tuple[dict[int, LiftFigures], dict[int, str]]:
    from core.abtest import analyse_cycles, resolve_metric

    try:
        analyses = analyse_cycles(store, plan, cycles, plan_id=plan_id)
        higher_is_better = resolve_metric(plan.ab_test.primary_metric).higher_is_better
    except AnalysisError as exc:  # the plan's A/B design cannot be analysed at all
        return {}, dict.fromkeys(cycles, str(exc))
    lifts: dict[int, LiftFigures] = {}
    errors: dict[int, str] = {}
    for cycle, analysis in analyses.items():
        if isinstance(analysis, AnalysisError):
            errors[cycle] = str(analysis)
            continue
        primary = analysis.primary
        lifts[cycle] = LiftFigures(
            metric=analysis.primary_metric,
            method=primary.method,
            higher_is_better=higher_is_better,
            lift=primary.estimate,
            ci=None if primary.ci is None else (float(primary.ci[0]), float(primary.ci[1])),
            p_value=primary.p_value,
            users_control=analysis.arms[0].users,
            users_treatment=analysis.arms[1].users,
            verdict=analysis.decision.verdict,
            srm_mismatch=analysis.srm.mismatch,
            note=primary.reason,
        )
    return lifts, errors


def cycle_monitoring(store: Store, plan_id: str, plan: Plan) -> list[CycleRecord]:
    """One record per cycle of the plan's timeline: its traffic (cycle_actuals), the funnel of
    its newest run, the dataset version that run built (rows now, production against
    synthetic, train against validation), its gates against their thresholds and its A/B
    lift with the interval the decision reads.

    Aggregated in DuckDB (a handful of grouped queries and one pass over the A/B windows);
    the gates of an undecided cycle are checked from the stored scores. Cycles that have not
    run keep the parts they lack as None or empty.
    """
    timeline = plan_timeline(plan)
    cycles = [m.cycle for m in timeline]
    actuals = {a.cycle: a for a in cycle_actuals(store, plan)}
    funnels = _funnels(store, plan_id)
    datasets = _datasets(store, plan_id)
    evaluated = _evaluated(store, plan_id)
    gates = _gates(store, plan_id, cycles, evaluated) if plan.gates else {}
    lifts, lift_errors = _lifts(store, plan_id, plan, cycles)
    records: list[CycleRecord] = []
    for milestone in timeline:
        run_id, stages = funnels.get(milestone.cycle, (None, []))
        records.append(
            CycleRecord(
                cycle=milestone.cycle,
                start=milestone.start,
                end=milestone.end,
                actuals=actuals.get(milestone.cycle),
                run_id=run_id,
                funnel=tuple(stages),
                dataset=datasets.get(milestone.cycle),
                gates=gates.get(milestone.cycle),
                ab=lifts.get(milestone.cycle),
                ab_error=lift_errors.get(milestone.cycle),
                evaluated=milestone.cycle in evaluated,
            )
        )
    return records


# -- coverage gaps -------------------------------------------------------------------------------

_THIN_SHARE = 0.5
"""A cell holding less than this share of the average rows per cell is thin."""
_UNDER_RATIO = 1.5
"""A slice of the grid whose share of traffic is this many times its share of the dataset is
under-represented."""


@dataclass(frozen=True)
class CoverageGap:
    """A part of the generation grid the dataset covers too little: one cell (empty or thin)
    or a slice over the axes production traffic is labelled with (under-represented)."""

    where: dict[str, str]
    kind: Literal["empty", "thin", "under-represented"]
    dataset_rows: int
    dataset_share: float
    traffic_share: float | None
    reason: str


@dataclass(frozen=True)
class Coverage:
    """The newest dataset version's coverage of the grid (None: no version yet)."""

    version_id: str | None
    cycle: int | None
    cells: int
    traffic_axes: tuple[str, ...]
    gaps: list[CoverageGap] = field(default_factory=list)


def coverage_gaps(store: Store, plan_id: str, plan: Plan) -> Coverage:
    """Where the plan's newest dataset version is thin on the generation grid.

    Per cell: **empty** (no row) or **thin** (fewer than half the average rows per cell). Per
    slice of the axes that production interactions carry as labels (e.g. topic): **under-
    represented** when its share of the labelled traffic is at least 1.5 times its share of the
    dataset. Traffic is counted in DuckDB; the dataset's cells come from its composition.
    """
    axes = [a for a in plan.generation.axes if a.values]
    grid = grid_cells(plan.generation.model_copy(update={"axes": axes})) if axes else [{}]
    row = store.fetch_one(
        "SELECT version_id, cycle, composition FROM dataset_versions WHERE plan_id = ? "
        "ORDER BY created_at DESC, version_id DESC LIMIT 1",
        [plan_id],
    )
    if row is None or not grid:
        return Coverage(None, None, len(grid), ())
    names = [a.name for a in axes]
    rows_in: dict[tuple[str, ...], int] = {}
    for cell in json.loads(row[2]).get("cells", []):
        key = tuple(str(cell["cell"].get(n)) for n in names)
        rows_in[key] = rows_in.get(key, 0) + int(cell["production"]) + int(cell["synthetic"])
    counts = [rows_in.get(tuple(c[n] for n in names), 0) for c in grid]
    total = sum(counts)
    gaps: list[CoverageGap] = []
    thin_below = _THIN_SHARE * total / len(grid)
    for cell, n in zip(grid, counts, strict=True):
        share = n / total if total else 0.0
        if n == 0:
            gaps.append(CoverageGap(cell, "empty", 0, 0.0, None, "no training row"))
        elif n < thin_below:
            gaps.append(
                CoverageGap(
                    cell,
                    "thin",
                    n,
                    share,
                    None,
                    f"{n} rows, under half the average {total / len(grid):.1f} per cell",
                )
            )
    # Traffic by the axes interactions are labelled with (columns that exist and hold values).
    columns = interaction_columns(store)
    labelled = [
        a
        for a in axes
        if a.name in columns
        and (
            store.fetch_one(
                f"SELECT EXISTS (SELECT 1 FROM interactions WHERE {sql_identifier(a.name)}"
                " IS NOT NULL)"
            )
            or [False]
        )[0]
    ]
    if labelled and total:
        traffic = traffic_by_axes(store, labelled)
        traffic_total = sum(traffic.values())
        positions = [names.index(a.name) for a in labelled]
        slices: dict[tuple[str, ...], int] = {}
        for cell, n in zip(grid, counts, strict=True):
            key = tuple(cell[names[i]] for i in positions)
            slices[key] = slices.get(key, 0) + n
        for key, n in sorted(slices.items()):
            if not traffic_total:
                break
            traffic_share = traffic.get(key, 0) / traffic_total
            share = n / total
            if traffic_share > 0 and traffic_share >= _UNDER_RATIO * share:
                where_ = dict(zip([a.name for a in labelled], key, strict=True))
                gaps.append(
                    CoverageGap(
                        where_,
                        "under-represented",
                        n,
                        share,
                        traffic_share,
                        f"{traffic_share:.0%} of labelled traffic but {share:.0%} of the dataset",
                    )
                )
    return Coverage(str(row[0]), int(row[1]), len(grid), tuple(a.name for a in labelled), gaps)
