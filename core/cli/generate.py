"""``generate``: synthetic generation over the plan's grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from core.cli._base import NOUNS, Command, Outcome, default_plan_id, local_user, plan_option

if TYPE_CHECKING:
    from core.store import Store


@click.command(
    "generate",
    cls=Command,
    short_help=NOUNS["generate"].help,
    help="Generate the plan's synthetic dataset with the teacher. The server is the "
    "plan's generation endpoint, else FLYWHEEL_TEACHER_BASE_URL, else OPENAI_BASE_URL, else "
    "OpenAI; the key comes from FLYWHEEL_TEACHER_API_KEY or OPENAI_API_KEY and is never "
    "stored. Items already stored are not requested again.",
)
@plan_option
@click.option("--dry-run", is_flag=True, help="print calls, tokens and cost; send nothing")
@click.option("--batch", is_flag=True, help="use an OpenAI batch job (half price, slower)")
@click.option("--top-up", is_flag=True, help="only bring thin cells back to their target")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    help="requests in flight (default: generation_concurrency)",
)
def command(
    store: Store,
    plan: str | None,
    dry_run: bool,
    batch: bool,
    top_up: bool,
    concurrency: int | None,
) -> Outcome:
    from core.generation import GenerationSpec, run_batch, run_generation, stored_counts
    from core.generation import dry_run as estimate_run

    plan_id = plan or default_plan_id(store)
    if dry_run:
        estimate = estimate_run(store, plan_id, batch=batch, top_up=top_up)
        spec = GenerationSpec.load(store, plan_id)
        counts = stored_counts(store, spec)
        data = {
            "plan_id": plan_id,
            "dry_run": True,
            "cells": estimate.cells,
            "requested": estimate.requested,
            "generated": sum(c.get("valid", 0) for c in counts.values()),
            "failed": sum(c.get("failed", 0) for c in counts.values()),
            "api_calls": 0,
            **estimate.to_dict(),
        }
        verdict = "over the budget cap: the run would not start" if estimate.over_budget else "ok"
        text = (
            f"Plan '{plan_id}': {estimate.cells} cells, {estimate.requested} items, "
            f"{estimate.stored} stored; {estimate.calls} calls, "
            f"~{estimate.estimated_input_tokens:,} input + "
            f"~{estimate.estimated_output_tokens:,} output tokens ({estimate.tokenizer}), "
            f"estimated ${estimate.estimated_cost_usd:,.4f} of ${estimate.budget_usd:,.2f} "
            f"budget ({verdict})."
        )
        return Outcome(data, text, exit_code=1 if estimate.over_budget else 0)
    if batch:
        report = run_batch(store, plan_id, user=local_user(), top_up=top_up)
    else:
        report = run_generation(
            store, plan_id, user=local_user(), top_up=top_up, concurrency=concurrency
        )
    return Outcome(
        {"dry_run": False, **report.to_dict()},
        f"Plan '{plan_id}': {report.cells} cells; {report.generated}/{report.requested} valid, "
        f"{report.failed} failed; {report.api_calls} API calls, ${report.cost_usd:,.4f} spent "
        f"(estimated ${report.estimated_cost_usd:,.4f}). {report.message}",
        exit_code=1 if report.status == "budget_stop" else 0,
    )
