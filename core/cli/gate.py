"""``gate check|decide``: release gates and decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import click

from core.cli._base import (
    Outcome,
    cycle_option,
    default_plan_id,
    local_user,
    noun_group,
    plan_option,
)
from core.cli._output import table
from core.labels import label

if TYPE_CHECKING:
    from core.store import Store

command = noun_group("gate")
DECISIONS: dict[str, Literal["approved", "overridden", "rejected"]] = {
    "approve": "approved",
    "override": "overridden",
    "reject": "rejected",
}


@command.leaf(
    "check", help="evaluate the plan's gates on a cycle's candidate (exit 1 unless all pass)"
)
@cycle_option(required=True)
@plan_option
def check(store: Store, cycle: int, plan: str | None) -> Outcome:
    from core.gates import check_gates

    plan_id = plan or default_plan_id(store)
    report = check_gates(store, plan_id, cycle)
    gates = [
        {
            "gate": g.name,
            "verdict": g.verdict,
            "value": g.value,
            "threshold": g.threshold,
            "blocking": g.blocking,
        }
        for g in report.gates
    ]
    lines = [
        table(gates, ("gate", "verdict", "value", "threshold", "blocking"), codes=("verdict",))
    ]
    lines += [f"{label('why')}:", *(f"  {g.name}: {g.explanation}" for g in report.gates)]
    lines += [f"warning: {w}" for w in report.warnings]
    head = (
        f"Plan '{plan_id}' cycle {cycle}, candidate {report.candidate or '(none)'}: "
        f"{label(report.verdict).upper()}"
    )
    return Outcome(
        report.to_dict(),
        "\n".join([head, *lines]),
        exit_code=0 if report.verdict == "pass" else 1,
    )


@command.leaf("decide", help="approve, override (with a reason) or reject")
@cycle_option(required=True)
@plan_option
@click.option("--approve", is_flag=True, help="approve the candidate")
@click.option("--override", is_flag=True, help="approve despite failed gates (needs --reason)")
@click.option("--reject", is_flag=True, help="reject the candidate")
@click.option("--reason", help="why (required for an override; audited)")
def decide(
    store: Store,
    cycle: int,
    plan: str | None,
    approve: bool,
    override: bool,
    reject: bool,
    reason: str | None,
) -> Outcome:
    from core.gates import cycle_decisions, record_decision

    given = {"approve": approve, "override": override, "reject": reject}
    chosen = [flag for flag in DECISIONS if given[flag]]
    if len(chosen) != 1:
        raise click.UsageError("Give one of --approve, --override or --reject.")
    decision = DECISIONS[chosen[0]]
    plan_id = plan or default_plan_id(store)
    decision_id = record_decision(
        store, plan_id, cycle, decision=decision, user=local_user(), reason=reason or ""
    )
    recorded = next(d for d in cycle_decisions(store, plan_id) if d["decision_id"] == decision_id)
    verdict, candidate = str(recorded["verdict"]), recorded["candidate_model"]
    return Outcome(
        {
            "decision_id": decision_id,
            "decision": decision,
            "verdict": verdict,
            "candidate": candidate,
        },
        f"Recorded the decision on {candidate} for cycle {cycle}: {label(decision)} "
        f"(gates: {label(verdict)}), as {decision_id}.",
    )
