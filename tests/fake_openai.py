"""A small OpenAI-compatible server on 127.0.0.1 for tests and benchmarks (stdlib only).

It serves ``/v1/chat/completions`` (``response_format`` json_schema and json_object),
``/v1/files`` (upload and content), ``/v1/batches`` (create, retrieve) and
``/v1/fine_tuning/jobs`` (create, retrieve, events: each retrieve moves a job one step through
validating_files, queued, running to succeeded; base model ``fail-model`` fails); it injects faults:
latency, 429 with ``Retry-After``, 500, timeouts (a reply slower than the client waits),
malformed JSON and schema-invalid JSON — at a random rate or from a script of the next replies.
With ``Faults(echo_credentials=True)`` it behaves like a careless proxy: every error body (400,
401, 404, 429, 500, a batch's failed lines) echoes the request's ``Authorization`` header and key,
and the faults ``bad_body`` (a 200 that is no chat completion) and ``echo`` (a 200 whose reply
text is the echo) put them in successful responses too. ``truncated`` is a 200 whose JSON body
is cut off halfway (a flaky proxy); ``leadin`` answers with a one-line lead-in before the code,
which ``coding_qa`` refuses, until the conversation names the error ("one paragraph").
Replies are valid ``coding_qa`` (so also ``qa`` and ``support_qa``) and distinct from each other,
unless a ``responder`` gives the reply's text for a request (eval runs and judges use one).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

HOST = "127.0.0.1"

FAULTS = (
    "400",
    "401",
    "429",
    "500",
    "timeout",
    "malformed",
    "invalid",
    "no_code",
    "bad_body",
    "echo",
    "truncated",
    "leadin",
)

_VOCABULARY = (
    "alpha bravo cedar delta ember falcon garnet harbor iris juniper kettle lantern meadow "
    "nectar orbit pebble quartz raven saffron timber umber violet willow xenon yonder zephyr "
    "anchor basalt comet dune echo fjord glacier heron islet jasper kelp lagoon mesa nimbus "
    "oasis prairie quill reef summit tundra upland vale wharf yarrow zinnia acorn bramble"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass
class Faults:
    """What the server does besides answering well."""

    latency_s: float = 0.0
    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500", "malformed")
    retry_after_s: float = 0.0
    timeout_sleep_s: float = 2.0
    json_schema_supported: bool = True
    seed: int = 0
    echo_credentials: bool = False
    batches_supported: bool = True


@dataclass
class _State:
    faults: Faults
    script: deque[str] = field(default_factory=deque)
    calls: Counter[str] = field(default_factory=Counter)
    chat_calls: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    job_requests: list[dict[str, Any]] = field(default_factory=list)
    responder: Callable[[dict[str, Any]], str | None] | None = None
    authorizations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0
    rng: random.Random = field(default_factory=random.Random)


def reply_content(n: int, rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(30)]
    question = f"How do I handle case {n} with {' '.join(words[:8])} in Python?"
    code = (
        f"def solve_{n}(items):\n"
        f"    # {' '.join(words[8:12])}\n"
        f"    return [item * {n % 97 + 2} for item in items if item != {n}]\n"
    )
    explanation = f"The function solve_{n} filters and scales the items; {' '.join(words[12:30])}."
    answer = f"```python\n{code}```\n\n{explanation}"
    return json.dumps({"question": question, "answer": answer})


def completion_body(model: str, content: str, prompt_chars: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{random.getrandbits(40):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": max(1, prompt_chars // 4),
            "completion_tokens": max(1, len(content) // 4),
            "total_tokens": max(1, prompt_chars // 4) + max(1, len(content) // 4),
        },
    }


class FakeOpenAI:
    """The server; use as a context manager: ``with FakeOpenAI(faults) as server: server.url``."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        script: list[str] | None = None,
        responder: Callable[[dict[str, Any]], str | None] | None = None,
    ):
        self.state = _State(faults or Faults())
        self.state.responder = responder
        self.state.rng.seed(self.state.faults.seed)
        self.state.script.extend(script or [])
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(
                self,
                status: int,
                body: Any,
                headers: dict[str, str] | None = None,
                *,
                json_type: bool = False,
            ) -> None:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                ctype = (
                    "application/octet-stream"
                    if isinstance(body, bytes) and not json_type
                    else "application/json"
                )
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(raw)

            def _echo(self, message: str) -> str:
                """``message``, plus the request's credentials when the server echoes them."""
                if not state.faults.echo_credentials:
                    return message
                auth = self.headers.get("Authorization", "")
                key = auth.split(" ", 1)[-1]
                return (
                    f"{message}; you sent Authorization: {auth} (api_key={key}, "
                    f"url {self.path}?key={quote(key, safe='')}, "
                    f'headers {{"authorization": "{auth}"}})'
                )

            def _error(
                self, status: int, message: str, headers: dict[str, str] | None = None
            ) -> None:
                self._send(status, {"error": {"message": self._echo(message)}}, headers)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with state.lock:
                    state.calls[f"GET {path}"] += 1
                parts = path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["v1", "batches"]:
                    self._batch_status(parts[2])
                elif len(parts) == 4 and parts[1:3] == ["fine_tuning", "jobs"]:
                    self._job_status(parts[3])
                elif len(parts) == 5 and parts[1:3] == ["fine_tuning", "jobs"]:
                    events = state.job_events.get(parts[3])
                    if events is None:
                        self._error(404, "no such job")
                    else:
                        newest_first = list(reversed(events))
                        self._send(200, {"object": "list", "data": newest_first, "has_more": False})
                elif len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                    data = state.files.get(parts[2])
                    if data is None:
                        self._error(404, "no such file")
                    else:
                        self._send(200, data)
                else:
                    self._error(404, f"no route {path}")

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                body = self._body()
                with state.lock:
                    state.calls[f"POST {path}"] += 1
                    state.authorizations.append(self.headers.get("Authorization", ""))
                batch_route = path in ("/v1/files", "/v1/batches")
                if path == "/v1/chat/completions":
                    self._chat(json.loads(body))
                elif batch_route and not state.faults.batches_supported:
                    self._error(404, f"no route {path}: this server has no batch API")
                elif path == "/v1/files":
                    self._upload(body)
                elif path == "/v1/fine_tuning/jobs":
                    self._create_job(json.loads(body))
                elif path == "/v1/batches":
                    request = json.loads(body)
                    with state.lock:
                        batch_id = f"batch_{id(state):x}_{len(state.batches) + 1}"
                        state.batches[batch_id] = {
                            "id": batch_id,
                            "object": "batch",
                            "endpoint": request["endpoint"],
                            "input_file_id": request["input_file_id"],
                            "completion_window": request["completion_window"],
                            "status": "validating",
                            "created_at": int(time.time()),
                        }
                    self._send(200, state.batches[batch_id])
                else:
                    self._error(404, f"no route {path}")

            def _upload(self, body: bytes) -> None:
                ctype = self.headers.get("Content-Type", "")
                message = BytesParser(policy=email_policy).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + body
                )
                content = b""
                for part in message.iter_parts():
                    if part.get_param("name", header="content-disposition") == "file":
                        payload = part.get_payload(decode=True)
                        content = payload if isinstance(payload, bytes) else b""
                with state.lock:
                    file_id = f"file-{len(state.files) + 1}"
                    state.files[file_id] = content
                self._send(
                    200,
                    {
                        "id": file_id,
                        "object": "file",
                        "bytes": len(content),
                        "created_at": int(time.time()),
                        "filename": "requests.jsonl",
                        "purpose": "batch",
                        "status": "processed",
                    },
                )

            def _event(self, job_id: str, message: str, level: str = "info") -> None:
                events = state.job_events.setdefault(job_id, [])
                events.append(
                    {
                        "id": f"ftevent-{job_id}-{len(events) + 1}",
                        "object": "fine_tuning.job.event",
                        "created_at": int(time.time()),
                        "level": level,
                        "message": message,
                        "type": "message",
                    }
                )

            def _create_job(self, request: dict[str, Any]) -> None:
                with state.lock:
                    state.job_requests.append(request)
                    if request.get("training_file") not in state.files:
                        self._error(400, "training_file not found")
                        return
                    job_id = f"ftjob-{len(state.jobs) + 1}"
                    method = request.get("method") or {}
                    hyper = (method.get("supervised") or {}).get("hyperparameters") or {}
                    hyper = hyper or request.get("hyperparameters") or {}
                    state.jobs[job_id] = {
                        "id": job_id,
                        "object": "fine_tuning.job",
                        "created_at": int(time.time()),
                        "error": None,
                        "fine_tuned_model": None,
                        "finished_at": None,
                        "hyperparameters": {
                            "n_epochs": hyper.get("n_epochs", 3),
                            "batch_size": hyper.get("batch_size", 1),
                            "learning_rate_multiplier": hyper.get("learning_rate_multiplier", 1.0),
                        },
                        "model": request["model"],
                        "organization_id": "org-test",
                        "result_files": [],
                        "seed": 42,
                        "status": "validating_files",
                        "trained_tokens": None,
                        "training_file": request["training_file"],
                        "validation_file": None,
                        "suffix": request.get("suffix"),
                    }
                    self._event(job_id, f"Created fine-tuning job: {job_id}")
                self._send(200, state.jobs[job_id])

            def _job_status(self, job_id: str) -> None:
                job = state.jobs.get(job_id)
                if job is None:
                    self._error(404, "no such job")
                    return
                with state.lock:
                    if job["status"] == "validating_files":
                        job["status"] = "queued"
                        self._event(job_id, "Validating training file: done")
                    elif job["status"] == "queued":
                        job["status"] = "running"
                        self._event(job_id, "Fine-tuning job started")
                    elif job["status"] == "running" and job["model"] == "fail-model":
                        job.update(
                            status="failed",
                            finished_at=int(time.time()),
                            error={
                                "code": "invalid_training_file",
                                "message": "The training file has too few examples.",
                                "param": "training_file",
                            },
                        )
                        self._event(job_id, "Fine-tuning job failed", "error")
                    elif job["status"] == "running":
                        size = len(state.files[job["training_file"]])
                        epochs = int(job["hyperparameters"]["n_epochs"])
                        suffix = job.get("suffix") or "flywheel"
                        job.update(
                            status="succeeded",
                            finished_at=int(time.time()),
                            trained_tokens=max(1, size // 4) * epochs,
                            fine_tuned_model=f"ft:{job['model']}:{suffix}:{job_id}",
                        )
                        self._event(job_id, "Step 10/10: training loss=0.21")
                        self._event(job_id, "The job has successfully completed")
                self._send(200, job)

            def _batch_status(self, batch_id: str) -> None:
                batch = state.batches.get(batch_id)
                if batch is None:
                    self._error(404, "no such batch")
                    return
                with state.lock:
                    if batch["status"] == "validating":
                        batch["status"] = "in_progress"
                    elif batch["status"] == "in_progress":
                        self._complete(batch)
                self._send(200, batch)

            def _complete(self, batch: dict[str, Any]) -> None:
                lines = state.files[batch["input_file_id"]].decode().splitlines()
                out = []
                for line in lines:
                    request = json.loads(line)
                    fault = state.script.popleft() if state.script else ""
                    state.counter += 1
                    body = request["body"]
                    error = None
                    if fault in ("400", "429", "500"):
                        result = {
                            "status_code": int(fault),
                            "body": {"error": {"message": self._echo("server error")}},
                        }
                    elif fault == "401":
                        result = None
                        error = {"code": "invalid_api_key", "message": self._echo("bad key")}
                    elif fault == "bad_body":
                        result = {"status_code": 200, "body": {"detail": self._echo("oops")}}
                    elif fault == "echo":
                        chars = sum(len(m["content"]) for m in body["messages"])
                        content = self._echo("I was asked")
                        result = {
                            "status_code": 200,
                            "body": completion_body(body["model"], content, chars),
                        }
                    else:
                        content = _content_for(fault, state.counter, state.rng)
                        chars = sum(len(m["content"]) for m in body["messages"])
                        result = {
                            "status_code": 200,
                            "body": completion_body(body["model"], content, chars),
                        }
                    out.append(
                        {
                            "id": f"r{state.counter}",
                            "custom_id": request["custom_id"],
                            "response": result,
                            "error": error,
                        }
                    )
                file_id = f"file-{len(state.files) + 1}"
                state.files[file_id] = ("\n".join(json.dumps(o) for o in out) + "\n").encode()
                batch.update(status="completed", output_file_id=file_id, error_file_id=None)

            def _chat(self, request: dict[str, Any]) -> None:
                faults = state.faults
                if faults.latency_s:
                    time.sleep(faults.latency_s)
                fmt = request.get("response_format") or {}
                if fmt.get("type") == "json_schema" and not faults.json_schema_supported:
                    self._error(400, "response_format json_schema is not supported")
                    return
                if request.get("model") == "missing-model":
                    self._error(404, "model not found")
                    return
                with state.lock:
                    state.chat_calls += 1
                    state.counter += 1
                    n = state.counter
                    if state.script:
                        fault = state.script.popleft()
                    elif faults.rate and state.rng.random() < faults.rate:
                        fault = state.rng.choice(faults.kinds)
                    else:
                        fault = ""
                if fault == "429":
                    self._error(429, "rate limited", {"Retry-After": str(faults.retry_after_s)})
                    return
                if fault in ("400", "401", "500"):
                    self._error(int(fault), f"request refused ({fault})")
                    return
                if fault == "bad_body":
                    self._send(200, {"object": "error", "detail": self._echo("upstream failed")})
                    return
                if fault == "echo":
                    chars = sum(len(str(m.get("content", ""))) for m in request["messages"])
                    content = self._echo("I was asked")
                    self._send(200, completion_body(request["model"], content, chars))
                    return
                if fault == "truncated":
                    chars = sum(len(str(m.get("content", ""))) for m in request["messages"])
                    whole = json.dumps(completion_body(request["model"], "x" * 200, chars))
                    self._send(200, whole[: len(whole) // 2].encode(), json_type=True)
                    return
                if fault == "leadin" and any(
                    "one paragraph" in str(m.get("content", ""))
                    for m in request["messages"]
                    if m.get("role") == "user"
                ):
                    fault = ""  # told why: the teacher corrects its answer
                if fault == "timeout":
                    time.sleep(faults.timeout_sleep_s)
                content = _content_for(fault, n, state.rng)
                if state.responder is not None and not fault:
                    content = state.responder(request) or content
                chars = sum(len(str(m.get("content", ""))) for m in request["messages"])
                self._send(200, completion_body(request["model"], content, chars))

        class Server(ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

        self._server = Server((HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{HOST}:{self._server.server_port}/v1"

    @property
    def chat_calls(self) -> int:
        """Chat-completion requests answered so far (faults included)."""
        return self.state.chat_calls

    def start(self) -> FakeOpenAI:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _content_for(fault: str, n: int, rng: random.Random) -> str:
    if fault == "malformed":
        return '{"question": "How do I'
    if fault == "invalid":
        return json.dumps({"question": "Missing its answer?"})
    if fault == "leadin":
        body = json.loads(reply_content(n, rng))
        body["answer"] = "Here is a solution:\n" + body["answer"]
        return json.dumps(body)
    if fault == "no_code":
        return json.dumps({"question": "How do I sort a list?", "answer": "Use sorted()."})
    return reply_content(n, rng)


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/fake_openai.py
    with FakeOpenAI(Faults(latency_s=0.2)) as server:
        print(f"serving on {server.url}; Ctrl-C to stop")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
