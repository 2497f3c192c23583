"""Every page through AppTest, on an empty store and on the demo workspace."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.plan_versions import list_plans, list_versions
from core.store import Store

PAGES = sorted(
    f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py") if not p.name.startswith("_")
)


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    if page != "pages/overview.py":
        at.switch_page(page)
        at.run()
    return at


def test_every_page_has_a_browser_test() -> None:
    from test_browser import PAGES as BROWSER_PAGES

    assert {f"pages/{path or 'overview'}.py" for path in BROWSER_PAGES} == set(PAGES)


def test_every_page_file_is_in_the_navigation() -> None:
    registered = set(re.findall(r'st\.Page\("(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text()))
    assert registered == set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_an_empty_store(store: Store, page: str) -> None:
    at = open_page(page)
    assert not at.exception, at.exception
    assert not at.error


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_the_demo(demo_store: Store, page: str) -> None:
    at = open_page(page)
    assert not at.exception, at.exception
    assert not at.error
    assert any("Demo workspace" in c.value for c in at.caption)


def test_dashboard_loads_the_demo_into_an_empty_store(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_AUTO_DEMO", "1")
    at = open_page("pages/overview.py")
    assert not at.exception
    assert [p.is_demo for p in list_plans(store)] == [True]
    assert any("Python coding assistant" in h.value for h in at.subheader)


def _by_label(elements: object, label: str) -> object:
    return next(e for e in elements if e.label == label)  # type: ignore[attr-defined]


def test_editing_a_field_shows_lint_and_saving_creates_a_version(demo_store: Store) -> None:
    at = open_page("pages/plan.py")
    _by_label(at.text_input, "Owner").set_value("").run()  # type: ignore[attr-defined]
    assert any("goal.owner" in m.value for m in at.markdown)
    assert any("Not ready" in e.value for e in at.error)

    _by_label(at.text_input, "Change note").set_value("Owner left").run()  # type: ignore[attr-defined]
    _by_label(at.button, "Save as new version").click().run()  # type: ignore[attr-defined]
    assert not at.exception
    versions = list_versions(demo_store, "python-coding-assistant")
    assert len(versions) == 4
    assert versions[0].note == "Owner left" and versions[0].lint_errors == 1


def test_save_needs_a_change_note(demo_store: Store) -> None:
    at = open_page("pages/plan.py")
    _by_label(at.text_input, "Feature").set_value("Python helper").run()  # type: ignore[attr-defined]
    _by_label(at.button, "Save as new version").click().run()  # type: ignore[attr-defined]
    assert any("change note" in e.value for e in at.error)
    assert len(list_versions(demo_store, "python-coding-assistant")) == 3


def test_new_plan_from_a_starter(store: Store) -> None:
    at = open_page("pages/plan.py")
    assert any("No plan yet" in i.value for i in at.info)
    _by_label(at.selectbox, "Starter").set_value("customer_support_assistant").run()  # type: ignore[attr-defined]
    _by_label(at.button, "Create plan").click().run()  # type: ignore[attr-defined]
    assert not at.exception
    assert [p.plan_id for p in list_plans(store)] == ["customer-support-reply-assistant"]


def test_sign_off_from_the_plan_page(demo_store: Store) -> None:
    from core.signoffs import approval_status

    at = open_page("pages/plan.py")
    _by_label(at.selectbox, "Decide as").set_value("privacy_reviewer").run()  # type: ignore[attr-defined]
    _by_label(at.button, "Approve this version").click().run()  # type: ignore[attr-defined]
    assert not at.exception
    status = approval_status(demo_store, "python-coding-assistant", 3)
    assert status.decisions["privacy_reviewer"].decision == "approve"
    assert status.decisions["privacy_reviewer"].approver == "local user"
