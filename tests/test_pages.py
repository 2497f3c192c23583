"""Every page through AppTest, on an empty store and on the demo workspace."""

from __future__ import annotations

import re
from pathlib import Path

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


def _stopped_by_sign_in(at: AppTest) -> str:
    """The app stopped before any page, with one error saying why; no local user took over."""
    assert not at.exception, at.exception
    assert len(at.error) == 1, [e.value for e in at.error]
    assert not at.title  # no page ran
    assert not any("every role" in str(c.value) for c in at.caption)
    return str(at.error[0].value)


def test_a_secrets_file_that_cannot_be_parsed_stops_the_app(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        '[auth\nredirect_uri = "http://localhost:8501/oauth2callback"\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)  # Streamlit reads ./.streamlit/secrets.toml
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    message = _stopped_by_sign_in(at)
    assert message.startswith("The secrets file could not be read (Error parsing secrets file")


def test_an_incomplete_auth_section_stops_the_app(store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "a secret",
    }
    message = _stopped_by_sign_in(at.run())
    assert "[auth] names no provider" in message


def test_login_configured_asks_to_sign_in(store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "a secret",
        "client_id": "flywheel",
        "client_secret": "client secret",
        "server_metadata_url": "https://id.example.com/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception and not at.error and not at.title
    assert [b.label for b in at.button] == ["Sign in"]


def test_evals_page_shows_the_cycles_training_job_and_its_loss_curve(demo_store: Store) -> None:
    at = open_page("pages/evals.py")
    assert not at.exception, at.exception
    captions = " ".join(str(c.value) for c in at.caption)
    assert "locally with LoRA (TRL + PEFT)" in captions
    assert "base model Qwen/Qwen2.5-Coder-1.5B-Instruct, LoRA rank 16" in captions
    job = next(s for s in at.selectbox if s.key == "training_job")
    assert job.value == "local-demo-c2"
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Loss of local-demo-c2" in spec and "eval loss" in spec for spec in charts)
    facts = " ".join(str(m.value) for m in at.markdown)
    assert "**Model:** `pyassist-lora-c2`" in facts and "**Weights sha256:**" in facts


def test_a_stopped_local_job_shows_why_and_offers_resume(demo_store: Store, tmp_path: Path) -> None:
    import json

    job_dir = tmp_path / "local-stopped"
    job_dir.mkdir()
    # The worker wrote a running state, then died (no such pid): the page reads it as failed.
    (job_dir / "state.json").write_text(json.dumps({"status": "running", "pid": 0, "step": 7}))
    (job_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": n, "loss": 2.0 - n / 10}) + "\n" for n in range(1, 8))
    )
    demo_store.execute(
        "INSERT INTO training_jobs (job_id, plan_id, cycle, dataset_version, export_path,"
        " export_sha256, export_rows, training_file_id, base_model, hyperparameters, endpoint,"
        " status, created_at, updated_at, actor, backend, job_dir) VALUES ('local-stopped',"
        " 'python-coding-assistant', 2, 'ds-python-coding-assistant-c2-v1', 'x.jsonl', 'x', 1,"
        " '', 'tiny', '{}', 'local', 'running', TIMESTAMPTZ '2027-12-01 00:00:00+00',"
        " TIMESTAMPTZ '2027-12-01 00:00:00+00', 'Omar', 'local', ?)",
        [str(job_dir)],
    )
    at = open_page("pages/evals.py")
    assert not at.exception, at.exception
    assert next(s for s in at.selectbox if s.key == "training_job").value == "local-stopped"
    assert any("stopped unexpectedly at step 7" in str(e.value) for e in at.error)
    assert any(b.key == "training_resume" for b in at.button)
    stored = demo_store.fetch_one(
        "SELECT status, step FROM training_jobs WHERE job_id = 'local-stopped'"
    )
    assert stored == ("failed", 7)
