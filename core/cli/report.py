"""``report plan|privacy|cycle|model-card|datasheet``: the documents reviewers read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.cli._base import (
    Outcome,
    cycle_option,
    default_plan_id,
    document_options,
    noun_group,
    plan_option,
    plan_version_option,
)
from core.errors import DocumentError

if TYPE_CHECKING:
    from core.documents import Format
    from core.store import Store

command = noun_group("report")


def document_format(fmt: str | None, out: Path) -> Format:
    """--format, else the extension of --out; one of md, html, pdf."""
    chosen = (fmt or out.suffix.lstrip(".")).lower()
    known: dict[str, Format] = {"md": "md", "markdown": "md", "html": "html", "pdf": "pdf"}
    if chosen in known:
        return known[chosen]
    raise DocumentError(f"Unknown format '{chosen or out.name}'; give --format md, html or pdf.")


def _plan_document(
    name: str, store: Store, out: Path, fmt: str | None, plan: str | None, version: int | None
) -> Outcome:
    from core.documents import DOCUMENTS, generated_at_now, write_document
    from core.plan_versions import load_plan

    chosen = document_format(fmt, out)
    plan_id = plan or default_plan_id(store)
    stored, version = load_plan(store, plan_id, version)
    written = write_document(
        name,
        chosen,
        out,
        generated_at=generated_at_now(),
        plan=stored,
        plan_id=plan_id,
        version=version,
        store=store,
    )
    title = DOCUMENTS[name].title
    return Outcome(
        {"path": str(written), "plan_id": plan_id, "version": version, "format": chosen},
        f"Wrote {title} ({chosen}) of plan '{plan_id}' v{version} to {written}.",
    )


@command.leaf("plan", help="render the plan document (Markdown, HTML or PDF)")
@document_options
@plan_option
@plan_version_option
def plan_document(
    store: Store, out: Path, fmt: str | None, plan: str | None, plan_version: int | None
) -> Outcome:
    return _plan_document("plan", store, out, fmt, plan, plan_version)


@command.leaf("privacy", help="render the privacy review packet of a plan")
@document_options
@plan_option
@plan_version_option
def privacy(
    store: Store, out: Path, fmt: str | None, plan: str | None, plan_version: int | None
) -> Outcome:
    return _plan_document("privacy", store, out, fmt, plan, plan_version)


@command.leaf("cycle", help="render a cycle's report: funnel, gates, A/B, decision")
@cycle_option(required=True)
@document_options
@plan_option
def cycle(store: Store, cycle: int, out: Path, fmt: str | None, plan: str | None) -> Outcome:
    from core.documents import generated_at_now, write_document

    chosen = document_format(fmt, out)
    plan_id = plan or default_plan_id(store)
    written = write_document(
        "cycle",
        chosen,
        out,
        generated_at=generated_at_now(),
        store=store,
        plan_id=plan_id,
        cycle=cycle,
    )
    return Outcome(
        {"path": str(written), "plan_id": plan_id, "cycle": cycle, "format": chosen},
        f"Wrote the cycle report ({chosen}) of plan '{plan_id}' cycle {cycle} to {written}.",
    )


@command.leaf(
    "model-card",
    help="render the model card of a cycle's candidate: evals by slice, decision, use, limits",
)
@cycle_option(required=True)
@document_options
@plan_option
def model_card(store: Store, cycle: int, out: Path, fmt: str | None, plan: str | None) -> Outcome:
    from core.documents import generated_at_now, write_document
    from core.promotion import require_candidate

    chosen = document_format(fmt, out)
    plan_id = plan or default_plan_id(store)
    model = str(require_candidate(store, plan_id, cycle)["model"])
    written = write_document(
        "model-card",
        chosen,
        out,
        generated_at=generated_at_now(),
        store=store,
        plan_id=plan_id,
        cycle=cycle,
    )
    return Outcome(
        {
            "path": str(written),
            "plan_id": plan_id,
            "cycle": cycle,
            "model": model,
            "format": chosen,
        },
        f"Wrote the model card ({chosen}) of {model}, plan '{plan_id}' cycle {cycle}, "
        f"to {written}.",
    )


@command.leaf("datasheet", help="render the datasheet of a dataset version")
@click.argument("version_id", metavar="VERSION")
@document_options
def datasheet(store: Store, version_id: str, out: Path, fmt: str | None) -> Outcome:
    from core.documents import generated_at_now, write_document

    chosen = document_format(fmt, out)
    written = write_document(
        "datasheet",
        chosen,
        out,
        generated_at=generated_at_now(),
        store=store,
        version_id=version_id,
    )
    return Outcome(
        {"path": str(written), "version_id": version_id, "format": chosen},
        f"Wrote the datasheet ({chosen}) of {version_id} to {written}.",
    )
