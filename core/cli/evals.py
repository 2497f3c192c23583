"""``eval import-set|sets|freeze|run|import-results``: eval sets, runs and imported results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.cli._base import (
    CommaSeparated,
    Outcome,
    base_url_option,
    cycle_option,
    default_plan_id,
    local_user,
    noun_group,
    plan_option,
    set_version_option,
)
from core.cli._output import table
from core.errors import EvalError
from core.labels import label

if TYPE_CHECKING:
    from core.evals import Role
    from core.store import Store

command = noun_group("eval")
EVAL_ROLES = ("candidate", "production", "teacher", "other")  # core.evals.Role
FILE = click.Path(dir_okay=False, path_type=Path)


def set_name_option(f: click.decorators.FC) -> click.decorators.FC:
    """--set NAME: the eval set."""
    return click.option("--set", "eval_set", required=True, metavar="NAME", help="eval set name")(f)


def role_option(f: click.decorators.FC) -> click.decorators.FC:
    """--role: what the model is to the gates."""
    return click.option(
        "--role",
        type=click.Choice(EVAL_ROLES),
        required=True,
        help="what the model is to the gates",
    )(f)


def system_message_option(f: click.decorators.FC) -> click.decorators.FC:
    """--system-message TEXT of every request."""
    return click.option(
        "--system-message",
        metavar="TEXT",
        help="system message of every request ('' = none; default for a candidate: the one "
        "it was trained under, else none or not known)",
    )(f)


@command.leaf(
    "import-set",
    help="import eval items (JSONL or CSV) as a new version of their set",
    description="Each set the file names gets the file's items as its content: unchanged "
    "content keeps the version, a changed draft is updated, a changed frozen version makes "
    "a new one. Bad rows are quarantined (see `data rejects --batch`).",
)
@click.argument("file", type=FILE)
@click.option("--merge", is_flag=True, help="lay the items over the newest version's")
def import_set(store: Store, file: Path, merge: bool) -> Outcome:
    from core.evals import import_eval_set

    result = import_eval_set(store, file, merge=merge, user=local_user())
    lines = [table(result.sets, ("eval_set", "version", "items", "status"), codes=("status",))]
    head = (
        f"Batch {result.batch_id}: {result.rows_read} rows read, {result.accepted} accepted, "
        f"{result.rejected} rejected (see `data rejects --batch {result.batch_id}`)."
    )
    return Outcome(result.to_dict(), "\n".join([head, *lines]))


@command.leaf("sets", help="list eval sets and versions")
def sets(store: Store) -> Outcome:
    from core.evals import eval_sets

    rows = eval_sets(store)
    columns = ("eval_set", "version", "items", "frozen", "versions", "content_hash")
    shown = [{**r, "content_hash": str(r["content_hash"] or "")[:12] or None} for r in rows]
    text = table(shown, columns) if rows else ""
    return Outcome({"sets": rows}, text or "No eval sets yet: `eval import-set FILE`.")


@command.leaf("freeze", help="freeze an eval set version")
@click.argument("eval_set", metavar="SET")
@set_version_option
@click.option("--reason", required=True, help="why it is frozen (audited)")
def freeze(store: Store, eval_set: str, set_version: int | None, reason: str) -> Outcome:
    from core.evals import freeze_set_version, resolve_version

    version = resolve_version(store, eval_set, set_version)
    froze = freeze_set_version(store, eval_set, version, user=local_user(), reason=reason)
    state = "Froze" if froze else "Already frozen:"
    return Outcome(
        {"eval_set": eval_set, "version": version, "frozen": True, "changed": froze},
        f"{state} {eval_set} v{version}.",
    )


@command.leaf(
    "run",
    help="run a model on an eval set and grade it",
    description="Ask an OpenAI-compatible endpoint (--base-url, else OPENAI_BASE_URL, else "
    "OpenAI; key from FLYWHEEL_EVAL_API_KEY or OPENAI_API_KEY, never stored) for each item, "
    "then grade; a cycle's candidate trained locally answers in-process (transformers) "
    "unless --base-url names a server for it. Running the same request again resumes it.",
)
@set_name_option
@set_version_option
@click.option("--model", help="model name (default for --role candidate: the cycle's)")
@role_option
@cycle_option(required=False)
@plan_option
@base_url_option("base URL of the model's OpenAI-compatible server")
@click.option(
    "--graders",
    type=CommaSeparated(str, "exact,regex"),
    default="python_parses,python_tests",
    metavar="A,B",
    show_default=True,
    help="comma-separated: exact, normalised, regex, json_schema, python_parses, "
    "python_tests, llm_judge",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="K",
    help="samples per item (their scores averaged)",
)
@click.option(
    "--temperature", type=float, default=0.0, show_default=True, help="sampling temperature"
)
@click.option("--judge-model", help="judge of llm_judge (default: judge_model setting)")
@click.option("--judge-base-url", metavar="URL", help="judge's server (default: judge_base_url)")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    help="requests in flight (default: eval_concurrency)",
)
@system_message_option
def run(
    store: Store,
    eval_set: str,
    set_version: int | None,
    model: str | None,
    role: Role,
    cycle: int | None,
    plan: str | None,
    base_url: str | None,
    graders: list[str],
    samples: int,
    temperature: float,
    judge_model: str | None,
    judge_base_url: str | None,
    concurrency: int | None,
    system_message: str | None,
) -> Outcome:
    from core.evals import JudgeConfig, eval_endpoint, judge_endpoint, run_eval, run_summary
    from core.training import cycle_candidate

    plan_id = plan
    local_weights = None
    if role == "candidate" and cycle is None:
        raise EvalError("A candidate run needs --cycle N.")
    if model is None:
        if role != "candidate" or cycle is None:
            raise EvalError("Give --model (only a candidate run can default to the cycle's).")
        plan_id = plan_id or default_plan_id(store)
        candidate = cycle_candidate(store, plan_id, cycle)
        if candidate is None:
            raise EvalError(
                f"Cycle {cycle} has no candidate: `train start` or `train register` first, "
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
    if role == "candidate" and plan_id is None:
        plan_id = default_plan_id(store)
    judge = None
    if "llm_judge" in graders:
        from core.settings import get_setting

        judge = JudgeConfig(
            model=judge_model or str(get_setting("judge_model")),
            endpoint=judge_endpoint(judge_base_url),
        )
    report = run_eval(
        store,
        eval_set=eval_set,
        version=set_version,
        model=model,
        role=role,
        cycle=cycle,
        plan_id=plan_id,
        endpoint=eval_endpoint(base_url),
        graders=graders,
        samples=samples,
        temperature=temperature,
        judge=judge,
        concurrency=concurrency,
        local_weights=local_weights,
        system_message=system_message,
        user=local_user(),
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
                f"Run {report.run_id}: {model} on {eval_set} v{report.set_version}. "
                f"{report.message}",
                "  system message: "
                + (f"{report.system_message!r}" if report.system_message else "none"),
                *lines,
            ]
        ),
    )


@command.leaf(
    "import-results",
    help="import results produced elsewhere (run_id, item_id, model, output, score, grader)",
)
@click.argument("file", type=FILE)
@set_name_option
@set_version_option
@role_option
@cycle_option(required=False)
@plan_option
@system_message_option
def import_results(
    store: Store,
    file: Path,
    eval_set: str,
    set_version: int | None,
    role: Role,
    cycle: int | None,
    plan: str | None,
    system_message: str | None,
) -> Outcome:
    from core.evals import import_results

    result = import_results(
        store,
        file,
        eval_set=eval_set,
        version=set_version,
        role=role,
        cycle=cycle,
        plan_id=plan,
        user=local_user(),
        system_message=system_message,
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
