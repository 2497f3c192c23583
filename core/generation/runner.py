"""An online run: the grid's pending items sent to the teacher, replies validated and stored.

Requests go through the openai package's async client, at most ``generation_concurrency`` in
flight (an item waiting out a backoff holds no slot); transport failures (429, 5xx, timeouts, a
body cut off) are retried with exponential backoff and jitter honouring ``Retry-After``; invalid
replies are asked again, with the error, a bounded number of times and then recorded as failed
with the reason. A killed run loses at most its last unflushed replies.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from core.access import User, require
from core.errors import GenerationError
from core.generation.cost import _check_budget, _estimate, plan_items
from core.generation.prompts import correction_messages, messages_for, response_format
from core.generation.records import (
    GenerationProgress,
    GenerationReport,
    ProgressCallback,
    _finish_run,
    _nothing_to_generate,
    _start_run,
)
from core.generation.schemas import ReplyInvalid, _without_keys, parse_reply
from core.generation.spec import GenerationSpec, WorkItem, cell_key
from core.generation.storage import _stored_status
from core.llm import (
    Endpoint,
    RequestAborted,
    RequestGaveUp,
    build_async_client,
    request_with_retries,
    resolve_endpoint,
    run_bounded,
)
from core.secrets import scrub_secrets
from core.settings import settings
from core.store import Store

# The OpenAI client (through core.llm) loads where a run uses it: a dry run does not import it.
if TYPE_CHECKING:
    import openai

# A run writes its replies every half second (a hard kill loses at most those; Ctrl-C writes
# them), not every few dozen: a write opens the store, tens of ms of CPU, and a fast server
# answers hundreds a second.
_FLUSH_EVERY = 256
_FLUSH_INTERVAL_S = 0.5


class _BudgetReached(Exception):
    pass


class _Abort(Exception):
    """Every item would fail the same way (bad key, unknown model): stop the run."""


class _GiveUp(Exception):
    """This item cannot be generated; record it as failed with the message."""


@dataclass
class _Runner:
    """The state of one online run, shared by its workers."""

    store: Store
    spec: GenerationSpec
    client: openai.AsyncOpenAI
    endpoint_display: str
    run_id: str
    timeout_s: float
    max_retries: int
    invalid_retries: int
    backoff_s: float
    budget_usd: float
    progress: GenerationProgress
    on_progress: ProgressCallback | None
    # Stores a batch of rows (storage's _store_examples), at most ``flush_every`` rows or
    # ``flush_interval_s`` seconds apart.
    write: Callable[[Store, Sequence[dict[str, Any]]], None]
    flush_every: int
    flush_interval_s: float
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    mode: Literal["json_schema", "json_object"] = "json_schema"
    rng: random.Random = field(default_factory=random.Random)
    buffer: list[dict[str, Any]] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)
    stop_reason: str = ""
    # Requests in flight: an item waiting out a backoff holds no slot (run() sizes it).
    slots: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)
    writing: asyncio.Task[None] | None = None
    write_error: Exception | None = None

    def flush(self) -> None:
        """Store the buffered rows now, on this thread (the run's end or interruption)."""
        rows, self.buffer = self.buffer, []
        self.write(self.store, rows)
        self.last_flush = time.monotonic()

    async def _write_buffer(self) -> None:
        """Store the buffered rows in a worker thread: a write opens the store (tens of ms),
        which on the event loop would stall every request in flight. Rows stay in the buffer
        until this starts, so an interruption before then leaves them to ``flush``."""
        rows, self.buffer = self.buffer, []
        self.last_flush = time.monotonic()
        try:
            await asyncio.to_thread(self.write, self.store, rows)
        except Exception as exc:  # raised where the run ends; no new item starts meanwhile
            self.write_error = exc

    def _record(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        p = self.progress
        p.done += 1
        if row["status"] == "valid":
            p.generated += 1
            p.valid_per_cell[row["cell_key"]] += 1
        else:
            p.failed += 1
        due = (
            len(self.buffer) >= self.flush_every
            or time.monotonic() - self.last_flush > self.flush_interval_s
        )
        if due and (self.writing is None or self.writing.done()):
            self.writing = asyncio.create_task(self._write_buffer())
        if self.on_progress is not None:
            self.on_progress(p)

    async def _call(self, messages: list[dict[str, str]]) -> Any:
        from openai.types.chat import ChatCompletion

        gen = self.spec.plan.generation
        sent: list[str] = []

        async def send() -> ChatCompletion:
            async with self.slots:
                if self.progress.cost_usd >= self.budget_usd:
                    raise _BudgetReached
                self.progress.api_calls += 1
                sent.append(self.mode)
                body = {
                    "model": self.spec.teacher_model,
                    "messages": messages,
                    "temperature": gen.temperature,
                    "response_format": response_format(gen.output_schema, self.mode),
                }
                # Posted as built (the client's documented way to send a body it need not
                # check): chat.completions.create walks every request through its TypedDicts,
                # about a third of the client's CPU per call. The reply is parsed the same.
                return await self.client.post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    body=body,
                    options={"timeout": self.timeout_s},
                )

        def fall_back_to_json_mode(exc: openai.BadRequestError) -> bool:
            text = str(exc).lower()
            if sent[-1] == "json_schema" and ("response_format" in text or "json_schema" in text):
                # The server lacks structured outputs: JSON mode plus our own validation.
                self.mode = "json_object"
                return True
            return False

        try:
            return await request_with_retries(
                send,
                model=self.spec.teacher_model,
                endpoint_display=self.endpoint_display,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                rng=self.rng,
                sleep=self.sleep,
                retry_bad_request=fall_back_to_json_mode,
            )
        except RequestGaveUp as exc:
            raise _GiveUp(str(exc)) from None
        except RequestAborted as exc:
            raise _Abort(str(exc)) from None

    def _row(
        self, item: WorkItem, status: str, attempts: int, tokens: tuple[int, int], cost: float
    ) -> dict[str, Any]:
        gen = self.spec.plan.generation
        return {
            "spec_hash": self.spec.spec_hash,
            "cell_key": cell_key(item.cell),
            "item_index": item.index,
            "plan_id": self.spec.plan_id,
            "run_id": self.run_id,
            "cell": cell_key(item.cell),
            "status": status,
            "attempts": attempts,
            "teacher_model": self.spec.teacher_model,
            "endpoint": self.endpoint_display,
            "template_hash": self.spec.template_hash,
            "temperature": gen.temperature,
            "generated_at": datetime.now(UTC),
            "input_tokens": tokens[0],
            "output_tokens": tokens[1],
            "cost_usd": cost,
        }

    async def generate_item(self, item: WorkItem) -> None:
        messages = messages_for(self.spec, item.cell, item.index)
        tokens_in = tokens_out = attempts = 0
        cost = 0.0
        reason = ""
        for _ in range(self.invalid_retries + 1):
            attempts += 1
            try:
                completion = await self._call(messages)
            except _GiveUp as exc:
                reason = str(exc)
                break
            usage = getattr(completion, "usage", None)
            used_in = int(getattr(usage, "prompt_tokens", 0) or 0)
            used_out = int(getattr(usage, "completion_tokens", 0) or 0)
            call_cost = self.spec.cost(used_in, used_out)
            tokens_in, tokens_out, cost = (
                tokens_in + used_in,
                tokens_out + used_out,
                cost + call_cost,
            )
            p = self.progress
            p.input_tokens += used_in
            p.output_tokens += used_out
            p.cost_usd += call_cost
            try:
                choice = completion.choices[0]
                if choice.finish_reason == "length":
                    raise ReplyInvalid("the reply was cut off at the token limit")
                parsed = parse_reply(
                    _without_keys(choice.message.content),
                    self.spec.plan.generation.output_schema,
                )
            except ReplyInvalid as exc:
                reason = f"invalid reply: {exc}"
                # Asked again with the error in the conversation, so the teacher can fix it.
                messages = [*messages, *correction_messages(choice.message.content, str(exc))]
                continue
            except (AttributeError, IndexError, TypeError):
                reason = "invalid reply: not a chat completion"
                continue
            row = self._row(item, "valid", attempts, (tokens_in, tokens_out), cost)
            row.update(
                question=parsed.question,
                answer=parsed.answer,
                payload=parsed.model_dump_json(),
            )
            self._record(row)
            return
        else:
            reason = f"{reason} (after {attempts} attempts)"
        row = self._row(item, "failed", attempts, (tokens_in, tokens_out), cost)
        row["failure_reason"] = reason
        self._record(row)

    async def run(self, items: Sequence[WorkItem], concurrency: int) -> None:
        async def handle(item: WorkItem) -> None:
            try:
                await self.generate_item(item)
            except _BudgetReached:
                self.stop_reason = self.stop_reason or "budget"
            except _Abort as exc:
                self.stop_reason = str(exc)
            except Exception as exc:
                row = self._row(item, "failed", 1, (0, 0), 0.0)
                row["failure_reason"] = scrub_secrets(
                    f"unexpected error: {type(exc).__name__}: {exc}"
                )
                self._record(row)

        def stopped() -> bool:
            return bool(self.stop_reason) or self.write_error is not None

        # ``concurrency`` requests in flight, and as many items again ready to take a slot
        # that an item waiting out its backoff leaves free.
        self.slots = asyncio.Semaphore(max(1, concurrency))
        try:
            await run_bounded(items, handle, concurrency=2 * max(1, concurrency), stopped=stopped)
        finally:
            try:
                if self.writing is not None:
                    await self.writing
            finally:
                self.flush()
        if self.write_error is not None:
            raise self.write_error


def run_generation(
    store: Store,
    plan_id: str,
    *,
    user: User,
    version: int | None = None,
    top_up: bool = False,
    endpoint: Endpoint | None = None,
    client: openai.AsyncOpenAI | None = None,
    concurrency: int | None = None,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    invalid_retries: int | None = None,
    backoff_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerationReport:
    """Generate every item of the grid not stored yet (or top up thin cells); return the run.

    Refuses to start (GenerationError) when the estimate exceeds the budget cap; stops cleanly
    when the actual spend reaches it. Raises GenerationError when the server refuses the key
    or does not know the model; AccessError, before any call or write, when ``user`` may not
    run generation.
    """
    require(user, "generation.run")
    # The set-up's reads and the run's row share one open of the file (an open costs tens of
    # ms of CPU); it is let go before the first request.
    with store.session():
        spec = GenerationSpec.load(store, plan_id, version)
        items = plan_items(store, spec, top_up=top_up)
        stored = sum(1 for s in _stored_status(store, spec.spec_hash).values() if s == "valid")
        estimate = _estimate(spec, items, stored=stored, batch=False)
        _check_budget(estimate)
        endpoint = endpoint or resolve_endpoint(spec.plan.generation.endpoint)
        timeout = settings.request_timeout_s if timeout_s is None else timeout_s
        progress = GenerationProgress(total=len(items))
        if not items:
            return _nothing_to_generate(store, spec, progress, estimate, batch=False, user=user)
        active = client or build_async_client(endpoint, timeout_s=timeout)
        run_id = _start_run(
            store, spec, mode="online", requested=len(items), estimate=estimate.estimated_cost_usd
        )
    # The write and its cadence are read where the package (core.generation) holds them, so
    # that replacing them there reaches the run (a test writes after every reply, or fails).
    import core.generation as package

    runner = _Runner(
        store=store,
        spec=spec,
        client=active,
        endpoint_display=endpoint.display_url,
        run_id=run_id,
        timeout_s=timeout,
        max_retries=settings.max_retries if max_retries is None else max_retries,
        invalid_retries=settings.generation_invalid_retries
        if invalid_retries is None
        else invalid_retries,
        backoff_s=settings.retry_backoff_s if backoff_s is None else backoff_s,
        budget_usd=spec.plan.generation.budget_usd,
        progress=progress,
        on_progress=on_progress,
        write=package._store_examples,
        flush_every=package._FLUSH_EVERY,
        flush_interval_s=package._FLUSH_INTERVAL_S,
    )

    async def main() -> None:
        try:
            await runner.run(
                items, settings.generation_concurrency if concurrency is None else concurrency
            )
        finally:
            if client is None:
                await active.close()

    status, message = "done", ""
    try:
        asyncio.run(main())
    except Exception as exc:  # it failed (a server gone, a bug): say so, with why
        _finish_run(
            store,
            spec,
            run_id,
            status="failed",
            progress=progress,
            estimate=estimate,
            message=f"Failed: {scrub_secrets(str(exc)) or type(exc).__name__}",
            batch=False,
            actor=user.name,
        )
        raise
    except BaseException:  # stopped from outside (Ctrl-C, a closed session): resumable
        _finish_run(
            store,
            spec,
            run_id,
            status="interrupted",
            progress=progress,
            estimate=estimate,
            message="Interrupted; run again to resume where it stopped.",
            batch=False,
            actor=user.name,
        )
        raise
    if runner.stop_reason == "budget":
        status = "budget_stop"
        message = (
            f"Stopped at the ${spec.plan.generation.budget_usd:,.2f} budget cap after spending "
            f"${progress.cost_usd:,.4f}; {len(items) - progress.done} item(s) not generated. "
            "Raise generation.budget_usd and run again to continue."
        )
    elif runner.stop_reason:
        report = _finish_run(
            store,
            spec,
            run_id,
            status="aborted",
            progress=progress,
            estimate=estimate,
            message=runner.stop_reason,
            batch=False,
            actor=user.name,
        )
        raise GenerationError(f"{report.message} ({report.new_valid} item(s) were stored first.)")
    else:
        message = f"{progress.generated} generated, {progress.failed} failed."
    return _finish_run(
        store,
        spec,
        run_id,
        status=status,
        progress=progress,
        estimate=estimate,
        message=message,
        batch=False,
        actor=user.name,
    )
