"""Cycle benchmark: ``python bench/cycle.py [--rows N] [--pandas-rows N] [--skip-pandas]
[--repeat N]``.

Prints, measured in the same run:
  ours        a whole cycle (consent, PII check, the starter plan's filters, exact and
              near-duplicates, decontamination, mix, split, version) over the stored log
              (core.cycles.run_cycle), on 1M interactions by default
  exact-only  one DuckDB query doing only the exact-duplicate step over the same rows (the
              same normalisation of every row; the faster of two formulations)
  (ours and exact-only alternate, --repeat times each, default 3; the medians are compared)
  pandas      the same stages in pandas + datasketch (MinHash LSH), on a sample of
              --pandas-rows (default 100k) rows, against ours on the same sample
The log is bench/make_log.py's (written to bench/out/ when missing), loaded once through the
real ingest into bench/out/cycle_base.duckdb; consent (80% of users), 20 eval items taken from
stored prompts and 2,000 synthetic examples are added with seeded SQL.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import statistics
import sys
import time
import warnings
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

import ibis  # noqa: E402

from bench.make_log import write_log  # noqa: E402
from core.access import User, local_operator  # noqa: E402
from core.cycles import run_cycle  # noqa: E402
from core.ingest import ingest_file  # noqa: E402
from core.plan import Plan  # noqa: E402
from core.plan_versions import save_plan_version  # noqa: E402
from core.privacy import DETECTORS  # noqa: E402
from core.quality import normalised_text_sql  # noqa: E402
from core.signoffs import record_decision, required_roles  # noqa: E402
from core.starters import starter_plan  # noqa: E402
from core.store import Store  # noqa: E402


def bench_plan() -> Plan:
    """The starter coding plan, with a cadence whose cycle 2 window covers the whole log."""
    plan = starter_plan("python_coding_assistant")
    # A starter's privacy review starts pending; the bench's reviewer approved before its start.
    plan.consent.privacy_review.status = "approved"
    plan.consent.privacy_review.decided_on = date(2026, 11, 20)
    plan.goal.start_month = "2026-12"
    plan.goal.horizon_months = 12
    plan.cadence.mode = "weeks"
    plan.cadence.every_weeks = 16
    plan.cadence.data_freeze_day = 3
    return plan


def base_store(rows: int) -> Path:
    """bench/out/cycle_base_<rows>.duckdb: the log ingested, plus consent, evals, synthetic."""
    path = OUT / f"cycle_base_{rows}.duckdb"
    if path.exists():
        return path
    log = OUT / "interactions_1m.jsonl"
    if not log.exists():
        write_log(log, 1_000_000)
    full = OUT / "cycle_base_1000000.duckdb"
    if not full.exists():
        store = Store(full)
        start = time.perf_counter()
        result = ingest_file(store, log, user=local_operator())
        took = time.perf_counter() - start
        print(f"(ingested the log once: {result.accepted:,} rows, {took:.0f} s)")
        _extras(store)
    if rows == 1_000_000:
        return full
    store = Store(path)
    with store.transaction() as con:
        con.execute(f"ATTACH '{full}' AS base (READ_ONLY)")
        for table in (
            "interactions",
            "consent_events",
            "eval_items",
            "generated_examples",
            "plans",
            "plan_versions",
            "plan_approvals",
        ):
            where = " ORDER BY ts, interaction_id LIMIT $n" if table == "interactions" else ""
            con.execute(
                f"INSERT INTO {table} SELECT * FROM base.{table}{where}",
                {"n": rows} if where else {},
            )
    return path


def _extras(store: Store) -> None:
    plan_id, version = save_plan_version(store, bench_plan(), note="bench", user=local_operator())
    for role in required_roles(bench_plan()):
        approver = User(f"bench {role}", frozenset({role}))
        record_decision(store, plan_id, version, role=role, user=approver, decision="approve")
    with store.transaction() as con:
        con.execute(
            "INSERT INTO consent_events SELECT 'bench', 0, user_id, TIMESTAMPTZ '2026-11-01',"
            " 'training', 'grant', '1', 'bench' FROM (SELECT DISTINCT user_id FROM interactions)"
            " WHERE CAST('0x' || md5(user_id)[:4] AS INTEGER) % 5 <> 0"
        )
        con.execute(
            "INSERT INTO eval_items SELECT 'e-' || row_number() OVER (ORDER BY interaction_id),"
            " 'bench', 0, 'bench-set', prompt, NULL, topic, difficulty, NULL FROM interactions"
            " WHERE interaction_id IN (SELECT 'i-' || lpad(CAST(n * 49999 AS VARCHAR), 8, '0')"
            " FROM range(1, 21) r(n))"
        )
        con.execute(
            "INSERT INTO generated_examples (spec_hash, cell_key, item_index, plan_id, run_id,"
            " cell, status, question, answer, teacher_model, endpoint, template_hash, temperature,"
            " generated_at) SELECT 'benchspec', json_object('difficulty', d, 'topic', t)::VARCHAR,"
            " i, $plan, 'bench', json_object('difficulty', d, 'topic', t)::VARCHAR, 'valid',"
            " 'Synthetic question ' || i || ' about ' || t, 'Synthetic answer ' || i, 'gpt-4o',"
            " '', '', 0.8, TIMESTAMPTZ '2026-12-01' FROM range(2000) r(i),"
            " (SELECT ['data structures', 'testing'][1 + (i % 2)] AS t,"
            "  ['beginner', 'advanced'][1 + (i // 2 % 2)] AS d)",
            {"plan": plan_id},
        )


def fresh_copy(base: Path, name: str) -> Store:
    target = OUT / name
    for suffix in ("", ".wal"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copy(base, target)
    return Store(target)


def run_ours(base: Path) -> tuple[float, dict[str, Any]]:
    store = fresh_copy(base, "cycle_run.duckdb")
    plan_id = store.fetch_all("SELECT plan_id FROM plans")[0][0]
    store.schema_version()
    # Ibis loads its SQL compiler (and pandas with it) on the first compile: a once-per-process
    # cost that a running dashboard has paid already, and the pandas baseline imports outside
    # its clock too.
    ibis.to_sql(ibis.table({"a": "string"}, name="t").filter(ibis._.a == "x"), dialect="duckdb")
    start = time.perf_counter()
    result = run_cycle(store, plan_id, 2, user=local_operator())
    return time.perf_counter() - start, result.to_dict()


def run_exact_only(base: Path) -> float:
    """One query: the exact-duplicate step alone, normalising every row as the cycle does.

    (Normalising each distinct text once and joining back is 2.4x faster on this log, which
    reuses 5,000 prompts and 5,000 responses; the cycle does not lean on that repetition, which
    real logs lack, so neither does the baseline.)"""
    store = fresh_copy(base, "cycle_exact.duckdb")
    prompt, response = normalised_text_sql("prompt"), normalised_text_sql("response")
    queries = [
        "CREATE TEMP TABLE exact AS SELECT * FROM interactions WHERE interaction_id IN ("
        f"SELECT arg_min(interaction_id, (ts, interaction_id)) FROM interactions GROUP BY "
        f"{prompt}, {response})",
        "CREATE TEMP TABLE exact AS SELECT * FROM interactions QUALIFY row_number() OVER ("
        f"PARTITION BY {prompt}, {response} ORDER BY ts, interaction_id) = 1",
    ]
    best = float("inf")
    for query in queries:
        with store.connect() as con:
            start = time.perf_counter()
            con.execute(query)
            best = min(best, time.perf_counter() - start)
    return best


# -- the pandas + datasketch version of the same stages ------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def run_pandas(base: Path) -> float:
    import duckdb
    import pandas as pd
    from datasketch import MinHash, MinHashLSH

    plan = bench_plan()
    con = duckdb.connect(str(base), read_only=True)
    start = time.perf_counter()
    rows = con.execute(
        "SELECT interaction_id, user_id, ts, system, prompt, response, feedback, accepted, topic,"
        " difficulty FROM interactions WHERE ts >= '2026-12-03' AND ts < '2027-03-25'"
    ).df()
    events = con.execute(
        "SELECT user_id, ts, action FROM consent_events WHERE scope = 'training'"
    ).df()
    evals = con.execute("SELECT item_id, prompt FROM eval_items").df()
    synthetic = con.execute(
        "SELECT cell_key, question, answer FROM generated_examples WHERE status = 'valid'"
    ).df()
    con.close()
    # consent: the latest grant at or before the interaction, and no withdrawal after it
    grants = events[events.action == "grant"].sort_values("ts")
    rows = rows.sort_values("ts")
    merged = pd.merge_asof(
        rows,
        grants.rename(columns={"ts": "g_ts"}),
        left_on="ts",
        right_on="g_ts",
        by="user_id",
        direction="backward",
    )
    withdrawals = events[events.action == "withdraw"].groupby("user_id").ts.max().rename("w_ts")
    merged = merged.merge(withdrawals, left_on="user_id", right_index=True, how="left")
    eligible = merged.g_ts.notna() & ~(merged.w_ts >= merged.g_ts)
    rows = merged[eligible].drop(columns=["g_ts", "w_ts", "action"])
    # PII check with the same detectors (Python's re)
    patterns = [re.compile(d.pattern) for d in DETECTORS]

    def has_pii(text: Any) -> bool:
        return isinstance(text, str) and any(p.search(text) for p in patterns)

    rows["pii_again"] = [
        has_pii(p) or has_pii(r) or has_pii(s)
        for p, r, s in zip(rows.prompt, rows.response, rows.system, strict=True)
    ]
    # row rules
    rows = rows[(rows.feedback == "up") | rows.accepted.fillna(False).astype(bool)]
    lengths = rows.response.str.len()
    rows = rows[(lengths >= 20) & (lengths <= 8000)]
    fence = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)

    def parses(text: str) -> bool:
        for match in fence.finditer(text):
            try:
                ast.parse(match[2])
            except SyntaxError:
                return False
        return True

    rows = rows[[parses(t) for t in rows.response]]
    # exact duplicates, best rated first
    rows["rating"] = (
        (rows.feedback == "up") * 4 + rows.accepted.fillna(False) * 2 - (rows.feedback == "down")
    )
    rows = rows.sort_values(["rating", "ts", "interaction_id"], ascending=[False, True, True])
    rows["key"] = [
        _norm(p) + "\x1f" + _norm(r) for p, r in zip(rows.prompt, rows.response, strict=True)
    ]
    rows = rows.drop_duplicates("key")
    # near-duplicates: datasketch MinHash (128 permutations) + LSH at 0.8, word 3-grams
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    keep: list[bool] = []
    for index, (prompt, response) in enumerate(zip(rows.prompt, rows.response, strict=True)):
        words = _norm(prompt + " " + response).split(" ")
        shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
        sketch = MinHash(num_perm=128)
        sketch.update_batch([s.encode() for s in shingles])
        if lsh.query(sketch):
            keep.append(False)
        else:
            lsh.insert(str(index), sketch)
            keep.append(True)
    rows = rows[keep]

    # decontamination: 13-grams of every eval prompt
    def grams(text: str, n: int = 13) -> set[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}

    item_grams = [grams(p) for p in evals.prompt]
    index_of: dict[str, list[int]] = defaultdict(list)
    for number, found in enumerate(item_grams):
        for gram in found:
            index_of[gram].append(number)
    clean = []
    for prompt, response in zip(rows.prompt, rows.response, strict=True):
        own = grams(prompt + " " + response)
        hits: dict[int, int] = defaultdict(int)
        for gram in own:
            for number in index_of.get(gram, ()):
                hits[number] += 1
        clean.append(not any(k / min(len(own), len(item_grams[n])) >= 0.5 for n, k in hits.items()))
    rows = rows[clean]
    # mix and split, stratified by cell
    cap, ratio = plan.cadence.max_dataset_size, plan.cadence.original_to_new_ratio
    keep_n = min(len(rows), int(cap // (1 + ratio)))
    rows["cell_key"] = [
        json.dumps({"difficulty": d, "topic": t}, separators=(",", ":"))
        for d, t in zip(rows.difficulty, rows.topic, strict=True)
    ]
    rows = rows.sample(frac=1, random_state=1).head(keep_n)
    mixed = pd.concat(
        [
            rows[["cell_key", "prompt", "response"]],
            synthetic.rename(columns={"question": "prompt", "answer": "response"}).head(
                round(ratio * keep_n)
            ),
        ]
    )
    mixed["rank"] = mixed.groupby("cell_key").cumcount()
    mixed["size"] = mixed.groupby("cell_key").cell_key.transform("size")
    mixed["split"] = [
        "validation" if r < s * 0.1 else "train"
        for r, s in zip(mixed["rank"], mixed["size"], strict=True)
    ]
    "\n".join(
        json.dumps(
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        )
        for p, r in zip(mixed.prompt, mixed.response, strict=True)
    )
    return time.perf_counter() - start


def main() -> None:
    # DuckDB's .df() calls a pandas method that pandas 3.1 deprecates; not ours to fix.
    warnings.filterwarnings("ignore", message="The inplace keyword")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pandas-rows", type=int, default=100_000)
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of ours and of the exact-only query"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    base = base_store(args.rows)
    # Alternated, median of each: a busy moment of the machine falls on both sides alike.
    runs, exacts = [], []
    for _ in range(args.repeat):
        runs.append(run_ours(base))
        exacts.append(run_exact_only(base))
    ours, result = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    exact = statistics.median(exacts)
    funnel = ", ".join(f"{s['name']} {s['rows_in']:,}→{s['rows_out']:,}" for s in result["stages"])
    slowest = sorted(result["stages"], key=lambda s: -s["seconds"])[:4]
    print(f"rows stored     : {args.rows:,} (median of {args.repeat} runs each)")
    print(f"funnel          : {funnel}")
    print("slowest stages  : " + ", ".join(f"{s['name']} {s['seconds']:.2f} s" for s in slowest))
    print(f"ours (cycle)    : {ours:7.2f} s")
    print(f"exact-only query: {exact:7.2f} s")
    print(f"ours / exact    : {ours / exact:7.2f}x   (target ≤ 3x)")
    if not args.skip_pandas:
        sample = base_store(args.pandas_rows)
        ours_sample, _ = run_ours(sample)
        pandas = run_pandas(sample)
        print(
            f"sample          : {args.pandas_rows:,} rows (pandas + datasketch at 1M is too slow)"
        )
        print(f"ours on sample  : {ours_sample:7.2f} s")
        print(f"pandas+datasketch: {pandas:7.2f} s")
        print(f"pandas / ours   : {pandas / ours_sample:7.2f}x   (target ≥ 5x)")


if __name__ == "__main__":
    main()
