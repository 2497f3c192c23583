"""Synthetic generation with the teacher across the plan's axis grid.

Each item of the grid is keyed by (generation spec hash, cell, index). The spec hash covers what
shapes a reply (teacher model, prompt template, output schema, temperature), so changing any of
them starts a fresh dataset while a rerun of the same spec asks only for what is not stored yet.
A killed run loses at most its last unflushed replies.

Replies are validated against the plan's output schema (Pydantic). Requests go through the
openai package's async client, at most ``generation_concurrency`` in flight (an item waiting
out a backoff holds no slot); transport failures (429, 5xx, timeouts, a body cut off) are
retried with exponential backoff and jitter honouring ``Retry-After``; invalid replies are
asked again, with the error, a bounded number of times and then recorded as failed with the
reason.
Every example carries its provenance: teacher model, endpoint (never the key), template hash,
temperature, time, tokens and cost.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.access import User, require
from core.audit import record_audit
from core.errors import GenerationError, UserTemplateError
from core.llm import (
    Endpoint,
    RequestAborted,
    RequestGaveUp,
    backoff_delay,
    build_async_client,
    describe_error,
    request_with_retries,
    resolve_endpoint,
    run_bounded,
    server_message,
)
from core.plan import Plan, grid_cells
from core.plan_versions import load_plan
from core.secrets import remove_key_values, scrub_secrets
from core.settings import settings
from core.store import Store, insert_rows
from core.templating import render_user_template
from core.tokens import estimate_tokens
from core.traffic import interaction_columns, traffic_by_axes

# The OpenAI client (through core.llm) and Ibis (core.quality's near-duplicates) load where a run
# or the diversity read-out uses them: a dry run imports neither.
if TYPE_CHECKING:
    import openai

__all__ = [
    "OUTPUT_SCHEMAS",
    "QA",
    "BatchSubmission",
    "CellAllocation",
    "CellDiversity",
    "CodingQA",
    "GenerationEstimate",
    "GenerationProgress",
    "GenerationReport",
    "GenerationSpec",
    "LoopReport",
    "SupportQA",
    "WorkItem",
    "backoff_delay",
    "cell_diversity",
    "cell_key",
    "correction_messages",
    "dry_run",
    "estimate_tokens",
    "list_examples",
    "list_failures",
    "parse_reply",
    "plan_items",
    "production_vs_training",
    "render_prompt",
    "run_batch",
    "run_generation",
    "runs",
    "stored_counts",
    "write_examples",
]

BATCH_DISCOUNT = 0.5
# A run writes its replies every half second (a hard kill loses at most those; Ctrl-C writes
# them), not every few dozen: a write opens the store, tens of ms of CPU, and a fast server
# answers hundreds a second.
_FLUSH_EVERY = 256
_FLUSH_INTERVAL_S = 0.5

# -- output schemas ----------------------------------------------------------------------------


class QA(BaseModel):
    """A question and its answer."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=5, description="The user's question.")
    answer: str = Field(min_length=1, description="The answer.")


_FENCE = re.compile(r"```[ \t]*(?:python|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


class CodingQA(QA):
    """A Python question; the answer holds one fenced Python block and a one-paragraph
    explanation."""

    answer: str = Field(
        min_length=1,
        description="A fenced ```python block that runs as is, then a one-paragraph explanation.",
    )

    @field_validator("answer")
    @classmethod
    def _code_and_explanation(cls, answer: str) -> str:
        match = _FENCE.search(answer)
        if match is None:
            raise ValueError("the answer holds no fenced ```python code block")
        try:
            ast.parse(match.group(1))
        except SyntaxError as exc:
            raise ValueError(
                f"the code block does not parse: {exc.msg} (line {exc.lineno})"
            ) from None
        explanation = (answer[: match.start()] + answer[match.end() :]).strip()
        if not explanation:
            raise ValueError("the answer has no explanation besides the code")
        if re.search(r"\n\s*\n", explanation):
            raise ValueError("the explanation must be one paragraph")
        return answer


class SupportQA(QA):
    """A customer message and the support agent's reply."""

    question: str = Field(min_length=10, description="The customer's message.")
    answer: str = Field(min_length=20, description="The agent's reply.")


OUTPUT_SCHEMAS: dict[str, type[QA]] = {"qa": QA, "coding_qa": CodingQA, "support_qa": SupportQA}


def response_json_schema(output_schema: str) -> dict[str, Any]:
    """The JSON schema sent as ``response_format`` (strict: every key required, no others)."""
    model = OUTPUT_SCHEMAS[output_schema]
    return {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": info.description or name}
            for name, info in model.model_fields.items()
        },
        "required": list(model.model_fields),
        "additionalProperties": False,
    }


class ReplyInvalid(ValueError):
    """A reply that is not JSON or does not match the output schema."""


def parse_reply(content: str | None, output_schema: str) -> QA:
    """Validate a reply's text against the output schema.

    Accepts the bare JSON object or one wrapped in a ```json fence (JSON mode on some servers).
    Raises ReplyInvalid with a reason a reader understands.
    """
    if not content or not content.strip():
        raise ReplyInvalid("empty reply")
    text = content.strip()
    fenced = re.match(r"^```(?:json)?\s*\n(.*)\n```$", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplyInvalid(f"malformed JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(data, dict):
        raise ReplyInvalid("the reply is JSON but not an object")
    try:
        return OUTPUT_SCHEMAS[output_schema].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        raise ReplyInvalid(f"schema {output_schema}: {where}: {first['msg']}") from None


# -- the spec, the grid and the prompts --------------------------------------------------------


def cell_key(cell: dict[str, str]) -> str:
    """Canonical JSON of a cell: the key under which its items are stored."""
    return json.dumps(cell, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class GenerationSpec:
    """What generation runs for one plan version, with the hashes that key its items."""

    plan_id: str
    plan_version: int
    plan: Plan

    @property
    def teacher_model(self) -> str:
        """The generating model: the section's own, else the plan's teacher."""
        return self.plan.generation.teacher_model or self.plan.goal.teacher_model

    @property
    def template_hash(self) -> str:
        """sha256 (16 hex digits) of the prompt template."""
        return _sha(self.plan.generation.prompt_template)[:16]

    @property
    def spec_hash(self) -> str:
        """Hash of what shapes a reply: model, template, schema and temperature."""
        gen = self.plan.generation
        canonical = json.dumps(
            {
                "model": self.teacher_model,
                "template": gen.prompt_template,
                "schema": gen.output_schema,
                "temperature": gen.temperature,
            },
            sort_keys=True,
        )
        return _sha(canonical)[:16]

    @property
    def cells(self) -> list[dict[str, str]]:
        """Every cell of the grid."""
        return grid_cells(self.plan.generation)

    def cost(self, input_tokens: int, output_tokens: int, *, batch: bool = False) -> float:
        """Teacher cost in $ of these tokens at the plan's prices (half price in batch mode)."""
        factor = BATCH_DISCOUNT if batch else 1.0
        return self.plan.economics.teacher_cost(input_tokens, output_tokens) * factor

    @classmethod
    def load(cls, store: Store, plan_id: str, version: int | None = None) -> GenerationSpec:
        """The spec of a stored plan version; raises GenerationError for an empty grid."""
        plan, number = load_plan(store, plan_id, version)
        spec = cls(plan_id, number, plan)
        if not spec.cells:
            raise GenerationError(
                f"Plan '{plan_id}' has no generation grid: add axes with values on the Plan page."
            )
        if not plan.generation.prompt_template.strip():
            raise GenerationError(
                f"Plan '{plan_id}' has no prompt template: write generation.prompt_template."
            )
        return spec


def render_prompt(spec: GenerationSpec, cell: dict[str, str], index: int = 0) -> str:
    """The user prompt of one item: the template rendered with the cell's axis values.

    The template sees each axis by its name, ``cell`` (the mapping) and ``index``, and renders
    in the sandbox of user templates (core.templating): nothing in it runs as Flywheel.
    Raises GenerationError when it does not parse, names a value the grid does not have,
    reaches for something the sandbox refuses or exceeds a limit.
    """
    values = {k: v for k, v in cell.items() if k.isidentifier()}
    try:
        text = render_user_template(
            spec.plan.generation.prompt_template,
            {**values, "cell": cell, "index": index},
            what="The prompt template",
        )
    except UserTemplateError as exc:
        raise GenerationError(f"{exc} Axes are: {', '.join(cell)}.") from exc
    per_cell = spec.plan.generation.examples_per_cell
    return (
        f"{text.strip()}\n\n(Variation {index + 1} of {per_cell} for this case: make it distinct.)"
    )


def system_prompt(output_schema: str) -> str:
    """The system message: reply with one JSON object of the schema (needed in JSON mode)."""
    schema = json.dumps(response_json_schema(output_schema))
    return (
        "You write high-quality training examples. Reply with exactly one JSON object and "
        f"nothing else. It must match this JSON schema: {schema}"
    )


def messages_for(spec: GenerationSpec, cell: dict[str, str], index: int) -> list[dict[str, str]]:
    """The chat messages of one item."""
    return [
        {"role": "system", "content": system_prompt(spec.plan.generation.output_schema)},
        {"role": "user", "content": render_prompt(spec, cell, index)},
    ]


def correction_messages(reply: str | None, error: str) -> list[dict[str, str]]:
    """The turns appended after a reply the output schema refused: the reply (keys removed)
    and a user message naming the error, so the next attempt can correct it."""
    return [
        {"role": "assistant", "content": _without_keys(reply) or ""},
        {
            "role": "user",
            "content": f"That reply was refused: {error}. Answer again with the whole JSON "
            "object, corrected.",
        },
    ]


def response_format(output_schema: str, mode: Literal["json_schema", "json_object"]) -> Any:
    """The ``response_format`` of a request in structured-output or JSON mode."""
    if mode == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": output_schema,
            "schema": response_json_schema(output_schema),
            "strict": True,
        },
    }


@dataclass(frozen=True)
class WorkItem:
    """One example to generate: its cell and its index within the cell."""

    cell: dict[str, str]
    index: int

    @property
    def key(self) -> tuple[str, int]:
        """(cell key, index): with the spec hash, the item's identity in the store."""
        return cell_key(self.cell), self.index


# -- the store ---------------------------------------------------------------------------------

_EXAMPLE_COLUMNS = (
    "spec_hash",
    "cell_key",
    "item_index",
    "plan_id",
    "run_id",
    "cell",
    "status",
    "question",
    "answer",
    "payload",
    "failure_reason",
    "attempts",
    "teacher_model",
    "endpoint",
    "template_hash",
    "temperature",
    "generated_at",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)


_DEFAULTS: dict[str, Any] = {"attempts": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}


def write_examples(store: Store, rows: Sequence[dict[str, Any]], *, user: User) -> None:
    """Store examples (valid or failed) that ``user`` brings in from outside a generation run,
    replacing an earlier record of the same item, and audit it under their name (how many rows
    were written and how many earlier ones they replaced).

    Raises AccessError, before anything is written, when ``user`` may not run generation.
    """
    require(user, "generation.run")
    if not rows:
        return
    with store.transaction() as con:
        (replaced,) = con.execute(
            "SELECT count(*) FROM generated_examples g JOIN (SELECT unnest($specs) AS s,"
            " unnest($cells) AS c, unnest($items) AS i) k"
            " ON g.spec_hash = k.s AND g.cell_key = k.c AND g.item_index = k.i",
            {
                "specs": [str(r.get("spec_hash")) for r in rows],
                "cells": [str(r.get("cell_key")) for r in rows],
                "items": [int(r.get("item_index", -1)) for r in rows],
            },
        ).fetchone() or (0,)
        _insert_examples(con, rows)
        record_audit(
            con,
            actor=user.name,
            action="generation.examples_written",
            target=", ".join(sorted({f"plan:{r.get('plan_id')}" for r in rows})),
            detail={
                "rows": len(rows),
                "valid": sum(1 for r in rows if r.get("status") == "valid"),
                "replaced": int(replaced),
            },
        )


def _store_examples(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    """Store a run's examples; the run itself checked its user's role and audits it."""
    if not rows:
        return
    with store.transaction() as con:
        _insert_examples(con, rows)


def _insert_examples(con: duckdb.DuckDBPyConnection, rows: Sequence[dict[str, Any]]) -> None:
    # Columns bound as lists: about 20 ms for 200 rows, where a multi-row VALUES with a
    # parameter per field took 150 ms.
    insert_rows(
        con,
        "generated_examples",
        [[row.get(c, _DEFAULTS.get(c)) for c in _EXAMPLE_COLUMNS] for row in rows],
        columns=_EXAMPLE_COLUMNS,
        replace=True,
    )


def _stored_status(store: Store, spec_hash: str) -> dict[tuple[str, int], str]:
    rows = store.fetch_all(
        "SELECT cell_key, item_index, status FROM generated_examples WHERE spec_hash = ?",
        [spec_hash],
    )
    return {(r[0], int(r[1])): str(r[2]) for r in rows}


def stored_counts(store: Store, spec: GenerationSpec) -> dict[str, dict[str, int]]:
    """Per cell key: how many items are stored ``valid`` and ``failed`` for this spec."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"valid": 0, "failed": 0})
    for key, status, n in store.fetch_all(
        "SELECT cell_key, status, count(*) FROM generated_examples WHERE spec_hash = ?"
        " GROUP BY ALL",
        [spec.spec_hash],
    ):
        counts[str(key)][str(status)] = int(n)
    return dict(counts)


def list_examples(
    store: Store, spec: GenerationSpec, *, cell: dict[str, str] | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Valid examples of the spec (of one cell when given), with their provenance."""
    sql = (
        "SELECT cell_key, item_index, question, answer, teacher_model, endpoint, template_hash,"
        " temperature, generated_at, input_tokens, output_tokens, cost_usd, attempts"
        " FROM generated_examples WHERE spec_hash = ? AND status = 'valid'"
    )
    params: list[Any] = [spec.spec_hash]
    if cell is not None:
        sql += " AND cell_key = ?"
        params.append(cell_key(cell))
    sql += " ORDER BY cell_key, item_index LIMIT ?"
    params.append(limit)
    return store.fetch_dicts(sql, params)


def list_failures(store: Store, spec: GenerationSpec) -> list[dict[str, Any]]:
    """Failed items of the spec with the reason they failed."""
    return store.fetch_dicts(
        "SELECT cell_key, item_index, failure_reason, attempts, generated_at"
        " FROM generated_examples WHERE spec_hash = ? AND status = 'failed'"
        " ORDER BY cell_key, item_index",
        [spec.spec_hash],
    )


# -- planning and cost -------------------------------------------------------------------------


def plan_items(
    store: Store, spec: GenerationSpec, *, top_up: bool = False, near_threshold: float = 0.8
) -> list[WorkItem]:
    """The items a run must ask for: every grid item not stored valid, or with ``top_up``
    the items that bring each thin cell (too few unique valid examples) back to its target.
    """
    stored = _stored_status(store, spec.spec_hash)
    per_cell = spec.plan.generation.examples_per_cell
    if not top_up:
        return [
            WorkItem(cell, i)
            for cell in spec.cells
            for i in range(per_cell)
            if stored.get((cell_key(cell), i)) != "valid"
        ]
    items: list[WorkItem] = []
    diversity = {d.cell_key: d for d in cell_diversity(store, spec, threshold=near_threshold)}
    for cell in spec.cells:
        key = cell_key(cell)
        report = diversity[key]
        if not report.under_target:
            continue
        failed = sorted(i for (k, i), s in stored.items() if k == key and s == "failed")
        retry = failed[: report.shortfall]
        items.extend(WorkItem(cell, i) for i in retry)
        next_index = max([i for (k, i) in stored if k == key] + [per_cell - 1]) + 1
        for offset in range(report.shortfall - len(retry)):
            items.append(WorkItem(cell, next_index + offset))
    return items


@dataclass(frozen=True)
class GenerationEstimate:
    """What a run would do and cost, before any request is sent."""

    cells: int
    requested: int
    stored: int
    calls: int
    estimated_input_tokens: int
    estimated_output_tokens: int
    estimated_cost_usd: float
    budget_usd: float
    batch: bool
    tokenizer: str = "cl100k_base (estimate)"

    @property
    def over_budget(self) -> bool:
        """Whether the estimate exceeds the plan's cap."""
        return self.estimated_cost_usd > self.budget_usd

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        data = asdict(self)
        data["over_budget"] = self.over_budget
        return data


def _estimate(
    spec: GenerationSpec, items: Sequence[WorkItem], *, stored: int, batch: bool
) -> GenerationEstimate:
    gen = spec.plan.generation
    # Items of one cell share all but one line of prompt; estimate one per cell and scale.
    per_cell_tokens: dict[str, int] = {}
    input_tokens = 0
    for item in items:
        key = cell_key(item.cell)
        if key not in per_cell_tokens:
            per_cell_tokens[key] = estimate_tokens(messages_for(spec, item.cell, item.index))
        input_tokens += per_cell_tokens[key]
    output_tokens = len(items) * gen.expected_output_tokens
    requested = len(spec.cells) * gen.examples_per_cell
    return GenerationEstimate(
        cells=len(spec.cells),
        requested=requested,
        stored=stored,
        calls=len(items),
        estimated_input_tokens=input_tokens,
        estimated_output_tokens=output_tokens,
        estimated_cost_usd=round(spec.cost(input_tokens, output_tokens, batch=batch), 6),
        budget_usd=gen.budget_usd,
        batch=batch,
    )


def dry_run(
    store: Store,
    plan_id: str,
    *,
    version: int | None = None,
    batch: bool = False,
    top_up: bool = False,
) -> GenerationEstimate:
    """Calls, estimated tokens and cost of generating what is not stored yet; sends nothing."""
    spec = GenerationSpec.load(store, plan_id, version)
    items = plan_items(store, spec, top_up=top_up)
    stored = sum(1 for s in _stored_status(store, spec.spec_hash).values() if s == "valid")
    return _estimate(spec, items, stored=stored, batch=batch)


# -- running -----------------------------------------------------------------------------------


@dataclass
class GenerationProgress:
    """Where a run stands; passed to the progress callback after every item."""

    total: int
    done: int = 0
    generated: int = 0
    failed: int = 0
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    valid_per_cell: Counter[str] = field(default_factory=Counter)

    @property
    def fraction(self) -> float:
        """Share of the run's items finished (0..1)."""
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[GenerationProgress], None]


@dataclass(frozen=True)
class GenerationReport:
    """What a run did: the figures the CLI prints and the page shows."""

    run_id: str
    plan_id: str
    spec_hash: str
    status: str
    cells: int
    requested: int
    generated: int
    failed: int
    new_valid: int
    new_failed: int
    api_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    estimated_cost_usd: float
    budget_usd: float
    batch: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the keys DESIGN.md names, and more)."""
        return asdict(self)


class _BudgetReached(Exception):
    pass


class _Abort(Exception):
    """Every item would fail the same way (bad key, unknown model): stop the run."""


class _GiveUp(Exception):
    """This item cannot be generated; record it as failed with the message."""


_describe = describe_error


def _without_keys(content: Any) -> Any:
    """A reply's text without this process's key values (a server may echo them into it)."""
    return remove_key_values(content) if isinstance(content, str) else content


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
        _store_examples(self.store, rows)
        self.last_flush = time.monotonic()

    async def _write_buffer(self) -> None:
        """Store the buffered rows in a worker thread: a write opens the store (tens of ms),
        which on the event loop would stall every request in flight. Rows stay in the buffer
        until this starts, so an interruption before then leaves them to ``flush``."""
        rows, self.buffer = self.buffer, []
        self.last_flush = time.monotonic()
        try:
            await asyncio.to_thread(_store_examples, self.store, rows)
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
            len(self.buffer) >= _FLUSH_EVERY
            or time.monotonic() - self.last_flush > _FLUSH_INTERVAL_S
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


def _start_run(
    store: Store, spec: GenerationSpec, *, mode: str, requested: int, estimate: float
) -> str:
    run_id = f"gen-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    with store.transaction() as con:
        con.execute(
            "INSERT INTO generation_runs (run_id, plan_id, plan_version, spec_hash, mode, status,"
            " started_at, requested, estimated_cost_usd, budget_usd)"
            " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            [
                run_id,
                spec.plan_id,
                spec.plan_version,
                spec.spec_hash,
                mode,
                datetime.now(UTC),
                requested,
                estimate,
                spec.plan.generation.budget_usd,
            ],
        )
    return run_id


def _nothing_to_generate(
    store: Store,
    spec: GenerationSpec,
    progress: GenerationProgress,
    estimate: GenerationEstimate,
    *,
    batch: bool,
    user: User,
) -> GenerationReport:
    """A run with every item stored already: recorded as done, with no call made."""
    mode = "batch" if batch else "online"
    run_id = _start_run(store, spec, mode=mode, requested=0, estimate=0.0)
    return _finish_run(
        store,
        spec,
        run_id,
        status="done",
        progress=progress,
        estimate=estimate,
        message="Every item is already stored; nothing to generate.",
        batch=batch,
        actor=user.name,
    )


def _finish_run(
    store: Store,
    spec: GenerationSpec,
    run_id: str,
    *,
    status: str,
    progress: GenerationProgress,
    estimate: GenerationEstimate,
    message: str,
    batch: bool,
    actor: str,
) -> GenerationReport:
    per_cell = spec.plan.generation.examples_per_cell
    grid_keys = {(cell_key(c), i) for c in spec.cells for i in range(per_cell)}
    with store.transaction() as con:
        # Read while the transaction holds the file open: no second open (tens of ms).
        stored = _stored_status(store, spec.spec_hash)
        generated = sum(1 for k in grid_keys if stored.get(k) == "valid")
        failed = sum(1 for k in grid_keys if stored.get(k) == "failed")
        con.execute(
            "UPDATE generation_runs SET status = ?, finished_at = ?, generated = ?, failed = ?,"
            " api_calls = ?, input_tokens = ?, output_tokens = ?, cost_usd = ?, message = ?"
            " WHERE run_id = ?",
            [
                status,
                datetime.now(UTC),
                progress.generated,
                progress.failed,
                progress.api_calls,
                progress.input_tokens,
                progress.output_tokens,
                progress.cost_usd,
                message,
                run_id,
            ],
        )
        record_audit(
            con,
            actor=actor,
            action="generation.run",
            target=f"{spec.plan_id}@v{spec.plan_version}",
            detail={
                "run_id": run_id,
                "status": status,
                "spec_hash": spec.spec_hash,
                "new_valid": progress.generated,
                "new_failed": progress.failed,
                "api_calls": progress.api_calls,
                "cost_usd": round(progress.cost_usd, 6),
            },
        )
    return GenerationReport(
        run_id=run_id,
        plan_id=spec.plan_id,
        spec_hash=spec.spec_hash,
        status=status,
        cells=len(spec.cells),
        requested=len(grid_keys),
        generated=generated,
        failed=failed,
        new_valid=progress.generated,
        new_failed=progress.failed,
        api_calls=progress.api_calls,
        input_tokens=progress.input_tokens,
        output_tokens=progress.output_tokens,
        cost_usd=round(progress.cost_usd, 6),
        estimated_cost_usd=estimate.estimated_cost_usd,
        budget_usd=spec.plan.generation.budget_usd,
        batch=batch,
        message=message,
    )


def _check_budget(estimate: GenerationEstimate) -> None:
    if estimate.over_budget:
        raise GenerationError(
            f"Estimated ${estimate.estimated_cost_usd:,.2f} for {estimate.calls} calls exceeds "
            f"the ${estimate.budget_usd:,.2f} budget cap, so the run did not start; raise "
            "generation.budget_usd on the Plan page or generate fewer examples per cell."
        )


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


# -- batch mode --------------------------------------------------------------------------------


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
        row: dict[str, Any] = {
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
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": 0.0,
        }
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
            row = {
                "spec_hash": spec.spec_hash,
                "cell_key": key,
                "item_index": index,
                "plan_id": spec.plan_id,
                "run_id": run_id,
                "cell": key,
                "status": "failed",
                "failure_reason": f"no result in batch {batch_id} (status {status})",
                "attempts": 1,
                "teacher_model": spec.teacher_model,
                "endpoint": endpoint_display,
                "template_hash": spec.template_hash,
                "temperature": gen.temperature,
                "generated_at": datetime.now(UTC),
            }
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
            f"The batch job could not be submitted or read ({_describe(exc)}): "
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


# -- diversity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellDiversity:
    """How varied one cell's valid examples are, and whether it reached its target."""

    cell: dict[str, str]
    cell_key: str
    target: int
    valid: int
    failed: int
    unique_exact: int
    unique: int
    length_mean: float
    length_std: float
    length_min: int
    length_max: int

    @property
    def unique_rate(self) -> float:
        """Share of valid examples left after removing exact and near-duplicates."""
        return self.unique / self.valid if self.valid else 0.0

    @property
    def exact_unique_rate(self) -> float:
        """Share of valid examples left after removing exact duplicates only."""
        return self.unique_exact / self.valid if self.valid else 0.0

    @property
    def length_cv(self) -> float:
        """Coefficient of variation of the answer lengths (spread relative to the mean)."""
        return self.length_std / self.length_mean if self.length_mean else 0.0

    @property
    def shortfall(self) -> int:
        """Unique examples missing to reach the target."""
        return max(0, self.target - self.unique)

    @property
    def under_target(self) -> bool:
        """Whether the cell holds fewer unique valid examples than the plan asks for."""
        return self.shortfall > 0


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def cell_diversity(
    store: Store, spec: GenerationSpec, *, threshold: float = 0.8
) -> list[CellDiversity]:
    """Per cell of the grid: valid and failed counts, unique rate (exact and near-duplicate,
    Jaccard ≥ ``threshold`` within the cell) and the spread of answer lengths."""
    from core.quality import near_duplicate_groups, near_duplicate_pairs

    rows = store.fetch_all(
        "SELECT cell_key, item_index, status, coalesce(question, '') || ' ' ||"
        " coalesce(answer, ''), length(coalesce(answer, ''))"
        " FROM generated_examples WHERE spec_hash = ?",
        [spec.spec_hash],
    )
    with store.connect() as con:
        con.execute(
            "CREATE TEMP TABLE __gen_texts AS SELECT cell_key || '#' || item_index AS id,"
            " coalesce(question, '') || ' ' || coalesce(answer, '') AS text"
            " FROM generated_examples WHERE spec_hash = ? AND status = 'valid'",
            [spec.spec_hash],
        )
        try:
            pairs = near_duplicate_pairs(con, "__gen_texts", threshold=threshold)
        finally:
            con.execute("DROP TABLE IF EXISTS __gen_texts")
    same_cell = [p for p in pairs if str(p.id_a).rsplit("#", 1)[0] == str(p.id_b).rsplit("#", 1)[0]]
    groups = near_duplicate_groups(same_cell)
    redundant = {i for i, root in groups.items() if i != root}
    by_cell: dict[str, list[tuple[int, str, str, int]]] = defaultdict(list)
    for key, index, status, text, length in rows:
        by_cell[str(key)].append((int(index), str(status), str(text), int(length)))
    target = spec.plan.generation.examples_per_cell
    reports: list[CellDiversity] = []
    for cell in spec.cells:
        key = cell_key(cell)
        entries = by_cell.get(key, [])
        valid = [e for e in entries if e[1] == "valid"]
        lengths = [e[3] for e in valid]
        texts: dict[str, int] = {}
        for index, _, text, _ in sorted(valid):
            texts.setdefault(_normalise(text), index)
        exact_keep = set(texts.values())
        unique = sum(1 for i in exact_keep if f"{key}#{i}" not in redundant)
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        var = sum((x - mean) ** 2 for x in lengths) / (len(lengths) - 1) if len(lengths) > 1 else 0
        reports.append(
            CellDiversity(
                cell=cell,
                cell_key=key,
                target=target,
                valid=len(valid),
                failed=sum(1 for e in entries if e[1] == "failed"),
                unique_exact=len(exact_keep),
                unique=unique,
                length_mean=mean,
                length_std=var**0.5,
                length_min=min(lengths, default=0),
                length_max=max(lengths, default=0),
            )
        )
    return reports


# -- closing the loop --------------------------------------------------------------------------


@dataclass(frozen=True)
class CellAllocation:
    """One cell: production's share against the training data's, and the next round's count."""

    cell: dict[str, str]
    production_count: float
    production_share: float
    training_count: int
    training_share: float
    suggested: int


@dataclass(frozen=True)
class LoopReport:
    """How production traffic spreads over the grid compared with the training data."""

    has_production_data: bool
    message: str
    axes_used: list[str]
    next_round_total: int
    cells: list[CellAllocation]


def _largest_remainder(weights: list[float], total: int) -> list[int]:
    whole = sum(weights)
    if whole <= 0 or total <= 0:
        return [0] * len(weights)
    exact = [w / whole * total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def production_vs_training(
    store: Store, spec: GenerationSpec, *, next_round_total: int | None = None
) -> LoopReport:
    """Compare the production interactions' spread over the axes (their labels, e.g. topic
    and difficulty) with the stored training examples, and suggest per-cell counts for the next
    round so that training data moves toward production's mix."""
    gen = spec.plan.generation
    total_next = next_round_total or len(spec.cells) * gen.examples_per_cell
    columns = interaction_columns(store)
    has_rows = bool(columns) and bool(
        (store.fetch_one("SELECT EXISTS (SELECT 1 FROM interactions)") or [False])[0]
    )
    if not has_rows:
        return LoopReport(
            False,
            "No production data yet: once interactions are ingested with labels on the grid's "
            "axes (e.g. topic, difficulty), this compares their spread with the training data.",
            [],
            total_next,
            [],
        )
    axes = [a for a in gen.axes if a.name in columns]
    if not axes:
        return LoopReport(
            False,
            "The production interactions carry no label named after a grid axis "
            f"({', '.join(a.name for a in gen.axes)}), so they cannot be placed on the grid.",
            [],
            total_next,
            [],
        )
    observed = traffic_by_axes(store, axes)
    total_prod = sum(observed.values())
    if total_prod == 0:
        return LoopReport(
            False,
            "No production interaction is labelled with the grid's axis values yet.",
            [a.name for a in axes],
            total_next,
            [],
        )
    missing = 1
    for axis in gen.axes:
        if axis not in axes:
            missing *= len(axis.values)
    counts = stored_counts(store, spec)
    total_train = sum(c.get("valid", 0) for c in counts.values())
    prod_counts: list[float] = []
    train_counts: list[int] = []
    for cell in spec.cells:
        prod_counts.append(observed.get(tuple(cell[a.name] for a in axes), 0) / missing)
        train_counts.append(counts.get(cell_key(cell), {}).get("valid", 0))
    shares = [c / total_prod for c in prod_counts]
    # Fill the gap: what each cell would hold after the round at production's mix, less what it
    # holds now; cells already over their share get nothing.
    needs = [
        max(0.0, s * (total_train + total_next) - t)
        for s, t in zip(shares, train_counts, strict=True)
    ]
    suggested = _largest_remainder(needs, total_next)
    cells = [
        CellAllocation(
            cell=cell,
            production_count=prod,
            production_share=share,
            training_count=train,
            training_share=train / total_train if total_train else 0.0,
            suggested=n,
        )
        for cell, prod, share, train, n in zip(
            spec.cells, prod_counts, shares, train_counts, suggested, strict=True
        )
    ]
    return LoopReport(
        True,
        f"{total_prod} labelled production interactions over {', '.join(a.name for a in axes)}.",
        [a.name for a in axes],
        total_next,
        cells,
    )


def runs(store: Store, plan_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The plan's generation runs, newest first."""
    return store.fetch_dicts(
        "SELECT run_id, mode, status, started_at, finished_at, requested, generated, failed,"
        " api_calls, cost_usd, estimated_cost_usd, message FROM generation_runs"
        " WHERE plan_id = ? ORDER BY started_at DESC LIMIT ?",
        [plan_id, limit],
    )
