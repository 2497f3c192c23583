"""Batch mode: the pending items as one OpenAI batch job, at half price. The requests are written
as JSONL and uploaded, the job is polled, and its results are taken in with the same validation and
keys as an online run's replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.access import User, require
from core.errors import GenerationError
from core.generation.cost import _check_budget, _estimate, plan_items
from core.generation.prompts import messages_for, response_format
from core.generation.records import (
    GenerationProgress,
    GenerationReport,
    ProgressCallback,
    _finish_run,
    _nothing_to_generate,
    _start_run,
)
from core.generation.schemas import ReplyInvalid, _without_keys, parse_reply
from core.generation.spec import GenerationSpec, WorkItem, _sha, cell_key
from core.generation.storage import _store_examples, _stored_status
from core.llm import Endpoint, build_async_client, describe_error, resolve_endpoint, server_message
from core.secrets import scrub_secrets
from core.settings import settings
from core.store import Store

if TYPE_CHECKING:
    import openai


@dataclass(frozen=True)
class BatchSubmission:
    """An OpenAI batch job created for a plan's pending items."""

    batch_id: str
    run_id: str
    requests: int


def _custom_id(item: WorkItem) -> str:
    return f"{_sha(cell_key(item.cell))[:12]}-{item.index}"


def batch_requests_jsonl(spec: GenerationSpec, items: Sequence[WorkItem]) -> str:
    """The requests of a batch job, one JSON line per item (structured-output mode)."""
    gen = spec.plan.generation
    lines = [
        json.dumps(
            {
                "custom_id": _custom_id(item),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": spec.teacher_model,
                    "messages": messages_for(spec, item.cell, item.index),
                    "temperature": gen.temperature,
                    "response_format": response_format(gen.output_schema, "json_schema"),
                },
            }
        )
        for item in items
    ]
    return "\n".join(lines) + "\n"


async def _submit_batch(
    store: Store,
    spec: GenerationSpec,
    client: openai.AsyncOpenAI,
    items: Sequence[WorkItem],
    endpoint_display: str,
    run_id: str,
) -> BatchSubmission:
    body = batch_requests_jsonl(spec, items).encode()
    uploaded = await client.files.create(file=(f"{run_id}.jsonl", body), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with store.transaction() as con:
        con.execute(
            "INSERT INTO generation_batches (batch_id, run_id, plan_id, spec_hash, input_file_id,"
            " endpoint, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                batch.id,
                run_id,
                spec.plan_id,
                spec.spec_hash,
                uploaded.id,
                endpoint_display,
                scrub_secrets(str(batch.status)),
                datetime.now(UTC),
            ],
        )
        con.executemany(
            "INSERT INTO generation_batch_items VALUES (?, ?, ?, ?)",
            [[batch.id, _custom_id(i), cell_key(i.cell), i.index] for i in items],
        )
    return BatchSubmission(batch.id, run_id, len(items))


_BATCH_DONE = {"completed", "failed", "expired", "cancelled"}


async def _ingest_batch(
    store: Store,
    spec: GenerationSpec,
    client: openai.AsyncOpenAI,
    batch_id: str,
    endpoint_display: str,
    progress: GenerationProgress,
    *,
    poll_s: float,
    on_progress: ProgressCallback | None,
) -> str:
    while True:
        batch = await client.batches.retrieve(batch_id)
        progress.api_calls += 1
        if batch.status in _BATCH_DONE:
            break
        await asyncio.sleep(poll_s)
    # The status is the server's text: it reaches the store, a run's message and the console.
    status = scrub_secrets(str(batch.status))
    mapping = {
        str(r[0]): (str(r[1]), int(r[2]))
        for r in store.fetch_all(
            "SELECT custom_id, cell_key, item_index FROM generation_batch_items WHERE batch_id = ?",
            [batch_id],
        )
    }
    run_row = store.fetch_one(
        "SELECT run_id FROM generation_batches WHERE batch_id = ?", [batch_id]
    )
    run_id = str(run_row[0]) if run_row else batch_id
    lines: list[str] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            content = await client.files.content(file_id)
            progress.api_calls += 1
            lines.extend(line for line in content.text.splitlines() if line.strip())
    gen = spec.plan.generation
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def base_row(key: str, index: int) -> dict[str, Any]:
        """What every stored row of this batch says of its item and of the run."""
        return {
            "spec_hash": spec.spec_hash,
            "cell_key": key,
            "item_index": index,
            "plan_id": spec.plan_id,
            "run_id": run_id,
            "cell": key,
            "attempts": 1,
            "teacher_model": spec.teacher_model,
            "endpoint": endpoint_display,
            "template_hash": spec.template_hash,
            "temperature": gen.temperature,
            "generated_at": datetime.now(UTC),
        }

    for line in lines:
        try:
            record = json.loads(line)
            custom_id = str(record["custom_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if custom_id not in mapping or custom_id in seen:
            continue
        seen.add(custom_id)
        key, index = mapping[custom_id]
        row = base_row(key, index)
        row.update(input_tokens=0, output_tokens=0, cost_usd=0.0)
        response = record.get("response") or {}
        body = response.get("body") or {}
        usage = body.get("usage") or {}
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
        cost = spec.cost(tokens_in, tokens_out, batch=True)
        row.update(input_tokens=tokens_in, output_tokens=tokens_out, cost_usd=cost)
        progress.input_tokens += tokens_in
        progress.output_tokens += tokens_out
        progress.cost_usd += cost
        try:
            if record.get("error") or response.get("status_code") != 200:
                error = record.get("error") or body.get("error") or {}
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise ReplyInvalid(
                    scrub_secrets(
                        f"the batch request failed (HTTP {response.get('status_code')}): {message}"
                    )
                )
            choice = body["choices"][0]
            parsed = parse_reply(_without_keys(choice["message"]["content"]), gen.output_schema)
        except ReplyInvalid as exc:
            row.update(status="failed", failure_reason=str(exc))
        except (KeyError, IndexError, TypeError):
            row.update(status="failed", failure_reason="invalid reply: not a chat completion")
        else:
            row.update(
                status="valid",
                question=parsed.question,
                answer=parsed.answer,
                payload=parsed.model_dump_json(),
            )
        rows.append(row)
        progress.done += 1
        if row["status"] == "valid":
            progress.generated += 1
            progress.valid_per_cell[key] += 1
        else:
            progress.failed += 1
    for custom_id, (key, index) in mapping.items():
        if custom_id not in seen:
            row = base_row(key, index)
            row.update(
                status="failed", failure_reason=f"no result in batch {batch_id} (status {status})"
            )
            rows.append(row)
            progress.done += 1
            progress.failed += 1
    # A stored valid item is never replaced by a batch's failure.
    stored = _stored_status(store, spec.spec_hash)
    rows = [
        r
        for r in rows
        if not (r["status"] == "failed" and stored.get((r["cell_key"], r["item_index"])) == "valid")
    ]
    _store_examples(store, rows)
    with store.transaction() as con:
        con.execute(
            "UPDATE generation_batches SET status = ?, ingested_at = ? WHERE batch_id = ?",
            [status, datetime.now(UTC), batch_id],
        )
    if on_progress is not None:
        on_progress(progress)
    return status


def run_batch(
    store: Store,
    plan_id: str,
    *,
    user: User,
    version: int | None = None,
    top_up: bool = False,
    endpoint: Endpoint | None = None,
    client: openai.AsyncOpenAI | None = None,
    poll_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerationReport:
    """Generate the pending items through an OpenAI batch job (half price): write the requests
    as JSONL, upload, create the batch, poll, and take in the results with the same validation
    and keys. A batch of the same spec still pending from an earlier, stopped call is polled
    instead of submitting a new one. Raises AccessError, before any call or write, when
    ``user`` may not run generation.
    """
    import openai

    require(user, "generation.run")
    spec = GenerationSpec.load(store, plan_id, version)
    endpoint = endpoint or resolve_endpoint(spec.plan.generation.endpoint)
    pending = store.fetch_one(
        "SELECT batch_id, run_id FROM generation_batches WHERE spec_hash = ? AND plan_id = ?"
        " AND ingested_at IS NULL ORDER BY created_at DESC LIMIT 1",
        [spec.spec_hash, plan_id],
    )
    items: list[WorkItem] = []
    if pending is None:
        items = plan_items(store, spec, top_up=top_up)
    stored = sum(1 for s in _stored_status(store, spec.spec_hash).values() if s == "valid")
    estimate = _estimate(spec, items, stored=stored, batch=True)
    _check_budget(estimate)
    progress = GenerationProgress(total=len(items))
    if pending is None and not items:
        return _nothing_to_generate(store, spec, progress, estimate, batch=True, user=user)
    timeout = settings.request_timeout_s
    active = client or build_async_client(endpoint, timeout_s=timeout)
    interval = settings.batch_poll_s if poll_s is None else poll_s

    async def main() -> tuple[str, str]:
        try:
            if pending is None:
                run_id = _start_run(
                    store,
                    spec,
                    mode="batch",
                    requested=len(items),
                    estimate=estimate.estimated_cost_usd,
                )
                submission = await _submit_batch(
                    store, spec, active, items, endpoint.display_url, run_id
                )
                progress.api_calls += 2
                batch_id = submission.batch_id
            else:
                batch_id, run_id = str(pending[0]), str(pending[1])
                progress.total = int(
                    (
                        store.fetch_one(
                            "SELECT count(*) FROM generation_batch_items WHERE batch_id = ?",
                            [batch_id],
                        )
                        or (0,)
                    )[0]
                )
            status = await _ingest_batch(
                store,
                spec,
                active,
                batch_id,
                endpoint.display_url,
                progress,
                poll_s=interval,
                on_progress=on_progress,
            )
            return run_id, status
        finally:
            if client is None:
                await active.close()

    try:
        run_id, batch_status = asyncio.run(main())
    except openai.OpenAIError as exc:
        raise GenerationError(
            f"The batch job could not be submitted or read ({describe_error(exc)}): "
            f"{server_message(exc)}. "
            "Batch mode needs OpenAI or a server with /v1/files and /v1/batches."
        ) from None
    return _finish_run(
        store,
        spec,
        run_id,
        status="done" if batch_status == "completed" else f"batch_{batch_status}",
        progress=progress,
        estimate=estimate,
        message=f"Batch {batch_status}: {progress.generated} generated, {progress.failed} failed.",
        batch=True,
        actor=user.name,
    )
