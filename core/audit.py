"""The append-only audit log: who did what to which thing, and when.

Only ``record_audit`` writes it, always inside the transaction of the change it records, so an
entry exists exactly when the change does. Nothing updates or deletes entries (erasure removes
personal data elsewhere and records here only an HMAC-SHA256 of the user id, under a key kept
outside the store: ``FLYWHEEL_AUDIT_KEY``, else a 0600 key file beside it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from core.escaping import csv_text
from core.store import Store

__all__ = ["AuditEntry", "audit_actions", "audit_csv", "audit_entries", "record_audit"]


def record_audit(
    con: duckdb.DuckDBPyConnection,
    *,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit entry inside the caller's transaction.

    ``detail`` is a before/after summary; it must never hold personal data or secrets.
    """
    con.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES (?, ?, ?, ?)",
        [actor, action, target, json.dumps(detail or {}, sort_keys=True, default=str)],
    )


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    audit_id: int
    ts: datetime
    actor: str
    action: str
    target: str
    detail: str


def audit_entries(
    store: Store,
    *,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Audit entries, newest first, filtered by action prefix (``plan.`` matches every plan
    action), actor, a substring of the target and a time window."""
    clauses: list[str] = ["TRUE"]
    params: list[object] = []
    if action:
        clauses.append("starts_with(action, ?)")
        params.append(action)
    if actor:
        clauses.append("actor = ?")
        params.append(actor)
    if target:
        clauses.append("contains(target, ?)")
        params.append(target)
    if since:
        clauses.append("ts >= ?")
        params.append(since)
    if until:
        clauses.append("ts < ?")
        params.append(until)
    sql = (
        "SELECT audit_id, ts, actor, action, target, CAST(detail AS VARCHAR) FROM audit_log"
        f" WHERE {' AND '.join(clauses)} ORDER BY audit_id DESC"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [AuditEntry(*row) for row in store.fetch_all(sql, params)]


def audit_actions(store: Store) -> list[str]:
    """The distinct actions recorded so far."""
    return [r[0] for r in store.fetch_all("SELECT DISTINCT action FROM audit_log ORDER BY 1")]


def audit_csv(entries: list[AuditEntry]) -> str:
    """Entries as CSV with a header row, times in ISO 8601; a cell that starts like a
    spreadsheet formula (``=``, ``+``, ``-``, ``@``…) gets a leading apostrophe."""
    return csv_text(
        ["audit_id", "ts", "actor", "action", "target", "detail"],
        ([e.audit_id, e.ts.isoformat(), e.actor, e.action, e.target, e.detail] for e in entries),
    )
