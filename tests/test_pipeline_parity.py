"""Every engine keeps the same rows for the same reasons: ``cycle run`` (DuckDB SQL) against the
portable stages through Ibis on DuckDB in every test run, and on local PySpark where the
``spark`` tests run, over rows that plant every case each stage decides, ties included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from cycle_helpers import EVAL_QUESTION, build_workspace, cycle_plan, write_jsonl
from test_spark import _cycle_rows, _removed, _row, _versioned, _window_tables

from core.access import local_operator
from core.cycles import run_cycle
from core.ingest import ingest_file
from core.plan import FieldCondition, Language, Plan
from core.portable import PortableRun, run_on_duckdb, run_on_spark
from core.store import Store

# A second eval question as long as e-1's, so that both are compared on 13-grams.
TWIN_QUESTION = (
    "Write a generator that yields the lines of a large text file lazily and explain why "
    "it saves memory"
)
CONTEXT_MANAGER = "Explain what a context manager is and write one with contextlib"


def _tied_rows() -> list[dict[str, Any]]:
    """Rows whose verdict is decided by a tie-break: each engine must break it alike."""
    return [
        # Two items of the same n-gram size, both pasted whole: the first item in order.
        _row(
            "tie-same-size",
            500,
            f"{TWIN_QUESTION}. Also: {EVAL_QUESTION}?",
            "Here is the generator first, then the loop that answers the other.",
        ),
        # Two items pasted whole, compared on 13- and 11-grams: the shorter n-grams.
        _row(
            "tie-sizes",
            501,
            f"{EVAL_QUESTION}. And: {CONTEXT_MANAGER}.",
            "Iterate with a pair of names, then a class with __enter__ and __exit__.",
        ),
    ]


def _plan() -> Plan:
    plan = cycle_plan(max_dataset_size=5000, original_to_new_ratio=0.1)
    at = next(i for i, rule in enumerate(plan.quality_filters) if rule.rule == "exact_dedup")
    plan.quality_filters[at:at] = [
        Language(languages=["en"]),
        FieldCondition(field="app", op="not_in", value="internal"),
        FieldCondition(field="latency_ms", op="<", value="5000"),
    ]
    return plan


def _portable(engine: str, request: pytest.FixtureRequest, store: Store, plan: Plan) -> PortableRun:
    tables = _window_tables(store, plan)
    if engine == "spark":
        session = request.getfixturevalue("spark")
        for name, table in tables.items():
            session.createDataFrame(table).createOrReplaceTempView(name)
        return run_on_spark(session, plan)
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    return run_on_duckdb(con, plan)


@pytest.mark.parametrize(
    "engine",
    [
        "duckdb-ibis",
        pytest.param(
            "spark",
            marks=[
                pytest.mark.spark,
                pytest.mark.filterwarnings("ignore::ResourceWarning"),
                pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
                pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
            ],
        ),
    ],
)
def test_every_engine_keeps_the_same_rows_for_the_same_reasons(
    engine: str, request: pytest.FixtureRequest, store: Store, tmp_path: Path
) -> None:
    plan = _plan()
    plan_id = build_workspace(store, tmp_path, _cycle_rows() + _tied_rows(), plan=plan)
    twin = {"item_id": "e-3", "eval_set": "python-core", "prompt": TWIN_QUESTION}
    ingest_file(
        store,
        write_jsonl(tmp_path / "twin.jsonl", [twin]),
        kind="eval-items",
        user=local_operator(),
    )
    result = run_cycle(store, plan_id, 2, user=local_operator())
    sql_removed = {
        (str(i), str(stage), str(detail))
        for i, stage, detail in store.fetch_all(
            "SELECT interaction_id, stage, detail FROM cycle_removed_rows"
            " WHERE run_id = ? AND stage <> 'mix'",
            [result.run_id],
        )
    }
    sql_kept = {
        str(i): (s, p, r)
        for i, s, p, r in store.fetch_all(
            "SELECT interaction_id, system, prompt, response FROM dataset_rows"
            " WHERE version_id = ? AND source = 'production'",
            [result.dataset_version],
        )
    }
    run = _portable(engine, request, store, plan)
    assert _removed(run) == sql_removed
    assert _versioned(run.kept.to_pylist(), plan) == sql_kept
    assert [(s.name, s.rows_in, s.rows_out) for s in run.stages] == [
        (s.name, s.rows_in, s.rows_out)
        for s in result.stages
        if s.name not in ("window", "mix", "split")
    ]
    # The ties were decided by the rule, not by whichever item an engine met first.
    why = run.dropped()
    assert why["tie-same-size"] == "overlaps eval item e-1 (python-core) prompt: 100% of 13-grams"
    assert why["tie-sizes"] == "overlaps eval item e-2 (python-core) prompt: 100% of 11-grams"
    # Every stage acted on the planted rows, so the agreement is not trivial.
    stages = {stage for _, stage, _ in sql_removed}
    assert stages >= {
        "consent",
        "positive_or_accepted",
        "length_bounds",
        "code_parses",
        "language",
        "field_condition",
        "exact_dedup",
        "near_dedup",
        "decontamination",
    }
