"""One cycle end to end: from the consented interactions of its window to a dataset version.

The pipeline, in order (each stage records rows in and out, and every row it removes with the
stage, the rule and why):

1. ``window``: the interactions collected since the previous cycle's data freeze, up to this
   cycle's (cycle 1, and plans that do not train on production data, take none);
2. ``consent``: the eligibility rule of core.consent (latest training event a grant);
3. ``pii_redacted``: texts were redacted at ingest; those of batches redacted by other detectors
   than today's are checked again and redacted where something new is found (nothing is
   removed);
4. the plan's quality filters, in the plan's order; exact duplicates, near-duplicates and
   decontamination run where the plan puts them, and with their defaults where it lacks them
   (marked ``default``);
5. ``mix``: the plan's original synthetic data at ``original_to_new_ratio`` synthetic rows per
   production row, capped at ``max_dataset_size`` (production rows cut by the cap are recorded);
   every row takes the student's system message (``goal.student_system_message``), a
   production row the text it logged instead when ``goal.production_system`` says so;
6. ``split``: train and validation, stratified by cell of the generation grid;
7. a new immutable dataset version (core.datasets), unless the same plan version and cycle
   already built one with the same bytes.

The table stages are Ibis expressions (core.quality, core.consent) compiled to DuckDB. A run is
one transaction: when any stage fails the store is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as day_time
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir

from core import quality
from core.access import User, require
from core.audit import record_audit
from core.consent import eligible_interactions
from core.datasets import canonical_jsonl
from core.errors import CycleError
from core.escaping import json_path, sql_identifier, sql_string
from core.plan import (
    Decontamination,
    ExactDedup,
    NearDedup,
    PiiRedacted,
    Plan,
    plan_timeline,
    system_message_hash,
)
from core.plan_versions import load_plan
from core.privacy import DETECTORS_FINGERPRINT
from core.signoffs import privacy_approved
from core.store import Store

__all__ = [
    "STAGE_RUNNERS",
    "CycleResult",
    "StageRecord",
    "consent_stage",
    "cycle_runs",
    "cycle_window",
    "pipeline_rules",
    "removal_summary",
    "removed_rows",
    "run_cycle",
    "run_stages",
    "why_dropped",
]

Progress = Callable[[float, str], None]

_ROWS = "fw_cycle_rows"
_REMOVED = "fw_cycle_removed"
_DATASET = "fw_cycle_dataset"
_COLUMNS = list(quality.CYCLE_ROW_SCHEMA.names)


@dataclass
class StageRecord:
    """One stage of a run: rows in and out, rows it removed and added."""

    position: int
    name: str
    rule: str
    params: dict[str, Any]
    origin: str
    rows_in: int
    rows_out: int
    removed: int
    added: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``cycle run --json`` keys of a stage."""
        return {
            "name": self.name,
            "rule": self.rule,
            "origin": self.origin,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "removed": self.removed,
            "added": self.added,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CycleResult:
    """What a run did: its stages and the dataset version it built or found."""

    run_id: str
    plan_id: str
    plan_version: int
    cycle: int
    window_start: datetime | None
    window_end: datetime | None
    stages: list[StageRecord]
    dataset_version: str
    sha256: str
    rows: int
    new_version: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``cycle run --json`` keys."""
        return {
            "cycle": self.cycle,
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "run_id": self.run_id,
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "window_end": self.window_end.isoformat() if self.window_end else None,
            "stages": [s.to_dict() for s in self.stages],
            "dataset_version": self.dataset_version,
            "sha256": self.sha256,
            "rows": self.rows,
            "new_version": self.new_version,
            "warnings": self.warnings,
        }


# -- what runs -----------------------------------------------------------------------------------


def _describe(rule: Any) -> str:
    params = rule.model_dump(exclude={"rule", "expected_pass_rate"})
    inner = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{rule.rule}({inner})" if inner else str(rule.rule)


_CANONICAL = ("exact_dedup", "near_dedup", "decontamination")


def pipeline_rules(plan: Plan) -> list[tuple[Any, str]]:
    """The filter stages a cycle runs, in order, each with its origin (plan or default).

    The plan's rules keep their order; PII redaction always runs first. Exact duplicates,
    near-duplicates and decontamination always run: where the plan lacks one, it is added
    with its defaults before the first later one the plan has (else at the end).
    """
    rules: list[tuple[Any, str]] = [(PiiRedacted(), "pipeline")]
    for rule in plan.quality_filters:
        if rule.rule == "pii_redacted":
            rules[0] = (rule, "plan")
        else:
            rules.append((rule, "plan"))
    defaults = {
        "exact_dedup": ExactDedup,
        "near_dedup": NearDedup,
        "decontamination": Decontamination,
    }
    for index, name in enumerate(_CANONICAL):
        if any(r.rule == name for r, _ in rules):
            continue
        later = [i for i, (r, _) in enumerate(rules) if r.rule in _CANONICAL[index + 1 :]]
        position = later[0] if later else len(rules)
        rules.insert(position, (defaults[name](), "default"))
    return rules


def cycle_window(plan: Plan, cycle: int) -> tuple[datetime | None, datetime | None]:
    """The collection window of a cycle's production data: [previous freeze, this freeze).

    (None, None) when the cycle trains on synthetic data only. Raises CycleError for a cycle
    the plan's horizon does not hold.
    """
    timeline = plan_timeline(plan)
    if not 1 <= cycle <= len(timeline):
        raise CycleError(
            f"The plan has cycles 1 to {len(timeline)}; cycle {cycle} is not one of them."
            if timeline
            else "The plan's horizon holds no full cycle; adjust the cadence on the Plan page."
        )
    milestones = timeline[cycle - 1]
    if not milestones.uses_production_data:
        return None, None
    start = timeline[cycle - 2].data_freeze
    return (
        datetime.combine(start, day_time(0), UTC),
        datetime.combine(milestones.data_freeze, day_time(0), UTC),
    )


# -- the stages ----------------------------------------------------------------------------------


_TOKENS = "fw_cycle_tokens"


@dataclass
class _Context:
    con: duckdb.DuckDBPyConnection
    plan: Plan
    keep: str
    warnings: list[str]
    tokens: str | None = None

    def tokens_of(self, rows: ir.Table) -> str:
        """The table of word 3-grams that near-duplicates and decontamination share: cut
        once, for the rows alive when the first of them runs (later ones hold a subset)."""
        if self.tokens is None:
            self.tokens = quality.token_table(self.con, rows, _TOKENS)
        return self.tokens


def _row_rule(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    return quality.rule_stage(rows, rule)


def _exact(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    return quality.exact_duplicate_stage(rows, ctx.keep)  # type: ignore[arg-type]


def _near(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    return quality.near_duplicate_stage(
        ctx.con, rows, threshold=rule.threshold, keep=rule.keep, tokens=ctx.tokens_of(rows)
    )


def _decontaminate(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    stored = {
        str(r[0]) for r in ctx.con.execute("SELECT DISTINCT eval_set FROM eval_items").fetchall()
    }
    missing = sorted(set(rule.eval_sets) - stored)
    if missing:
        ctx.warnings.append(
            f"Decontamination: eval set(s) {', '.join(missing)} named by the plan are not "
            "stored; load them with `ingest FILE --kind eval-items`."
        )
    if not stored:
        ctx.warnings.append(
            "Decontamination had no eval items to check against; load the eval sets first."
        )
    return quality.contamination_stage(
        ctx.con,
        rows,
        ngram=rule.ngram,
        threshold=rule.threshold,
        eval_sets=list(rule.eval_sets),
        tokens=ctx.tokens_of(rows),
    )


StageRunner = Callable[[_Context, ir.Table, Any], ir.Table]

STAGE_RUNNERS: dict[str, StageRunner] = {
    "positive_feedback": _row_rule,
    "accepted": _row_rule,
    "positive_or_accepted": _row_rule,
    "length_bounds": _row_rule,
    "language": _row_rule,
    "code_parses": _row_rule,
    "field_condition": _row_rule,
    "exact_dedup": _exact,
    "near_dedup": _near,
    "decontamination": _decontaminate,
}
"""The function that runs each filter rule: (context, rows, rule) → rows plus ``fw_drop``."""


def consent_stage(rows: ir.Table, events: ir.Table) -> ir.Table:
    """Rows plus ``fw_drop``: why a row lacks training consent (none, or withdrawn)."""
    eligible = eligible_interactions(rows, events)
    training = events.filter((events.scope == "training") & (events.action == "grant"))
    granted_before = rows.semi_join(
        training, [rows.user_id == training.user_id, training.ts <= rows.ts]
    ).select(g_id=rows.interaction_id)
    is_eligible = rows.interaction_id.isin(eligible.interaction_id)
    had_grant = rows.interaction_id.isin(granted_before.g_id)
    why = ibis.cases(
        (is_eligible, ibis.null("string")),
        (had_grant, "training consent withdrawn at or after the interaction"),
        else_="no training consent granted at or before the interaction",
    )
    return rows.mutate(fw_drop=why)


def _pii_stage(rows: ir.Table, fresh_batches: list[str]) -> ir.Table:
    """Texts redacted again, and whether anything changed, except in ``fresh_batches`` (those
    today's detectors redacted at ingest: the same detectors find nothing new in them)."""
    stale = ~rows.batch_id.isin(fresh_batches) if fresh_batches else ibis.literal(True)
    out = rows.mutate(
        fw_p=ibis.ifelse(stale, quality.redacted(rows.prompt), rows.prompt),
        fw_r=ibis.ifelse(stale, quality.redacted(rows.response), rows.response),
        fw_s=ibis.ifelse(stale, quality.redacted(rows.system), rows.system),
    )
    changed = (
        (out.fw_p != out.prompt) | (out.fw_r != out.response) | (out.fw_s != out.system)
    ).fill_null(False)
    return out.mutate(prompt=out.fw_p, response=out.fw_r, system=out.fw_s, fw_changed=changed).drop(
        "fw_p", "fw_r", "fw_s"
    )


def _cell_sql(plan: Plan) -> str:
    """SQL of an interaction's cell key: its label on each generation axis (a column such as
    topic, else the field of its metadata), as the canonical JSON generation uses."""
    axes = sorted(axis.name for axis in plan.generation.axes)
    if not axes:
        return "'{}'"
    parts = []
    for name in axes:
        value = (
            sql_identifier(name)
            if name in ("topic", "difficulty", "variant", "model")
            else f"json_extract_string(metadata, {sql_string(json_path(name))})"
        )
        parts.append(f"{sql_string(name)}, coalesce({value}, '(unlabelled)')")
    return f"json_object({', '.join(parts)})::VARCHAR"


def _sql(expr: ir.Table) -> str:
    return str(ibis.to_sql(expr, dialect="duckdb"))


def _rows_table() -> ir.Table:
    return ibis.table(quality.CYCLE_ROW_SCHEMA, name=_ROWS)


def _alive() -> ir.Table:
    rows = _rows_table()
    removed = ibis.table({"interaction_id": "string"}, name=_REMOVED)
    return rows.anti_join(removed, rows.interaction_id == removed.interaction_id)


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: Any = ()) -> int:
    return int(con.execute(sql, params).fetchall()[0][0])


# -- the run -------------------------------------------------------------------------------------


def _check_can_run(store: Store, plan: Plan, plan_id: str, version: int, cycle: int) -> None:
    review = plan.consent.privacy_review
    if review.status != "approved":
        raise CycleError(
            f"Cycle {cycle} of plan '{plan_id}' cannot run: the plan's privacy review is "
            f"'{review.status}', not approved. Record the reviewer's approval "
            "(consent.privacy_review.status) on the Plan page, then run the cycle again."
        )
    milestones = {c.cycle: c for c in plan_timeline(plan)}
    uses_production = cycle in milestones and milestones[cycle].uses_production_data
    if uses_production and not privacy_approved(store, plan_id, version):
        raise CycleError(
            f"Cycle {cycle} trains on production data, so the privacy reviewer must approve "
            f"this exact plan version (v{version}) first: Plan page, Sign-off tab."
        )


def run_cycle(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    user: User,
    progress: Progress | None = None,
) -> CycleResult:
    """Run a cycle of the plan's newest version and build its dataset version, in one
    transaction (a failing stage leaves the store as it was).

    Raises CycleError when the privacy review is not approved (for a cycle on production data:
    the privacy reviewer's sign-off of this exact version), the cycle is not in the plan, a rule
    cannot be evaluated, or no row would be left; AccessError, before anything is read or
    written, when ``user`` may not run cycles. The run is recorded under ``user``'s name.
    The whole run holds the store (``Store.hold``): a restore waits for it, or refuses.
    """
    require(user, "cycle.run")
    with store.hold():
        return _run_cycle(store, plan_id, cycle, user=user, progress=progress)


def _run_cycle(
    store: Store, plan_id: str, cycle: int, *, user: User, progress: Progress | None
) -> CycleResult:
    """The body of ``run_cycle``, run while it holds the store."""
    plan, plan_version = load_plan(store, plan_id)
    _check_can_run(store, plan, plan_id, plan_version, cycle)
    start, end = cycle_window(plan, cycle)
    who = user.name
    report = progress or (lambda fraction, message: None)
    rules = pipeline_rules(plan)
    total_steps = len(rules) + 5
    near = next((r for r, _ in rules if r.rule == "near_dedup"), None)
    keep = near.keep if near is not None else "earliest"
    run_id = datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    started = datetime.now(UTC)
    stages: list[StageRecord] = []
    warnings: list[str] = []

    with store.transaction() as con:
        con.execute("SET TimeZone = 'UTC'")
        quality.install_stage_functions(con)
        ctx = _Context(con, plan, keep, warnings)

        # 1. the window
        report(0.0, "Collecting the cycle's window…")
        clock = time.perf_counter()
        columns = ", ".join(
            f"{_cell_sql(plan)} AS cell_key"
            if c == "cell_key"
            else ("metadata::VARCHAR AS metadata" if c == "metadata" else c)
            for c in _COLUMNS
        )
        # A view, not a copy: consent and the PII check read the window once each, and a
        # copy of every column of the window cost more than both reads.
        bounds = (
            f"ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'"
            if start is not None and end is not None
            else "false"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW fw_cycle_window AS SELECT {columns} FROM interactions"
            f" WHERE {bounds}"
        )
        in_window = _count(con, "SELECT count(*) FROM fw_cycle_window")
        stages.append(
            StageRecord(
                0,
                "window",
                f"{start:%Y-%m-%d} ≤ ts < {end:%Y-%m-%d}" if start and end else "synthetic only",
                {
                    "start": start.isoformat() if start else None,
                    "end": end.isoformat() if end else None,
                },
                "pipeline",
                in_window,
                in_window,
                0,
                seconds=time.perf_counter() - clock,
            )
        )

        # 2. consent, and 3. PII redaction checked again on what consent lets through
        report(1 / total_steps, "Applying the consent ledger…")
        clock = time.perf_counter()
        window = ibis.table(quality.CYCLE_ROW_SCHEMA, name="fw_cycle_window")
        events = ibis.table(
            {"user_id": "string", "ts": "timestamp('UTC')", "scope": "string", "action": "string"},
            name="consent_events",
        )
        verdict = consent_stage(window, events)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_REMOVED} AS SELECT interaction_id, user_id,"
            " 1 AS position, 'consent' AS stage, 'training consent' AS rule, fw_drop AS detail"
            f" FROM ({_sql(verdict)}) WHERE fw_drop IS NOT NULL"
        )
        removed = _count(con, f"SELECT count(*) FROM {_REMOVED}")
        stages.append(
            StageRecord(
                1,
                "consent",
                "training consent",
                {"scope": "training"},
                "pipeline",
                in_window,
                in_window - removed,
                removed,
                seconds=time.perf_counter() - clock,
            )
        )
        report(2 / total_steps, "Checking PII redaction…")
        clock = time.perf_counter()
        kept = window.anti_join(
            ibis.table({"interaction_id": "string"}, name=_REMOVED), "interaction_id"
        )
        fresh = [
            str(r[0])
            for r in con.execute(
                "SELECT batch_id FROM ingest_batches WHERE pii_detectors = ? ORDER BY batch_id",
                [DETECTORS_FINGERPRINT],
            ).fetchall()
        ]
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_ROWS} AS {_sql(_pii_stage(kept, fresh))}")
        rechecked = _count(con, f"SELECT count(*) FROM {_ROWS} WHERE fw_changed")
        checked = _count(
            con,
            f"SELECT count(*) FROM {_ROWS} WHERE NOT list_contains(?::VARCHAR[], batch_id)",
            [fresh],
        )
        alive_count = in_window - removed
        _pii_rule, pii_origin = rules[0]
        stages.append(
            StageRecord(
                2,
                "pii_redacted",
                "pii_redacted",
                {"rows_checked_again": checked, "texts_redacted_again": rechecked},
                pii_origin,
                alive_count,
                alive_count,
                0,
                seconds=time.perf_counter() - clock,
            )
        )
        if rechecked:
            warnings.append(
                f"PII check: {rechecked} row(s) held PII today's detectors find and ingest's "
                "did not; they were redacted again in the dataset."
            )

        # 4. the plan's filters
        for offset, (rule, origin) in enumerate(rules[1:], start=3):
            report(offset / total_steps, f"{rule.rule}…")
            clock = time.perf_counter()
            runner = STAGE_RUNNERS[rule.rule]
            try:
                verdict = runner(ctx, _alive(), rule)
            except ValueError as exc:
                raise CycleError(f"The plan's {rule.rule} filter cannot run: {exc}.") from None
            described = _describe(rule)
            before = _count(con, f"SELECT count(*) FROM {_REMOVED}")
            con.execute(
                f"INSERT INTO {_REMOVED} SELECT interaction_id, user_id, ?, ?, ?, fw_drop"
                f" FROM ({_sql(verdict)}) WHERE fw_drop IS NOT NULL",
                [offset, rule.rule, described],
            )
            dropped = _count(con, f"SELECT count(*) FROM {_REMOVED}") - before
            stages.append(
                StageRecord(
                    offset,
                    rule.rule,
                    described,
                    rule.model_dump(mode="json"),
                    origin,
                    alive_count,
                    alive_count - dropped,
                    dropped,
                    seconds=time.perf_counter() - clock,
                )
            )
            alive_count -= dropped

        # 5. the mix, 6. the split
        position = len(rules) + 2
        report(position / total_steps, "Mixing with the synthetic data…")
        clock = time.perf_counter()
        mix = _mix(con, plan, plan_id, cycle, alive_count, start is not None, position, warnings)
        mix.seconds = time.perf_counter() - clock
        stages.append(mix)
        total = mix.rows_out
        if total == 0:
            raise CycleError(
                f"Cycle {cycle} of plan '{plan_id}' would build an empty dataset: "
                + "; ".join(f"{s.name} {s.rows_in}→{s.rows_out}" for s in stages)
                + ". Load consented interactions for its window or generate synthetic data."
            )
        report((position + 1) / total_steps, "Splitting train and validation…")
        clock = time.perf_counter()
        validation = _split(con, plan.cadence.validation_share)
        stages.append(
            StageRecord(
                position + 1,
                "split",
                f"stratified by cell, validation_share={plan.cadence.validation_share}",
                {"validation_share": plan.cadence.validation_share, "validation": validation},
                "plan",
                total,
                total,
                0,
                seconds=time.perf_counter() - clock,
            )
        )
        if start is not None and mix.params["production_rows"] < plan.cadence.min_new_examples:
            warnings.append(
                f"Only {mix.params['production_rows']} new production rows, fewer than the "
                f"plan's min_new_examples ({plan.cadence.min_new_examples}): the plan does not "
                "count this as enough new data to justify retraining."
            )

        # 7. the version
        report((position + 2) / total_steps, "Writing the dataset version…")
        version_id, sha, created = _write_version(
            con, plan, plan_id, plan_version, cycle, run_id, who, stages, start, end
        )
        finished = datetime.now(UTC)
        con.execute(
            "INSERT INTO cycle_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                plan_id,
                plan_version,
                cycle,
                start,
                end,
                started,
                finished,
                who,
                version_id,
                json.dumps(warnings),
            ],
        )
        con.executemany(
            "INSERT INTO cycle_stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    run_id,
                    s.position,
                    s.name,
                    s.rule,
                    json.dumps(s.params, default=str),
                    s.origin,
                    s.rows_in,
                    s.rows_out,
                    s.removed,
                    s.added,
                    s.seconds,
                ]
                for s in stages
            ],
        )
        con.execute(
            "INSERT INTO cycle_removed_rows SELECT ?, interaction_id, user_id, position, stage,"
            f" rule, detail FROM {_REMOVED}",
            [run_id],
        )
        record_audit(
            con,
            actor=who,
            action="cycle_run",
            target=f"{plan_id}:cycle{cycle}",
            detail={
                "run_id": run_id,
                "dataset_version": version_id,
                "new_version": created,
                "rows": total,
                "stages": {s.name: [s.rows_in, s.rows_out] for s in stages},
            },
        )
        for temp in (_ROWS, _REMOVED, _DATASET, _TOKENS):
            con.execute(f"DROP TABLE IF EXISTS {temp}")
        con.execute("DROP VIEW IF EXISTS fw_cycle_window")
    report(1.0, f"Built {version_id}.")
    return CycleResult(
        run_id,
        plan_id,
        plan_version,
        cycle,
        start,
        end,
        stages,
        version_id,
        sha,
        total,
        created,
        warnings,
    )


@ibis.udf.scalar.builtin(name="md5")  # type: ignore[untyped-decorator]
def _md5(text: str) -> str:  # type: ignore[empty-body]
    """DuckDB's md5: a stable hash (unlike hash(), the same in every DuckDB version)."""


def _proportional_order(rows: ir.Table, key: ir.StringValue) -> ir.Table:
    """Rows with ``fw_order``: a stratified shuffle (each cell's rows spread evenly), so that
    the first k rows hold each cell in proportion to its size."""
    sort_key = _md5(key)
    within = ibis.window(group_by=rows.cell_key, order_by=[sort_key, key])
    size = ibis.window(group_by=rows.cell_key)
    ordered = rows.mutate(
        fw_rank=(ibis.row_number().over(within) + 1) / rows.cell_key.count().over(size),
        fw_sort=sort_key,
    )
    return ordered


def _mix(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    plan_id: str,
    cycle: int,
    production: int,
    uses_production: bool,
    position: int,
    warnings: list[str],
) -> StageRecord:
    """Production rows plus synthetic ones at the plan's ratio, capped at the maximum size."""
    cadence = plan.cadence
    ratio, cap = cadence.original_to_new_ratio, cadence.max_dataset_size
    pool = _count(
        con,
        "SELECT count(*) FROM generated_examples WHERE plan_id = ? AND status = 'valid'"
        " AND coalesce(question, '') <> '' AND coalesce(answer, '') <> ''",
        [plan_id],
    )
    if uses_production:
        keep_production = production
        if production + round(ratio * production) > cap:
            keep_production = min(production, int(cap // (1 + ratio)))
        wanted = min(round(ratio * keep_production), cap - keep_production)
    else:
        keep_production, wanted = 0, cap
    synthetic = min(wanted, pool)
    if uses_production and synthetic < wanted:
        warnings.append(
            f"Only {pool} synthetic examples are stored; the plan's ratio "
            f"({ratio:g} per production row) asks for {wanted}. Generate more on the "
            "Synthetic data page."
        )
    if not uses_production and pool == 0:
        warnings.append(
            f"Cycle {cycle} trains on synthetic data only and none is stored: run `generate`."
        )
    # The order is taken over the ids alone; only the rows kept are read in full.
    alive = _alive()
    narrow = alive.select("interaction_id", "user_id", "cell_key")
    ordered = _proportional_order(narrow, narrow.interaction_id)
    chosen = ordered.select(
        "interaction_id",
        "user_id",
        fw_pick=ibis.row_number().over(ibis.window(order_by=[ordered.fw_rank, ordered.fw_sort])),
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE fw_cycle_mix AS {_sql(chosen)}")
    con.execute(
        f"INSERT INTO {_REMOVED} SELECT interaction_id, user_id, ?, 'mix', ?, ? FROM fw_cycle_mix"
        " WHERE fw_pick >= ?",
        [
            position,
            f"max_dataset_size={cap}",
            f"cut by the size cap: {cap} rows at {ratio:g} synthetic per production row",
            keep_production,
        ],
    )
    examples = ibis.table(
        {
            "spec_hash": "string",
            "cell_key": "string",
            "item_index": "int64",
            "plan_id": "string",
            "status": "string",
            "question": "string",
            "answer": "string",
        },
        name="generated_examples",
    )
    valid = examples.filter(
        (examples.plan_id == plan_id)
        & (examples.status == "valid")
        & (examples.question.fill_null("") != "")
        & (examples.answer.fill_null("") != "")
    )
    keyed = valid.mutate(
        row_key=ibis.literal("syn:").concat(
            valid.spec_hash,
            ":",
            _md5(valid.cell_key).substr(0, 8),
            ":",
            valid.item_index.cast("string"),
        )
    )
    spread = _proportional_order(keyed, keyed.row_key)
    picked = spread.mutate(
        fw_pick=ibis.row_number().over(ibis.window(order_by=[spread.fw_rank, spread.fw_sort]))
    ).filter(ibis._.fw_pick < synthetic)
    # Every synthetic row trains under the student's system message; a production row under
    # it too, or under the text it logged (goal.production_system), which is kept apart as
    # logged_system so that the version can say how many rows logged another.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_DATASET} AS "
        "SELECT interaction_id AS row_key, 'production' AS source, interaction_id, user_id,"
        " batch_id, cell_key, CASE WHEN $replace THEN $system::VARCHAR ELSE system END AS system,"
        f" prompt, response, system AS logged_system FROM {_ROWS}"
        " WHERE interaction_id IN (SELECT interaction_id FROM fw_cycle_mix WHERE fw_pick < $keep)"
        " UNION ALL SELECT row_key, 'synthetic', NULL, NULL, NULL, cell_key, $system::VARCHAR,"
        f" question, answer, NULL FROM ({_sql(picked)})",
        {
            "keep": keep_production,
            "system": plan.goal.system_message,
            "replace": plan.goal.production_system == "plan",
        },
    )
    con.execute("DROP TABLE IF EXISTS fw_cycle_mix")
    cut = production - keep_production
    return StageRecord(
        position,
        "mix",
        f"original_to_new_ratio={ratio:g}, max_dataset_size={cap}",
        {
            "original_to_new_ratio": ratio,
            "max_dataset_size": cap,
            "production_rows": keep_production,
            "synthetic_rows": synthetic,
            "synthetic_stored": pool,
        },
        "plan",
        production,
        keep_production + synthetic,
        cut,
        synthetic,
    )


def _split(con: duckdb.DuckDBPyConnection, share: float) -> int:
    """Mark each cell's first round(n × share) rows (by md5 of the key) as validation."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE fw_cycle_split AS SELECT *, md5(row_key) AS sort_key,"
        " CASE WHEN row_number() OVER (PARTITION BY cell_key ORDER BY md5(row_key), row_key)"
        "  <= floor(count(*) OVER (PARTITION BY cell_key) * $share + 0.5)"
        f" THEN 'validation' ELSE 'train' END AS split FROM {_DATASET}",
        {"share": share},
    )
    con.execute(f"DROP TABLE {_DATASET}")
    con.execute(f"ALTER TABLE fw_cycle_split RENAME TO {_DATASET}")
    return _count(con, f"SELECT count(*) FROM {_DATASET} WHERE split = 'validation'")


def _write_version(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    plan_id: str,
    plan_version: int,
    cycle: int,
    run_id: str,
    who: str,
    stages: list[StageRecord],
    start: datetime | None,
    end: datetime | None,
) -> tuple[str, str, bool]:
    """Store the dataset as a new version, or find the identical one; (id, sha256, new)."""
    cur = con.execute(f"SELECT system, prompt, response FROM {_DATASET} ORDER BY sort_key, row_key")
    rows = [{"system": s, "prompt": p, "response": r} for s, p, r in cur.fetchall()]
    sha = hashlib.sha256(canonical_jsonl(rows)).hexdigest()
    same = con.execute(
        "SELECT version_id FROM dataset_versions WHERE plan_id = ? AND cycle = ? AND sha256 = ?"
        " AND plan_version = ? ORDER BY number DESC LIMIT 1",
        [plan_id, cycle, sha, plan_version],
    ).fetchall()
    if same:
        return str(same[0][0]), sha, False
    number = (
        _count(
            con,
            "SELECT count(*) FROM dataset_versions WHERE plan_id = ? AND cycle = ?",
            [plan_id, cycle],
        )
        + 1
    )
    version_id = f"ds-{plan_id}-c{cycle}-v{number}"
    parent = con.execute(
        "SELECT version_id FROM dataset_versions WHERE plan_id = ? AND cycle <= ?"
        " ORDER BY cycle DESC, number DESC LIMIT 1",
        [plan_id, cycle],
    ).fetchall()
    counts = con.execute(
        "SELECT cell_key, count(*) FILTER (WHERE source = 'production'),"
        " count(*) FILTER (WHERE source = 'synthetic'), count(*) FILTER (WHERE split = 'train'),"
        f" count(*) FILTER (WHERE split = 'validation') FROM {_DATASET} GROUP BY cell_key"
        " ORDER BY cell_key"
    ).fetchall()
    cells = [
        {
            "cell_key": k,
            "cell": json.loads(k),
            "production": int(p),
            "synthetic": int(s),
            "train": int(t),
            "validation": int(v),
        }
        for k, p, s, t, v in counts
    ]
    production = sum(c["production"] for c in cells)
    synthetic = sum(c["synthetic"] for c in cells)
    train = sum(c["train"] for c in cells)
    validation = sum(c["validation"] for c in cells)
    batches = [
        str(r[0])
        for r in con.execute(
            f"SELECT DISTINCT batch_id FROM {_DATASET} WHERE batch_id IS NOT NULL ORDER BY 1"
        ).fetchall()
    ]
    specs = [
        str(r[0])
        for r in con.execute(
            f"SELECT DISTINCT split_part(row_key, ':', 2) FROM {_DATASET}"
            " WHERE source = 'synthetic' ORDER BY 1"
        ).fetchall()
    ]
    lineage = {
        "system_message": _system_lineage(con, plan),
        "plan_id": plan_id,
        "plan_version": plan_version,
        "plan_sha256": plan.fingerprint(),
        "cycle": cycle,
        "window": [start.isoformat() if start else None, end.isoformat() if end else None],
        "batches": batches,
        "synthetic_specs": specs,
        "filters": [
            {"name": s.name, "rule": s.rule, "origin": s.origin, "params": s.params} for s in stages
        ],
        "parent_version": parent[0][0] if parent else None,
        "run_id": run_id,
    }
    composition = {
        "production": production,
        "synthetic": synthetic,
        "train": train,
        "validation": validation,
        "cells": cells,
    }
    con.execute(
        "INSERT INTO dataset_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            version_id,
            plan_id,
            plan_version,
            cycle,
            number,
            lineage["parent_version"],
            run_id,
            sha,
            production + synthetic,
            train,
            validation,
            production,
            synthetic,
            json.dumps(lineage, default=str),
            json.dumps(composition),
            who,
            datetime.now(UTC),
        ],
    )
    con.execute(
        "INSERT INTO dataset_rows SELECT ?, row_key, source, interaction_id, user_id, cell_key,"
        f" split, system, prompt, response, sort_key FROM {_DATASET}",
        [version_id],
    )
    return version_id, sha, True


def _system_lineage(con: duckdb.DuckDBPyConnection, plan: Plan) -> dict[str, Any]:
    """The system message the version trains under, the production rows' policy, how many
    production rows logged none or another text, and the rows carrying each message."""
    message = plan.goal.system_message
    none, other = con.execute(
        "SELECT count(*) FILTER (WHERE coalesce(logged_system, '') = ''),"
        " count(*) FILTER (WHERE coalesce(logged_system, '') NOT IN ('', $message))"
        f" FROM {_DATASET} WHERE source = 'production'",
        {"message": message or ""},
    ).fetchall()[0]
    carried = con.execute(
        f"SELECT nullif(system, '') AS s, count(*) FROM {_DATASET} GROUP BY s"
        " ORDER BY count(*) DESC, s NULLS FIRST"
    ).fetchall()
    return {
        "text": message,
        "hash": system_message_hash(message),
        "production_rows": plan.goal.production_system,
        "logged_none": int(none),
        "logged_other": int(other),
        # Rows that logged something else than the message (no text counts when there is one).
        "logged_different": int(other) + (int(none) if message else 0),
        "carried": [
            {"hash": system_message_hash(text), "rows": int(rows)} for text, rows in carried
        ],
    }


# -- reading runs back ----------------------------------------------------------------------------


def cycle_runs(store: Store, plan_id: str | None = None) -> list[dict[str, Any]]:
    """Runs (of one plan when given), newest first, with their dataset version."""
    rows = store.fetch_dicts(
        "SELECT run_id, plan_id, plan_version, cycle, window_start, window_end, started_at,"
        " finished_at, actor, dataset_version, warnings FROM cycle_runs"
        " WHERE $plan IS NULL OR plan_id = $plan ORDER BY started_at DESC",
        {"plan": plan_id},
    )
    for row in rows:
        row["warnings"] = json.loads(row["warnings"])
    return rows


def run_stages(store: Store, run_id: str) -> list[StageRecord]:
    """The funnel of one run, stage by stage."""
    rows = store.fetch_all(
        "SELECT position, name, rule, params, origin, rows_in, rows_out, removed, added, seconds"
        " FROM cycle_stages WHERE run_id = ? ORDER BY position",
        [run_id],
    )
    return [
        StageRecord(
            int(p),
            str(n),
            str(r),
            json.loads(pa),
            str(o),
            int(i),
            int(out),
            int(rm),
            int(a),
            float(s),
        )
        for p, n, r, pa, o, i, out, rm, a, s in rows
    ]


def removal_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Rows a run removed, counted per stage and rule, in pipeline order."""
    return store.fetch_dicts(
        "SELECT position, stage, rule, count(*) AS rows FROM cycle_removed_rows WHERE run_id = ?"
        " GROUP BY ALL ORDER BY position",
        [run_id],
    )


def removed_rows(
    store: Store, run_id: str, *, stage: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The rows a run removed (at one stage when given): id, stage, rule, why, and the text."""
    return store.fetch_dicts(
        "SELECT r.interaction_id, r.stage, r.rule, r.detail, i.ts, i.prompt, i.response"
        " FROM cycle_removed_rows r LEFT JOIN interactions i USING (interaction_id)"
        " WHERE r.run_id = $run AND ($stage IS NULL OR r.stage = $stage)"
        " ORDER BY r.position, r.interaction_id LIMIT $limit",
        {"run": run_id, "stage": stage, "limit": limit},
    )


def why_dropped(
    store: Store, interaction_id: str, *, plan_id: str | None = None
) -> list[dict[str, Any]]:
    """What each cycle run (newest first) did with one interaction: removed (stage, rule, why),
    kept (dataset version and split), or outside the cycle's window.

    Raises CycleError when the interaction is not stored (never loaded, or erased).
    """
    found = store.fetch_one(
        "SELECT ts FROM interactions WHERE interaction_id = ?", [interaction_id]
    )
    if found is None:
        raise CycleError(
            f"No interaction {interaction_id!r} is stored: it was never loaded, or its user "
            "was forgotten. Ids are case-sensitive."
        )
    rows = store.fetch_dicts(
        "SELECT c.run_id, c.plan_id, c.cycle, c.dataset_version, c.started_at, c.window_start,"
        " c.window_end, r.stage, r.rule, r.detail, d.split"
        " FROM cycle_runs c"
        " LEFT JOIN cycle_removed_rows r ON r.run_id = c.run_id AND r.interaction_id = $id"
        " LEFT JOIN dataset_rows d ON d.version_id = c.dataset_version AND d.interaction_id = $id"
        " WHERE $plan IS NULL OR c.plan_id = $plan ORDER BY c.started_at DESC",
        {"id": interaction_id, "plan": plan_id},
    )
    ts = found[0]
    answers: list[dict[str, Any]] = []
    for row in rows:
        if row["stage"] is not None:
            outcome = "removed"
            why = f"removed at stage {row['stage']} by {row['rule']}: {row['detail']}"
        elif row["split"] is not None:
            outcome = "kept"
            why = f"kept in {row['dataset_version']} ({row['split']})"
        elif row["window_start"] is None:
            outcome = "outside window"
            why = f"cycle {row['cycle']} trains on synthetic data only"
        elif not row["window_start"] <= ts < row["window_end"]:
            outcome = "outside window"
            why = (
                f"outside cycle {row['cycle']}'s window "
                f"({row['window_start']:%Y-%m-%d} to {row['window_end']:%Y-%m-%d})"
            )
        else:
            outcome = "unknown"
            why = "in the window but neither removed nor in the dataset (loaded after the run?)"
        answers.append(
            {
                "run_id": row["run_id"],
                "plan_id": row["plan_id"],
                "cycle": row["cycle"],
                "dataset_version": row["dataset_version"],
                "outcome": outcome,
                "stage": row["stage"],
                "rule": row["rule"],
                "detail": row["detail"],
                "why": why,
            }
        )
    return answers


def run_summary(result: CycleResult) -> str:
    """One paragraph for people: the funnel and the version."""
    funnel = ", ".join(f"{s.name} {s.rows_in}→{s.rows_out}" for s in result.stages)
    verb = "Built" if result.new_version else "Unchanged: same bytes as"
    return (
        f"Cycle {result.cycle} of plan '{result.plan_id}' v{result.plan_version}: {funnel}. "
        f"{verb} {result.dataset_version} ({result.rows} rows, sha256 {result.sha256[:12]}…)."
        + "".join(f"\nwarning: {w}" for w in result.warnings)
    )
