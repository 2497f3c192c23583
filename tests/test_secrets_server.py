"""A server that echoes the key back gets it nowhere: `python -m core generate` (online and
--batch), `eval run` and the judge, against a fake OpenAI-compatible server on 127.0.0.1 that
puts the request's Authorization header and key into its 400/401/429/500 bodies, a 404 of a
missing batch API, a 200 that is no chat completion and a reply's text. Afterwards the key is in
no stdout or stderr, no column of any table (audit log included) and no file written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from cli_helpers import run_cli
from eval_helpers import code_items, responder, write_jsonl
from fake_openai import FakeOpenAI, Faults
from gen_helpers import store_plan, tiny_plan

from core.escaping import sql_identifier
from core.secrets import REDACTED
from core.store import Store

# No known key shape (not sk-…, not 64 hex): only the configured value can catch it.
KEY = "fw-e2e-7Qx2Lm9Vd4Rk8Tz3"
TRACES = (KEY, "7Qx2Lm9Vd4Rk8Tz3", quote(KEY, safe=""))
ONLINE = ["400", "429", "500", "bad_body", "echo", "400", "500", "bad_body"]


def _echoing(script: list[str], *, batches_supported: bool = True) -> FakeOpenAI:
    faults = Faults(echo_credentials=True, batches_supported=batches_supported)
    return FakeOpenAI(faults, script=script)


def _cli(server: FakeOpenAI, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        OPENAI_BASE_URL=server.url,
        OPENAI_API_KEY=KEY,
        FLYWHEEL_MAX_RETRIES="0",
        FLYWHEEL_GENERATION_INVALID_RETRIES="0",
        FLYWHEEL_RETRY_BACKOFF_S="0.01",
        FLYWHEEL_BATCH_POLL_S="0.01",
        FLYWHEEL_REQUEST_TIMEOUT_S="10",
    )
    return run_cli(*args, env=env)


def _leaks(text: str) -> list[str]:
    return [trace for trace in TRACES if trace in text]


def _store_texts(store: Store) -> dict[str, str]:
    """Every table's rows as text (every column, VARCHAR and JSON included)."""
    tables = [
        str(r[0])
        for r in store.fetch_all(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        )
    ]
    return {
        table: "\n".join(
            " ".join(str(v) for v in row)
            for row in store.fetch_all(f"SELECT * FROM {sql_identifier(table)}")
        )
        for table in tables
    }


def _assert_nowhere(
    store: Store, tmp_path: Path, runs: list[subprocess.CompletedProcess[str]]
) -> None:
    for run in runs:
        assert not _leaks(run.stdout) and not _leaks(run.stderr), (run.args, run.stdout, run.stderr)
    texts = _store_texts(store)
    assert texts.get("audit_log")  # the runs were audited, and the audit log is scanned too
    assert {table: _leaks(text) for table, text in texts.items() if _leaks(text)} == {}
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert not [t for t in TRACES if t.encode() in data], path


def test_generate_online_and_batch_never_print_or_store_an_echoed_key(
    store: Store, tmp_path: Path
) -> None:
    runs: list[subprocess.CompletedProcess[str]] = []
    plan_id = store_plan(store, tiny_plan())
    with _echoing(ONLINE) as server:
        online = _cli(server, "generate", "--plan", plan_id, "--json")
        runs.append(online)
    assert online.returncode == 0, online.stderr
    assert json.loads(online.stdout)["failed"] == 8
    reasons = [str(r[0]) for r in store.fetch_all("SELECT failure_reason FROM generated_examples")]
    assert sum(REDACTED in r for r in reasons) >= 2  # the 400s' echoed bodies, scrubbed
    with _echoing(["401"] * 8) as server:
        runs.append(_cli(server, "generate", "--plan", plan_id))
    assert "refused the key" in runs[-1].stdout + runs[-1].stderr

    batch_plan = store_plan(store, tiny_plan())
    with _echoing(["400", "401", "429", "500", "bad_body", "echo"]) as server:
        batch = _cli(server, "generate", "--batch", "--plan", batch_plan)
        runs.append(batch)
    assert batch.returncode == 0, batch.stderr
    assert "2 generated, 6 failed" in batch.stdout
    batch_reasons = store.fetch_all(
        "SELECT failure_reason FROM generated_examples WHERE plan_id = ? AND status = 'failed'",
        [batch_plan],
    )
    assert sum(REDACTED in str(r[0]) for r in batch_reasons) >= 4
    with _echoing(["echo", "bad_body", "500", "401", "400"]) as server:
        runs.append(_cli(server, "generate", "--batch", "--plan", batch_plan, "--json"))
    assert runs[-1].returncode == 0, runs[-1].stderr
    other_plan = store_plan(store, tiny_plan(topics=1, difficulties=1))
    with _echoing([], batches_supported=False) as server:
        refused = _cli(server, "generate", "--batch", "--plan", other_plan)
        runs.append(refused)
    assert refused.returncode == 2 and "HTTP 404" in refused.stderr
    assert REDACTED in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    _assert_nowhere(store, tmp_path, runs)


def test_eval_run_and_the_judge_never_store_an_echoed_key(store: Store, tmp_path: Path) -> None:
    items = write_jsonl(tmp_path / "items.jsonl", code_items(1))
    with FakeOpenAI() as idle:
        runs = [_cli(idle, "eval", "import-set", str(items))]
    assert runs[0].returncode == 0, runs[0].stderr

    def run(server: FakeOpenAI, model: str, *extra: str) -> subprocess.CompletedProcess[str]:
        args = ["eval", "run", "--set", "py-mini", "--model", model, "--role", "production"]
        done = _cli(server, *args, "--base-url", server.url, *extra)
        runs.append(done)
        return done

    with _echoing(["400", "bad_body", "echo"]) as server:
        outputs = run(server, "echoed", "--graders", "python_parses", "--json")
    assert outputs.returncode == 0, outputs.stderr
    stored = store.fetch_all("SELECT output, error FROM eval_outputs")
    assert any(REDACTED in str(error) for _, error in stored)  # the 400's body
    assert any(REDACTED in str(output) for output, _ in stored)  # the echoed reply text

    with FakeOpenAI(responder=responder) as model, _echoing(["500", "bad_body", "echo"]) as judge:
        judged = run(
            model,
            "student",
            "--graders",
            "llm_judge",
            "--judge-model",
            "judge",
            "--judge-base-url",
            judge.url,
        )
        assert judge.chat_calls == 3
    assert judged.returncode == 0, judged.stderr
    scores = store.fetch_all("SELECT error, detail FROM eval_scores WHERE grader = 'llm_judge'")
    assert len(scores) == 3 and all(error for error, _ in scores)

    with _echoing(["401"] * 3) as server:
        refused = run(server, "refused", "--graders", "python_parses")
    assert refused.returncode == 2 and "refused the key" in refused.stderr
    _assert_nowhere(store, tmp_path, runs)


@pytest.mark.parametrize("fault", ["400", "401", "429", "500", "bad_body", "echo"])
def test_the_fake_server_really_echoes_the_key(fault: str) -> None:
    """Guards the tests above: each fault puts the key in what the server sends back."""
    import httpx2

    with _echoing([fault]) as server:
        reply = httpx2.post(
            f"{server.url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert KEY in reply.text and (reply.status_code == 200) == (fault in ("bad_body", "echo"))
