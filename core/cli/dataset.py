"""``dataset export|list|compare``: dataset versions out of the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.cli._base import Outcome, noun_group, plan_filter_option
from core.cli._output import table

if TYPE_CHECKING:
    from core.datasets import ExportFormat, Split
    from core.store import Store

command = noun_group("dataset")
EXPORT_FORMATS = ("openai-jsonl", "parquet")  # core.datasets.ExportFormat
EXPORT_SPLITS = ("train", "validation", "all")  # core.datasets.Split


@command.leaf(
    "export",
    help="write a dataset version (OpenAI chat JSONL or Parquet)",
    description="Writes a dataset version; the JSONL is checked as OpenAI checks a "
    "fine-tuning upload first. Exporting twice gives identical bytes.",
)
@click.argument("version", metavar="VERSION")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="the file to write",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default="openai-jsonl",
    show_default=True,
    help="file format",
)
@click.option(
    "--split", type=click.Choice(EXPORT_SPLITS), default="train", show_default=True, help="rows"
)
def export(store: Store, version: str, out: Path, fmt: ExportFormat, split: Split) -> Outcome:
    from core.datasets import export_dataset

    result = export_dataset(store, version, out, fmt=fmt, split=split)
    text = f"Wrote {result.rows} {split} rows of {version} to {result.path} "
    text += f"(sha256 {result.sha256[:12]}…)."
    if result.total_tokens is not None:
        text += (
            f" Format check passed: {result.total_tokens:,} tokens ({result.tokenizer}; "
            f"{result.system_tokens or 0:,} of them system messages), largest example "
            f"{result.max_example_tokens:,} of {result.token_limit:,}; "
            f"~${result.estimated_training_cost_usd:,.2f} to train for {result.epochs} epochs."
        )
    return Outcome(result.to_dict(), text)


@command.leaf("list", help="list dataset versions")
@plan_filter_option
def list_versions(store: Store, plan: str | None) -> Outcome:
    from core.datasets import list_versions

    versions = list_versions(store, plan)
    rows = [
        {
            "version_id": v.version_id,
            "cycle": v.cycle,
            "rows": v.rows_now,
            "production_rows": v.production_rows,
            "synthetic_rows": v.synthetic_rows,
            "sha256": v.sha256,
            "parent_version": v.parent_version,
            "created_at": v.created_at,
            "erased_rows": v.erased_rows,
        }
        for v in versions
    ]
    columns = (
        "version_id",
        "cycle",
        "rows",
        "production_rows",
        "synthetic_rows",
        "erased_rows",
        "sha256",
        "parent_version",
    )
    shown = [{**r, "sha256": v.sha256[:12]} for r, v in zip(rows, versions, strict=True)]
    text = table(shown, columns) if rows else ""
    return Outcome({"versions": rows}, text or "No dataset version yet: run `cycle run`.")


@command.leaf("compare", help="rows added and removed per cell between two versions")
@click.argument("old")
@click.argument("new")
def compare(store: Store, old: str, new: str) -> Outcome:
    from core.datasets import compare_versions

    diff = compare_versions(store, old, new)
    cells = [c.to_row() for c in diff.cells]
    columns = tuple(cells[0]) if cells else ()
    lines = [table(cells, columns)] if cells else []
    lines.append(
        f"{diff.old} → {diff.new}: {diff.kept} carried, +{diff.added} added, −{diff.removed}"
        f" removed ({diff.retired} retired under the cap, {diff.rechecked} failed the recheck)."
    )
    return Outcome(diff.to_dict(), "\n".join(lines))
