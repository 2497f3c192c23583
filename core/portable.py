"""The cycle's table stages through Ibis on DuckDB or on Spark, where the logs live.

From the cycle's rows to the rows the mix receives, every stage ``cycle run`` applies is an Ibis
expression that compiles to DuckDB and to PySpark and keeps the same rows for the same reasons:
consent; the PII re-check (core.privacy's detectors and validators, regular expressions
translated for Java); the plan's row rules (feedback, acceptance, length, language, code
parsing, field conditions); exact duplicates; MinHash near-duplicates; decontamination against
the eval items (core.portable_quality). ``cycle run`` itself keeps core.quality's DuckDB SQL,
tuned for the store; both take what each stage is (its rules, keep and re-check rules, reasons)
from core.pipeline.stages, and tests/test_pipeline_parity.py checks that both give the same
funnel in every test run (on Spark too where the ``spark`` tests run).

Cycles build on each other here too: given the parent version's rows (``ParentRows``, an input
table), the stages carry them forward as ``cycle run`` does. Each carried row is checked again
(stage ``carried``): its user's training consent now, the plan's raw-text retention at this
cycle's data freeze, and every filter the parent did not run (a rule the PM tightened applies
to old rows too), then the PII re-check; a removed row's reason reads "carried from <parent>:
…". The window's new rows are then deduplicated exactly and near against the carried rows that
survive (they count as kept first), and a duplicate names the carried row ("exact duplicate of
<parent> row <key>"). The carried rows' exact keys are their normalised texts and their MinHash
signatures are computed in the engine, as the new rows' are (the store's sketches are DuckDB's).

Two things run in Python on every engine, as they do in ``cycle run``: which copy of each
near-duplicate group is kept (a walk over the few candidate pairs) and the code-parsing rule
(Python's own parser; a Python UDF on Spark, so the workers must import ``core``). What stays
with the store: collecting the cycle's window and the parent's rows (a row whose interaction
is no longer stored, or whose synthetic item is no longer valid, is simply not among those
given), the mix with synthetic data and the cap's retirement, the split and the dataset
version, which read and write the store's tables (they take the rows kept here).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir
import pyarrow as pa

from core import quality
from core.consent import CONSENT_EVENT_COLUMNS
from core.errors import CycleError
from core.pipeline.run import Counted, run_table_stages
from core.pipeline.stages import (
    RULE_CHANGED,
    Keep,
    carried_prefix,
    consent_stage,
    retention_reason,
    rules_to_recheck,
)
from core.plan import Plan
from core.portable_quality import (
    DuckDBEngine,
    Engine,
    SparkEngine,
    contamination_stage,
    exact_duplicate_stage,
    near_duplicate_stage,
    pii_stage,
    row_rule_stage,
)
from core.retention import raw_text_retention_days

__all__ = [
    "CONSENT_SCHEMA",
    "EVAL_ITEM_SCHEMA",
    "SYNTHETIC_ROW_SCHEMA",
    "ParentRows",
    "PortableRun",
    "StageCount",
    "eval_items_fingerprint",
    "portable_stages",
    "run_on_duckdb",
    "run_on_spark",
    "spark_session",
]

CONSENT_SCHEMA = ibis.schema(CONSENT_EVENT_COLUMNS)
"""The consent ledger's columns."""

EVAL_ITEM_SCHEMA = ibis.schema(
    {"item_id": "string", "eval_set": "string", "prompt": "string", "reference": "string"}
)
"""The eval items' columns decontamination reads."""

SYNTHETIC_ROW_SCHEMA = ibis.schema({"row_key": "string", "prompt": "string", "response": "string"})
"""The columns of a parent version's synthetic rows (``ParentRows.synthetic``)."""

_DROP = "fw_drop"


@dataclass(frozen=True)
class StageCount:
    """One stage of the funnel: its name (the rule) and the rows it received and kept."""

    name: str
    rows_in: int
    rows_out: int


@dataclass
class PortableRun:
    """What the stages did: the funnel, every removed row with its stage and reason, the new
    rows kept and the carried rows kept (texts redacted again where today's detectors found
    more), and warnings."""

    stages: list[StageCount]
    removed: pa.Table
    kept: pa.Table
    redacted_again: int
    carried: pa.Table
    warnings: list[str] = field(default_factory=list)

    def dropped(self, stage: str | None = None) -> dict[str, str]:
        """Removed interaction ids (at one stage when given) with the reason."""
        rows = self.removed.to_pylist()
        return {
            r["interaction_id"]: r["detail"] for r in rows if stage is None or r["stage"] == stage
        }


@dataclass(frozen=True)
class ParentRows:
    """The parent version a cycle carries forward, as the portable stages read it.

    ``table`` names the engine's table or view of the production rows the parent kept, as
    their interactions are stored now (``quality.CYCLE_ROW_SCHEMA``); ``version_id`` names the
    parent in reasons; ``freeze`` is this cycle's data freeze, at which the plan's raw-text
    retention is measured; ``filters`` are the stages the parent ran and ``eval_items`` the
    fingerprint of the eval items it was checked against (both from its lineage,
    ``from_lineage``); ``synthetic`` optionally names a table of its synthetic rows that are
    still valid (``SYNTHETIC_ROW_SCHEMA``): they are carried unchecked and new rows are
    deduplicated against them too.
    """

    version_id: str
    freeze: datetime
    filters: Sequence[Mapping[str, Any]] = ()
    eval_items: str | None = None
    table: str = "parent_rows"
    synthetic: str | None = None

    @classmethod
    def from_lineage(
        cls,
        version_id: str,
        lineage: Mapping[str, Any],
        freeze: datetime,
        *,
        table: str = "parent_rows",
        synthetic: str | None = None,
    ) -> ParentRows:
        """The parent described by its stored lineage (``DatasetVersion.lineage``)."""
        return cls(
            version_id,
            freeze,
            tuple(lineage.get("filters", [])),
            lineage.get("eval_items"),
            table,
            synthetic,
        )


def eval_items_fingerprint(items: pa.Table) -> str:
    """md5 of the eval items' texts (``eval_set``, ``prompt``, ``reference``), as a version's
    lineage records it: carried rows are decontaminated again when it changes."""
    rows = sorted(
        zip(
            *(items.column(c).to_pylist() for c in ("eval_set", "prompt", "reference")), strict=True
        ),
        key=lambda r: (
            r[0] is None,
            r[0] or "",
            r[1] is None,
            r[1] or "",
            r[2] is None,
            r[2] or "",
        ),
    )
    parts = [
        hashlib.md5(f"{s}\x1f{p}\x1f{r or ''}".encode()).hexdigest()
        for s, p, r in rows
        if s is not None and p is not None
    ]
    return hashlib.md5(",".join(parts).encode()).hexdigest()


def portable_stages(
    engine: Engine,
    plan: Plan,
    rows: str = "cycle_rows",
    events: str = "consent_events",
    eval_items: str | None = "eval_items",
    parent: ParentRows | None = None,
) -> PortableRun:
    """Consent, the PII re-check and the plan's filters, in the order ``cycle run`` uses, on
    ``engine`` over its tables or views ``rows`` (the cycle's rows, ``quality.CYCLE_ROW_SCHEMA``),
    ``events`` (the consent ledger) and ``eval_items`` (None: decontamination has nothing to
    check against, and says so). With ``parent``, its rows are carried forward first (stage
    ``carried``) and the new rows are deduplicated against those that survive.

    Intermediate tables live in the engine until the run ends; the removed and the kept rows
    come back as Arrow tables. Raises CycleError when a table is missing or a rule of the plan
    cannot be evaluated.
    """
    try:
        items = None if eval_items is None else _table(engine, eval_items, EVAL_ITEM_SCHEMA)
        carried = None
        if parent is not None:
            synthetic = (
                None
                if parent.synthetic is None
                else _table(engine, parent.synthetic, SYNTHETIC_ROW_SCHEMA)
            )
            carried = (_table(engine, parent.table, quality.CYCLE_ROW_SCHEMA), synthetic)
        bodies = _IbisBodies(
            engine,
            _Funnel(engine),
            plan,
            _table(engine, rows, quality.CYCLE_ROW_SCHEMA),
            _table(engine, events, CONSENT_SCHEMA),
            items,
            parent,
            carried,
        )
        return _run(bodies, plan)
    finally:
        engine.release()


class _Funnel:
    """The stages as they settle: counts, removed rows with their reasons, warnings."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stages: list[StageCount] = []
        self.removed: list[pa.Table] = []
        self.warnings: list[str] = []
        self.last_dropped = 0

    def drop(self, stage: str, verdict: ir.Table, prefix: str = "", suffix: str = "") -> ir.Table:
        """Record the rows ``verdict`` drops (``fw_drop``, its reason worded
        ``prefix + why + suffix``) under ``stage``; the rows it keeps, computed once."""
        held = self.engine.keep(verdict)
        dropped = self.engine.fetch(
            held.filter(held[_DROP].notnull()).select("interaction_id", detail=held[_DROP])
        )
        details = [f"{prefix}{why}{suffix}" for why in dropped.column("detail").to_pylist()]
        self.removed.append(
            pa.table(
                {
                    "interaction_id": dropped.column("interaction_id"),
                    "stage": pa.array([stage] * dropped.num_rows, pa.string()),
                    "detail": pa.array(details, pa.string()),
                }
            )
        )
        self.last_dropped = dropped.num_rows
        return held.filter(held[_DROP].isnull()).drop(_DROP)

    def pii_checked(self, rows: ir.Table) -> tuple[ir.Table, int]:
        """The rows with their texts redacted again, and how many changed."""
        held = self.engine.keep(pii_stage(rows, self.engine.dialect))
        changed = (
            (held.fw_prompt != held.prompt)
            | (held.fw_response != held.response)
            | (held.fw_system != held.system)
        ).fill_null(False)
        count = self.engine.count(held.filter(changed))
        checked = held.mutate(
            prompt=held.fw_prompt, response=held.fw_response, system=held.fw_system
        ).drop("fw_prompt", "fw_response", "fw_system")
        return checked, count

    def all_removed(self) -> pa.Table:
        if self.removed:
            return pa.concat_tables(self.removed)
        return pa.table(
            {c: pa.array([], pa.string()) for c in ("interaction_id", "stage", "detail")}
        )


def _run(bodies: _IbisBodies, plan: Plan) -> PortableRun:
    """The one loop of core.pipeline.run over the Ibis bodies, its funnel as PortableRun."""
    funnel = bodies.funnel
    run = run_table_stages(bodies, plan, warnings=funnel.warnings)
    return PortableRun(
        # The rows given are the window: the funnel starts from what was done to them.
        [StageCount(s.name, s.rows_in, s.rows_out) for s in run.stages if s.name != "window"],
        funnel.all_removed(),
        bodies.engine.fetch(bodies.current.order_by("interaction_id")),
        run.redacted_again,
        bodies.carried_rows,
        funnel.warnings,
    )


class _IbisBodies:
    """The table stages as Ibis expressions on ``engine`` (core.pipeline.run's
    ``StageBodies``): each stage's survivors are ``current``, kept in the engine; the rows a
    stage removes go to the funnel with their reasons."""

    def __init__(
        self,
        engine: Engine,
        funnel: _Funnel,
        plan: Plan,
        rows: ir.Table,
        events: ir.Table,
        eval_items: ir.Table | None,
        parent: ParentRows | None,
        parent_tables: tuple[ir.Table, ir.Table | None] | None,
    ) -> None:
        self.engine = engine
        self.funnel = funnel
        self.plan = plan
        self.current = rows
        self.events = events
        self.eval_items = eval_items
        self.parent = parent
        self.parent_tables = parent_tables
        self.reference: ir.Table | None = None  # the carried rows, once they are checked
        self.label = ""
        self.carried_rows: pa.Table = quality.CYCLE_ROW_SCHEMA.to_pyarrow().empty_table()

    def carry(self, rules: list[tuple[Any, str]], keep: Keep) -> Counted:
        parent, engine = self.parent, self.engine
        if parent is None or self.parent_tables is None:
            return Counted(0, 0, "no parent version", {"parent_version": None})
        self.label = parent.version_id
        production, synthetic = self.parent_tables
        carried, redacted_again = _carry(
            engine,
            self.funnel,
            self.plan,
            rules,
            keep,
            parent,
            production,
            self.events,
            self.eval_items,
        )
        self.carried_rows = engine.fetch(carried.order_by("interaction_id"))
        reference = carried.select(key=carried.interaction_id, prompt="prompt", response="response")
        extra = 0
        if synthetic is not None:
            reference = reference.union(
                synthetic.select(key=synthetic.row_key, prompt="prompt", response="response")
            )
            extra = engine.count(synthetic)
        self.reference = reference
        return Counted(
            engine.count(production) + extra,
            self.carried_rows.num_rows + extra,
            f"from {parent.version_id}",
            {"parent_version": parent.version_id, "texts_redacted_again": redacted_again},
        )

    def window(self) -> Counted:
        given = self.engine.count(self.current)
        return Counted(given, given, "the rows given")

    def consent(self) -> int:
        self.current = self.funnel.drop("consent", consent_stage(self.current, self.events))
        return self.funnel.last_dropped

    def pii_check(self) -> dict[str, Any]:
        self.current, redacted_again = self.funnel.pii_checked(self.current)
        return {"texts_redacted_again": redacted_again}

    def filter(self, position: int, rule: Any, keep: Keep) -> int:
        verdict = _rule_verdict(
            self.engine,
            rule,
            self.current,
            keep,
            self.eval_items,
            self.funnel.warnings,
            self.reference,
            self.label,
        )
        self.current = self.funnel.drop(rule.rule, verdict)
        return self.funnel.last_dropped


def _carry(
    engine: Engine,
    funnel: _Funnel,
    plan: Plan,
    rules: list[tuple[Any, str]],
    keep: Keep,
    parent: ParentRows,
    rows: ir.Table,
    events: ir.Table,
    eval_items: ir.Table | None,
) -> tuple[ir.Table, int]:
    """The parent's rows that may still be used, as ``cycle run`` carries them: its user's
    training consent now, the plan's raw-text retention at the data freeze, every filter the
    parent did not run (decontamination also when the eval items changed), then the PII
    re-check. Removed rows are recorded at stage ``carried``; returns the rows kept (in the
    engine) and how many texts were redacted again."""
    prefix = carried_prefix(parent.version_id)
    current = funnel.drop("carried", consent_stage(rows, events), prefix)
    days = raw_text_retention_days(plan)
    freeze = parent.freeze if parent.freeze.tzinfo else parent.freeze.replace(tzinfo=UTC)
    cutoff = ibis.literal(freeze.astimezone(UTC) - timedelta(days=days), type="timestamp('UTC')")
    why_old = retention_reason(days)
    current = funnel.drop(
        "carried",
        current.mutate(**{_DROP: ibis.ifelse(current.ts < cutoff, why_old, ibis.null("string"))}),
        prefix,
    )

    def eval_items_now() -> str:
        return eval_items_fingerprint(engine.fetch(eval_items)) if eval_items is not None else ""

    for rule in rules_to_recheck(rules, parent.filters, eval_items_now, parent.eval_items):
        verdict = _rule_verdict(engine, rule, current, keep, eval_items, [], None, "")
        current = funnel.drop("carried", verdict, prefix, RULE_CHANGED)
    return funnel.pii_checked(current)


def _rule_verdict(
    engine: Engine,
    rule: Any,
    rows: ir.Table,
    keep: Keep,
    eval_items: ir.Table | None,
    warnings: list[str],
    reference: ir.Table | None,
    label: str,
) -> ir.Table:
    """``rows`` plus ``fw_drop``: the plan's filter ``rule``, duplicates also against
    ``reference`` (rows kept already, named as rows of ``label``). Raises CycleError when the
    rule cannot be evaluated."""
    kind = rule.rule
    try:
        if kind == "exact_dedup":
            return exact_duplicate_stage(
                rows, keep, engine.dialect, reference=reference, reference_label=label
            )
        if kind == "near_dedup":
            return near_duplicate_stage(
                engine,
                rows,
                threshold=rule.threshold,
                keep=rule.keep,
                reference=reference,
                reference_label=label,
            )
        if kind == "decontamination":
            items = _eval_items(engine, eval_items, list(rule.eval_sets), warnings)
            if items is None:
                return rows.mutate(**{_DROP: ibis.null("string")})
            return contamination_stage(
                engine,
                rows,
                items,
                ngram=rule.ngram,
                threshold=rule.threshold,
                eval_sets=list(rule.eval_sets),
            )
        return row_rule_stage(rows, rule, engine.dialect)
    except ValueError as exc:
        raise CycleError(f"The plan's {kind} filter cannot run: {exc}.") from None


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
    parent: ParentRows | None = None,
) -> PortableRun:
    """Run the stages in DuckDB over the connection's tables or views (see
    ``portable_stages``), compiled to DuckDB's SQL. Defines core.quality's stage functions on
    ``con``, as ``cycle run`` does."""
    return portable_stages(DuckDBEngine(con), plan, rows, events, eval_items, parent)


def run_on_spark(
    session: Any,
    plan: Plan,
    rows: str = "cycle_rows",
    events: str = "consent_events",
    eval_items: str | None = "eval_items",
    parent: ParentRows | None = None,
) -> PortableRun:
    """The same stages on Spark, over the session's tables or temporary views, through Ibis'
    PySpark backend. The code-parsing rule runs Python's parser in a UDF: the workers must
    import ``core`` (``spark_session`` sees to it locally; ship the package to a cluster)."""
    return portable_stages(SparkEngine(session), plan, rows, events, eval_items, parent)


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
