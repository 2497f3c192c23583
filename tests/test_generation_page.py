"""The Synthetic data page through AppTest: empty key, estimate, a run, top-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from streamlit.testing.v1 import AppTest

from core.plan_versions import list_plans
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/generation.py"


def _page(store: Store) -> AppTest:
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=60)
    at.session_state["plan_id"] = list_plans(store)[0].plan_id
    return at


def _text(at: AppTest) -> str:
    parts = [e.value for e in [*at.info, *at.success, *at.warning, *at.error, *at.markdown]]
    return "\n".join(str(p) for p in parts)


def test_without_a_key_the_page_says_how_to_configure_one(
    demo_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    at = _page(demo_store).run()
    assert not at.exception
    text = _text(at)
    assert "OPENAI_API_KEY" in text and "secrets.toml" in text
    assert not [b for b in at.button if b.key == "gen_run"]
    # The demo's thin cell and failures are shown, and the estimate needs no key.
    assert "thin" in " ".join(b.label for b in at.button) or "cell(s) hold fewer" in text
    assert next(m for m in at.metric if m.label == "Calls").value == "5"


def test_a_run_from_the_page_fills_the_grid(
    demo_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-page-test")
        at = _page(demo_store).run()
        assert not at.exception
        run = next(b for b in at.button if b.key == "gen_run")
        run.click().run()
        assert not at.exception
        assert any("5 new valid" in str(s.value) for s in at.success)
        top_up = [b for b in at.button if b.key == "gen_top_up"]
        assert top_up, "the near-duplicate in the thin cell keeps it under target"
        top_up[0].click().run()
        assert not at.exception
        assert server.chat_calls == 6


def test_the_page_is_registered_in_the_app() -> None:
    assert f'st.Page("{PAGE}"' in (ROOT / "app.py").read_text()


@pytest.mark.skipif(
    not (ROOT / "pages" / "plan.py").exists(), reason="pages/plan.py lands with the plan editor"
)
def test_the_page_through_the_app(demo_store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page(PAGE).run()
    assert not at.exception
