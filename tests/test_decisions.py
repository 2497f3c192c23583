"""Release decisions are deliberate: the same decision twice in a row is refused in core, so
the page and ``gate decide`` refuse it too; gate check's text explains each verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_evals import ML, _gate_workspace

from core.cli import main
from core.errors import GateError
from core.gates import current_decision, cycle_decisions, record_decision
from core.store import Store


def test_the_same_decision_twice_in_a_row_is_refused(store: Store, tmp_path: Path) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=False)
    assert current_decision(store, plan_id, 1) is None
    first = record_decision(store, plan_id, 1, decision="approved", user=ML)
    with pytest.raises(GateError, match=r"already approved .*not recorded twice in a row"):
        record_decision(store, plan_id, 1, decision="approved", user=ML)
    assert [d["decision_id"] for d in cycle_decisions(store, plan_id, 1)] == [first]
    audited = store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'gate.approved'")
    assert audited == (1,)
    # A different decision is recorded, and after it the first one again.
    record_decision(store, plan_id, 1, decision="rejected", user=ML)
    current = current_decision(store, plan_id, 1)
    assert current is not None and current["decision"] == "rejected"
    record_decision(store, plan_id, 1, decision="approved", user=ML)
    assert [d["decision"] for d in cycle_decisions(store, plan_id, 1)] == [
        "approved",
        "rejected",
        "approved",
    ]


def test_gate_decide_refuses_a_repeat_with_one_line_and_exit_2(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=False)
    db = str(store.path)
    argv = ["gate", "decide", "--cycle", "1", "--plan", plan_id, "--approve", "--db", db]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "already approved" in err
    assert len(err.splitlines()) == 1
    assert len(cycle_decisions(store, plan_id, 1)) == 1


def test_gate_check_text_explains_each_verdict(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=True)
    assert main(["gate", "check", "--cycle", "1", "--plan", plan_id, "--db", str(store.path)]) == 1
    out = capsys.readouterr().out
    assert "fails: on topic = async (and 1 other slice) the candidate scores 0.50" in out
    assert "undecided: no tokens were measured for the candidate" in out
    assert "passes: the candidate keeps at least" in out
