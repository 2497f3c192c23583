"""What ingest left in the store, read back: the batches, one batch's quarantined lines, and
the PII redacted per type with samples.

The read side of core.ingest (which re-exports it), kept apart so that `rejects` and the
Data page's read-outs load no Ibis: these functions only read the tables ingest wrote.
"""

from __future__ import annotations

from typing import Any

from core.access import User, require
from core.audit import record_audit
from core.errors import IngestError
from core.privacy import PII_TYPES
from core.store import Store

__all__ = ["batch_rejects", "list_batches", "pii_samples", "pii_summary"]


def list_batches(store: Store) -> list[dict[str, Any]]:
    """Every batch, newest first."""
    return store.fetch_dicts(
        "SELECT batch_id, kind, file_name, sha256, cycle, rows_read, accepted, rejected, "
        "duplicates, read_path, started_at, finished_at FROM ingest_batches "
        "ORDER BY started_at DESC"
    )


def batch_rejects(
    store: Store,
    batch_id: str,
    *,
    user: User,
    reveal_raw: bool = False,
) -> list[dict[str, Any]]:
    """The quarantined rows of one batch: line and reason, and the raw line when
    ``reveal_raw`` (it may hold unredacted PII, so each such view is audited under ``user``).

    Raises IngestError when the batch does not exist; AccessError, before anything is read,
    when ``reveal_raw`` and ``user`` may not view raw PII.
    """
    if reveal_raw:
        require(user, "pii.view_raw")
    if store.fetch_one("SELECT 1 FROM ingest_batches WHERE batch_id = ?", [batch_id]) is None:
        raise IngestError(
            f"No batch {batch_id!r}; `python -m core data ingest FILE` prints the id of each batch."
        )
    columns = "line, reason" + (", raw" if reveal_raw else "")
    return _read_audited(
        store,
        f"SELECT {columns} FROM quarantine WHERE batch_id = ? ORDER BY line",
        [batch_id],
        user=user if reveal_raw else None,
        target=f"quarantine:{batch_id}",
    )


def pii_summary(store: Store, batch_id: str | None = None) -> dict[str, int]:
    """Values redacted per PII type, over one batch or all."""
    rows = store.fetch_all(
        "SELECT pii_type, sum(found) FROM pii_counts WHERE $batch IS NULL OR batch_id = $batch "
        "GROUP BY pii_type ORDER BY pii_type",
        {"batch": batch_id},
    )
    return {str(t): int(n) for t, n in rows}


def pii_samples(
    store: Store,
    pii_type: str,
    *,
    user: User,
    limit: int = 5,
    reveal_raw: bool = False,
) -> list[dict[str, Any]]:
    """Interactions in which ``pii_type`` was redacted: the redacted texts, and the originals
    only when ``reveal_raw`` — each such view is written to the audit log under ``user``
    (without the text).

    Raises AccessError, before anything is read, when ``reveal_raw`` and ``user`` may not
    view raw PII.
    """
    if reveal_raw:
        require(user, "pii.view_raw")
    if pii_type not in PII_TYPES:
        raise IngestError(f"Unknown PII type {pii_type!r}; use one of {', '.join(PII_TYPES)}.")
    columns = "interaction_id, batch_id, prompt, response"
    if reveal_raw:
        columns += ", raw_prompt, raw_response"
    return _read_audited(
        store,
        f"SELECT {columns} FROM interactions WHERE list_contains(pii, ?) "
        "ORDER BY ts, interaction_id LIMIT ?",
        [pii_type, limit],
        user=user if reveal_raw else None,
        target=f"pii:{pii_type}",
    )


def _read_audited(
    store: Store, sql: str, params: list[Any], *, user: User | None, target: str
) -> list[dict[str, Any]]:
    """Rows of ``sql`` as dicts; when ``user`` is given (raw text was asked for), the view is
    written to the audit log under their name in the same transaction, without the text."""
    with store.transaction() as con:
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        if user is not None:
            record_audit(
                con,
                actor=user.name,
                action="view_raw_text",
                target=target,
                detail={"rows": len(rows)},
            )
    return rows
