"""The Together AI trainer against a local server that speaks Together's fine-tuning API: upload,
a LoRA job with the plan's settings, status, events and metrics through to the output model;
refusals, a failed job, cancel, quotas, and keys kept out of every message."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
from fake_together import FAILURE, REFUSAL, STEPS, FakeTogether

from core.errors import TrainingError
from core.plan import TogetherTraining
from core.store import Store
from core.training.backends import TERMINAL_STATUSES, HostedTrainer, JobState
from core.training.together import TogetherTrainer, job_status

# Shaped like no known credential, so only the literal scrub of the configured key can catch it.
KEY = "plain-together-secret-4711"
MODEL = "meta-llama/Llama-3.2-1B-Instruct"


def _export(tmp_path: Path, rows: int = 6) -> Path:
    path = tmp_path / "ds-3.jsonl"
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You answer Python questions."},
                    {"role": "user", "content": f"How do I sort list {n}?"},
                    {"role": "assistant", "content": f"Use sorted(list_{n})."},
                ]
            }
        )
        for n in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _trainer(server: FakeTogether, **settings: object) -> TogetherTrainer:
    return TogetherTrainer(
        TogetherTraining.model_validate(settings), api_key=KEY, base_url=server.url
    )


def _follow(trainer: HostedTrainer, job_id: str, reads: int = 6) -> list[JobState]:
    states = [trainer.read(job_id)]
    while states[-1].status not in TERMINAL_STATUSES and len(states) < reads:
        states.append(trainer.read(job_id))
    return states


def _assert_no_key(exc: BaseException) -> None:
    shown = "".join(traceback.format_exception(exc))
    assert KEY not in str(exc)
    assert KEY not in shown


def test_a_lora_job_runs_from_upload_to_the_output_model(tmp_path: Path) -> None:
    export = _export(tmp_path)
    with FakeTogether() as server:
        # Typed as the protocol the job orchestration calls it through.
        trainer: HostedTrainer = _trainer(
            server, n_epochs=2, learning_rate=2e-5, lora_rank=8, lora_alpha=16
        )
        assert trainer.backend == "together"
        assert trainer.display_url == server.url

        job_id, file_id = trainer.create(export_path=export, base_model=MODEL, suffix="pyassist")
        states = _follow(trainer, job_id)
        again = trainer.read(job_id)

    assert server.state.files[file_id] == export.read_bytes()
    (request,) = server.state.job_requests
    assert request["model"] == MODEL
    assert request["training_file"] == file_id
    assert request["n_epochs"] == 2
    assert request["learning_rate"] == 2e-5
    assert request["batch_size"] == "max"
    assert request["suffix"] == "pyassist"
    assert request["training_type"] == {
        "type": "Lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_trainable_modules": "all-linear",
    }
    assert all(auth == f"Bearer {KEY}" for auth in server.state.authorizations if auth)

    assert [s.status for s in states] == ["queued", "running", "succeeded"]
    assert states[1].fine_tuned_model is None
    assert states[1].step == STEPS // 2
    done = states[-1]
    assert done.fine_tuned_model == "flywheel-test/Llama-3.2-1B-Instruct-pyassist"
    assert done.trained_tokens is not None and done.trained_tokens > 0
    assert done.error is None
    assert done.finished_at is not None and done.finished_at.tzinfo is not None
    assert (done.step, done.total_steps) == (STEPS, STEPS)

    assert [m.step for m in done.metrics] == list(range(1, STEPS + 1))
    losses = [m.loss for m in done.metrics if m.loss is not None]
    assert len(losses) == len(done.metrics)
    assert losses == sorted(losses, reverse=True)
    assert all(m.learning_rate is not None and m.epoch is not None for m in done.metrics)
    assert [m.step for m in done.metrics if m.tokens] == [STEPS // 2, STEPS]

    ids = [e.event_id for e in done.events]
    assert len(ids) == len(set(ids))
    assert [e.created_at for e in done.events] == sorted(e.created_at for e in done.events)
    assert "Job finished" in [e.message for e in done.events]
    # Events already seen keep their ids, so a follower stores each once.
    assert {e.event_id for e in states[1].events} <= set(ids)
    assert [e.event_id for e in again.events] == ids


def test_without_the_metrics_endpoint_steps_and_tokens_come_from_the_events(
    tmp_path: Path,
) -> None:
    with FakeTogether(metrics_endpoint=False) as server:
        trainer = _trainer(server)
        job_id, _ = trainer.create(export_path=_export(tmp_path), base_model=MODEL, suffix="")
        done = _follow(trainer, job_id)[-1]
    assert done.status == "succeeded"
    assert [(m.step, m.loss) for m in done.metrics] == [(STEPS // 2, None), (STEPS, None)]
    assert all(m.tokens for m in done.metrics)


@pytest.mark.parametrize(
    ("together", "ours"),
    [
        ("pending", "queued"),
        ("queued", "queued"),
        ("running", "running"),
        ("compressing", "running"),
        ("uploading", "running"),
        ("completed", "succeeded"),
        ("error", "failed"),
        ("user_error", "failed"),
        ("cancel_requested", "cancelled"),
        ("cancelled", "cancelled"),
    ],
)
def test_togethers_statuses_map_to_ours(together: str, ours: str) -> None:
    assert job_status(together) == ours


def test_a_failed_job_reports_togethers_reason_and_no_model(tmp_path: Path) -> None:
    with FakeTogether() as server:
        trainer = _trainer(server)
        job_id, _ = trainer.create(
            export_path=_export(tmp_path), base_model="fail-model", suffix=""
        )
        final = _follow(trainer, job_id)[-1]
    assert final.status == "failed"
    assert final.error == FAILURE
    assert final.fine_tuned_model is None
    assert final.finished_at is not None
    assert final.events[-1].level == "error"


def test_a_refused_job_is_one_sentence_with_the_status_and_the_servers_message(
    tmp_path: Path,
) -> None:
    with FakeTogether() as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError) as caught:
            trainer.create(export_path=_export(tmp_path), base_model="refuse-model", suffix="")
    message = str(caught.value)
    assert "HTTP 400" in message
    assert REFUSAL.rstrip(".") in message
    assert "\n" not in message and message.endswith(".")
    assert server.state.jobs == {}


def test_a_model_together_cannot_fine_tune_is_refused_before_the_upload(tmp_path: Path) -> None:
    with FakeTogether() as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError, match=r"missing-model.*HTTP 404.*not found.*lists"):
            trainer.create(export_path=_export(tmp_path), base_model="missing-model", suffix="")
    assert server.state.uploads == {}


def test_settings_beyond_the_models_limits_are_refused_before_the_upload(tmp_path: Path) -> None:
    with FakeTogether() as server:
        trainer = _trainer(server, lora_rank=128, batch_size=4)
        with pytest.raises(TrainingError) as caught:
            trainer.create(export_path=_export(tmp_path), base_model=MODEL, suffix="")
    assert "LoRA rank 128 is above its maximum 64" in str(caught.value)
    assert "batch size 4 is outside 8–32" in str(caught.value)
    assert server.state.uploads == {}


def test_an_export_that_is_not_json_lines_is_refused_before_the_upload(tmp_path: Path) -> None:
    export = tmp_path / "bad.jsonl"
    export.write_text("not json\n", encoding="utf-8")
    with FakeTogether() as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError, match=r"cannot train on bad\.jsonl: .*line 1"):
            trainer.create(export_path=export, base_model=MODEL, suffix="")
    assert server.state.uploads == {}


def test_an_export_together_finds_invalid_creates_no_job(tmp_path: Path) -> None:
    export = tmp_path / "bad.jsonl"
    export.write_text('{"question": "no messages here"}\n', encoding="utf-8")
    with FakeTogether() as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError, match=r"found bad\.jsonl invalid .*INVALID_FORMAT"):
            trainer.create(export_path=export, base_model=MODEL, suffix="")
    assert server.state.jobs == {}


def test_a_job_the_account_cannot_pay_for_is_not_created(tmp_path: Path) -> None:
    with FakeTogether(affordable=False) as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError, match=r"estimates this job at \$1,200\.\d\d"):
            trainer.create(export_path=_export(tmp_path), base_model=MODEL, suffix="")
    assert server.state.jobs == {}


def test_cancel_stops_the_job(tmp_path: Path) -> None:
    with FakeTogether() as server:
        trainer = _trainer(server)
        job_id, _ = trainer.create(export_path=_export(tmp_path), base_model=MODEL, suffix="")
        assert trainer.read(job_id).status == "queued"
        trainer.cancel(job_id)
        final = trainer.read(job_id)
    assert server.state.calls[f"POST /v1/fine-tunes/{job_id}/cancel"] == 1
    assert final.status == "cancelled"
    assert final.fine_tuned_model is None
    assert final.finished_at is not None


def test_reading_or_cancelling_an_unknown_job_is_a_training_error() -> None:
    with FakeTogether() as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError, match=r"HTTP 404.*ft-nope not found"):
            trainer.read("ft-nope")
        with pytest.raises(TrainingError, match=r"cancel fine-tuning job ft-nope"):
            trainer.cancel("ft-nope")


@pytest.mark.parametrize("status", [402, 429])
def test_a_quota_error_names_the_status_and_never_the_echoed_key(
    tmp_path: Path, status: int
) -> None:
    with FakeTogether(quota=status, quota_on="POST /v1/fine-tunes") as server:
        trainer = _trainer(server)
        with pytest.raises(TrainingError) as caught:
            trainer.create(export_path=_export(tmp_path), base_model=MODEL, suffix="")
    message = str(caught.value)
    assert f"HTTP {status}" in message
    assert "Credit limit reached" in message
    _assert_no_key(caught.value)
    # 429 is retried by the package before it gives up; 402 is final.
    assert server.state.calls["POST /v1/fine-tunes"] == (3 if status == 429 else 1)
    assert server.state.jobs == {}


def test_the_key_and_base_url_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeTogether(quota=402) as server:
        monkeypatch.setenv("TOGETHER_API_KEY", KEY)
        # Written the OpenAI way, with /v1, which the package would otherwise add twice.
        monkeypatch.setenv("TOGETHER_BASE_URL", server.url + "/v1/")
        trainer = TogetherTrainer(TogetherTraining())
        assert trainer.display_url == server.url
        with pytest.raises(TrainingError, match="HTTP 402") as caught:
            trainer.read("ft-0001")
    assert server.state.authorizations == [f"Bearer {KEY}"]
    _assert_no_key(caught.value)


def test_a_missing_key_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(TrainingError, match="set TOGETHER_API_KEY"):
        TogetherTrainer(TogetherTraining())


def test_a_together_job_is_kept_with_its_cycle_and_sets_the_candidate(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.access import User, local_operator
    from core.evals import eval_endpoint
    from core.plan_versions import save_plan_version
    from core.starters import starter_plan
    from core.training import cycle_candidate, job_events, job_metrics, start_training

    plan = starter_plan("python_coding_assistant")
    plan.training = plan.training.model_copy(
        update={
            "backend": "together",
            "together": plan.training.together.model_copy(update={"base_model": MODEL}),
        }
    )
    plan_id, _ = save_plan_version(store, plan, note="together", user=local_operator())
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    ml = User("ml@example.com", frozenset({"ml_lead"}))
    with FakeTogether() as server:
        job = start_training(
            store,
            plan_id,
            2,
            dataset_version="ds-3",
            export_path=_export(tmp_path),
            endpoint=eval_endpoint(server.url),
            poll_s=0.0,
            user=ml,
        )
    assert (job.backend, job.status) == ("together", "succeeded")
    assert job.fine_tuned_model and job.trained_tokens
    assert job.cost_usd == pytest.approx(job.trained_tokens * 0.48 / 1e6)
    assert job_events(store, job.job_id) and job_metrics(store, job.job_id)
    candidate = cycle_candidate(store, plan_id, 2)
    assert candidate is not None and candidate["model"] == job.fine_tuned_model
    assert candidate["weights_sha256"] is None  # a hosted model: no local weights to hash
    dumped = json.dumps(store.fetch_all("SELECT * FROM training_jobs"), default=str)
    assert KEY not in dumped
