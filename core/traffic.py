"""Production traffic on the generation grid: which of the plan's axes the interactions carry
as columns, and how many interactions fall on each combination of their values. Read by the
Synthetic data page's production-vs-training comparison (core.generation.allocation)
and by the Overview's coverage gaps (core.monitoring)."""

from __future__ import annotations

from collections.abc import Sequence

from core.escaping import sql_identifier
from core.plan import Axis
from core.store import Store

__all__ = ["interaction_columns", "traffic_by_axes"]


def interaction_columns(store: Store) -> set[str]:
    """The columns of the interactions table (an axis is a label only where one is named
    after it)."""
    return {
        str(r[0])
        for r in store.fetch_all(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'interactions'"
        )
    }


def traffic_by_axes(store: Store, axes: Sequence[Axis]) -> dict[tuple[str, ...], int]:
    """Interactions per combination of the ``axes``' values (in the axes' order), counting
    only those whose label on every axis is one of its values. The axes must be columns."""
    if not axes:
        return {}
    select = ", ".join(sql_identifier(a.name) for a in axes)
    where = " AND ".join(f"{sql_identifier(a.name)} IN (SELECT unnest(?::VARCHAR[]))" for a in axes)
    return {
        tuple(str(v) for v in row[:-1]): int(row[-1])
        for row in store.fetch_all(
            f"SELECT {select}, count(*) FROM interactions WHERE {where} GROUP BY ALL",
            [a.values for a in axes],
        )
    }
