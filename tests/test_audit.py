"""The audit log: filtered queries and the CSV export a lead hands to an auditor."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from core.access import User
from core.audit import audit_csv, audit_entries
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store


def test_filters_and_csv(store: Store) -> None:
    plan_id, _ = save_plan_version(
        store,
        starter_plan("python_coding_assistant"),
        note="a",
        user=User("maya", frozenset({"pm"})),
    )
    save_plan_version(
        store,
        starter_plan("customer_support_assistant"),
        note="b",
        user=User("jonas", frozenset({"pm"})),
    )
    everything = audit_entries(store)
    assert [e.actor for e in everything] == ["jonas", "maya"]  # newest first
    assert [e.actor for e in audit_entries(store, actor="maya")] == ["maya"]
    assert [e.target for e in audit_entries(store, target=plan_id)] == [f"{plan_id}@v1"]
    assert len(audit_entries(store, action="plan.")) == 2
    assert audit_entries(store, since=datetime.now(UTC) + timedelta(hours=1)) == []

    rows = list(csv.DictReader(io.StringIO(audit_csv(everything))))
    assert [r["actor"] for r in rows] == ["jonas", "maya"]
    assert rows[0]["action"] == "plan.save" and '"note": "b"' in rows[0]["detail"]
    datetime.fromisoformat(rows[0]["ts"])


def test_no_code_path_rewrites_the_audit_log() -> None:
    from conftest import ROOT

    offenders = [
        p.name
        for p in (ROOT / "core").rglob("*.py")
        if any(
            stmt in p.read_text().upper()
            for stmt in ("DELETE FROM AUDIT_LOG", "UPDATE AUDIT_LOG", "DROP TABLE AUDIT_LOG")
        )
    ]
    assert offenders == []
