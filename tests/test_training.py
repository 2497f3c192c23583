"""Training end to end against a local OpenAI-compatible server: upload, job with the plan's
hyperparameters, status and events, the candidate kept with the cycle; failures; registration."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from core.access import User, local_operator
from core.errors import CycleError, DatasetError, TrainingError
from core.evals import eval_endpoint
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store
from core.training import cycle_candidate, job_events, register_candidate, start_training

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-train-SECRET-7"
ML = User("Omar", frozenset({"ml_lead"}))


@pytest.fixture(autouse=True)
def _before_openai_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    """These jobs run on OpenAI's API, which takes new jobs until 2027-01-06."""
    monkeypatch.setattr("core.training.jobs._today", lambda: date(2026, 12, 1))


def _plan(store: Store, **training: object) -> str:
    plan = starter_plan("python_coding_assistant")
    openai = plan.training.openai.model_copy(
        update={"base_model": "gpt-4o-mini", "n_epochs": 2, "suffix": "pyassist", **training}
    )
    plan.training = plan.training.model_copy(update={"backend": "openai", "openai": openai})
    plan_id, _ = save_plan_version(store, plan, note="t", user=local_operator())
    return plan_id


def _export(tmp_path: Path, rows: int = 5) -> Path:
    path = tmp_path / "ds-7.jsonl"
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {n}?"},
                    {"role": "assistant", "content": f"Answer {n}."},
                ]
            }
        )
        for n in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_fine_tuning_job_runs_end_to_end_and_sets_the_cycles_candidate(
    store: Store, tmp_path: Path
) -> None:
    plan_id = _plan(store)
    export = _export(tmp_path)
    with FakeOpenAI() as server:
        job = start_training(
            store,
            plan_id,
            2,
            dataset_version="ds-7",
            export_path=export,
            endpoint=eval_endpoint(server.url, api_key=SECRET),
            poll_s=0.0,
            user=ML,
        )
        request = server.state.job_requests[0]
        uploaded = server.state.files[request["training_file"]]
    assert job.status == "succeeded"
    assert job.fine_tuned_model == "ft:gpt-4o-mini:pyassist:ftjob-1"
    assert (job.dataset_version, job.export_rows, job.cycle) == ("ds-7", 5, 2)
    assert request["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2}
    assert request["model"] == "gpt-4o-mini" and request["suffix"] == "pyassist"
    assert uploaded == export.read_bytes()
    assert job.trained_tokens == len(uploaded) // 4 * 2
    assert job.cost_usd == pytest.approx(job.trained_tokens * 3.0 / 1e6)
    messages = [e["message"] for e in job_events(store, job.job_id)]
    assert messages[0].startswith("Created fine-tuning job") and "successfully" in messages[-1]
    assert len(messages) == len(set(messages))  # events are stored once each
    candidate = cycle_candidate(store, plan_id, 2)
    assert candidate is not None
    assert (candidate["model"], candidate["source"], candidate["job_id"]) == (
        job.fine_tuned_model,
        "fine_tune",
        job.job_id,
    )
    assert SECRET not in json.dumps(store.fetch_all("SELECT * FROM training_jobs"), default=str)


def test_a_failed_job_keeps_its_error_and_sets_no_candidate(store: Store, tmp_path: Path) -> None:
    plan_id = _plan(store, base_model="fail-model")
    with FakeOpenAI() as server:
        job = start_training(
            store,
            plan_id,
            1,
            dataset_version="ds-7",
            export_path=_export(tmp_path),
            endpoint=eval_endpoint(server.url),
            poll_s=0.0,
            user=ML,
        )
    assert job.status == "failed" and "too few examples" in str(job.error)
    assert cycle_candidate(store, plan_id, 1) is None


def test_a_malformed_or_missing_export_is_refused(store: Store, tmp_path: Path) -> None:
    plan_id = _plan(store)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no messages"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1"):
        start_training(store, plan_id, 1, dataset_version="ds-7", export_path=bad, user=ML)
    if not (ROOT / "core" / "datasets.py").exists():
        with pytest.raises(DatasetError, match="not available"):
            start_training(
                store,
                plan_id,
                1,
                dataset_version="ds-7",
                export_path=tmp_path / "missing.jsonl",
                user=ML,
            )


def test_an_unreachable_server_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    plan_id = _plan(store)
    with FakeOpenAI() as server:
        url = server.url
    with pytest.raises(CycleError, match="could not be created"):
        start_training(
            store,
            plan_id,
            1,
            dataset_version="ds-7",
            export_path=_export(tmp_path),
            endpoint=eval_endpoint(url),
            user=ML,
        )


def test_a_model_trained_elsewhere_is_registered_without_credentials(store: Store) -> None:
    plan_id = _plan(store)
    candidate = register_candidate(
        store,
        plan_id,
        3,
        model="qwen-7b-ft",
        endpoint="http://user:pw@gpu-box:8000/v1?key=x",
        user=ML,
    )
    assert (candidate["model"], candidate["endpoint"], candidate["source"]) == (
        "qwen-7b-ft",
        "http://gpu-box:8000/v1",
        "registered",
    )
    with pytest.raises(CycleError):
        register_candidate(store, plan_id, 3, model="m", endpoint="gpu-box:8000", user=ML)


def test_train_start_from_the_command_line(
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from core.cli import main

    _plan(store)
    export = _export(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI() as server:
        code = main(
            [
                "train",
                "start",
                "--cycle",
                "1",
                "--dataset-version",
                "ds-7",
                "--export",
                str(export),
                "--base-url",
                server.url,
                "--poll",
                "0",
                "--json",
            ]
        )
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["status"] == "succeeded" and data["fine_tuned_model"].startswith("ft:")
    assert data["backend"] == "openai" and data["weights_sha256"] is None
    assert SECRET not in out.out + out.err


def test_openai_refuses_new_jobs_after_its_last_day(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = _plan(store)
    monkeypatch.setattr("core.training.jobs._today", lambda: date(2027, 1, 7))
    with FakeOpenAI() as server, pytest.raises(TrainingError, match="after 2027-01-06"):
        start_training(
            store,
            plan_id,
            1,
            dataset_version="ds-7",
            export_path=_export(tmp_path),
            endpoint=eval_endpoint(server.url),
            user=ML,
        )
    assert sum(server.state.calls.values()) == 0
    assert store.fetch_one("SELECT count(*) FROM training_jobs") == (0,)
