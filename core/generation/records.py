"""A run's record in ``generation_runs``: started, finished (with its audit entry) and listed;
the progress a run reports as it goes and the report it ends with. Online and batch runs share
them."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.access import User
from core.audit import record_audit
from core.generation.cost import GenerationEstimate
from core.generation.spec import GenerationSpec, cell_key
from core.generation.storage import _stored_status
from core.store import Store


@dataclass
class GenerationProgress:
    """Where a run stands; passed to the progress callback after every item."""

    total: int
    done: int = 0
    generated: int = 0
    failed: int = 0
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    valid_per_cell: Counter[str] = field(default_factory=Counter)

    @property
    def fraction(self) -> float:
        """Share of the run's items finished (0..1)."""
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[GenerationProgress], None]


@dataclass(frozen=True)
class GenerationReport:
    """What a run did: the figures the CLI prints and the page shows."""

    run_id: str
    plan_id: str
    spec_hash: str
    status: str
    cells: int
    requested: int
    generated: int
    failed: int
    new_valid: int
    new_failed: int
    api_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    estimated_cost_usd: float
    budget_usd: float
    batch: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the keys DESIGN.md names, and more)."""
        return asdict(self)


def _start_run(
    store: Store, spec: GenerationSpec, *, mode: str, requested: int, estimate: float
) -> str:
    run_id = f"gen-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    with store.transaction() as con:
        con.execute(
            "INSERT INTO generation_runs (run_id, plan_id, plan_version, spec_hash, mode, status,"
            " started_at, requested, estimated_cost_usd, budget_usd)"
            " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            [
                run_id,
                spec.plan_id,
                spec.plan_version,
                spec.spec_hash,
                mode,
                datetime.now(UTC),
                requested,
                estimate,
                spec.plan.generation.budget_usd,
            ],
        )
    return run_id


def _nothing_to_generate(
    store: Store,
    spec: GenerationSpec,
    progress: GenerationProgress,
    estimate: GenerationEstimate,
    *,
    batch: bool,
    user: User,
) -> GenerationReport:
    """A run with every item stored already: recorded as done, with no call made."""
    mode = "batch" if batch else "online"
    run_id = _start_run(store, spec, mode=mode, requested=0, estimate=0.0)
    return _finish_run(
        store,
        spec,
        run_id,
        status="done",
        progress=progress,
        estimate=estimate,
        message="Every item is already stored; nothing to generate.",
        batch=batch,
        actor=user.name,
    )


def _finish_run(
    store: Store,
    spec: GenerationSpec,
    run_id: str,
    *,
    status: str,
    progress: GenerationProgress,
    estimate: GenerationEstimate,
    message: str,
    batch: bool,
    actor: str,
) -> GenerationReport:
    per_cell = spec.plan.generation.examples_per_cell
    grid_keys = {(cell_key(c), i) for c in spec.cells for i in range(per_cell)}
    with store.transaction() as con:
        # Read while the transaction holds the file open: no second open (tens of ms).
        stored = _stored_status(store, spec.spec_hash)
        generated = sum(1 for k in grid_keys if stored.get(k) == "valid")
        failed = sum(1 for k in grid_keys if stored.get(k) == "failed")
        con.execute(
            "UPDATE generation_runs SET status = ?, finished_at = ?, generated = ?, failed = ?,"
            " api_calls = ?, input_tokens = ?, output_tokens = ?, cost_usd = ?, message = ?"
            " WHERE run_id = ?",
            [
                status,
                datetime.now(UTC),
                progress.generated,
                progress.failed,
                progress.api_calls,
                progress.input_tokens,
                progress.output_tokens,
                progress.cost_usd,
                message,
                run_id,
            ],
        )
        record_audit(
            con,
            actor=actor,
            action="generation.run",
            target=f"{spec.plan_id}@v{spec.plan_version}",
            detail={
                "run_id": run_id,
                "status": status,
                "spec_hash": spec.spec_hash,
                "new_valid": progress.generated,
                "new_failed": progress.failed,
                "api_calls": progress.api_calls,
                "cost_usd": round(progress.cost_usd, 6),
            },
        )
    return GenerationReport(
        run_id=run_id,
        plan_id=spec.plan_id,
        spec_hash=spec.spec_hash,
        status=status,
        cells=len(spec.cells),
        requested=len(grid_keys),
        generated=generated,
        failed=failed,
        new_valid=progress.generated,
        new_failed=progress.failed,
        api_calls=progress.api_calls,
        input_tokens=progress.input_tokens,
        output_tokens=progress.output_tokens,
        cost_usd=round(progress.cost_usd, 6),
        estimated_cost_usd=estimate.estimated_cost_usd,
        budget_usd=spec.plan.generation.budget_usd,
        batch=batch,
        message=message,
    )


def runs(store: Store, plan_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The plan's generation runs, newest first."""
    return store.fetch_dicts(
        "SELECT run_id, mode, status, started_at, finished_at, requested, generated, failed,"
        " api_calls, cost_usd, estimated_cost_usd, message FROM generation_runs"
        " WHERE plan_id = ? ORDER BY started_at DESC LIMIT ?",
        [plan_id, limit],
    )
