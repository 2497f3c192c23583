"""``demo``: load the demo workspace."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from core.cli._base import NOUNS, Command, Outcome

if TYPE_CHECKING:
    from core.store import Store


@click.command("demo", cls=Command, help=NOUNS["demo"].help, short_help=NOUNS["demo"].help)
@click.option("--seed", type=int, default=7, show_default=True, help="seed of the demo data")
def command(store: Store, seed: int) -> Outcome:
    from core.demo import load_demo

    summary = load_demo(store, seed=seed)
    verb = "Loaded" if summary.created else "Already loaded:"
    return Outcome(
        summary.to_dict(),
        f"{verb} the demo workspace in {store.path}: plan '{summary.plan_id}', "
        f"{summary.cycles} cycles, {summary.interactions} interactions.",
    )
