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


def _written_actions() -> list[str]:
    """Every action a ``record_audit`` call in core writes, read from the code; an f-string's
    variable part becomes ``sub`` (``gate.{decision}`` → ``gate.sub``)."""
    import re

    from conftest import ROOT

    found: list[str] = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for call in re.finditer(r"record_audit\(", text):
            if text[: call.start()].rstrip().endswith("def"):
                continue  # the definition itself
            body = text[call.end() : call.end() + 400]
            literal = re.search(r"action=f?\"([^\"]+)\"", body)
            assert literal, f"{path.name}: a record_audit call whose action is not a literal"
            found.append(re.sub(r"\{[^}]*\}", "sub", literal.group(1)))
    return found


def test_every_action_the_code_writes_has_a_filter_choice_that_finds_it(store: Store) -> None:
    from core.audit import ACTION_FAMILIES, action_choices, record_audit

    written = sorted(set(_written_actions()))
    assert {"plan.save", "ingest", "view_raw_text", "forget", "cycle_run", "gate.sub"} <= set(
        written
    )
    offered = action_choices([])
    for action in written:
        assert action.split(".")[0] in ACTION_FAMILIES, f"no filter choice for '{action}'"
        assert action.split(".")[0] in offered
    with store.transaction() as con:
        for n, action in enumerate(written):
            record_audit(con, actor="tester", action=action, target=f"t{n}")
    for family in ACTION_FAMILIES:
        expected = sorted(a for a in written if a == family or a.startswith(family + "."))
        for choice in (family, family + "."):
            got = sorted(e.action for e in audit_entries(store, action=choice))
            assert got == expected, f"filter '{choice}'"
    # The choices the page offers on this log: each family, then the exact sub-actions.
    choices = action_choices(sorted(written))
    for action in written:
        assert action in choices
        assert [e.action for e in audit_entries(store, action=action)] == [action]


def test_family_filter_does_not_match_a_longer_family(store: Store) -> None:
    from core.audit import record_audit

    with store.transaction() as con:
        record_audit(con, actor="a", action="eval.run", target="r1")
        record_audit(con, actor="a", action="eval_set.freeze", target="s1")
        record_audit(con, actor="a", action="view_raw_text", target="b1")
        record_audit(con, actor="a", action="view_raw_text", target="b2")
    assert [e.target for e in audit_entries(store, action="eval")] == ["r1"]
    assert [e.target for e in audit_entries(store, action="eval_set.")] == ["s1"]
    assert [e.target for e in audit_entries(store, action="view_raw_text.")] == ["b2", "b1"]
