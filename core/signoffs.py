"""Sign-offs: a plan version is approved only when every required role approved that exact
version. An edit makes a new version, which needs its own approvals."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from core import clock
from core.access import AccessError, Role, User, require
from core.audit import record_audit
from core.errors import PlanError
from core.lint import lint_plan
from core.plan import Plan
from core.plan_versions import load_plan
from core.store import Store

__all__ = [
    "ApprovalStatus",
    "Decision",
    "approval_status",
    "privacy_approved",
    "record_decision",
    "required_roles",
]

Decision = Literal["approve", "reject"]


@dataclass(frozen=True)
class RoleDecision:
    """One role's decision on a version."""

    role: str
    approver: str
    decision: Decision
    note: str
    decided_at: datetime


@dataclass(frozen=True)
class ApprovalStatus:
    """Where the sign-off of one plan version stands."""

    plan_id: str
    version: int
    required: list[Role]
    decisions: dict[str, RoleDecision] = field(default_factory=dict)

    @property
    def missing(self) -> list[Role]:
        """Required roles that have not approved."""
        return [
            r
            for r in self.required
            if r not in self.decisions or self.decisions[r].decision != "approve"
        ]

    @property
    def rejected(self) -> list[str]:
        """Roles that rejected this version."""
        return [r for r, d in self.decisions.items() if d.decision == "reject"]

    @property
    def approved(self) -> bool:
        """Whether every required role approved this exact version."""
        return bool(self.required) and not self.missing


def required_roles(plan: Plan) -> list[Role]:
    """The roles whose approval the plan needs, in the plan's order; the privacy reviewer's
    whenever production data is used."""
    roles: list[Role] = []
    for approver in plan.sign_offs.approvers:
        if approver.role not in roles:
            roles.append(approver.role)
    if plan.uses_production_data and "privacy_reviewer" not in roles:
        roles.append("privacy_reviewer")
    return roles


def approval_status(store: Store, plan_id: str, version: int) -> ApprovalStatus:
    """The required roles and the decisions recorded on this version."""
    plan, version = load_plan(store, plan_id, version)
    rows = store.fetch_all(
        "SELECT role, approver, decision, note, decided_at FROM plan_approvals"
        " WHERE plan_id = ? AND version = ?",
        [plan_id, version],
    )
    decisions = {r[0]: RoleDecision(*r) for r in rows}
    return ApprovalStatus(plan_id, version, required_roles(plan), decisions)


def record_decision(
    store: Store,
    plan_id: str,
    version: int,
    *,
    role: Role,
    user: User,
    decision: Decision,
    note: str = "",
) -> ApprovalStatus:
    """Record ``user``'s decision, as ``role``, on one plan version; audited.

    Raises AccessError when the user does not hold the role, PlanError when the role is not
    required, the version is not ready (lint errors), or a rejection has no reason.
    """
    require(user, "plan.approve")
    if role not in user.roles:
        raise AccessError(f"{user.name} does not hold the role {role}, so cannot decide as it.")
    plan, version = load_plan(store, plan_id, version)
    if role not in required_roles(plan):
        raise PlanError(f"Version {version} of '{plan_id}' does not need a {role} sign-off.")
    if decision == "approve" and not lint_plan(plan).ready:
        raise PlanError(
            f"Version {version} of '{plan_id}' has lint errors; fix them in a new version "
            "before approving."
        )
    if decision == "reject" and not note.strip():
        raise PlanError("Say why you reject this version: the PM needs it to fix the plan.")
    with store.transaction() as con:
        con.execute(
            "INSERT OR REPLACE INTO plan_approvals VALUES (?, ?, ?, ?, ?, ?, ?)",
            [plan_id, version, role, user.name, decision, note.strip(), clock.now()],
        )
        record_audit(
            con,
            actor=user.name,
            action=f"plan.{decision}",
            target=f"{plan_id}@v{version}",
            detail={"role": role, "note": note.strip()},
        )
    return approval_status(store, plan_id, version)


def privacy_approved(store: Store, plan_id: str, version: int) -> bool:
    """Whether the privacy reviewer approved this exact version."""
    row = store.fetch_one(
        "SELECT decision FROM plan_approvals WHERE plan_id = ? AND version = ?"
        " AND role = 'privacy_reviewer'",
        [plan_id, version],
    )
    return row is not None and row[0] == "approve"
