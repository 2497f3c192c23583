"""``store backup|restore|retention``: the store file as a whole."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.cli._base import (
    IsoDateTime,
    Outcome,
    default_plan_id,
    local_user,
    noun_group,
    plan_option,
)

if TYPE_CHECKING:
    from core.store import Store

command = noun_group("store")
DIRECTORY = click.Path(file_okay=False, path_type=Path)


@command.leaf("backup", help="write every table to a new directory, with a manifest")
@click.argument("directory", type=DIRECTORY)
def backup(store: Store, directory: Path) -> Outcome:
    from core.backup import backup_store

    result = backup_store(store, directory, user=local_user())
    total = sum(result.tables.values())
    return Outcome(
        result.to_dict(),
        f"Backed up {store.path} ({len(result.tables)} tables, {total:,} rows, schema "
        f"{result.schema_version}) to {result.path}"
        + (", manifest signed with FLYWHEEL_BACKUP_KEY." if result.signed else "."),
    )


@command.leaf(
    "restore",
    help="rebuild the store (--db) from a backup directory; runs nothing from the backup",
)
@click.argument("directory", type=DIRECTORY)
@click.option("--replace", is_flag=True, help="overwrite the store at --db if it exists")
def restore(store: Store, directory: Path, replace: bool) -> Outcome:
    from core.backup import restore_store

    result = restore_store(directory, store.path, user=local_user(), replace=replace)
    total = sum(result.tables.values())
    return Outcome(
        result.to_dict(),
        f"Restored {total:,} rows in {len(result.tables)} tables from {directory} into "
        f"{result.path} (schema {result.schema_version})"
        + ("; manifest signature verified." if result.signed else "."),
    )


@command.leaf(
    "retention", help="delete raw interactions older than the plan allows, keeping daily metrics"
)
@plan_option
@click.option("--dry-run", is_flag=True, help="count, delete nothing")
@click.option(
    "--now", type=IsoDateTime(), help="ISO date-time to measure retention from (default: now)"
)
def retention(store: Store, plan: str | None, dry_run: bool, now: datetime | None) -> Outcome:
    from core.plan_versions import load_plan
    from core.retention import enforce_retention

    plan_id = plan or default_plan_id(store)
    stored, _ = load_plan(store, plan_id)
    result = enforce_retention(store, stored, user=local_user(), now=now, dry_run=dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    return Outcome(
        {"plan_id": plan_id, **result.to_dict()},
        f"{verb} {result.interactions_deleted:,} interactions older than "
        f"{result.retention_days} days (before {result.cutoff[:10]}); "
        f"{result.days_rolled_up} day(s) kept as daily metrics; "
        f"{result.quarantine_lines_cleared} quarantined raw line(s) cleared.",
    )
