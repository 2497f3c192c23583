"""A small Together AI fine-tuning server on 127.0.0.1 for tests (stdlib only).

It speaks what the ``together`` package (3.x) calls to fine-tune: model limits
(``GET /v1/fine-tunes/models/limits``), the three-step file upload (``POST /v1/files`` answers
302 with the upload URL and ``X-Together-File-Id``, ``PUT`` of the bytes, then
``POST /v1/files/{id}/preprocess``, which checks the sha256 the client sent and reports a file
whose lines lack ``messages`` as ``INVALID_FORMAT``), price estimation,
job creation, retrieval, events, metrics and cancellation. Each retrieve moves a job one step:
pending, queued, running (events and metrics for steps 1–5), completed (steps 6–10, the output
model and the trained tokens). Base model ``fail-model`` ends in ``error`` with an error event,
``refuse-model`` is refused at creation with a 400, ``missing-model`` has no limits (404).
``quota=402`` or ``429`` answers requests with that status and a body that echoes the
``Authorization`` header and the bare key, as a careless proxy would; ``affordable=False``
makes the price estimate refuse the job; ``metrics_endpoint=False`` answers the metrics
endpoint with 404, as a deployment without it would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"

STEPS = 10
"""Optimizer steps of every fake job; half are logged when it starts running."""

REFUSAL = "Model refuse-model is not available for fine-tuning with LoRA on this account."
FAILURE = "Training failed: the dataset has too few examples for the requested batch size."


def _loss(step: int) -> float:
    return round(2.4 * 0.85**step, 4)


@dataclass
class _State:
    quota: int | None
    quota_on: str | None
    affordable: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter[str] = field(default_factory=Counter)
    authorizations: list[str] = field(default_factory=list)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_requests: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    clock: datetime = field(default_factory=lambda: datetime(2026, 9, 1, 12, 0, tzinfo=UTC))

    def tick(self) -> str:
        """A strictly increasing ISO timestamp with microseconds, as Together writes them."""
        self.clock += timedelta(milliseconds=1500)
        return self.clock.isoformat().replace("+00:00", "Z")


class FakeTogether:
    """The server; use as a context manager: ``with FakeTogether() as server: server.url``."""

    def __init__(
        self,
        *,
        quota: int | None = None,
        quota_on: str | None = None,
        affordable: bool = True,
        metrics_endpoint: bool = True,
    ):
        self.state = _State(quota=quota, quota_on=quota_on, affordable=affordable)
        state = self.state
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            body = b""

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(
                self, status: int, body: Any = None, headers: dict[str, str] | None = None
            ) -> None:
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(raw)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _route(self, method: str) -> tuple[str, list[str], dict[str, list[str]]] | None:
                """Read the body, count the call, check the key and apply the quota; None when
                answered already."""
                self.body = self._body()  # read even when refusing, so keep-alive stays in step
                parts = urlsplit(self.path)
                route = f"{method} {parts.path}"
                auth = self.headers.get("Authorization", "")
                with state.lock:
                    state.calls[route] += 1
                    state.authorizations.append(auth)
                if parts.path.startswith("/v1/") and not auth.startswith("Bearer "):
                    self._send(401, {"error": {"message": "Missing API key."}})
                    return None
                if state.quota and (state.quota_on is None or state.quota_on == route):
                    key = auth.removeprefix("Bearer ")
                    message = (
                        f"Credit limit reached for the request with Authorization: {auth} "
                        f"(key {key}); add credits to continue."
                    )
                    kind = "credit_limit" if state.quota == 402 else "rate_limit"
                    self._send(
                        state.quota,
                        {"error": {"message": message, "type": kind}},
                        {"retry-after-ms": "5"} if state.quota == 429 else None,
                    )
                    return None
                return parts.path, parts.path.strip("/").split("/"), parse_qs(parts.query)

            def do_GET(self) -> None:
                routed = self._route("GET")
                if routed is None:
                    return
                path, parts, query = routed
                if path == "/v1/fine-tunes/models/limits":
                    self._limits(query.get("model_name", [""])[0])
                elif len(parts) == 3 and parts[:2] == ["v1", "fine-tunes"]:
                    self._retrieve(parts[2])
                elif len(parts) == 4 and parts[:2] == ["v1", "fine-tunes"]:
                    job_id = parts[2]
                    if job_id not in state.jobs:
                        self._send(404, {"error": {"message": f"Job {job_id} not found."}})
                    elif parts[3] == "events":
                        self._send(200, {"data": list(state.events[job_id])})
                    elif parts[3] == "metrics" and metrics_endpoint:
                        self._send(200, {"metrics": list(state.metrics[job_id])})
                    else:
                        self._send(404, {"error": {"message": f"No route {path}."}})
                else:
                    self._send(404, {"error": {"message": f"No route {path}."}})

            def do_PUT(self) -> None:
                routed = self._route("PUT")
                if routed is None:
                    return
                _, parts, _ = routed
                body = self.body
                if len(parts) == 2 and parts[0] == "upload" and parts[1] in state.uploads:
                    with state.lock:
                        state.files[parts[1]] = body
                    self._send(200, {})
                else:
                    self._send(404, {"error": {"message": "No such upload."}})

            def do_POST(self) -> None:
                routed = self._route("POST")
                if routed is None:
                    return
                path, parts, _ = routed
                body = self.body
                if path == "/v1/files":
                    self._start_upload(body)
                elif len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "preprocess":
                    self._preprocess(parts[2])
                elif path == "/v1/fine-tunes/estimate-price":
                    self._estimate(json.loads(body))
                elif path == "/v1/fine-tunes":
                    self._create(json.loads(body))
                elif len(parts) == 4 and parts[:2] == ["v1", "fine-tunes"] and parts[3] == "cancel":
                    self._cancel(parts[2])
                else:
                    self._send(404, {"error": {"message": f"No route {path}."}})

            def _limits(self, model: str) -> None:
                if model == "missing-model":
                    self._send(404, {"error": {"message": f"Model {model} not found."}})
                    return
                self._send(
                    200,
                    {
                        "model_name": model,
                        "default_gradient_accumulation_steps": 1,
                        "lora_training": {
                            "default_rank": 8,
                            "max_batch_size": 32,
                            "max_batch_size_dpo": 16,
                            "max_rank": 64,
                            "min_batch_size": 8,
                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                        },
                        "max_learning_rate": 1.0,
                        "min_learning_rate": 1e-8,
                        "max_num_checkpoints": 10,
                        "max_num_epochs": 20,
                        "max_num_evals": 10,
                        "max_seq_length_dpo": 4096,
                        "max_seq_length_sft": 8192,
                        "merge_output_lora": False,
                        "min_max_seq_length": 512,
                        "supports_full_training": True,
                        "supports_reasoning": False,
                        "supports_tools": True,
                        "supports_vision": False,
                        "full_training": {
                            "max_batch_size": 16,
                            "max_batch_size_dpo": 8,
                            "min_batch_size": 8,
                        },
                    },
                )

            def _start_upload(self, body: bytes) -> None:
                ctype = self.headers.get("Content-Type", "")
                message = BytesParser(policy=email_policy).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + body
                )
                form = {
                    str(part.get_param("name", header="content-disposition")): part.get_content()
                    for part in message.iter_parts()
                }
                if form.get("purpose") != "fine-tune" or form.get("file_type") != "jsonl":
                    self._send(400, {"error": {"message": f"Bad upload form {sorted(form)}."}})
                    return
                with state.lock:
                    file_id = f"file-{len(state.uploads) + 1}"
                    state.uploads[file_id] = form
                self._send(
                    302,
                    None,
                    {
                        "Location": f"{fake.url}/upload/{file_id}",
                        "X-Together-File-Id": file_id,
                    },
                )

            def _preprocess(self, file_id: str) -> None:
                form = state.uploads.get(file_id)
                content = state.files.get(file_id)
                if form is None or content is None:
                    self._send(404, {"error": {"message": f"File {file_id} was not uploaded."}})
                    return
                if hashlib.sha256(content).hexdigest() != form.get("checksum"):
                    self._send(400, {"error": {"message": "Checksum mismatch."}})
                    return
                try:
                    rows = [json.loads(line) for line in content.decode().splitlines() if line]
                    valid = all(isinstance(row.get("messages"), list) for row in rows)
                except ValueError:
                    valid = False
                self._send(
                    200,
                    {
                        "id": file_id,
                        "object": "file",
                        "bytes": len(content),
                        "created_at": int(time.time()),
                        "filename": form.get("file_name", "train.jsonl"),
                        "FileType": "jsonl",
                        "purpose": "fine-tune",
                        "processing_status": "COMPLETED" if valid else "INVALID_FORMAT",
                    },
                )

            def _estimate(self, request: dict[str, Any]) -> None:
                content = state.files.get(request.get("training_file", ""))
                if content is None:
                    self._send(400, {"error": {"message": "training_file not found"}})
                    return
                tokens = max(1, len(content) // 4) * int(request.get("n_epochs", 1))
                self._send(
                    200,
                    {
                        "estimation_available": True,
                        "allowed_to_proceed": state.affordable,
                        "estimated_total_price": round(tokens * 0.48 / 1e6 + 1200, 2),
                        "estimated_train_token_count": tokens,
                        "estimated_eval_token_count": 0,
                        "user_limit": 50.0,
                    },
                )

            def _event(
                self,
                job_id: str,
                kind: str,
                message: str,
                level: str | None = "info",
                **extra: Any,
            ) -> None:
                state.events[job_id].append(
                    {
                        "object": "fine-tune-event",
                        "created_at": state.tick(),
                        "type": kind,
                        "message": message,
                        "level": level,
                        **extra,
                    }
                )

            def _create(self, request: dict[str, Any]) -> None:
                model = request.get("model", "")
                if model == "refuse-model":
                    self._send(400, {"error": {"message": REFUSAL, "type": "invalid_request"}})
                    return
                if request.get("training_file") not in state.files:
                    self._send(400, {"error": {"message": "training_file not found"}})
                    return
                with state.lock:
                    state.job_requests.append(request)
                    job_id = f"ft-{len(state.jobs) + 1:04d}"
                    now = state.tick()
                    suffix = request.get("suffix") or "ft"
                    state.jobs[job_id] = {
                        "id": job_id,
                        "status": "pending",
                        "user_id": "user-test",
                        "model": model,
                        "model_output_name": f"flywheel-test/{model.split('/')[-1]}-{suffix}",
                        "adapter_output_name": None,
                        "created_at": now,
                        "updated_at": now,
                        "training_file": request["training_file"],
                        "n_epochs": request.get("n_epochs"),
                        "batch_size": request.get("batch_size"),
                        "learning_rate": request.get("learning_rate"),
                        "training_type": request.get("training_type"),
                        "suffix": request.get("suffix"),
                        "token_count": None,
                    }
                    state.events[job_id] = []
                    state.metrics[job_id] = []
                    self._event(job_id, "job_pending", "Fine-tune request created")
                self._send(200, state.jobs[job_id])

            def _log_steps(self, job_id: str, first: int, last: int) -> None:
                tokens = max(1, len(state.files[state.jobs[job_id]["training_file"]]) // 4)
                for step in range(first, last + 1):
                    state.metrics[job_id].append(
                        {
                            "train/global_step": step,
                            "train/loss": _loss(step),
                            "train/learning_rate": 1e-5 * (1 - step / (STEPS + 1)),
                            "train/epoch": step / STEPS * 2,
                        }
                    )
                self._event(
                    job_id,
                    "epoch_complete",
                    f"Epoch completed, at step {last}",
                    step=last,
                    total_steps=STEPS,
                    token_count=tokens * last // (STEPS // 2),
                )

            def _retrieve(self, job_id: str) -> None:
                job = state.jobs.get(job_id)
                if job is None:
                    self._send(404, {"error": {"message": f"Job {job_id} not found."}})
                    return
                with state.lock:
                    status = job["status"]
                    if status == "pending":
                        job["status"] = "queued"
                        self._event(job_id, "job_pending", "Job is queued (queue depth 0)")
                    elif status == "queued":
                        job["status"] = "running"
                        self._event(job_id, "job_start", "Job started")
                        self._event(job_id, "training_start", "Training started")
                        self._log_steps(job_id, 1, STEPS // 2)
                    elif status == "running" and job["model"] == "fail-model":
                        job["status"] = "error"
                        self._event(job_id, "job_error", FAILURE, level="error")
                    elif status == "running":
                        self._log_steps(job_id, STEPS // 2 + 1, STEPS)
                        self._event(job_id, "training_complete", "Training completed")
                        self._event(job_id, "model_upload_complete", "Model uploaded")
                        self._event(job_id, "job_complete", "Job finished")
                        content = state.files[job["training_file"]]
                        job["status"] = "completed"
                        job["token_count"] = max(1, len(content) // 4) * int(job["n_epochs"])
                    elif status == "cancel_requested":
                        job["status"] = "cancelled"
                        self._event(job_id, "job_stopped", "Job cancelled by the user")
                    if job["status"] != status:
                        job["updated_at"] = state.clock.isoformat().replace("+00:00", "Z")
                    body = {**job, "events": list(state.events[job_id])}
                self._send(200, body)

            def _cancel(self, job_id: str) -> None:
                job = state.jobs.get(job_id)
                if job is None:
                    self._send(404, {"error": {"message": f"Job {job_id} not found."}})
                    return
                with state.lock:
                    if job["status"] in ("pending", "queued", "running"):
                        job["status"] = "cancel_requested"
                        self._event(job_id, "cancel_requested", "Cancel requested")
                self._send(200, job)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server((HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the API as the package wants it (it adds /v1 itself)."""
        return f"http://{HOST}:{self._server.server_port}"

    def start(self) -> FakeTogether:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeTogether:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
