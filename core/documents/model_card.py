"""The model card of a cycle's candidate: what it is and was trained on, eval results by slice
against their thresholds, the decision and A/B result, intended use, limits, cost, sign-offs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.abtest import analyse_cycle
from core.charts import gate_thresholds_figure, slice_scores_figure
from core.cycle_reads import cycle_runs
from core.datasets import DatasetVersion, get_version
from core.documents.privacy import PRIVACY_LINT_CODES
from core.documents.rendering import DocumentContext, document
from core.documents.sections import (
    _ab_values,
    _approvals,
    _findings,
    _gate_report,
    _gate_values,
    _version_values,
)
from core.errors import AnalysisError, DatasetError
from core.formatting import number
from core.lint import lint_plan
from core.monitoring import gate_figure
from core.plan import TRAINING_BACKEND_LABELS, Plan, grid_cells
from core.plan_versions import load_plan
from core.promotion import ab_verdict_words, promotion_of, require_candidate
from core.settings import settings
from core.signoffs import approval_status
from core.store import Store

# What a gate's value and threshold measure, by comparator.
_GATE_MEASURES: dict[str, str] = {
    "absolute": "mean score",
    "no_regression": "difference from production",
    "non_inferiority": "ratio to the teacher",
    "cost": "cost ratio to the teacher",
    "latency": "p95 latency ratio to the reference",
}
_SCORE_GATES = ("absolute", "no_regression", "non_inferiority")
_SMALL_EVAL_SET = 300  # under this many items, a score's interval is wide (see core.evals)


def _slice_threshold(
    comparator: str, threshold: float | None, reference: float | None
) -> float | None:
    """The score a slice must reach, in the score's own units: the gate's threshold for an
    absolute gate, production's score less the margin, or the ratio times the teacher's."""
    if comparator == "absolute":
        return threshold
    if threshold is None or reference is None:
        return None
    if comparator == "no_regression":
        return reference + threshold  # the report's threshold is −margin
    if comparator == "non_inferiority":
        return threshold * reference
    return None


def _slice_status(candidate: float, threshold: float | None, short: bool) -> str:
    """fail: the gate found the slice short (significant after Holm); below: under its
    threshold but not significantly; pass otherwise."""
    if short:
        return "fail"
    if threshold is not None and candidate < threshold - 1e-12:
        return "below"
    return "pass"


def _mean(values: Iterable[float]) -> float | None:
    listed = list(values)
    return sum(listed) / len(listed) if listed else None


def _overall_row(
    store: Store, gate: Mapping[str, Any], runs: Mapping[str, str]
) -> dict[str, Any] | None:
    """A score gate on all its items: the candidate's and the reference's mean over the items
    both scored, read from the runs the gate report names; None when nothing was scored."""
    # core.evals and core.graders load jsonschema (about 0.2 s): only a card with score gates
    # reads item scores.
    from core.evals import item_scores
    from core.graders import grader_for_metric

    grader = grader_for_metric(str(gate["metric"]))
    comparator = str(gate["comparator"])
    role = {"no_regression": "production", "non_inferiority": "teacher"}.get(comparator)
    if role is None:  # absolute: show production's score, else the teacher's, when stored
        role = next((r for r in ("production", "teacher") if r in runs), None)
    candidate = item_scores(store, runs["candidate"], grader)
    reference = item_scores(store, runs[role], grader) if role and role in runs else None
    ids = sorted(candidate.keys() & reference.keys()) if reference is not None else []
    paired = comparator != "absolute" and reference is not None
    shown = ids if paired else sorted(candidate)
    reference_mean = _mean(reference[i] for i in ids) if reference is not None else None
    candidate_mean = _mean(candidate[i] for i in shown)
    if candidate_mean is None:
        return None
    return {
        "gate": gate["name"],
        "dimension": None,
        "slice": "all items",
        "n": len(shown),
        "candidate": candidate_mean,
        "threshold": _slice_threshold(comparator, gate["threshold"], reference_mean),
        "reference": reference_mean,
        "reference_role": role if reference_mean is not None else None,
        # Over all items: a gate that fails only on a slice clears its threshold here (its
        # slices' rows show where it fails), so the bar is not drawn red past its tick.
        "status": (
            "pass"
            if gate["verdict"] == "fail"
            and any(s["short"] for s in gate.get("slices", []))
            and gate.get("interval") is not None
            and float(gate["interval"][0]) > float(gate["threshold"] or 0.0)
            else str(gate["verdict"])
        ),
        "p_holm": None,
    }


def _slice_rows(store: Store, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per score gate: one row on all items, then one per slice the gate tested."""
    rows: list[dict[str, Any]] = []
    runs: Mapping[str, Mapping[str, str]] = report.get("runs", {})
    for gate in report["gates"]:
        comparator = str(gate["comparator"])
        if comparator not in _SCORE_GATES:
            continue
        gate_runs = runs.get(gate["name"], {})
        overall = _overall_row(store, gate, gate_runs) if "candidate" in gate_runs else None
        if overall is not None:
            rows.append(overall)
        role = {"no_regression": "production", "non_inferiority": "teacher"}.get(comparator)
        for s in gate.get("slices", []):
            threshold = _slice_threshold(comparator, gate["threshold"], s["reference"])
            rows.append(
                {
                    "gate": gate["name"],
                    "dimension": s["dimension"],
                    "slice": f"{s['dimension']} = {s['value']}",
                    "n": int(s["items"]),
                    "candidate": float(s["candidate"]),
                    "threshold": threshold,
                    "reference": s["reference"],
                    "reference_role": role if s["reference"] is not None else None,
                    "status": _slice_status(float(s["candidate"]), threshold, bool(s["short"])),
                    "p_holm": s["p_holm"],
                }
            )
    return rows


def _eval_sets_read(store: Store, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The eval set versions the candidate's runs were scored on, with their item counts."""
    run_ids = sorted(
        {roles["candidate"] for roles in report.get("runs", {}).values() if "candidate" in roles}
    )
    sets: dict[tuple[str, int], dict[str, Any]] = {}
    for run_id in run_ids:
        row = store.fetch_one(
            "SELECT r.eval_set, r.set_version, v.items, v.frozen_at IS NOT NULL"
            " FROM eval_runs r JOIN eval_set_versions v"
            " ON v.eval_set = r.eval_set AND v.version = r.set_version WHERE r.run_id = ?",
            [run_id],
        )
        if row is not None:
            key = (str(row[0]), int(row[1]))
            entry = sets.setdefault(
                key,
                {"eval_set": key[0], "version": key[1], "size": int(row[2]), "runs": []},
            )
            entry["frozen"] = bool(row[3])
            entry["runs"].append(run_id)
    return [sets[k] for k in sorted(sets)]


def _training_job(store: Store, job_id: str | None) -> dict[str, Any] | None:
    if job_id is None:
        return None
    rows = store.fetch_dicts(
        "SELECT job_id, base_model, status, hyperparameters, export_rows, export_sha256,"
        " trained_tokens, cost_usd, created_at, finished_at, actor,"
        " coalesce(backend, 'openai') AS backend, gpu_hours, device, weights_sha256"
        " FROM training_jobs WHERE job_id = ?",
        [job_id],
    )
    if not rows:
        return None
    job: dict[str, Any] = rows[0]
    job["hyperparameters"] = {
        name: _setting_text(value)
        for name, value in json.loads(job["hyperparameters"] or "{}").items()
        if value is not None and name != "base_model"
    }
    return job


def _setting_text(value: Any) -> str:
    """A training setting as a reader sees it: numbers formatted, lists joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _intended_use(plan: Plan) -> dict[str, Any]:
    """What the plan says the student is for, and what follows as out of scope."""
    languages = sorted(
        {
            code
            for rule in plan.quality_filters
            if rule.rule == "language"
            for code in rule.languages
        }
    )
    axes = [{"name": a.name, "choices": list(a.values)} for a in plan.generation.axes if a.values]
    out_of_scope: list[str] = []
    for axis in axes:
        out_of_scope.append(
            f"Requests whose {axis['name']} is not one of: {', '.join(axis['choices'])}. The "
            "student was neither trained on synthetic data for them nor evaluated on them."
        )
    if languages:
        out_of_scope.append(
            f"Languages other than {', '.join(languages)}: the language filter removed them "
            "from the training data."
        )
    if plan.consent.flows:
        segments = ", ".join(flow.segment for flow in plan.consent.flows)
        out_of_scope.append(
            f"Users outside the segments whose consent flow the plan describes ({segments})."
        )
    out_of_scope.append(
        f"Any feature other than {plan.goal.feature}: another use needs its own eval set and gates."
    )
    out_of_scope.append(
        f"Writing training data for later cycles: the teacher ({plan.goal.teacher_model}) "
        "does that, so a student never learns from its own answers."
    )
    return {
        "feature": plan.goal.feature,
        "business_goal": plan.goal.business_goal,
        "owner": plan.goal.owner,
        "teacher": plan.goal.teacher_model,
        "quality_retention": plan.goal.target_quality_retention,
        "cost_reduction": plan.goal.target_cost_reduction,
        "segments": [{"segment": f.segment, "mechanism": f.mechanism} for f in plan.consent.flows],
        "axes": axes,
        "output_schema": plan.generation.output_schema,
        "languages": languages,
        "arms": [
            {"name": a.name, "model": a.model, "share": a.traffic_share} for a in plan.ab_test.arms
        ],
        "out_of_scope": out_of_scope,
    }


def _coverage_gaps(plan: Plan, cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cells of the plan's generation grid with no row in the training dataset."""
    held = {
        tuple(sorted((str(k), str(v)) for k, v in c["cell"].items()))
        for c in cells
        if int(c["production"]) + int(c["synthetic"]) > 0
    }
    return [
        " · ".join(cell.values())
        for cell in grid_cells(plan.generation)
        if tuple(sorted(cell.items())) not in held
    ]


def _card_limitations(
    *,
    plan: Plan,
    dataset: DatasetVersion | None,
    gates: Mapping[str, Any],
    slices: Sequence[Mapping[str, Any]],
    eval_sets: Sequence[Mapping[str, Any]],
    ab: Mapping[str, Any] | None,
    ab_error: str | None,
) -> list[str]:
    """What a reviewer should know before relying on the student, in the order of the card."""
    limits: list[str] = []
    if dataset is None:
        limits.append("The dataset version the candidate was trained on is not recorded.")
    else:
        cells = list(dataset.composition.get("cells", []))
        gaps = _coverage_gaps(plan, cells)
        if gaps:
            shown = ", ".join(gaps[:8]) + (f" and {len(gaps) - 8} more" if len(gaps) > 8 else "")
            limits.append(
                f"Coverage gaps: {len(gaps)} cell(s) of the generation grid hold no training "
                f"row ({shown})."
            )
        thin = [c for c in cells if 0 < int(c["production"]) + int(c["synthetic"]) < 3]
        if thin:
            limits.append(f"{len(thin)} cell(s) of the training data hold fewer than 3 rows.")
        if dataset.rows and dataset.synthetic_rows:
            limits.append(
                f"{dataset.synthetic_rows / dataset.rows:.0%} of the training rows are synthetic "
                f"(written by the teacher), {dataset.production_rows} come from production."
            )
        if dataset.rows_now != dataset.rows:
            limits.append(
                f"{dataset.rows - dataset.rows_now} training row(s) were erased since the "
                "build; the model was trained before the erasure."
            )
    minimum = settings.gate_min_items
    for row in slices:
        if row["dimension"] is not None and int(row["n"]) < minimum:
            limits.append(
                f"Slice {row['slice']} of “{row['gate']}” has {row['n']} items, fewer than "
                f"the {minimum} a gate needs: its score is noisy."
            )
    for row in slices:
        if row["dimension"] is None:
            continue  # a gate on all its items: its verdict is listed below
        if row["status"] == "fail":
            limits.append(
                f"Slice {row['slice']} of “{row['gate']}” falls short of its threshold "
                "significantly."
            )
        elif row["status"] == "below":
            limits.append(
                f"Slice {row['slice']} of “{row['gate']}” scores below its threshold, though "
                "not significantly."
            )
    checked = {g["name"] for g in gates["gates"] if g["verdict"] != "insufficient_data"}
    for gate in plan.gates:
        if gate.name not in checked:
            continue
        tested = {row["dimension"] for row in slices if row["gate"] == gate.name}
        for dimension in gate.slices:
            if dimension not in tested:
                limits.append(
                    f"“{gate.name}” should check each {dimension}, but no slice by {dimension} "
                    "was tested (no eval item carries that label)."
                )
    for g in gates["gates"]:
        if g["verdict"] != "pass":
            kind = "blocking" if g["blocking"] else "non-blocking"
            outcome = "failed" if g["verdict"] == "fail" else "had too little data to decide"
            limits.append(f"The {kind} gate “{g['name']}” {outcome}.")
    for s in eval_sets:
        if int(s["size"]) < _SMALL_EVAL_SET:
            limits.append(
                f"The eval set {s['eval_set']} v{s['version']} holds {s['size']} items; under "
                f"{_SMALL_EVAL_SET} items a score's interval is wide."
            )
    if ab_error:
        limits.append(f"The A/B test could not be analysed: {ab_error}")
    elif ab is not None and ab["decision"] != "ship":
        limits.append(f"The A/B test's verdict is {ab_verdict_words(ab['decision'])}.")
    if ab is not None:
        for g in ab["guardrails"]:
            if g["breached"]:
                limits.append(f"The A/B guardrail {g['metric']} was breached.")
    return limits


@document("model-card", "Model card", "model")
def build_model_card(*, store: Store, plan_id: str, cycle: int) -> DocumentContext:
    """A cycle's candidate: what it is and was trained on, eval results by slice against their
    thresholds, the decision and A/B result, intended use, limits, cost and sign-offs.

    Raises DocumentError when the cycle has no candidate model.
    """
    # core.gates loads scipy (about 1.7 s): imported where a gate is read, so that the plan
    # documents (`report plan`, the Plan page) do not wait for it.
    from core.gates import cycle_decisions

    candidate = require_candidate(store, plan_id, cycle)
    model = str(candidate["model"])
    decisions = [d for d in cycle_decisions(store, plan_id, cycle) if d["candidate_model"] == model]
    dataset = None
    if candidate["dataset_version"]:
        try:
            dataset = get_version(store, str(candidate["dataset_version"]))
        except DatasetError:
            dataset = None
    cycle_built = next(
        (str(r["dataset_version"]) for r in cycle_runs(store, plan_id) if r["cycle"] == cycle),
        None,
    )
    plan_version = (
        dataset.plan_version
        if dataset is not None
        else (int(decisions[0]["plan_version"]) if decisions else None)
    )
    plan, version = load_plan(store, plan_id, plan_version)
    job = _training_job(store, candidate["job_id"])

    report, source = _gate_report(store, plan_id, cycle, decisions)
    gates: dict[str, Any] = {"source": source, "verdict": None, "candidate": None, "gates": []}
    slices: list[dict[str, Any]] = []
    eval_sets: list[dict[str, Any]] = []
    if report is not None:
        gates = {**_gate_values(report), "source": source}
        for g in gates["gates"]:
            g["measure"] = _GATE_MEASURES.get(g["comparator"], g["comparator"])
        slices = _slice_rows(store, report)
        eval_sets = _eval_sets_read(store, report)

    ab: dict[str, Any] | None = None
    ab_error: str | None = None
    try:
        analysis = analyse_cycle(store, plan, cycle, plan_id=plan_id)
    except AnalysisError as exc:
        analysis, ab_error = None, str(exc)
    if analysis is not None:
        ab = _ab_values(analysis)
    promotion = promotion_of(model, decisions, ab["decision"] if ab else None)

    findings = lint_plan(plan).findings
    values = {
        "plan": plan,
        "plan_id": plan_id,
        "version": version,
        "cycle": cycle,
        "model": model,
        "candidate": {
            "source": candidate["source"],
            "endpoint": candidate["endpoint"],
            "registered_at": candidate["registered_at"],
            "registered_by": candidate["registered_by"],
            "job_id": candidate["job_id"],
        },
        "base_model": job["base_model"]
        if job
        else candidate.get("base_model") or plan.training.base_model(plan.goal.student_model),
        "base_model_recorded": job is not None,
        "job": job,
        "dataset": _version_values(dataset) if dataset is not None else None,
        "dataset_named": candidate["dataset_version"],
        "cycle_built": cycle_built,
        "gates": gates,
        "slices": slices,
        "eval_sets": eval_sets,
        "promotion": promotion.to_dict(),
        "decisions": decisions,
        "ab": ab,
        "ab_error": ab_error,
        "use": _intended_use(plan),
        "limitations": _card_limitations(
            plan=plan,
            dataset=dataset,
            gates=gates,
            slices=slices,
            eval_sets=eval_sets,
            ab=ab,
            ab_error=ab_error,
        ),
        "findings": _findings(findings),
        "privacy_codes": sorted(PRIVACY_LINT_CODES),
        "risks": plan.sign_offs.risks,
        "training_price": (
            plan.training.together.price_per_1m_training_tokens
            if job and job["backend"] == "together"
            else plan.training.openai.price_per_1m_training_tokens
        ),
        "backend_label": TRAINING_BACKEND_LABELS.get(
            str(job["backend"]) if job else "", "elsewhere"
        ),
        "weights_sha256": candidate.get("weights_sha256"),
        "economics": plan.economics,
        "approvals": _approvals(approval_status(store, plan_id, version)),
        "approvers": plan.sign_offs.approvers,
    }
    figures = {"slices": slice_scores_figure(slices)} if slices else {}
    if report is not None and report["gates"]:
        figures["gates"] = gate_thresholds_figure([gate_figure(g) for g in report["gates"]])
    return DocumentContext(values, figures)
