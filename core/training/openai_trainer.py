"""Fine-tuning through OpenAI's ``/v1/files`` and ``/v1/fine_tuning/jobs`` (or any server that
offers the same API), until OpenAI stops taking new jobs (``TRAINING_BACKEND_LAST_DAY``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import openai

from core.errors import TrainingError
from core.llm import Endpoint, build_async_client, describe_error
from core.plan import OpenAITraining
from core.secrets import scrub_secrets

from .backends import JobEvent, JobMetric, JobState, JobStatus

__all__ = ["OpenAITrainer"]

T = TypeVar("T")

_STATUS: dict[str, JobStatus] = {
    "validating_files": "queued",
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


class OpenAITrainer:
    """One OpenAI-compatible fine-tuning server, with the plan's hyperparameters."""

    backend = "openai"

    def __init__(self, settings: OpenAITraining, endpoint: Endpoint, *, timeout_s: float = 60.0):
        self.settings = settings
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    @property
    def display_url(self) -> str:
        """The server's base URL without credentials."""
        return self.endpoint.display_url

    def _call(self, what: str, work: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
        async def run() -> T:
            client = build_async_client(self.endpoint, timeout_s=self.timeout_s)
            try:
                return await work(client)
            finally:
                await client.close()

        try:
            return asyncio.run(run())
        except openai.OpenAIError as exc:
            detail = scrub_secrets(str(exc), [self.endpoint.api_key])
            raise TrainingError(
                f"{what} ({describe_error(exc)}): {detail} Check the key and that "
                f"{self.display_url} offers /v1/files and /v1/fine_tuning/jobs."
            ) from None

    def create(self, *, export_path: Path, base_model: str, suffix: str) -> tuple[str, str]:
        """Upload the export and create the job with the plan's hyperparameters."""
        hyper = self.settings.hyperparameters()

        async def work(client: openai.AsyncOpenAI) -> tuple[str, str]:
            uploaded = await client.files.create(
                file=(export_path.name, export_path.read_bytes()), purpose="fine-tune"
            )
            method: Any = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
            job = await client.fine_tuning.jobs.create(
                model=base_model,
                training_file=uploaded.id,
                method=method,
                suffix=suffix or openai.omit,
            )
            return job.id, uploaded.id

        return self._call("The fine-tuning job could not be created", work)

    def read(self, job_id: str) -> JobState:
        """Status and events (step losses are parsed from OpenAI's metrics events)."""

        async def work(client: openai.AsyncOpenAI) -> tuple[Any, list[Any]]:
            remote = await client.fine_tuning.jobs.retrieve(job_id)
            page = await client.fine_tuning.jobs.list_events(job_id, limit=100)
            return remote, list(page.data)

        remote, events = self._call(f"Fine-tuning job {job_id} could not be read", work)
        error = getattr(remote, "error", None)
        message = getattr(error, "message", None) if error is not None else None
        metrics = []
        for e in events:
            data = getattr(e, "data", None)
            if isinstance(data, dict) and isinstance(data.get("step"), int):
                loss = data.get("train_loss")
                metrics.append(
                    JobMetric(step=data["step"], loss=float(loss) if loss is not None else None)
                )
        return JobState(
            status=_STATUS.get(str(remote.status), "running"),
            fine_tuned_model=remote.fine_tuned_model,
            trained_tokens=int(remote.trained_tokens) if remote.trained_tokens else None,
            error=scrub_secrets(message, [self.endpoint.api_key]) if message else None,
            finished_at=(
                datetime.fromtimestamp(int(remote.finished_at), UTC) if remote.finished_at else None
            ),
            events=[
                JobEvent(
                    event_id=str(e.id),
                    created_at=datetime.fromtimestamp(int(e.created_at), UTC),
                    level=str(e.level),
                    message=scrub_secrets(str(e.message), [self.endpoint.api_key]),
                )
                for e in events
            ],
            metrics=sorted(metrics, key=lambda m: m.step),
        )

    def cancel(self, job_id: str) -> None:
        """Ask the server to cancel the job."""

        async def work(client: openai.AsyncOpenAI) -> None:
            await client.fine_tuning.jobs.cancel(job_id)

        self._call(f"Fine-tuning job {job_id} could not be cancelled", work)
