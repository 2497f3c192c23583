"""The append-only audit log: who did what to which thing, and when."""

from __future__ import annotations

import json
from typing import Any

import duckdb

__all__ = ["record_audit"]


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
