"""The log contract as people read it: which columns a file needs, what each means, an example
line and a sample file to try, all derived from the field specs that ingest validates against
(core.ingest), so the uploader, the README and the validation cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.ingest import (
    CONSENT_FIELDS,
    EVAL_ITEM_FIELDS,
    INTERACTION_FIELDS,
    FieldSpec,
    IngestResult,
    Kind,
)
from core.settings import PROJECT_ROOT

__all__ = [
    "FIELD_MEANINGS",
    "SAMPLE_FILES",
    "ContractField",
    "contract",
    "contract_markdown",
    "example_line",
    "load_outcome",
]

_SPECS: dict[Kind, tuple[FieldSpec, ...]] = {
    "interactions": INTERACTION_FIELDS,
    "consent": CONSENT_FIELDS,
    "eval-items": EVAL_ITEM_FIELDS,
}

FIELD_MEANINGS: dict[str, str] = {
    "interaction_id": "unique id; one already stored is skipped and counted as a duplicate",
    "ts": "ISO-8601 time; without an offset it is read as UTC",
    "user_id": "pseudonymous user id",
    "variant": "the A/B arm, e.g. control or treatment",
    "model": "the model that answered",
    "prompt": "the user's message (eval items: the question asked)",
    "response": "the model's answer",
    "system": "the system prompt",
    "feedback": "explicit rating",
    "accepted": "implicit acceptance: the answer was copied or applied",
    "latency_ms": "time to answer, in milliseconds",
    "input_tokens": "prompt tokens",
    "output_tokens": "answer tokens",
    "cost_usd": "cost of the call, in USD",
    "topic": "label on the generation grid's topic axis, when known",
    "difficulty": "label on the generation grid's difficulty axis, when known",
    "metadata": "anything else, kept as JSON",
    "scope": "what the user consents to",
    "action": "granted or withdrawn",
    "policy_version": "version of the policy text the user saw",
    "source": "the consent flow that recorded it",
    "item_id": "unique id of the eval item",
    "eval_set": "the eval set the item belongs to",
    "reference": "the expected answer or tests",
    "labels": "slice labels beyond topic and difficulty, as a JSON object",
}

_TYPE_WORDS = {
    "id": "text",
    "text": "text",
    "timestamp": "timestamp",
    "bool": "true / false",
    "int": "integer",
    "number": "number",
    "object": "JSON object",
    "enum": "one of",
}

SAMPLE_FILES: dict[Kind, Path] = {
    "interactions": PROJECT_ROOT / "data" / "sample_interactions.jsonl",
    "consent": PROJECT_ROOT / "data" / "sample_consent.jsonl",
}
"""Small files to try a load with; each is accepted whole (a test keeps them so)."""


@dataclass(frozen=True)
class ContractField:
    """One column of a log file as the uploader and the README show it."""

    name: str
    type: str
    required: bool
    meaning: str


def contract(kind: Kind) -> list[ContractField]:
    """The columns a file of ``kind`` holds, required ones first, in the order ingest reads."""
    specs = sorted(_SPECS[kind], key=lambda s: not s.required)
    return [
        ContractField(
            name=s.name,
            type=_TYPE_WORDS[s.type] + (": " + ", ".join(s.values) if s.values else ""),
            required=s.required,
            meaning=FIELD_MEANINGS[s.name],
        )
        for s in specs
    ]


def contract_markdown(kind: Kind) -> str:
    """The contract of ``kind`` as a Markdown table (the README and the uploader show it)."""
    lines = ["| column | type | required | meaning |", "| --- | --- | --- | --- |"]
    for f in contract(kind):
        lines.append(f"| `{f.name}` | {f.type} | {'yes' if f.required else 'no'} | {f.meaning} |")
    return "\n".join(lines)


def example_line(kind: Kind) -> str:
    """The first line of the sample file of ``kind``: a record that loads as it stands."""
    path = SAMPLE_FILES.get(kind)
    if path is None:
        return ""
    with path.open(encoding="utf-8") as handle:
        return handle.readline().strip()


Outcome = Literal["success", "warning", "info"]


def load_outcome(result: IngestResult) -> tuple[Outcome, str]:
    """How a load reads to the person who made it: a success only when every row was taken;
    a warning when rows were refused, and one that says nothing was loaded when none was."""
    if result.already_loaded:
        return "info", result.summary
    if result.accepted == 0:
        return "warning", (
            f"Nothing was loaded from {result.file_name}: {result.summary} The quarantine "
            "says why each row was refused; the log contract lists the columns a file needs."
        )
    if result.rejected:
        return "warning", (
            f"{result.summary} {result.rejected:,} row(s) were refused: see the quarantine."
        )
    return "success", result.summary
