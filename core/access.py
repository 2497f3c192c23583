"""Who may do what: users, their roles, and the permissions core enforces.

With OIDC configured the dashboard knows who is signed in and maps their email to roles through
the roles file (``FLYWHEEL_ROLES_FILE``, YAML: ``users: {email: [role, …]}`` and an optional
``default_role``). Without OIDC, and on the command line, one local operator is assumed who holds
every role; the dashboard says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import yaml

from core.errors import FlywheelError
from core.settings import get_setting

__all__ = [
    "ACTIONS",
    "PERMISSIONS",
    "ROLES",
    "AccessError",
    "Permission",
    "Role",
    "User",
    "load_roles",
    "local_operator",
    "refusal",
    "require",
    "user_from_identity",
]

Role = Literal["pm", "privacy_reviewer", "ml_lead", "eng_lead", "legal", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)

Permission = Literal[
    "plan.edit",
    "plan.approve",
    "data.ingest",
    "data.erase",
    "pii.view_raw",
    "cycle.run",
    "gate.override",
    "generation.run",
    "eval.run",
    "model.train",
    "data.retention",
    "store.backup",
]

PERMISSIONS: dict[Permission, frozenset[Role]] = {
    "plan.edit": frozenset({"pm", "ml_lead"}),
    "plan.approve": frozenset({"pm", "privacy_reviewer", "ml_lead", "eng_lead", "legal"}),
    "data.ingest": frozenset({"pm", "ml_lead"}),
    "data.erase": frozenset({"privacy_reviewer", "ml_lead"}),
    "pii.view_raw": frozenset({"privacy_reviewer"}),
    "cycle.run": frozenset({"ml_lead"}),
    "gate.override": frozenset({"ml_lead"}),
    # Generation spends teacher money within the plan's budget, which the PM sets and owns.
    "generation.run": frozenset({"pm", "ml_lead"}),
    # Eval results decide the gates, so only the ML lead produces or imports them.
    "eval.run": frozenset({"ml_lead"}),
    "model.train": frozenset({"ml_lead"}),
    # Retention deletes interactions for good, as erasure does.
    "data.retention": frozenset({"privacy_reviewer", "ml_lead"}),
    # A backup holds every table, raw PII included; a restore replaces the whole store.
    "store.backup": frozenset({"ml_lead", "eng_lead"}),
}

ACTIONS: dict[Permission, str] = {
    "plan.edit": "edit plans",
    "plan.approve": "approve plans",
    "data.ingest": "ingest data",
    "data.erase": "erase users",
    "pii.view_raw": "view raw PII",
    "cycle.run": "run cycles",
    "gate.override": "override gates",
    "generation.run": "run synthetic generation",
    "eval.run": "run evals, import eval results or freeze eval sets",
    "model.train": "train models or register a cycle's candidate",
    "data.retention": "enforce data retention",
    "store.backup": "back up or restore the store",
}


class AccessError(FlywheelError):
    """The user's roles do not allow the operation."""


@dataclass(frozen=True)
class User:
    """Someone acting in Flywheel: a name for the audit log and the roles they hold."""

    name: str
    roles: frozenset[Role]
    email: str | None = None
    authenticated: bool = False

    def can(self, permission: Permission) -> bool:
        """Whether any of the user's roles grants ``permission``."""
        return bool(self.roles & PERMISSIONS[permission])


def local_operator() -> User:
    """The single local user assumed without OIDC, and by the command line: every role."""
    return User(str(get_setting("actor")), frozenset(ROLES) - {"viewer"})


def refusal(user: User, permission: Permission) -> str | None:
    """Why ``user`` may not do ``permission`` (a page shows it beside the disabled button);
    None when they may."""
    if user.can(permission):
        return None
    *others, last = sorted(PERMISSIONS[permission])
    allowed = f"{', '.join(others)} or {last}" if others else last
    held = ", ".join(sorted(user.roles)) or "no role"
    return (
        f"{user.name} ({held}) may not {ACTIONS[permission]} ({permission}): "
        f"it needs the {allowed} role."
    )


def require(user: User, permission: Permission) -> None:
    """Raise AccessError unless ``user`` may do ``permission``."""
    reason = refusal(user, permission)
    if reason is not None:
        raise AccessError(f"{reason} Ask an admin to add the role in the roles file.")


def _roles_file() -> Path:
    return Path(str(get_setting("roles_file")))


def load_roles(path: Path | None = None) -> tuple[dict[str, frozenset[Role]], Role]:
    """The roles file as (roles by lower-cased email, default role); empty when absent.

    Raises FlywheelError when the file is malformed or names an unknown role.
    """
    file = path or _roles_file()
    if not file.exists():
        return {}, "viewer"
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise FlywheelError(f"{file}: not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise FlywheelError(f"{file}: expected a mapping with 'users' and 'default_role'.")
    default = data.get("default_role", "viewer")
    if default not in ROLES:
        raise FlywheelError(f"{file}: unknown default_role {default!r}; use one of {ROLES}.")
    users: dict[str, frozenset[Role]] = {}
    for email, roles in (data.get("users") or {}).items():
        listed = [roles] if isinstance(roles, str) else list(roles or [])
        unknown = [r for r in listed if r not in ROLES]
        if unknown:
            raise FlywheelError(f"{file}: {email} has unknown role(s) {unknown}; use {ROLES}.")
        users[str(email).lower()] = frozenset(cast("list[Role]", listed))
    return users, cast(Role, default)


def user_from_identity(email: str, name: str | None = None, *, path: Path | None = None) -> User:
    """The signed-in user with the roles the roles file gives their email."""
    users, default = load_roles(path)
    roles = users.get(email.lower(), frozenset({default}))
    return User(name or email, roles, email=email, authenticated=True)
