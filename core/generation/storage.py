"""Generated examples in the store: written (valid or failed, with their provenance) under
their item's key, and read back per spec as statuses, counts, examples and failures."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import duckdb

from core.access import User, require
from core.audit import record_audit
from core.generation.spec import GenerationSpec, cell_key
from core.store import Store, insert_rows

_EXAMPLE_COLUMNS = (
    "spec_hash",
    "cell_key",
    "item_index",
    "plan_id",
    "run_id",
    "cell",
    "status",
    "question",
    "answer",
    "payload",
    "failure_reason",
    "attempts",
    "teacher_model",
    "endpoint",
    "template_hash",
    "temperature",
    "generated_at",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)


_DEFAULTS: dict[str, Any] = {"attempts": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}


def write_examples(store: Store, rows: Sequence[dict[str, Any]], *, user: User) -> None:
    """Store examples (valid or failed) that ``user`` brings in from outside a generation run,
    replacing an earlier record of the same item, and audit it under their name (how many rows
    were written and how many earlier ones they replaced).

    Raises AccessError, before anything is written, when ``user`` may not run generation.
    """
    require(user, "generation.run")
    if not rows:
        return
    with store.transaction() as con:
        (replaced,) = con.execute(
            "SELECT count(*) FROM generated_examples g JOIN (SELECT unnest($specs) AS s,"
            " unnest($cells) AS c, unnest($items) AS i) k"
            " ON g.spec_hash = k.s AND g.cell_key = k.c AND g.item_index = k.i",
            {
                "specs": [str(r.get("spec_hash")) for r in rows],
                "cells": [str(r.get("cell_key")) for r in rows],
                "items": [int(r.get("item_index", -1)) for r in rows],
            },
        ).fetchone() or (0,)
        _insert_examples(con, rows)
        record_audit(
            con,
            actor=user.name,
            action="generation.examples_written",
            target=", ".join(sorted({f"plan:{r.get('plan_id')}" for r in rows})),
            detail={
                "rows": len(rows),
                "valid": sum(1 for r in rows if r.get("status") == "valid"),
                "replaced": int(replaced),
            },
        )


def _store_examples(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    """Store a run's examples; the run itself checked its user's role and audits it."""
    if not rows:
        return
    with store.transaction() as con:
        _insert_examples(con, rows)


def _insert_examples(con: duckdb.DuckDBPyConnection, rows: Sequence[dict[str, Any]]) -> None:
    # Columns bound as lists: about 20 ms for 200 rows, where a multi-row VALUES with a
    # parameter per field took 150 ms.
    insert_rows(
        con,
        "generated_examples",
        [[row.get(c, _DEFAULTS.get(c)) for c in _EXAMPLE_COLUMNS] for row in rows],
        columns=_EXAMPLE_COLUMNS,
        replace=True,
    )


def _stored_status(store: Store, spec_hash: str) -> dict[tuple[str, int], str]:
    rows = store.fetch_all(
        "SELECT cell_key, item_index, status FROM generated_examples WHERE spec_hash = ?",
        [spec_hash],
    )
    return {(r[0], int(r[1])): str(r[2]) for r in rows}


def stored_counts(store: Store, spec: GenerationSpec) -> dict[str, dict[str, int]]:
    """Per cell key: how many items are stored ``valid`` and ``failed`` for this spec."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"valid": 0, "failed": 0})
    for key, status, n in store.fetch_all(
        "SELECT cell_key, status, count(*) FROM generated_examples WHERE spec_hash = ?"
        " GROUP BY ALL",
        [spec.spec_hash],
    ):
        counts[str(key)][str(status)] = int(n)
    return dict(counts)


def list_examples(
    store: Store, spec: GenerationSpec, *, cell: dict[str, str] | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Valid examples of the spec (of one cell when given), with their provenance."""
    sql = (
        "SELECT cell_key, item_index, question, answer, teacher_model, endpoint, template_hash,"
        " temperature, generated_at, input_tokens, output_tokens, cost_usd, attempts"
        " FROM generated_examples WHERE spec_hash = ? AND status = 'valid'"
    )
    params: list[Any] = [spec.spec_hash]
    if cell is not None:
        sql += " AND cell_key = ?"
        params.append(cell_key(cell))
    sql += " ORDER BY cell_key, item_index LIMIT ?"
    params.append(limit)
    return store.fetch_dicts(sql, params)


def list_failures(store: Store, spec: GenerationSpec) -> list[dict[str, Any]]:
    """Failed items of the spec with the reason they failed."""
    return store.fetch_dicts(
        "SELECT cell_key, item_index, failure_reason, attempts, generated_at"
        " FROM generated_examples WHERE spec_hash = ? AND status = 'failed'"
        " ORDER BY cell_key, item_index",
        [spec.spec_hash],
    )
