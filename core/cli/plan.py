"""``plan lint|import|export|list``: plan files in and out of the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.cli._base import (
    Outcome,
    default_plan_id,
    local_user,
    noun_group,
    plan_option,
    plan_version_option,
)
from core.cli._output import lint_lines, table
from core.errors import PlanError

if TYPE_CHECKING:
    from core.store import Store

command = noun_group("plan")
PLAN_FILE = click.Path(dir_okay=False, path_type=Path)


@command.leaf("lint", help="check a plan file", store=False)
@click.argument("file", type=PLAN_FILE)
def lint(file: Path) -> Outcome:
    from core.lint import lint_plan
    from core.plan_files import read_plan_file

    report = lint_plan(read_plan_file(file))
    summary = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    return Outcome(
        report.to_dict(),
        "\n".join([*lint_lines(report), summary]),
        exit_code=0 if report.ready else 1,
    )


@command.leaf("import", help="store a plan file")
@click.argument("file", type=PLAN_FILE)
@click.option("--plan", metavar="ID", help="store as the next version of this plan id")
@click.option("--note", help="change note of the new version")
def import_plan(store: Store, file: Path, plan: str | None, note: str | None) -> Outcome:
    from core.lint import lint_plan
    from core.plan_files import read_plan_file
    from core.plan_versions import save_plan_version

    stored = read_plan_file(file)
    note = note or f"Imported from {file.name}"
    plan_id, version = save_plan_version(store, stored, note=note, user=local_user(), plan_id=plan)
    report = lint_plan(stored)
    state = "ready" if report.ready else f"draft, {len(report.errors)} lint error(s)"
    return Outcome(
        {"plan_id": plan_id, "version": version, "ready": report.ready},
        f"Stored plan '{plan_id}' version {version} ({state}).",
    )


@command.leaf("export", help="write a plan to a file")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="output file; .json or .yaml picks the format",
)
@plan_option
@plan_version_option
def export(store: Store, out: Path, plan: str | None, plan_version: int | None) -> Outcome:
    from core.paths import check_output_path
    from core.plan_files import dump_plan, plan_format_for
    from core.plan_versions import load_plan

    target = check_output_path(out)
    fmt = plan_format_for(str(out))
    plan_id = plan or default_plan_id(store)
    stored, version = load_plan(store, plan_id, plan_version)
    try:
        target.write_text(dump_plan(stored, fmt), encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"{target}: cannot be written ({exc.strerror}).") from None
    return Outcome(
        {"path": str(target), "plan_id": plan_id, "version": version},
        f"Wrote plan '{plan_id}' version {version} to {target}.",
    )


@command.leaf("list", help="list stored plans")
def list_plans(store: Store) -> Outcome:
    from core.plan_versions import list_plans

    plans = list_plans(store)
    rows = [
        {
            "plan_id": p.plan_id,
            "name": p.name,
            "latest_version": p.latest_version,
            "ready": p.ready,
            "demo": p.is_demo,
        }
        for p in plans
    ]
    text = table(rows, ("plan_id", "latest_version", "ready", "demo", "name")) if rows else ""
    return Outcome({"plans": rows}, text or "No plans yet.")
