"""``train start|follow|cancel|resume|register|list``: a cycle's candidate model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from core.cli._base import (
    Outcome,
    base_url_option,
    cycle_option,
    default_plan_id,
    job_argument,
    local_user,
    noun_group,
    plan_option,
    poll_option,
    wants_json,
)
from core.cli._output import record, table
from core.labels import label

if TYPE_CHECKING:
    from core.plan import TrainingBackend
    from core.store import Store

command = noun_group("train")
TRAINING_BACKENDS = ("local", "together", "openai")  # core.plan.TrainingBackend


def _progress(job: Any) -> None:
    """One line on stderr per change while a job is followed (stdout stays for the result)."""
    loss = next((m["loss"] for m in reversed(job.metrics) if m["loss"] is not None), None)
    step = f"step {job.step}/{job.total_steps}" if job.total_steps else "starting"
    print(
        f"{job.job_id}: {label(job.status)}, {step}"
        + (f", loss {loss:.4f}" if loss is not None else ""),
        file=sys.stderr,
    )


def _job_outcome(job: dict[str, Any]) -> Outcome:
    from core.secrets import scrub_secrets

    error = scrub_secrets(str(job["error"])) if job["error"] else None
    job = {**job, "error": error}
    weights = job["weights_sha256"]
    fields = {
        "backend": job["backend"],
        "dataset_version": job["dataset_version"],
        "fine_tuned_model": job["fine_tuned_model"],
        "weights_sha256": f"{weights[:12]}…" if weights else None,
        "trained_tokens": job["trained_tokens"],
        "cost_usd": None if job["cost_usd"] is None else f"{job['cost_usd']:.2f}",
        "error": error,
    }
    text = f"Training job {job['job_id']}: {label(job['status'])}\n" + record(
        fields, codes=("backend",)
    )
    return Outcome(job, text, exit_code=1 if job["status"] in {"failed", "cancelled"} else 0)


@command.leaf("start", help="fine-tune the student on a dataset version and follow the job")
@cycle_option(required=True)
@click.option("--dataset-version", required=True, metavar="ID", help="dataset version id")
@click.option(
    "--backend",
    type=click.Choice(TRAINING_BACKENDS),
    help="where to train (default: the plan's training.backend)",
)
@click.option(
    "--base-model",
    metavar="PATH_OR_ID",
    help="model to fine-tune: a local directory or cached Hugging Face id for local, a "
    "provider's model name otherwise (default: the plan's)",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    metavar="N",
    help="stop a local job after N optimizer steps",
)
@click.option(
    "--export",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="its OpenAI chat JSONL export (written when missing)",
)
@plan_option
@base_url_option("hosted trainer's server (default: the plan's, then the environment)")
@click.option("--no-wait", is_flag=True, help="return once the job is started")
@poll_option
def start(
    store: Store,
    cycle: int,
    dataset_version: str,
    backend: TrainingBackend | None,
    base_model: str | None,
    max_steps: int | None,
    export: Path | None,
    plan: str | None,
    base_url: str | None,
    no_wait: bool,
    poll: float | None,
) -> Outcome:
    from core.evals import eval_endpoint
    from core.training import start_training

    plan_id = plan or default_plan_id(store)
    job = start_training(
        store,
        plan_id,
        cycle,
        dataset_version=dataset_version,
        export_path=export,
        backend=backend,
        base_model=base_model,
        max_steps=max_steps,
        endpoint=eval_endpoint(base_url) if base_url else None,
        wait=not no_wait,
        poll_s=poll,
        user=local_user(),
    )
    return _job_outcome(job.to_dict())


@command.leaf("follow", help="follow a training job to its end")
@job_argument
@base_url_option("fine-tuning server")
@poll_option
def follow(store: Store, job_id: str, base_url: str | None, poll: float | None) -> Outcome:
    from core.evals import eval_endpoint
    from core.training import follow_training

    job = follow_training(
        store,
        job_id,
        endpoint=eval_endpoint(base_url) if base_url else None,
        poll_s=poll,
        on_update=None if wants_json() else _progress,
        user=local_user(),
    )
    return _job_outcome(job.to_dict())


@command.leaf("cancel", help="stop a queued or running job (no candidate is set)")
@job_argument
@base_url_option("hosted trainer's server")
def cancel(store: Store, job_id: str, base_url: str | None) -> Outcome:
    from core.evals import eval_endpoint
    from core.training import cancel_training

    job = cancel_training(
        store,
        job_id,
        endpoint=eval_endpoint(base_url) if base_url else None,
        user=local_user(),
    )
    outcome = _job_outcome(job.to_dict())
    return Outcome(outcome.data, outcome.text, exit_code=0)


@command.leaf("resume", help="restart a stopped local job from its last checkpoint")
@job_argument
@click.option("--no-wait", is_flag=True, help="return once it is running")
@poll_option
def resume(store: Store, job_id: str, no_wait: bool, poll: float | None) -> Outcome:
    from core.training import resume_training

    job = resume_training(store, job_id, wait=not no_wait, poll_s=poll, user=local_user())
    return _job_outcome(job.to_dict())


@command.leaf("register", help="register a model trained elsewhere as the candidate")
@cycle_option(required=True)
@click.option("--model", required=True, help="model name on its server")
@click.option("--endpoint", metavar="URL", help="base URL of its OpenAI-compatible server")
@click.option("--dataset-version", metavar="ID", help="dataset version it was trained on")
@click.option(
    "--weights",
    metavar="PATH",
    help="the adapter or weights it serves (their sha256 is recorded)",
)
@plan_option
def register(
    store: Store,
    cycle: int,
    model: str,
    endpoint: str | None,
    dataset_version: str | None,
    weights: str | None,
    plan: str | None,
) -> Outcome:
    from core.training import register_candidate

    plan_id = plan or default_plan_id(store)
    candidate = register_candidate(
        store,
        plan_id,
        cycle,
        model=model,
        endpoint=endpoint or "",
        dataset_version=dataset_version,
        weights=weights,
        user=local_user(),
    )
    return Outcome(
        candidate,
        f"Cycle {cycle} candidate: {candidate['model']}"
        + (f" at {candidate['endpoint']}" if candidate["endpoint"] else "")
        + ".",
    )


@command.leaf("list", help="list training jobs")
@plan_option
@cycle_option(required=False)
def list_jobs(store: Store, plan: str | None, cycle: int | None) -> Outcome:
    from core.training import training_jobs

    plan_id = plan or default_plan_id(store)
    jobs = training_jobs(store, plan_id, cycle)
    columns = ("cycle", "job_id", "backend", "status", "dataset_version", "fine_tuned_model")
    text = table(jobs, columns, codes=("backend", "status")) if jobs else ""
    return Outcome({"plan_id": plan_id, "jobs": jobs}, text or "No training jobs yet.")
