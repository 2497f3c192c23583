"""The plan document: every section of a plan version, its readiness, timeline, economics,
A/B sizing and the sign-offs recorded for it (the privacy packet shows the same values)."""

from __future__ import annotations

from typing import Any

from core.charts import timeline_figure
from core.documents.rendering import DocumentContext, document
from core.documents.sections import _approvals, _findings
from core.lint import ab_requirement, generation_estimate_usd, lint_plan
from core.plan import Gate, Plan, QualityFilter, plan_timeline
from core.signoffs import approval_status
from core.store import Store


def _filter_parameters(rule: QualityFilter) -> str:
    data = rule.model_dump(mode="json", exclude={"rule", "expected_pass_rate"})
    parts = []
    for key, value in data.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key.replace('_', ' ')} {shown or 'all'}")
    return "; ".join(parts)


def _filters(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "position": index,
            "rule": rule.rule,
            "what": (type(rule).__doc__ or "").strip(),
            "parameters": _filter_parameters(rule),
            "expected_pass_rate": rule.expected_pass_rate,
        }
        for index, rule in enumerate(plan.quality_filters, start=1)
    ]


def _gate_criterion(gate: Gate) -> str:
    if gate.comparator == "absolute":
        return f"≥ {gate.threshold:g}" if gate.threshold is not None else "threshold missing"
    if gate.comparator == "no_regression":
        return (
            f"not below production by more than {gate.margin:g}"
            if gate.margin is not None
            else "margin missing"
        )
    if gate.comparator == "non_inferiority":
        return f"≥ {gate.ratio:g} × teacher" if gate.ratio is not None else "ratio missing"
    if gate.threshold is None:
        return "threshold missing"
    return f"student ≤ {gate.threshold:g} × teacher"


def _ab_summary(plan: Plan) -> dict[str, Any]:
    timeline = plan_timeline(plan)
    available = min((c.ab_days for c in timeline), default=0)
    try:
        users_per_arm, days = ab_requirement(plan)
    except (ValueError, ZeroDivisionError):
        return {"defined": False, "available_days": available}
    return {
        "defined": True,
        "users_per_arm": users_per_arm,
        "days": days,
        "available_days": available,
        "fits": days <= available,
    }


def _retention_status(pii_class: str, retention_days: int, limit: int) -> str:
    if pii_class == "none":
        return "not personal data"
    return "within the limit" if retention_days <= limit else "over the limit"


def _plan_values(plan: Plan, plan_id: str, version: int) -> dict[str, Any]:
    report = lint_plan(plan)
    timeline = plan_timeline(plan)
    production = [c for c in timeline if c.uses_production_data]
    pass_rate = 1.0
    for rule in plan.quality_filters:
        pass_rate *= rule.expected_pass_rate
    return {
        "plan": plan,
        "plan_id": plan_id,
        "version": version,
        "fingerprint": plan.fingerprint()[:12],
        "report": {
            "ready": report.ready,
            "errors": _findings(report.errors),
            "warnings": _findings(report.warnings),
        },
        "timeline": timeline,
        "first_production_cycle": production[0] if production else None,
        "filters": _filters(plan),
        "filters_pass_rate": pass_rate,
        "gates": [{"gate": g, "criterion": _gate_criterion(g)} for g in plan.gates],
        "ab": _ab_summary(plan),
        "generation_examples": plan.generation.grid_size * plan.generation.examples_per_cell,
        "generation_estimate_usd": generation_estimate_usd(plan),
        "cost_reduction": plan.economics.cost_reduction,
        "logged_fields": [
            {
                "field": f,
                "status": _retention_status(
                    f.pii_class, f.retention_days, plan.consent.retention_limit_days
                ),
            }
            for f in plan.logging.fields
        ],
    }


def _signoff_values(store: Store | None, plan: Plan, plan_id: str, version: int) -> dict[str, Any]:
    """The sign-offs recorded for this exact version (who, role, decision, when) and the
    privacy review's real state; without a store, ``signoffs`` is None and the document says
    that no record was read rather than leave blank cells that look unsigned."""
    review = plan.consent.privacy_review
    if store is None:
        privacy = {"read": False, "recorded": None, "row": None, "disagrees": False}
        return {"signoffs": None, "privacy": privacy}
    status = approval_status(store, plan_id, version)
    names = {a.role: a.name for a in plan.sign_offs.approvers}
    rows = [{**row, "named": names.get(row["role"])} for row in _approvals(status)]
    privacy_row = next((r for r in rows if r["role"] == "privacy_reviewer"), None)
    recorded = privacy_row["decision"] if privacy_row else None
    return {
        "signoffs": {
            "rows": rows,
            "approved": status.approved,
            "missing": list(status.missing),
            "rejected": list(status.rejected),
        },
        "privacy": {
            "read": True,
            "recorded": recorded,
            "row": privacy_row,
            # The plan's own field is what the PM wrote; only a recorded sign-off approves.
            "disagrees": (review.status == "approved") != (recorded == "approve"),
        },
    }


@document("plan", "Six-month flywheel plan", "plan")
def build_plan_document(
    *, plan: Plan, plan_id: str, version: int, store: Store | None = None
) -> DocumentContext:
    """Every section of the plan, its readiness, timeline, economics, A/B sizing and the
    sign-offs recorded for this version (read from ``store`` when given)."""
    timeline = plan_timeline(plan)
    figures = {"timeline": timeline_figure(timeline)} if timeline else {}
    values = _plan_values(plan, plan_id, version)
    values.update(_signoff_values(store, plan, plan_id, version))
    return DocumentContext(values, figures)
