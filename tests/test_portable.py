"""The portable stages (core.portable) carry a parent version forward as ``cycle run`` does:
the same carried rows, the same rows removed for the same reasons, on DuckDB through Ibis in
every run and on local PySpark where the ``spark`` tests run."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from cycle_helpers import build_workspace, cycle_plan, interaction, withdraw_consent, write_jsonl
from test_carry_forward import later, new_plan_version
from test_spark import CYCLE_ROW_COLUMNS, _removed, _versioned, _window_tables

from core import quality
from core.access import local_operator
from core.cycles import cycle_window, run_cycle
from core.datasets import get_version
from core.errors import CycleError
from core.ingest import ingest_file
from core.plan import FieldCondition, Plan
from core.plan_versions import load_plan
from core.portable import (
    ParentRows,
    PortableRun,
    eval_items_fingerprint,
    run_on_duckdb,
    run_on_spark,
)
from core.store import Store

_SPARK_WARNINGS = [
    # As in tests/test_spark.py: py4j's gateway sockets and pandas' deprecated copy keyword.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]


LATE_JANUARY = datetime(2027, 1, 25, 9, tzinfo=UTC)  # in cycle 2's window, within 45 days


def _cycle2_rows() -> list[dict[str, Any]]:
    """i-000…i-019: i-000…i-009 on 10 January (past a 45-day retention at cycle 3's freeze),
    the rest on 25 January; u-1's rows are withdrawn later, u-3's never had consent; i-010
    and i-016 (u-2, u-0) are file I/O, which the tightened rule drops."""
    rows = []
    for n in range(20):
        row = interaction(n)
        if n >= 10:
            row["ts"] = LATE_JANUARY.replace(minute=n).isoformat()
        if n in (10, 16):
            row["topic"] = "file I/O"
        rows.append(row)
    return rows


def _cycle3_rows(
    old: dict[str, dict[str, Any]], synthetic: tuple[str, str]
) -> list[dict[str, Any]]:
    """Cycle 3's window: ordinary rows (odd ones file I/O, u-1's withdrawn, u-3's without
    consent; n-126 of u-2 is file I/O), an exact and a near-duplicate of carried rows, an
    exact duplicate of a row the parent kept whose user has withdrawn since (so it is not
    carried), and a near-duplicate of a carried synthetic row."""
    rows = [later(n) for n in range(100, 112)]
    twelve, fourteen, thirteen = old["i-012"], old["i-014"], old["i-013"]
    rows.append(later(120, prompt="  " + twelve["prompt"].upper(), response=twelve["response"]))
    rows.append(
        later(
            121, user_id="u-2", prompt=fourteen["prompt"], response=fourteen["response"] + " Thanks"
        )
    )
    rows.append(later(122, prompt=thirteen["prompt"], response=thirteen["response"]))
    question, answer = synthetic
    rows.append(later(124, prompt=question, response=answer + " Thanks!"))
    rows.append(later(126, topic="file I/O"))
    return rows


def _tighten(plan: Plan) -> None:
    """A rule the parent did not run, and a shorter retention."""
    plan.quality_filters.append(
        FieldCondition(field="topic", op="==", value="testing", expected_pass_rate=0.5)
    )
    for logged in plan.logging.fields:
        if logged.pii_class == "free_text":
            logged.retention_days = 45


def _carry_workspace(store: Store, tmp: Path) -> tuple[str, str, Plan]:
    """Cycle 2 built, then: cycle 3's rows loaded, u-1's withdrawal, the plan tightened.
    Returns the plan id, the parent version's id and the plan now."""
    cycle2 = _cycle2_rows()
    plan_id = build_workspace(store, tmp, cycle2, plan=cycle_plan(max_dataset_size=5000))
    second = run_cycle(store, plan_id, 2, user=local_operator())
    synthetic = store.fetch_all(
        "SELECT prompt, response FROM dataset_rows WHERE version_id = ? AND source = 'synthetic'"
        " ORDER BY row_key LIMIT 1",
        [second.dataset_version],
    )
    assert synthetic, "the parent version holds synthetic rows"
    old = {r["interaction_id"]: r for r in cycle2}
    new = _cycle3_rows(old, (str(synthetic[0][0]), str(synthetic[0][1])))
    ingest_file(store, write_jsonl(tmp / "cycle3.jsonl", new), user=local_operator())
    withdraw_consent(store, tmp, "u-1", "2027-02-20T00:00:00Z")
    new_plan_version(store, plan_id, _tighten)
    plan, _ = load_plan(store, plan_id)
    return plan_id, second.dataset_version, plan


def _parent_tables(store: Store, version: str) -> dict[str, pa.Table]:
    """The parent's production rows (dataset_rows joined to the interactions, as stored now)
    and its synthetic rows."""
    with store.connect() as con:
        rows = con.sql(
            f"SELECT {CYCLE_ROW_COLUMNS} FROM interactions WHERE interaction_id IN"
            " (SELECT interaction_id FROM dataset_rows WHERE version_id = ?"
            " AND source = 'production')",
            params=[version],
        ).to_arrow_table()
        synthetic = con.sql(
            "SELECT row_key, prompt, response FROM dataset_rows WHERE version_id = ?"
            " AND source = 'synthetic'",
            params=[version],
        ).to_arrow_table()
    return {
        "parent_rows": rows.cast(quality.CYCLE_ROW_SCHEMA.to_pyarrow()),
        "parent_synthetic": synthetic,
    }


@pytest.mark.parametrize(
    "engine", ["duckdb", pytest.param("spark", marks=[pytest.mark.spark, *_SPARK_WARNINGS])]
)
def test_carried_rows_are_kept_and_removed_as_cycle_run_does(
    engine: str, store: Store, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    plan_id, parent_id, plan = _carry_workspace(store, tmp_path)
    third = run_cycle(store, plan_id, 3, user=local_operator())
    cycle_removed = {
        (i, stage, detail)
        for i, stage, detail in store.fetch_all(
            "SELECT interaction_id, stage, detail FROM cycle_removed_rows"
            " WHERE run_id = ? AND stage <> 'mix'",
            [third.run_id],
        )
    }
    rows = store.fetch_dicts(
        "SELECT interaction_id, system, prompt, response, origin_version FROM dataset_rows"
        " WHERE version_id = ? AND source = 'production'",
        [third.dataset_version],
    )
    cycle_carried = {
        r["interaction_id"]: (r["system"], r["prompt"], r["response"])
        for r in rows
        if r["origin_version"] == parent_id
    }
    cycle_new = {
        r["interaction_id"]: (r["system"], r["prompt"], r["response"])
        for r in rows
        if r["origin_version"] != parent_id
    }
    cycle_funnel = [
        (s.name, s.rows_in, s.rows_out)
        for s in third.stages
        if s.name not in ("window", "mix", "split")
    ]

    tables = {**_window_tables(store, plan, 3), **_parent_tables(store, parent_id)}
    lineage = get_version(store, parent_id).lineage
    # Decontamination of carried rows runs again only when the eval items changed: the
    # portable fingerprint is the one the parent recorded.
    assert eval_items_fingerprint(tables["eval_items"]) == lineage["eval_items"]
    parent = ParentRows.from_lineage(
        parent_id,
        lineage,
        cycle_window(plan, 3)[1] or datetime.min,
        synthetic="parent_synthetic",
    )
    run: PortableRun
    if engine == "spark":
        session = request.getfixturevalue("spark")
        for name, table in tables.items():
            session.createDataFrame(table).createOrReplaceTempView(name)
        run = run_on_spark(session, plan, parent=parent)
    else:
        duck = duckdb.connect()
        for name, table in tables.items():
            duck.register(name, table)
        run = run_on_duckdb(duck, plan, parent=parent)

    assert _removed(run) == cycle_removed
    assert _versioned(run.carried.to_pylist(), plan) == cycle_carried
    assert _versioned(run.kept.to_pylist(), plan) == cycle_new
    assert [(s.name, s.rows_in, s.rows_out) for s in run.stages] == cycle_funnel

    # Every check the dataset plants happened, so the agreement is not trivial.
    why = run.dropped()
    carried = f"carried from {parent_id}: "
    assert why["i-001"] == carried + "training consent withdrawn at or after the interaction"
    assert why["i-000"] == (
        carried + "older than the plan's raw-text retention (45 days) at the data freeze"
    )
    assert why["i-010"] == carried + (
        "topic = file I/O fails topic == testing (the rule is not the one the parent version ran)"
    )
    assert why["n-126"] == "topic = file I/O fails topic == testing"
    assert why["n-120"] == f"exact duplicate of {parent_id} row i-012"
    assert re.fullmatch(
        rf"near-duplicate of {parent_id} row i-014 \(Jaccard 0\.9\d\)", why["n-121"]
    )
    assert re.fullmatch(
        rf"near-duplicate of {parent_id} row syn:\S+ \(Jaccard 0\.9\d\)", why["n-124"]
    )
    assert {"i-012", "i-014", "i-018"} <= set(cycle_carried)
    assert "n-122" in cycle_new  # its twin i-013 was not carried (u-1 withdrew)


def test_a_missing_parent_table_is_one_clear_error(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, [interaction(n) for n in range(8)])
    plan, _ = load_plan(store, plan_id)
    duck = duckdb.connect()
    for name, table in _window_tables(store, plan).items():
        duck.register(name, table)
    parent = ParentRows("ds-x-c1-v1", datetime(2027, 2, 7, tzinfo=UTC), table="no_such_rows")
    with pytest.raises(CycleError, match="no table or view 'no_such_rows'"):
        run_on_duckdb(duck, plan, parent=parent)
