"""Fine-tuning on Together AI through its official ``together`` package.

``TogetherTrainer`` is the ``HostedTrainer`` for ``training.backend = "together"``: it checks and
uploads a dataset export, creates a LoRA job with the plan's ``TogetherTraining`` settings, reads
the job's status, events and per-step metrics, and cancels it. Every failure (a refusal, a quota,
an unknown model, an unreachable server, settings the package rejects) becomes one
``TrainingError`` sentence naming the HTTP status and the server's own message, scrubbed of keys.
The ``together`` package is imported when a trainer is built, so the rest of Flywheel runs
without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import TrainingError
from core.llm import redact_url
from core.secrets import scrub_secrets
from core.training.backends import TERMINAL_STATUSES, JobEvent, JobMetric, JobState, JobStatus

if TYPE_CHECKING:
    from together import Together
    from together.types.finetune_event import FinetuneEvent
    from together.types.finetune_model_limits import FinetuneModelLimits

    from core.plan import TogetherTraining

__all__ = ["DEFAULT_BASE_URL", "TogetherTrainer", "job_events", "job_metrics", "job_status"]

DEFAULT_BASE_URL = "https://api.together.ai"
"""Where the package sends requests unless ``base_url`` or ``TOGETHER_BASE_URL`` says otherwise."""

_KEY_HELP = (
    "set TOGETHER_API_KEY in the environment (Flywheel never stores it) "
    "or choose another training backend"
)
_INSTALL_HELP = "pip install together==3.1.1 (the training requirements)"

# Together's job statuses in the order a job passes through them. "uploading" is the trained
# model being uploaded after compression, so the job is still running; "cancel_requested" is
# reported as cancelled because the user's decision is final even while Together winds down.
_STATUSES: dict[str, JobStatus] = {
    "pending": "queued",
    "queued": "queued",
    "running": "running",
    "compressing": "running",
    "uploading": "running",
    "completed": "succeeded",
    "error": "failed",
    "user_error": "failed",
    "failed": "failed",
    "cancel_requested": "cancelled",
    "cancelled": "cancelled",
}

# What an HTTP status means for the user, appended to the server's message.
_STATUS_HINTS: dict[int, str] = {
    401: "; check TOGETHER_API_KEY",
    402: "; add credits to the Together account (Settings, Billing) or train locally",
    403: "; the key's account may not fine-tune this model",
    429: "; the rate limit or quota still held after retries, so try again later or train locally",
}

# Keys of Together's per-step metric rows (W&B-style "train/…" names; bare names tolerated).
_STEP_KEYS = ("train/global_step", "global_step", "step")
_LOSS_KEYS = ("train/loss", "loss")
_LR_KEYS = ("train/learning_rate", "learning_rate", "train/lr", "lr")
_EPOCH_KEYS = ("train/epoch", "epoch")
_EVAL_LOSS_KEYS = ("eval/loss", "eval_loss", "eval/eval_loss")
_TOKEN_KEYS = ("train/num_input_tokens_seen", "train/tokens", "tokens")

# Upload processing states of a file Together will not train on.
_INVALID_FILE_STATUSES = frozenset({"FAILED", "INVALID_FORMAT"})

_MAX_DETAIL = 400
_T = TypeVar("_T")


class TogetherTrainer:
    """Fine-tunes the student with LoRA on Together AI.

    Raises ``TrainingError`` at construction when no key is configured or the ``together``
    package is missing; every method raises ``TrainingError`` with one scrubbed sentence.
    """

    backend = "together"
    display_url: str
    """The API's base URL without credentials, as recorded with the job."""

    def __init__(
        self,
        settings: TogetherTraining,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        key = (api_key if api_key is not None else os.environ.get("TOGETHER_API_KEY", "")).strip()
        if not key:
            raise TrainingError(f"No Together AI key is configured: {_KEY_HELP}.")
        url = (base_url or os.environ.get("TOGETHER_BASE_URL", "") or DEFAULT_BASE_URL).strip()
        try:
            from together import Together
        except ImportError:
            raise TrainingError(
                f"Training on Together AI needs the together package: {_INSTALL_HELP}."
            ) from None
        # The package adds /v1 to every path; a base URL written the OpenAI way (…/v1) would
        # double it.
        url = re.sub(r"/v1/*$", "", url.rstrip("/"))
        self.settings = settings
        self.display_url = redact_url(url)
        self._api_key = key
        self._client: Together = Together(api_key=key, base_url=url, timeout=timeout_s)

    def create(self, *, export_path: Path, base_model: str, suffix: str) -> tuple[str, str]:
        """Check and upload the export, then create the LoRA job: (job id, uploaded file id).

        Refuses before anything is uploaded when the export fails the package's format check,
        the model is not fine-tunable on Together or the settings exceed its limits, and before
        the job is created when Together's price estimate says the account cannot pay for it.
        """
        from together.lib import check_file

        settings = self.settings
        limits = self._call(
            f"look up fine-tuning limits of model {base_model!r}",
            lambda: self._client.fine_tuning.model_limits(model_name=base_model),
            hints={404: "; set a base model that Together lists for fine-tuning"},
        )
        self._check_limits(base_model, limits)
        report = self._call(
            f"check {export_path.name}",
            lambda: check_file(export_path, purpose="fine-tune"),
        )
        if not report.get("is_check_passed", False):
            message = _one_line(str(report.get("message") or "it is not valid fine-tuning data"))
            raise TrainingError(
                self._scrub(f"Together AI cannot train on {export_path.name}: {message}.")
            )
        uploaded = self._call(
            f"upload {export_path.name}",
            lambda: self._client.files.upload(export_path, purpose="fine-tune", check=False),
        )
        if uploaded.processing_status in _INVALID_FILE_STATUSES:
            raise TrainingError(
                f"Together AI found {export_path.name} invalid for fine-tuning (file "
                f"{uploaded.id}, status {uploaded.processing_status}): each line needs a "
                "messages list of role/content turns ending with the assistant's."
            )
        self._refuse_unaffordable(uploaded.id, base_model)
        job = self._call(
            f"create a fine-tuning job on {base_model!r}",
            lambda: self._client.fine_tuning.create(
                training_file=uploaded.id,
                model=base_model,
                n_epochs=settings.n_epochs,
                learning_rate=settings.learning_rate,
                batch_size=settings.batch_size or "max",
                lora=True,
                lora_r=settings.lora_rank,
                lora_alpha=settings.lora_alpha,
                lora_dropout=settings.lora_dropout,
                suffix=(suffix or settings.suffix) or None,
                train_on_inputs="auto",
                model_limits=limits,
            ),
        )
        return job.id, uploaded.id

    def read(self, job_id: str) -> JobState:
        """The job's status, output model, trained tokens, events and per-step metrics now."""
        from together import NotFoundError

        job = self._call(
            f"read fine-tuning job {job_id}",
            lambda: self._client.fine_tuning.retrieve(job_id),
        )
        raw_events = self._call(
            f"read the events of fine-tuning job {job_id}",
            lambda: self._client.fine_tuning.list_events(job_id),
        ).data
        status = job_status(str(getattr(job.status, "value", job.status)))
        rows: Sequence[Mapping[str, Any]] = []
        if status != "queued":
            try:
                rows = self._call(
                    f"read the metrics of fine-tuning job {job_id}",
                    lambda: self._client.fine_tuning.list_metrics(job_id).metrics or [],
                    passthrough=(NotFoundError,),
                )
            except NotFoundError:
                rows = []  # a deployment without the metrics endpoint: events still carry steps
        events = job_events(raw_events, scrub=self._scrub)
        metrics = job_metrics(raw_events, rows)
        step, total_steps = _progress(raw_events, metrics)
        finished_at = None
        if status in TERMINAL_STATUSES:
            finished_at = _as_utc(job.updated_at) or (events[-1].created_at if events else None)
        error = None
        if status == "failed":
            error = (
                _failure_message(events) or "Together AI reported the job failed without a reason"
            )
        return JobState(
            status=status,
            fine_tuned_model=job.x_model_output_name if status == "succeeded" else None,
            trained_tokens=job.token_count,
            error=error,
            finished_at=finished_at,
            step=step,
            total_steps=total_steps,
            events=events,
            metrics=metrics,
        )

    def cancel(self, job_id: str) -> None:
        """Ask Together AI to stop the job (it reports cancel_requested, then cancelled)."""
        self._call(
            f"cancel fine-tuning job {job_id}",
            lambda: self._client.fine_tuning.cancel(job_id),
        )

    def _check_limits(self, base_model: str, limits: FinetuneModelLimits) -> None:
        """Refuse settings beyond what Together allows for the model, naming each."""
        settings = self.settings
        lora = limits.lora_training
        problems = []
        if settings.lora_rank > lora.max_rank:
            problems.append(f"LoRA rank {settings.lora_rank} is above its maximum {lora.max_rank}")
        if settings.n_epochs > limits.max_num_epochs:
            problems.append(
                f"{settings.n_epochs} epochs are above its maximum {limits.max_num_epochs}"
            )
        if not limits.min_learning_rate <= settings.learning_rate <= limits.max_learning_rate:
            problems.append(
                f"learning rate {settings.learning_rate:g} is outside "
                f"{limits.min_learning_rate:g}–{limits.max_learning_rate:g}"
            )
        if settings.batch_size is not None and not (
            lora.min_batch_size <= settings.batch_size <= lora.max_batch_size
        ):
            problems.append(
                f"batch size {settings.batch_size} is outside "
                f"{lora.min_batch_size}–{lora.max_batch_size}"
            )
        if problems:
            raise TrainingError(
                self._scrub(
                    f"Together AI's limits for {base_model} refuse the plan's training settings: "
                    f"{'; '.join(problems)}."
                )
            )

    def _refuse_unaffordable(self, file_id: str, base_model: str) -> None:
        """Refuse a job Together's price estimate says the account cannot pay for (it would be
        created, then cancelled for insufficient funds)."""
        settings = self.settings
        estimate = self._call(
            f"estimate the price of fine-tuning {base_model!r}",
            lambda: self._client.fine_tuning.estimate_price(
                training_file=file_id,
                model=base_model,
                n_epochs=settings.n_epochs,
                n_evals=0,
                training_type={
                    "type": "Lora",
                    "lora_r": settings.lora_rank,
                    "lora_alpha": settings.lora_alpha,
                    "lora_dropout": settings.lora_dropout,
                    "lora_trainable_modules": "all-linear",
                },
                training_method={"method": "sft", "train_on_inputs": "auto"},
            ),
        )
        if getattr(estimate, "estimation_available", False) is not True:
            return
        if getattr(estimate, "allowed_to_proceed", None) is False:
            price = getattr(estimate, "estimated_total_price", None)
            limit = getattr(estimate, "user_limit", None)
            cost = f"${price:,.2f}" if isinstance(price, int | float) else "more"
            allowance = f" (credit limit ${limit:,.2f})" if isinstance(limit, int | float) else ""
            raise TrainingError(
                f"Together AI estimates this job at {cost}, beyond what the account's credit "
                f"limit and balance allow{allowance}: add credits to the Together account "
                "(Settings, Billing), lower the epochs or dataset size, or train locally."
            )

    def _call(
        self,
        action: str,
        call: Callable[[], _T],
        *,
        passthrough: tuple[type[Exception], ...] = (),
        hints: Mapping[int, str] | None = None,
    ) -> _T:
        """Run one package call; any failure becomes one scrubbed ``TrainingError`` sentence."""
        from together import APIConnectionError, APIStatusError, TogetherError

        try:
            return call()
        except passthrough:
            raise
        except APIStatusError as exc:
            detail = _server_detail(exc.body, exc.message)
            hint = {**_STATUS_HINTS, **(hints or {})}.get(exc.status_code, "")
            message = f"Together AI refused to {action} (HTTP {exc.status_code}): {detail}{hint}."
        except APIConnectionError as exc:
            message = (
                f"Together AI at {self.display_url} could not be reached to {action} "
                f"({_one_line(exc.message) or type(exc).__name__}); check the network and "
                "TOGETHER_BASE_URL"
            )
        except (TogetherError, ValueError, OSError) as exc:
            message = f"Together AI could not {action}: {_one_line(str(exc)) or type(exc).__name__}"
        # Raised outside the except blocks so that the unscrubbed server text is not chained.
        raise TrainingError(self._scrub(_sentence(message)))

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text, [self._api_key])


def job_status(together_status: str) -> JobStatus:
    """Flywheel's status for one of Together's (an unknown newer one counts as running)."""
    return _STATUSES.get(together_status.strip().lower(), "running")


def job_events(
    raw_events: Sequence[FinetuneEvent], *, scrub: Callable[[str], str] = scrub_secrets
) -> list[JobEvent]:
    """Together's events in time order; ids are the event's time and its position, which stay
    the same across reads because Together only appends."""
    ordered = sorted(
        enumerate(raw_events),
        key=lambda pair: _parse_time(pair[1].created_at) or datetime.min.replace(tzinfo=UTC),
    )
    events = []
    for index, (_, event) in enumerate(ordered):
        created_at = _parse_time(event.created_at) or datetime.now(UTC)
        events.append(
            JobEvent(
                event_id=f"{event.created_at}#{index}",
                created_at=created_at,
                level=_level(event),
                message=scrub(_one_line(event.message)),
            )
        )
    return events


def job_metrics(
    raw_events: Iterable[FinetuneEvent], rows: Iterable[Mapping[str, Any]]
) -> list[JobMetric]:
    """One metric per optimizer step: loss, learning rate, epoch and eval loss from Together's
    metric rows, trained tokens from the events that carry a step, ordered by step."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = _number(row, _STEP_KEYS)
        if step is None:
            continue
        fields = by_step.setdefault(int(step), {})
        for name, keys in (
            ("loss", _LOSS_KEYS),
            ("learning_rate", _LR_KEYS),
            ("epoch", _EPOCH_KEYS),
            ("eval_loss", _EVAL_LOSS_KEYS),
        ):
            value = _number(row, keys)
            if value is not None:
                fields[name] = value
        tokens = _number(row, _TOKEN_KEYS)
        if tokens is not None:
            fields["tokens"] = int(tokens)
    for event in raw_events:
        if event.step is not None and event.token_count is not None:
            by_step.setdefault(event.step, {}).setdefault("tokens", event.token_count)
    return [JobMetric(step=step, **by_step[step]) for step in sorted(by_step)]


def _progress(
    raw_events: Sequence[FinetuneEvent], metrics: Sequence[JobMetric]
) -> tuple[int | None, int | None]:
    steps = [e.step for e in raw_events if e.step is not None]
    steps += [m.step for m in metrics]
    totals = [e.total_steps for e in raw_events if e.total_steps is not None]
    return (max(steps) if steps else None, max(totals) if totals else None)


def _failure_message(events: Sequence[JobEvent]) -> str | None:
    """The newest error event's message: Together's job has no error field of its own."""
    for event in reversed(events):
        if event.level == "error" and event.message:
            return event.message
    return None


def _level(event: FinetuneEvent) -> str:
    level = str(getattr(event.level, "value", event.level) or "").lower()
    if event.type == "job_error" or "error" in level:
        return "error"
    if event.type == "warning" or "warn" in level:
        return "warning"
    return "info"


def _number(row: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            return float(value)
    return None


def _parse_time(text: str | None) -> datetime | None:
    """Together's ISO timestamps (``Z``, up to nanoseconds) as aware UTC datetimes."""
    if not text:
        return None
    cleaned = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        return _as_utc(datetime.fromisoformat(cleaned))
    except ValueError:
        return None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _server_detail(body: object, fallback: str) -> str:
    """The server's own message from an error body: ``{"error": {"message": …}}``,
    ``{"message": …}``, ``{"error": "…"}`` or plain text."""
    if isinstance(body, str | bytes):
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        try:
            body = json.loads(text)
        except ValueError:
            body = text
    detail: object = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            detail = error.get("message") or error.get("detail")
        elif isinstance(error, str):
            detail = error
        detail = detail or body.get("message") or body.get("detail")
    elif isinstance(body, str):
        detail = body
    return _one_line(str(detail or fallback or "no message")).rstrip(".")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 1] + "…"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
