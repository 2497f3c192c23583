"""Generation, eval runs and training are role-gated in core: a role without the permission is
refused before any call to the model server and before anything is written; the permitted role
succeeds and is named in the audit log. Pages show the buttons disabled with the role needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eval_helpers import code_items, responder, write_jsonl
from fake_openai import FakeOpenAI
from gen_helpers import store_plan, tiny_plan
from streamlit.testing.v1 import AppTest

from core.access import ACTIONS, PERMISSIONS, ROLES, AccessError, User, local_operator
from core.evals import (
    JudgeConfig,
    eval_endpoint,
    freeze_set_version,
    import_eval_set,
    import_results,
    run_eval,
)
from core.generation import run_batch, run_generation
from core.llm import resolve_endpoint
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store
from core.training import cycle_candidate, follow_training, register_candidate, start_training

ROOT = Path(__file__).resolve().parent.parent
PM = User("Maya", frozenset({"pm"}))
ML = User("Omar", frozenset({"ml_lead"}))
PRIVACY = User("Priya", frozenset({"privacy_reviewer"}))
VIEWER = User("Val", frozenset({"viewer"}))


def _count(store: Store, sql: str) -> int:
    row = store.fetch_one(sql)
    return int(row[0]) if row else 0


def _audit_actors(store: Store, action: str) -> list[str]:
    return [
        str(r[0]) for r in store.fetch_all("SELECT actor FROM audit_log WHERE action = ?", [action])
    ]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(responder=responder) as fake:
        yield fake


def test_who_may_generate_evaluate_and_train() -> None:
    may = {
        role: {p for p in ("generation.run", "eval.run", "model.train") if role in PERMISSIONS[p]}
        for role in ROLES
    }
    assert may["pm"] == {"generation.run"}
    assert may["ml_lead"] == {"generation.run", "eval.run", "model.train"}
    for role in ("privacy_reviewer", "eng_lead", "legal", "viewer"):
        assert may[role] == set(), role
    # The command line's operator and the dashboard without login may do all three.
    assert all(local_operator().can(p) for p in ("generation.run", "eval.run", "model.train"))
    assert set(ACTIONS) == set(PERMISSIONS)


# -- generation ----------------------------------------------------------------------------------


def test_a_viewer_cannot_generate_and_no_call_is_made(store: Store, server: FakeOpenAI) -> None:
    plan_id = store_plan(store, tiny_plan())
    endpoint = resolve_endpoint(base_url=server.url, api_key="sk-test")
    with pytest.raises(AccessError, match=r"Val \(viewer\) may not run synthetic generation"):
        run_generation(store, plan_id, user=VIEWER, endpoint=endpoint)
    with pytest.raises(AccessError, match="needs the ml_lead or pm role"):
        run_batch(store, plan_id, user=PRIVACY, endpoint=endpoint, poll_s=0.0)
    assert sum(server.state.calls.values()) == 0
    assert _count(store, "SELECT count(*) FROM generation_runs") == 0
    assert _count(store, "SELECT count(*) FROM generated_examples") == 0
    assert _audit_actors(store, "generation.run") == []


def test_a_pm_generates_and_is_named_in_the_audit_log(store: Store, server: FakeOpenAI) -> None:
    plan_id = store_plan(store, tiny_plan())
    endpoint = resolve_endpoint(base_url=server.url, api_key="sk-test")
    report = run_generation(store, plan_id, user=PM, endpoint=endpoint, backoff_s=0.01)
    assert report.generated == 8 and server.chat_calls == 8
    assert _audit_actors(store, "generation.run") == ["Maya"]


# -- evals ---------------------------------------------------------------------------------------


def _eval_set(store: Store, tmp_path: Path) -> None:
    import_eval_set(store, write_jsonl(tmp_path / "set.jsonl", code_items(1)), user=PM)


def test_only_an_ml_lead_runs_an_eval_or_a_judge(
    store: Store, tmp_path: Path, server: FakeOpenAI
) -> None:
    _eval_set(store, tmp_path)
    endpoint = eval_endpoint(server.url, api_key="sk-test")
    common = {
        "eval_set": "py-mini",
        "model": "student",
        "role": "candidate",
        "cycle": 1,
        "endpoint": endpoint,
        "graders": ["python_tests", "llm_judge"],
        "judge": JudgeConfig(model="judge", endpoint=endpoint),
        "backoff_s": 0.01,
    }
    for user in (VIEWER, PM):
        with pytest.raises(AccessError, match=r"may not run evals.*needs the ml_lead role"):
            run_eval(store, user=user, **common)  # type: ignore[arg-type]
    assert sum(server.state.calls.values()) == 0
    assert _count(store, "SELECT count(*) FROM eval_runs") == 0
    assert _count(store, "SELECT count(*) FROM eval_set_versions WHERE frozen_at IS NOT NULL") == 0

    report = run_eval(store, user=ML, **common)  # type: ignore[arg-type]
    assert report.outputs == 3 and report.graded == 6
    assert server.chat_calls == 6  # three answers, three judge calls
    assert _audit_actors(store, "eval.run") == ["Omar"]
    runs = store.fetch_all("SELECT actor FROM eval_runs")
    assert runs == [("Omar",)]


def test_only_an_ml_lead_imports_results_or_freezes_a_set(store: Store, tmp_path: Path) -> None:
    _eval_set(store, tmp_path)
    results = write_jsonl(
        tmp_path / "results.jsonl",
        [
            {
                "run_id": "ext-1",
                "item_id": item["item_id"],
                "model": "ft:student",
                "output": "x",
                "score": 1.0,
                "grader": "exact",
            }
            for item in code_items(1)
        ],
    )
    with pytest.raises(AccessError, match="may not run evals, import eval results"):
        import_results(store, results, eval_set="py-mini", role="candidate", user=VIEWER)
    with pytest.raises(AccessError, match="freeze eval sets"):
        freeze_set_version(store, "py-mini", 1, user=PM, reason="a PM wants it fixed")
    assert _count(store, "SELECT count(*) FROM eval_runs") == 0
    assert _count(store, "SELECT count(*) FROM eval_scores") == 0
    assert _count(store, "SELECT count(*) FROM eval_set_versions WHERE frozen_at IS NOT NULL") == 0

    assert freeze_set_version(store, "py-mini", 1, user=ML, reason="gate input")
    imported = import_results(store, results, eval_set="py-mini", role="candidate", user=ML)
    assert imported.accepted == 3
    assert _audit_actors(store, "eval_set.freeze") == ["Omar"]
    assert _audit_actors(store, "eval.import_results") == ["Omar"]


def test_loading_an_eval_set_needs_the_ingest_permission(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "set.jsonl", code_items(1))
    with pytest.raises(AccessError, match="may not ingest data"):
        import_eval_set(store, path, user=VIEWER)
    assert _count(store, "SELECT count(*) FROM ingest_batches") == 0
    assert _count(store, "SELECT count(*) FROM eval_set_versions") == 0
    import_eval_set(store, path, user=PM)
    assert store.fetch_all("SELECT created_by FROM eval_set_versions") == [("Maya",)]


# -- training ------------------------------------------------------------------------------------


def _training_plan(store: Store, tmp_path: Path) -> tuple[str, Path]:
    plan_id, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="t", author="tests"
    )
    export = tmp_path / "ds-1.jsonl"
    export.write_text(
        '{"messages": [{"role": "user", "content": "Q?"}, '
        '{"role": "assistant", "content": "A."}]}\n',
        encoding="utf-8",
    )
    return plan_id, export


def test_only_an_ml_lead_starts_or_follows_training(
    store: Store, tmp_path: Path, server: FakeOpenAI
) -> None:
    plan_id, export = _training_plan(store, tmp_path)
    endpoint = eval_endpoint(server.url, api_key="sk-test")
    for user in (VIEWER, PM):
        with pytest.raises(AccessError, match=r"may not train models.*needs the ml_lead role"):
            start_training(
                store,
                plan_id,
                1,
                dataset_version="ds-1",
                export_path=export,
                endpoint=endpoint,
                poll_s=0.0,
                user=user,
            )
    assert sum(server.state.calls.values()) == 0
    assert _count(store, "SELECT count(*) FROM training_jobs") == 0

    job = start_training(
        store,
        plan_id,
        1,
        dataset_version="ds-1",
        export_path=export,
        endpoint=endpoint,
        wait=False,
        user=ML,
    )
    calls = sum(server.state.calls.values())
    with pytest.raises(AccessError, match="may not train models"):
        follow_training(store, job.job_id, endpoint=endpoint, poll_s=0.0, user=VIEWER)
    assert sum(server.state.calls.values()) == calls
    assert cycle_candidate(store, plan_id, 1) is None

    done = follow_training(store, job.job_id, endpoint=endpoint, poll_s=0.0, user=ML)
    assert done.status == "succeeded"
    assert _audit_actors(store, "training.start") == ["Omar"]
    assert _audit_actors(store, "candidate.set") == ["Omar"]


def test_only_an_ml_lead_registers_a_candidate(store: Store, tmp_path: Path) -> None:
    plan_id, _ = _training_plan(store, tmp_path)
    for user in (VIEWER, PM, PRIVACY):
        with pytest.raises(AccessError, match="register a cycle's candidate"):
            register_candidate(
                store, plan_id, 2, model="m", endpoint="http://gpu:8000/v1", user=user
            )
    assert cycle_candidate(store, plan_id, 2) is None
    assert _audit_actors(store, "candidate.set") == []
    candidate = register_candidate(
        store, plan_id, 2, model="m", endpoint="http://gpu:8000/v1", user=ML
    )
    assert candidate["registered_by"] == "Omar"


# -- pages ---------------------------------------------------------------------------------------


def _signed_in(email: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app with OIDC login configured and ``email`` signed in; the roles file makes
    omar@ an ML lead and maya@ a PM, anyone else a viewer."""
    roles = tmp_path / "roles.yaml"
    roles.write_text(
        "default_role: viewer\nusers:\n  omar@example.com: [ml_lead]\n  maya@example.com: [pm]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("FLYWHEEL_ROLES_FILE", str(roles))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "test-cookie-secret",
    }
    at.user = {"is_logged_in": True, "email": email, "name": email.split("@")[0].title()}
    return at.run()


def _captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def test_a_viewer_sees_generation_disabled_and_says_which_role_is_needed(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAI
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-page-test")
    at = _signed_in("val@example.com", tmp_path, monkeypatch)
    at.switch_page("pages/generation.py").run()
    assert not at.exception, at.exception
    assert at.button(key="gen_run").disabled and at.button(key="gen_top_up").disabled
    assert "Val (viewer) may not run synthetic generation" in _captions(at)
    assert "needs the ml_lead or pm role" in _captions(at)
    assert server.chat_calls == 0

    pm = _signed_in("maya@example.com", tmp_path, monkeypatch)
    pm.switch_page("pages/generation.py").run()
    assert not pm.exception, pm.exception
    assert not pm.button(key="gen_run").disabled
    assert "may not run synthetic generation" not in _captions(pm)


def test_a_viewer_sees_eval_and_training_actions_disabled(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = {
        "FormSubmitter:register_candidate-Register as candidate",
        "FormSubmitter:eval_run-Run eval",
        "Import results",
        "Import eval set",
    }

    def actions(at: AppTest) -> dict[str, bool]:
        found = {(b.key or b.label): b.disabled for b in at.button}
        return {k: v for k, v in found.items() if k in gated}

    at = _signed_in("val@example.com", tmp_path, monkeypatch)
    at.switch_page("pages/evals.py").run()
    assert not at.exception, at.exception
    assert actions(at) == dict.fromkeys(gated, True)
    captions = _captions(at)
    assert "Val (viewer) may not train models or register a cycle's candidate" in captions
    assert "may not run evals, import eval results or freeze eval sets" in captions
    assert "needs the ml_lead role" in captions
    assert "may not ingest data" in captions

    lead = _signed_in("omar@example.com", tmp_path, monkeypatch)
    lead.switch_page("pages/evals.py").run()
    assert not lead.exception, lead.exception
    enabled = actions(lead)
    # Without an uploaded file the import buttons stay disabled for anyone.
    assert not enabled["FormSubmitter:register_candidate-Register as candidate"]
    assert not enabled["FormSubmitter:eval_run-Run eval"]
    assert "may not" not in _captions(lead)
