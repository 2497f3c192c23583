"""Sections several documents show alike: a dataset version, a gate report with its evidence,
an A/B analysis, the sign-offs of a plan version and lint findings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from core.abtest import ABAnalysis
from core.datasets import DatasetVersion
from core.documents.rendering import _when
from core.errors import GateError
from core.lint import Finding
from core.signoffs import ApprovalStatus
from core.store import Store


def _findings(findings: Iterable[Finding]) -> list[dict[str, str]]:
    return [f.to_dict() for f in findings]


def _gate_values(report: Mapping[str, Any]) -> dict[str, Any]:
    """A gate report (GateReport.to_dict(), live or stored with a decision) for the templates;
    each gate's ``explanation`` is its verdict in one plain sentence (core.gates.explain_gate)."""
    # core.gates loads scipy (about 1.7 s): imported where a gate is read, so that the plan
    # documents (`report plan`, the Plan page) do not wait for it.
    from core.gates import explain_gate

    return {
        "verdict": str(report["verdict"]),
        "candidate": report.get("candidate"),
        "plan_version": report.get("plan_version"),
        "gates": [
            {
                "name": g["name"],
                "comparator": g["comparator"],
                "metric": g["metric"],
                "eval_set": g["eval_set"] or "—",
                "blocking": bool(g["blocking"]),
                "verdict": g["verdict"],
                "value": g["value"],
                "threshold": g["threshold"],
                "explanation": explain_gate(g),
                "evidence": list(g["evidence"]),
                "slices": [
                    {
                        "dimension": s["dimension"],
                        "value": s["value"],
                        "n": s["items"],
                        "candidate": s["candidate"],
                        "reference": s["reference"],
                        "p_holm": s["p_holm"],
                        "short": bool(s["short"]),
                    }
                    for s in g.get("slices", [])
                ],
            }
            for g in report["gates"]
        ],
    }


def _gate_report(
    store: Store, plan_id: str, cycle: int, decisions: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, str]:
    """The gate report (GateReport.to_dict()) as recorded with the newest of ``decisions``,
    else checked now, and where it comes from; None with the reason when it cannot be had."""
    # core.gates loads scipy (about 1.7 s): imported where a gate is read, so that the plan
    # documents (`report plan`, the Plan page) do not wait for it.
    from core.gates import check_gates

    if decisions:
        row = store.fetch_one(
            "SELECT report FROM gate_decisions WHERE decision_id = ?",
            [decisions[0]["decision_id"]],
        )
        if row is not None:
            source = (
                f"as recorded with the {decisions[0]['decision']} decision of "
                f"{_when(decisions[0]['decided_at'])}"
            )
            return json.loads(row[0]), source
    try:
        report = check_gates(store, plan_id, cycle)
    except GateError as exc:
        return None, str(exc)
    return report.to_dict(), "checked when this document was generated; no decision is recorded yet"


def _ab_values(analysis: ABAnalysis) -> dict[str, Any]:
    primary = analysis.primary
    return {
        "window": analysis.window,
        "control": analysis.control,
        "treatment": analysis.treatment,
        "metric": analysis.primary_metric,
        "method": primary.method,
        "relative": primary.effect == "relative",
        "lift": primary.estimate,
        "ci": primary.ci,
        "p_value": primary.p_value,
        "decision": analysis.decision.verdict,
        "reasons": list(analysis.decision.reasons),
        "arms": [
            {"arm": a.arm, "users": a.users, "interactions": a.interactions} for a in analysis.arms
        ],
        "srm_p": analysis.srm.p_value,
        "guardrails": [
            {
                "metric": g.metric,
                "lift": g.lift,
                "bound": g.bound,
                "breached": g.breached,
                "harmful_direction": g.harmful_direction,
            }
            for g in analysis.guardrails
        ],
        "warnings": list(analysis.warnings),
    }


def _version_values(version: DatasetVersion) -> dict[str, Any]:
    return {
        "version_id": version.version_id,
        "plan_version": version.plan_version,
        "cycle": version.cycle,
        "parent": version.parent_version,
        "sha256": version.sha256,
        "rows": version.rows,
        "rows_now": version.rows_now,
        "train": version.train_rows,
        "validation": version.validation_rows,
        "production": version.production_rows,
        "synthetic": version.synthetic_rows,
        "created_by": version.created_by,
        "created_at": version.created_at,
    }


def _approvals(status: ApprovalStatus) -> list[dict[str, Any]]:
    """Each role the plan version needs, with its recorded decision (None when missing)."""
    rows = []
    for role in status.required:
        decided = status.decisions.get(role)
        rows.append(
            {
                "role": role,
                "approver": decided.approver if decided else None,
                "decision": decided.decision if decided else None,
                "note": decided.note if decided else "",
                "decided_at": decided.decided_at if decided else None,
            }
        )
    return rows
