"""Near-duplicate stage on two engines: ``python bench/near_engines.py [--rows N] [--repeat N]``.

Prints, measured in the same run over the same rows (--rows texts, default 20k, of which a
tenth are planted near-duplicates: one word of about seventy changed):
  sql     the near-duplicate stage as ``cycle run`` runs it: core.quality's MinHash + LSH
          written in DuckDB SQL (core.quality.near_duplicate_stage)
  ibis    the portable stage (core.portable_quality.near_duplicate_stage) compiled by Ibis to
          DuckDB's SQL: what runs on Spark, here on the same DuckDB
the ratio of the two (the reason the stage keeps an engine-specific body), and the rows the
two decided differently, if any, with their reasons: a pair is a candidate when LSH bands
agree, which for a Jaccard near the threshold happens with a probability under one, and the
two bodies hash shingles differently (32-bit in SQL, 64-bit through Ibis). The two alternate,
--repeat times each (default 3); medians are compared.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import ibis  # noqa: E402
import pyarrow as pa  # noqa: E402

from core import portable_quality, quality  # noqa: E402
from core.portable_quality import DuckDBEngine  # noqa: E402

THRESHOLD = 0.8


def rows(count: int, seed: int = 11) -> pa.Table:
    """``count`` cycle rows: distinct texts of about seventy words, a tenth of them a copy of
    another with one word changed (Jaccard about 0.91)."""
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3))
        for _ in range(5000)
    ]
    texts: list[list[str]] = []
    for n in range(count):
        if n % 10 == 9:
            words = list(texts[rng.randrange(len(texts))])
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
        else:
            words = [rng.choice(vocabulary) for _ in range(70)]
        texts.append(words)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    data = {name: [None] * count for name in quality.CYCLE_ROW_SCHEMA.names}
    data["interaction_id"] = [f"r-{n:06d}" for n in range(count)]
    data["user_id"] = [f"u-{n % 500}" for n in range(count)]
    data["ts"] = [start + timedelta(seconds=n) for n in range(count)]
    data["prompt"] = [" ".join(words[:8]) for words in texts]
    data["response"] = [" ".join(words[8:]) for words in texts]
    return pa.table(data).cast(quality.CYCLE_ROW_SCHEMA.to_pyarrow())


def run_sql(con: duckdb.DuckDBPyConnection) -> tuple[float, dict[str, str]]:
    table = ibis.table(quality.CYCLE_ROW_SCHEMA, name="cycle_rows")
    start = time.perf_counter()
    verdict = quality.near_duplicate_stage(con, table, threshold=THRESHOLD, keep="earliest")
    dropped = con.execute(
        f"SELECT interaction_id, fw_drop FROM ({ibis.to_sql(verdict, dialect='duckdb')})"
        " WHERE fw_drop IS NOT NULL"
    ).fetchall()
    return time.perf_counter() - start, {str(i): str(why) for i, why in dropped}


def run_ibis(con: duckdb.DuckDBPyConnection) -> tuple[float, dict[str, str]]:
    engine = DuckDBEngine(con)
    table = ibis.table(quality.CYCLE_ROW_SCHEMA, name="cycle_rows")
    start = time.perf_counter()
    verdict = portable_quality.near_duplicate_stage(
        engine, table, threshold=THRESHOLD, keep="earliest"
    )
    found = engine.fetch(
        verdict.filter(verdict.fw_drop.notnull()).select("interaction_id", "fw_drop")
    )
    dropped = zip(found.column(0).to_pylist(), found.column(1).to_pylist(), strict=True)
    return time.perf_counter() - start, {str(i): str(why) for i, why in dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    con = duckdb.connect()
    con.register("cycle_rows", rows(args.rows))
    quality.install_stage_functions(con)
    # Ibis loads its SQL compiler on the first compile: once, outside the clock.
    ibis.to_sql(ibis.table({"a": "string"}, name="t").filter(ibis._.a == "x"), dialect="duckdb")
    sql_times, ibis_times = [], []
    for _ in range(args.repeat):
        seconds, by_sql = run_sql(con)
        sql_times.append(seconds)
        seconds, by_ibis = run_ibis(con)
        ibis_times.append(seconds)
    sql, portable = statistics.median(sql_times), statistics.median(ibis_times)
    print(f"rows            : {args.rows:,} (median of {args.repeat})")
    print(f"dropped         : sql {len(by_sql):,}, ibis {len(by_ibis):,}")
    differ = sorted(k for k in set(by_sql) | set(by_ibis) if by_sql.get(k) != by_ibis.get(k))
    print(f"decided alike   : {args.rows - len(differ):,} of {args.rows:,} rows")
    for key in differ:
        print(f"  {key}: sql {by_sql.get(key, 'kept')!r}, ibis {by_ibis.get(key, 'kept')!r}")
    print(f"sql (DuckDB)    : {sql:8.2f} s")
    print(f"ibis on DuckDB  : {portable:8.2f} s")
    print(f"ibis / sql      : {portable / sql:8.2f}x")


if __name__ == "__main__":
    main()
