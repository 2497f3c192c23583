"""``data ingest|rejects|forget|pii-redact``: logs in, quarantined rows, erasure, redaction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.cli._base import Outcome, cycle_option, local_user, noun_group
from core.cli._output import table
from core.labels import label, show

if TYPE_CHECKING:
    from core.ingest import Kind
    from core.store import Store

command = noun_group("data")
INGEST_KINDS = ("interactions", "consent", "eval-items")  # core.ingest.Kind
FILE = click.Path(dir_okay=False, path_type=Path)


@command.leaf("ingest", help="load interactions, consent events or eval items")
@click.argument("file", type=FILE)
@click.option(
    "--kind",
    type=click.Choice(INGEST_KINDS),
    default="interactions",
    show_default=True,
    help="what the file holds",
)
@cycle_option(required=False)
def ingest(store: Store, file: Path, kind: Kind, cycle: int | None) -> Outcome:
    from core.ingest import ingest_file

    result = ingest_file(store, file, user=local_user(), kind=kind, cycle=cycle)
    return Outcome(result.to_dict(), result.summary)


@command.leaf("rejects", help="list the quarantined rows of a batch")
@click.option("--batch", required=True, metavar="ID", help="batch id printed by data ingest")
@click.option("--raw", is_flag=True, help="also print each raw line (unredacted; audited)")
def rejects(store: Store, batch: str, raw: bool) -> Outcome:
    from core.ingest_reads import batch_rejects

    rows = batch_rejects(store, batch, user=local_user(), reveal_raw=raw)
    columns = ("line", "reason", "raw") if raw else ("line", "reason")
    text = table(rows, columns) if rows else ""
    return Outcome(
        {"batch_id": batch, "rows": rows}, text or f"Batch {batch} has no rejected rows."
    )


@command.leaf("forget", help="erase a user's data everywhere it was copied")
@click.argument("user_id")
def forget(store: Store, user_id: str) -> Outcome:
    from core.consent import forget_user

    result = forget_user(store, user_id, by=local_user())
    tables = show(dict(sorted(result.rows_deleted.items())))
    lines = [
        f"Forgot user {result.user_id}: {result.interactions_deleted} interactions, "
        f"{result.dataset_rows_deleted} dataset rows, {result.eval_items_deleted} eval items "
        f"({tables}); the store file was rewritten in {result.rewrite_seconds:.1f} s, so none "
        "of their bytes is left in it. The audit log holds a keyed hash only."
    ]
    if result.exports or result.backups or result.models:
        lines.append("Beyond the store's reach (act on these):")
    lines += [
        f"  exported file {e['path']} ({e['kind']}, {e['dataset_version']})" for e in result.exports
    ]
    lines += [f"  backup {b['target']} ({b['at']})" for b in result.backups]
    lines += [
        f"  model {m['fine_tuned_model'] or '(not finished)'} of job {m['job_id']}, trained on "
        f"{m['dataset_version']} ({label(m['status'])})"
        for m in result.models
    ]
    return Outcome(result.to_dict(), "\n".join(lines))


@command.leaf("pii-redact", help="redact the text field of each JSONL line")
@click.option("--in", "source", type=FILE, required=True, help="input JSONL (.gz allowed)")
@click.option("--out", "target", type=FILE, required=True, help="output JSONL")
def pii_redact(store: Store, source: Path, target: Path) -> Outcome:
    # The store is never opened here; naming it makes its file one that no output may
    # overwrite (core.paths.managed_store), as for every command that takes --db.
    from core.privacy import redact_file

    rows, found = redact_file(source, target)
    summary = ", ".join(f"{n} {t}" for t, n in sorted(found.items())) or "no PII found"
    return Outcome(
        {"rows": rows, "found": found, "path": str(target)},
        f"Redacted {rows} rows into {target}: {summary}.",
    )
