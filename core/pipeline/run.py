"""The cycle's table stages, run once for every engine: carried → window → consent → PII
re-check → the plan's filters.

``run_table_stages`` is the loop: which stage runs when, its position, name and rule in the funnel,
the rows it received, kept and removed, its time, the progress a user sees and the PII
warning. How an engine computes each stage is a ``StageBodies``: core.cycles' holds the DuckDB
SQL ``cycle run`` uses on the store, core.portable's the Ibis bodies for Spark and other
backends. What follows the filters (the mix, the split and the version) reads and writes the
store, and stays with ``cycle run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.cycle_reads import StageRecord
from core.errors import CycleError
from core.pipeline.stages import Keep, describe_rule, keep_rule, pii_recheck_warning, pipeline_rules
from core.plan import Plan

__all__ = ["Counted", "Progress", "StageBodies", "StagesRun", "run_table_stages"]

Progress = Callable[[float, str], None]
"""Told the share of the run done (0 to 1) and what runs now."""

STEPS_AFTER_FILTERS = 3
"""The steps ``cycle run`` takes after the filters (mix, split, version), for its progress."""


@dataclass
class Counted:
    """What an engine's body reports for a stage that sets its own rows: how many it received
    and kept, how the funnel words what ran, and its parameters."""

    rows_in: int
    rows_out: int
    rule: str
    params: dict[str, Any] = field(default_factory=dict)


class StageBodies(Protocol):
    """How one engine computes each stage. The loop calls them in order, once each (``filter``
    once per filter rule); rows a stage removes are the body's to record with their reasons."""

    def carry(self, rules: list[tuple[Any, str]], keep: Keep) -> Counted:
        """The parent version's rows, each checked again; ``params`` holds
        ``texts_redacted_again``. Afterwards the duplicate stages also compare new rows with
        the carried rows that survived."""
        ...

    def window(self) -> Counted:
        """The cycle's new rows."""
        ...

    def consent(self) -> int:
        """Remove the new rows without training consent; how many were removed."""
        ...

    def pii_check(self) -> dict[str, Any]:
        """Redact the new rows' texts again where today's detectors find more; the stage's
        parameters, among them ``texts_redacted_again``."""
        ...

    def filter(self, position: int, rule: Any, keep: Keep) -> int:
        """Remove the rows ``rule`` drops, recorded at ``position``; how many were removed.
        Raises ValueError when the rule cannot be evaluated."""
        ...


@dataclass
class StagesRun:
    """The funnel up to the mix: every stage in order, the new rows the filters kept, and
    warnings."""

    stages: list[StageRecord]
    new_rows: int
    redacted_again: int
    warnings: list[str]


def run_table_stages(
    bodies: StageBodies,
    plan: Plan,
    *,
    progress: Progress | None = None,
    warnings: list[str] | None = None,
) -> StagesRun:
    """Run the table stages of ``plan`` on ``bodies``: the carried rows, the window, consent,
    the PII re-check and each filter of ``pipeline_rules`` in order. Raises CycleError when a
    filter cannot be evaluated."""
    report = progress or (lambda share, message: None)
    said = warnings if warnings is not None else []
    rules = pipeline_rules(plan)
    keep = keep_rule(rules)
    steps = len(rules) + 3 + STEPS_AFTER_FILTERS
    stages: list[StageRecord] = []

    def timed(position: int, name: str, origin: str, body: Callable[[], Counted]) -> Counted:
        clock = time.perf_counter()
        counted = body()
        stages.append(
            StageRecord(
                position,
                name,
                counted.rule,
                counted.params,
                origin,
                counted.rows_in,
                counted.rows_out,
                counted.rows_in - counted.rows_out,
                seconds=time.perf_counter() - clock,
            )
        )
        return counted

    report(0.0, "Checking the rows carried from the parent version…")
    carried = timed(0, "carried", "pipeline", lambda: bodies.carry(rules, keep))

    report(1 / steps, "Collecting the cycle's window…")
    alive = timed(1, "window", "pipeline", bodies.window).rows_out

    def consent() -> Counted:
        removed = bodies.consent()
        return Counted(alive, alive - removed, "training consent", {"scope": "training"})

    report(2 / steps, "Applying the consent ledger…")
    alive = timed(2, "consent", "pipeline", consent).rows_out

    report(3 / steps, "Checking PII redaction…")
    pii_rule, pii_origin = rules[0]
    checked = timed(
        3,
        "pii_redacted",
        pii_origin,
        lambda: Counted(alive, alive, pii_rule.rule, bodies.pii_check()),
    )
    redacted_again = int(checked.params.get("texts_redacted_again", 0)) + int(
        carried.params.get("texts_redacted_again", 0)
    )
    if redacted_again:
        said.append(pii_recheck_warning(redacted_again))

    for position, (rule, origin) in enumerate(rules[1:], start=4):
        report(position / steps, f"{rule.rule}…")

        def filtered(at: int = position, rule: Any = rule, given: int = alive) -> Counted:
            try:
                removed = bodies.filter(at, rule, keep)
            except ValueError as exc:
                raise CycleError(f"The plan's {rule.rule} filter cannot run: {exc}.") from None
            return Counted(
                given, given - removed, describe_rule(rule), rule.model_dump(mode="json")
            )

        alive = timed(position, rule.rule, origin, filtered).rows_out
    return StagesRun(stages, alive, redacted_again, said)
