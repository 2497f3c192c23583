"""The Data and Consent pages through AppTest, on an empty store and on the demo."""

from __future__ import annotations

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.store import Store

PAGES = ["pages/data.py", "pages/consent.py"]


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page(page)
    at.run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_on_an_empty_store_says_what_to_do(store: Store, page: str) -> None:
    at = _open(page)
    assert not at.exception
    assert any("ingest" in i.value for i in at.info)


@pytest.mark.parametrize("page", PAGES)
def test_page_on_the_demo(demo_store: Store, page: str) -> None:
    at = _open(page)
    assert not at.exception
    assert not at.error


def test_data_page_raw_toggle_is_audited(demo_store: Store) -> None:
    at = _open("pages/data.py")
    assert len(at.dataframe) >= 2  # batches and quarantine
    before = demo_store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'view_raw_text'")
    at.toggle(key="raw_pii").set_value(True).run()
    assert not at.exception
    after = demo_store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'view_raw_text'")
    assert before is not None and after is not None and after[0] == before[0] + 1
    assert any(t.value and "<" not in t.value for t in at.text)


def test_consent_page_lookup_and_forget(demo_store: Store) -> None:
    user = demo_store.fetch_one("SELECT user_id FROM interactions LIMIT 1")
    assert user is not None
    at = _open("pages/consent.py")
    at.text_input(key="consent_user").input(user[0]).run()
    assert not at.exception
    assert any(m.label == "Stored interactions" for m in at.metric)
    at.text_input(key="forget_user").input(user[0])
    at.button[0].click().run()
    assert any("Tick the confirmation" in w.value for w in at.warning)
    at.text_input(key="forget_user").input(user[0])
    at.checkbox(key="forget_confirm").check()
    at.button[0].click().run()
    assert not at.exception
    assert any("Forgot" in s.value for s in at.success)
    assert demo_store.fetch_one(
        "SELECT count(*) FROM interactions WHERE user_id = ?", [user[0]]
    ) == (0,)
