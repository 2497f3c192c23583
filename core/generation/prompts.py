"""The messages of one item: the system prompt, the user prompt rendered from the plan's template,
the correction turns after a refused reply, and the ``response_format`` of a request."""

from __future__ import annotations

import json
from typing import Any, Literal

from core.errors import GenerationError, UserTemplateError
from core.generation.schemas import _without_keys, response_json_schema
from core.generation.spec import GenerationSpec
from core.templating import render_user_template


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
