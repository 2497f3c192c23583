"""Closing the loop: how production traffic spreads over the grid against the training examples,
and per-cell counts for the next round that move the training data toward production's mix."""

from __future__ import annotations

from dataclasses import dataclass

from core.generation.spec import GenerationSpec, cell_key
from core.generation.storage import stored_counts
from core.store import Store
from core.traffic import interaction_columns, traffic_by_axes


@dataclass(frozen=True)
class CellAllocation:
    """One cell: production's share against the training data's, and the next round's count."""

    cell: dict[str, str]
    production_count: float
    production_share: float
    training_count: int
    training_share: float
    suggested: int


@dataclass(frozen=True)
class LoopReport:
    """How production traffic spreads over the grid compared with the training data."""

    has_production_data: bool
    message: str
    axes_used: list[str]
    next_round_total: int
    cells: list[CellAllocation]


def _largest_remainder(weights: list[float], total: int) -> list[int]:
    whole = sum(weights)
    if whole <= 0 or total <= 0:
        return [0] * len(weights)
    exact = [w / whole * total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def production_vs_training(
    store: Store, spec: GenerationSpec, *, next_round_total: int | None = None
) -> LoopReport:
    """Compare the production interactions' spread over the axes (their labels, e.g. topic
    and difficulty) with the stored training examples, and suggest per-cell counts for the next
    round so that training data moves toward production's mix."""
    gen = spec.plan.generation
    total_next = next_round_total or len(spec.cells) * gen.examples_per_cell
    columns = interaction_columns(store)
    has_rows = bool(columns) and bool(
        (store.fetch_one("SELECT EXISTS (SELECT 1 FROM interactions)") or [False])[0]
    )
    if not has_rows:
        return LoopReport(
            False,
            "No production data yet: once interactions are ingested with labels on the grid's "
            "axes (e.g. topic, difficulty), this compares their spread with the training data.",
            [],
            total_next,
            [],
        )
    axes = [a for a in gen.axes if a.name in columns]
    if not axes:
        return LoopReport(
            False,
            "The production interactions carry no label named after a grid axis "
            f"({', '.join(a.name for a in gen.axes)}), so they cannot be placed on the grid.",
            [],
            total_next,
            [],
        )
    observed = traffic_by_axes(store, axes)
    total_prod = sum(observed.values())
    if total_prod == 0:
        return LoopReport(
            False,
            "No production interaction is labelled with the grid's axis values yet.",
            [a.name for a in axes],
            total_next,
            [],
        )
    missing = 1
    for axis in gen.axes:
        if axis not in axes:
            missing *= len(axis.values)
    counts = stored_counts(store, spec)
    total_train = sum(c.get("valid", 0) for c in counts.values())
    prod_counts: list[float] = []
    train_counts: list[int] = []
    for cell in spec.cells:
        prod_counts.append(observed.get(tuple(cell[a.name] for a in axes), 0) / missing)
        train_counts.append(counts.get(cell_key(cell), {}).get("valid", 0))
    shares = [c / total_prod for c in prod_counts]
    # Fill the gap: what each cell would hold after the round at production's mix, less what it
    # holds now; cells already over their share get nothing.
    needs = [
        max(0.0, s * (total_train + total_next) - t)
        for s, t in zip(shares, train_counts, strict=True)
    ]
    suggested = _largest_remainder(needs, total_next)
    cells = [
        CellAllocation(
            cell=cell,
            production_count=prod,
            production_share=share,
            training_count=train,
            training_share=train / total_train if total_train else 0.0,
            suggested=n,
        )
        for cell, prod, share, train, n in zip(
            spec.cells, prod_counts, shares, train_counts, suggested, strict=True
        )
    ]
    return LoopReport(
        True,
        f"{total_prod} labelled production interactions over {', '.join(a.name for a in axes)}.",
        [a.name for a in axes],
        total_next,
        cells,
    )
