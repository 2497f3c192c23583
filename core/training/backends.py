"""What every trainer reports, and the interface of the hosted ones.

A job's state is the same whichever backend runs it: a status (queued, running, succeeded,
failed, cancelled), events, per-step metrics, and on success the model (a hosted model name,
or local weights with their sha256). Hosted trainers (OpenAI, Together AI) implement
``HostedTrainer``; the local LoRA trainer runs as a subprocess that writes the same state into
its job directory (``core.training.local``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "STATUSES",
    "TERMINAL_STATUSES",
    "HostedTrainer",
    "JobEvent",
    "JobMetric",
    "JobState",
    "JobStatus",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class JobEvent:
    """One line of a job's log, as the trainer wrote it (ids are unique within a job)."""

    event_id: str
    created_at: datetime
    level: str
    message: str


@dataclass(frozen=True)
class JobMetric:
    """What the trainer logged at one optimizer step."""

    step: int
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens: int | None = None
    eval_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class JobState:
    """A job as its trainer sees it now."""

    status: JobStatus
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    finished_at: datetime | None = None
    step: int | None = None
    total_steps: int | None = None
    events: list[JobEvent] = field(default_factory=list)
    metrics: list[JobMetric] = field(default_factory=list)


class HostedTrainer(Protocol):
    """A fine-tuning service: upload the export, create the job, read it, cancel it.

    Every method raises ``core.errors.TrainingError`` with one sentence a user can act on
    (a refusal, a quota, an unreachable server), scrubbed of keys.
    """

    backend: str

    @property
    def display_url(self) -> str:
        """The service's base URL without credentials."""
        ...

    def create(self, *, export_path: Path, base_model: str, suffix: str) -> tuple[str, str]:
        """Upload the export and create the job: (job id, uploaded file id)."""
        ...

    def read(self, job_id: str) -> JobState:
        """The job's status, events and metrics now."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask the service to stop the job."""
        ...
