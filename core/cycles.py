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

What each stage is (the rules a cycle runs, the copy duplicates keep, what a carried row is
checked by again, the words of its reasons) is defined once in core.pipeline.stages, and the
loop that runs the table stages in core.pipeline.run, for this engine and core.portable's alike;
here are their DuckDB SQL bodies (``_SqlBodies``: Ibis expressions of core.quality compiled to
DuckDB, and SQL where speed needs it), then the mix, the split and the version. A run is one
transaction: when any stage fails the store is left as it was.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as day_time
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir

from core import clock as action_clock
from core import quality
from core.access import User, require
from core.audit import record_audit
from core.consent import CONSENT_EVENT_COLUMNS, consented_since_sql
from core.cycle_reads import (
    CycleResult,
    StageRecord,
    cycle_runs,
    removal_summary,
    removed_rows,
    run_stages,
    why_dropped,
)
from core.cycle_reads import run_summary as run_summary
from core.datasets import line_sha_sql, version_sha256
from core.errors import CycleError, ThinCycleError
from core.escaping import json_path, sql_identifier, sql_string
from core.labels import label
from core.pipeline.run import STEPS_AFTER_FILTERS, Counted, run_table_stages
from core.pipeline.stages import (
    RULE_CHANGED,
    Keep,
    carried_prefix,
    consent_stage,
    describe_rule,
    keep_rule,
    pipeline_rules,
    retention_reason,
    rule_key,
    rules_to_recheck,
)
from core.plan import Plan, plan_timeline, system_message_hash
from core.plan_versions import load_plan
from core.privacy import DETECTORS_FINGERPRINT
from core.retention import raw_text_retention_days
from core.signoffs import privacy_approved
from core.store import Store

__all__ = [
    "STAGE_RUNNERS",
    "CycleResult",
    "ParentVersion",
    "StageRecord",
    "consent_stage",
    "cycle_runs",
    "cycle_window",
    "fresh_batches",
    "pipeline_rules",
    "removal_summary",
    "removed_rows",
    "rule_key",
    "run_cycle",
    "run_stages",
    "sketch_version",
    "why_dropped",
]

Progress = Callable[[float, str], None]

_ROWS = "fw_cycle_rows"
_REMOVED = "fw_cycle_removed"
_DATASET = "fw_cycle_dataset"
_COLUMNS = list(quality.CYCLE_ROW_SCHEMA.names)


# -- what runs -----------------------------------------------------------------------------------


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
    reference: str | None = None  # the carried rows' sketches, when there is a parent
    reference_label: str = ""

    def tokens_of(self, rows: ir.Table) -> str:
        """The table of word 3-grams that near-duplicates and decontamination share: cut
        once, for the rows alive when the first of them runs (later ones hold a subset)."""
        if self.tokens is None:
            self.tokens = quality.token_table(self.con, rows, _TOKENS)
        return self.tokens


def _row_rule(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    return quality.rule_stage(rows, rule)


def _exact(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    reference = None
    if ctx.reference is not None:
        reference = ibis.table({"key": "string", "exact_key": "string"}, name=ctx.reference)
    return quality.exact_duplicate_stage(
        rows,
        ctx.keep,  # type: ignore[arg-type]
        reference=reference,
        reference_label=ctx.reference_label,
    )


def _near(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    return quality.near_duplicate_stage(
        ctx.con,
        rows,
        threshold=rule.threshold,
        keep=rule.keep,
        tokens=ctx.tokens_of(rows),
        reference=ctx.reference,
        reference_label=ctx.reference_label,
    )


def _decontaminate(ctx: _Context, rows: ir.Table, rule: Any) -> ir.Table:
    stored = {
        str(r[0]) for r in ctx.con.execute("SELECT DISTINCT eval_set FROM eval_items").fetchall()
    }
    missing = sorted(set(rule.eval_sets) - stored)
    if missing:
        ctx.warnings.append(
            f"Decontamination: eval set(s) {', '.join(missing)} named by the plan are not "
            "stored; load them with `data ingest FILE --kind eval-items`."
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


def _system_checked(rows: ir.Table, fresh_batches: list[str]) -> ir.Table:
    """Rows with their logged system message redacted again outside ``fresh_batches``."""
    stale = ~rows.batch_id.isin(fresh_batches) if fresh_batches else ibis.literal(True)
    return rows.mutate(system=ibis.ifelse(stale, quality.redacted(rows.system), rows.system))


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


# -- carrying the parent version forward ------------------------------------------------------

_CARRIED = "fw_cycle_carried"
_REFERENCE = "fw_cycle_reference"
_CARRY_ROWS = "fw_cycle_carry_rows"
_POOL = "fw_cycle_pool"


@dataclass(frozen=True)
class ParentVersion:
    """The version a cycle's dataset starts from: the newest of the plan's previous cycle."""

    version_id: str
    cycle: int
    rows: int
    filters: list[dict[str, Any]]
    eval_items: str | None
    pii_detectors: str | None = None  # the detectors its texts were checked with


def _parent_version(
    con: duckdb.DuckDBPyConnection, plan_id: str, cycle: int
) -> ParentVersion | None:
    found = con.execute(
        "SELECT version_id, cycle, rows, lineage FROM dataset_versions"
        " WHERE plan_id = ? AND cycle < ? ORDER BY cycle DESC, number DESC LIMIT 1",
        [plan_id, cycle],
    ).fetchone()
    if found is None:
        return None
    lineage = json.loads(found[3])
    return ParentVersion(
        str(found[0]),
        int(found[1]),
        int(found[2]),
        list(lineage.get("filters", [])),
        lineage.get("eval_items"),
        lineage.get("pii_detectors"),
    )


def fresh_batches(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Batches today's PII detectors redacted at ingest: their texts need no second look."""
    return [
        str(r[0])
        for r in con.execute(
            "SELECT batch_id FROM ingest_batches WHERE pii_detectors = ? ORDER BY batch_id",
            [DETECTORS_FINGERPRINT],
        ).fetchall()
    ]


def _eval_items_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """md5 of the stored eval items' texts: decontamination of carried rows runs again when
    it changes."""
    found = con.execute(
        "SELECT md5(coalesce(string_agg(md5(eval_set || chr(31) || prompt || chr(31)"
        " || coalesce(reference, '')), ',' ORDER BY eval_set, prompt, reference), ''))"
        " FROM eval_items"
    ).fetchone()
    return str(found[0]) if found else ""


def _row_columns(plan: Plan) -> str:
    """The select list of a cycle row (CYCLE_ROW_SCHEMA) over the interactions' columns."""
    return ", ".join(
        f"{_cell_sql(plan)} AS cell_key"
        if c == "cell_key"
        else ("metadata::VARCHAR AS metadata" if c == "metadata" else c)
        for c in _COLUMNS
    )


def _events() -> ir.Table:
    return ibis.table(CONSENT_EVENT_COLUMNS, name="consent_events")


_CARRY_EXTRA = {
    "fw_origin_cycle": "int64",
    "fw_origin_version": "string",
    "fw_split": "string",
    "fw_parent_md5": "string",
}


def _carry(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    plan_id: str,
    rules: list[tuple[Any, str]],
    parent: ParentVersion | None,
    freeze: datetime,
    keep: str,
    fresh: list[str],
) -> Counted:
    """Stage 0: the parent version's rows that may still be used, into ``_CARRIED``.

    Each is checked again: its interaction is still stored (erasure and retention delete
    them), its user's training consent (a withdrawal since removes it), the plan's raw-text
    retention at this cycle's data freeze, every row rule, duplicate rule or decontamination
    that is not the one the parent ran (a rule the PM tightened applies to old rows too), and
    for a synthetic row that its item is still valid. PII is checked again as for new rows.
    Removed rows go to ``_REMOVED`` at position 0 with their reason."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_REMOVED} (interaction_id VARCHAR, user_id VARCHAR,"
        " position INTEGER, stage VARCHAR, rule VARCHAR, detail VARCHAR)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_CARRIED} (row_key VARCHAR, source VARCHAR,"
        " interaction_id VARCHAR, user_id VARCHAR, batch_id VARCHAR, cell_key VARCHAR,"
        " system VARCHAR, prompt VARCHAR, response VARCHAR, ts TIMESTAMPTZ, rating INTEGER,"
        " origin_cycle INTEGER, origin_version VARCHAR, split VARCHAR, text_md5 VARCHAR,"
        " fw_changed BOOLEAN)"
    )
    _pool(con, plan_id)
    if parent is None:
        return Counted(0, 0, "no parent version", {"parent_version": None})
    label = parent.version_id
    stored = _count(
        con, "SELECT count(*) FROM dataset_version_members WHERE version_id = ?", [label]
    )
    # A view, not a copy: the checks read a few columns of it each, and only the rows that
    # pass are copied, once.
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {_CARRY_ROWS} AS SELECT {_row_columns(plan)},"
        " fw_origin_cycle, fw_origin_version, fw_split, fw_parent_md5 FROM (SELECT i.*,"
        " d.origin_cycle AS fw_origin_cycle, d.origin_version AS fw_origin_version,"
        " d.split AS fw_split, d.text_md5 AS fw_parent_md5 FROM interactions i JOIN (SELECT"
        " interaction_id AS fw_id, origin_cycle, origin_version, split, text_md5 FROM"
        f" dataset_version_members WHERE version_id = {sql_string(label)}"
        " AND source = 'production') d"
        " ON i.interaction_id = d.fw_id)"
    )

    def remove(sql: str, rule: str, params: Any = ()) -> None:
        """Record the rows ``sql`` yields (interaction_id, user_id, why) as removed."""
        con.execute(
            f"INSERT INTO {_REMOVED} SELECT r.interaction_id, coalesce(r.user_id, ''), 0,"
            f" 'carried', {sql_string(rule)}, {sql_string(carried_prefix(label))}"
            f" || r.fw_why FROM ({sql}) r",
            params,
        )

    remove(
        "SELECT interaction_id, user_id, 'the interaction is no longer stored (deleted at"
        " retention)' AS fw_why FROM dataset_version_members WHERE version_id = $v AND source ="
        " 'production' AND interaction_id NOT IN (SELECT interaction_id FROM interactions)",
        "stored",
        {"v": label},
    )
    schema = ibis.schema({**dict(quality.CYCLE_ROW_SCHEMA.items()), **_CARRY_EXTRA})
    rows = ibis.table(schema, name=_CARRY_ROWS)
    removed = ibis.table({"interaction_id": "string"}, name=_REMOVED)

    def alive() -> ir.Table:
        return rows.anti_join(removed, "interaction_id")

    # Consent: the per-user rule (ts ≥ the grant that still counts) finds the few rows that
    # lost it; consent_stage words why, as for the window's rows.
    # (The few rows are found by id and time first; only they are read whole.)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE fw_carry_unconsented AS SELECT * FROM {_CARRY_ROWS}"
        f" WHERE interaction_id IN (SELECT c.interaction_id FROM {_CARRY_ROWS} c"
        f" LEFT JOIN ({consented_since_sql()}) g USING (user_id)"
        " WHERE g.since IS NULL OR c.ts < g.since)",
        {"scope": "training"},
    )
    verdict = consent_stage(ibis.table(schema, name="fw_carry_unconsented"), _events())
    remove(
        f"SELECT interaction_id, user_id, fw_drop AS fw_why FROM ({_sql(verdict)})"
        " WHERE fw_drop IS NOT NULL",
        "consent",
    )
    con.execute("DROP TABLE fw_carry_unconsented")
    days = raw_text_retention_days(plan)
    remove(
        f"SELECT interaction_id, user_id, {sql_string(retention_reason(days))} AS fw_why"
        f" FROM {_CARRY_ROWS}"
        " WHERE ts < $freeze - to_days($days) AND interaction_id NOT IN"
        f" (SELECT interaction_id FROM {_REMOVED})",
        "retention",
        {"freeze": freeze, "days": days},
    )
    again = rules_to_recheck(
        rules, parent.filters, lambda: _eval_items_fingerprint(con), parent.eval_items
    )
    for rule in again:
        try:
            if rule.rule in {"exact_dedup", "near_dedup", "decontamination"}:
                ctx = _Context(con, plan, keep, [])
                verdict = STAGE_RUNNERS[rule.rule](ctx, alive(), rule)
            else:
                verdict = quality.rule_stage(alive(), rule)
        except ValueError as exc:
            raise CycleError(f"The plan's {rule.rule} filter cannot run: {exc}.") from None
        remove(
            f"SELECT interaction_id, user_id, fw_drop || {sql_string(RULE_CHANGED)} AS fw_why"
            f" FROM ({_sql(verdict)}) WHERE fw_drop IS NOT NULL",
            rule.rule,
        )
        con.execute(f"DROP TABLE IF EXISTS {_TOKENS}")
    # A carried text is the interaction's as it reads today, after the PII check. Interactions
    # are never rewritten, so where the parent's texts were checked by today's detectors (its
    # run, or its rows' batches at ingest: ``fresh``), its stored text is that text: the version
    # points at it and reads neither. Other rows are checked again; only texts that changed
    # are kept, to be stored. A logged system message is checked again in either case.
    rating = (
        "(coalesce(feedback = 'up', false))::INTEGER * 4 + coalesce(accepted, false)::INTEGER"
        " * 2 - coalesce(feedback = 'down', false)::INTEGER"
    )
    if parent.pii_detectors == DETECTORS_FINGERPRINT:
        fresh_rows: ir.Table | None = _system_checked(alive(), fresh)
        stale_rows: ir.Table | None = None
    else:
        fresh_rows = alive().filter(alive().batch_id.isin(fresh)) if fresh else None
        stale_rows = alive().filter(~alive().batch_id.isin(fresh)) if fresh else alive()
    if fresh_rows is not None:
        con.execute(
            f"INSERT INTO {_CARRIED} SELECT interaction_id, 'production', interaction_id, user_id,"
            f" batch_id, cell_key, system, NULL, NULL, ts, {rating}, fw_origin_cycle,"
            f" fw_origin_version, fw_split, fw_parent_md5, false FROM ({_sql(fresh_rows)})"
        )
    if stale_rows is not None:
        con.execute(
            f"INSERT INTO {_CARRIED} SELECT interaction_id, 'production', interaction_id, user_id,"
            " batch_id, cell_key, system, CASE WHEN fw_new THEN prompt END,"
            f" CASE WHEN fw_new THEN response END, ts, {rating}, fw_origin_cycle,"
            " fw_origin_version, fw_split, fw_md5, fw_changed FROM (SELECT *,"
            " fw_md5 IS DISTINCT FROM fw_parent_md5 AS fw_new FROM (SELECT *,"
            " md5(prompt || chr(31) || response) AS fw_md5"
            f" FROM ({_sql(_pii_stage(stale_rows, fresh))})))"
        )
    redacted_again = _count(con, f"SELECT count(*) FROM {_CARRIED} WHERE fw_changed")
    # Synthetic rows: carried while their item is still a valid example of the plan.
    remove(
        "SELECT row_key AS interaction_id, NULL AS user_id, 'its synthetic item is no longer"
        " a valid example (deleted or regenerated)' AS fw_why FROM dataset_version_members"
        f" WHERE version_id = $v AND source = 'synthetic' AND row_key NOT IN"
        f" (SELECT row_key FROM {_POOL})",
        "synthetic item",
        {"v": label},
    )
    con.execute(
        f"INSERT INTO {_CARRIED} SELECT d.row_key, 'synthetic', NULL, NULL, NULL, p.cell_key,"
        " NULL, p.prompt, p.response, NULL, NULL, d.origin_cycle, d.origin_version, d.split,"
        " md5(p.prompt || chr(31) || p.response), false FROM dataset_version_members d"
        f" JOIN {_POOL} p"
        " USING (row_key) WHERE d.version_id = $v AND d.source = 'synthetic'",
        {"v": label},
    )
    con.execute(f"DROP VIEW IF EXISTS {_CARRY_ROWS}")
    by_rule = {
        str(rule): int(n)
        for rule, n in con.execute(
            f"SELECT rule, count(*) FROM {_REMOVED} WHERE position = 0 GROUP BY rule ORDER BY rule"
        ).fetchall()
    }
    kept_production, kept_synthetic = con.execute(
        f"SELECT count(*) FILTER (WHERE source = 'production'),"
        f" count(*) FILTER (WHERE source = 'synthetic') FROM {_CARRIED}"
    ).fetchone() or (0, 0)
    erased = max(0, parent.rows - stored)
    out = int(kept_production) + int(kept_synthetic)
    return Counted(
        parent.rows,
        out,
        f"from {label}",
        {
            "parent_version": label,
            "parent_rows": parent.rows,
            "production": int(kept_production),
            "synthetic": int(kept_synthetic),
            "erased": erased,
            "removed_by_rule": by_rule,
            "texts_redacted_again": redacted_again,
        },
    )


def _pool(con: duckdb.DuckDBPyConnection, plan_id: str) -> None:
    """``_POOL``: the plan's valid synthetic examples, keyed as dataset rows key them."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_POOL} AS SELECT 'syn:' || spec_hash || ':'"
        " || md5(cell_key)[1:8] || ':' || item_index::VARCHAR AS row_key, cell_key,"
        " question AS prompt, answer AS response FROM generated_examples"
        " WHERE plan_id = ? AND status = 'valid' AND coalesce(question, '') <> ''"
        " AND coalesce(answer, '') <> ''",
        [plan_id],
    )


def _reference_sketches(con: duckdb.DuckDBPyConnection, threshold: float) -> None:
    """``_REFERENCE`` (key, exact_key, s, sig, band_params): the carried rows' sketches, read
    from the store; a carried row without one under this engine (its text was redacted again,
    or it was written before sketches) is sketched now, and kept for the cycles after."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_REFERENCE} AS SELECT c.row_key AS key, k.exact_key,"
        " k.shingles AS s, k.signatures AS sig, k.band_params, c.text_md5 AS fw_md5"
        f" FROM {_CARRIED} c LEFT JOIN (SELECT * FROM dataset_row_sketches"
        " WHERE engine = $engine) k ON k.row_key = c.row_key AND k.text_md5 = c.text_md5",
        {"engine": quality.SKETCH_ENGINE},
    )
    missing = (
        "SELECT c.row_key, c.text_md5, c.interaction_id, c.user_id,"
        " coalesce(c.prompt, t.prompt) AS prompt, coalesce(c.response, t.response) AS response"
        f" FROM (SELECT * FROM {_CARRIED} WHERE row_key IN (SELECT key FROM {_REFERENCE}"
        " WHERE exact_key IS NULL)) c LEFT JOIN dataset_texts t ON t.row_key = c.row_key"
        " AND t.text_md5 = c.text_md5"
    )
    if _store_sketches(con, missing, {}, threshold):
        con.execute(
            f"UPDATE {_REFERENCE} r SET exact_key = k.exact_key, s = k.shingles,"
            " sig = k.signatures, band_params = k.band_params FROM dataset_row_sketches k"
            " WHERE r.exact_key IS NULL AND k.row_key = r.key AND k.text_md5 = r.fw_md5"
            " AND k.engine = $engine",
            {"engine": quality.SKETCH_ENGINE},
        )


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
    force: bool = False,
) -> CycleResult:
    """Run a cycle of the plan's newest version and build its dataset version, in one
    transaction (a failing stage leaves the store as it was).

    The dataset starts from the parent version (the newest of the plan's previous cycle): its
    rows are checked again and carried, this cycle's new rows are deduplicated against them,
    and the plan's cap retires rows by its retirement policy. A cycle on production data with
    fewer new rows than ``cadence.min_new_examples`` builds no version (ThinCycleError) unless
    ``force``.

    Raises CycleError when the privacy review is not approved (for a cycle on production data:
    the privacy reviewer's sign-off of this exact version), the cycle is not in the plan, a rule
    cannot be evaluated, or no row would be left; AccessError, before anything is read or
    written, when ``user`` may not run cycles. The run is recorded under ``user``'s name.
    The whole run holds the store (``Store.hold``): a restore waits for it, or refuses.
    """
    require(user, "cycle.run")
    with store.hold():
        return _run_cycle(store, plan_id, cycle, user=user, progress=progress, force=force)


def _run_cycle(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    user: User,
    progress: Progress | None,
    force: bool,
) -> CycleResult:
    """The body of ``run_cycle``, run while it holds the store: its named steps in order."""
    plan, plan_version = load_plan(store, plan_id)
    _check_can_run(store, plan, plan_id, plan_version, cycle)
    start, end = cycle_window(plan, cycle)
    report = progress or (lambda fraction, message: None)
    rules = pipeline_rules(plan)
    started = action_clock.now()
    run_id = started.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    warnings: list[str] = []

    with store.transaction() as con:
        con.execute("SET TimeZone = 'UTC'")
        quality.install_stage_functions(con)
        bodies = _SqlBodies(
            _Context(con, plan, keep_rule(rules), warnings),
            plan_id,
            cycle,
            start,
            end,
            _parent_version(con, plan_id, cycle),
            fresh_batches(con),  # batches today's PII detectors redacted: read once
        )
        funnel = run_table_stages(bodies, plan, progress=report, warnings=warnings)
        stages = funnel.stages
        new_rows = funnel.new_rows if start is not None else 0
        if start is not None:
            _check_enough_new_rows(plan, plan_id, cycle, new_rows, force, warnings)

        position = len(rules) + 3
        total_steps = position + STEPS_AFTER_FILTERS
        report(position / total_steps, "Mixing with the synthetic data…")
        clock = time.perf_counter()
        mix = _mix(
            con, plan, plan_id, cycle, new_rows, stages[0], start is not None, position, warnings
        )
        mix.seconds = time.perf_counter() - clock
        stages.append(mix)
        if mix.rows_out == 0:
            raise CycleError(
                f"Cycle {cycle} of plan '{plan_id}' would build an empty dataset: "
                + "; ".join(f"{s.name} {s.rows_in}→{s.rows_out}" for s in stages)
                + ". Load consented interactions for its window or generate synthetic data."
            )

        report((position + 1) / total_steps, "Splitting train and validation…")
        stages.append(_split_stage(con, plan, position + 1, mix.rows_out))

        report((position + 2) / total_steps, "Writing the dataset version…")
        version_id, sha, created = _write_version(
            con,
            plan,
            plan_id,
            plan_version,
            cycle,
            run_id,
            user.name,
            stages,
            start,
            end,
            bodies.parent,
        )
        result = CycleResult(
            run_id,
            plan_id,
            plan_version,
            cycle,
            start,
            end,
            stages,
            version_id,
            sha,
            mix.rows_out,
            created,
            warnings,
        )
        _record_run(con, result, started, user.name)
    report(1.0, f"Built {version_id}.")
    return result


@dataclass
class _SqlBodies:
    """The table stages in DuckDB SQL on the store (core.pipeline.run's ``StageBodies``): the
    rows a stage removes go to ``_REMOVED`` with its position, rule and reason; the rows alive
    are the window's less those removed (``_alive``)."""

    ctx: _Context
    plan_id: str
    cycle: int
    start: datetime | None
    end: datetime | None
    parent: ParentVersion | None
    fresh: list[str]

    def carry(self, rules: list[tuple[Any, str]], keep: Keep) -> Counted:
        """Stage 0: the parent version's rows, checked again at this cycle's data freeze; the
        survivors' sketches become the duplicate stages' reference."""
        ctx, plan = self.ctx, self.ctx.plan
        freeze = self.end or datetime.combine(
            plan_timeline(plan)[self.cycle - 1].data_freeze, day_time(0), UTC
        )
        carried = _carry(ctx.con, plan, self.plan_id, rules, self.parent, freeze, keep, self.fresh)
        if self.parent is not None:
            ctx.reference = _REFERENCE
            ctx.reference_label = self.parent.version_id
            _reference_sketches(ctx.con, _near_threshold(plan))
        return carried

    def window(self) -> Counted:
        """Stage 1: the interactions in the cycle's window, as a view (consent and the PII
        check read it once each, and a copy of every column cost more than both reads)."""
        start, end = self.start, self.end
        bounds = (
            f"ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'"
            if start is not None and end is not None
            else "false"
        )
        con = self.ctx.con
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW fw_cycle_window AS SELECT {_row_columns(self.ctx.plan)}"
            f" FROM interactions WHERE {bounds}"
        )
        in_window = _count(con, "SELECT count(*) FROM fw_cycle_window")
        return Counted(
            in_window,
            in_window,
            f"{start:%Y-%m-%d} ≤ ts < {end:%Y-%m-%d}" if start and end else "synthetic only",
            {
                "start": start.isoformat() if start else None,
                "end": end.isoformat() if end else None,
            },
        )

    def consent(self) -> int:
        """Stage 2: the window's rows without training consent, recorded as removed."""
        window = ibis.table(quality.CYCLE_ROW_SCHEMA, name="fw_cycle_window")
        verdict = consent_stage(window, _events())
        self.ctx.con.execute(
            f"INSERT INTO {_REMOVED} SELECT interaction_id, user_id,"
            " 2 AS position, 'consent' AS stage, 'training consent' AS rule, fw_drop AS detail"
            f" FROM ({_sql(verdict)}) WHERE fw_drop IS NOT NULL"
        )
        return _count(self.ctx.con, f"SELECT count(*) FROM {_REMOVED} WHERE position = 2")

    def pii_check(self) -> dict[str, Any]:
        """Stage 3: the rows consent let through into ``_ROWS``, their texts redacted again
        outside the batches today's detectors redacted at ingest."""
        con = self.ctx.con
        window = ibis.table(quality.CYCLE_ROW_SCHEMA, name="fw_cycle_window")
        kept = window.anti_join(
            ibis.table({"interaction_id": "string"}, name=_REMOVED), "interaction_id"
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_ROWS} AS {_sql(_pii_stage(kept, self.fresh))}")
        rechecked = _count(con, f"SELECT count(*) FROM {_ROWS} WHERE fw_changed")
        checked = _count(
            con,
            f"SELECT count(*) FROM {_ROWS} WHERE NOT list_contains(?::VARCHAR[], batch_id)",
            [self.fresh],
        )
        return {"rows_checked_again": checked, "texts_redacted_again": rechecked}

    def filter(self, position: int, rule: Any, keep: Keep) -> int:
        """Stage 4 onwards: one of the plan's filters over the rows still alive; the rows it
        drops recorded as removed with its reason."""
        con = self.ctx.con
        verdict = STAGE_RUNNERS[rule.rule](self.ctx, _alive(), rule)
        before = _count(con, f"SELECT count(*) FROM {_REMOVED}")
        con.execute(
            f"INSERT INTO {_REMOVED} SELECT interaction_id, user_id, ?, ?, ?, fw_drop"
            f" FROM ({_sql(verdict)}) WHERE fw_drop IS NOT NULL",
            [position, rule.rule, describe_rule(rule)],
        )
        return _count(con, f"SELECT count(*) FROM {_REMOVED}") - before


def _check_enough_new_rows(
    plan: Plan, plan_id: str, cycle: int, new_rows: int, force: bool, warnings: list[str]
) -> None:
    """Raise ThinCycleError when the filters left fewer new rows than the plan's
    min_new_examples, unless forced (then say so in the warnings)."""
    if new_rows >= plan.cadence.min_new_examples:
        return
    message = (
        f"Cycle {cycle} of plan '{plan_id}' has {new_rows} new production row(s) after "
        f"its filters, fewer than the plan's min_new_examples "
        f"({plan.cadence.min_new_examples}): the plan does not count this as enough new "
        "data to retrain."
    )
    if not force:
        raise ThinCycleError(
            message + " No version was built; run it again with --force (the Cycles "
            "page: 'Build anyway') to build one regardless."
        )
    warnings.append(message + " Built anyway (forced).")


def _split_stage(
    con: duckdb.DuckDBPyConnection, plan: Plan, position: int, total: int
) -> StageRecord:
    """The train/validation split, stratified by cell (``_split``)."""
    clock = time.perf_counter()
    share = plan.cadence.validation_share
    validation = _split(con, share)
    return StageRecord(
        position,
        "split",
        f"stratified by cell, validation_share={share}",
        {"validation_share": share, "validation": validation},
        "plan",
        total,
        total,
        0,
        seconds=time.perf_counter() - clock,
    )


def _record_run(
    con: duckdb.DuckDBPyConnection, result: CycleResult, started: datetime, who: str
) -> None:
    """The run, its stages and removed rows, and the audit entry; the temp tables dropped."""
    con.execute(
        "INSERT INTO cycle_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            result.run_id,
            result.plan_id,
            result.plan_version,
            result.cycle,
            result.window_start,
            result.window_end,
            started,
            action_clock.now(),
            who,
            result.dataset_version,
            json.dumps(result.warnings),
        ],
    )
    con.executemany(
        "INSERT INTO cycle_stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                result.run_id,
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
            for s in result.stages
        ],
    )
    con.execute(
        "INSERT INTO cycle_removed_rows SELECT ?, interaction_id, user_id, position, stage,"
        f" rule, detail FROM {_REMOVED}",
        [result.run_id],
    )
    record_audit(
        con,
        actor=who,
        action="cycle_run",
        target=f"{result.plan_id}:cycle{result.cycle}",
        detail={
            "run_id": result.run_id,
            "dataset_version": result.dataset_version,
            "new_version": result.new_version,
            "rows": result.rows,
            "stages": {s.name: [s.rows_in, s.rows_out] for s in result.stages},
        },
    )
    for temp in (_ROWS, _REMOVED, _DATASET, _TOKENS, _CARRIED, _REFERENCE, _POOL):
        con.execute(f"DROP TABLE IF EXISTS {temp}")
    con.execute("DROP VIEW IF EXISTS fw_cycle_window")


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


_NEWEST = "origin_cycle DESC, ts DESC NULLS LAST, md5(row_key), row_key"


def _retire_order(policy: str) -> str:
    """SQL ORDER BY that puts the rows to keep first under the retirement ``policy``: the
    rows past the cap at the end are retired. Reads ``fw_cell_rank`` (``_ranked``)."""
    if policy == "lowest_rated_first":
        return f"coalesce(rating, 0) DESC, {_NEWEST}"
    if policy == "cell_balance":
        return "fw_cell_rank, md5(row_key), row_key"
    return _NEWEST


def _ranked(source: str) -> str:
    """``source`` plus ``fw_cell_rank``: each row's rank in its cell, newest first (so that
    keeping rows by rank takes the cells in turn)."""
    return (
        f"SELECT *, row_number() OVER (PARTITION BY cell_key ORDER BY {_NEWEST})"
        f" AS fw_cell_rank FROM ({source})"
    )


def _mix(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    plan_id: str,
    cycle: int,
    production: int,
    carried: StageRecord,
    uses_production: bool,
    position: int,
    warnings: list[str],
) -> StageRecord:
    """The carried rows plus the new production rows, with synthetic rows topped up to the
    plan's ratio; past the cap, rows retire by the plan's retirement policy.

    Carried synthetic rows stay however many production rows there are; new ones are added
    while the dataset holds fewer than ``original_to_new_ratio`` per production row. When the
    dataset would exceed ``max_dataset_size``, it keeps ``cap / (1 + ratio)`` production rows
    and fills the rest with synthetic ones, and the rows past those retire (production and
    synthetic apart) oldest first, lowest rated first, or keeping each cell balanced; each
    retired row is recorded with its reason."""
    cadence = plan.cadence
    ratio, cap, policy = cadence.original_to_new_ratio, cadence.max_dataset_size, cadence.retirement
    carried_production = int(carried.params.get("production", 0))
    carried_synthetic = int(carried.params.get("synthetic", 0))
    pool = _count(con, f"SELECT count(*) FROM {_POOL}")
    # Production candidates: the carried rows and this cycle's new ones, in one table.
    con.execute(
        # A view: the retirement order reads a few columns of every candidate, and only the
        # rows kept are copied, into the dataset.
        "CREATE OR REPLACE TEMP VIEW fw_cycle_candidates AS"
        f" SELECT * EXCLUDE (split), split AS fw_split FROM {_CARRIED} WHERE source = 'production'"
        " UNION ALL BY NAME SELECT interaction_id AS row_key, 'production' AS source,"
        " interaction_id, user_id, batch_id, cell_key, system, prompt, response, ts,"
        " (coalesce(feedback = 'up', false))::INTEGER * 4 + coalesce(accepted, false)::INTEGER"
        " * 2 - coalesce(feedback = 'down', false)::INTEGER AS rating,"
        f" {int(cycle)} AS origin_cycle, NULL::VARCHAR AS origin_version,"
        " NULL::VARCHAR AS fw_split, md5(prompt || chr(31) || response) AS text_md5"
        f" FROM ({_sql(_alive())})"
    )
    total_production = carried_production + production
    if uses_production:
        keep_production = total_production
        if total_production + round(ratio * total_production) > cap:
            keep_production = min(total_production, int(cap // (1 + ratio)))
        wanted = min(max(carried_synthetic, round(ratio * keep_production)), cap - keep_production)
    else:
        keep_production, wanted = 0, cap
    synthetic = min(wanted, pool)
    if uses_production and synthetic < round(ratio * keep_production):
        warnings.append(
            f"Only {pool} synthetic examples are stored; the plan's ratio "
            f"({ratio:g} per production row) asks for {round(ratio * keep_production)}. "
            "Generate more on the Synthetic data page."
        )
    if not uses_production and pool == 0:
        warnings.append(
            f"Cycle {cycle} trains on synthetic data only and none is stored: run `generate`."
        )
    order = _retire_order(policy)
    shown = f"({label(policy).lower()})"
    why_cap = (
        f"retired {shown}: past max_dataset_size={cap} at {ratio:g} synthetic per production row"
    )
    retiring = keep_production < total_production
    if retiring:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_cycle_keep AS SELECT row_key,"
            f" row_number() OVER (ORDER BY {order}) AS fw_pick"
            f" FROM ({_ranked('SELECT * FROM fw_cycle_candidates')})"
        )
        why_off = "this cycle of the plan does not train on production data"
        con.execute(
            f"INSERT INTO {_REMOVED} SELECT c.row_key, c.user_id, $position, 'mix', $rule,"
            " CASE WHEN $uses THEN $why ELSE $off END FROM fw_cycle_candidates c"
            " JOIN fw_cycle_keep k USING (row_key) WHERE k.fw_pick > $keep",
            {
                "rule": f"max_dataset_size={cap}",
                "position": position,
                "uses": uses_production,
                "why": why_cap,
                "off": why_off,
                "keep": keep_production,
            },
        )
    # Under the cap every candidate is kept: no order to compute over all of them.
    kept = (
        " WHERE row_key IN (SELECT row_key FROM fw_cycle_keep WHERE fw_pick <= $keep)"
        if retiring
        else ""
    )
    # Synthetic rows: the carried ones (retired past the cap by the same policy), then new
    # items of the pool in a stratified order, so that each cell keeps its share.
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_cycle_synthetic AS SELECT * EXCLUDE (fw_cell_rank),"
        f" row_number() OVER (ORDER BY {order}) AS fw_pick FROM ("
        + _ranked(
            f"SELECT * EXCLUDE (split), split AS fw_split FROM {_CARRIED}"
            " WHERE source = 'synthetic'"
        )
        + ")"
    )
    con.execute(
        f"INSERT INTO {_REMOVED} SELECT row_key, '', $position, 'mix', $rule, $why"
        " FROM fw_cycle_synthetic WHERE fw_pick > $keep",
        {
            "rule": f"max_dataset_size={cap}",
            "position": position,
            "why": why_cap,
            "keep": synthetic,
        },
    )
    retired_synthetic = max(0, carried_synthetic - synthetic)
    added = max(0, synthetic - carried_synthetic)
    pool_table = ibis.table(
        {"row_key": "string", "cell_key": "string", "prompt": "string", "response": "string"},
        name=_POOL,
    )
    fresh = pool_table.anti_join(ibis.table({"row_key": "string"}, name=_CARRIED), "row_key")
    spread = _proportional_order(fresh, fresh.row_key)
    picked = spread.mutate(
        fw_pick=ibis.row_number().over(ibis.window(order_by=[spread.fw_rank, spread.fw_sort]))
    ).filter(ibis._.fw_pick < added)
    # Every synthetic row trains under the student's system message; a production row under
    # it too, or under the text it logged (goal.production_system), which is kept apart as
    # logged_system so that the version can say how many rows logged another.
    # A carried row keeps its split; the new rows' is set by _split. The canonical order
    # (sort_key) is the md5 of the row key.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_DATASET} AS SELECT * EXCLUDE (fw_split),"
        " fw_split AS split, md5(row_key) AS sort_key FROM ("
        "SELECT row_key, 'production' AS source, interaction_id, user_id, batch_id, cell_key,"
        " CASE WHEN $replace THEN $system::VARCHAR ELSE system END AS system, prompt, response,"
        " system AS logged_system, origin_cycle, origin_version, fw_split, text_md5"
        f" FROM fw_cycle_candidates{kept}"
        " UNION ALL SELECT row_key, 'synthetic', NULL, NULL, NULL, cell_key, $system::VARCHAR,"
        " prompt, response, NULL, origin_cycle, origin_version, fw_split, text_md5"
        " FROM fw_cycle_synthetic WHERE fw_pick <= $synthetic"
        " UNION ALL SELECT row_key, 'synthetic', NULL, NULL, NULL, cell_key, $system::VARCHAR,"
        " prompt, response, NULL, $cycle, NULL, NULL, md5(prompt || chr(31) || response)"
        f" FROM ({_sql(picked)}))",
        {
            **({"keep": keep_production} if retiring else {}),
            "synthetic": synthetic,
            "cycle": cycle,
            "system": plan.goal.system_message,
            "replace": plan.goal.production_system == "plan",
        },
    )
    con.execute("DROP VIEW IF EXISTS fw_cycle_candidates")
    for temp in ("fw_cycle_keep", "fw_cycle_synthetic"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")
    retired = total_production - keep_production + retired_synthetic
    rows_in = production + carried.rows_out
    return StageRecord(
        position,
        "mix",
        f"original_to_new_ratio={ratio:g}, max_dataset_size={cap}, retirement={policy}",
        {
            "original_to_new_ratio": ratio,
            "max_dataset_size": cap,
            "retirement": policy,
            "production_rows": keep_production,
            "new_production_rows": production,
            "carried_production_rows": carried_production,
            "carried_synthetic_rows": carried_synthetic,
            "synthetic_rows": synthetic,
            "synthetic_added": added,
            "synthetic_stored": pool,
            "retired": retired,
        },
        "plan",
        rows_in,
        keep_production + synthetic,
        retired,
        added,
    )


def _split(con: duckdb.DuckDBPyConnection, share: float) -> int:
    """Carried rows keep their split; each cell's new rows (by md5 of the key) go to
    validation until the cell holds round(n × share) validation rows. (A row never moves
    between train and validation from one version to the next.) Only the new rows are
    written."""
    con.execute(
        f"UPDATE {_DATASET} SET split = f.split FROM (WITH cells AS (SELECT cell_key,"
        " floor(count(*) * $share + 0.5) - count(*) FILTER (WHERE split = 'validation')"
        f" AS wanted FROM {_DATASET} GROUP BY cell_key), fresh AS (SELECT row_key, cell_key,"
        " row_number() OVER (PARTITION BY cell_key ORDER BY sort_key, row_key) AS n"
        f" FROM {_DATASET} WHERE split IS NULL) SELECT row_key, CASE WHEN fresh.n"
        " <= cells.wanted THEN 'validation' ELSE 'train' END AS split FROM fresh"
        f" JOIN cells USING (cell_key)) f WHERE {_DATASET}.row_key = f.row_key",
        {"share": share},
    )
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
    parent: ParentVersion | None,
) -> tuple[str, str, bool]:
    """Store the dataset as a new version, or find the identical one; (id, sha256, new).

    With a parent, the version is stored as a delta over the parent's base (the parent when
    it is stored whole): only the rows it holds otherwise than the base are written, with the
    base's rows it does not hold as drops; past half its rows, it is stored whole. Rows new
    in this version are sketched for the cycles that carry them."""
    base = None
    if parent is not None:
        found = con.execute(
            "SELECT base_version FROM dataset_version_bases WHERE version_id = ?",
            [parent.version_id],
        ).fetchone()
        base = str(found[0]) if found else parent.version_id
    # Each row beside the base's member of its key: held as it is there, it is inherited
    # (its line digest too); any other row is the version's own, and its line is written.
    # (Source, interaction, user and sort key follow from the row key.)
    same = " AND ".join(
        f"d.{c} IS NOT DISTINCT FROM b.{c}"
        for c in ("cell_key", "split", "system", "origin_cycle", "origin_version", "text_md5")
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_version_rows AS SELECT d.row_key, d.sort_key,"
        f" CASE WHEN b.line_sha IS NOT NULL AND {same} THEN b.line_sha END AS fw_base_line"
        f" FROM (SELECT row_key, sort_key, cell_key, split, system, coalesce(origin_cycle,"
        f" $cycle) AS origin_cycle, origin_version, text_md5 FROM {_DATASET}) d LEFT JOIN"
        " (SELECT row_key, cell_key, split, system, origin_cycle, origin_version, text_md5,"
        " line_sha FROM dataset_members WHERE version_id = $base) b USING (row_key)",
        {"cycle": cycle, "base": base},
    )
    # A carried row whose text the parent stored holds none here: it is read from there.
    line = line_sha_sql(
        "r.system", "coalesce(r.prompt, t.prompt)", "coalesce(r.response, t.response)"
    )
    rows = (
        "SELECT row_key, source, interaction_id, user_id, cell_key, split, system, sort_key,"
        " coalesce(origin_cycle, $cycle) AS origin_cycle, origin_version, text_md5, prompt,"
        f" response FROM {_DATASET} WHERE row_key IN (SELECT row_key FROM fw_version_rows"
        " WHERE fw_base_line IS {} NULL)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE fw_version_own AS SELECT r.*, {line} AS line_sha"
        f" FROM ({rows.format('')}) r LEFT JOIN dataset_texts t ON r.prompt IS NULL"
        " AND t.row_key = r.row_key AND t.text_md5 = r.text_md5",
        {"cycle": cycle},
    )
    sha = version_sha256(
        con,
        "(SELECT sort_key, row_key, line_sha FROM fw_version_own UNION ALL SELECT sort_key,"
        " row_key, fw_base_line FROM fw_version_rows WHERE fw_base_line IS NOT NULL)",
    )
    same_version = con.execute(
        "SELECT version_id FROM dataset_versions WHERE plan_id = ? AND cycle = ? AND sha256 = ?"
        " AND plan_version = ? ORDER BY number DESC LIMIT 1",
        [plan_id, cycle, sha, plan_version],
    ).fetchall()
    if same_version:
        _drop_version_temps(con)
        return str(same_version[0][0]), sha, False
    number = (
        _count(
            con,
            "SELECT count(*) FROM dataset_versions WHERE plan_id = ? AND cycle = ?",
            [plan_id, cycle],
        )
        + 1
    )
    version_id = f"ds-{plan_id}-c{cycle}-v{number}"
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
        "parent_version": parent.version_id if parent else None,
        "eval_items": _eval_items_fingerprint(con),
        "pii_detectors": DETECTORS_FINGERPRINT,
        "run_id": run_id,
    }
    composition = {
        "production": production,
        "synthetic": synthetic,
        "train": train,
        "validation": validation,
        "cells": cells,
        "by_origin": [
            {"source": str(source), "origin_cycle": int(origin), "rows": int(n)}
            for source, origin, n in con.execute(
                f"SELECT source, coalesce(origin_cycle, $cycle) AS o, count(*) FROM {_DATASET}"
                " GROUP BY ALL ORDER BY source, o",
                {"cycle": cycle},
            ).fetchall()
        ],
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
            action_clock.now(),
        ],
    )
    # Texts only where this (row, text) is not stored yet: an inherited row's text is.
    con.execute(
        "INSERT INTO dataset_texts SELECT row_key, text_md5, interaction_id, user_id, prompt,"
        " response FROM fw_version_own d WHERE prompt IS NOT NULL AND NOT EXISTS (SELECT 1"
        " FROM dataset_texts t WHERE t.row_key = d.row_key AND t.text_md5 = d.text_md5)"
    )
    own, inherited = con.execute(
        "SELECT (SELECT count(*) FROM fw_version_own),"
        " (SELECT count(*) FROM fw_version_rows WHERE fw_base_line IS NOT NULL)"
    ).fetchone() or (0, 0)
    base_rows = _count(con, "SELECT count(*) FROM dataset_members WHERE version_id = ?", [base])
    delta = base is not None and own + (base_rows - inherited) <= (own + inherited) // 2
    members = "SELECT * EXCLUDE (prompt, response) FROM fw_version_own"
    if not delta:
        members += (
            " UNION ALL SELECT d.* EXCLUDE (prompt, response), r.fw_base_line AS line_sha"
            f" FROM ({rows.format('NOT')}) d JOIN fw_version_rows r USING (row_key)"
        )
    con.execute(
        "INSERT INTO dataset_members BY NAME SELECT $v AS version_id, row_key, source,"
        " interaction_id, user_id, cell_key, split, system, sort_key, origin_cycle,"
        f" coalesce(origin_version, $v) AS origin_version, text_md5, line_sha FROM ({members})",
        {"v": version_id, **({} if delta else {"cycle": cycle})},
    )
    if delta:
        con.execute("INSERT INTO dataset_version_bases VALUES (?, ?)", [version_id, base])
        con.execute(
            "INSERT INTO dataset_member_drops SELECT $v, b.row_key, b.interaction_id"
            " FROM dataset_members b WHERE b.version_id = $base AND NOT EXISTS (SELECT 1"
            " FROM fw_version_rows r WHERE r.row_key = b.row_key AND r.fw_base_line IS NOT NULL)",
            {"v": version_id, "base": base},
        )
    # Sketched from the cycle's own rows that brought their text (new, or redacted again);
    # through dataset_rows each would be joined with every stored text.
    _store_sketches(
        con,
        "SELECT row_key, text_md5, interaction_id, user_id, prompt, response"
        " FROM fw_version_own d WHERE prompt IS NOT NULL AND NOT EXISTS (SELECT 1"
        " FROM dataset_row_sketches k WHERE k.row_key = d.row_key"
        " AND k.text_md5 = d.text_md5 AND k.engine = $engine)",
        {"engine": quality.SKETCH_ENGINE},
        _near_threshold(plan),
    )
    _drop_version_temps(con)
    return version_id, sha, True


def _drop_version_temps(con: duckdb.DuckDBPyConnection) -> None:
    for temp in ("fw_version_own", "fw_version_rows"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")


def _near_threshold(plan: Plan) -> float:
    """The near-duplicate threshold the plan's pipeline runs (its own rule, else the default)."""
    return float(next(r.threshold for r, _ in pipeline_rules(plan) if r.rule == "near_dedup"))


def sketch_version(con: duckdb.DuckDBPyConnection, version_id: str, threshold: float) -> None:
    """Store the sketch of each row of a version that has none yet (under this engine): the
    exact-duplicate key, the word 3-gram hashes and their LSH band signatures for the
    near-duplicate ``threshold``, which later cycles, carrying these rows, read to compare
    their new rows against instead of cutting and hashing the rows' texts again. Needs the
    macros of ``quality.install_stage_functions``."""
    # The rows this version added: those it carries were sketched when first written, or
    # when the cycle read them (a text redacted again).
    texts = (
        "SELECT * FROM dataset_rows d WHERE version_id = $v AND origin_version = $v"
        " AND NOT EXISTS (SELECT 1 FROM dataset_row_sketches k WHERE k.row_key = d.row_key"
        " AND k.text_md5 = d.text_md5 AND k.engine = $engine)"
    )
    _store_sketches(con, texts, {"v": version_id, "engine": quality.SKETCH_ENGINE}, threshold)


def _store_sketches(
    con: duckdb.DuckDBPyConnection, rows: str, params: dict[str, Any], threshold: float
) -> int:
    """Sketch the rows of query ``rows`` (bound with ``params``) into dataset_row_sketches:
    exact key, shingles, and band signatures for ``threshold``; how many were sketched."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_sketch AS SELECT * EXCLUDE (shingles), shingles AS s"
        f" FROM ({quality.sketch_sql(rows)})",
        params,
    )
    sketched = _count(con, "SELECT count(*) FROM fw_sketch")
    try:
        if not sketched:
            return 0
        quality.band_signature_lists(con, "fw_sketch", "fw_sketch_sig", threshold=threshold)
        con.execute(
            "INSERT INTO dataset_row_sketches BY NAME SELECT k.* EXCLUDE (s), k.s AS shingles,"
            " $params AS band_params, g.sig AS signatures FROM fw_sketch k"
            " LEFT JOIN fw_sketch_sig g ON g.id = k.rowid",
            {"params": quality.band_params(threshold)},
        )
    finally:
        con.execute("DROP TABLE IF EXISTS fw_sketch_sig")
        con.execute("DROP TABLE IF EXISTS fw_sketch")
    return sketched


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
