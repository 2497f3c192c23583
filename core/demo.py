"""The demo workspace: a deterministic, seeded set of plans (and later cycles) to explore.

Everything it writes is labelled as demo data (``plans.is_demo`` and the ``demo`` workspace key),
so the dashboard can say so. Loading it twice adds nothing the second time.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from core.plan import plan_timeline
from core.plan_versions import list_plans, load_plan, save_plan_version
from core.starters import starter_plan
from core.store import Store

__all__ = ["DemoSummary", "is_demo_workspace", "load_demo"]

DEMO_AUTHOR = "Maya Chen (demo)"


@dataclass(frozen=True)
class DemoSummary:
    """What the demo workspace holds."""

    plan_id: str
    cycles: int
    interactions: int
    created: bool

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)


def is_demo_workspace(store: Store) -> bool:
    """Whether the store holds the demo workspace."""
    row = store.fetch_one("SELECT value FROM workspace WHERE key = 'demo'")
    return row is not None and row[0] == "true"


def _interaction_count(store: Store) -> int:
    row = store.fetch_one(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'interactions'"
    )
    if not row or not row[0]:
        return 0
    counted = store.fetch_one("SELECT count(*) FROM interactions")
    return int(counted[0]) if counted else 0


def load_demo(store: Store, *, seed: int = 7) -> DemoSummary:
    """Load the demo workspace into ``store`` unless it is there already."""
    existing = [p for p in list_plans(store) if p.is_demo]
    if existing:
        plan, _ = load_plan(store, existing[0].plan_id)
        return DemoSummary(
            existing[0].plan_id, len(plan_timeline(plan)), _interaction_count(store), False
        )
    rng = random.Random(seed)

    # Version 1: the PM's first draft, with the contradictions a first draft has.
    final = starter_plan("python_coding_assistant")
    draft = final.model_copy(deep=True)
    draft.consent.privacy_review.status = "in_review"
    draft.consent.privacy_review.decided_on = None
    draft.logging.fields[2].retention_days = 365
    draft.gates = [g for g in draft.gates if g.comparator != "no_regression"]
    draft.ab_test.daily_traffic = 1500
    plan_id, _ = save_plan_version(
        store, draft, note="First draft", author=DEMO_AUTHOR, is_demo=True
    )

    # Version 2: the privacy review's and the ML lead's comments addressed.
    reviewed = final.model_copy(deep=True)
    reviewed.ab_test.daily_traffic = 3000 + rng.randrange(0, 500, 100)
    save_plan_version(
        store,
        reviewed,
        note="Retention cut to 90 days; regression gate added; privacy review approved",
        author=DEMO_AUTHOR,
        plan_id=plan_id,
    )

    # Version 3: traffic estimate from the launch forecast.
    save_plan_version(
        store, final, note="Traffic from the launch forecast", author=DEMO_AUTHOR, plan_id=plan_id
    )

    with store.transaction() as con:
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo', 'true')")
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo_seed', ?)", [str(seed)])
    return DemoSummary(plan_id, len(plan_timeline(final)), _interaction_count(store), True)
