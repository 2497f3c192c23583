"""The cycle's table stages through Ibis on DuckDB or on Spark, where the logs live.

From the cycle's rows to the rows the mix receives, every stage ``cycle run`` applies is an Ibis
expression that compiles to DuckDB and to PySpark and keeps the same rows for the same reasons:
consent; the PII re-check (core.privacy's detectors and validators, regular expressions
translated for Java); the plan's row rules (feedback, acceptance, length, language, code
parsing, field conditions); exact duplicates; MinHash near-duplicates; decontamination against
the eval items (core.portable_quality). ``cycle run`` itself keeps core.quality's DuckDB SQL,
tuned for the store; tests/test_spark.py checks that both give the same funnel.

Two things run in Python on every engine, as they do in ``cycle run``: which copy of each
near-duplicate group is kept (a walk over the few candidate pairs) and the code-parsing rule
(Python's own parser; a Python UDF on Spark, so the workers must import ``core``). What stays
with the store: collecting the cycle's window, the mix with synthetic data, the split and the
dataset version, which read and write the store's tables (they take the rows kept here).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import ibis
import ibis.expr.types as ir
import pyarrow as pa

from core import quality
from core.cycles import consent_stage, pipeline_rules
from core.errors import CycleError
from core.plan import Plan
from core.portable_quality import (
    DuckDBEngine,
    Engine,
    SparkEngine,
    contamination_stage,
    near_duplicate_stage,
    pii_stage,
    respelled,
    row_rule_stage,
)

__all__ = [
    "CONSENT_SCHEMA",
    "EVAL_ITEM_SCHEMA",
    "PortableRun",
    "StageCount",
    "portable_stages",
    "run_on_duckdb",
    "run_on_spark",
    "spark_session",
]

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

EVAL_ITEM_SCHEMA = ibis.schema(
    {"item_id": "string", "eval_set": "string", "prompt": "string", "reference": "string"}
)
"""The eval items' columns decontamination reads."""

_DROP = "fw_drop"


@dataclass(frozen=True)
class StageCount:
    """One stage of the funnel: its name (the rule) and the rows it received and kept."""

    name: str
    rows_in: int
    rows_out: int


@dataclass
class PortableRun:
    """What the stages did: the funnel, every removed row with its stage and reason, the rows
    kept (texts redacted again where today's detectors found more), and warnings."""

    stages: list[StageCount]
    removed: pa.Table
    kept: pa.Table
    redacted_again: int
    warnings: list[str] = field(default_factory=list)

    def dropped(self, stage: str | None = None) -> dict[str, str]:
        """Removed interaction ids (at one stage when given) with the reason."""
        rows = self.removed.to_pylist()
        return {
            r["interaction_id"]: r["detail"] for r in rows if stage is None or r["stage"] == stage
        }


def portable_stages(
    engine: Engine,
    plan: Plan,
    rows: str = "cycle_rows",
    events: str = "consent_events",
    eval_items: str | None = "eval_items",
) -> PortableRun:
    """Consent, the PII re-check and the plan's filters, in the order ``cycle run`` uses, on
    ``engine`` over its tables or views ``rows`` (the cycle's rows, ``quality.CYCLE_ROW_SCHEMA``),
    ``events`` (the consent ledger) and ``eval_items`` (None: decontamination has nothing to
    check against, and says so).

    Intermediate tables live in the engine until the run ends; the removed and the kept rows
    come back as Arrow tables. Raises CycleError when a table is missing or a rule of the plan
    cannot be evaluated.
    """
    try:
        items = None if eval_items is None else _table(engine, eval_items, EVAL_ITEM_SCHEMA)
        return _run(
            engine,
            plan,
            _table(engine, rows, quality.CYCLE_ROW_SCHEMA),
            _table(engine, events, CONSENT_SCHEMA),
            items,
        )
    finally:
        engine.release()


def _run(
    engine: Engine,
    plan: Plan,
    rows: ir.Table,
    events: ir.Table,
    eval_items: ir.Table | None,
) -> PortableRun:
    rules = pipeline_rules(plan)
    near = next((r for r, _ in rules if r.rule == "near_dedup"), None)
    keep: Literal["earliest", "best_rated"] = near.keep if near is not None else "earliest"
    stages: list[StageCount] = []
    removed: list[pa.Table] = []
    warnings: list[str] = []
    alive = engine.count(rows)

    def settle(name: str, verdict: ir.Table) -> ir.Table:
        nonlocal alive
        held = engine.keep(verdict)
        dropped = engine.fetch(
            held.filter(held[_DROP].notnull()).select("interaction_id", detail=held[_DROP])
        )
        removed.append(
            pa.table(
                {
                    "interaction_id": dropped.column("interaction_id"),
                    "stage": pa.array([name] * dropped.num_rows, pa.string()),
                    "detail": dropped.column("detail"),
                }
            )
        )
        stages.append(StageCount(name, alive, alive - dropped.num_rows))
        alive -= dropped.num_rows
        return held.filter(held[_DROP].isnull()).drop(_DROP)

    current = settle("consent", consent_stage(rows, events))

    held = engine.keep(pii_stage(current, engine.dialect))
    changed = (
        (held.fw_prompt != held.prompt)
        | (held.fw_response != held.response)
        | (held.fw_system != held.system)
    ).fill_null(False)
    redacted_again = engine.count(held.filter(changed))
    current = held.mutate(
        prompt=held.fw_prompt, response=held.fw_response, system=held.fw_system
    ).drop("fw_prompt", "fw_response", "fw_system")
    stages.append(StageCount("pii_redacted", alive, alive))
    if redacted_again:
        warnings.append(
            f"PII check: {redacted_again} row(s) held PII today's detectors find and ingest's "
            "did not; they were redacted again."
        )

    for rule, _origin in rules[1:]:
        kind = rule.rule
        try:
            if kind == "exact_dedup":
                verdict = respelled(quality.exact_duplicate_stage(current, keep), engine.dialect)
            elif kind == "near_dedup":
                verdict = near_duplicate_stage(
                    engine, current, threshold=rule.threshold, keep=rule.keep
                )
            elif kind == "decontamination":
                items = _eval_items(engine, eval_items, list(rule.eval_sets), warnings)
                verdict = (
                    current.mutate(**{_DROP: ibis.null("string")})
                    if items is None
                    else contamination_stage(
                        engine,
                        current,
                        items,
                        ngram=rule.ngram,
                        threshold=rule.threshold,
                        eval_sets=list(rule.eval_sets),
                    )
                )
            else:
                verdict = row_rule_stage(current, rule, engine.dialect)
        except ValueError as exc:
            raise CycleError(f"The plan's {kind} filter cannot run: {exc}.") from None
        current = settle(kind, verdict)

    kept = engine.fetch(current.order_by("interaction_id"))
    columns = ["interaction_id", "stage", "detail"]
    every = (
        pa.concat_tables(removed)
        if removed
        else pa.table({c: pa.array([], pa.string()) for c in columns})
    )
    return PortableRun(stages, every, kept, redacted_again, warnings)


def _eval_items(
    engine: Engine, items: ir.Table | None, wanted: list[str], warnings: list[str]
) -> ir.Table | None:
    """The eval items to check against (None when none were given), warning as ``cycle run``
    does about missing sets."""
    if items is None:
        warnings.append(
            "Decontamination had no eval items to check against; pass the eval items' table."
        )
        return None
    stored = {
        str(s) for s in engine.fetch(items.select("eval_set").distinct()).column(0).to_pylist()
    }
    missing = sorted(set(wanted) - stored)
    if missing:
        warnings.append(
            f"Decontamination: eval set(s) {', '.join(missing)} named by the plan are not "
            "among the eval items given."
        )
    if not stored:
        warnings.append("Decontamination had no eval items to check against.")
    return items


def _table(engine: Engine, name: str, schema: ibis.Schema) -> ir.Table:
    """The engine's table ``name`` with the columns of ``schema``; CycleError when it is
    missing or lacks one."""
    try:
        table = engine.table(name)
    except Exception as exc:  # each engine's own "table or view not found"
        raise CycleError(f"There is no table or view {name!r} to read: {exc}") from None
    lacking = [c for c in schema.names if c not in table.columns]
    if lacking:
        raise CycleError(f"The table {name!r} lacks the column(s) {', '.join(lacking)}.")
    return table.select(*schema.names)


def run_on_duckdb(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    rows: str = "cycle_rows",
    events: str = "consent_events",
    eval_items: str | None = "eval_items",
) -> PortableRun:
    """Run the stages in DuckDB over the connection's tables or views (see
    ``portable_stages``), compiled to DuckDB's SQL. Defines core.quality's stage functions on
    ``con``, as ``cycle run`` does."""
    return portable_stages(DuckDBEngine(con), plan, rows, events, eval_items)


def run_on_spark(
    session: Any,
    plan: Plan,
    rows: str = "cycle_rows",
    events: str = "consent_events",
    eval_items: str | None = "eval_items",
) -> PortableRun:
    """The same stages on Spark, over the session's tables or temporary views, through Ibis'
    PySpark backend. The code-parsing rule runs Python's parser in a UDF: the workers must
    import ``core`` (``spark_session`` sees to it locally; ship the package to a cluster)."""
    return portable_stages(SparkEngine(session), plan, rows, events, eval_items)


def spark_session(app_name: str = "flywheel") -> Any:
    """A local Spark session bound to 127.0.0.1 (two cores, UTC, no UI) whose Python workers
    run this interpreter and import this checkout's ``core``.

    Raises CycleError when PySpark (requirements-spark.txt) or Java is missing.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise CycleError(
            "PySpark is not installed: `pip install -r requirements-spark.txt` (needs Java 17+)."
        ) from None
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers' interpreter
    root = str(Path(__file__).resolve().parent.parent)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.executorEnv.PYTHONPATH", root)
    )
    try:
        return builder.getOrCreate()
    except Exception as exc:  # Java missing or failing to start
        raise CycleError(f"Spark did not start (is Java 17+ installed?): {exc}") from None
