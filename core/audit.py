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

from core import clock
from core.escaping import csv_text
from core.store import Store

__all__ = [
    "ACTION_FAMILIES",
    "AuditEntry",
    "action_choices",
    "action_matches",
    "audit_actions",
    "audit_csv",
    "audit_entries",
    "audit_span",
    "record_audit",
]

ACTION_FAMILIES: dict[str, str] = {
    "plan": "plan versions and their sign-offs",
    "ingest": "files and uploads loaded",
    "view_raw_text": "raw (unredacted) text viewed",
    "forget": "users erased",
    "retention": "retention enforced",
    "cycle_run": "cycles run",
    "generation": "synthetic data generated or written",
    "eval_set": "eval sets imported or frozen",
    "eval": "eval runs and imported results",
    "training": "training jobs started, cancelled or resumed",
    "candidate": "cycle candidates registered",
    "gate": "release decisions on candidates",
    "store": "store backups and restores",
}
"""Every action the code writes, by family: an action is its family's name (``forget``) or the
name, a dot and a sub-action (``plan.approve``). The Audit page offers each as a filter."""


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
        "INSERT INTO audit_log (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        [clock.now(), actor, action, target, json.dumps(detail or {}, sort_keys=True, default=str)],
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
    """Audit entries, newest first, filtered by action (``action_matches``: ``plan`` or
    ``plan.`` matches ``plan.save`` and every other plan action, ``forget`` matches
    ``forget``), actor, a substring of the target and a time window."""
    clauses: list[str] = ["TRUE"]
    params: list[object] = []
    if action:
        family = action.rstrip(".")
        clauses.append("(action = ? OR starts_with(action, ?))")
        params += [family, family + "."]
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


def action_matches(action: str, choice: str) -> bool:
    """Whether an entry's ``action`` falls under a filter ``choice``: the action itself or one
    of its sub-actions (a trailing dot on the choice is allowed)."""
    family = choice.rstrip(".")
    return action == family or action.startswith(family + ".")


def action_choices(recorded: list[str]) -> list[str]:
    """The Audit page's action filter: every family (``ACTION_FAMILIES``, then any family of
    a recorded action the table does not name), then each recorded action that is a
    sub-action, so that every entry can be found by its family and by its exact action."""
    families = list(ACTION_FAMILIES)
    families += sorted({a.split(".")[0] for a in recorded} - set(families))
    return families + [a for a in recorded if a not in families]


def audit_span(store: Store) -> tuple[datetime, datetime] | None:
    """The times of the first and the last entry; None while the log is empty."""
    row = store.fetch_one("SELECT min(ts), max(ts) FROM audit_log")
    if row is None or row[0] is None:
        return None
    return row[0], row[1]


def audit_csv(entries: list[AuditEntry]) -> str:
    """Entries as CSV with a header row, times in ISO 8601; a cell that starts like a
    spreadsheet formula (``=``, ``+``, ``-``, ``@``…) gets a leading apostrophe."""
    return csv_text(
        ["audit_id", "ts", "actor", "action", "target", "detail"],
        ([e.audit_id, e.ts.isoformat(), e.actor, e.action, e.target, e.detail] for e in entries),
    )
