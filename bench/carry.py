"""Carry-forward benchmark: ``python bench/carry.py [--parent N] [--window N] [--repeat N]``.

Prints, measured in the same run on copies of one store:
  no parent    cycle 3 of the bench plan over a window of --window new rows (default 100k),
               with no earlier version to carry (core.cycles.run_cycle)
  with parent  the same cycle, whose parent version (cycle 2) holds --parent rows (default
               500k): they are checked again and carried, and the window's rows are
               deduplicated exactly and near against them
the ratio of the two (target ≤ 1.5x), and the funnel of the carrying run. The two alternate,
--repeat times each (default 2); medians are compared.

The store is bench/cycle.py's (its log ingested through the real ingest, with consent, eval
items and synthetic examples). Before the clock starts, the window's rows are moved into cycle
3's window, and the parent version is written from --parent consented rows of cycle 2 and
sketched by core.cycles.sketch_version, as a cycle that writes a version sketches it: a
cycle then reads the parent's sketches instead of cutting its texts again. The parent is
what a cycle run of today's Flywheel writes: its texts checked by today's PII detectors, and its
lineage naming those detectors and the plan's filters, so carried rows are not checked or
filtered again (changed detectors or a changed rule would be).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

import ibis  # noqa: E402

from bench.cycle import base_store  # noqa: E402
from core import quality  # noqa: E402
from core.access import local_operator  # noqa: E402
from core.cycles import (  # noqa: E402
    _cell_sql,
    _pii_stage,
    fresh_batches,
    pipeline_rules,
    run_cycle,
    sketch_version,
)
from core.datasets import line_sha_sql  # noqa: E402
from core.plan_versions import load_plan  # noqa: E402
from core.privacy import DETECTORS_FINGERPRINT  # noqa: E402
from core.store import Store  # noqa: E402

WINDOW_START = "2027-04-01"  # inside cycle 3's window of the bench plan


def prepared(parent: int, window: int) -> Path:
    """bench/out/carry_<parent>_<window>.duckdb: the window moved into cycle 3 and the parent
    version of cycle 2 written and sketched (made once)."""
    path = OUT / f"carry_{parent}_{window}.duckdb"
    if path.exists():
        Store(path).schema_version()  # a store made before a migration: migrated once, here
        return path
    base = base_store(int(parent / 0.75) + window)  # consent leaves out a fifth of the users
    shutil.copy(base, path)
    store = Store(path)
    plan_id = str(store.fetch_all("SELECT plan_id FROM plans")[0][0])
    plan, plan_version = load_plan(store, plan_id)
    plan.cadence.max_dataset_size = 2_000_000
    # The parent's rows are months older than cycle 3's freeze: keep raw text for two years so
    # that they are carried, not retired at retention.
    plan.consent.retention_limit_days = 730
    for logged in plan.logging.fields:
        logged.retention_days = max(logged.retention_days, 730)
    from core.plan_versions import save_plan_version
    from core.signoffs import record_decision, required_roles

    plan_id, plan_version = save_plan_version(
        store, plan, note="bench: no cap", user=local_operator(), plan_id=plan_id
    )
    from core.access import User

    for role in required_roles(plan):
        approver = User(f"bench {role}", frozenset({role}))
        record_decision(store, plan_id, plan_version, role=role, user=approver, decision="approve")
    filters = [
        {
            "name": rule.rule,
            "rule": rule.rule,
            "origin": origin,
            "params": rule.model_dump(mode="json"),
        }
        for rule, origin in pipeline_rules(plan)
    ]
    version = f"ds-{plan_id}-c2-v1"
    with store.transaction() as con:
        quality.install_stage_functions(con)
        con.execute(
            "UPDATE interactions SET ts = TIMESTAMPTZ '" + WINDOW_START + "'"
            " + to_seconds(m.n * 10) FROM (SELECT interaction_id, row_number() OVER"
            " (ORDER BY ts DESC, interaction_id) AS n FROM interactions) m"
            " WHERE m.interaction_id = interactions.interaction_id AND m.n <= $window",
            {"window": window},
        )
        con.execute(
            "CREATE TEMP TABLE parent_rows AS SELECT i.*, " + _cell_sql(plan) + " AS fw_cell"
            " FROM interactions i WHERE ts < TIMESTAMPTZ '2027-03-25' AND user_id IN"
            " (SELECT user_id FROM consent_events WHERE scope = 'training') ORDER BY ts"
            " LIMIT $parent",
            {"parent": parent},
        )
        # The parent as a cycle run writes it: its texts checked by today's PII detectors.
        checked = _pii_stage(
            ibis.table(
                {
                    "interaction_id": "string",
                    "user_id": "string",
                    "batch_id": "string",
                    "system": "string",
                    "prompt": "string",
                    "response": "string",
                    "fw_cell": "string",
                    "ts": "timestamp('UTC')",
                },
                name="parent_rows",
            ),
            fresh_batches(con),
        )
        con.execute(f"CREATE TEMP TABLE parent_checked AS {ibis.to_sql(checked, dialect='duckdb')}")
        con.execute(
            "INSERT INTO dataset_texts BY NAME SELECT interaction_id AS row_key, interaction_id,"
            " user_id, prompt, response, md5(prompt || chr(31) || response) AS text_md5"
            " FROM parent_checked"
        )
        con.execute(
            "INSERT INTO dataset_members BY NAME SELECT $v AS version_id,"
            " interaction_id AS row_key, 'production' AS source, interaction_id, user_id,"
            " fw_cell AS cell_key,"
            " CASE WHEN md5(interaction_id) < '1a' THEN 'validation' ELSE 'train' END AS split,"
            " $system AS system, md5(interaction_id) AS sort_key,"
            " 2 AS origin_cycle, $v AS origin_version,"
            " md5(prompt || chr(31) || response) AS text_md5,"
            f" {line_sha_sql('$system::VARCHAR')} AS line_sha FROM parent_checked",
            {"v": version, "system": plan.goal.system_message},
        )
        (rows,) = con.execute(
            "SELECT count(*) FROM dataset_members WHERE version_id = ?", [version]
        ).fetchone() or (0,)
        eval_items = con.execute(
            "SELECT md5(coalesce(string_agg(md5(eval_set || chr(31) || prompt || chr(31)"
            " || coalesce(reference, '')), ',' ORDER BY eval_set, prompt, reference), ''))"
            " FROM eval_items"
        ).fetchone()
        lineage = {
            "filters": filters,
            "eval_items": eval_items[0] if eval_items else "",
            "pii_detectors": DETECTORS_FINGERPRINT,
        }
        con.execute(
            "INSERT INTO dataset_versions VALUES (?, ?, ?, 2, 1, NULL, 'bench', 'bench', ?, ?, 0,"
            " ?, 0, ?, '{}', 'bench', now())",
            [version, plan_id, plan_version, rows, rows, rows, json.dumps(lineage)],
        )
        start = time.perf_counter()
        near = next(r.threshold for r, _ in pipeline_rules(plan) if r.rule == "near_dedup")
        sketch_version(con, version, near)
        print(f"(wrote the parent: {rows:,} rows, sketched in {time.perf_counter() - start:.1f} s)")
    return path


def run(base: Path, with_parent: bool) -> tuple[float, dict[str, Any]]:
    target = OUT / "carry_run.duckdb"
    for suffix in ("", ".wal"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copy(base, target)
    # The copy's pages reach the disk before the clock starts: the cycle's commit would
    # otherwise pay for flushing the whole file it did not write.
    os.sync()
    store = Store(target)
    if not with_parent:
        store.execute("DELETE FROM dataset_versions")
    plan_id = str(store.fetch_all("SELECT plan_id FROM plans")[0][0])
    store.schema_version()
    # Ibis loads its SQL compiler on the first compile: once per process, outside the clock.
    ibis.to_sql(ibis.table({"a": "string"}, name="t").filter(ibis._.a == "x"), dialect="duckdb")
    start = time.perf_counter()
    result = run_cycle(store, plan_id, 3, user=local_operator())
    return time.perf_counter() - start, result.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parent", type=int, default=500_000)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    base = prepared(args.parent, args.window)
    fresh, carried = [], []
    for _ in range(args.repeat):
        fresh.append(run(base, with_parent=False))
        carried.append(run(base, with_parent=True))
    alone = statistics.median(t for t, _ in fresh)
    ours, result = sorted(carried, key=lambda r: r[0])[len(carried) // 2]
    funnel = ", ".join(f"{s['name']} {s['rows_in']:,}→{s['rows_out']:,}" for s in result["stages"])
    _t, alone_result = sorted(fresh, key=lambda r: r[0])[len(fresh) // 2]
    print(f"parent / window : {args.parent:,} / {args.window:,} rows (median of {args.repeat})")
    print(f"funnel          : {funnel}")
    for name, stages in (("with parent", result["stages"]), ("no parent", alone_result["stages"])):
        slowest = sorted(stages, key=lambda s: -s["seconds"])[:5]
        shown = ", ".join(f"{s['name']} {s['seconds']:.2f} s" for s in slowest)
        print(f"slowest ({name}): {shown}")
    print(f"no parent       : {alone:7.2f} s")
    print(f"with parent     : {ours:7.2f} s")
    print(f"with / without  : {ours / alone:7.2f}x   (target ≤ 1.5x)")


if __name__ == "__main__":
    main()
