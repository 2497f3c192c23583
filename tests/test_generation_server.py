"""Generation against an OpenAI-compatible server started on 127.0.0.1 with injected faults;
resume after a kill, the budget stop, batch mode and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli
from fake_openai import FakeOpenAI, Faults
from gen_helpers import store_plan, tiny_plan

from core.access import User
from core.generation import GenerationSpec, list_failures, run_batch, run_generation
from core.llm import resolve_endpoint
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-cli-SECRET-42"
PM = User("Maya", frozenset({"pm"}))


def _endpoint(server: FakeOpenAI):  # type: ignore[no-untyped-def]
    return resolve_endpoint(base_url=server.url, api_key=SECRET)


@pytest.mark.parametrize(
    "fault",
    ["429", "500", "timeout", "malformed", "invalid", "no_code", "truncated", "bad_body", "leadin"],
)
def test_each_fault_is_survived_and_every_item_ends_valid(store: Store, fault: str) -> None:
    plan_id = store_plan(store, tiny_plan())
    faults = Faults(latency_s=0.01, retry_after_s=0.05, timeout_sleep_s=1.0)
    with FakeOpenAI(faults, script=[fault, fault]) as server:
        report = run_generation(
            store,
            plan_id,
            user=PM,
            endpoint=_endpoint(server),
            timeout_s=0.4,
            backoff_s=0.01,
            concurrency=4,
        )
    assert (report.generated, report.failed) == (8, 0)
    assert report.api_calls == 10


def test_a_teacher_told_why_its_reply_was_refused_corrects_it(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=3))
    # Every first answer opens with a lead-in line, which coding_qa refuses; the teacher
    # fixes it only when the conversation names the error.
    with FakeOpenAI(Faults(rate=1.0, kinds=("leadin",))) as server:
        report = run_generation(
            store, plan_id, user=PM, endpoint=_endpoint(server), invalid_retries=1, backoff_s=0.01
        )
    assert (report.generated, report.failed, report.api_calls) == (3, 0, 6)


def test_truncated_bodies_are_retried_then_given_up_with_a_reason(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=1))
    with FakeOpenAI(Faults(rate=1.0, kinds=("truncated",))) as server:
        report = run_generation(
            store, plan_id, user=PM, endpoint=_endpoint(server), max_retries=2, backoff_s=0.01
        )
    assert (report.generated, report.failed, report.api_calls) == (0, 1, 3)
    reason = list_failures(store, GenerationSpec.load(store, plan_id))[0]["failure_reason"]
    assert "not valid JSON" in reason and "unexpected error" not in reason


def test_a_server_without_json_schema_gets_json_mode(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    with FakeOpenAI(Faults(json_schema_supported=False)) as server:
        report = run_generation(store, plan_id, user=PM, endpoint=_endpoint(server), backoff_s=0.01)
    assert report.generated == 8


def test_persistent_faults_are_recorded_with_reasons(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=2))
    with FakeOpenAI(Faults(rate=1.0, kinds=("invalid",))) as server:
        report = run_generation(
            store, plan_id, user=PM, endpoint=_endpoint(server), invalid_retries=1, backoff_s=0.01
        )
    assert (report.generated, report.failed, report.api_calls) == (0, 2, 4)
    reasons = {
        f["failure_reason"] for f in list_failures(store, GenerationSpec.load(store, plan_id))
    }
    assert reasons == {"invalid reply: schema coding_qa: answer: Field required (after 2 attempts)"}


def test_budget_stop_against_the_server(store: Store) -> None:
    plan = tiny_plan(per_cell=5)
    plan.economics.teacher_input_per_1m = 500.0
    plan.economics.teacher_output_per_1m = 2000.0
    plan.generation.budget_usd = 2.0
    plan.generation.expected_input_tokens = 1
    plan.generation.expected_output_tokens = 1
    plan_id = store_plan(store, plan)
    with FakeOpenAI() as server:
        report = run_generation(
            store, plan_id, user=PM, endpoint=_endpoint(server), concurrency=1, backoff_s=0.01
        )
        calls = server.chat_calls
    assert report.status == "budget_stop"
    assert 0 < calls < 20 and report.generated == calls
    assert report.cost_usd >= 2.0


def test_batch_mode_end_to_end(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    with FakeOpenAI(script=["invalid"]) as server:
        report = run_batch(store, plan_id, user=PM, endpoint=_endpoint(server), poll_s=0.01)
        assert server.state.calls["POST /v1/files"] == 1
        assert server.state.calls["POST /v1/batches"] == 1
        assert server.chat_calls == 0
        assert report.batch and (report.generated, report.failed) == (7, 1)
        spec = GenerationSpec.load(store, plan_id)
        online = run_generation(store, plan_id, user=PM, endpoint=_endpoint(server), backoff_s=0.01)
    assert online.api_calls == 1 and online.generated == 8
    examples = store.fetch_all(
        "SELECT cost_usd, input_tokens, output_tokens FROM generated_examples"
        " WHERE spec_hash = ? AND run_id = ? AND status = 'valid'",
        [spec.spec_hash, report.run_id],
    )
    for cost, tokens_in, tokens_out in examples:
        assert cost == pytest.approx(spec.cost(tokens_in, tokens_out) / 2)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # env is the whole environment, as subprocess takes it: what it leaves out is unset.
    whole: dict[str, str | None] = {**dict.fromkeys(os.environ), **env}
    return run_cli(*args, env=whole)


def _env(server: FakeOpenAI) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OPENAI_BASE_URL=server.url, OPENAI_API_KEY=SECRET, FLYWHEEL_RETRY_BACKOFF_S="0.01")
    return env


def test_cli_dry_run_run_and_rerun(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    with FakeOpenAI(Faults(rate=0.2, seed=2, retry_after_s=0.01)) as server:
        env = _env(server)
        dry = _cli("generate", "--dry-run", "--plan", plan_id, "--json", env=env)
        assert dry.returncode == 0, dry.stderr
        data = json.loads(dry.stdout)
        keys = {"cells", "requested", "generated", "failed", "api_calls", "estimated_cost_usd"}
        assert keys <= set(data)
        assert (data["cells"], data["requested"], data["api_calls"], data["calls"]) == (4, 8, 0, 8)
        assert server.chat_calls == 0
        run = _cli("generate", "--plan", plan_id, "--json", env=env)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert (result["generated"], result["failed"]) == (8, 0)
        assert result["api_calls"] == server.chat_calls >= 8
        again = json.loads(_cli("generate", "--json", "--plan", plan_id, env=env).stdout)
        assert again["api_calls"] == 0 and again["generated"] == 8
    for output in (dry, run):
        assert SECRET not in output.stdout + output.stderr
    assert SECRET.encode() not in store.path.read_bytes()


def test_cli_refuses_a_run_over_budget_and_without_a_key(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(budget=0.00001))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    over = _cli("generate", "--plan", plan_id, env=env)
    assert over.returncode == 2 and "budget cap" in over.stderr
    plan_id = store_plan(store, tiny_plan())
    nokey = _cli("generate", "--plan", plan_id, env=env)
    assert nokey.returncode == 2 and "OPENAI_API_KEY" in nokey.stderr


def test_a_killed_run_resumes_where_it_stopped(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=2, difficulties=3, per_cell=5))
    with FakeOpenAI(Faults(latency_s=0.1)) as server:
        env = _env(server)
        proc = subprocess.Popen(
            [sys.executable, "-m", "core", "generate", "--plan", plan_id, "--concurrency", "2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while server.chat_calls < 14 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = server.chat_calls
        assert killed_at < 30
        spec = GenerationSpec.load(store, plan_id)
        stored = store.fetch_one(
            "SELECT count(*) FROM generated_examples WHERE spec_hash = ? AND status = 'valid'",
            [spec.spec_hash],
        )
        assert stored is not None and 0 < stored[0] < 30
        report = run_generation(store, plan_id, user=PM, endpoint=_endpoint(server), backoff_s=0.01)
    assert report.generated == 30
    assert report.api_calls == 30 - stored[0]
