"""Plans in the store: immutable numbered versions, history and field-by-field diffs.

A plan is stored without credentials: a URL in it (an endpoint) loses its user info and key or
token parameters when a version is saved, so the stored plan, its exports and its documents
never hold a key (lint's ENDPOINT_CREDENTIALS tells the author where the key belongs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core import clock
from core.access import User, require
from core.audit import record_audit
from core.errors import PlanError
from core.lint import lint_plan
from core.plan import Plan
from core.secrets import strip_urls_credentials
from core.store import Store

__all__ = [
    "FieldChange",
    "PlanSummary",
    "PlanVersion",
    "default_plan",
    "diff_plans",
    "list_plans",
    "list_versions",
    "load_plan",
    "plan_without_credentials",
    "save_plan_version",
]


@dataclass(frozen=True)
class PlanSummary:
    """A stored plan and its newest version."""

    plan_id: str
    name: str
    is_demo: bool
    latest_version: int
    ready: bool


@dataclass(frozen=True)
class PlanVersion:
    """One saved version of a plan, as listed in its history."""

    plan_id: str
    version: int
    created_at: datetime
    author: str
    note: str
    sha256: str
    lint_errors: int
    lint_warnings: int

    @property
    def ready(self) -> bool:
        """Whether this version had no lint errors when saved."""
        return self.lint_errors == 0


@dataclass(frozen=True)
class FieldChange:
    """One field that differs between two versions of a plan."""

    path: str
    before: Any
    after: Any


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "plan"


def _without_credentials(value: Any, path: str, removed: list[str]) -> Any:
    """Plan data with every URL stripped of its credentials; ``removed`` gets their paths."""
    if isinstance(value, str):
        cleaned = strip_urls_credentials(value)
        if cleaned != value:
            removed.append(path)
        return cleaned
    if isinstance(value, dict):
        return {
            key: _without_credentials(item, f"{path}.{key}" if path else str(key), removed)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _without_credentials(item, f"{path}[{index}]", removed)
            for index, item in enumerate(value)
        ]
    return value


def plan_without_credentials(plan: Plan) -> tuple[Plan, list[str]]:
    """``plan`` with credentials removed from every URL in it, and the paths that held them."""
    removed: list[str] = []
    data = _without_credentials(plan.to_data(), "", removed)
    return (Plan.model_validate(data) if removed else plan), removed


def save_plan_version(
    store: Store,
    plan: Plan,
    *,
    note: str,
    user: User,
    plan_id: str | None = None,
    is_demo: bool = False,
) -> tuple[str, int]:
    """Store ``plan`` as the next version of ``plan_id`` (a new plan when None), authored by
    ``user``.

    Returns (plan_id, version). Lint errors do not stop a save: the version is kept as a draft
    that is not ready. Credentials in a URL of the plan (``https://user:pass@…``, ``?api_key=``)
    are never stored: the saved version holds the URL without them. Raises PlanError when
    ``plan_id`` names no stored plan; AccessError, before anything is written, when ``user``
    may not edit plans.
    """
    require(user, "plan.edit")
    author = user.name
    plan, credentials_removed = plan_without_credentials(plan)
    note = strip_urls_credentials(note)
    report = lint_plan(plan)
    now = clock.now()
    with store.transaction() as con:
        if plan_id is None:
            base = _slug(plan.goal.feature)
            taken = {r[0] for r in con.execute("SELECT plan_id FROM plans").fetchall()}
            plan_id, suffix = base, 2
            while plan_id in taken:
                plan_id, suffix = f"{base}-{suffix}", suffix + 1
            con.execute(
                "INSERT INTO plans (plan_id, name, created_at, is_demo) VALUES (?, ?, ?, ?)",
                [plan_id, plan.goal.feature, now, is_demo],
            )
            version = 1
        else:
            row = con.execute(
                "SELECT max(v.version) FROM plans p LEFT JOIN plan_versions v USING (plan_id)"
                " WHERE p.plan_id = ? GROUP BY p.plan_id",
                [plan_id],
            ).fetchone()
            if row is None:
                raise PlanError(f"There is no plan '{plan_id}' in this store.")
            version = int(row[0] or 0) + 1
            con.execute("UPDATE plans SET name = ? WHERE plan_id = ?", [plan.goal.feature, plan_id])
        con.execute(
            "INSERT INTO plan_versions (plan_id, version, created_at, author, note, body,"
            " sha256, lint_errors, lint_warnings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                plan_id,
                version,
                now,
                author,
                note,
                json.dumps(plan.to_data()),
                plan.fingerprint(),
                len(report.errors),
                len(report.warnings),
            ],
        )
        record_audit(
            con,
            actor=author,
            action="plan.save",
            target=f"{plan_id}@v{version}",
            detail={
                "note": note,
                "sha256": plan.fingerprint(),
                "lint_errors": len(report.errors),
                **({"credentials_removed": credentials_removed} if credentials_removed else {}),
            },
        )
    return plan_id, version


def list_plans(store: Store) -> list[PlanSummary]:
    """Every stored plan with its newest version, demo plans last."""
    rows = store.fetch_all(
        "SELECT p.plan_id, p.name, p.is_demo, v.version, v.lint_errors"
        " FROM plans p JOIN plan_versions v USING (plan_id)"
        " QUALIFY v.version = max(v.version) OVER (PARTITION BY p.plan_id)"
        " ORDER BY p.is_demo, p.created_at"
    )
    return [PlanSummary(r[0], r[1], bool(r[2]), int(r[3]), int(r[4]) == 0) for r in rows]


def default_plan(plans: Sequence[PlanSummary]) -> PlanSummary | None:
    """The plan meant when none is named, in the CLI, the sidebar and the documents alike: the
    newest non-demo plan, else the newest demo plan (``plans`` in list_plans' order: demo
    plans last, each part oldest first); None when there is none."""
    own = [p for p in plans if not p.is_demo]
    pool = own or list(plans)
    return pool[-1] if pool else None


def list_versions(store: Store, plan_id: str) -> list[PlanVersion]:
    """The versions of a plan, newest first."""
    rows = store.fetch_all(
        "SELECT plan_id, version, created_at, author, note, sha256, lint_errors, lint_warnings"
        " FROM plan_versions WHERE plan_id = ? ORDER BY version DESC",
        [plan_id],
    )
    return [PlanVersion(*row) for row in rows]


def load_plan(store: Store, plan_id: str, version: int | None = None) -> tuple[Plan, int]:
    """A stored plan version (the newest when ``version`` is None) and its number.

    Raises PlanError when the plan or version does not exist.
    """
    if version is None:
        row = store.fetch_one(
            "SELECT body, version FROM plan_versions WHERE plan_id = ?"
            " ORDER BY version DESC LIMIT 1",
            [plan_id],
        )
    else:
        row = store.fetch_one(
            "SELECT body, version FROM plan_versions WHERE plan_id = ? AND version = ?",
            [plan_id, version],
        )
    if row is None:
        which = f"version {version} of plan" if version is not None else "plan"
        raise PlanError(f"There is no {which} '{plan_id}' in this store.")
    return Plan.model_validate(json.loads(row[0])), int(row[1])


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{path}[{index}]", out)
    else:
        out[path] = value


def diff_plans(before: Plan, after: Plan) -> list[FieldChange]:
    """Every leaf field that differs, in the plan's section order."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten(before.to_data(), "", old)
    _flatten(after.to_data(), "", new)
    paths = list(new) + [p for p in old if p not in new]
    return [
        FieldChange(path, old.get(path), new.get(path))
        for path in paths
        if old.get(path) != new.get(path)
    ]
