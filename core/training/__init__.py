"""Training a cycle's candidate: locally with LoRA (TRL + PEFT, a subprocess job), on
Together AI, or on OpenAI until it stops taking new jobs — or a model trained elsewhere,
registered by name and endpoint.

The public face is re-exported here; ``backends`` defines what every trainer reports,
``local`` and ``worker`` the local job, ``openai_trainer`` and ``together`` the hosted ones,
``jobs`` the store side, and ``inference`` in-process generation for evaluating local weights.
"""

from __future__ import annotations

from .backends import STATUSES, TERMINAL_STATUSES, HostedTrainer, JobEvent, JobMetric, JobState
from .jobs import (
    TrainingJob,
    cancel_training,
    cycle_candidate,
    export_dataset_version,
    follow_training,
    job_events,
    job_metrics,
    register_candidate,
    resume_training,
    start_training,
    training_jobs,
    training_root,
    training_summary,
    weights_problem,
)
from .local import missing_training_stack, weights_sha256

__all__ = [
    "STATUSES",
    "TERMINAL_STATUSES",
    "HostedTrainer",
    "JobEvent",
    "JobMetric",
    "JobState",
    "TrainingJob",
    "cancel_training",
    "cycle_candidate",
    "export_dataset_version",
    "follow_training",
    "job_events",
    "job_metrics",
    "missing_training_stack",
    "register_candidate",
    "resume_training",
    "start_training",
    "training_jobs",
    "training_root",
    "training_summary",
    "weights_problem",
    "weights_sha256",
]
