"""What a run will ask for and what that will cost, before any request is sent: the pending
items (or those that top up thin cells), the estimate of tokens and dollars (the dry run) and the
budget cap a run must fit under."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import GenerationError
from core.generation.diversity import cell_diversity
from core.generation.prompts import messages_for
from core.generation.spec import GenerationSpec, WorkItem, cell_key
from core.generation.storage import _stored_status
from core.store import Store
from core.tokens import estimate_tokens


def plan_items(
    store: Store, spec: GenerationSpec, *, top_up: bool = False, near_threshold: float = 0.8
) -> list[WorkItem]:
    """The items a run must ask for: every grid item not stored valid, or with ``top_up``
    the items that bring each thin cell (too few unique valid examples) back to its target.
    """
    stored = _stored_status(store, spec.spec_hash)
    per_cell = spec.plan.generation.examples_per_cell
    if not top_up:
        return [
            WorkItem(cell, i)
            for cell in spec.cells
            for i in range(per_cell)
            if stored.get((cell_key(cell), i)) != "valid"
        ]
    items: list[WorkItem] = []
    diversity = {d.cell_key: d for d in cell_diversity(store, spec, threshold=near_threshold)}
    for cell in spec.cells:
        key = cell_key(cell)
        report = diversity[key]
        if not report.under_target:
            continue
        failed = sorted(i for (k, i), s in stored.items() if k == key and s == "failed")
        retry = failed[: report.shortfall]
        items.extend(WorkItem(cell, i) for i in retry)
        next_index = max([i for (k, i) in stored if k == key] + [per_cell - 1]) + 1
        for offset in range(report.shortfall - len(retry)):
            items.append(WorkItem(cell, next_index + offset))
    return items


@dataclass(frozen=True)
class GenerationEstimate:
    """What a run would do and cost, before any request is sent."""

    cells: int
    requested: int
    stored: int
    calls: int
    estimated_input_tokens: int
    estimated_output_tokens: int
    estimated_cost_usd: float
    budget_usd: float
    batch: bool
    tokenizer: str = "cl100k_base (estimate)"

    @property
    def over_budget(self) -> bool:
        """Whether the estimate exceeds the plan's cap."""
        return self.estimated_cost_usd > self.budget_usd

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        data = asdict(self)
        data["over_budget"] = self.over_budget
        return data


def _estimate(
    spec: GenerationSpec, items: Sequence[WorkItem], *, stored: int, batch: bool
) -> GenerationEstimate:
    gen = spec.plan.generation
    # Items of one cell share all but one line of prompt; estimate one per cell and scale.
    per_cell_tokens: dict[str, int] = {}
    input_tokens = 0
    for item in items:
        key = cell_key(item.cell)
        if key not in per_cell_tokens:
            per_cell_tokens[key] = estimate_tokens(messages_for(spec, item.cell, item.index))
        input_tokens += per_cell_tokens[key]
    output_tokens = len(items) * gen.expected_output_tokens
    requested = len(spec.cells) * gen.examples_per_cell
    return GenerationEstimate(
        cells=len(spec.cells),
        requested=requested,
        stored=stored,
        calls=len(items),
        estimated_input_tokens=input_tokens,
        estimated_output_tokens=output_tokens,
        estimated_cost_usd=round(spec.cost(input_tokens, output_tokens, batch=batch), 6),
        budget_usd=gen.budget_usd,
        batch=batch,
    )


def dry_run(
    store: Store,
    plan_id: str,
    *,
    version: int | None = None,
    batch: bool = False,
    top_up: bool = False,
) -> GenerationEstimate:
    """Calls, estimated tokens and cost of generating what is not stored yet; sends nothing."""
    spec = GenerationSpec.load(store, plan_id, version)
    items = plan_items(store, spec, top_up=top_up)
    stored = sum(1 for s in _stored_status(store, spec.spec_hash).values() if s == "valid")
    return _estimate(spec, items, stored=stored, batch=batch)


def _check_budget(estimate: GenerationEstimate) -> None:
    if estimate.over_budget:
        raise GenerationError(
            f"Estimated ${estimate.estimated_cost_usd:,.2f} for {estimate.calls} calls exceeds "
            f"the ${estimate.budget_usd:,.2f} budget cap, so the run did not start; raise "
            "generation.budget_usd on the Plan page or generate fewer examples per cell."
        )
