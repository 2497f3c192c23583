"""The cycle's portable table stages, runnable on any Ibis backend — DuckDB here, Spark (or
BigQuery, Snowflake) where the logs live.

Consent, the row rules that need no engine-specific function (feedback, acceptance, length
bounds, a condition on a column) and exact deduplication are pure Ibis expressions, so the same
expression runs on every engine and keeps the same rows. The rest of the cycle (PII re-check,
language, code parsing, MinHash near-duplicates, decontamination) uses DuckDB functions and runs
where the store is.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import duckdb
import ibis
import ibis.expr.types as ir
import pyarrow as pa

from core import quality
from core.cycles import consent_stage, pipeline_rules
from core.errors import CycleError
from core.plan import Plan

__all__ = [
    "CONSENT_SCHEMA",
    "PORTABLE_RULES",
    "portable_stages",
    "run_on_duckdb",
    "run_on_spark",
    "spark_session",
]

PORTABLE_RULES = frozenset(
    {"positive_feedback", "accepted", "positive_or_accepted", "length_bounds", "exact_dedup"}
)
"""Quality-filter rules whose stage is a pure Ibis expression."""

CONSENT_SCHEMA = ibis.schema(
    {
        "user_id": "string",
        "ts": "timestamp('UTC')",
        "scope": "string",
        "action": "string",
        "policy_version": "string",
        "source": "string",
    }
)
"""The consent ledger's columns."""


def _kept(rows: ir.Table) -> ir.Table:
    return rows.filter(rows.fw_drop.isnull()).drop("fw_drop")


def portable_stages(
    plan: Plan, rows: ir.Table, events: ir.Table
) -> tuple[list[tuple[str, ir.Table]], list[str]]:
    """The consent stage then the plan's portable filters, in the order ``cycle run`` uses.

    Returns each stage's name with the rows it keeps, and the rules left out because they need
    DuckDB (they run in ``cycle run`` on the store).
    """
    stages: list[tuple[str, ir.Table]] = [("consent", _kept(consent_stage(rows, events)))]
    skipped: list[str] = []
    current = stages[0][1]
    rules = [rule for rule, _ in pipeline_rules(plan)]
    near = next((r for r in rules if r.rule == "near_dedup"), None)
    keep: Literal["earliest", "best_rated"] = near.keep if near is not None else "earliest"
    for rule in rules:
        kind = rule.rule
        if kind == "exact_dedup":
            current = _kept(quality.exact_duplicate_stage(current, keep))
        elif kind in PORTABLE_RULES or (
            kind == "field_condition" and getattr(rule, "field", "") in current.columns
        ):
            current = _kept(quality.rule_stage(current, rule))
        else:
            skipped.append(kind)
            continue
        stages.append((kind, current))
    return stages, skipped


def _tables(rows: str, events: str) -> tuple[ir.Table, ir.Table]:
    return ibis.table(quality.CYCLE_ROW_SCHEMA, name=rows), ibis.table(CONSENT_SCHEMA, name=events)


def run_on_duckdb(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    rows: str = "cycle_rows",
    events: str = "consent_events",
) -> tuple[dict[str, pa.Table], list[str]]:
    """Run the portable stages in DuckDB over its tables ``rows`` (the cycle's rows,
    ``quality.CYCLE_ROW_SCHEMA``) and ``events`` (the consent ledger): each stage's kept rows
    as Arrow, and the rules left out."""
    stages, skipped = portable_stages(plan, *_tables(rows, events))
    out = {
        name: con.sql(str(ibis.to_sql(expr, dialect="duckdb"))).to_arrow_table()
        for name, expr in stages
    }
    return out, skipped


def run_on_spark(
    session: Any, plan: Plan, rows: str = "cycle_rows", events: str = "consent_events"
) -> tuple[dict[str, pa.Table], list[str]]:
    """The same stages on Spark, over the session's tables or temporary views ``rows`` and
    ``events``, through Ibis' PySpark backend."""
    backend = ibis.pyspark.connect(session)
    try:
        row_table, event_table = backend.table(rows), backend.table(events)
    except Exception as exc:  # Spark's own "table or view not found"
        raise CycleError(f"Spark has no table {rows!r} or {events!r}: {exc}") from None
    stages, skipped = portable_stages(plan, row_table, event_table)
    return {name: backend.to_pyarrow(expr) for name, expr in stages}, skipped


def spark_session(app_name: str = "flywheel") -> Any:
    """A local Spark session bound to 127.0.0.1 (two cores, UTC, no UI).

    Raises CycleError when PySpark (requirements-spark.txt) or Java is missing.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise CycleError(
            "PySpark is not installed: `pip install -r requirements-spark.txt` (needs Java 17+)."
        ) from None
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
    )
    try:
        return builder.getOrCreate()
    except Exception as exc:  # Java missing or failing to start
        raise CycleError(f"Spark did not start (is Java 17+ installed?): {exc}") from None
