"""The output schemas a teacher's reply must match, and the reading of a reply.

A schema is a Pydantic model, chosen by the plan's ``generation.output_schema``
(``OUTPUT_SCHEMAS``); the same model gives the JSON schema sent as ``response_format``. A reply
loses this process's key values before it is read, stored or sent back to the teacher.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.secrets import remove_key_values


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


def _without_keys(content: Any) -> Any:
    """A reply's text without this process's key values (a server may echo them into it)."""
    return remove_key_values(content) if isinstance(content, str) else content
