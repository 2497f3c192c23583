"""Whether a cycle's candidate was promoted: the rule the model card and its reviewers read.

A candidate is promoted when the newest gate decision recorded about that very model approves
it (every blocking gate passed) or overrides the gates (with a written reason). A rejection
keeps it out whatever the A/B test says. Without any gate decision about the model, the
cycle's A/B test deciding to ship promotes it. A decision about an earlier candidate of the
same cycle (the candidate was replaced since) says nothing about this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from core.errors import DocumentError
from core.store import Store

__all__ = [
    "Promotion",
    "ab_verdict_words",
    "candidate_promotion",
    "promotion_of",
    "require_candidate",
]

PromotedBy = Literal["approved", "overridden", "ab_ship"]

# An A/B verdict (core.stats.ABDecision) as a reviewer reads it.
_AB_WORDS: dict[str, str] = {
    "ship": "ship",
    "keep_running": "keep running",
    "stop_no_effect": "stop, no effect",
    "roll_back": "roll back",
    "invalid_srm": "invalid (sample-ratio mismatch)",
}


def ab_verdict_words(verdict: str) -> str:
    """An A/B verdict in words: ``invalid_srm`` → "invalid (sample-ratio mismatch)"."""
    return _AB_WORDS.get(verdict, verdict.replace("_", " "))


@dataclass(frozen=True)
class Promotion:
    """Where a candidate stands: promoted or not, by what, and one line saying why."""

    model: str
    promoted: bool
    promoted_by: PromotedBy | None
    summary: str
    decision: dict[str, Any] | None
    ab_decision: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _day(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d")
    return str(value)[:10]


def promotion_of(
    model: str, decisions: Sequence[Mapping[str, Any]], ab_decision: str | None = None
) -> Promotion:
    """The promotion of ``model`` from the cycle's gate decisions (newest first, as
    ``core.gates.cycle_decisions`` lists them) and its A/B verdict (pure: no store)."""
    own = [dict(d) for d in decisions if d["candidate_model"] == model]
    if own:
        newest = own[0]
        who, when = newest["actor"], _day(newest["decided_at"])
        verdict = str(newest["verdict"]).replace("_", " ")
        if newest["decision"] == "approved":
            return Promotion(
                model,
                True,
                "approved",
                f"Approved by {who} on {when}: every blocking gate passed.",
                newest,
                ab_decision,
            )
        if newest["decision"] == "overridden":
            return Promotion(
                model,
                True,
                "overridden",
                f"Promoted by {who} on {when} against a gate verdict of {verdict}, overriding "
                f"the gates: {newest['reason']}",
                newest,
                ab_decision,
            )
        reason = f": {newest['reason']}" if newest["reason"] else "."
        return Promotion(
            model, False, None, f"Rejected by {who} on {when}{reason}", newest, ab_decision
        )
    if ab_decision == "ship":
        return Promotion(
            model,
            True,
            "ab_ship",
            "The cycle's A/B test decided to ship; no gate decision is recorded about it.",
            None,
            ab_decision,
        )
    ab = f" and the A/B test's verdict is {ab_verdict_words(ab_decision)}" if ab_decision else ""
    return Promotion(
        model,
        False,
        None,
        f"No gate decision is recorded about this candidate yet{ab}.",
        None,
        ab_decision,
    )


def require_candidate(store: Store, plan_id: str, cycle: int) -> dict[str, Any]:
    """The cycle's candidate (core.training.cycle_candidate); raises DocumentError without one."""
    from core.training import cycle_candidate

    candidate = cycle_candidate(store, plan_id, cycle)
    if candidate is None:
        raise DocumentError(
            f"cycle {cycle} has no candidate model; register or train one first "
            f"(`python -m core train register --cycle {cycle} --model NAME` or `train start`, "
            "or the Evals & gates page)."
        )
    return candidate


def candidate_promotion(
    store: Store, plan_id: str, cycle: int, *, ab_decision: str | None = None
) -> Promotion:
    """The promotion of the cycle's candidate; ``ab_decision`` is the cycle's A/B verdict
    when the caller analysed it (core.abtest.analyse_cycle). Raises DocumentError when the
    cycle has no candidate."""
    from core.gates import cycle_decisions

    candidate = require_candidate(store, plan_id, cycle)
    return promotion_of(
        str(candidate["model"]), cycle_decisions(store, plan_id, cycle), ab_decision
    )
