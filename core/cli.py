"""The command line, ``python -m core``: flags in, core calls, one JSON object or text out.

Exit status: 0 done; 1 a check failed (lint errors, a failed gate); 2 bad input or usage,
with one line on stderr and nothing written.

Each command imports the core modules it calls inside its handler: between them they load
DuckDB, pandas, Ibis, Plotly, scipy, openai and the training stack, seconds of imports that
``--help`` and ``stats sample-size`` do not need (tests/test_cli_startup.py, bench/cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import stats
from core.errors import AnalysisError, DocumentError, EvalError, FlywheelError, PlanError
from core.labels import label, label_path, show
from core.settings import default_db_path, get_setting

if TYPE_CHECKING:
    from core.access import User
    from core.lint import LintReport
    from core.store import Store

__all__ = ["build_parser", "main"]


@dataclass
class Outcome:
    """What a command produced: the JSON payload, the text for people, the exit status."""

    data: dict[str, Any]
    text: str
    exit_code: int = 0
    lines: list[str] = field(default_factory=list)


Handler = Callable[[argparse.Namespace, "Store"], Outcome]
# The commands marked store_free in the parser (statistics from counts, plan lint) get no store:
# it would import DuckDB for nothing.
StoreFreeHandler = Callable[[argparse.Namespace], Outcome]

# Choices of a few flags, written out so that building the parser imports none of the modules
# that define them; tests/test_cli_startup.py checks each against its source.
INGEST_KINDS = ("interactions", "consent", "eval-items")  # core.ingest.KINDS
EXPORT_FORMATS = ("openai-jsonl", "parquet")  # core.datasets.EXPORT_FORMATS
EXPORT_SPLITS = ("train", "validation", "all")  # core.datasets.SPLITS
EVAL_ROLES = ("candidate", "production", "teacher", "other")  # core.evals.ROLES


def _user() -> User:
    """Who acts on the command line: the local operator (every role but viewer), named by
    FLYWHEEL_ACTOR in the audit log."""
    from core.access import local_operator

    return local_operator()


def default_plan_id(store: Store) -> str:
    """The plan a command acts on when --plan is not given (core.plan_versions.default_plan:
    the newest non-demo plan, else the demo's)."""
    from core.plan_versions import default_plan, list_plans

    chosen = default_plan(list_plans(store))
    if chosen is None:
        raise PlanError(
            "There is no plan in this store; run `python -m core demo` or `plan import FILE`."
        )
    return chosen.plan_id


def _lint_lines(report: LintReport) -> list[str]:
    """Each finding with its place in the plan by its labels, and the path that the plan file
    spells (``Eval gates › 3 › Ratio to teacher (gates[2].ratio)``)."""
    return [
        f"{label(f.severity)}: "
        + (f"{label_path(f.path)} ({f.path}): " if f.path else "")
        + f"{f.message} [{f.code}]"
        for f in report.findings
    ]


# -- text for people: tables and records ---------------------------------------------------------
# What --json prints keeps the code names (DESIGN.md's contract); what a person reads names
# each column, field, stage, state and decision by its label in core.labels, and shows a
# missing value as "—", never "None".


def _cell(value: Any, *, code: bool = False) -> str:
    """One value as a person reads it, on one line; a code value (a stage, state, decision,
    backend) by its label."""
    text = label(value) if code and value is not None and value != "" else show(value)
    return " ↵ ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, codes: Sequence[str] = ()
) -> str:
    """Rows as aligned columns under their labels; numbers to the right."""
    header = [label(c) for c in columns]
    body = [[_cell(row.get(c), code=c in codes) for c in columns] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *body, strict=True)]
    numeric = [
        any(_is_number(row.get(c)) for row in rows)
        and all(row.get(c) is None or _is_number(row.get(c)) for row in rows)
        for c in columns
    ]
    return "\n".join(
        "  ".join(
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(line, widths, numeric, strict=True)
        ).rstrip()
        for line in [header, *body]
    )


def _record(fields: dict[str, Any], *, codes: Sequence[str] = (), indent: str = "  ") -> str:
    """A key/value record, one field a line: ``  Label:  value``."""
    labels = {key: label(key) + ":" for key in fields}
    width = max((len(text) for text in labels.values()), default=0)
    return "\n".join(
        f"{indent}{labels[key].ljust(width)}  {_cell(value, code=key in codes)}"
        for key, value in fields.items()
    )


# -- commands ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, store: Store) -> Outcome:
    from core.demo import load_demo

    summary = load_demo(store, seed=args.seed)
    verb = "Loaded" if summary.created else "Already loaded:"
    return Outcome(
        summary.to_dict(),
        f"{verb} the demo workspace in {store.path}: plan '{summary.plan_id}', "
        f"{summary.cycles} cycles, {summary.interactions} interactions.",
    )


def cmd_plan_lint(args: argparse.Namespace) -> Outcome:
    from core.lint import lint_plan
    from core.plan_files import read_plan_file

    report = lint_plan(read_plan_file(args.file))
    summary = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    return Outcome(
        report.to_dict(),
        "\n".join([*_lint_lines(report), summary]),
        exit_code=0 if report.ready else 1,
    )


def cmd_plan_import(args: argparse.Namespace, store: Store) -> Outcome:
    from core.lint import lint_plan
    from core.plan_files import read_plan_file
    from core.plan_versions import save_plan_version

    plan = read_plan_file(args.file)
    note = args.note or f"Imported from {Path(args.file).name}"
    plan_id, version = save_plan_version(store, plan, note=note, user=_user(), plan_id=args.plan)
    report = lint_plan(plan)
    state = "ready" if report.ready else f"draft, {len(report.errors)} lint error(s)"
    return Outcome(
        {"plan_id": plan_id, "version": version, "ready": report.ready},
        f"Stored plan '{plan_id}' version {version} ({state}).",
    )


def cmd_plan_export(args: argparse.Namespace, store: Store) -> Outcome:
    from core.paths import check_output_path
    from core.plan_files import dump_plan, plan_format_for
    from core.plan_versions import load_plan

    out = check_output_path(args.out)
    fmt = plan_format_for(args.out)
    plan_id = args.plan or default_plan_id(store)
    plan, version = load_plan(store, plan_id, args.version)
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
    from core.documents import FORMATS

    fmt = (args.format or Path(args.out).suffix.lstrip(".")).lower()
    if fmt == "markdown":
        fmt = "md"
    if fmt not in FORMATS:
        raise DocumentError(
            f"Unknown format '{fmt or Path(args.out).name}'; give --format md, html or pdf."
        )
    return fmt


def _render_plan_document(name: str, args: argparse.Namespace, store: Store) -> Outcome:
    from core.documents import DOCUMENTS, generated_at_now, write_document
    from core.plan_versions import load_plan

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
        store=store,
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


def cmd_report_cycle(args: argparse.Namespace, store: Store) -> Outcome:
    from core.documents import generated_at_now, write_document

    fmt = _document_format(args)
    plan_id = args.plan or default_plan_id(store)
    out = write_document(
        "cycle",
        fmt,
        Path(args.out),
        generated_at=generated_at_now(),
        store=store,
        plan_id=plan_id,
        cycle=args.cycle,
    )
    return Outcome(
        {"path": str(out), "plan_id": plan_id, "cycle": args.cycle, "format": fmt},
        f"Wrote the cycle report ({fmt}) of plan '{plan_id}' cycle {args.cycle} to {out}.",
    )


def cmd_report_model_card(args: argparse.Namespace, store: Store) -> Outcome:
    from core.documents import generated_at_now, write_document
    from core.promotion import require_candidate

    fmt = _document_format(args)
    plan_id = args.plan or default_plan_id(store)
    model = str(require_candidate(store, plan_id, args.cycle)["model"])
    out = write_document(
        "model-card",
        fmt,
        Path(args.out),
        generated_at=generated_at_now(),
        store=store,
        plan_id=plan_id,
        cycle=args.cycle,
    )
    return Outcome(
        {"path": str(out), "plan_id": plan_id, "cycle": args.cycle, "model": model, "format": fmt},
        f"Wrote the model card ({fmt}) of {model}, plan '{plan_id}' cycle {args.cycle}, to {out}.",
    )


def cmd_report_datasheet(args: argparse.Namespace, store: Store) -> Outcome:
    from core.documents import generated_at_now, write_document

    fmt = _document_format(args)
    out = write_document(
        "datasheet",
        fmt,
        Path(args.out),
        generated_at=generated_at_now(),
        store=store,
        version_id=args.version_id,
    )
    return Outcome(
        {"path": str(out), "version_id": args.version_id, "format": fmt},
        f"Wrote the datasheet ({fmt}) of {args.version_id} to {out}.",
    )


def cmd_plan_list(args: argparse.Namespace, store: Store) -> Outcome:
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
    text = _table(rows, ("plan_id", "latest_version", "ready", "demo", "name")) if rows else ""
    return Outcome({"plans": rows}, text or "No plans yet.")


def cmd_generate(args: argparse.Namespace, store: Store) -> Outcome:
    from core.generation import GenerationSpec, dry_run, run_batch, run_generation, stored_counts

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
        report = run_batch(store, plan_id, user=_user(), top_up=args.top_up)
    else:
        report = run_generation(
            store, plan_id, user=_user(), top_up=args.top_up, concurrency=args.concurrency
        )
    data = {"dry_run": False, **report.to_dict()}
    return Outcome(
        data,
        f"Plan '{plan_id}': {report.cells} cells; {report.generated}/{report.requested} valid, "
        f"{report.failed} failed; {report.api_calls} API calls, ${report.cost_usd:,.4f} spent "
        f"(estimated ${report.estimated_cost_usd:,.4f}). {report.message}",
        exit_code=1 if report.status == "budget_stop" else 0,
    )


def cmd_ingest(args: argparse.Namespace, store: Store) -> Outcome:
    from core.ingest import ingest_file

    result = ingest_file(store, args.file, user=_user(), kind=args.kind, cycle=args.cycle)
    return Outcome(result.to_dict(), result.summary)


def cmd_rejects(args: argparse.Namespace, store: Store) -> Outcome:
    from core.ingest_reads import batch_rejects

    rows = batch_rejects(store, args.batch, user=_user(), reveal_raw=args.raw)
    columns = ("line", "reason", "raw") if args.raw else ("line", "reason")
    text = _table(rows, columns) if rows else ""
    return Outcome(
        {"batch_id": args.batch, "rows": rows},
        text or f"Batch {args.batch} has no rejected rows.",
    )


def cmd_forget(args: argparse.Namespace, store: Store) -> Outcome:
    from core.consent import forget_user

    result = forget_user(store, args.user_id, by=_user())
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


def cmd_pii_redact(args: argparse.Namespace, store: Store) -> Outcome:
    from core.privacy import redact_file

    rows, found = redact_file(args.input, args.output)
    summary = ", ".join(f"{n} {t}" for t, n in sorted(found.items())) or "no PII found"
    return Outcome(
        {"rows": rows, "found": found, "path": str(args.output)},
        f"Redacted {rows} rows into {args.output}: {summary}.",
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _interval(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"({ci[0]:+.2%}, {ci[1]:+.2%})"


def _p(value: float | None) -> str:
    """The p-value as "p = 0.021" or "p < 0.0001", through the formatter the pages use."""
    shown = stats.format_p_value(value)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def cmd_stats_ab(args: argparse.Namespace) -> Outcome:
    try:
        control = stats.proportion_arm(args.control_n, args.control_x)
        treatment = stats.proportion_arm(args.treatment_n, args.treatment_x)
        absolute = stats.two_proportion_z_test(control, treatment, alpha=args.alpha)
        if args.sequential:
            relative = stats.sequential_test(
                control, treatment, alpha=args.alpha, n_star=args.n_star
            )
            p_value = relative.p_value
        else:
            relative = stats.relative_lift(control, treatment, alpha=args.alpha)
            p_value = absolute.p_value
    except ValueError as exc:
        raise AnalysisError(f"Cannot compare the arms: {exc}.") from None
    data = {
        "control_rate": absolute.mean_control,
        "treatment_rate": absolute.mean_treatment,
        "abs_diff": absolute.estimate,
        "ci_abs": list(absolute.ci) if absolute.ci else None,
        "rel_lift": relative.estimate,
        "ci_rel": list(relative.ci) if relative.ci else None,
        "p_value": p_value,
        "method": relative.method if args.sequential else absolute.method,
        "sequential": args.sequential,
        "n_star": args.n_star if args.sequential else None,
        "alpha": args.alpha,
        "reason": relative.reason or absolute.reason,
    }
    kind = "confidence sequence" if args.sequential else "CI"
    text = (
        f"control {_number(absolute.mean_control)} vs treatment "
        f"{_number(absolute.mean_treatment)}: difference {_number(absolute.estimate)}, "
        f"relative lift {_number(relative.estimate)}, {kind} {_interval(_pair(relative.ci))}, "
        f"{_p(p_value)}" + (f" ({data['reason']})" if data["reason"] else "")
    )
    return Outcome(data, text)


def _pair(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if ci is None else (float(ci[0]), float(ci[1]))


def _numbers(text: str, flag: str, kind: type[float] | type[int]) -> list[Any]:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AnalysisError(
            f"{flag} takes numbers separated by commas (e.g. 5000,5200), got {text!r}."
        ) from None


def cmd_stats_srm(args: argparse.Namespace) -> Outcome:
    counts = _numbers(args.counts, "--counts", int)
    weights = _numbers(args.weights, "--weights", float) if args.weights else None
    try:
        result = stats.srm_test(counts, weights)
    except ValueError as exc:
        raise AnalysisError(f"Cannot check the sample ratio: {exc}.") from None
    data = {
        "chi2": result.statistic,
        "p_value": result.p_value,
        "mismatch": result.mismatch,
        "status": result.status,
        "expected": list(result.expected),
        "threshold": result.threshold,
        "reason": result.reason,
    }
    if result.status == "not_judged":
        text = f"Not judged: {result.reason}."
    else:
        verdict = "MISMATCH: assignment or logging is broken" if result.mismatch else "fine"
        text = f"chi2 = {_number(result.statistic)}, {_p(result.p_value)}: {verdict}."
    return Outcome(data, text, exit_code=1 if result.mismatch else 0)


def cmd_stats_sample_size(args: argparse.Namespace) -> Outcome:
    # The functions core.abtest.design_ab_test sizes with, called here so that the answer
    # needs neither the plan models nor the store (test_cli_startup compares the two).
    shares = _numbers(args.shares, "--shares", float)
    try:
        n_per_arm = stats.sample_size_per_arm(
            args.baseline, args.mde, relative=args.relative, alpha=args.alpha, power=args.power
        )
        days = stats.ab_duration_days(n_per_arm, args.daily_traffic or 1.0, shares)
    except ValueError as exc:
        raise AnalysisError(f"Cannot size the A/B test: {exc}.") from None
    total = stats.planned_total(n_per_arm, shares)
    data: dict[str, Any] = {
        "n_per_arm": n_per_arm,
        "total": total,
        "baseline": args.baseline,
        "mde": args.mde,
        "relative": args.relative,
        "alpha": args.alpha,
        "power": args.power,
        "days": days if args.daily_traffic else None,
    }
    text = f"{n_per_arm:,} users per arm ({total:,} in total)"
    if args.daily_traffic:
        text += f"; {days} day(s) at {args.daily_traffic:,g} users a day"
    return Outcome(data, text + ".")


def cmd_ab_report(args: argparse.Namespace, store: Store) -> Outcome:
    from core.abtest import analyse_cycle
    from core.plan_versions import load_plan

    plan_id = args.plan or default_plan_id(store)
    plan, _ = load_plan(store, plan_id)
    analysis = analyse_cycle(store, plan, args.cycle, plan_id=plan_id, correction=args.correction)
    if analysis is None:
        raise AnalysisError(
            f"Cycle {args.cycle} of plan '{plan_id}' has no A/B interactions in its test window; "
            f"load them with `python -m core ingest FILE --cycle {args.cycle}`."
        )
    data = analysis.to_dict()
    primary = analysis.primary
    arms = ", ".join(f"{a.arm} {a.users:,} users" for a in analysis.arms)
    lines = [
        f"Cycle {analysis.cycle} A/B test ({analysis.window[0]} to {analysis.window[1]}): {arms}.",
        f"Sample ratio: {_p(analysis.srm.p_value)} ({label(analysis.srm.status)}).",
        f"{label(analysis.primary_metric)}: lift {_number(primary.estimate)}, "
        f"{'confidence sequence' if analysis.sequential else 'CI'} "
        f"{_interval(_pair(primary.ci))}, {_p(primary.p_value)}.",
    ]
    for g in analysis.guardrails:
        state = "BREACHED" if g.breached else "ok"
        lines.append(
            f"Guardrail {label(g.metric)} (tolerance +{g.tolerance:.0%}): lift "
            f"{_number(g.lift)}, {state}"
        )
    lines.append(f"Decision: {label(analysis.decision.verdict)}.")
    lines += [f"  - {reason}" for reason in analysis.decision.reasons]
    served = analysis.student_system
    if served is not None:
        lines.append(
            f"System message the {served.arm} arm logged: "
            + ", ".join(f"{h} on {n:,}" for h, n in served.hashes)
            + f" of {served.interactions:,} interactions (plan: {served.plan_hash or 'none'})."
        )
    lines += [f"warning: {w}" for w in analysis.warnings]
    failed = analysis.decision.verdict in ("roll_back", "invalid_srm")
    return Outcome(data, "\n".join(lines), exit_code=1 if failed else 0)


# -- evals, gates and training -----------------------------------------------------------------


def cmd_eval_import_set(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import import_eval_set

    result = import_eval_set(store, args.file, merge=args.merge, user=_user())
    lines = [_table(result.sets, ("eval_set", "version", "items", "status"), codes=("status",))]
    head = (
        f"Batch {result.batch_id}: {result.rows_read} rows read, {result.accepted} accepted, "
        f"{result.rejected} rejected (see `rejects --batch {result.batch_id}`)."
    )
    return Outcome(result.to_dict(), "\n".join([head, *lines]))


def cmd_eval_sets(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import eval_sets

    rows = eval_sets(store)
    columns = ("eval_set", "version", "items", "frozen", "versions", "content_hash")
    shown = [{**r, "content_hash": str(r["content_hash"] or "")[:12] or None} for r in rows]
    text = _table(shown, columns) if rows else ""
    return Outcome({"sets": rows}, text or "No eval sets yet: `eval import-set FILE`.")


def cmd_eval_freeze(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import freeze_set_version, resolve_version

    version = resolve_version(store, args.set, args.version)
    froze = freeze_set_version(store, args.set, version, user=_user(), reason=args.reason)
    state = "Froze" if froze else "Already frozen:"
    return Outcome(
        {"eval_set": args.set, "version": version, "frozen": True, "changed": froze},
        f"{state} {args.set} v{version}.",
    )


def _graders(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def cmd_eval_run(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import JudgeConfig, eval_endpoint, judge_endpoint, run_eval, run_summary
    from core.training import cycle_candidate

    model, base_url = args.model, args.base_url
    plan_id = args.plan
    local_weights = None
    if args.role == "candidate" and args.cycle is None:
        raise EvalError("A candidate run needs --cycle N.")
    if model is None:
        if args.role != "candidate":
            raise EvalError("Give --model (only a candidate run can default to the cycle's).")
        plan_id = plan_id or default_plan_id(store)
        candidate = cycle_candidate(store, plan_id, args.cycle)
        if candidate is None:
            raise EvalError(
                f"Cycle {args.cycle} has no candidate: `train start` or `train register` first, "
                "or give --model."
            )
        model = str(candidate["model"])
        base_url = base_url or (str(candidate["endpoint"]) or None)
        if base_url is None and candidate["weights_path"]:
            from core.training import weights_sha256
            from core.training.inference import LocalWeights

            local_weights = LocalWeights(
                str(candidate["weights_path"]),
                str(candidate["base_model"] or ""),
                weights_sha256(str(candidate["weights_path"])),
            )
    if args.role == "candidate" and plan_id is None:
        plan_id = default_plan_id(store)
    graders = _graders(args.graders)
    judge = None
    if "llm_judge" in graders:
        judge = JudgeConfig(
            model=args.judge_model or str(get_setting("judge_model")),
            endpoint=judge_endpoint(args.judge_base_url),
        )
    report = run_eval(
        store,
        eval_set=args.set,
        version=args.version,
        model=model,
        role=args.role,
        cycle=args.cycle,
        plan_id=plan_id,
        endpoint=eval_endpoint(base_url),
        graders=graders,
        samples=args.samples,
        temperature=args.temperature,
        judge=judge,
        concurrency=args.concurrency,
        local_weights=local_weights,
        system_message=args.system_message,
        user=_user(),
    )
    summary = run_summary(store, report.run_id)
    lines = [
        f"  {label(g['grader'])}: mean {g['mean']:.3f} on {g['items']} items"
        + (f" ({g['grader_errors']} grader errors)" if g["grader_errors"] else "")
        for g in summary
        if g["mean"] is not None
    ]
    return Outcome(
        {**report.to_dict(), "scores": summary},
        "\n".join(
            [
                f"Run {report.run_id}: {model} on {args.set} v{report.set_version}. "
                f"{report.message}",
                "  system message: "
                + (f"{report.system_message!r}" if report.system_message else "none"),
                *lines,
            ]
        ),
    )


def cmd_eval_import_results(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import import_results

    result = import_results(
        store,
        args.file,
        eval_set=args.set,
        version=args.version,
        role=args.role,
        cycle=args.cycle,
        plan_id=args.plan,
        user=_user(),
        system_message=args.system_message,
    )
    lines = [f"line {r['line']}: {r['reason']}" for r in result.rejected[:20]]
    return Outcome(
        result.to_dict(),
        "\n".join(
            [
                f"Imported {result.accepted} of {result.rows_read} result rows into run(s) "
                f"{', '.join(result.runs)} on {result.eval_set} v{result.set_version}; "
                f"{len(result.rejected)} refused.",
                *lines,
            ]
        ),
    )


def cmd_gate_check(args: argparse.Namespace, store: Store) -> Outcome:
    from core.gates import check_gates

    plan_id = args.plan or default_plan_id(store)
    report = check_gates(store, plan_id, args.cycle)
    data = report.to_dict()
    gates = [
        {
            "gate": g.name,
            "verdict": g.verdict,
            "value": g.value,
            "threshold": g.threshold,
            "blocking": g.blocking,
        }
        for g in report.gates
    ]
    lines = [
        _table(gates, ("gate", "verdict", "value", "threshold", "blocking"), codes=("verdict",))
    ]
    lines += [f"{label('why')}:", *(f"  {g.name}: {g.explanation}" for g in report.gates)]
    lines += [f"warning: {w}" for w in report.warnings]
    head = (
        f"Plan '{plan_id}' cycle {args.cycle}, candidate {report.candidate or '(none)'}: "
        f"{label(report.verdict).upper()}"
    )
    return Outcome(data, "\n".join([head, *lines]), exit_code=0 if report.verdict == "pass" else 1)


def cmd_gate_decide(args: argparse.Namespace, store: Store) -> Outcome:
    from core.gates import cycle_decisions, record_decision

    plan_id = args.plan or default_plan_id(store)
    decision_id = record_decision(
        store, plan_id, args.cycle, decision=args.decision, user=_user(), reason=args.reason or ""
    )
    recorded = next(d for d in cycle_decisions(store, plan_id) if d["decision_id"] == decision_id)
    verdict, candidate = str(recorded["verdict"]), recorded["candidate_model"]
    return Outcome(
        {
            "decision_id": decision_id,
            "decision": args.decision,
            "verdict": verdict,
            "candidate": candidate,
        },
        f"Recorded the decision on {candidate} for cycle {args.cycle}: {label(args.decision)} "
        f"(gates: {label(verdict)}), as {decision_id}.",
    )


def _training_progress(job: Any) -> None:
    """One line on stderr per change while a job is followed (stdout stays for the result)."""
    loss = next((m["loss"] for m in reversed(job.metrics) if m["loss"] is not None), None)
    step = f"step {job.step}/{job.total_steps}" if job.total_steps else "starting"
    print(
        f"{job.job_id}: {label(job.status)}, {step}"
        + (f", loss {loss:.4f}" if loss is not None else ""),
        file=sys.stderr,
    )


def cmd_train_start(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import eval_endpoint
    from core.training import start_training

    plan_id = args.plan or default_plan_id(store)
    job = start_training(
        store,
        plan_id,
        args.cycle,
        dataset_version=args.dataset_version,
        export_path=args.export,
        backend=args.backend,
        base_model=args.base_model,
        max_steps=args.max_steps,
        endpoint=eval_endpoint(args.base_url) if args.base_url else None,
        wait=not args.no_wait,
        poll_s=args.poll,
        user=_user(),
    )
    return _job_outcome(job.to_dict())


def _job_outcome(job: dict[str, Any]) -> Outcome:
    from core.secrets import scrub_secrets

    error = scrub_secrets(str(job["error"])) if job["error"] else None
    job = {**job, "error": error}
    weights = job["weights_sha256"]
    fields = {
        "backend": job["backend"],
        "dataset_version": job["dataset_version"],
        "fine_tuned_model": job["fine_tuned_model"],
        "weights_sha256": f"{weights[:12]}…" if weights else None,
        "trained_tokens": job["trained_tokens"],
        "cost_usd": None if job["cost_usd"] is None else f"{job['cost_usd']:.2f}",
        "error": error,
    }
    text = f"Training job {job['job_id']}: {label(job['status'])}\n" + _record(
        fields, codes=("backend",)
    )
    return Outcome(job, text, exit_code=1 if job["status"] in {"failed", "cancelled"} else 0)


def cmd_train_follow(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import eval_endpoint
    from core.training import follow_training

    job = follow_training(
        store,
        args.job_id,
        endpoint=eval_endpoint(args.base_url) if args.base_url else None,
        poll_s=args.poll,
        on_update=None if args.json else _training_progress,
        user=_user(),
    )
    return _job_outcome(job.to_dict())


def cmd_train_cancel(args: argparse.Namespace, store: Store) -> Outcome:
    from core.evals import eval_endpoint
    from core.training import cancel_training

    job = cancel_training(
        store,
        args.job_id,
        endpoint=eval_endpoint(args.base_url) if args.base_url else None,
        user=_user(),
    )
    outcome = _job_outcome(job.to_dict())
    return Outcome(outcome.data, outcome.text, exit_code=0)


def cmd_train_resume(args: argparse.Namespace, store: Store) -> Outcome:
    from core.training import resume_training

    job = resume_training(
        store,
        args.job_id,
        wait=not args.no_wait,
        poll_s=args.poll,
        user=_user(),
    )
    return _job_outcome(job.to_dict())


def cmd_train_register(args: argparse.Namespace, store: Store) -> Outcome:
    from core.training import register_candidate

    plan_id = args.plan or default_plan_id(store)
    candidate = register_candidate(
        store,
        plan_id,
        args.cycle,
        model=args.model,
        endpoint=args.endpoint or "",
        dataset_version=args.dataset_version,
        weights=args.weights,
        user=_user(),
    )
    return Outcome(
        candidate,
        f"Cycle {args.cycle} candidate: {candidate['model']}"
        + (f" at {candidate['endpoint']}" if candidate["endpoint"] else "")
        + ".",
    )


def cmd_train_list(args: argparse.Namespace, store: Store) -> Outcome:
    from core.training import training_jobs

    plan_id = args.plan or default_plan_id(store)
    jobs = training_jobs(store, plan_id, args.cycle)
    columns = ("cycle", "job_id", "backend", "status", "dataset_version", "fine_tuned_model")
    text = _table(jobs, columns, codes=("backend", "status")) if jobs else ""
    return Outcome({"plan_id": plan_id, "jobs": jobs}, text or "No training jobs yet.")


# -- parser ------------------------------------------------------------------------------------


def cmd_cycle_run(args: argparse.Namespace, store: Store) -> Outcome:
    from core.cycles import run_cycle, run_summary
    from core.errors import ThinCycleError

    plan_id = args.plan or default_plan_id(store)
    try:
        result = run_cycle(store, plan_id, args.cycle, user=_user(), force=args.force)
    except ThinCycleError as exc:
        data = {"plan_id": plan_id, "cycle": args.cycle, "built": False, "reason": str(exc)}
        return Outcome(data, str(exc), exit_code=1)
    return Outcome(result.to_dict(), run_summary(result))


def cmd_cycle_why(args: argparse.Namespace, store: Store) -> Outcome:
    from core.cycle_reads import why_dropped

    answers = why_dropped(store, args.interaction_id, plan_id=args.plan)
    text = _table(answers, ("cycle", "run_id", "why")) if answers else ""
    return Outcome(
        {"interaction_id": args.interaction_id, "runs": answers},
        text or f"No cycle has run yet; {args.interaction_id} is stored and waits for one.",
    )


def cmd_dataset_export(args: argparse.Namespace, store: Store) -> Outcome:
    from core.datasets import export_dataset

    result = export_dataset(store, args.version, args.out, fmt=args.format, split=args.split)
    text = f"Wrote {result.rows} {args.split} rows of {args.version} to {result.path} "
    text += f"(sha256 {result.sha256[:12]}…)."
    if result.total_tokens is not None:
        text += (
            f" Format check passed: {result.total_tokens:,} tokens ({result.tokenizer}; "
            f"{result.system_tokens or 0:,} of them system messages), largest example "
            f"{result.max_example_tokens:,} of {result.token_limit:,}; "
            f"~${result.estimated_training_cost_usd:,.2f} to train for {result.epochs} epochs."
        )
    return Outcome(result.to_dict(), text)


def cmd_dataset_list(args: argparse.Namespace, store: Store) -> Outcome:
    from core.datasets import list_versions

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
    text = _table(shown, columns) if rows else ""
    return Outcome({"versions": rows}, text or "No dataset version yet: run `cycle run`.")


def cmd_dataset_compare(args: argparse.Namespace, store: Store) -> Outcome:
    from core.datasets import compare_versions

    diff = compare_versions(store, args.old, args.new)
    cells = [c.to_row() for c in diff.cells]
    columns = tuple(cells[0]) if cells else ()
    lines = [_table(cells, columns)] if cells else []
    lines.append(
        f"{diff.old} → {diff.new}: {diff.kept} carried, +{diff.added} added, −{diff.removed}"
        f" removed ({diff.retired} retired under the cap, {diff.rechecked} failed the recheck)."
    )
    return Outcome(diff.to_dict(), "\n".join(lines))


def cmd_backup(args: argparse.Namespace, store: Store) -> Outcome:
    from core.backup import backup_store

    result = backup_store(store, args.directory, user=_user())
    total = sum(result.tables.values())
    return Outcome(
        result.to_dict(),
        f"Backed up {store.path} ({len(result.tables)} tables, {total:,} rows, schema "
        f"{result.schema_version}) to {result.path}"
        + (", manifest signed with FLYWHEEL_BACKUP_KEY." if result.signed else "."),
    )


def cmd_restore(args: argparse.Namespace, store: Store) -> Outcome:
    from core.backup import restore_store

    result = restore_store(args.directory, store.path, user=_user(), replace=args.replace)
    total = sum(result.tables.values())
    return Outcome(
        result.to_dict(),
        f"Restored {total:,} rows in {len(result.tables)} tables from {args.directory} into "
        f"{result.path} (schema {result.schema_version})"
        + ("; manifest signature verified." if result.signed else "."),
    )


def cmd_retention(args: argparse.Namespace, store: Store) -> Outcome:
    from core.plan_versions import load_plan
    from core.retention import enforce_retention

    plan_id = args.plan or default_plan_id(store)
    plan, _ = load_plan(store, plan_id)
    try:
        now = datetime.fromisoformat(args.now) if args.now else None
    except ValueError:
        raise FlywheelError(f"--now {args.now!r} is not an ISO date or date-time.") from None
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    result = enforce_retention(store, plan, user=_user(), now=now, dry_run=args.dry_run)
    verb = "Would delete" if args.dry_run else "Deleted"
    return Outcome(
        {"plan_id": plan_id, **result.to_dict()},
        f"{verb} {result.interactions_deleted:,} interactions older than "
        f"{result.retention_days} days (before {result.cutoff[:10]}); "
        f"{result.days_rolled_up} day(s) kept as daily metrics; "
        f"{result.quarantine_lines_cleared} quarantined raw line(s) cleared.",
    )


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
    lint.set_defaults(handler=cmd_plan_lint, store_free=True)

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
    ingest.add_argument(
        "--kind", choices=INGEST_KINDS, default="interactions", help="what the file holds"
    )
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
    cycle_report = report_commands.add_parser(
        "cycle", parents=[common], help="render a cycle's report: funnel, gates, A/B, decision"
    )
    cycle_report.add_argument("--cycle", type=int, required=True, help="cycle number")
    cycle_report.add_argument("--format", help="md, html or pdf (default: from --out)")
    cycle_report.add_argument("--out", required=True, help="the file to write")
    cycle_report.add_argument("--plan", help="plan id (default: the newest plan)")
    cycle_report.set_defaults(handler=cmd_report_cycle)
    card = report_commands.add_parser(
        "model-card",
        parents=[common],
        help="render the model card of a cycle's candidate: evals by slice, decision, use, limits",
    )
    card.add_argument("--cycle", type=int, required=True, help="cycle number")
    card.add_argument("--format", help="md, html or pdf (default: from --out)")
    card.add_argument("--out", required=True, help="the file to write")
    card.add_argument("--plan", help="plan id (default: the newest plan)")
    card.set_defaults(handler=cmd_report_model_card)
    datasheet = report_commands.add_parser(
        "datasheet", parents=[common], help="render the datasheet of a dataset version"
    )
    datasheet.add_argument("version_id", metavar="VERSION", help="dataset version id")
    datasheet.add_argument("--format", help="md, html or pdf (default: from --out)")
    datasheet.add_argument("--out", required=True, help="the file to write")
    datasheet.set_defaults(handler=cmd_report_datasheet)
    backup = commands.add_parser(
        "backup", parents=[common], help="write every table to a new directory, with a manifest"
    )
    backup.add_argument("directory", help="new or empty directory")
    backup.set_defaults(handler=cmd_backup)

    restore = commands.add_parser(
        "restore",
        parents=[common],
        help="rebuild the store (--db) from a backup directory; runs nothing from the backup",
    )
    restore.add_argument("directory", help="a directory written by `backup`")
    restore.add_argument(
        "--replace", action="store_true", help="overwrite the store at --db if it exists"
    )
    restore.set_defaults(handler=cmd_restore)
    retention = commands.add_parser(
        "retention",
        parents=[common],
        help="delete raw interactions older than the plan allows, keeping daily metrics",
    )
    retention.add_argument("--plan", help="plan whose retention applies (default: the newest)")
    retention.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    retention.add_argument("--now", help="ISO date-time to measure retention from (default: now)")
    retention.set_defaults(handler=cmd_retention)
    _cycle_commands(commands, common)
    _stats_commands(commands, common)
    _eval_parsers(commands, common)
    return parser


def _cycle_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The cycle and dataset commands."""
    cycle = commands.add_parser("cycle", help="run a cycle's pipeline; ask why a row was dropped")
    cycle_commands = cycle.add_subparsers(dest="cycle_command", required=True, metavar="ACTION")
    run = cycle_commands.add_parser(
        "run",
        parents=[common],
        help="run the cycle's pipeline and build a dataset version",
        description="The parent version's rows checked again and carried, then the "
        "consented interactions of the cycle's window, PII check, the plan's filters, exact "
        "and near-duplicates (against the carried rows too), decontamination, the synthetic "
        "mix with the cap's retirement policy and the split, in one transaction. Refuses "
        "unless the plan's privacy review is approved. Exit 1, building nothing, when the "
        "cycle has fewer new rows than the plan's min_new_examples (see --force).",
    )
    run.add_argument("--cycle", type=int, required=True, help="cycle number (1 = first)")
    run.add_argument("--plan", help="plan id (default: the newest plan)")
    run.add_argument(
        "--force",
        action="store_true",
        help="build a version even with fewer new rows than the plan's min_new_examples",
    )
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
    export.add_argument("--split", choices=EXPORT_SPLITS, default="train", help="which rows")
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


def _stats_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """``stats ab|srm|sample-size`` and ``ab report``."""
    st = commands.add_parser("stats", help="A/B statistics from counts: tests, SRM, sample size")
    st_commands = st.add_subparsers(dest="stats_command", required=True, metavar="ACTION")
    ab = st_commands.add_parser(
        "ab", parents=[common], help="two-proportion analysis of control against treatment"
    )
    ab.add_argument("--control-n", type=int, required=True, help="users in control")
    ab.add_argument("--control-x", type=int, required=True, help="conversions in control")
    ab.add_argument("--treatment-n", type=int, required=True, help="users in treatment")
    ab.add_argument("--treatment-x", type=int, required=True, help="conversions in treatment")
    ab.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    ab.add_argument("--sequential", action="store_true", help="confidence sequence: safe to peek")
    ab.add_argument(
        "--n-star",
        type=int,
        default=stats.DEFAULT_N_STAR,
        help=f"planned total sample the sequence is tuned for ({stats.DEFAULT_N_STAR})",
    )
    ab.set_defaults(handler=cmd_stats_ab, store_free=True)

    srm = st_commands.add_parser("srm", parents=[common], help="sample-ratio-mismatch check")
    srm.add_argument("--counts", required=True, help="units per arm, e.g. 5000,5200")
    srm.add_argument("--weights", help="planned shares per arm, e.g. 1,1 (default equal)")
    srm.set_defaults(handler=cmd_stats_srm, store_free=True)

    size = st_commands.add_parser("sample-size", parents=[common], help="per-arm sample size")
    size.add_argument("--baseline", type=float, required=True, help="control rate, e.g. 0.10")
    size.add_argument("--mde", type=float, required=True, help="minimum detectable effect")
    size.add_argument("--relative", action="store_true", help="the MDE is relative (0.05 = +5%%)")
    size.add_argument("--alpha", type=float, default=0.05, help="two-sided level (0.05)")
    size.add_argument("--power", type=float, default=0.8, help="power (0.8)")
    size.add_argument(
        "--daily-traffic", type=float, help="users a day, all arms: also print the days needed"
    )
    size.add_argument("--shares", default="0.5,0.5", help="traffic share per arm (0.5,0.5)")
    size.set_defaults(handler=cmd_stats_sample_size, store_free=True)

    ab_group = commands.add_parser("ab", help="analyse a cycle's A/B test")
    ab_commands = ab_group.add_subparsers(dest="ab_command", required=True, metavar="ACTION")
    report = ab_commands.add_parser(
        "report", parents=[common], help="analyse the cycle's A/B test and recommend a decision"
    )
    report.add_argument("--cycle", type=int, required=True, help="the cycle number")
    report.add_argument("--plan", help="plan id (default: the newest plan)")
    report.add_argument(
        "--correction",
        choices=["holm", "bh"],
        default="holm",
        help="multiplicity correction of the secondary metrics (holm)",
    )
    report.set_defaults(handler=cmd_ab_report)


def _eval_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """The eval, gate and train commands."""
    evals = commands.add_parser("eval", help="eval sets, runs and imported results")
    actions = evals.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import-set",
        parents=[common],
        help="import eval items (JSONL or CSV) as a new version of their set",
        description="Each set the file names gets the file's items as its content: unchanged "
        "content keeps the version, a changed draft is updated, a changed frozen version makes "
        "a new one. Bad rows are quarantined (see `rejects --batch`).",
    )
    imp.add_argument("file", help="JSONL or CSV of items: item_id, eval_set, prompt, reference, …")
    imp.add_argument("--merge", action="store_true", help="lay the items over the newest version's")
    imp.set_defaults(handler=cmd_eval_import_set)

    sets = actions.add_parser("sets", parents=[common], help="list eval sets and versions")
    sets.set_defaults(handler=cmd_eval_sets)

    freeze = actions.add_parser("freeze", parents=[common], help="freeze an eval set version")
    freeze.add_argument("set", help="eval set name")
    freeze.add_argument("--version", type=int, help="version (default: the newest)")
    freeze.add_argument("--reason", required=True, help="why it is frozen (audited)")
    freeze.set_defaults(handler=cmd_eval_freeze)

    run = actions.add_parser(
        "run",
        parents=[common],
        help="run a model on an eval set and grade it",
        description="Ask an OpenAI-compatible endpoint (--base-url, else OPENAI_BASE_URL, else "
        "OpenAI; key from FLYWHEEL_EVAL_API_KEY or OPENAI_API_KEY, never stored) for each item, "
        "then grade; a cycle's candidate trained locally answers in-process (transformers) "
        "unless --base-url names a server for it. Running the same request again resumes it.",
    )
    run.add_argument("--set", required=True, help="eval set name")
    run.add_argument("--version", type=int, help="set version (default: the newest)")
    run.add_argument("--model", help="model name (default for --role candidate: the cycle's)")
    run.add_argument(
        "--role", choices=EVAL_ROLES, required=True, help="what the model is to the gates"
    )
    run.add_argument("--cycle", type=int, help="cycle number (required for a candidate)")
    run.add_argument("--plan", help="plan id (default: the newest plan)")
    run.add_argument("--base-url", help="base URL of the model's OpenAI-compatible server")
    run.add_argument(
        "--graders",
        default="python_parses,python_tests",
        help="comma-separated: exact, normalised, regex, json_schema, python_parses, "
        "python_tests, llm_judge (default: python_parses,python_tests)",
    )
    run.add_argument("--samples", type=int, default=1, help="samples per item (averaged)")
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature")
    run.add_argument("--judge-model", help="judge of llm_judge (default: judge_model setting)")
    run.add_argument("--judge-base-url", help="judge's server (default: judge_base_url)")
    run.add_argument("--concurrency", type=int, help="requests in flight (eval_concurrency)")
    run.add_argument(
        "--system-message",
        help="system message of every request ('' = none; default for a candidate: the one "
        "it was trained under, else none)",
    )
    run.set_defaults(handler=cmd_eval_run)

    results = actions.add_parser(
        "import-results",
        parents=[common],
        help="import results produced elsewhere (run_id, item_id, model, output, score, grader)",
    )
    results.add_argument("file", help="JSONL or CSV of results")
    results.add_argument("--set", required=True, help="eval set the items belong to")
    results.add_argument("--version", type=int, help="set version (default: the newest)")
    results.add_argument("--role", choices=EVAL_ROLES, required=True, help="what the model is")
    results.add_argument("--cycle", type=int, help="cycle number")
    results.add_argument("--plan", help="plan id")
    results.add_argument(
        "--system-message",
        help="system message the results were asked under ('' = none; default: not known)",
    )
    results.set_defaults(handler=cmd_eval_import_results)

    gate = commands.add_parser("gate", help="release gates and decisions")
    gate_actions = gate.add_subparsers(dest="gate_command", required=True, metavar="ACTION")
    check = gate_actions.add_parser(
        "check",
        parents=[common],
        help="evaluate the plan's gates on a cycle's candidate (exit 1 unless all pass)",
    )
    check.add_argument("--cycle", type=int, required=True, help="cycle number")
    check.add_argument("--plan", help="plan id (default: the newest plan)")
    check.set_defaults(handler=cmd_gate_check)

    decide = gate_actions.add_parser(
        "decide", parents=[common], help="approve, override (with a reason) or reject"
    )
    decide.add_argument("--cycle", type=int, required=True, help="cycle number")
    decide.add_argument("--plan", help="plan id (default: the newest plan)")
    choice = decide.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", dest="decision", action="store_const", const="approved")
    choice.add_argument("--override", dest="decision", action="store_const", const="overridden")
    choice.add_argument("--reject", dest="decision", action="store_const", const="rejected")
    decide.add_argument("--reason", help="why (required for an override; audited)")
    decide.set_defaults(handler=cmd_gate_decide)

    train = commands.add_parser("train", help="fine-tune or register a cycle's candidate")
    train_actions = train.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    start = train_actions.add_parser(
        "start",
        parents=[common],
        help="fine-tune the student on a dataset version and follow the job",
    )
    start.add_argument("--cycle", type=int, required=True, help="cycle number")
    start.add_argument("--dataset-version", required=True, help="dataset version id")
    start.add_argument(
        "--backend",
        choices=["local", "together", "openai"],
        help="where to train (default: the plan's training.backend)",
    )
    start.add_argument(
        "--base-model",
        help="model to fine-tune: a local directory or cached Hugging Face id for local, a "
        "provider's model name otherwise (default: the plan's)",
    )
    start.add_argument("--max-steps", type=int, help="stop a local job after N optimizer steps")
    start.add_argument("--export", help="its OpenAI chat JSONL export (written when missing)")
    start.add_argument("--plan", help="plan id (default: the newest plan)")
    start.add_argument("--base-url", help="hosted trainer's server (default: plan, environment)")
    start.add_argument("--no-wait", action="store_true", help="return once the job is started")
    start.add_argument("--poll", type=float, help="seconds between checks (training_poll_s)")
    start.set_defaults(handler=cmd_train_start)

    cancel = train_actions.add_parser(
        "cancel", parents=[common], help="stop a queued or running job (no candidate is set)"
    )
    cancel.add_argument("job_id", help="the job id printed by train start")
    cancel.add_argument("--base-url", help="hosted trainer's server")
    cancel.set_defaults(handler=cmd_train_cancel)

    resume = train_actions.add_parser(
        "resume", parents=[common], help="restart a stopped local job from its last checkpoint"
    )
    resume.add_argument("job_id", help="the job id printed by train start")
    resume.add_argument("--no-wait", action="store_true", help="return once it is running")
    resume.add_argument("--poll", type=float, help="seconds between checks")
    resume.set_defaults(handler=cmd_train_resume)

    follow = train_actions.add_parser(
        "follow", parents=[common], help="follow a training job to its end"
    )
    follow.add_argument("job_id", help="the job id printed by train start")
    follow.add_argument("--base-url", help="fine-tuning server")
    follow.add_argument("--poll", type=float, help="seconds between checks")
    follow.set_defaults(handler=cmd_train_follow)

    register = train_actions.add_parser(
        "register", parents=[common], help="register a model trained elsewhere as the candidate"
    )
    register.add_argument("--cycle", type=int, required=True, help="cycle number")
    register.add_argument("--model", required=True, help="model name on its server")
    register.add_argument("--endpoint", help="base URL of its OpenAI-compatible server")
    register.add_argument("--dataset-version", help="dataset version it was trained on")
    register.add_argument(
        "--weights", help="the adapter or weights it serves (their sha256 is recorded)"
    )
    register.add_argument("--plan", help="plan id (default: the newest plan)")
    register.set_defaults(handler=cmd_train_register)

    listing = train_actions.add_parser("list", parents=[common], help="list training jobs")
    listing.add_argument("--plan", help="plan id (default: the newest plan)")
    listing.add_argument("--cycle", type=int, help="one cycle only")
    listing.set_defaults(handler=cmd_train_list)


def _document_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every plan document takes: --format, --out, --plan, --version."""
    parser.add_argument("--format", help="md, html or pdf (default: from the extension of --out)")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--plan", help="plan id (default: the newest plan)")
    parser.add_argument("--version", type=int, help="version (default: the newest)")


def _command_name(args: argparse.Namespace) -> str:
    """The command as typed, e.g. ``plan lint``."""
    return " ".join(
        str(v) for k, v in vars(args).items() if (k == "command" or k.endswith("_command")) and v
    )


def _one_line(text: str, limit: int = 2) -> str:
    """A message cut to its first ``limit`` non-empty lines, joined (DuckDB's run to 28)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:limit]) if lines else ""


def _log_unexpected(command: str) -> Path:
    """Write the current exception's traceback (keys scrubbed) to a log file; return it."""
    import tempfile
    import traceback

    from core.secrets import scrub_secrets

    folder = Path(tempfile.gettempdir()) / "flywheel-logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    path = folder / f"{stamp}-{command.replace(' ', '-') or 'cli'}.log"
    path.write_text(f"python -m core {command}\n{scrub_secrets(traceback.format_exc())}")
    return path


def _fail(message: str, code: int) -> int:
    from core.secrets import scrub_secrets

    # The last line of defence: a message may quote a server's text.
    print(f"error: {scrub_secrets(message)}", file=sys.stderr)
    return code


class _NoDuckDBError(Exception):
    """Stands in for duckdb.Error while DuckDB is not imported: then none can have been raised."""


def _duckdb_error() -> type[Exception]:
    """duckdb.Error once a command has imported DuckDB (an except clause evaluates this only
    when an exception reaches it, so the commands that never touch DuckDB never import it)."""
    duckdb = sys.modules.get("duckdb")
    return _NoDuckDBError if duckdb is None else duckdb.Error


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status: 0 done, 1 a check failed, 2 bad input, usage
    or an environment problem (one line on stderr), 3 an unexpected error (one line naming the
    command and the log file that holds the traceback)."""
    args = build_parser().parse_args(argv)
    command = _command_name(args)
    try:
        if getattr(args, "store_free", False):
            pure: StoreFreeHandler = args.handler
            outcome = pure(args)
        else:
            from core.store import Store

            handler: Handler = args.handler
            outcome = handler(args, Store(args.db))
    except FlywheelError as exc:
        return _fail(str(exc), 2)
    except RecursionError:
        return _fail(
            f"{command}: the input is nested too deeply (beyond {sys.getrecursionlimit()} "
            "levels); flatten it.",
            2,
        )
    except _duckdb_error() as exc:
        return _fail(
            f"{command}: the store {args.db or default_db_path()} cannot be used: "
            f"{_one_line(str(exc))}",
            2,
        )
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"{command}: cannot use{where}: {exc.strerror or _one_line(str(exc))}", 2)
    except Exception:
        log = _log_unexpected(command)
        return _fail(f"{command}: unexpected error; the traceback is in {log}", 3)
    if args.json:
        print(json.dumps(outcome.data, default=str))
    elif outcome.text:
        print(outcome.text)
    return outcome.exit_code
