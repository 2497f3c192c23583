"""Every write in core is role-gated: plan edits and sign-offs, ingest, erasure, raw-PII views,
cycles, gate decisions, generation, eval runs and training. A role without the permission is
refused before any call to the model server and before anything is written; the permitted role
succeeds and is named in the audit log; no entry point can be called without saying who acts.
Pages show the buttons disabled with the role needed."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from unittest import mock

import pytest
from cycle_helpers import build_workspace, interaction
from eval_helpers import code_items, responder, write_jsonl
from fake_openai import FakeOpenAI
from gen_helpers import store_plan, tiny_plan
from streamlit.testing.v1 import AppTest

import core
from core import gates, signoffs
from core.access import (
    ACTIONS,
    PERMISSIONS,
    ROLES,
    AccessError,
    Permission,
    SignInError,
    User,
    dashboard_user,
    local_operator,
    login_providers,
    refusal,
    signed_in_user,
)
from core.backup import backup_store, restore_store
from core.consent import forget_user
from core.cycles import run_cycle
from core.evals import (
    JudgeConfig,
    eval_endpoint,
    freeze_set_version,
    import_eval_set,
    import_results,
    record_results,
    run_eval,
)
from core.generation import run_batch, run_generation, write_examples
from core.ingest import batch_rejects, ingest_bytes, ingest_file, pii_samples
from core.llm import resolve_endpoint
from core.plan_versions import save_plan_version
from core.retention import enforce_retention
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
        store, starter_plan("python_coding_assistant"), note="t", user=PM
    )
    export = tmp_path / "ds-1.jsonl"
    export.write_text(
        '{"messages": [{"role": "user", "content": "Q?"}, '
        '{"role": "assistant", "content": "A."}]}\n',
        encoding="utf-8",
    )
    return plan_id, export


BEFORE_OPENAI_CLOSES = date(2026, 12, 1)  # OpenAI takes new fine-tuning jobs until 2027-01-06


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
                backend="openai",
                today=BEFORE_OPENAI_CLOSES,
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
        backend="openai",
        today=BEFORE_OPENAI_CLOSES,
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


# -- the older gated entry points ----------------------------------------------------------------


def _rows_per_table(store: Store) -> dict[str, int]:
    """Every table's row count, the audit log's included: what "nothing was written" means."""
    names = [
        str(r[0])
        for r in store.fetch_all(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal AND NOT temporary"
        )
    ]
    counts = {}
    for name in names:
        row = store.fetch_one(f'SELECT count(*) FROM "{name}"')
        counts[name] = int(row[0]) if row else 0
    return counts


@dataclass(frozen=True)
class Workspace:
    """A plan the privacy reviewer approved, logs with PII and a quarantined line, consent."""

    store: Store
    plan_id: str
    batch_id: str
    upload: Path


@pytest.fixture
def workspace(store: Store, tmp_path: Path) -> Workspace:
    rows = [interaction(n) for n in range(24)]
    rows[3]["prompt"] = "Mail the fixed script to ana.lopez@example.com please"
    plan_id = build_workspace(store, tmp_path, rows, synthetic=0)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(interaction(90)) + "\n{not json\n", encoding="utf-8")
    batch = ingest_file(store, broken, user=local_operator())
    upload = write_jsonl(tmp_path / "upload.jsonl", [interaction(n) for n in range(60, 64)])
    return Workspace(store, plan_id, batch.batch_id, upload)


def _gate_report(plan_id: str, verdict: str) -> gates.GateReport:
    return gates.GateReport(
        plan_id=plan_id,
        plan_version=1,
        cycle=2,
        candidate="ft:student",
        verdict=verdict,  # type: ignore[arg-type]
        gates=[],
        runs={},
        checked_at="2027-01-20T00:00:00+00:00",
    )


_OVERRIDE_REASON = "The slice regression is a labelling error, fixed in the next cycle."


def _example_row(plan_id: str) -> dict[str, object]:
    """A synthetic example as generation stores it, brought in by hand."""
    return {
        "spec_hash": "spec",
        "cell_key": "{}",
        "item_index": 0,
        "plan_id": plan_id,
        "run_id": "by-hand",
        "cell": "{}",
        "status": "valid",
        "question": "q?",
        "answer": "a.",
        "teacher_model": "m",
        "endpoint": "http://127.0.0.1",
        "template_hash": "t",
        "temperature": 0.5,
        "generated_at": "2027-01-10T00:00:00+00:00",
    }


def _decide(w: Workspace, u: User, verdict: str, decision: str, reason: str = "") -> str:
    """A gate decision on cycle 2 whose gates (computed by core, never passed in) say
    ``verdict``."""
    with mock.patch.object(gates, "check_gates", lambda *a, **k: _gate_report(w.plan_id, verdict)):
        return gates.record_decision(
            w.store,
            w.plan_id,
            2,
            decision=decision,  # type: ignore[arg-type]
            user=u,
            reason=reason,
        )


@dataclass(frozen=True)
class Gated:
    """One gated entry point: how to call it as ``user``, the permission it needs, who may,
    and the audit action it records."""

    call: Callable[[Workspace, User], object]
    permission: Permission
    allowed: User
    action: str


OLDER_ENTRY_POINTS: dict[str, Gated] = {
    "save_plan_version": Gated(
        lambda w, u: save_plan_version(
            w.store, starter_plan("python_coding_assistant"), note="n", plan_id=w.plan_id, user=u
        ),
        "plan.edit",
        PM,
        "plan.save",
    ),
    "signoffs.record_decision": Gated(
        lambda w, u: signoffs.record_decision(
            w.store, w.plan_id, 1, role="pm", user=u, decision="approve"
        ),
        "plan.approve",
        PM,
        "plan.approve",
    ),
    "run_cycle": Gated(
        lambda w, u: run_cycle(w.store, w.plan_id, 2, user=u), "cycle.run", ML, "cycle_run"
    ),
    "ingest_file": Gated(
        lambda w, u: ingest_file(w.store, w.upload, user=u), "data.ingest", PM, "ingest"
    ),
    "ingest_bytes": Gated(
        lambda w, u: ingest_bytes(w.store, w.upload.read_bytes(), "upload.jsonl", user=u),
        "data.ingest",
        ML,
        "ingest",
    ),
    "forget_user": Gated(
        lambda w, u: forget_user(w.store, "u-0", by=u), "data.erase", PRIVACY, "forget"
    ),
    "write_examples": Gated(
        lambda w, u: write_examples(w.store, [_example_row(w.plan_id)], user=u),
        "generation.run",
        PM,
        "generation.examples_written",
    ),
    "batch_rejects(reveal_raw)": Gated(
        lambda w, u: batch_rejects(w.store, w.batch_id, reveal_raw=True, user=u),
        "pii.view_raw",
        PRIVACY,
        "view_raw_text",
    ),
    "pii_samples(reveal_raw)": Gated(
        lambda w, u: pii_samples(w.store, "EMAIL", reveal_raw=True, user=u),
        "pii.view_raw",
        PRIVACY,
        "view_raw_text",
    ),
    "gates.record_decision(approved)": Gated(
        lambda w, u: _decide(w, u, "pass", "approved"),
        "plan.approve",
        PRIVACY,
        "gate.approved",
    ),
    "gates.record_decision(overridden)": Gated(
        lambda w, u: _decide(w, u, "fail", "overridden", _OVERRIDE_REASON),
        "gate.override",
        ML,
        "gate.overridden",
    ),
}


@pytest.mark.parametrize("name", OLDER_ENTRY_POINTS)
def test_a_viewer_is_refused_and_nothing_is_written(workspace: Workspace, name: str) -> None:
    gated = OLDER_ENTRY_POINTS[name]
    before = _rows_per_table(workspace.store)
    audit_before = workspace.store.fetch_all("SELECT * FROM audit_log ORDER BY ts")
    expected = refusal(VIEWER, gated.permission)
    assert expected is not None and expected.startswith("Val (viewer) may not ")
    with pytest.raises(AccessError, match=re.escape(expected) + " Ask an admin"):
        gated.call(workspace, VIEWER)
    assert _rows_per_table(workspace.store) == before
    assert workspace.store.fetch_all("SELECT * FROM audit_log ORDER BY ts") == audit_before

    # The role that may do it does, and the audit log names them.
    gated.call(workspace, gated.allowed)
    assert _audit_actors(workspace.store, gated.action)[-1:] == [gated.allowed.name]


def test_roles_on_the_older_entry_points() -> None:
    assert not PM.can("cycle.run") and not PM.can("data.erase") and not PM.can("pii.view_raw")
    assert not ML.can("pii.view_raw") and not PRIVACY.can("data.ingest")
    assert refusal(PM, "gate.override") == (
        "Maya (pm) may not override gates (gate.override): it needs the ml_lead role."
    )
    assert refusal(PRIVACY, "data.erase") is None and refusal(ML, "cycle.run") is None


# -- the user is a required argument ----------------------------------------------------------


def _without_user(store: Store, tmp_path: Path) -> dict[str, Callable[[], object]]:
    """Each gated entry point called with everything but the acting user."""
    path = tmp_path / "x.jsonl"
    return {
        "save_plan_version": lambda: save_plan_version(store, tiny_plan(), note="n"),  # type: ignore[call-arg]
        "signoffs.record_decision": lambda: signoffs.record_decision(  # type: ignore[call-arg]
            store, "p", 1, role="pm", decision="approve"
        ),
        "run_cycle": lambda: run_cycle(store, "p", 2),  # type: ignore[call-arg]
        "ingest_file": lambda: ingest_file(store, path),  # type: ignore[call-arg]
        "ingest_bytes": lambda: ingest_bytes(store, b"{}", "x.jsonl"),  # type: ignore[call-arg]
        "forget_user": lambda: forget_user(store, "u-0"),  # type: ignore[call-arg]
        "write_examples": lambda: write_examples(store, [_example_row("p")]),  # type: ignore[call-arg]
        "batch_rejects": lambda: batch_rejects(store, "b", reveal_raw=True),  # type: ignore[call-arg]
        "pii_samples": lambda: pii_samples(store, "EMAIL", reveal_raw=True),  # type: ignore[call-arg]
        "gates.record_decision": lambda: gates.record_decision(  # type: ignore[call-arg]
            store, "p", 2, decision="overridden", reason=_OVERRIDE_REASON
        ),
        "run_generation": lambda: run_generation(store, "p"),  # type: ignore[call-arg]
        "run_batch": lambda: run_batch(store, "p"),  # type: ignore[call-arg]
        "import_eval_set": lambda: import_eval_set(store, path),  # type: ignore[call-arg]
        "freeze_set_version": lambda: freeze_set_version(store, "s", 1, reason="r"),  # type: ignore[call-arg]
        "run_eval": lambda: run_eval(  # type: ignore[call-arg]
            store, eval_set="s", model="m", role="candidate", graders=["exact"]
        ),
        "import_results": lambda: import_results(  # type: ignore[call-arg]
            store, path, eval_set="s", role="candidate"
        ),
        "record_results": lambda: record_results(  # type: ignore[call-arg]
            store, [], eval_set="s", role="candidate"
        ),
        "start_training": lambda: start_training(store, "p", 1, dataset_version="d"),  # type: ignore[call-arg]
        "follow_training": lambda: follow_training(store, "job"),  # type: ignore[call-arg]
        "register_candidate": lambda: register_candidate(  # type: ignore[call-arg]
            store, "p", 1, model="m", endpoint="e"
        ),
        "enforce_retention": lambda: enforce_retention(store, tiny_plan()),  # type: ignore[call-arg]
        "backup_store": lambda: backup_store(store, tmp_path / "bk"),  # type: ignore[call-arg]
        "restore_store": lambda: restore_store(tmp_path / "bk", tmp_path / "r.duckdb"),  # type: ignore[call-arg]
    }


ENTRY_POINTS = [
    "save_plan_version",
    "signoffs.record_decision",
    "run_cycle",
    "ingest_file",
    "ingest_bytes",
    "forget_user",
    "write_examples",
    "batch_rejects",
    "pii_samples",
    "gates.record_decision",
    "run_generation",
    "run_batch",
    "import_eval_set",
    "freeze_set_version",
    "run_eval",
    "import_results",
    "record_results",
    "start_training",
    "follow_training",
    "register_candidate",
    "enforce_retention",
    "backup_store",
    "restore_store",
]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_no_entry_point_runs_without_saying_who_acts(
    store: Store, tmp_path: Path, name: str
) -> None:
    before = _rows_per_table(store)
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: '(user|by)'"):
        _without_user(store, tmp_path)[name]()
    assert _rows_per_table(store) == before


def test_every_function_that_takes_the_acting_user_requires_it() -> None:
    """A new gated function in core with ``user: User | None = None`` fails here."""
    taking: set[str] = set()
    # Every module and package of core, a package's functions counted under the name it
    # exports them by (generation.write_examples, defined in core.generation.storage).
    for info in pkgutil.walk_packages(core.__path__, "core."):
        short = info.name.removeprefix("core.")
        # access holds the checks themselves (require(user, permission)); __main__ runs the CLI.
        if short.split(".")[0] in {"access", "__main__"}:
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            function = getattr(module, name)
            home = getattr(function, "__module__", "")
            if not inspect.isfunction(function) or not (
                home == module.__name__ or home.startswith(f"{module.__name__}.")
            ):
                continue
            for parameter in inspect.signature(function).parameters.values():
                annotation = str(parameter.annotation)
                if re.search(r"\bUser\b", annotation):
                    where = f"{short}.{name}({parameter.name})"
                    assert annotation == "User", f"{where} is {annotation}: make it User"
                    assert parameter.default is inspect.Parameter.empty, f"{where} has a default"
                    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, where
                    taking.add(f"{short}.{name}")
    assert {
        "plan_versions.save_plan_version",
        "cycles.run_cycle",
        "ingest.ingest_file",
        "ingest.ingest_bytes",
        "ingest_reads.batch_rejects",
        "ingest_reads.pii_samples",
        "consent.forget_user",
        "generation.write_examples",
        "evals.run_eval",
        "training.jobs.start_training",
        "gates.record_decision",
        "signoffs.record_decision",
        "retention.enforce_retention",
        "backup.backup_store",
        "backup.restore_store",
    } <= taking


# -- pages ---------------------------------------------------------------------------------------


AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "test-cookie-secret",
    "client_id": "flywheel",
    "client_secret": "test-client-secret",
    "server_metadata_url": "https://id.example.com/.well-known/openid-configuration",
}


def _signed_in(email: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app with OIDC login configured and ``email`` signed in; the roles file makes
    omar@ an ML lead, maya@ a PM and priya@ a privacy reviewer, anyone else a viewer."""
    roles = tmp_path / "roles.yaml"
    roles.write_text(
        "default_role: viewer\nusers:\n  omar@example.com: [ml_lead]\n  maya@example.com: [pm]\n"
        "  priya@example.com: [privacy_reviewer]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("FLYWHEEL_ROLES_FILE", str(roles))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = dict(AUTH)
    at.user = {
        "is_logged_in": True,
        "email": email,
        "email_verified": True,
        "name": email.split("@")[0].title(),
    }
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
    assert "val@example.com (viewer) may not run synthetic generation" in _captions(at)
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
        "FormSubmitter:train_start-Start training",
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
    assert (
        "val@example.com (viewer) may not train models or register a cycle's candidate" in captions
    )
    assert "may not run evals, import eval results or freeze eval sets" in captions
    assert "needs the ml_lead role" in captions
    assert "may not ingest data" in captions

    lead = _signed_in("omar@example.com", tmp_path, monkeypatch)
    lead.switch_page("pages/evals.py").run()
    assert not lead.exception, lead.exception
    enabled = actions(lead)
    # Without an uploaded file the import buttons stay disabled for anyone.
    assert not enabled["FormSubmitter:register_candidate-Register as candidate"]
    assert not enabled["FormSubmitter:train_start-Start training"]
    assert not enabled["FormSubmitter:eval_run-Run eval"]
    assert "may not" not in _captions(lead)


# Each page's write actions (a widget's key, else its label) and the permission each needs.
PAGE_ACTIONS: list[tuple[str, str, Permission]] = [
    ("pages/data.py", "Interaction log, consent events or eval items", "data.ingest"),
    ("pages/data.py", "FormSubmitter:upload-Load", "data.ingest"),
    ("pages/data.py", "raw_quarantine", "pii.view_raw"),
    ("pages/data.py", "raw_pii", "pii.view_raw"),
    ("pages/consent.py", "FormSubmitter:forget-Forget this user", "data.erase"),
    ("pages/evals.py", "FormSubmitter:decision-Record decision…", "plan.approve"),
    ("pages/cycles.py", "cycle_run", "cycle.run"),
    ("pages/plan.py", "Create plan", "plan.edit"),
    ("pages/plan.py", "Save as new version", "plan.edit"),
    ("pages/plan.py", "plan_upload", "plan.edit"),
]


def _disabled(at: AppTest) -> dict[str, bool]:
    """Whether each button, toggle and file uploader on the page is disabled, by key or label."""
    widgets = [*at.button, *at.toggle, *at.file_uploader]
    return {(w.key or w.label): w.disabled for w in widgets}


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
    return at


def test_a_viewer_sees_every_write_action_disabled_with_the_role_needed(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _signed_in("val@example.com", tmp_path, monkeypatch)
    val = User("val@example.com", frozenset({"viewer"}))  # signed in: named by their email
    before = _rows_per_table(demo_store)
    for page in dict.fromkeys(p for p, _, _ in PAGE_ACTIONS):
        _open(at, page)
        disabled, captions = _disabled(at), _captions(at)
        for _, action, permission in (a for a in PAGE_ACTIONS if a[0] == page):
            assert disabled[action], (page, action)
            message = refusal(val, permission)
            assert message is not None and message in captions, (page, permission)
        if page == "pages/evals.py":
            # Approving, rejecting and overriding a candidate each say which role they need.
            assert "val@example.com (viewer) may not approve plans" in captions
            assert "val@example.com (viewer) may not override gates (gate.override)" in captions
    assert _rows_per_table(demo_store) == before


def test_the_permitted_roles_find_the_write_actions_enabled(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead = _signed_in("omar@example.com", tmp_path, monkeypatch)
    for page in ("pages/data.py", "pages/consent.py", "pages/evals.py", "pages/cycles.py"):
        disabled = _disabled(_open(lead, page))
        for _, action, permission in (a for a in PAGE_ACTIONS if a[0] == page):
            assert disabled[action] is (permission == "pii.view_raw"), (page, action)
    assert "may not" not in _captions(lead)  # on the Cycles page, the last one opened
    disabled = _disabled(_open(lead, "pages/plan.py"))
    assert not disabled["Create plan"] and not disabled["plan_upload"]

    # Raw PII is the privacy reviewer's to see; a PM records decisions but cannot override.
    reviewer = _open(_signed_in("priya@example.com", tmp_path, monkeypatch), "pages/data.py")
    disabled = _disabled(reviewer)
    assert not disabled["raw_quarantine"] and not disabled["raw_pii"]
    assert disabled["FormSubmitter:upload-Load"]
    pm = _open(_signed_in("maya@example.com", tmp_path, monkeypatch), "pages/evals.py")
    assert not _disabled(pm)["FormSubmitter:decision-Record decision…"]
    assert "maya@example.com (pm) may not override gates (gate.override)" in _captions(pm)


def test_a_viewer_reads_the_plan_form_and_a_pm_edits_it(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plan_fields(at: AppTest) -> dict[str, bool]:
        """Whether each field of the plan form is disabled, by key (``plan:vN:g.section…``)."""
        widgets = [*at.text_input, *at.number_input, *at.selectbox, *at.toggle, *at.text_area]
        return {w.key: w.disabled for w in widgets if w.key and ".goal." in w.key}

    viewer = _open(_signed_in("val@example.com", tmp_path, monkeypatch), "pages/plan.py")
    fields = plan_fields(viewer)
    assert len(fields) >= 4 and all(fields.values()), fields
    assert "Read only: val@example.com (viewer) may not edit plans" in _captions(viewer)

    pm = _open(_signed_in("maya@example.com", tmp_path, monkeypatch), "pages/plan.py")
    fields = plan_fields(pm)
    assert len(fields) >= 4 and not any(fields.values()), fields


# -- sign-in fails closed --------------------------------------------------------------------


def _without(key: str) -> dict[str, object]:
    return {k: v for k, v in AUTH.items() if k != key}


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        (_without("redirect_uri"), "[auth] lacks redirect_uri"),
        (_without("cookie_secret"), "[auth] lacks cookie_secret"),
        (_without("client_id"), "[auth] lacks client_id"),
        (_without("client_secret"), "[auth] lacks client_secret"),
        ({**_without("server_metadata_url")}, "[auth] lacks server_metadata_url"),
        ({**_without("client_secret"), "client_secret": "  "}, "[auth] lacks client_secret"),
        (
            {
                "redirect_uri": AUTH["redirect_uri"],
                "cookie_secret": "s",
                "google": {"client_id": "x", "server_metadata_url": "https://g/x"},
            },
            "[auth.google] lacks client_secret",
        ),
        ({"redirect_uri": AUTH["redirect_uri"], "cookie_secret": "s"}, "[auth] names no provider"),
        ({**AUTH, "my_idp": {**AUTH}}, "may not contain an underscore"),
    ],
)
def test_an_incomplete_auth_section_refuses_everyone(auth: dict[str, object], missing: str) -> None:
    with pytest.raises(SignInError, match=re.escape(missing)):
        login_providers({"auth": auth})
    with pytest.raises(SignInError, match="incomplete"):
        dashboard_user({"auth": auth}, {"is_logged_in": True, "email": "a@b.c"})


def test_unreadable_secrets_refuse_everyone() -> None:
    with pytest.raises(SignInError, match=r"could not be read .*Invalid statement"):
        dashboard_user(None, {}, secrets_error="Invalid statement (at line 1, column 6)")


def test_providers_and_the_local_operator() -> None:
    assert login_providers(None) == ()
    assert login_providers({"openai_api_key": "sk-x"}) == ()
    assert login_providers({"auth": AUTH}) == ("default",)
    named = {"redirect_uri": "u", "cookie_secret": "s", "okta": {**AUTH}, "client_kwargs": {}}
    assert login_providers({"auth": named}) == ("okta",)
    assert dashboard_user(None, {}) == local_operator()
    assert dashboard_user({"auth": AUTH}, {"is_logged_in": False}) is None
    assert dashboard_user({"auth": AUTH}, {}) is None


@pytest.mark.parametrize("verified", [False, None, "false", "yes", 1])
def test_an_unverified_email_is_refused(verified: object) -> None:
    claims = {"is_logged_in": True, "email": "omar@example.com", "name": "Omar"}
    if verified is not None:
        claims["email_verified"] = verified
    with pytest.raises(SignInError, match=re.escape("has not verified omar@example.com")):
        dashboard_user({"auth": AUTH}, claims)
    with pytest.raises(SignInError, match="no email"):
        signed_in_user({"is_logged_in": True, "email_verified": True, "name": "Omar"})


def test_the_verified_email_is_the_identity_never_the_display_name(
    store: Store, tmp_path: Path
) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("users:\n  priya@example.com: [privacy_reviewer]\n", encoding="utf-8")
    claims = {
        "is_logged_in": True,
        "email": "Priya@Example.com",
        "email_verified": "true",
        "name": "Omar (ML lead)",  # users choose their display name
    }
    user = dashboard_user({"auth": AUTH}, claims, path=roles)
    assert user is not None
    assert (user.name, user.email, user.display_name) == (
        "priya@example.com",
        "priya@example.com",
        "Omar (ML lead)",
    )
    assert user.roles == {"privacy_reviewer"} and user.authenticated
    plan_id, version = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="v1", user=local_operator()
    )
    signoffs.record_decision(
        store, plan_id, version, role="privacy_reviewer", user=user, decision="reject", note="no"
    )
    approvers = store.fetch_all("SELECT approver FROM plan_approvals")
    assert approvers == [("priya@example.com",)]
    assert _audit_actors(store, "plan.reject") == ["priya@example.com"]


def test_a_signed_in_page_shows_the_display_name_beside_the_email(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _signed_in("omar@example.com", tmp_path, monkeypatch)
    assert not at.exception and not at.error
    assert "Omar (omar@example.com) · ml_lead" in _captions(at)


def test_an_unverified_sign_in_stops_the_app(
    demo_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets["auth"] = dict(AUTH)
    at.user = {"is_logged_in": True, "email": "omar@example.com", "email_verified": False}
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Your identity provider has not verified omar@example.com; verify the address with "
        "it, sign out and sign in again."
    ]
    assert not at.title  # no page ran
    assert "every role" not in _captions(at)
