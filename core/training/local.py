"""Local LoRA training as a real job: a subprocess that outlives the page or command that
started it, and a directory that is its only channel back.

The job directory holds what the parent wrote (``spec.json``: base model, settings, the export)
and what the worker writes (``state.json`` replaced atomically, ``events.jsonl`` and
``metrics.jsonl`` appended, ``checkpoints/`` every ``save_steps``, then ``adapter/`` and, when
asked, ``merged/``). The worker never opens the store: following the job reads the directory
into the store, so the dashboard and ``python -m core`` keep taking turns with DuckDB while a
job trains for hours. This module imports nothing heavy; the training stack loads only in the
worker (``core.training.worker``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import TrainingError
from core.settings import PROJECT_ROOT

from .backends import JobEvent, JobMetric, JobState, JobStatus

__all__ = [
    "TRAINING_STACK",
    "LocalJob",
    "base_model_problem",
    "launch_worker",
    "missing_training_stack",
    "weights_sha256",
]

# What the local trainer imports; requirements-train.txt pins them.
TRAINING_STACK = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Seconds a cancelled worker gets to stop at a step boundary before it is killed.
_CANCEL_GRACE_S = 20.0


def _now() -> datetime:
    return datetime.now(UTC)


def missing_training_stack() -> list[str]:
    """The packages of the training stack this Python lacks (none: local training can run)."""
    return [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, default=str), encoding="utf-8")
    os.replace(temp, path)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        rows.append(record)
    except OSError:
        return []
    return rows


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class LocalJob:
    """The directory of one local training job, read and written by both sides."""

    path: Path

    @property
    def spec_path(self) -> Path:
        """What to train: written once by the parent."""
        return self.path / "spec.json"

    @property
    def state_path(self) -> Path:
        """Where the job is: written only by the worker (and by cancel when it is gone)."""
        return self.path / "state.json"

    @property
    def log_path(self) -> Path:
        """The worker's stdout and stderr (tracebacks land here, never in the store)."""
        return self.path / "worker.log"

    @property
    def checkpoints(self) -> Path:
        """Trainer checkpoints, one folder per ``save_steps``."""
        return self.path / "checkpoints"

    @property
    def cancel_marker(self) -> Path:
        """Present once a cancel was asked for: the worker stops at the next step."""
        return self.path / "cancel"

    def spec(self) -> dict[str, Any]:
        """The job's spec."""
        return _read_json(self.spec_path)

    def write_spec(self, spec: dict[str, Any]) -> None:
        """Write the spec (parent, before launch)."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(self.spec_path, spec)

    def state(self) -> dict[str, Any]:
        """The worker's last word on the job (empty before it started)."""
        return _read_json(self.state_path)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the state, atomically."""
        state = {**self.state(), **changes, "updated_at": _now().isoformat()}
        _write_json_atomically(self.state_path, state)
        return state

    def add_event(self, message: str, level: str = "info") -> None:
        """Append one event."""
        record = {"created_at": _now().isoformat(), "level": level, "message": message}
        with (self.path / "events.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def add_metric(self, metric: JobMetric) -> None:
        """Append what the trainer logged at one step."""
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metric.to_dict()) + "\n")

    def events(self) -> list[JobEvent]:
        """Every event, in order; ids are line numbers."""
        return [
            JobEvent(
                event_id=f"{n:06d}",
                created_at=_when(r.get("created_at")) or _now(),
                level=str(r.get("level", "info")),
                message=str(r.get("message", "")),
            )
            for n, r in enumerate(_jsonl(self.path / "events.jsonl"))
        ]

    def metrics(self) -> list[JobMetric]:
        """Per-step metrics; a step logged twice (a resumed run) keeps its latest values."""
        by_step: dict[int, JobMetric] = {}
        for r in _jsonl(self.path / "metrics.jsonl"):
            if not isinstance(r.get("step"), int):
                continue
            earlier = by_step.get(r["step"])
            merged = {
                **(earlier.to_dict() if earlier else {}),
                **{k: v for k, v in r.items() if v is not None},
            }
            by_step[r["step"]] = JobMetric(
                step=int(merged["step"]),
                epoch=_float(merged.get("epoch")),
                loss=_float(merged.get("loss")),
                learning_rate=_float(merged.get("learning_rate")),
                tokens=int(merged["tokens"]) if isinstance(merged.get("tokens"), int) else None,
                eval_loss=_float(merged.get("eval_loss")),
            )
        return [by_step[s] for s in sorted(by_step)]

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, if any."""
        found = [
            p
            for p in self.checkpoints.glob("checkpoint-*")
            if p.is_dir()
            and p.name.split("-")[-1].isdigit()
            and (p / "trainer_state.json").exists()
        ]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def process_alive(self) -> bool:
        """Whether the worker named in the state still runs (a reused pid does not count)."""
        pid = self.state().get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        zombie = stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
        return not zombie and str(self.path).encode() in cmdline

    def read(self) -> JobState:
        """The job as the trainer left it; a worker that died mid-run reads as failed."""
        state = self.state()
        status: JobStatus = state.get("status") or "queued"
        error = state.get("error")
        if status in ("queued", "running") and not self.process_alive():
            checkpoint = self.last_checkpoint()
            status = "failed"
            error = (
                f"The training process stopped unexpectedly at step {state.get('step') or 0}"
                + (
                    f"; resume it from {checkpoint.name} with `train resume`."
                    if checkpoint
                    else "; no checkpoint was written yet, so `train resume` starts it over."
                )
            )
        return JobState(
            status=status,
            fine_tuned_model=state.get("model"),
            trained_tokens=state.get("trained_tokens"),
            error=error,
            finished_at=_when(state.get("finished_at")),
            step=state.get("step"),
            total_steps=state.get("total_steps"),
            events=self.events(),
            metrics=self.metrics(),
        )

    def cancel(self) -> None:
        """Stop the worker: it finishes its step and exits cancelled; killed if it lingers."""
        self.cancel_marker.touch()
        pid = self.state().get("pid")
        if self.process_alive() and isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + _CANCEL_GRACE_S
            while self.process_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.process_alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                time.sleep(0.2)
        if self.state().get("status") not in ("succeeded", "failed", "cancelled"):
            self.update_state(status="cancelled", finished_at=_now().isoformat())
            self.add_event("Cancelled.")


def _worker_env() -> dict[str, str]:
    """The worker's environment: no keys, nothing downloaded, no telemetry."""
    secretish = ("KEY", "TOKEN", "SECRET", "PASSWORD")
    env = {k: v for k, v in os.environ.items() if not any(s in k.upper() for s in secretish)}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "WANDB_DISABLED": "true",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(
                [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    return env


def launch_worker(job: LocalJob, *, resume: bool = False) -> int:
    """Start the worker in its own session (it survives page reruns and closed browsers);
    return its pid. Raises TrainingError when the training stack is missing."""
    missing = missing_training_stack()
    if missing:
        raise TrainingError(
            f"Local training needs {', '.join(missing)}: install the training stack with "
            "`pip install -r requirements-train.txt` (GPU users: install your CUDA build of "
            "torch first)."
        )
    job.cancel_marker.unlink(missing_ok=True)
    job.update_state(status="queued", pid=None, error=None, error_kind=None)
    command = [sys.executable, "-m", "core.training.worker", str(job.path)]
    if resume:
        command.append("--resume")
    with job.log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=_worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    job.update_state(pid=process.pid)
    # Reap the child when it ends so it leaves no zombie behind in a long-lived dashboard.
    threading.Thread(target=process.wait, daemon=True, name=f"reap-{process.pid}").start()
    return process.pid


def _hf_cached(model_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model_id, filename)
    return Path(found) if isinstance(found, str) else None


def _causal_lm_types() -> frozenset[str]:
    """Model types transformers loads as causal LMs (a config may name no architecture)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return frozenset()
    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def base_model_problem(base_model: str, *, chat_template: str = "tokenizer") -> str | None:
    """Why ``base_model`` cannot be fine-tuned here, in one sentence; None when it can.

    Checks what can be read without loading weights: a local directory or a cached Hugging
    Face id, a causal LM's config, and a chat template (the tokenizer's, or the ChatML
    fallback when the plan allows it). The worker checks the LoRA target modules.
    """
    name = base_model.strip()
    if not name:
        return (
            "No base model: set training.local.base_model to a local directory or a Hugging "
            "Face model id already in the local cache."
        )
    folder = Path(name).expanduser()
    if folder.is_dir():
        config_path: Path | None = folder / "config.json"
        tokenizer_config: Path | None = folder / "tokenizer_config.json"
        template_file: Path | None = folder / "chat_template.jinja"
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
        config_path = _hf_cached(name, "config.json")
        if config_path is None:
            return (
                f"The base model '{name}' is neither a directory nor a Hugging Face model in "
                "the local cache; nothing is downloaded here, so copy the model to a directory "
                "and give its path."
            )
        tokenizer_config = _hf_cached(name, "tokenizer_config.json")
        template_file = _hf_cached(name, "chat_template.jinja")
    else:
        return f"The base model directory '{name}' does not exist."
    config = _read_json(config_path) if config_path and config_path.exists() else {}
    if not config:
        return f"'{name}' has no readable config.json, so it is not a Hugging Face model."
    architectures = [str(a) for a in config.get("architectures") or []]
    causal = (
        any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        if architectures
        else str(config.get("model_type")) in _causal_lm_types()
    )
    if not causal:
        kind = ", ".join(architectures) or config.get("model_type") or "unknown"
        return f"'{name}' is not a causal language model (its architecture is {kind})."
    legacy_template = folder / "chat_template.json" if folder.is_dir() else None
    has_template = bool(
        (template_file and template_file.exists())
        or (legacy_template and legacy_template.exists())
        or (
            tokenizer_config
            and tokenizer_config.exists()
            and _read_json(tokenizer_config).get("chat_template")
        )
    )
    if not has_template and chat_template != "chatml":
        return (
            f"The tokenizer of '{name}' has no chat template to format the conversations; set "
            "training.local.chat_template to chatml to use ChatML instead."
        )
    return None


def weights_sha256(path: str | Path) -> str:
    """sha256 over a weights file, or over a directory's files (names and bytes, in order).

    Raises TrainingError when the weights are gone.
    """
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        raise TrainingError(f"The weights at {root} are gone.")
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else file.name).encode())
        digest.update(b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
