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

One module per concept, each importing only the ones above it:

    schemas      the output schemas (Pydantic) and the reading of a reply
    spec         GenerationSpec (the hashes that key an item), cell keys, WorkItem
    prompts      the messages of one item and the response_format of a request
    storage      generated examples in the store: written and read back per spec
    diversity    per cell: exact and near-duplicates, answer lengths, the shortfall
    cost         the pending items, the estimate (the dry run), the budget cap
    records      a run's row in generation_runs, its progress and its report
    runner       an online run: concurrency, retries, validation, periodic writes
    batch        a run as an OpenAI batch job at half price
    allocation   production traffic on the grid against the training data

This package is their public face: import from ``core.generation``.
"""

from __future__ import annotations

from core.generation.allocation import CellAllocation, LoopReport, production_vs_training
from core.generation.batch import BatchSubmission, batch_requests_jsonl, run_batch
from core.generation.cost import GenerationEstimate, dry_run, plan_items
from core.generation.diversity import CellDiversity, cell_diversity
from core.generation.prompts import (
    correction_messages,
    messages_for,
    render_prompt,
    response_format,
    system_prompt,
)
from core.generation.records import GenerationProgress, GenerationReport, ProgressCallback, runs
from core.generation.runner import _FLUSH_EVERY as _FLUSH_EVERY
from core.generation.runner import _FLUSH_INTERVAL_S as _FLUSH_INTERVAL_S
from core.generation.runner import run_generation
from core.generation.schemas import (
    OUTPUT_SCHEMAS,
    QA,
    CodingQA,
    ReplyInvalid,
    SupportQA,
    parse_reply,
    response_json_schema,
)
from core.generation.spec import BATCH_DISCOUNT, GenerationSpec, WorkItem, cell_key
from core.generation.storage import _store_examples as _store_examples
from core.generation.storage import (
    list_examples,
    list_failures,
    stored_counts,
    write_examples,
)
from core.llm import backoff_delay
from core.tokens import estimate_tokens

__all__ = [
    "BATCH_DISCOUNT",
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
    "ProgressCallback",
    "ReplyInvalid",
    "SupportQA",
    "WorkItem",
    "backoff_delay",
    "batch_requests_jsonl",
    "cell_diversity",
    "cell_key",
    "correction_messages",
    "dry_run",
    "estimate_tokens",
    "list_examples",
    "list_failures",
    "messages_for",
    "parse_reply",
    "plan_items",
    "production_vs_training",
    "render_prompt",
    "response_format",
    "response_json_schema",
    "run_batch",
    "run_generation",
    "runs",
    "stored_counts",
    "system_prompt",
    "write_examples",
]
