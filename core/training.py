"""Training a cycle's candidate: a fine-tuning job on a dataset version's export, or a model
trained elsewhere registered by name and endpoint.

A job uploads the export (OpenAI chat JSONL), creates the fine-tuning job with the plan's
``training`` hyperparameters, follows its status and events, and on success records the
fine-tuned model as the cycle's candidate. The job's id, status, trained tokens, cost and the
dataset version it used are kept with the cycle; following a job again picks up where it was.
Any OpenAI-compatible server with ``/v1/files`` and ``/v1/fine_tuning/jobs`` works.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai

from core.access import User, require
from core.audit import record_audit
from core.errors import CycleError, DatasetError
from core.evals import eval_endpoint
from core.llm import Endpoint, build_async_client, describe_error, redact_url
from core.plan_versions import load_plan
from core.settings import PROJECT_ROOT, get_setting
from core.store import Store

__all__ = [
    "TERMINAL_STATUSES",
    "TrainingJob",
    "cycle_candidate",
    "export_dataset_version",
    "follow_training",
    "job_events",
    "register_candidate",
    "start_training",
    "training_jobs",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _now() -> datetime:
    return datetime.now(UTC)


def export_dataset_version(store: Store, version_id: str, out_path: Path) -> tuple[Path, int, str]:
    """Write a dataset version's training split as OpenAI chat JSONL: (path, rows, sha256).

    Raises DatasetError when this Flywheel has no dataset versions yet (core.datasets).
    """
    try:
        datasets = importlib.import_module("core.datasets")
    except ImportError:
        raise DatasetError(
            "Dataset versions are not available in this Flywheel yet: give --export FILE, the "
            f"OpenAI chat JSONL export of dataset version '{version_id}'."
        ) from None
    path, rows, sha256 = datasets.export_dataset(
        store, version_id, out_path, fmt="openai-jsonl", split="train"
    )
    return Path(path), int(rows), str(sha256)


def _check_export(path: Path) -> tuple[int, str]:
    """Rows and sha256 of a chat JSONL export; raises DatasetError at the first bad line."""
    digest = hashlib.sha256()
    rows = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                raise DatasetError(f"{path.name} line {number}: not JSON.") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DatasetError(
                    f"{path.name} line {number}: no 'messages' list; the export must be OpenAI "
                    "chat JSONL."
                )
            rows += 1
    if rows == 0:
        raise DatasetError(f"{path.name} holds no training rows.")
    return rows, digest.hexdigest()


@dataclass(frozen=True)
class TrainingJob:
    """A fine-tuning job as kept with its cycle."""

    job_id: str
    plan_id: str
    cycle: int
    dataset_version: str
    export_path: str
    export_rows: int
    base_model: str
    hyperparameters: dict[str, Any]
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    cost_usd: float | None
    error: str | None
    events: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _job(store: Store, job_id: str) -> TrainingJob:
    rows = store.fetch_dicts(
        "SELECT job_id, plan_id, cycle, dataset_version, export_path, export_rows, base_model,"
        " hyperparameters, status, fine_tuned_model, trained_tokens, cost_usd, error,"
        " (SELECT count(*) FROM training_events e WHERE e.job_id = j.job_id) AS events"
        " FROM training_jobs j WHERE job_id = ?",
        [job_id],
    )
    if not rows:
        raise CycleError(f"There is no training job {job_id}.")
    row = rows[0]
    row["hyperparameters"] = json.loads(row["hyperparameters"] or "{}")
    return TrainingJob(**row)


def start_training(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    dataset_version: str,
    export_path: str | Path | None = None,
    endpoint: Endpoint | None = None,
    client: openai.AsyncOpenAI | None = None,
    wait: bool = True,
    poll_s: float | None = None,
    max_polls: int | None = None,
    user: User,
) -> TrainingJob:
    """Upload the dataset version's export and create the fine-tuning job; with ``wait``,
    follow it to the end and record the fine-tuned model as the cycle's candidate.

    ``export_path``: an export already written (used as is), else where to write one.
    Raises DatasetError for a missing or malformed export, CycleError when the server refuses;
    AccessError, before any export, upload or write, when ``user`` may not train models.
    """
    require(user, "model.train")
    plan, _ = load_plan(store, plan_id)
    training = plan.training
    base_model = training.base_model or plan.goal.student_model
    who = user.name
    path = Path(export_path) if export_path else None
    if path is None or not path.is_file():
        target = (
            path
            or PROJECT_ROOT / "data" / "exports" / f"{plan_id}-c{cycle}-{dataset_version}.jsonl"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        path, _, _ = export_dataset_version(store, dataset_version, target)
    rows, sha256 = _check_export(path)
    endpoint = endpoint or eval_endpoint(training.endpoint or None)
    hyper = training.hyperparameters()
    active = client or build_async_client(
        endpoint, timeout_s=float(get_setting("request_timeout_s"))
    )

    async def create() -> tuple[str, str, str]:
        try:
            uploaded = await active.files.create(
                file=(path.name, path.read_bytes()), purpose="fine-tune"
            )
            method: Any = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
            job = await active.fine_tuning.jobs.create(
                model=base_model,
                training_file=uploaded.id,
                method=method,
                suffix=training.suffix or openai.omit,
            )
            return job.id, str(job.status), uploaded.id
        finally:
            if client is None:
                await active.close()

    try:
        job_id, status, file_id = asyncio.run(create())
    except openai.OpenAIError as exc:
        raise CycleError(
            f"The fine-tuning job could not be created ({describe_error(exc)}): {exc}. Check the "
            "key and that the server offers /v1/files and /v1/fine_tuning/jobs."
        ) from None
    now = _now()
    with store.transaction() as con:
        con.execute(
            "INSERT INTO training_jobs (job_id, plan_id, cycle, dataset_version, export_path,"
            " export_sha256, export_rows, training_file_id, base_model, hyperparameters, endpoint,"
            " status, created_at, updated_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?)",
            [
                job_id,
                plan_id,
                cycle,
                dataset_version,
                str(path),
                sha256,
                rows,
                file_id,
                base_model,
                json.dumps(hyper),
                endpoint.display_url,
                status,
                now,
                now,
                who,
            ],
        )
        record_audit(
            con,
            actor=who,
            action="training.start",
            target=f"{plan_id}#cycle{cycle}",
            detail={
                "job_id": job_id,
                "dataset_version": dataset_version,
                "export_sha256": sha256,
                "rows": rows,
                "base_model": base_model,
                "hyperparameters": hyper,
            },
        )
    if not wait:
        return _job(store, job_id)
    return follow_training(
        store,
        job_id,
        endpoint=endpoint,
        client=client,
        poll_s=poll_s,
        max_polls=max_polls,
        user=user,
    )


def follow_training(
    store: Store,
    job_id: str,
    *,
    endpoint: Endpoint | None = None,
    client: openai.AsyncOpenAI | None = None,
    poll_s: float | None = None,
    max_polls: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    user: User,
) -> TrainingJob:
    """Poll a job's status and events until it ends (or ``max_polls``), storing both; on
    success record its model as the cycle's candidate. Raises CycleError when unreachable;
    AccessError, before any call or write, when ``user`` may not train models."""
    require(user, "model.train")
    job = _job(store, job_id)
    plan, _ = load_plan(store, job.plan_id)
    endpoint = endpoint or eval_endpoint(plan.training.endpoint or None)
    interval = float(get_setting("training_poll_s")) if poll_s is None else poll_s
    active = client or build_async_client(
        endpoint, timeout_s=float(get_setting("request_timeout_s"))
    )

    async def follow() -> Any:
        polls = 0
        try:
            while True:
                remote = await active.fine_tuning.jobs.retrieve(job_id)
                page = await active.fine_tuning.jobs.list_events(job_id, limit=100)
                _store_events(store, job_id, list(page.data))
                _store_status(store, job_id, remote, plan.training.price_per_1m_training_tokens)
                polls += 1
                if remote.status in TERMINAL_STATUSES or (
                    max_polls is not None and polls >= max_polls
                ):
                    return remote
                await sleep(interval)
        finally:
            if client is None:
                await active.close()

    try:
        remote = asyncio.run(follow())
    except openai.OpenAIError as exc:
        raise CycleError(
            f"Training job {job_id} could not be read ({describe_error(exc)}): {exc}."
        ) from None
    if remote.status == "succeeded" and remote.fine_tuned_model:
        _set_candidate(
            store,
            job.plan_id,
            job.cycle,
            model=str(remote.fine_tuned_model),
            endpoint=endpoint.display_url,
            source="fine_tune",
            job_id=job_id,
            dataset_version=job.dataset_version,
            actor=user.name,
        )
    return _job(store, job_id)


def _store_events(store: Store, job_id: str, events: list[Any]) -> None:
    rows = [
        [
            job_id,
            str(e.id),
            datetime.fromtimestamp(int(e.created_at), UTC),
            str(e.level),
            str(e.message),
        ]
        for e in events
    ]
    if rows:
        with store.transaction() as con:
            con.executemany("INSERT OR IGNORE INTO training_events VALUES (?, ?, ?, ?, ?)", rows)


def _store_status(store: Store, job_id: str, remote: Any, price_per_1m: float) -> None:
    tokens = int(remote.trained_tokens) if remote.trained_tokens is not None else None
    cost = tokens * price_per_1m / 1_000_000 if tokens is not None else None
    error = getattr(remote, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    finished = datetime.fromtimestamp(int(remote.finished_at), UTC) if remote.finished_at else None
    store.execute(
        "UPDATE training_jobs SET status = ?, fine_tuned_model = ?, trained_tokens = ?,"
        " cost_usd = ?, error = ?, updated_at = ?, finished_at = ? WHERE job_id = ?",
        [
            str(remote.status),
            remote.fine_tuned_model,
            tokens,
            cost,
            message,
            _now(),
            finished,
            job_id,
        ],
    )


def _set_candidate(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    model: str,
    endpoint: str,
    source: str,
    job_id: str | None,
    dataset_version: str | None,
    actor: str,
) -> None:
    with store.transaction() as con:
        con.execute(
            "INSERT OR REPLACE INTO cycle_candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [plan_id, cycle, model, endpoint, source, job_id, dataset_version, _now(), actor],
        )
        record_audit(
            con,
            actor=actor,
            action="candidate.set",
            target=f"{plan_id}#cycle{cycle}",
            detail={"model": model, "endpoint": endpoint, "source": source, "job_id": job_id},
        )


def register_candidate(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    model: str,
    endpoint: str,
    dataset_version: str | None = None,
    user: User,
) -> dict[str, Any]:
    """Register a model trained elsewhere as the cycle's candidate: its name and the base URL
    of the OpenAI-compatible server that serves it (credentials in the URL are dropped).

    Raises CycleError for a blank model or a base URL that is not http(s); AccessError, before
    anything is written, when ``user`` may not train models (the candidate is what the gates
    judge)."""
    require(user, "model.train")
    load_plan(store, plan_id)
    if not model.strip():
        raise CycleError("Give the candidate's model name.")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise CycleError(f"'{endpoint}' is not an http(s) base URL of an OpenAI-compatible server.")
    shown = redact_url(endpoint) if endpoint else ""
    _set_candidate(
        store,
        plan_id,
        cycle,
        model=model.strip(),
        endpoint=shown,
        source="registered",
        job_id=None,
        dataset_version=dataset_version,
        actor=user.name,
    )
    candidate = cycle_candidate(store, plan_id, cycle)
    assert candidate is not None
    return candidate


def cycle_candidate(store: Store, plan_id: str, cycle: int) -> dict[str, Any] | None:
    """The cycle's candidate (model, endpoint, source, job, dataset version), if any."""
    rows = store.fetch_dicts(
        "SELECT plan_id, cycle, model, endpoint, source, job_id, dataset_version, registered_at,"
        " registered_by FROM cycle_candidates WHERE plan_id = ? AND cycle = ?",
        [plan_id, cycle],
    )
    return rows[0] if rows else None


def training_jobs(store: Store, plan_id: str, cycle: int | None = None) -> list[dict[str, Any]]:
    """A plan's fine-tuning jobs (of one cycle when given), newest first."""
    sql = (
        "SELECT job_id, cycle, dataset_version, base_model, status, fine_tuned_model,"
        " trained_tokens, cost_usd, error, created_at, finished_at FROM training_jobs"
        " WHERE plan_id = ?"
    )
    params: list[Any] = [plan_id]
    if cycle is not None:
        sql += " AND cycle = ?"
        params.append(cycle)
    return store.fetch_dicts(sql + " ORDER BY created_at DESC", params)


def job_events(store: Store, job_id: str) -> list[dict[str, Any]]:
    """A job's events in time order."""
    return store.fetch_dicts(
        "SELECT created_at, level, message FROM training_events WHERE job_id = ?"
        " ORDER BY created_at, event_id",
        [job_id],
    )
