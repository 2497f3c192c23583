"""What a cycle run left in the store, read back: its runs, funnel, removed rows, and why one
interaction was dropped or kept.

The read side of core.cycles (which re-exports it), kept apart so that `cycle why`, the reports
and the pages' read-outs load no Ibis: these functions only read the tables a run wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.errors import CycleError
from core.labels import label
from core.store import Store

__all__ = [
    "CycleResult",
    "StageRecord",
    "cycle_runs",
    "removal_summary",
    "removed_rows",
    "run_stages",
    "run_summary",
    "why_dropped",
]


@dataclass
class StageRecord:
    """One stage of a run: rows in and out, rows it removed and added."""

    position: int
    name: str
    rule: str
    params: dict[str, Any]
    origin: str
    rows_in: int
    rows_out: int
    removed: int
    added: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``cycle run --json`` keys of a stage."""
        return {
            "name": self.name,
            "rule": self.rule,
            "origin": self.origin,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "removed": self.removed,
            "added": self.added,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CycleResult:
    """What a run did: its stages and the dataset version it built or found."""

    run_id: str
    plan_id: str
    plan_version: int
    cycle: int
    window_start: datetime | None
    window_end: datetime | None
    stages: list[StageRecord]
    dataset_version: str
    sha256: str
    rows: int
    new_version: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``cycle run --json`` keys."""
        return {
            "cycle": self.cycle,
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "run_id": self.run_id,
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "window_end": self.window_end.isoformat() if self.window_end else None,
            "stages": [s.to_dict() for s in self.stages],
            "dataset_version": self.dataset_version,
            "sha256": self.sha256,
            "rows": self.rows,
            "new_version": self.new_version,
            "warnings": self.warnings,
        }


def cycle_runs(store: Store, plan_id: str | None = None) -> list[dict[str, Any]]:
    """Runs (of one plan when given), newest first, with their dataset version."""
    rows = store.fetch_dicts(
        "SELECT run_id, plan_id, plan_version, cycle, window_start, window_end, started_at,"
        " finished_at, actor, dataset_version, warnings FROM cycle_runs"
        " WHERE $plan IS NULL OR plan_id = $plan ORDER BY started_at DESC",
        {"plan": plan_id},
    )
    for row in rows:
        row["warnings"] = json.loads(row["warnings"])
    return rows


def run_stages(store: Store, run_id: str) -> list[StageRecord]:
    """The funnel of one run, stage by stage."""
    rows = store.fetch_all(
        "SELECT position, name, rule, params, origin, rows_in, rows_out, removed, added, seconds"
        " FROM cycle_stages WHERE run_id = ? ORDER BY position",
        [run_id],
    )
    return [
        StageRecord(
            int(p),
            str(n),
            str(r),
            json.loads(pa),
            str(o),
            int(i),
            int(out),
            int(rm),
            int(a),
            float(s),
        )
        for p, n, r, pa, o, i, out, rm, a, s in rows
    ]


def removal_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Rows a run removed, counted per stage and rule, in pipeline order."""
    return store.fetch_dicts(
        "SELECT position, stage, rule, count(*) AS rows FROM cycle_removed_rows WHERE run_id = ?"
        " GROUP BY ALL ORDER BY position",
        [run_id],
    )


def removed_rows(
    store: Store, run_id: str, *, stage: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The rows a run removed (at one stage when given): id, stage, rule, why, and the text."""
    return store.fetch_dicts(
        "SELECT r.interaction_id, r.stage, r.rule, r.detail, i.ts, i.prompt, i.response"
        " FROM cycle_removed_rows r LEFT JOIN interactions i USING (interaction_id)"
        " WHERE r.run_id = $run AND ($stage IS NULL OR r.stage = $stage)"
        " ORDER BY r.position, r.interaction_id LIMIT $limit",
        {"run": run_id, "stage": stage, "limit": limit},
    )


def why_dropped(
    store: Store, interaction_id: str, *, plan_id: str | None = None
) -> list[dict[str, Any]]:
    """What each cycle run (newest first) did with one interaction: removed (stage, rule, why),
    kept (dataset version and split), or outside the cycle's window.

    Raises CycleError when the interaction is not stored (never loaded, or erased).
    """
    found = store.fetch_one(
        "SELECT ts FROM interactions WHERE interaction_id = ?", [interaction_id]
    )
    if found is None:
        raise CycleError(
            f"No interaction {interaction_id!r} is stored: it was never loaded, or its user "
            "was forgotten. Ids are case-sensitive."
        )
    rows = store.fetch_dicts(
        "SELECT c.run_id, c.plan_id, c.cycle, c.dataset_version, c.started_at, c.window_start,"
        " c.window_end, r.stage, r.rule, r.detail, d.split, d.origin_version, d.origin_cycle"
        " FROM cycle_runs c"
        " LEFT JOIN cycle_removed_rows r ON r.run_id = c.run_id AND r.interaction_id = $id"
        " LEFT JOIN dataset_rows d ON d.version_id = c.dataset_version AND d.interaction_id = $id"
        " WHERE $plan IS NULL OR c.plan_id = $plan ORDER BY c.started_at DESC",
        {"id": interaction_id, "plan": plan_id},
    )
    ts = found[0]
    answers: list[dict[str, Any]] = []
    for row in rows:
        if row["stage"] is not None:
            outcome = "removed"
            why = f"removed at stage {row['stage']} by {row['rule']}: {row['detail']}"
        elif row["split"] is not None:
            outcome = "kept"
            why = f"kept in {row['dataset_version']} ({row['split']})"
            if row["origin_version"] not in (None, row["dataset_version"]):
                why += (
                    f", carried from {row['origin_version']} (added by cycle {row['origin_cycle']})"
                )
        elif row["window_start"] is None:
            outcome = "outside window"
            why = f"cycle {row['cycle']} trains on synthetic data only"
        elif not row["window_start"] <= ts < row["window_end"]:
            outcome = "outside window"
            why = (
                f"outside cycle {row['cycle']}'s window "
                f"({row['window_start']:%Y-%m-%d} to {row['window_end']:%Y-%m-%d})"
            )
        else:
            outcome = "unknown"
            why = "in the window but neither removed nor in the dataset (loaded after the run?)"
        answers.append(
            {
                "run_id": row["run_id"],
                "plan_id": row["plan_id"],
                "cycle": row["cycle"],
                "dataset_version": row["dataset_version"],
                "outcome": outcome,
                "stage": row["stage"],
                "rule": row["rule"],
                "detail": row["detail"],
                "origin_version": row["origin_version"],
                "why": why,
            }
        )
    return answers


def run_summary(result: CycleResult) -> str:
    """One paragraph for people: the funnel (each stage by its label) and the version."""
    funnel = ", ".join(f"{label(s.name)} {s.rows_in:,}→{s.rows_out:,}" for s in result.stages)
    verb = "Built" if result.new_version else "Unchanged: same bytes as"
    return (
        f"Cycle {result.cycle} of plan '{result.plan_id}' v{result.plan_version}: {funnel}. "
        f"{verb} {result.dataset_version} ({result.rows} rows, sha256 {result.sha256[:12]}…)."
        + "".join(f"\nwarning: {w}" for w in result.warnings)
    )
