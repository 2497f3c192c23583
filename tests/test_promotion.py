"""Whether a cycle's candidate was promoted: gate decisions about that very model first, then
the A/B test's ship decision."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from core.errors import DocumentError
from core.plan import plan_timeline
from core.plan_versions import load_plan
from core.promotion import candidate_promotion, promotion_of
from core.store import Store

MODEL = "ft:student:c2"


def _decision(decision: str, *, model: str = MODEL, reason: str = "") -> dict[str, Any]:
    return {
        "decision_id": f"dec-{decision}",
        "candidate_model": model,
        "verdict": "pass" if decision == "approved" else "fail",
        "decision": decision,
        "reason": reason,
        "actor": "Omar",
        "decided_at": datetime(2027, 2, 27, 12, tzinfo=UTC),
    }


def test_an_approval_or_an_override_promotes() -> None:
    approved = promotion_of(MODEL, [_decision("approved")])
    assert (approved.promoted, approved.promoted_by) == (True, "approved")
    assert approved.summary == "Approved by Omar on 2027-02-27: every blocking gate passed."

    why = "The async tests are flaky upstream."
    overridden = promotion_of(MODEL, [_decision("overridden", reason=why)], "keep_running")
    assert (overridden.promoted, overridden.promoted_by) == (True, "overridden")
    assert "against a gate verdict of fail" in overridden.summary and why in overridden.summary


def test_the_newest_decision_counts_and_a_rejection_beats_an_ab_ship() -> None:
    newest_first = [_decision("rejected", reason="Regresses on async."), _decision("approved")]
    rejected = promotion_of(MODEL, newest_first, "ship")
    assert (rejected.promoted, rejected.promoted_by) == (False, None)
    assert rejected.summary == "Rejected by Omar on 2027-02-27: Regresses on async."
    assert rejected.decision is not None and rejected.decision["decision"] == "rejected"


def test_an_ab_ship_promotes_a_candidate_without_gate_decision() -> None:
    # A decision about the cycle's earlier candidate says nothing about this one.
    earlier = [_decision("rejected", model="ft:student:c2-old")]
    shipped = promotion_of(MODEL, earlier, "ship")
    assert (shipped.promoted, shipped.promoted_by, shipped.decision) == (True, "ab_ship", None)

    waiting = promotion_of(MODEL, earlier, "keep_running")
    assert not waiting.promoted
    assert waiting.summary == (
        "No gate decision is recorded about this candidate yet and the A/B test's verdict is "
        "keep running."
    )
    assert promotion_of(MODEL, []).summary == (
        "No gate decision is recorded about this candidate yet."
    )


def test_the_demo_promoted_cycle_1_and_cycle_3_has_no_candidate(demo_store: Store) -> None:
    promoted = candidate_promotion(demo_store, "python-coding-assistant", 1)
    assert (promoted.model, promoted.promoted) == ("pyassist-lora-c1", True)
    assert not candidate_promotion(demo_store, "python-coding-assistant", 2).promoted
    with pytest.raises(DocumentError, match="cycle 3 has no candidate model; register or train"):
        candidate_promotion(demo_store, "python-coding-assistant", 3)


def test_the_demo_approves_cycle_1_after_its_candidate_and_its_ab_test(demo_store: Store) -> None:
    plan, _ = load_plan(demo_store, "python-coding-assistant")
    cycle_1 = next(c for c in plan_timeline(plan) if c.cycle == 1)
    registered = demo_store.fetch_one("SELECT registered_at FROM cycle_candidates WHERE cycle = 1")
    decided = demo_store.fetch_one("SELECT decided_at FROM gate_decisions WHERE cycle = 1")
    assert registered is not None and decided is not None
    assert decided[0] > registered[0]
    assert decided[0].date() >= cycle_1.ab_end  # a model card never approves before the A/B
