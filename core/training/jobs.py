"""Training jobs kept with their cycle: start one on the plan's backend, follow it into the
store, cancel or resume it, and set the cycle's candidate to exactly the weights it produced.

Whatever the backend, a job is one row of ``training_jobs`` with its events and per-step
metrics; following a job (again) reads the trainer — a hosted service, or a local job's
directory — and writes what changed. A local job's candidate carries its weights' path and
sha256; a gate check refuses a candidate whose weights changed since (``weights_problem``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from core.access import User, require
from core.audit import record_audit
from core.errors import DatasetError, TrainingError
from core.llm import Endpoint, redact_url
from core.paths import check_output_path
from core.plan import TRAINING_BACKEND_LABELS, TRAINING_BACKEND_LAST_DAY, Plan
from core.plan_versions import load_plan
from core.settings import PROJECT_ROOT, settings
from core.store import Store

from .backends import TERMINAL_STATUSES, HostedTrainer, JobState
from .local import LocalJob, base_model_problem, launch_worker, missing_training_stack
from .local import weights_sha256 as _weights_sha256

__all__ = [
    "TrainingJob",
    "cancel_training",
    "cycle_candidate",
    "export_dataset_version",
    "follow_training",
    "job_events",
    "job_metrics",
    "register_candidate",
    "resume_training",
    "start_training",
    "training_jobs",
    "training_root",
    "training_summary",
    "weights_problem",
]


def _now() -> datetime:
    return datetime.now(UTC)


def _today() -> date:
    """Today, for the backends' last days (tests move it)."""
    return _now().date()


def training_root(store: Store) -> Path:
    """Where local jobs keep their directories: the training_dir setting, else beside the
    store."""
    configured = settings.training_dir
    return Path(configured) if configured else store.path.parent / "training"


def training_summary(plan: Plan) -> str:
    """The plan's training settings in one line, for pages and documents."""
    training = plan.training
    if training.backend == "local":
        local = training.local
        length = f"{local.max_steps} steps" if local.max_steps else f"{local.epochs:g} epochs"
        return (
            f"base model {local.base_model or 'not set'}, LoRA rank {local.lora_rank} alpha "
            f"{local.lora_alpha}, {length}, learning rate {local.learning_rate:g}"
            + (", adapter merged" if local.merge_adapter else "")
        )
    if training.backend == "together":
        together = training.together
        return (
            f"model {together.base_model or plan.goal.student_model}, LoRA rank "
            f"{together.lora_rank}, {together.n_epochs} epochs, learning rate "
            f"{together.learning_rate:g}"
        )
    hyper = training.openai.hyperparameters()
    shown = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in hyper.items()) or "auto"
    return f"model {training.openai.base_model or plan.goal.student_model}, {shown}"


def export_dataset_version(
    store: Store, version_id: str, out_path: Path, *, split: str = "train"
) -> tuple[Path, int, str]:
    """Write one split of a dataset version as OpenAI chat JSONL: (path, rows, sha256).

    Raises DatasetError for an unknown version or a split with no rows.
    """
    from core.datasets import export_dataset

    result = export_dataset(store, version_id, out_path, fmt="openai-jsonl", split=split)
    return Path(result.path), result.rows, result.sha256


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
    backend: str
    dataset_version: str
    export_path: str
    export_rows: int
    base_model: str
    hyperparameters: dict[str, Any]
    status: str
    fine_tuned_model: str | None
    weights_path: str | None
    weights_sha256: str | None
    trained_tokens: int | None
    cost_usd: float | None
    gpu_hours: float | None
    device: str | None
    step: int | None
    total_steps: int | None
    error: str | None
    events: int
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the ``train … --json`` keys."""
        return asdict(self)


_JOB_COLUMNS = (
    "job_id, plan_id, cycle, coalesce(backend, 'openai') AS backend, dataset_version,"
    " export_path, export_rows, base_model, hyperparameters, status, fine_tuned_model,"
    " weights_path, weights_sha256, trained_tokens, cost_usd, gpu_hours, device, step,"
    " total_steps, error"
)


def _job(store: Store, job_id: str) -> TrainingJob:
    rows = store.fetch_dicts(
        f"SELECT {_JOB_COLUMNS}, (SELECT count(*) FROM training_events e"
        " WHERE e.job_id = j.job_id) AS events FROM training_jobs j WHERE job_id = ?",
        [job_id],
    )
    if not rows:
        raise TrainingError(f"There is no training job {job_id}; `train list` shows them.")
    row = rows[0]
    row["hyperparameters"] = json.loads(row["hyperparameters"] or "{}")
    return TrainingJob(**row, metrics=job_metrics(store, job_id))


def _job_dir(store: Store, job_id: str) -> LocalJob:
    row = store.fetch_one("SELECT job_dir FROM training_jobs WHERE job_id = ?", [job_id])
    if row is None or not row[0]:
        raise TrainingError(f"Training job {job_id} is not a local job.")
    return LocalJob(Path(str(row[0])))


def _hosted(plan: Plan, backend: str, endpoint: Endpoint | None) -> HostedTrainer:
    timeout = settings.request_timeout_s
    if backend == "openai":
        from core.evals import eval_endpoint

        from .openai_trainer import OpenAITrainer

        chosen = endpoint or eval_endpoint(plan.training.openai.endpoint or None)
        return OpenAITrainer(plan.training.openai, chosen, timeout_s=timeout)
    if backend == "together":
        from .together import TogetherTrainer

        # Together's key is TOGETHER_API_KEY (read by the trainer), never an OpenAI key.
        return TogetherTrainer(
            plan.training.together,
            base_url=endpoint.base_url if endpoint else None,
            timeout_s=timeout,
        )
    raise TrainingError(f"Unknown training backend '{backend}'; use local, together or openai.")


def _closed_backend(backend: str, today: date) -> None:
    last = TRAINING_BACKEND_LAST_DAY.get(backend)
    if last is not None and today > last:
        others = ", ".join(b for b in TRAINING_BACKEND_LABELS if b != backend)
        raise TrainingError(
            f"{backend} takes no new fine-tuning jobs after {last.isoformat()}; set the plan's "
            f"training.backend to another backend ({others})."
        )


def start_training(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    dataset_version: str,
    export_path: str | Path | None = None,
    backend: str | None = None,
    base_model: str | None = None,
    max_steps: int | None = None,
    endpoint: Endpoint | None = None,
    trainer: HostedTrainer | None = None,
    wait: bool = True,
    poll_s: float | None = None,
    max_polls: int | None = None,
    today: date | None = None,
    user: User,
) -> TrainingJob:
    """Start fine-tuning the student on a dataset version's training split with the plan's
    backend (or ``backend``); with ``wait``, follow it to its end.

    Local jobs run as a subprocess that survives the caller; hosted jobs upload the export.
    Raises TrainingError (nothing left running, no candidate) for a closed or unknown
    backend, a base model that cannot be trained here, a missing training stack, a trainer's
    refusal, or a local job that failed on its input; DatasetError for a missing or empty
    export; AccessError, before anything is written, when ``user`` may not train models.
    """
    require(user, "model.train")
    plan, _ = load_plan(store, plan_id)
    chosen = backend or plan.training.backend
    if chosen not in TRAINING_BACKEND_LABELS:
        raise TrainingError(f"Unknown training backend '{chosen}'; use local, together or openai.")
    _closed_backend(chosen, today or _today())
    base = base_model or plan.training.model_copy(update={"backend": chosen}).base_model(
        plan.goal.student_model
    )
    local = plan.training.local
    if chosen == "local":
        missing = missing_training_stack()
        if missing:
            raise TrainingError(
                f"Local training needs {', '.join(missing)}: install the training stack with "
                "`pip install -r requirements-train.txt` (GPU users: install their CUDA build "
                "of torch first)."
            )
        problem = base_model_problem(base, chat_template=local.chat_template)
        if problem:
            raise TrainingError(problem)
    stamp = f"{_now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    job_dir = training_root(store).resolve() / f"local-{stamp}" if chosen == "local" else None
    given = Path(export_path) if export_path else None
    if given is not None and given.is_file():
        path = given
    else:
        target = given or (
            job_dir / "train.jsonl"
            if job_dir
            else PROJECT_ROOT / "data" / "exports" / f"{plan_id}-c{cycle}-{dataset_version}.jsonl"
        )
        check_output_path(target)  # before its folder is made: never the store or a managed file
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            path, _, _ = export_dataset_version(store, dataset_version, target)
        except DatasetError:
            if job_dir is not None:
                shutil.rmtree(job_dir, ignore_errors=True)  # no job: leave no folder behind
            raise
    rows, sha256 = _check_export(path)
    if job_dir is not None:
        job_id = job_dir.name
        hyper: dict[str, Any] = local.model_dump(mode="json")
        if max_steps:
            hyper["max_steps"] = max_steps
        validation: str | None = None
        try:
            validation = str(
                export_dataset_version(
                    store, dataset_version, job_dir / "validation.jsonl", split="validation"
                )[0]
            )
        except DatasetError:
            validation = None  # no validation rows: no eval loss
        job = LocalJob(job_dir)
        job.write_spec(
            {
                "job_id": job_id,
                "base_model": base,
                "settings": hyper,
                "max_steps": max_steps,
                "train_file": str(path.resolve()),
                "validation_file": validation,
                "model_name": f"lora-c{cycle}-{stamp[-6:]}",
            }
        )
        launch_worker(job)
        file_id, where, status = "", "local", "queued"
    else:
        hosted = trainer or _hosted(plan, chosen, endpoint)
        settings = plan.training.openai if chosen == "openai" else plan.training.together
        hyper = (
            plan.training.openai.hyperparameters()
            if chosen == "openai"
            else plan.training.together.model_dump(mode="json")
        )
        job_id, file_id = hosted.create(export_path=path, base_model=base, suffix=settings.suffix)
        where, status = hosted.display_url, "queued"
    now = _now()
    with store.transaction() as con:
        con.execute(
            "INSERT INTO training_jobs (job_id, plan_id, cycle, dataset_version, export_path,"
            " export_sha256, export_rows, training_file_id, base_model, hyperparameters, endpoint,"
            " status, created_at, updated_at, actor, backend, job_dir) VALUES (?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                job_id,
                plan_id,
                cycle,
                dataset_version,
                str(path),
                sha256,
                rows,
                file_id,
                base,
                json.dumps(hyper),
                where,
                status,
                now,
                now,
                user.name,
                chosen,
                str(job_dir) if job_dir else None,
            ],
        )
        record_audit(
            con,
            actor=user.name,
            action="training.start",
            target=f"{plan_id}#cycle{cycle}",
            detail={
                "job_id": job_id,
                "backend": chosen,
                "dataset_version": dataset_version,
                "export_sha256": sha256,
                "rows": rows,
                "base_model": base,
            },
        )
    if not wait:
        return _job(store, job_id)
    done = follow_training(
        store,
        job_id,
        trainer=trainer,
        endpoint=endpoint,
        poll_s=poll_s,
        max_polls=max_polls,
        user=user,
    )
    if (
        job_dir is not None
        and done.status == "failed"
        and LocalJob(job_dir).state().get("error_kind") == "input"
    ):
        raise TrainingError(str(done.error))
    return done


def _read(
    store: Store,
    job: TrainingJob,
    plan: Plan,
    trainer: HostedTrainer | None,
    endpoint: Endpoint | None,
) -> JobState:
    if job.backend == "local":
        return _job_dir(store, job.job_id).read()
    return (trainer or _hosted(plan, job.backend, endpoint)).read(job.job_id)


def _sync(store: Store, job: TrainingJob, plan: Plan, state: JobState) -> None:
    """Write what the trainer says now: status, events, metrics, cost (nothing when nothing
    changed, so a page watching a job does not invalidate every cached read each refresh)."""
    stored = store.fetch_one(
        "SELECT status, step, error, (SELECT count(*) FROM training_events e WHERE e.job_id ="
        " j.job_id), (SELECT count(*) FROM training_metrics m WHERE m.job_id = j.job_id)"
        " FROM training_jobs j WHERE job_id = ?",
        [job.job_id],
    )
    now = (state.status, state.step, state.error, len(state.events), len(state.metrics))
    if stored == now and state.status not in TERMINAL_STATUSES:
        return
    weights_path = weights_sha = device = None
    gpu_hours: float | None = None
    if job.backend == "local":
        local = _job_dir(store, job.job_id).state()
        weights_path, weights_sha = local.get("weights_path"), local.get("weights_sha256")
        device = local.get("device")
        seconds = float(local.get("train_seconds") or 0.0)
        gpu_hours = seconds / 3600 * max(1, int(local.get("gpus") or 0))
        cost: float | None = gpu_hours * plan.economics.gpu_hour_usd
    else:
        price = (
            plan.training.openai.price_per_1m_training_tokens
            if job.backend == "openai"
            else plan.training.together.price_per_1m_training_tokens
        )
        tokens = state.trained_tokens
        cost = tokens * price / 1_000_000 if tokens is not None else None
    with store.transaction() as con:
        con.execute(
            "UPDATE training_jobs SET status = ?, fine_tuned_model = ?, trained_tokens = ?,"
            " cost_usd = ?, error = ?, updated_at = ?, finished_at = ?, step = ?, total_steps = ?,"
            " weights_path = ?, weights_sha256 = ?, device = ?, gpu_hours = ? WHERE job_id = ?",
            [
                state.status,
                state.fine_tuned_model,
                state.trained_tokens,
                cost,
                state.error,
                _now(),
                state.finished_at,
                state.step,
                state.total_steps,
                weights_path,
                weights_sha,
                device,
                gpu_hours,
                job.job_id,
            ],
        )
        if state.events:
            con.executemany(
                "INSERT OR IGNORE INTO training_events VALUES (?, ?, ?, ?, ?)",
                [[job.job_id, e.event_id, e.created_at, e.level, e.message] for e in state.events],
            )
        if state.metrics:
            con.executemany(
                "INSERT OR REPLACE INTO training_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [
                        job.job_id,
                        m.step,
                        m.epoch,
                        m.loss,
                        m.learning_rate,
                        m.tokens,
                        m.eval_loss,
                        _now(),
                    ]
                    for m in state.metrics
                ],
            )


def follow_training(
    store: Store,
    job_id: str,
    *,
    trainer: HostedTrainer | None = None,
    endpoint: Endpoint | None = None,
    poll_s: float | None = None,
    max_polls: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_update: Callable[[TrainingJob], None] | None = None,
    user: User,
) -> TrainingJob:
    """Read the job's status, events and metrics into the store until it ends (or
    ``max_polls`` reads); on success set the cycle's candidate to its model and weights.

    The store is opened only for each write, never while waiting. Raises TrainingError when
    the trainer cannot be read; AccessError, before any call or write, when ``user`` may not
    train models.
    """
    require(user, "model.train")
    job = _job(store, job_id)
    plan, _ = load_plan(store, job.plan_id)
    interval = settings.training_poll_s if poll_s is None else poll_s
    polls = 0
    while True:
        state = _read(store, job, plan, trainer, endpoint)
        _sync(store, job, plan, state)
        polls += 1
        if on_update is not None:
            on_update(_job(store, job_id))
        if state.status in TERMINAL_STATUSES or (max_polls is not None and polls >= max_polls):
            break
        sleep(interval)
    job = _job(store, job_id)
    if job.status == "succeeded" and job.fine_tuned_model:
        current = cycle_candidate(store, job.plan_id, job.cycle)
        if current is None or current["job_id"] != job_id:
            _set_candidate(
                store,
                job.plan_id,
                job.cycle,
                model=job.fine_tuned_model,
                endpoint="" if job.backend == "local" else _job_endpoint(store, job_id),
                source="fine_tune",
                job_id=job_id,
                dataset_version=job.dataset_version,
                base_model=job.base_model,
                weights_path=job.weights_path,
                weights_sha256=job.weights_sha256,
                actor=user.name,
            )
    return job


def _job_endpoint(store: Store, job_id: str) -> str:
    row = store.fetch_one("SELECT endpoint FROM training_jobs WHERE job_id = ?", [job_id])
    return str(row[0]) if row else ""


def cancel_training(
    store: Store,
    job_id: str,
    *,
    trainer: HostedTrainer | None = None,
    endpoint: Endpoint | None = None,
    user: User,
) -> TrainingJob:
    """Stop a queued or running job; it ends cancelled and sets no candidate.

    Raises TrainingError for a job that already ended; AccessError when ``user`` may not
    train models.
    """
    require(user, "model.train")
    job = _job(store, job_id)
    plan, _ = load_plan(store, job.plan_id)
    if job.status in TERMINAL_STATUSES:
        raise TrainingError(f"Training job {job_id} already ended ({job.status}).")
    if job.backend == "local":
        _job_dir(store, job_id).cancel()
        state = _job_dir(store, job_id).read()
    else:
        hosted = trainer or _hosted(plan, job.backend, endpoint)
        hosted.cancel(job_id)
        state = hosted.read(job_id)
        if state.status not in TERMINAL_STATUSES:
            state = JobState(**{**asdict(state), "status": "cancelled"})
    _sync(store, job, plan, state)
    with store.transaction() as con:
        record_audit(
            con,
            actor=user.name,
            action="training.cancel",
            target=f"{job.plan_id}#cycle{job.cycle}",
            detail={"job_id": job_id, "backend": job.backend},
        )
    return _job(store, job_id)


def resume_training(
    store: Store,
    job_id: str,
    *,
    wait: bool = True,
    poll_s: float | None = None,
    max_polls: int | None = None,
    user: User,
) -> TrainingJob:
    """Start a stopped local job again from its last checkpoint (from the start when it has
    none); with ``wait``, follow it to its end.

    Raises TrainingError for a hosted job, one still running or one that succeeded;
    AccessError when ``user`` may not train models.
    """
    require(user, "model.train")
    job = _job(store, job_id)
    if job.backend != "local":
        raise TrainingError(
            f"Training job {job_id} runs on {job.backend}; only local jobs resume here."
        )
    local = _job_dir(store, job_id)
    if local.process_alive():
        raise TrainingError(f"Training job {job_id} is still running; follow it instead.")
    if job.status == "succeeded":
        raise TrainingError(f"Training job {job_id} already succeeded.")
    checkpoint = local.last_checkpoint()
    launch_worker(local, resume=True)
    store.execute(
        "UPDATE training_jobs SET status = 'queued', error = NULL, finished_at = NULL,"
        " updated_at = ? WHERE job_id = ?",
        [_now(), job_id],
    )
    with store.transaction() as con:
        record_audit(
            con,
            actor=user.name,
            action="training.resume",
            target=f"{job.plan_id}#cycle{job.cycle}",
            detail={"job_id": job_id, "checkpoint": checkpoint.name if checkpoint else None},
        )
    if not wait:
        return _job(store, job_id)
    return follow_training(store, job_id, poll_s=poll_s, max_polls=max_polls, user=user)


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
    base_model: str | None = None,
    weights_path: str | None = None,
    weights_sha256: str | None = None,
) -> None:
    with store.transaction() as con:
        con.execute(
            "INSERT OR REPLACE INTO cycle_candidates (plan_id, cycle, model, endpoint, source,"
            " job_id, dataset_version, registered_at, registered_by, base_model, weights_path,"
            " weights_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                plan_id,
                cycle,
                model,
                endpoint,
                source,
                job_id,
                dataset_version,
                _now(),
                actor,
                base_model,
                weights_path,
                weights_sha256,
            ],
        )
        record_audit(
            con,
            actor=actor,
            action="candidate.set",
            target=f"{plan_id}#cycle{cycle}",
            detail={
                "model": model,
                "endpoint": endpoint,
                "source": source,
                "job_id": job_id,
                "weights_sha256": weights_sha256,
            },
        )


def register_candidate(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    model: str,
    endpoint: str,
    dataset_version: str | None = None,
    weights: str | None = None,
    user: User,
) -> dict[str, Any]:
    """Register a model trained elsewhere as the cycle's candidate: its name and the base URL
    of the OpenAI-compatible server that serves it (credentials in the URL are dropped), and
    optionally the weights it serves (their sha256 is recorded, so the gates can tell when
    they change).

    Raises TrainingError for a blank model, a base URL that is not http(s) or weights that are
    not there; AccessError, before anything is written, when ``user`` may not train models.
    """
    require(user, "model.train")
    load_plan(store, plan_id)
    if not model.strip():
        raise TrainingError("Give the candidate's model name.")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise TrainingError(
            f"'{redact_url(endpoint) if '://' in endpoint else endpoint.split('@')[-1]}' is not "
            "an http(s) base URL of an OpenAI-compatible server."
        )
    weights_path = str(Path(weights).resolve()) if weights else None
    sha = _weights_sha256(weights_path) if weights_path else None
    _set_candidate(
        store,
        plan_id,
        cycle,
        model=model.strip(),
        endpoint=redact_url(endpoint) if endpoint else "",
        source="registered",
        job_id=None,
        dataset_version=dataset_version,
        weights_path=weights_path,
        weights_sha256=sha,
        actor=user.name,
    )
    candidate = cycle_candidate(store, plan_id, cycle)
    assert candidate is not None
    return candidate


def cycle_candidate(store: Store, plan_id: str, cycle: int) -> dict[str, Any] | None:
    """The cycle's candidate (model, endpoint, source, job, dataset version, weights), if any."""
    rows = store.fetch_dicts(
        "SELECT plan_id, cycle, model, endpoint, source, job_id, dataset_version, registered_at,"
        " registered_by, base_model, weights_path, weights_sha256 FROM cycle_candidates"
        " WHERE plan_id = ? AND cycle = ?",
        [plan_id, cycle],
    )
    return rows[0] if rows else None


# Hashing merged weights takes seconds a GB: a file's hash is kept while its size and mtime hold.
_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _current_sha(path: str) -> str | None:
    root = Path(path)
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    key = (path, tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _HASHES:
        if len(_HASHES) > 64:
            _HASHES.clear()
        _HASHES[key] = _weights_sha256(root)
    return _HASHES[key]


def weights_problem(store: Store, plan_id: str, cycle: int) -> str | None:
    """Why the cycle's candidate is not exactly what its evals judged, in one sentence; None
    when it is (or when it has no recorded weights, as a hosted model)."""
    candidate = cycle_candidate(store, plan_id, cycle)
    if candidate is None or not candidate["weights_sha256"]:
        return None
    recorded = str(candidate["weights_sha256"])
    path = str(candidate["weights_path"] or "")
    current = _current_sha(path) if path else None
    name = candidate["model"]
    if current is None:
        return (
            f"Cycle {cycle}'s candidate {name}: its weights at {path} are gone, so what the "
            "evals judged can no longer be served; retrain or register the candidate again."
        )
    if current != recorded:
        return (
            f"Cycle {cycle}'s candidate {name}: its weights at {path} changed after they were "
            f"recorded (sha256 {recorded[:12]}…, now {current[:12]}…), so the eval runs judged "
            "other weights; retrain or register the candidate again and rerun its evals."
        )
    stale = store.fetch_all(
        "SELECT run_id FROM eval_runs WHERE plan_id = ? AND cycle = ? AND role = 'candidate'"
        " AND model = ? AND weights_sha256 IS NOT NULL AND weights_sha256 <> ?",
        [plan_id, cycle, name, recorded],
    )
    if stale:
        return (
            f"Cycle {cycle}'s candidate {name}: eval run {stale[0][0]} evaluated other weights "
            "than the candidate's; rerun its evals on the candidate."
        )
    return None


def training_jobs(store: Store, plan_id: str, cycle: int | None = None) -> list[dict[str, Any]]:
    """A plan's training jobs (of one cycle when given), newest first."""
    sql = (
        "SELECT job_id, cycle, coalesce(backend, 'openai') AS backend, dataset_version,"
        " base_model, status, step, total_steps, fine_tuned_model, weights_sha256,"
        " trained_tokens, gpu_hours, cost_usd, error, created_at, finished_at FROM training_jobs"
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


def job_metrics(store: Store, job_id: str) -> list[dict[str, Any]]:
    """A job's per-step metrics (loss, learning rate, tokens, eval loss) in step order."""
    return store.fetch_dicts(
        "SELECT step, epoch, loss, learning_rate, tokens, eval_loss FROM training_metrics"
        " WHERE job_id = ? ORDER BY step",
        [job_id],
    )
