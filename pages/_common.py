"""Glue shared by the pages: the store, the workspace bootstrap, the current plan, errors.

Pages stay thin: widgets in, ``core`` calls, charts and tables out. No business rule lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from core.access import User, dashboard_user, login_providers
from core.demo import is_demo_workspace, load_demo
from core.errors import FlywheelError
from core.labels import MISSING, label, show
from core.plan import Plan
from core.plan_versions import PlanSummary, default_plan, list_plans, load_plan
from core.settings import settings
from core.store import Store

T = TypeVar("T")


def _leave_legacy_navigation() -> None:
    """Hand a page opened by URL before ``app.py`` ever ran back to ``app.py``'s navigation.

    Streamlit starts in its legacy multipage mode when a ``pages/`` folder exists and only
    leaves it once ``st.navigation`` runs; a first visit straight to ``/plan`` would otherwise
    run the page bare, without the sidebar and workspace bootstrap of ``app.py``.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_header(title: str) -> None:
    """The page's title and, on demo data, the demo label."""
    _leave_legacy_navigation()
    st.title(title)
    demo_badge()


def get_store() -> Store:
    """The store this dashboard runs on ($FLYWHEEL_DB or data/flywheel.duckdb)."""
    return Store()


_READS: dict[str, Callable[..., Any]] = {}


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_read(name: str, db: str, stamp: str, args: tuple[Any, ...], kwargs: Any) -> Any:
    """One read, remembered per store file and stamp (so until the store next changes)."""
    return _READS[name](Store(db), *args, **dict(kwargs))


def cached_read(read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``read(store, *args, **kwargs)``, answered from memory until the store changes.

    The key is the store's stamp (core.store.Store.stamp): any committed write, by this
    dashboard or by another process such as a scheduled ``python -m core`` run, makes the next
    call read again; checking it opens no connection. Every session shares the answers. Only
    for reads: a function that writes would skip its write while its answer is remembered.
    """
    store = get_store()
    name = f"{read.__module__}.{read.__qualname__}"
    _READS[name] = read
    return _cached_read(  # type: ignore[no-any-return]
        name, str(store.path), store.stamp(), args, tuple(sorted(kwargs.items()))
    )


@st.cache_resource(show_spinner="Preparing the workspace…")
def _bootstrap(db_path: str) -> bool:
    """Load the demo workspace into an empty store once per process; True if it did."""
    store = Store(db_path)
    if settings.auto_demo and not list_plans(store):
        load_demo(store)
        return True
    return False


def bootstrap_workspace() -> None:
    """Make sure the workspace exists, loading the demo into an empty store."""
    _bootstrap(str(get_store().path))


def _secrets() -> tuple[Mapping[str, Any] | None, str | None]:
    """The secrets Streamlit reads and, when a secrets file exists but cannot be read, why."""
    try:
        return st.secrets.to_dict(), None
    except Exception as exc:  # Streamlit raises a FileNotFoundError subclass for both cases
        files = st.get_option("secrets.files") or []
        if any(Path(str(f)).exists() for f in files):
            return None, str(exc)
        return None, None


def current_user() -> User:
    """Who is using the dashboard (core.access.dashboard_user decides).

    With login configured and nobody signed in, shows the sign-in button and stops the page;
    when sign-in is misconfigured or the identity refused, says why and stops it.
    """
    secrets, problem = _secrets()
    try:
        providers = login_providers(secrets, secrets_error=problem)
        user = dashboard_user(
            secrets, st.user.to_dict() if providers else {}, secrets_error=problem
        )
    except FlywheelError as exc:
        st.error(str(exc), icon=":material/lock:")
        if st.user.get("is_logged_in"):
            st.button("Sign out", on_click=st.logout)
        st.stop()
    if user is None:
        st.info("Sign in to use Flywheel.", icon=":material/login:")
        for provider in providers:
            label = "Sign in" if provider == "default" else f"Sign in with {provider}"
            st.button(label, on_click=st.login, args=(provider,), type="primary", key=provider)
        st.stop()
    return user


def identity_caption(user: User) -> None:
    """The sidebar's line on who is acting, with the roles they hold."""
    roles = ", ".join(sorted(user.roles)) or "no role"
    if user.authenticated:
        shown = f"{user.display_name} ({user.name})" if user.display_name else user.name
        st.caption(f":material/person: {shown} · {roles}")
        st.button("Sign out", on_click=st.logout)
    else:
        st.caption(
            f":material/person: **{user.name}** (no login configured: one local user with "
            "every role)"
        )


def guarded(action: Callable[[], T]) -> T | None:
    """Run a core call; show a FlywheelError as an error box instead of a traceback."""
    try:
        return action()
    except FlywheelError as exc:
        st.error(str(exc), icon=":material/error:")
        return None


def plans() -> list[PlanSummary]:
    """Every stored plan."""
    return cached_read(list_plans)


def current_plan_id() -> str | None:
    """The plan chosen in the sidebar, if any."""
    value = st.session_state.get("plan_id")
    return str(value) if value else None


NO_PLAN = (
    "No plan yet. Open **Plan** to start from a starter plan, or run "
    "`python -m core demo` to load the demo workspace."
)


def plan_id_or_stop(no_plan: str = NO_PLAN) -> str:
    """The current plan's id; without any plan, say how to make one (``no_plan``) and stop
    the page."""
    plan_id = current_plan_id()
    if plan_id is None:
        st.info(no_plan, icon=":material/info:")
        st.stop()
    return plan_id


def or_stop(result: T | None) -> T:
    """The result of a ``guarded`` call; when it failed (its error is shown), stop the page."""
    if result is None:
        st.stop()
    return result


def plan_or_stop(no_plan: str = NO_PLAN) -> tuple[str, Plan, int]:
    """The page's plan as last saved: its id, the plan and its version. Without a plan, say how
    to make one and stop the page; when it cannot be read, show why and stop."""
    plan_id = plan_id_or_stop(no_plan)
    plan, version = or_stop(guarded(lambda: cached_read(load_plan, plan_id)))
    return plan_id, plan, version


def demo_badge() -> None:
    """Say plainly when the workspace holds demo data."""
    if cached_read(is_demo_workspace):
        st.caption(":material/science: **Demo workspace** — seeded sample data, safe to edit.")


def select_plan(plan_id: str) -> None:
    """Make ``plan_id`` the current plan from the next rerun on (the sidebar follows)."""
    st.session_state["pending_plan_id"] = plan_id


def _follow_picker() -> None:
    st.session_state["plan_id"] = st.session_state["plan_picker"]


def plan_selector() -> str | None:
    """The sidebar's plan picker; the current plan is ``st.session_state["plan_id"]``."""
    available = plans()
    if not available:
        st.sidebar.info("No plan yet: create one on the Plan page.")
        st.session_state.pop("plan_id", None)
        return None
    ids = [p.plan_id for p in available]
    names = {p.plan_id: f"{p.name}{' (demo)' if p.is_demo else ''}" for p in available}
    pending = st.session_state.pop("pending_plan_id", None)
    if pending in ids:
        st.session_state["plan_id"] = pending
        st.session_state["plan_picker"] = pending
    if st.session_state.get("plan_id") not in ids:
        chosen = default_plan(available)  # the rule the CLI and the documents follow too
        st.session_state["plan_id"] = chosen.plan_id if chosen else ids[0]
    if st.session_state.get("plan_picker") not in ids:
        st.session_state["plan_picker"] = st.session_state["plan_id"]
    st.sidebar.selectbox(
        "Plan", ids, format_func=names.__getitem__, key="plan_picker", on_change=_follow_picker
    )
    return str(st.session_state["plan_id"])


def readable_frame(
    data: pd.DataFrame | Sequence[Mapping[str, Any]], *, codes: Iterable[str] = ()
) -> pd.DataFrame:
    """A table's cells as a person reads them: text cells through core.labels.show (JSON as
    key-value text, lists comma-separated, missing as "—"), the ``codes`` columns (stages,
    decisions, states) by their labels; numbers, booleans and times stay typed for sorting."""
    frame = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    coded = set(codes)
    for column in frame.columns:
        if column in coded:
            frame[column] = frame[column].map(lambda v: MISSING if v is None else label(v))
        elif _is_text(frame[column]):
            frame[column] = frame[column].map(show)
    return frame


_LONG_TEXT = 32  # characters; a longer value would widen its column past a laptop's share


def _is_long_text(column: pd.Series) -> bool:
    """A text column holding a long value (a rule's parameters, a reason, a detail): it gets
    the medium width, its full text on hover, so that it cannot push the other columns
    off-screen; short text keeps the width that fits it."""
    if not _is_text(column) or column.empty:
        return False
    return bool(column.astype(str).str.len().max() > _LONG_TEXT)


def _is_text(column: pd.Series) -> bool:
    """Neither a number, a boolean nor a time: a column of text, JSON or mixed values (pandas
    3 gives text its own ``str`` dtype, older pandas ``object``)."""
    types = pd.api.types
    return not (
        types.is_numeric_dtype(column)
        or types.is_bool_dtype(column)
        or types.is_datetime64_any_dtype(column)
    )


def table(
    data: pd.DataFrame | Sequence[Mapping[str, Any]],
    *,
    codes: Iterable[str] = (),
    pinned: Iterable[str] = (),
    column_config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """``st.dataframe`` with human column labels (core.labels), readable cells (see
    ``readable_frame``), "—" for missing values, and the ``pinned`` columns kept in view when
    the table scrolls sideways."""
    frame = readable_frame(data, codes=codes)
    config: dict[str, Any] = dict(column_config or {})
    keep_in_view = set(pinned)
    for column in frame.columns:
        if column not in config:
            config[column] = st.column_config.Column(
                label(column),
                width="medium" if _is_long_text(frame[column]) else None,
                pinned=column in keep_in_view or None,
            )
    options.setdefault("hide_index", True)
    options.setdefault("width", "stretch")
    options.setdefault("placeholder", MISSING)
    return st.dataframe(frame, column_config=config, **options)


def key_value_rows(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """A JSON object as "field / value" rows a person reads: keys by their labels, values
    through core.labels.show, a list of objects one row per item (``Filters 2``)."""
    rows: list[dict[str, str]] = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value, start=1):
                rows.append({"field": f"{label(key)} {index}", "value": show(item)})
        else:
            rows.append({"field": label(key), "value": show(value)})
    return rows


def key_values(data: Mapping[str, Any]) -> Any:
    """A JSON object (lineage, audit detail) as a two-column table instead of a JSON blob."""
    return table(
        key_value_rows(data),
        column_config={
            "field": st.column_config.TextColumn(label("field"), width="medium"),
            "value": st.column_config.TextColumn(label("value"), width="large"),
        },
    )
