"""Local LoRA training end to end, on a tiny causal LM built in the test (nothing downloaded):
a real dataset export trains and its loss falls, the adapter's sha256 becomes the candidate's,
an in-process eval grades it, a changed adapter is refused by the gates, cancel and resume
work, and bad input is one clear sentence with nothing left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_lm import build_tiny_lm

from core.access import User, local_operator
from core.datasets import dataset_rows, list_versions
from core.errors import DatasetError, GateError, TrainingError
from core.evals import import_eval_set, run_eval
from core.gates import check_gates, cycle_decisions, record_decision
from core.store import Store
from core.training import (
    cancel_training,
    cycle_candidate,
    follow_training,
    job_events,
    job_metrics,
    missing_training_stack,
    resume_training,
    start_training,
    training_jobs,
    training_root,
    weights_sha256,
)
from core.training.inference import LocalWeights
from core.training.jobs import TrainingJob, _job_dir, export_dataset_version

pytestmark = pytest.mark.skipif(
    bool(missing_training_stack()), reason="the training stack (requirements-train.txt)"
)

ML = User("ml@example.com", frozenset({"ml_lead"}))


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, _demo_template: Path
) -> Iterator[tuple[Store, str, str, Path]]:
    """The demo store, its cycle 1 dataset version, and a tiny model whose vocabulary covers
    that version's texts: (store, plan id, version id, model folder)."""
    folder = tmp_path_factory.mktemp("local-training")
    path = folder / "flywheel.duckdb"
    shutil.copyfile(_demo_template, path)
    patch = pytest.MonkeyPatch()
    patch.setenv("FLYWHEEL_DB", str(path))
    patch.setenv("FLYWHEEL_TRAINING_DIR", str(folder / "jobs"))
    store = Store(path)
    version = min(list_versions(store), key=lambda v: v.cycle)
    texts = [
        str(row[field] or "")
        for row in dataset_rows(store, version.version_id, "all")
        for field in ("system", "prompt", "response")
    ]
    model = build_tiny_lm(folder / "tiny-model", extra_texts=texts)
    yield store, version.plan_id, version.version_id, model
    patch.undo()


def _start(
    workspace: tuple[Store, str, str, Path], *, cycle: int = 1, **options: object
) -> TrainingJob:
    """A local job of ``cycle`` on the tiny model and the demo's cycle 1 version."""
    store, plan_id, version, model = workspace
    settings: dict[str, object] = {
        "max_steps": 24,
        "poll_s": 0.5,
        "base_model": str(model),
        "dataset_version": version,
    }
    settings.update(options)
    return start_training(
        store,
        plan_id,
        cycle,
        backend="local",
        user=ML,
        **settings,  # type: ignore[arg-type]
    )


def _set_local_settings(store: Store, plan_id: str, **local: object) -> None:
    from core.plan_versions import load_plan, save_plan_version

    plan, _ = load_plan(store, plan_id)
    plan.training = plan.training.model_copy(
        update={"local": plan.training.local.model_copy(update=local)}
    )
    save_plan_version(store, plan, note="tiny-model training settings", user=ML, plan_id=plan_id)


@pytest.fixture(scope="module")
def trained(workspace: tuple[Store, str, str, Path]) -> TrainingJob:
    store, plan_id, _, _ = workspace
    _set_local_settings(
        store,
        plan_id,
        learning_rate=1e-2,
        batch_size=8,
        save_steps=8,
        max_seq_length=128,
        target_modules=["all-linear"],
    )
    return _start(workspace)


def test_a_local_job_trains_on_a_dataset_export_and_its_loss_falls(
    workspace: tuple[Store, str, str, Path], trained: TrainingJob
) -> None:
    store, _plan_id, version, _ = workspace
    job = trained
    assert job.status == "succeeded", job.error
    assert (job.backend, job.dataset_version, job.step) == ("local", version, 24)
    losses = [m["loss"] for m in job_metrics(store, job.job_id) if m["loss"] is not None]
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.08
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.cost_usd is not None and job.cost_usd > 0
    messages = [e["message"] for e in job_events(store, job.job_id)]
    assert messages[0] == "Started." and messages[-1].startswith("Done: 24 steps")
    assert any("Checkpoint at step 8" in m for m in messages)


def test_the_adapter_and_its_sha256_become_the_cycles_candidate(
    workspace: tuple[Store, str, str, Path], trained: TrainingJob
) -> None:
    store, plan_id, _, model = workspace
    job = trained
    assert job.weights_path is not None
    adapter = Path(job.weights_path)
    assert (adapter / "adapter_model.safetensors").exists()
    assert job.weights_sha256 == weights_sha256(adapter)
    candidate = cycle_candidate(store, plan_id, 1)
    assert candidate is not None
    assert candidate["job_id"] == job.job_id
    assert candidate["weights_sha256"] == job.weights_sha256
    assert candidate["base_model"] == str(model) and candidate["endpoint"] == ""
    assert candidate["model"] == job.fine_tuned_model


def test_an_in_process_eval_grades_the_candidate_and_a_changed_adapter_is_refused(
    workspace: tuple[Store, str, str, Path], trained: TrainingJob, tmp_path: Path
) -> None:
    store, plan_id, _, model = workspace
    job = trained
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps(
                {
                    "item_id": f"t{n}",
                    "eval_set": "tiny",
                    "prompt": f"add {n} and {n + 1} in python",
                    "reference": f"def add(): return {n} + {n + 1}",
                }
            )
            + "\n"
            for n in range(5)
        ),
        encoding="utf-8",
    )
    import_eval_set(store, items, user=ML)
    weights = LocalWeights(str(job.weights_path), str(model), str(job.weights_sha256))
    report = run_eval(
        store,
        eval_set="tiny",
        model=str(job.fine_tuned_model),
        role="candidate",
        cycle=1,
        plan_id=plan_id,
        graders=["python_parses"],
        local_weights=weights,
        user=ML,
    )
    assert (report.outputs, report.output_errors, report.graded) == (5, 0, 5)
    recorded = store.fetch_one(
        "SELECT weights_sha256, endpoint FROM eval_runs WHERE run_id = ?", [report.run_id]
    )
    assert recorded == (job.weights_sha256, "in-process (transformers)")
    check_gates(store, plan_id, 1)  # the candidate is what was judged: no refusal

    decided = cycle_decisions(store, plan_id, 1)
    assert job.weights_path is not None
    adapter_file = Path(job.weights_path) / "adapter_model.safetensors"
    original = adapter_file.read_bytes()
    try:
        adapter_file.write_bytes(original[:-8] + b"\x00" * 8)
        with pytest.raises(GateError, match="changed after they were recorded"):
            check_gates(store, plan_id, 1)
        with pytest.raises(GateError, match="changed after they were recorded"):
            record_decision(store, plan_id, 1, decision="rejected", user=local_operator())
        assert cycle_decisions(store, plan_id, 1) == decided
    finally:
        adapter_file.write_bytes(original)
    check_gates(store, plan_id, 1)


def _wait_for(condition: object, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the training job")
        time.sleep(0.3)


def test_cancel_leaves_the_job_cancelled_and_sets_no_candidate(
    workspace: tuple[Store, str, str, Path], trained: TrainingJob
) -> None:
    store, plan_id, _, _ = workspace
    job = _start(workspace, cycle=4, max_steps=5000, wait=False)
    assert job.status == "queued"
    local = _job_dir(store, job.job_id)
    _wait_for(lambda: (local.state().get("step") or 0) > 0)
    done = cancel_training(store, job.job_id, user=ML)
    assert done.status == "cancelled"
    assert not local.process_alive()
    assert cycle_candidate(store, plan_id, 4) is None
    with pytest.raises(TrainingError, match="already ended"):
        cancel_training(store, job.job_id, user=ML)


def test_a_job_killed_halfway_resumes_from_its_checkpoint(
    workspace: tuple[Store, str, str, Path], trained: TrainingJob
) -> None:
    store, plan_id, _, _ = workspace
    job = _start(workspace, cycle=5, wait=False)
    local = _job_dir(store, job.job_id)
    _wait_for(lambda: local.last_checkpoint() is not None)
    os.killpg(int(local.state()["pid"]), signal.SIGKILL)
    _wait_for(lambda: not local.process_alive(), 20)
    stopped = follow_training(store, job.job_id, poll_s=0, max_polls=1, user=ML)
    assert stopped.status == "failed" and "train resume" in str(stopped.error)
    assert cycle_candidate(store, plan_id, 5) is None
    checkpoint = local.last_checkpoint()
    assert checkpoint is not None
    resumed = resume_training(store, job.job_id, poll_s=0.5, user=ML)
    assert resumed.status == "succeeded", resumed.error
    assert resumed.step == 24
    messages = [e["message"] for e in job_events(store, job.job_id)]
    assert f"resuming from {checkpoint.name}" in " ".join(messages)
    candidate = cycle_candidate(store, plan_id, 5)
    assert candidate is not None and candidate["weights_sha256"] == resumed.weights_sha256


def test_bad_base_models_are_refused_before_anything_runs(
    workspace: tuple[Store, str, str, Path], tmp_path: Path
) -> None:
    store, plan_id, version, model = workspace
    before = len(training_jobs(store, plan_id))
    with pytest.raises(TrainingError, match="does not exist"):
        _start(workspace, base_model=str(tmp_path / "no-such-model"))
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(
        json.dumps({"architectures": ["BertModel"], "model_type": "bert"})
    )
    with pytest.raises(TrainingError, match="not a causal language model"):
        _start(workspace, base_model=str(encoder))
    plain = build_tiny_lm(tmp_path / "no-template", chat_template=False)
    with pytest.raises(TrainingError, match="no chat template"):
        _start(workspace, base_model=str(plain))
    with pytest.raises(TrainingError, match="neither a directory nor"):
        _start(workspace, base_model="nobody/not-in-the-cache")
    with pytest.raises(DatasetError):
        _start(workspace, dataset_version="ds-no-such-version")
    assert len(training_jobs(store, plan_id)) == before
    assert all((d / "spec.json").exists() for d in training_root(store).glob("local-*"))
    assert model.exists() and version


def test_missing_target_modules_fail_the_job_in_one_sentence(
    workspace: tuple[Store, str, str, Path], trained: TrainingJob
) -> None:
    store, plan_id, _, _ = workspace
    before = {j["job_id"] for j in training_jobs(store, plan_id, 1)}
    _set_local_settings(store, plan_id, target_modules=["query_key_value"])
    try:
        with pytest.raises(TrainingError, match="no module named query_key_value"):
            _start(workspace, max_steps=4)
    finally:
        _set_local_settings(store, plan_id, target_modules=["all-linear"])
    (newest,) = [j for j in training_jobs(store, plan_id, 1) if j["job_id"] not in before]
    assert newest["status"] == "failed" and "\n" not in str(newest["error"])
    assert cycle_candidate(store, plan_id, 1) is not None  # cycle 1 keeps its earlier candidate


def test_an_export_written_for_the_job_is_its_train_split(
    workspace: tuple[Store, str, str, Path], tmp_path: Path
) -> None:
    store, _, version, _ = workspace
    path, rows, sha = export_dataset_version(store, version, tmp_path / "train.jsonl")
    assert rows == len(dataset_rows(store, version, "train")) and len(sha) == 64
    assert path.read_text().count("\n") == rows


def test_the_command_line_starts_lists_cancels_and_resumes_a_local_job(
    workspace: tuple[Store, str, str, Path],
    trained: TrainingJob,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from core.cli import main

    store, plan_id, version, model = workspace
    db = ["--db", str(store.path)]
    started = main(
        [
            "train",
            "start",
            "--cycle",
            "6",
            "--dataset-version",
            version,
            "--backend",
            "local",
            "--base-model",
            str(model),
            "--max-steps",
            "5000",
            "--no-wait",
            "--json",
            *db,
        ]
    )
    job = json.loads(capsys.readouterr().out)
    assert started == 0 and job["status"] == "queued" and job["backend"] == "local"
    assert main(["train", "list", "--cycle", "6", "--json", *db]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert [j["job_id"] for j in listed] == [job["job_id"]]
    local = _job_dir(store, job["job_id"])
    _wait_for(lambda: (local.state().get("step") or 0) > 0)
    assert main(["train", "cancel", job["job_id"], "--json", *db]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert main(["train", "resume", job["job_id"], "--no-wait", "--json", *db]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "queued"
    _wait_for(lambda: local.process_alive() or local.state().get("status") != "queued", 60)
    assert main(["train", "cancel", job["job_id"], *db]) == 0
    assert f"Training job {job['job_id']}: Cancelled" in capsys.readouterr().out
    assert cycle_candidate(store, plan_id, 6) is None

    refused = main(
        [
            "train",
            "start",
            "--cycle",
            "6",
            "--dataset-version",
            version,
            "--backend",
            "local",
            "--base-model",
            "/nowhere/model",
            *db,
        ]
    )
    out = capsys.readouterr()
    assert refused == 2 and out.out == ""
    assert out.err.strip().count("\n") == 0 and "does not exist" in out.err
