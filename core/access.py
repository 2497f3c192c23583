"""Who may do what: users, their roles, and the permissions core enforces.

With OIDC configured the dashboard knows who is signed in and maps their email to roles through
the roles file (``FLYWHEEL_ROLES_FILE``, YAML: ``users: {email: [role, …]}`` and an optional
``default_role``). Without OIDC, and on the command line, one local operator is assumed who holds
every role; the dashboard says so.

Sign-in fails closed: secrets that cannot be read, or an ``[auth]`` section that is incomplete,
refuse everyone instead of falling back to the local operator; a signed-in user is accepted only
with an email their provider verified, and that email (never the display name, which users
choose) is who the audit log, approvals and decisions name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from core.errors import AccessError, FlywheelError, SignInError
from core.settings import settings

__all__ = [
    "ACTIONS",
    "PERMISSIONS",
    "ROLES",
    "AccessError",
    "Permission",
    "Role",
    "SignInError",
    "User",
    "dashboard_user",
    "load_roles",
    "local_operator",
    "login_providers",
    "refusal",
    "require",
    "signed_in_user",
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


@dataclass(frozen=True)
class User:
    """Someone acting in Flywheel and the roles they hold.

    ``name`` is who the audit log, approvals and decisions record: a signed-in user's verified
    email, or ``FLYWHEEL_ACTOR`` for the local operator. ``display_name`` is only shown.
    """

    name: str
    roles: frozenset[Role]
    email: str | None = None
    authenticated: bool = False
    display_name: str | None = None

    def can(self, permission: Permission) -> bool:
        """Whether any of the user's roles grants ``permission``."""
        return bool(self.roles & PERMISSIONS[permission])


def local_operator() -> User:
    """The single local user assumed without OIDC, and by the command line: every role."""
    return User(settings.actor, frozenset(ROLES) - {"viewer"})


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
    return Path(settings.roles_file)


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
    """The signed-in user with the roles the roles file gives their (verified) email, recorded
    under that email; ``name`` is only displayed."""
    users, default = load_roles(path)
    identity = email.strip().lower()
    roles = users.get(identity, frozenset({default}))
    return User(identity, roles, email=identity, authenticated=True, display_name=name or None)


# -- sign-in -----------------------------------------------------------------------------------

_SHARED_AUTH_KEYS = ("redirect_uri", "cookie_secret")
_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
_SECRETS = "`.streamlit/secrets.toml`"


def _filled(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def login_providers(
    secrets: Mapping[str, Any] | None, *, secrets_error: str | None = None
) -> tuple[str, ...]:
    """The sign-in providers the secrets configure for ``st.login`` ("default" for the one
    written directly under ``[auth]``); empty when there is no ``[auth]`` section (or no
    secrets file), and then the dashboard runs without login.

    Raises SignInError when the secrets could not be read (``secrets_error``), or ``[auth]``
    lacks ``redirect_uri`` or ``cookie_secret``, or a provider lacks ``client_id``,
    ``client_secret`` or ``server_metadata_url``: a broken login must not open the dashboard
    to every visitor with every role.
    """
    if secrets_error is not None:
        raise SignInError(
            f"The secrets file could not be read ({secrets_error}), so sign-in cannot be "
            f"checked and nobody may use the dashboard. Fix {_SECRETS} and reload the page."
        )
    auth = (secrets or {}).get("auth")
    if auth is None:
        return ()
    if not isinstance(auth, Mapping):
        raise SignInError(f"[auth] in {_SECRETS} must be a table; sign-in is stopped.")
    problems = [f"[auth] lacks {key}" for key in _SHARED_AUTH_KEYS if not _filled(auth.get(key))]
    sections = {
        str(name): section
        for name, section in auth.items()
        if isinstance(section, Mapping) and name != "client_kwargs"
    }
    if any(key in auth for key in _PROVIDER_KEYS):
        sections = {"default": auth, **sections}
    if not sections:
        problems.append(f"[auth] names no provider ({', '.join(_PROVIDER_KEYS)})")
    for name, section in sections.items():
        where = "[auth]" if section is auth else f"[auth.{name}]"
        if "_" in name:
            problems.append(f"{where}: a provider name may not contain an underscore")
        lacking = [key for key in _PROVIDER_KEYS if not _filled(section.get(key))]
        if lacking:
            problems.append(f"{where} lacks {', '.join(lacking)}")
    if problems:
        raise SignInError(
            f"Sign-in is configured in {_SECRETS} but incomplete: {'; '.join(problems)}. "
            "Nobody may use the dashboard until it is fixed (or the [auth] section removed)."
        )
    return tuple(sections)


def signed_in_user(claims: Mapping[str, Any], *, path: Path | None = None) -> User:
    """The signed-in user from their identity provider's claims, with the roles the roles
    file gives their email.

    Raises SignInError when the claims carry no email or ``email_verified`` is not true (an
    address nobody proved is not an identity); FlywheelError when the roles file is malformed.
    """
    email = claims.get("email")
    if not _filled(email):
        raise SignInError(
            "Your sign-in carries no email address, so Flywheel cannot tell who you are. "
            "Ask an admin to request the email scope from the identity provider."
        )
    verified = claims.get("email_verified")
    if not (verified is True or (isinstance(verified, str) and verified.lower() == "true")):
        raise SignInError(
            f"Your identity provider has not verified {email}; verify the address with it, "
            "sign out and sign in again."
        )
    name = claims.get("name")
    return user_from_identity(str(email), name if _filled(name) else None, path=path)


def dashboard_user(
    secrets: Mapping[str, Any] | None,
    claims: Mapping[str, Any],
    *,
    secrets_error: str | None = None,
    path: Path | None = None,
) -> User | None:
    """Who acts in the dashboard: the local operator when no login is configured; None while
    login is configured and nobody is signed in (the page offers sign-in); else the signed-in
    user. Raises SignInError (see ``login_providers`` and ``signed_in_user``)."""
    if not login_providers(secrets, secrets_error=secrets_error):
        return local_operator()
    if claims.get("is_logged_in") is not True:
        return None
    return signed_in_user(claims, path=path)
