"""The cycle report: a cycle's funnel, dataset version, gates with evidence, A/B result,
decisions and training jobs."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from core.abtest import analyse_cycle
from core.charts import ab_lift_figure, dataset_sizes_figure, funnel_figure
from core.cycle_reads import cycle_runs, run_stages
from core.datasets import get_version
from core.documents.rendering import DocumentContext, document
from core.documents.sections import _ab_values, _gate_report, _gate_values, _version_values
from core.errors import DocumentError
from core.formatting import number
from core.monitoring import CycleRecord, cycle_datasets
from core.plan import TRAINING_BACKEND_LABELS, plan_timeline
from core.plan_versions import load_plan
from core.store import Store
from core.training import training_jobs


def _cycle_run(store: Store, plan_id: str, cycle: int) -> dict[str, Any]:
    """The newest run of a plan's cycle; DocumentError when the cycle has not run."""
    runs = [r for r in cycle_runs(store, plan_id) if int(r["cycle"]) == cycle]
    if not runs:
        raise DocumentError(
            f"Cycle {cycle} of plan '{plan_id}' has not run yet; run it with "
            f"`python -m core cycle run --cycle {cycle} --plan {plan_id}` or on the Cycles page."
        )
    return runs[0]


def _cycle_gates(
    store: Store, plan_id: str, cycle: int, decisions: list[dict[str, Any]]
) -> dict[str, Any]:
    """The gate evidence: as recorded with the newest decision, else checked now."""
    report, source = _gate_report(store, plan_id, cycle, decisions)
    if report is None:
        return {"source": source, "verdict": None, "candidate": None, "gates": []}
    values = _gate_values(report)
    values["source"] = source
    return values


@document("cycle", "Cycle report", "cycle")
def build_cycle_report(*, store: Store, plan_id: str, cycle: int) -> DocumentContext:
    """A cycle: its funnel, dataset version, gates with evidence, A/B result and decisions."""
    # core.gates loads scipy (about 1.7 s): imported where a gate is read, so that the plan
    # documents (`report plan`, the Plan page) do not wait for it.
    from core.gates import cycle_decisions

    run = _cycle_run(store, plan_id, cycle)
    plan, version = load_plan(store, plan_id, int(run["plan_version"]))
    records = run_stages(store, str(run["run_id"]))
    by_name = {s.name: s for s in records}
    carried, mix = by_name.get("carried"), by_name.get("mix")
    growth = {
        "parent": carried.params.get("parent_version") if carried else None,
        "parent_rows": carried.rows_in if carried else 0,
        "carried": carried.rows_out if carried else 0,
        "rechecked": carried.removed if carried else 0,
        "new": int(mix.params.get("new_production_rows", 0)) if mix else 0,
        "synthetic_added": mix.added if mix else 0,
        "retired": int(mix.params.get("retired", mix.removed)) if mix else 0,
        "retirement": mix.params.get("retirement") if mix else None,
    }
    milestones = {m.cycle: m for m in plan_timeline(plan)}
    built = [
        CycleRecord(c, milestones[c].start, milestones[c].end, dataset=figures_of)
        for c, figures_of in sorted(cycle_datasets(store, plan_id).items())
        if c <= cycle and c in milestones
    ]
    stages = [
        {
            "position": s.position,
            "name": s.name,
            "rule": s.rule,
            "origin": s.origin,
            "rows_in": s.rows_in,
            "rows_out": s.rows_out,
            "removed": s.removed,
            "added": s.added,
        }
        for s in records
    ]
    decisions = cycle_decisions(store, plan_id, cycle)
    analysis = analyse_cycle(store, plan, cycle, plan_id=plan_id)
    figures: dict[str, go.Figure] = {}
    if stages:
        figures["funnel"] = funnel_figure(stages, title=f"Cycle {cycle} funnel")
    if built:
        figures["growth"] = dataset_sizes_figure(built)
    if analysis is not None and analysis.lift_over_time:
        figures["ab_lift"] = ab_lift_figure(
            analysis.lift_over_time,
            metric=analysis.primary_metric,
            planned_total=analysis.design.total,
        )
    values = {
        "plan": plan,
        "plan_id": plan_id,
        "version": version,
        "cycle": cycle,
        "run": {
            "run_id": run["run_id"],
            "window_start": run["window_start"],
            "window_end": run["window_end"],
            "actor": run["actor"],
            "finished_at": run["finished_at"],
            "warnings": run["warnings"],
        },
        "stages": stages,
        "growth": growth,
        "dataset": _version_values(get_version(store, str(run["dataset_version"]))),
        "gates": _cycle_gates(store, plan_id, cycle, decisions),
        "ab": _ab_values(analysis) if analysis is not None else None,
        "decisions": decisions,
        "approvers": plan.sign_offs.approvers,
        "training": _cycle_training(store, plan_id, cycle),
    }
    return DocumentContext(values, figures)


def _cycle_training(store: Store, plan_id: str, cycle: int) -> list[dict[str, Any]]:
    """The cycle's training jobs as the report lists them: backend, status and cost."""
    return [
        {
            "job_id": job["job_id"],
            "backend": TRAINING_BACKEND_LABELS.get(str(job["backend"]), str(job["backend"])),
            "status": job["status"],
            "cost_usd": job["cost_usd"],
            "basis": (
                f"{number(job['gpu_hours'])} GPU-hours"
                if job["backend"] == "local" and job["gpu_hours"] is not None
                else f"{number(job['trained_tokens'])} trained tokens"
                if job["trained_tokens"] is not None
                else None
            ),
        }
        for job in training_jobs(store, plan_id, cycle)
    ]
