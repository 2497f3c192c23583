"""Eval results: importing those produced elsewhere, and reading what runs and imports stored.

Results produced elsewhere are imported with DESIGN.md's contract: run_id, item_id, model,
output, score, grader. The reads (runs, per-item scores, summaries, paired comparisons, slice
means, judge agreement) serve the Evals page, the CLI, the gates and the documents.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import clock
from core.access import User, require
from core.audit import record_audit
from core.errors import EvalError
from core.evals.runs import ROLES, Role
from core.evals.sets import _records, _text, freeze_used_version, load_items, resolve_version
from core.graders import JudgeAgreement, judge_agreement
from core.store import Store, insert_rows


@dataclass(frozen=True)
class ResultsImport:
    """What a results import did: the runs it stored and the rows it refused, with reasons."""

    eval_set: str
    set_version: int
    rows_read: int
    accepted: int
    rejected: list[dict[str, Any]]
    runs: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


def import_results(
    store: Store,
    path: str | Path,
    *,
    eval_set: str,
    role: Role,
    version: int | None = None,
    cycle: int | None = None,
    plan_id: str | None = None,
    user: User,
    source: str = "import",
    system_message: str | None = None,
) -> ResultsImport:
    """Store results produced elsewhere: one row per (run_id, item_id, model, output, score,
    grader), optionally ``sample``, ``latency_ms``, ``input_tokens``, ``output_tokens``.
    ``system_message`` is the one the runs were asked under ('' = none; None = not known, which
    the gates point out for a candidate).

    A row with an unknown item, a score outside 0..1, or a model that differs from its run's is
    refused with its line and reason; the others are stored and the set version is frozen.
    Raises EvalError when the file cannot be read or holds no valid row; AccessError, before
    anything is read or written, when ``user`` may not run evals (results decide the gates).
    """
    require(user, "eval.run")
    source_path = Path(path)
    if not source_path.is_file():
        raise EvalError(f"{source_path}: no such file; give a JSONL or CSV file of results.")
    records = list(_records(source_path))
    return record_results(
        store,
        records,
        eval_set=eval_set,
        role=role,
        version=version,
        cycle=cycle,
        plan_id=plan_id,
        user=user,
        source=source,
        system_message=system_message,
    )


def record_results(
    store: Store,
    records: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    eval_set: str,
    role: Role,
    version: int | None = None,
    cycle: int | None = None,
    plan_id: str | None = None,
    user: User,
    source: str = "import",
    system_message: str | None = None,
) -> ResultsImport:
    """Store (line, record) results as ``import_results`` does (the demo uses it directly).

    Raises AccessError, before anything is written, when ``user`` may not run evals.
    """
    require(user, "eval.run")
    if role not in ROLES:
        raise EvalError(f"Unknown role '{role}'; use one of {', '.join(ROLES)}.")
    number = resolve_version(store, eval_set, version)
    known = {i.item_id for i in load_items(store, eval_set, number)}
    who = user.name
    rejected: list[dict[str, Any]] = []
    models: dict[str, str] = {}
    outputs: dict[tuple[str, str, int], list[Any]] = {}
    scores: list[list[Any]] = []
    now = clock.now()
    for line, record in records:
        run_id, item_id = _text(record.get("run_id")), _text(record.get("item_id"))
        model, grader = _text(record.get("model")), _text(record.get("grader"))
        missing = [
            k for k, v in (("run_id", run_id), ("item_id", item_id), ("model", model)) if not v
        ]
        if grader is None:
            missing.append("grader")
        if missing:
            rejected.append({"line": line, "reason": f"missing {', '.join(missing)}"})
            continue
        assert run_id and item_id and model and grader
        if item_id not in known:
            rejected.append(
                {"line": line, "reason": f"item {item_id} is not in {eval_set} v{number}"}
            )
            continue
        if models.setdefault(run_id, model) != model:
            rejected.append(
                {"line": line, "reason": f"run {run_id} already has model {models[run_id]}"}
            )
            continue
        raw_score, error = record.get("score"), _text(record.get("error"))
        try:
            score = None if raw_score is None else float(raw_score)
        except (TypeError, ValueError):
            rejected.append({"line": line, "reason": f"score {raw_score!r} is not a number"})
            continue
        if score is not None and not 0.0 <= score <= 1.0:
            rejected.append({"line": line, "reason": f"score {score} is outside 0..1"})
            continue
        if score is None and not error:
            rejected.append({"line": line, "reason": "no score and no error"})
            continue
        try:
            sample = int(record.get("sample") or 0)
            latency = _number(record.get("latency_ms"))
            tokens_in = _number(record.get("input_tokens"))
            tokens_out = _number(record.get("output_tokens"))
        except (TypeError, ValueError):
            rejected.append({"line": line, "reason": "sample, latency or tokens not numbers"})
            continue
        row = [
            run_id,
            item_id,
            sample,
            _text(record.get("output")),
            None,
            latency,
            None if tokens_in is None else int(tokens_in),
            None if tokens_out is None else int(tokens_out),
            now,
        ]
        # Several graders' rows carry the same output: keep what any of them gave.
        earlier = outputs.get((run_id, item_id, sample))
        if earlier is not None:
            row = [a if a is not None else b for a, b in zip(earlier, row, strict=True)]
        outputs[(run_id, item_id, sample)] = row
        scores.append([run_id, item_id, sample, grader, score, error, "", now])
    if not scores:
        reasons = "; ".join(f"line {r['line']}: {r['reason']}" for r in rejected[:3])
        raise EvalError(f"No valid result rows to import ({reasons or 'the file is empty'}).")
    existing = {
        str(r[0]): (str(r[1]), int(r[2]))
        for r in store.fetch_all(
            "SELECT run_id, eval_set, set_version FROM eval_runs WHERE run_id IN"
            " (SELECT unnest(?::VARCHAR[]))",
            [list(models)],
        )
    }
    clash = [r for r, where in existing.items() if where != (eval_set, number)]
    if clash:
        raise EvalError(
            f"Run {clash[0]} is stored for another eval set version; give the results a new run_id."
        )
    samples = defaultdict(set)
    for run_id, _, sample in outputs:
        samples[run_id].add(sample)
    with store.transaction() as con:
        for run_id, model in models.items():
            if run_id not in existing:
                con.execute(
                    "INSERT INTO eval_runs (run_id, plan_id, cycle, role, model, eval_set,"
                    " set_version, source, samples, status, started_at, finished_at, actor,"
                    " message, system_message)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?)",
                    [
                        run_id,
                        plan_id,
                        cycle,
                        role,
                        model,
                        eval_set,
                        number,
                        source,
                        len(samples[run_id]),
                        now,
                        now,
                        who,
                        "imported",
                        None if system_message is None else system_message.strip(),
                    ],
                )
        insert_rows(con, "eval_outputs", list(outputs.values()), replace=True)
        insert_rows(con, "eval_scores", scores, replace=True)
        record_audit(
            con,
            actor=who,
            action="eval.import_results",
            target=f"{eval_set}@v{number}",
            detail={"runs": sorted(models), "rows": len(scores), "rejected": len(rejected)},
        )
    freeze_used_version(
        store, eval_set, number, actor=who, reason=f"results imported ({', '.join(sorted(models))})"
    )
    return ResultsImport(eval_set, number, len(records), len(scores), rejected, sorted(models))


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


# -- reading results ---------------------------------------------------------------------------


def list_runs(
    store: Store, *, plan_id: str | None = None, cycle: int | None = None
) -> list[dict[str, Any]]:
    """Eval runs (of a plan and cycle when given), newest first."""
    sql = (
        "SELECT run_id, plan_id, cycle, role, model, endpoint, eval_set, set_version, source,"
        " samples, status, started_at, finished_at, api_calls, message, system_message"
        " FROM eval_runs WHERE 1=1"
    )
    params: list[Any] = []
    if plan_id is not None:
        sql += " AND (plan_id = ? OR plan_id IS NULL)"
        params.append(plan_id)
    if cycle is not None:
        sql += " AND (cycle = ? OR cycle IS NULL)"
        params.append(cycle)
    return store.fetch_dicts(sql + " ORDER BY started_at DESC, run_id DESC", params)


def item_scores(store: Store, run_id: str, grader: str) -> dict[str, float]:
    """One score per item of a run for one grader: the mean of its graded samples."""
    rows = store.fetch_all(
        "SELECT item_id, avg(score) FROM eval_scores WHERE run_id = ? AND grader = ?"
        " AND score IS NOT NULL GROUP BY item_id",
        [run_id, grader],
    )
    return {str(r[0]): float(r[1]) for r in rows}


def run_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Per grader of a run: items scored, mean score, Wilson interval when binary, errors."""
    import numpy as np  # only when scores are summarised: listing runs never loads it

    out: list[dict[str, Any]] = []
    for grader, errors in store.fetch_all(
        "SELECT grader, count(*) FILTER (WHERE error IS NOT NULL) FROM eval_scores"
        " WHERE run_id = ? GROUP BY grader ORDER BY grader",
        [run_id],
    ):
        scores = item_scores(store, run_id, str(grader))
        values = np.array(list(scores.values()), dtype=float)
        row: dict[str, Any] = {
            "grader": str(grader),
            "items": int(values.size),
            "mean": float(values.mean()) if values.size else None,
            "ci_low": None,
            "ci_high": None,
            "grader_errors": int(errors),
            "small_sample": bool(values.size < 300),
        }
        if values.size and bool(np.all((values == 0) | (values == 1))):
            from core.stats import wilson_interval  # scipy: only when a summary is asked for

            interval = wilson_interval(int(values.sum()), int(values.size))
            row.update(ci_low=interval.ci[0], ci_high=interval.ci[1])
        out.append(row)
    return out


def run_usage(store: Store, run_id: str) -> dict[str, Any]:
    """Requests, mean tokens and latency percentiles of a run's outputs."""
    row = store.fetch_one(
        "SELECT count(*), avg(input_tokens), avg(output_tokens), quantile_cont(latency_ms, 0.5),"
        " quantile_cont(latency_ms, 0.95), count(latency_ms), count(input_tokens)"
        " FROM eval_outputs WHERE run_id = ? AND error IS NULL",
        [run_id],
    )
    keys = (
        "requests",
        "mean_input_tokens",
        "mean_output_tokens",
        "latency_p50_ms",
        "latency_p95_ms",
        "with_latency",
        "with_tokens",
    )
    values = row or (0, None, None, None, None, 0, 0)
    return {k: (float(v) if isinstance(v, float) else v) for k, v in zip(keys, values, strict=True)}


def _item_labels(store: Store, eval_set: str, version: int, dimension: str) -> dict[str, str]:
    return {
        i.item_id: value
        for i in load_items(store, eval_set, version)
        if (value := i.slice_value(dimension)) is not None
    }


def paired_comparison(
    store: Store, candidate_run: str, baseline_run: str, grader: str, dimension: str | None
) -> list[dict[str, Any]]:
    """Wins, losses and ties of the candidate against a baseline on the items both scored,
    per slice of ``dimension`` (one row "all" when None)."""
    where = store.fetch_one(
        "SELECT eval_set, set_version FROM eval_runs WHERE run_id = ?", [candidate_run]
    )
    if where is None:
        raise EvalError(f"There is no eval run {candidate_run}.")
    candidate = item_scores(store, candidate_run, grader)
    baseline = item_scores(store, baseline_run, grader)
    labels = _item_labels(store, str(where[0]), int(where[1]), dimension) if dimension else {}
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for item_id in sorted(candidate.keys() & baseline.keys()):
        slice_name = labels.get(item_id, "(none)") if dimension else "all"
        diff = candidate[item_id] - baseline[item_id]
        table[slice_name][0 if diff > 1e-12 else 1 if diff < -1e-12 else 2] += 1
    return [
        {"slice": name, "wins": w, "losses": lo, "ties": t, "items": w + lo + t}
        for name, (w, lo, t) in sorted(table.items())
    ]


def slice_means(
    store: Store, runs: Mapping[str, str], grader: str, dimension: str
) -> dict[str, dict[str, float]]:
    """Mean score per slice for each labelled run: {label: {slice: mean}} (heatmap input)."""
    import numpy as np  # only when scores are summarised: listing runs never loads it

    out: dict[str, dict[str, float]] = {}
    for label, run_id in runs.items():
        where = store.fetch_one(
            "SELECT eval_set, set_version FROM eval_runs WHERE run_id = ?", [run_id]
        )
        if where is None:
            continue
        labels = _item_labels(store, str(where[0]), int(where[1]), dimension)
        groups: dict[str, list[float]] = defaultdict(list)
        for item_id, score in item_scores(store, run_id, grader).items():
            if item_id in labels:
                groups[labels[item_id]].append(score)
        out[label] = {name: float(np.mean(v)) for name, v in sorted(groups.items())}
    return out


def judge_agreement_for_run(store: Store, run_id: str) -> JudgeAgreement:
    """Agreement and Cohen's kappa of llm_judge against human labels (grader "human") on
    the same outputs of a run; n = 0 when no output carries both."""
    rows = store.fetch_all(
        "SELECT j.score, h.score FROM eval_scores j JOIN eval_scores h USING (run_id, item_id,"
        " sample) WHERE j.run_id = ? AND j.grader = 'llm_judge' AND h.grader = 'human'"
        " AND j.score IS NOT NULL AND h.score IS NOT NULL",
        [run_id],
    )
    return judge_agreement([float(r[0]) for r in rows], [float(r[1]) for r in rows])
