"""``cycle run|why``: a cycle's pipeline, and what it did with one interaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from core.cli._base import (
    Outcome,
    cycle_option,
    default_plan_id,
    local_user,
    noun_group,
    plan_filter_option,
    plan_option,
)
from core.cli._output import table

if TYPE_CHECKING:
    from core.store import Store

command = noun_group("cycle")


@command.leaf(
    "run",
    help="run the cycle's pipeline and build a dataset version",
    description="The parent version's rows checked again and carried, then the "
    "consented interactions of the cycle's window, PII check, the plan's filters, exact "
    "and near-duplicates (against the carried rows too), decontamination, the synthetic "
    "mix with the cap's retirement policy and the split, in one transaction. Refuses "
    "unless the plan's privacy review is approved. Exit 1, building nothing, when the "
    "cycle has fewer new rows than the plan's min_new_examples (see --force).",
)
@cycle_option(required=True)
@plan_option
@click.option(
    "--force",
    is_flag=True,
    help="build a version even with fewer new rows than the plan's min_new_examples",
)
def run(store: Store, cycle: int, plan: str | None, force: bool) -> Outcome:
    from core.cycles import run_cycle, run_summary
    from core.errors import ThinCycleError

    plan_id = plan or default_plan_id(store)
    try:
        result = run_cycle(store, plan_id, cycle, user=local_user(), force=force)
    except ThinCycleError as exc:
        data = {"plan_id": plan_id, "cycle": cycle, "built": False, "reason": str(exc)}
        return Outcome(data, str(exc), exit_code=1)
    return Outcome(result.to_dict(), run_summary(result))


@command.leaf("why", help="what each cycle did with one interaction, and why")
@click.argument("interaction_id")
@plan_filter_option
def why(store: Store, interaction_id: str, plan: str | None) -> Outcome:
    from core.cycle_reads import why_dropped

    answers = why_dropped(store, interaction_id, plan_id=plan)
    text = table(answers, ("cycle", "run_id", "why")) if answers else ""
    return Outcome(
        {"interaction_id": interaction_id, "runs": answers},
        text or f"No cycle has run yet; {interaction_id} is stored and waits for one.",
    )
