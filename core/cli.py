"""The command line, ``python -m core``: flags in, core calls, one JSON object or text out.

Exit status: 0 done; 1 a check failed (lint errors, a failed gate); 2 bad input or usage,
with one line on stderr and nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.consent import forget_user
from core.cycles import run_cycle, run_summary, why_dropped
from core.datasets import EXPORT_FORMATS, SPLITS, compare_versions, export_dataset, list_versions
from core.demo import load_demo
from core.documents import DOCUMENTS, FORMATS, generated_at_now, write_document
from core.errors import DocumentError, FlywheelError, PlanError
from core.generation import GenerationSpec, dry_run, run_batch, run_generation, stored_counts
from core.ingest import KINDS, batch_rejects, ingest_file
from core.lint import LintReport, lint_plan
from core.plan_files import dump_plan, plan_format_for, read_plan_file
from core.plan_versions import list_plans, load_plan, save_plan_version
from core.privacy import redact_file
from core.settings import default_db_path, get_setting
from core.store import Store

__all__ = ["build_parser", "main"]


@dataclass
class Outcome:
    """What a command produced: the JSON payload, the text for people, the exit status."""

    data: dict[str, Any]
    text: str
    exit_code: int = 0
    lines: list[str] = field(default_factory=list)


Handler = Callable[[argparse.Namespace, Store], Outcome]


def _actor() -> str:
    return str(get_setting("actor"))


def default_plan_id(store: Store) -> str:
    """The plan a command acts on when --plan is not given: the newest non-demo plan first."""
    plans = list_plans(store)
    if not plans:
        raise PlanError(
            "There is no plan in this store; run `python -m core demo` or `plan import FILE`."
        )
    return plans[-1].plan_id if not plans[0].is_demo else plans[0].plan_id


def _lint_lines(report: LintReport) -> list[str]:
    return [f"{f.severity}: {f.path}: {f.message} [{f.code}]" for f in report.findings]


# -- commands ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, store: Store) -> Outcome:
    summary = load_demo(store, seed=args.seed)
    verb = "Loaded" if summary.created else "Already loaded:"
    return Outcome(
        summary.to_dict(),
        f"{verb} the demo workspace in {store.path}: plan '{summary.plan_id}', "
        f"{summary.cycles} cycles, {summary.interactions} interactions.",
    )


def cmd_plan_lint(args: argparse.Namespace, store: Store) -> Outcome:
    report = lint_plan(read_plan_file(args.file))
    summary = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    return Outcome(
        report.to_dict(),
        "\n".join([*_lint_lines(report), summary]),
        exit_code=0 if report.ready else 1,
    )


def cmd_plan_import(args: argparse.Namespace, store: Store) -> Outcome:
    plan = read_plan_file(args.file)
    note = args.note or f"Imported from {Path(args.file).name}"
    plan_id, version = save_plan_version(store, plan, note=note, author=_actor(), plan_id=args.plan)
    report = lint_plan(plan)
    state = "ready" if report.ready else f"draft, {len(report.errors)} lint error(s)"
    return Outcome(
        {"plan_id": plan_id, "version": version, "ready": report.ready},
        f"Stored plan '{plan_id}' version {version} ({state}).",
    )


def cmd_plan_export(args: argparse.Namespace, store: Store) -> Outcome:
    fmt = plan_format_for(args.out)
    plan_id = args.plan or default_plan_id(store)
    plan, version = load_plan(store, plan_id, args.version)
    out = Path(args.out)
    try:
        out.write_text(dump_plan(plan, fmt), encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"{out}: cannot be written ({exc.strerror}).") from None
    return Outcome(
        {"path": str(out), "plan_id": plan_id, "version": version},
        f"Wrote plan '{plan_id}' version {version} to {out}.",
    )


def _document_format(args: argparse.Namespace) -> str:
    """--format, else the extension of --out; one of md, html, pdf."""
    fmt = (args.format or Path(args.out).suffix.lstrip(".")).lower()
    if fmt == "markdown":
        fmt = "md"
    if fmt not in FORMATS:
        raise DocumentError(
            f"Unknown format '{fmt or Path(args.out).name}'; give --format md, html or pdf."
        )
    return fmt


def _render_plan_document(name: str, args: argparse.Namespace, store: Store) -> Outcome:
    fmt = _document_format(args)
    plan_id = args.plan or default_plan_id(store)
    plan, version = load_plan(store, plan_id, args.version)
    out = write_document(
        name,
        fmt,
        Path(args.out),
        generated_at=generated_at_now(),
        plan=plan,
        plan_id=plan_id,
        version=version,
    )
    title = DOCUMENTS[name].title
    return Outcome(
        {"path": str(out), "plan_id": plan_id, "version": version, "format": fmt},
        f"Wrote {title} ({fmt}) of plan '{plan_id}' v{version} to {out}.",
    )


def cmd_plan_render(args: argparse.Namespace, store: Store) -> Outcome:
    return _render_plan_document("plan", args, store)


def cmd_report_privacy(args: argparse.Namespace, store: Store) -> Outcome:
    return _render_plan_document("privacy", args, store)


def cmd_plan_list(args: argparse.Namespace, store: Store) -> Outcome:
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
    text = "\n".join(
        f"{p.plan_id}  v{p.latest_version}  {'ready' if p.ready else 'not ready'}"
        f"{'  (demo)' if p.is_demo else ''}  {p.name}"
        for p in plans
    )
    return Outcome({"plans": rows}, text or "No plans yet.")


def cmd_generate(args: argparse.Namespace, store: Store) -> Outcome:
    plan_id = args.plan or default_plan_id(store)
    if args.dry_run:
        estimate = dry_run(store, plan_id, batch=args.batch, top_up=args.top_up)
        spec = GenerationSpec.load(store, plan_id)
        counts = stored_counts(store, spec)
        data = {
            "plan_id": plan_id,
            "dry_run": True,
            "cells": estimate.cells,
            "requested": estimate.requested,
            "generated": sum(c.get("valid", 0) for c in counts.values()),
            "failed": sum(c.get("failed", 0) for c in counts.values()),
            "api_calls": 0,
            **estimate.to_dict(),
        }
        verdict = "over the budget cap: the run would not start" if estimate.over_budget else "ok"
        text = (
            f"Plan '{plan_id}': {estimate.cells} cells, {estimate.requested} items, "
            f"{estimate.stored} stored; {estimate.calls} calls, "
            f"~{estimate.estimated_input_tokens:,} input + "
            f"~{estimate.estimated_output_tokens:,} output tokens ({estimate.tokenizer}), "
            f"estimated ${estimate.estimated_cost_usd:,.4f} of ${estimate.budget_usd:,.2f} "
            f"budget ({verdict})."
        )
        return Outcome(
            data,
            text,
            exit_code=1 if estimate.over_budget else 0,
        )
    if args.batch:
        report = run_batch(store, plan_id, top_up=args.top_up)
    else:
        report = run_generation(store, plan_id, top_up=args.top_up, concurrency=args.concurrency)
    data = {"dry_run": False, **report.to_dict()}
    return Outcome(
        data,
        f"Plan '{plan_id}': {report.cells} cells; {report.generated}/{report.requested} valid, "
        f"{report.failed} failed; {report.api_calls} API calls, ${report.cost_usd:,.4f} spent "
        f"(estimated ${report.estimated_cost_usd:,.4f}). {report.message}",
        exit_code=1 if report.status == "budget_stop" else 0,
    )


def cmd_ingest(args: argparse.Namespace, store: Store) -> Outcome:
    result = ingest_file(store, args.file, kind=args.kind, cycle=args.cycle, actor=_actor())
    return Outcome(result.to_dict(), result.summary)


def cmd_rejects(args: argparse.Namespace, store: Store) -> Outcome:
    rows = batch_rejects(store, args.batch, reveal_raw=args.raw, actor=_actor())
    text = "\n".join(
        f"line {r['line']}: {r['reason']}" + (f"\n    {r['raw']}" if args.raw else "") for r in rows
    )
    return Outcome(
        {"batch_id": args.batch, "rows": rows},
        text or f"Batch {args.batch} has no rejected rows.",
    )


def cmd_forget(args: argparse.Namespace, store: Store) -> Outcome:
    result = forget_user(store, args.user_id, actor=_actor())
    tables = ", ".join(f"{t} {n}" for t, n in sorted(result.rows_deleted.items()))
    return Outcome(
        result.to_dict(),
        f"Forgot user {result.user_id}: {result.interactions_deleted} interactions, "
        f"{result.dataset_rows_deleted} dataset rows ({tables}). The audit log holds a salted "
        "hash only.",
    )


def cmd_pii_redact(args: argparse.Namespace, store: Store) -> Outcome:
    rows, found = redact_file(args.input, args.output)
    summary = ", ".join(f"{n} {t}" for t, n in sorted(found.items())) or "no PII found"
    return Outcome(
        {"rows": rows, "found": found, "path": str(args.output)},
        f"Redacted {rows} rows into {args.output}: {summary}.",
    )


def cmd_cycle_run(args: argparse.Namespace, store: Store) -> Outcome:
    plan_id = args.plan or default_plan_id(store)
    result = run_cycle(store, plan_id, args.cycle, actor=_actor())
    return Outcome(result.to_dict(), run_summary(result))


def cmd_cycle_why(args: argparse.Namespace, store: Store) -> Outcome:
    answers = why_dropped(store, args.interaction_id, plan_id=args.plan)
    text = "\n".join(f"cycle {a['cycle']} ({a['run_id']}): {a['why']}" for a in answers)
    return Outcome(
        {"interaction_id": args.interaction_id, "runs": answers},
        text or f"No cycle has run yet; {args.interaction_id} is stored and waits for one.",
    )


def cmd_dataset_export(args: argparse.Namespace, store: Store) -> Outcome:
    result = export_dataset(store, args.version, args.out, fmt=args.format, split=args.split)
    text = f"Wrote {result.rows} {args.split} rows of {args.version} to {result.path} "
    text += f"(sha256 {result.sha256[:12]}…)."
    if result.total_tokens is not None:
        text += (
            f" Format check passed: {result.total_tokens:,} tokens ({result.tokenizer}), "
            f"largest example {result.max_example_tokens:,} of {result.token_limit:,}; "
            f"~${result.estimated_training_cost_usd:,.2f} to train for {result.epochs} epochs."
        )
    return Outcome(result.to_dict(), text)


def cmd_dataset_list(args: argparse.Namespace, store: Store) -> Outcome:
    versions = list_versions(store, args.plan)
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
    text = "\n".join(
        f"{v.version_id}  cycle {v.cycle}  {v.rows_now} rows ({v.production_rows} production, "
        f"{v.synthetic_rows} synthetic)  sha256 {v.sha256[:12]}  parent {v.parent_version or '—'}"
        for v in versions
    )
    return Outcome({"versions": rows}, text or "No dataset version yet: run `cycle run`.")


def cmd_dataset_compare(args: argparse.Namespace, store: Store) -> Outcome:
    diff = compare_versions(store, args.old, args.new)
    lines = [f"{c.cell_key}: +{c.added} −{c.removed} ={c.kept}" for c in diff.cells]
    lines.append(f"{diff.old} → {diff.new}: +{diff.added} −{diff.removed}, {diff.kept} kept.")
    return Outcome(diff.to_dict(), "\n".join(lines))


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command; each subcommand has --db and --json."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        type=Path,
        default=None,
        help=f"DuckDB store (default: $FLYWHEEL_DB or {default_db_path()})",
    )
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    parser = argparse.ArgumentParser(
        prog="python -m core", description="Flywheel: plan, check and run LLM data flywheels."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", parents=[common], help="load the demo workspace")
    demo.add_argument("--seed", type=int, default=7, help="seed of the demo data (default 7)")
    demo.set_defaults(handler=cmd_demo)

    plan = commands.add_parser("plan", help="lint, import, export and list plans")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")

    lint = plan_commands.add_parser("lint", parents=[common], help="check a plan file")
    lint.add_argument("file", help="plan file (.json, .yaml or .yml)")
    lint.set_defaults(handler=cmd_plan_lint)

    imp = plan_commands.add_parser("import", parents=[common], help="store a plan file")
    imp.add_argument("file", help="plan file (.json, .yaml or .yml)")
    imp.add_argument("--plan", help="store as the next version of this plan id")
    imp.add_argument("--note", help="change note of the new version")
    imp.set_defaults(handler=cmd_plan_import)

    exp = plan_commands.add_parser("export", parents=[common], help="write a plan to a file")
    exp.add_argument("--out", required=True, help="output file; .json or .yaml picks the format")
    exp.add_argument("--plan", help="plan id (default: the newest plan)")
    exp.add_argument("--version", type=int, help="version (default: the newest)")
    exp.set_defaults(handler=cmd_plan_export)

    lst = plan_commands.add_parser("list", parents=[common], help="list stored plans")
    lst.set_defaults(handler=cmd_plan_list)

    gen = commands.add_parser(
        "generate",
        parents=[common],
        help="synthetic generation over the plan's grid",
        description="Generate the plan's synthetic dataset with the teacher. The server is the "
        "plan's generation endpoint, else FLYWHEEL_TEACHER_BASE_URL, else OPENAI_BASE_URL, else "
        "OpenAI; the key comes from FLYWHEEL_TEACHER_API_KEY or OPENAI_API_KEY and is never "
        "stored. Items already stored are not requested again.",
    )
    gen.add_argument("--plan", help="plan id (default: the newest plan)")
    gen.add_argument(
        "--dry-run", action="store_true", help="print calls, tokens and cost; send nothing"
    )
    gen.add_argument(
        "--batch", action="store_true", help="use an OpenAI batch job (half price, slower)"
    )
    gen.add_argument(
        "--top-up", action="store_true", help="only bring thin cells back to their target"
    )
    gen.add_argument(
        "--concurrency", type=int, help="requests in flight (default: generation_concurrency)"
    )
    gen.set_defaults(handler=cmd_generate)
    ingest = commands.add_parser(
        "ingest", parents=[common], help="load interactions, consent events or eval items"
    )
    ingest.add_argument("file", help="JSONL, CSV or Parquet file (JSONL and CSV may be .gz)")
    ingest.add_argument("--kind", choices=KINDS, default="interactions", help="what the file holds")
    ingest.add_argument("--cycle", type=int, help="tag the batch with this cycle number")
    ingest.set_defaults(handler=cmd_ingest)

    rejects = commands.add_parser(
        "rejects", parents=[common], help="list the quarantined rows of a batch"
    )
    rejects.add_argument("--batch", required=True, help="batch id printed by ingest")
    rejects.add_argument(
        "--raw", action="store_true", help="also print each raw line (unredacted; audited)"
    )
    rejects.set_defaults(handler=cmd_rejects)

    forget = commands.add_parser(
        "forget", parents=[common], help="erase a user's data everywhere it was copied"
    )
    forget.add_argument("user_id", help="the pseudonymous user id")
    forget.set_defaults(handler=cmd_forget)

    pii = commands.add_parser("pii", help="PII redaction of files")
    pii_commands = pii.add_subparsers(dest="pii_command", required=True, metavar="ACTION")
    redact = pii_commands.add_parser(
        "redact", parents=[common], help="redact the text field of each JSONL line"
    )
    redact.add_argument("--in", dest="input", required=True, help="input JSONL (.gz allowed)")
    redact.add_argument("--out", dest="output", required=True, help="output JSONL")
    redact.set_defaults(handler=cmd_pii_redact)
    cycle = commands.add_parser("cycle", help="run a cycle's pipeline; ask why a row was dropped")
    cycle_commands = cycle.add_subparsers(dest="cycle_command", required=True, metavar="ACTION")
    run = cycle_commands.add_parser(
        "run",
        parents=[common],
        help="run the cycle's pipeline and build a dataset version",
        description="Consented interactions of the cycle's window, PII check, the plan's "
        "filters, exact and near-duplicates, decontamination, the synthetic mix and the split, "
        "in one transaction. Refuses unless the plan's privacy review is approved.",
    )
    run.add_argument("--cycle", type=int, required=True, help="cycle number (1 = first)")
    run.add_argument("--plan", help="plan id (default: the newest plan)")
    run.set_defaults(handler=cmd_cycle_run)
    why = cycle_commands.add_parser(
        "why", parents=[common], help="what each cycle did with one interaction, and why"
    )
    why.add_argument("interaction_id", help="the interaction's id")
    why.add_argument("--plan", help="only this plan's runs")
    why.set_defaults(handler=cmd_cycle_why)

    dataset = commands.add_parser("dataset", help="export, list and compare dataset versions")
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    export = dataset_commands.add_parser(
        "export",
        parents=[common],
        help="write a dataset version (OpenAI chat JSONL or Parquet)",
        description="Writes a dataset version; the JSONL is checked as OpenAI checks a "
        "fine-tuning upload first. Exporting twice gives identical bytes.",
    )
    export.add_argument("version", help="dataset version id, e.g. ds-<plan>-c2-v1")
    export.add_argument("--out", required=True, help="the file to write")
    export.add_argument(
        "--format", choices=EXPORT_FORMATS, default="openai-jsonl", help="file format"
    )
    export.add_argument("--split", choices=SPLITS, default="train", help="which rows")
    export.set_defaults(handler=cmd_dataset_export)
    dlist = dataset_commands.add_parser("list", parents=[common], help="list dataset versions")
    dlist.add_argument("--plan", help="only this plan's versions")
    dlist.set_defaults(handler=cmd_dataset_list)
    compare = dataset_commands.add_parser(
        "compare", parents=[common], help="rows added and removed per cell between two versions"
    )
    compare.add_argument("old", help="the older version id")
    compare.add_argument("new", help="the newer version id")
    compare.set_defaults(handler=cmd_dataset_compare)

    render = plan_commands.add_parser(
        "render", parents=[common], help="render the plan document (Markdown, HTML or PDF)"
    )
    _document_arguments(render)
    render.set_defaults(handler=cmd_plan_render)

    report = commands.add_parser("report", help="render the documents reviewers read")
    report_commands = report.add_subparsers(dest="report_command", required=True, metavar="DOC")
    privacy = report_commands.add_parser(
        "privacy", parents=[common], help="render the privacy review packet of a plan"
    )
    _document_arguments(privacy)
    privacy.set_defaults(handler=cmd_report_privacy)
    return parser


def _document_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every plan document takes: --format, --out, --plan, --version."""
    parser.add_argument("--format", help="md, html or pdf (default: from the extension of --out)")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--plan", help="plan id (default: the newest plan)")
    parser.add_argument("--version", type=int, help="version (default: the newest)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = build_parser().parse_args(argv)
    store = Store(args.db)
    handler: Handler = args.handler
    try:
        outcome = handler(args, store)
    except FlywheelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outcome.data, default=str))
    elif outcome.text:
        print(outcome.text)
    return outcome.exit_code
