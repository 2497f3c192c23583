"""Erasure benchmark: ``python bench/erasure.py [--rows 1000000] [--users 50000]``.

Builds a store of ``--rows`` interactions (each also a dataset row, as after a cycle) and
erases one user twice, on two copies of the same file, measured in the same run:
  baseline  the same deletes followed by a CHECKPOINT (what erasure cost when it only hid
            the rows: their bytes stayed in the file's freed blocks)
  ours      core.consent.forget_user: the deletes, eval items by provenance, then the rewrite
            of the whole file (core.store.Store.rewrite) so that no byte of the user is left
It prints both times, the ratio, the rewrite's share, the file sizes, and whether the user's id
is still readable in each file's bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.access import local_operator  # noqa: E402
from core.consent import forget_user  # noqa: E402
from core.datasets import line_sha_sql  # noqa: E402
from core.store import Store  # noqa: E402

VICTIM = "u-000042"


def build(path: Path, rows: int, users: int) -> None:
    """Interactions and dataset rows straight from SQL (the ingest is benchmarked elsewhere)."""
    store = Store(path)
    with store.transaction() as con:
        con.execute(
            "INSERT INTO interactions (interaction_id, batch_id, cycle, line, ts, user_id,"
            " variant, model, prompt, response, pii) SELECT 'i-' || i, 'b-1', 1, i,"
            " TIMESTAMPTZ '2027-01-01' + to_seconds(i), printf('u-%06d', i % $users),"
            " 'control', 'm', 'How do I sort list ' || i || ' of records by key ' || (i * 7)"
            " || ' in Python?', 'Use sorted(records, key=lambda r: r.k' || i || ')"
            " which returns a new list.', [] FROM range($rows) r(i)",
            {"rows": rows, "users": users},
        )
        con.execute(
            "INSERT INTO dataset_texts SELECT interaction_id, md5(prompt || chr(31) || response),"
            " interaction_id, user_id, prompt, response FROM interactions"
        )
        con.execute(
            "INSERT INTO dataset_members SELECT 'ds-1', interaction_id, 'production',"
            " interaction_id, user_id, '{}', 'train', NULL, md5(interaction_id), 1, 'ds-1',"
            f" md5(prompt || chr(31) || response), {line_sha_sql()} FROM interactions"
        )
        con.execute(
            "INSERT INTO dataset_versions VALUES ('ds-1', 'p', 1, 1, 1, NULL, 'run', 'sha',"
            " $rows, $rows, 0, $rows, 0, '{}', '{}', 'bench', now())",
            {"rows": rows},
        )
    with store.connect() as con:
        con.execute("CHECKPOINT")


def baseline(path: Path) -> float:
    """Delete the victim's rows and checkpoint: the old erasure, which left their bytes."""
    store = Store(path)
    start = time.perf_counter()
    with store.transaction() as con:
        con.execute("DELETE FROM dataset_members WHERE user_id = ?", [VICTIM])
        con.execute("DELETE FROM dataset_texts WHERE user_id = ?", [VICTIM])
        con.execute("DELETE FROM interactions WHERE user_id = ?", [VICTIM])
    with store.connect() as con:
        con.execute("CHECKPOINT")
    return time.perf_counter() - start


def ours(path: Path) -> tuple[float, float]:
    store = Store(path)
    start = time.perf_counter()
    result = forget_user(store, VICTIM, by=local_operator())
    return time.perf_counter() - start, result.rewrite_seconds


def still_readable(path: Path) -> bool:
    wal = Path(f"{path}.wal")
    data = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    return VICTIM.encode() in data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    args = parser.parse_args()
    os.environ.setdefault("FLYWHEEL_AUDIT_KEY", "bench-key")
    with tempfile.TemporaryDirectory(prefix="flywheel-erasure-") as tmp:
        template = Path(tmp) / "template.duckdb"
        started = time.perf_counter()
        build(template, args.rows, args.users)
        built_s = time.perf_counter() - started
        print(
            f"store: {args.rows:,} interactions + {args.rows:,} dataset rows, "
            f"{template.stat().st_size / 1e6:.0f} MB, built in {built_s:.1f} s"
        )
        copies = {name: Path(tmp) / f"{name}.duckdb" for name in ("baseline", "ours")}
        for copy in copies.values():
            shutil.copyfile(template, copy)
        base_s = baseline(copies["baseline"])
        ours_s, rewrite_s = ours(copies["ours"])
        print(
            f"baseline (delete + CHECKPOINT): {base_s:6.2f} s, "
            f"{copies['baseline'].stat().st_size / 1e6:.0f} MB, "
            f"user readable in the file: {still_readable(copies['baseline'])}"
        )
        print(
            f"ours (forget + rewrite):        {ours_s:6.2f} s, "
            f"{copies['ours'].stat().st_size / 1e6:.0f} MB, "
            f"user readable in the file: {still_readable(copies['ours'])}"
        )
        print(
            f"ratio: {ours_s / base_s:.1f}x the baseline; the rewrite took {rewrite_s:.2f} s "
            f"({rewrite_s / ours_s:.0%} of ours)"
        )


if __name__ == "__main__":
    main()
