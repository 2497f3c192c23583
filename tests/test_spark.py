"""The cycle's portable table stages give the same rows on local PySpark as on DuckDB."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from core import quality
from core.portable import run_on_duckdb, run_on_spark, spark_session
from core.starters import starter_plan

pytestmark = [
    pytest.mark.spark,
    # py4j leaves its gateway sockets to the garbage collector, and PySpark 4.0 / Ibis' PySpark
    # backend still pass pandas' deprecated copy keyword: neither is ours to fix.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]

START = datetime(2027, 2, 1, tzinfo=UTC)


def _dataset(seed: int = 3) -> tuple[pa.Table, pa.Table]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    answers = ["Use sorted(xs).", "use   SORTED(xs). ", "Call list.sort() in place.", "x" * 9000]
    for i in range(240):
        response = rng.choice(answers) if i % 7 else f"Answer number {i} with enough length."
        rows.append(
            {
                "interaction_id": f"i{i:03d}",
                "user_id": f"u{i % 12}",
                "ts": START + timedelta(hours=i),
                "batch_id": "b1",
                "variant": "treatment",
                "model": "ft:student",
                "system": None,
                "prompt": rng.choice(["How do I sort?", "how do i  sort?", "Sort a list?"]),
                "response": response,
                "feedback": rng.choice(["up", "down", None]),
                "accepted": rng.choice([True, False, None]),
                "latency_ms": rng.randint(100, 900),
                "input_tokens": 20,
                "output_tokens": 40,
                "cost_usd": 0.0001,
                "topic": "data structures",
                "difficulty": "beginner",
                "metadata": None,
                "cell_key": '{"difficulty":"beginner","topic":"data structures"}',
            }
        )
    events: list[dict[str, Any]] = []
    for user in range(12):
        if user % 4 == 0:
            continue  # no record: no consent
        granted = START + timedelta(hours=user * 10)
        events.append(
            {
                "user_id": f"u{user}",
                "ts": granted,
                "scope": "training",
                "action": "grant",
                "policy_version": "1",
                "source": "EU",
            }
        )
        if user % 4 == 1:  # withdrawn later; one at the very instant of the grant
            when = granted if user == 1 else granted + timedelta(days=3)
            events.append(
                {
                    "user_id": f"u{user}",
                    "ts": when,
                    "scope": "training",
                    "action": "withdraw",
                    "policy_version": "1",
                    "source": "EU",
                }
            )
    row_schema = quality.CYCLE_ROW_SCHEMA.to_pyarrow()
    event_schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("scope", pa.string()),
            ("action", pa.string()),
            ("policy_version", pa.string()),
            ("source", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, row_schema), pa.Table.from_pylist(events, event_schema)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_session("flywheel-test")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _ids(table: pa.Table) -> list[str]:
    return sorted(table.column("interaction_id").to_pylist())


def test_same_rows_on_spark_as_on_duckdb(spark: Any) -> None:
    plan = starter_plan("python_coding_assistant")
    rows, events = _dataset()

    duck = duckdb.connect()
    duck.register("cycle_rows", rows)
    duck.register("consent_events", events)
    on_duckdb, skipped = run_on_duckdb(duck, plan)

    spark.createDataFrame(rows).createOrReplaceTempView("cycle_rows")
    spark.createDataFrame(events).createOrReplaceTempView("consent_events")
    on_spark, skipped_spark = run_on_spark(spark, plan)

    assert list(on_duckdb) == ["consent", "positive_or_accepted", "length_bounds", "exact_dedup"]
    assert (
        skipped == skipped_spark == ["pii_redacted", "code_parses", "near_dedup", "decontamination"]
    )
    for stage in on_duckdb:
        assert _ids(on_spark[stage]) == _ids(on_duckdb[stage]), stage
    # the stages did something on this data, so equality is not trivial
    sizes = [on_duckdb[s].num_rows for s in on_duckdb]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    final_duck = on_duckdb["exact_dedup"].sort_by("interaction_id").to_pylist()
    final_spark = on_spark["exact_dedup"].sort_by("interaction_id").to_pylist()
    for a, b in zip(final_duck, final_spark, strict=True):
        assert {k: a[k] for k in ("interaction_id", "prompt", "response", "feedback")} == {
            k: b[k] for k in ("interaction_id", "prompt", "response", "feedback")
        }


def test_consent_stage_drops_the_unconsented_and_withdrawn() -> None:
    rows, events = _dataset()
    duck = duckdb.connect()
    duck.register("cycle_rows", rows)
    duck.register("consent_events", events)
    kept = run_on_duckdb(duck, starter_plan("python_coding_assistant"))[0]["consent"]
    users = set(kept.column("user_id").to_pylist())
    assert not users & {"u0", "u4", "u8"}  # never granted
    assert "u1" not in users  # withdrew at the very instant of the grant
