"""Release gates: the plan's gates evaluated on a cycle's eval results, and the decision record.

Each gate compares the cycle's candidate with a reference on the same frozen eval set version,
pairing items (several samples of an item are averaged within the item first):

    absolute         candidate's mean ≥ threshold: Wilson interval (binary) or t interval
    no_regression    candidate − production ≥ −margin: paired bootstrap interval of the mean
                     difference, with McNemar's exact test as evidence for binary scores
    non_inferiority  candidate ≥ ratio × teacher: Fieller's lower bound on the ratio
    cost             candidate's cost per 1k requests ≤ threshold × the teacher's (threshold
                     defaults to 1 / goal.target_cost_reduction)
    latency          candidate's p95 latency ≤ threshold × production's (else the teacher's)

A gate passes when its interval clears the threshold, fails when it lies wholly on the wrong side
and has insufficient data otherwise (too few paired items, no reference run, an interval that
straddles the threshold). A gate with slices also tests each slice for a shortfall (one-sided
McNemar or binomial for binary scores, t-test otherwise), corrects across all its slices with
Holm, and fails when any slice falls short significantly and by more than the margin. The
overall verdict passes only when every blocking gate passes; ``gate check`` exits 1 otherwise.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from core import clock
from core.access import Permission, User, require
from core.audit import record_audit
from core.errors import GateError
from core.evals import candidate_system_message, freeze_used_version, load_items, run_usage
from core.formatting import significant
from core.graders import GRADERS, grader_for_metric
from core.plan import Economics, Gate, Plan, system_message_hash
from core.plan_versions import load_plan
from core.settings import settings
from core.stats import (
    format_p_value,
    holm_adjusted,
    mcnemar_exact,
    non_inferiority_gate,
    non_inferiority_paired,
    paired_bootstrap,
    paired_t_test,
    wilson_interval,
)
from core.stats import gate_verdict as interval_verdict
from core.store import Store

__all__ = [
    "DECISIONS",
    "DECISION_PERMISSIONS",
    "GateInputs",
    "GateReport",
    "GateResult",
    "SliceResult",
    "Usage",
    "check_gates",
    "current_decision",
    "cycle_decisions",
    "evaluate_gate",
    "explain_gate",
    "overall_verdict",
    "record_decision",
]

Verdict = Literal["pass", "fail", "insufficient_data"]
DECISIONS = ("approved", "overridden", "rejected")
# Shipping against the gates is the ML lead's call; approving or rejecting a candidate that
# the gates judged is a sign-off like a plan's.
DECISION_PERMISSIONS: dict[str, Permission] = {
    "approved": "plan.approve",
    "overridden": "gate.override",
    "rejected": "plan.approve",
}
_MIN_OVERRIDE_REASON = 15


@dataclass(frozen=True)
class SliceResult:
    """One slice of a gate: its paired items, the candidate's and reference's means, the
    one-sided shortfall p-value, Holm-adjusted across the gate's slices, and whether it fell
    short."""

    dimension: str
    value: str
    items: int
    candidate: float
    reference: float | None
    p_value: float | None
    p_holm: float | None
    short: bool


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with its value, threshold and the evidence a reviewer reads."""

    name: str
    comparator: str
    metric: str
    eval_set: str
    blocking: bool
    verdict: Verdict
    value: float | None
    threshold: float | None
    evidence: list[str]
    slices: list[SliceResult] = field(default_factory=list)
    interval: tuple[float, float] | None = None
    """The interval the verdict read, in the value's units (None: none was computed)."""
    items: int | None = None
    """How many (paired) items the verdict read; None for the cost and latency gates."""
    min_items: int | None = None
    why: str = ""
    """Why there is no value to judge, in plain words (no results, no reference run)."""

    @property
    def explanation(self) -> str:
        """The verdict and its reason in one plain sentence (``explain_gate``)."""
        return explain_gate(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the keys DESIGN.md names: name, verdict, value, threshold; and more,
        ``explanation`` included)."""
        out = asdict(self)
        out["explanation"] = explain_gate(out)
        return out


@dataclass(frozen=True)
class Usage:
    """Requests and mean tokens and p95 latency measured in an eval run."""

    requests: int
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    latency_p95_ms: float | None
    with_latency: int


@dataclass(frozen=True)
class GateInputs:
    """What a gate is evaluated on: per-item scores of the candidate and the references, each
    item's slice labels, and the runs' usage. Pure data, so gates can be tested on it."""

    candidate: Mapping[str, float]
    production: Mapping[str, float] | None = None
    teacher: Mapping[str, float] | None = None
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    binary: bool | None = None
    candidate_usage: Usage | None = None
    production_usage: Usage | None = None
    teacher_usage: Usage | None = None
    notes: tuple[str, ...] = ()


def _is_binary(values: Sequence[float], declared: bool | None) -> bool:
    every = all(v in (0.0, 1.0) for v in values)
    return every if declared is None else declared and every


def _paired(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], Any, Any]:
    ids = sorted(a.keys() & b.keys())
    return ids, np.array([a[i] for i in ids]), np.array([b[i] for i in ids])


def _one_sided_t_less(diff: Any) -> float:
    """p of H1: mean(diff) < 0; a constant difference is decided by its sign."""
    if diff.size < 2:
        return 1.0
    result = paired_t_test(diff, np.zeros_like(diff), alternative="less")
    if result.p_value is None:
        return 0.0 if float(diff.mean()) < 0 else 1.0
    return float(result.p_value)


def _shortfall_p(
    comparator: str, binary: bool, c: Any, r: Any | None, gate: Gate, plan: Plan
) -> tuple[float, bool]:
    """The one-sided p-value of a slice falling short, and whether it is short at all."""
    if comparator == "absolute":
        threshold = float(gate.threshold or 0.0)
        if binary:
            k, n = int(c.sum()), int(c.size)
            p = float(sps.binomtest(k, n, threshold, alternative="less").pvalue)
        else:
            p = _one_sided_t_less(c - threshold)
        return p, float(c.mean()) < threshold
    assert r is not None
    if comparator == "no_regression":
        margin = float(gate.margin or 0.0)
        if binary:
            wins = int(((c == 1) & (r == 0)).sum())
            losses = int(((c == 0) & (r == 1)).sum())
            p = float(sps.binom.cdf(wins, wins + losses, 0.5)) if wins + losses else 1.0
        else:
            p = _one_sided_t_less(c - r + margin)
        return p, float((c - r).mean()) < -margin
    ratio = float(gate.ratio or plan.goal.target_quality_retention)
    return _one_sided_t_less(c - ratio * r), float(c.mean()) < ratio * float(r.mean())


def _slice_checks(
    gate: Gate,
    plan: Plan,
    inputs: GateInputs,
    reference: Mapping[str, float] | None,
    binary: bool,
    alpha: float,
) -> tuple[list[SliceResult], list[str]]:
    notes: list[str] = []
    groups: list[tuple[str, str, list[str]]] = []
    for dimension in gate.slices:
        by_value: dict[str, list[str]] = defaultdict(list)
        for item_id in inputs.candidate:
            if reference is not None and item_id not in reference:
                continue
            value = inputs.labels.get(item_id, {}).get(dimension)
            if value is not None:
                by_value[value].append(item_id)
        if not by_value:
            notes.append(f"no item is labelled with slice '{dimension}'")
        for value, ids in sorted(by_value.items()):
            if len(ids) >= 2:
                groups.append((dimension, value, sorted(ids)))
            else:
                notes.append(f"slice {dimension}={value}: 1 item, not tested")
    raw: list[tuple[str, str, int, float, float | None, float, bool]] = []
    for dimension, value, ids in groups:
        c = np.array([inputs.candidate[i] for i in ids])
        r = np.array([reference[i] for i in ids]) if reference is not None else None
        p, short = _shortfall_p(gate.comparator, binary, c, r, gate, plan)
        raw.append(
            (
                dimension,
                value,
                len(ids),
                float(c.mean()),
                None if r is None else float(r.mean()),
                p,
                short,
            )
        )
    adjusted = holm_adjusted([x[5] for x in raw]) if raw else ()
    results = [
        SliceResult(d, v, n, cm, rm, p, adj, short and adj < alpha)
        for (d, v, n, cm, rm, p, short), adj in zip(raw, adjusted, strict=True)
    ]
    return results, notes


def _cost_per_1k(usage: Usage | None, price_in: float, price_out: float) -> float | None:
    if usage is None or usage.mean_input_tokens is None or usage.mean_output_tokens is None:
        return None
    return 1000 * (usage.mean_input_tokens * price_in + usage.mean_output_tokens * price_out) / 1e6


def _cost_gate(gate: Gate, plan: Plan, inputs: GateInputs) -> GateResult:
    econ: Economics = plan.economics
    factor = gate.threshold if gate.threshold is not None else 1.0 / plan.goal.target_cost_reduction
    student = _cost_per_1k(
        inputs.candidate_usage, econ.student_input_per_1m, econ.student_output_per_1m
    )
    teacher = _cost_per_1k(
        inputs.teacher_usage, econ.teacher_input_per_1m, econ.teacher_output_per_1m
    )
    evidence = list(inputs.notes)
    if teacher is None:
        teacher = 1000 * econ.teacher_cost(econ.avg_input_tokens, econ.avg_output_tokens)
        evidence.append(
            f"teacher ${teacher:.4f} per 1k requests projected from the plan's average tokens "
            "(no measured teacher run)"
        )
    else:
        evidence.append(f"teacher ${teacher:.4f} per 1k requests measured in its eval run")
    if student is None:
        evidence.append("no measured tokens for the candidate: run it on an eval set first")
        return _result(
            gate,
            "insufficient_data",
            None,
            factor,
            evidence,
            why="no tokens were measured for the candidate, so its cost is not known",
        )
    ratio = student / teacher if teacher > 0 else math.inf
    evidence.append(
        f"candidate ${student:.4f} per 1k requests at the plan's student prices "
        f"({inputs.candidate_usage.requests if inputs.candidate_usage else 0} requests measured)"
    )
    evidence.append(f"candidate/teacher cost {ratio:.3f} against at most {factor:.3f}")
    return _result(gate, "pass" if ratio <= factor else "fail", ratio, factor, evidence)


def _latency_gate(gate: Gate, inputs: GateInputs, min_items: int) -> GateResult:
    factor = gate.threshold if gate.threshold is not None else 1.0
    reference, name = inputs.production_usage, "production"
    if reference is None or reference.latency_p95_ms is None:
        reference, name = inputs.teacher_usage, "teacher"
    candidate = inputs.candidate_usage
    evidence = list(inputs.notes)
    if candidate is None or candidate.latency_p95_ms is None or candidate.with_latency < min_items:
        evidence.append(f"fewer than {min_items} candidate requests with a measured latency")
        return _result(
            gate,
            "insufficient_data",
            None,
            factor,
            evidence,
            why=f"fewer than {min_items} of the candidate's requests have a measured latency",
        )
    if reference is None or reference.latency_p95_ms is None or reference.with_latency < min_items:
        evidence.append(f"no reference run with {min_items}+ measured latencies")
        return _result(
            gate,
            "insufficient_data",
            None,
            factor,
            evidence,
            why=f"no production or teacher run has {min_items} or more measured latencies to "
            "compare with",
        )
    ratio = candidate.latency_p95_ms / reference.latency_p95_ms
    evidence.append(
        f"p95 latency {candidate.latency_p95_ms:.0f} ms against {name}'s "
        f"{reference.latency_p95_ms:.0f} ms: ratio {ratio:.3f}, at most {factor:.3f}"
    )
    return _result(gate, "pass" if ratio <= factor else "fail", ratio, factor, evidence)


def _result(
    gate: Gate,
    verdict: Verdict,
    value: float | None,
    threshold: float | None,
    evidence: list[str],
    slices: list[SliceResult] | None = None,
    *,
    interval: tuple[float, float] | None = None,
    items: int | None = None,
    min_items: int | None = None,
    why: str = "",
) -> GateResult:
    return GateResult(
        gate.name,
        gate.comparator,
        gate.metric,
        gate.eval_set,
        gate.blocking,
        verdict,
        value,
        threshold,
        evidence,
        slices or [],
        interval=None if interval is None else (float(interval[0]), float(interval[1])),
        items=items,
        min_items=min_items,
        why=why,
    )


def evaluate_gate(
    gate: Gate,
    plan: Plan,
    inputs: GateInputs,
    *,
    alpha: float | None = None,
    min_items: int | None = None,
    seed: int = 0,
) -> GateResult:
    """One gate's verdict on the given scores (pure: no store)."""
    alpha = settings.gate_alpha if alpha is None else alpha
    minimum = settings.gate_min_items if min_items is None else min_items
    if gate.comparator == "cost":
        return _cost_gate(gate, plan, inputs)
    if gate.comparator == "latency":
        return _latency_gate(gate, inputs, minimum)
    evidence = list(inputs.notes)
    if not inputs.candidate:
        evidence.append("no scores for the candidate on this eval set and metric")
        return _result(
            gate,
            "insufficient_data",
            None,
            gate.threshold,
            evidence,
            why=f"the candidate has no {gate.metric} scores on this eval set",
        )
    values = list(inputs.candidate.values())
    binary = _is_binary(values, inputs.binary)
    if gate.comparator == "absolute":
        threshold = float(gate.threshold if gate.threshold is not None else 0.0)
        c = np.array(values)
        n = int(c.size)
        mean = float(c.mean())
        if binary:
            interval: tuple[float, float] | None = wilson_interval(int(c.sum()), n).ci
            evidence.append(f"pass rate {mean:.4f} on {n} items, Wilson interval")
        elif n >= 2 and float(c.std(ddof=1)) > 0:
            half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * float(c.std(ddof=1)) / math.sqrt(n)
            interval = (mean - half, mean + half)
            evidence.append(f"mean score {mean:.4f} on {n} items, t interval")
        else:
            interval = (mean, mean) if n >= 2 else None
            evidence.append(f"mean score {mean:.4f} on {n} items (no spread)")
        verdict = interval_verdict(
            gate.name, interval=interval, threshold=threshold, n_items=n, min_items=minimum
        )
        slices, notes = _slice_checks(gate, plan, inputs, None, binary, alpha)
        return _with_slices(
            gate,
            verdict.verdict,
            mean,
            threshold,
            [*evidence, *verdict.evidence],
            slices,
            notes,
            interval=interval,
            items=n,
            min_items=minimum,
        )
    reference = inputs.production if gate.comparator == "no_regression" else inputs.teacher
    who = "production" if gate.comparator == "no_regression" else "teacher"
    if not reference:
        evidence.append(f"no {who} scores on the same eval set version: run the {who} model")
        return _result(
            gate,
            "insufficient_data",
            None,
            _threshold(gate, plan),
            evidence,
            why=f"there are no {who} scores on the same eval set version to compare with",
        )
    ids, c, r = _paired(inputs.candidate, reference)
    binary = binary and _is_binary(list(r), inputs.binary)
    if gate.comparator == "no_regression":
        margin = float(gate.margin or 0.0)
        diff = float((c - r).mean()) if ids else None
        candidate_mean = float(c.mean()) if ids else None
        reference_mean = float(r.mean()) if ids else None
        evidence.append(
            f"{len(ids)} paired items: candidate {significant(candidate_mean)} vs "
            f"production {significant(reference_mean)}, difference {significant(diff)}"
        )
        interval = None
        mcnemar_fail = False
        if len(ids) >= 2:
            boot = paired_bootstrap(c, r, alpha=2 * alpha, seed=seed)
            interval = boot.ci
            evidence.append(
                f"paired bootstrap ({boot.n_resamples:,} resamples, seed {seed}) one-sided "
                f"{1 - alpha:.0%} bound on the difference"
            )
        if binary and ids:
            wins = int(((c == 1) & (r == 0)).sum())
            losses = int(((c == 0) & (r == 1)).sum())
            test = mcnemar_exact(wins, losses)
            evidence.append(
                f"McNemar exact: {wins} items only the candidate passes, {losses} only "
                f"production; p = {format_p_value(test.p_value)}"
            )
            mcnemar_fail = (
                test.p_value < alpha and diff is not None and diff < -margin and losses > wins
            )
        verdict = interval_verdict(
            gate.name,
            interval=interval,
            threshold=-margin,
            n_items=len(ids),
            min_items=minimum,
        )
        outcome: Verdict = verdict.verdict
        if mcnemar_fail and len(ids) >= minimum:
            outcome = "fail"
        slices, notes = _slice_checks(gate, plan, inputs, reference, binary, alpha)
        return _with_slices(
            gate,
            outcome,
            diff,
            -margin,
            [*evidence, *verdict.evidence],
            slices,
            notes,
            interval=interval,
            items=len(ids),
            min_items=minimum,
        )
    ratio = float(gate.ratio or plan.goal.target_quality_retention)
    gv = non_inferiority_gate(c, r, ratio=ratio, alpha=alpha, min_items=minimum, gate=gate.name)
    paired = non_inferiority_paired(c, r, ratio=ratio, alpha=alpha)
    estimate = paired.ratio_estimate
    slices, notes = _slice_checks(gate, plan, inputs, reference, binary, alpha)
    head = (
        f"{len(ids)} paired items against the teacher; Fieller's lower bound must reach {ratio:g}"
    )
    return _with_slices(
        gate,
        gv.verdict,
        estimate,
        ratio,
        [*evidence, head, *gv.evidence],
        slices,
        notes,
        interval=paired.ratio_bounds,
        items=len(ids),
        min_items=minimum,
    )


def _threshold(gate: Gate, plan: Plan) -> float | None:
    if gate.comparator == "no_regression":
        return -float(gate.margin or 0.0)
    if gate.comparator == "non_inferiority":
        return float(gate.ratio or plan.goal.target_quality_retention)
    return gate.threshold


def _with_slices(
    gate: Gate,
    verdict: Verdict,
    value: float | None,
    threshold: float | None,
    evidence: list[str],
    slices: list[SliceResult],
    notes: list[str],
    *,
    interval: tuple[float, float] | None,
    items: int,
    min_items: int,
) -> GateResult:
    evidence = [*evidence, *notes]
    short = [s for s in slices if s.short]
    if slices:
        evidence.append(
            f"{len(slices)} slices tested, Holm-corrected; {len(short)} fall short significantly"
        )
    for s in short:
        evidence.append(
            f"slice {s.dimension}={s.value}: candidate {s.candidate:.3f} vs "
            f"{significant(s.reference, 3)} on {s.items} items, Holm p = {format_p_value(s.p_holm)}"
        )
    if short:
        verdict = "fail"
    return _result(
        gate,
        verdict,
        value,
        threshold,
        evidence,
        slices,
        interval=interval,
        items=items,
        min_items=min_items,
    )


def overall_verdict(results: Sequence[GateResult]) -> Verdict:
    """pass when every blocking gate passes; fail when any blocking gate fails; else
    insufficient data (also when there is no blocking gate to decide on)."""
    blocking = [r for r in results if r.blocking]
    if any(r.verdict == "fail" for r in blocking):
        return "fail"
    if blocking and all(r.verdict == "pass" for r in blocking):
        return "pass"
    return "insufficient_data"


# -- verdicts in plain words -------------------------------------------------------------------


def _points(difference: float) -> str:
    """A difference of 0..1 scores in percentage points: 0.038 → "3.8"."""
    return f"{abs(difference) * 100:.1f}".removesuffix(".0")


def _share(ratio: float) -> str:
    return "an unbounded share" if not math.isfinite(ratio) else f"{ratio:.0%}"


def _slice_sentence(gate: Mapping[str, Any], short: Sequence[Mapping[str, Any]]) -> str:
    """Why a gate failed on its slices: the worst slice by name, with its numbers."""
    worst = min(short, key=lambda s: float(s["candidate"]) - float(s["reference"] or 0.0))
    comparator = str(gate["comparator"])
    if comparator == "no_regression":
        against = f"production's {float(worst['reference']):.2f}"
    elif comparator == "non_inferiority":
        against = f"the teacher's {float(worst['reference']):.2f}"
    else:
        against = f"the required {float(gate['threshold'] or 0.0):.2f}"
    tested = len(gate.get("slices", []))
    others = len(short) - 1
    more = f" (and {others} other slice{'s' if others > 1 else ''})" if others else ""
    return (
        f"fails: on {worst['dimension']} = {worst['value']}{more} the candidate scores "
        f"{float(worst['candidate']):.2f} against {against} over {worst['items']} items, short "
        f"by more than the gate allows even after correcting for the {tested} slices tested "
        "(Holm)"
    )


def _no_regression_sentence(verdict: str, gate: Mapping[str, Any]) -> str:
    margin = -float(gate["threshold"] or 0.0)
    allowed = f"the {_points(margin)}-point margin"
    interval = gate.get("interval")
    value = gate["value"]
    if interval is None:
        # A report recorded before intervals were kept: the point estimate only.
        diff = float(value)
        side = "worse" if diff < 0 else "better"
        if verdict == "insufficient_data":
            return (
                f"undecided: the candidate scores {_points(diff)} points {side} than "
                f"production on average, but no interval could be computed to compare with "
                f"{allowed}"
            )
        return (
            f"{'passes' if verdict == 'pass' else 'fails'}: the candidate scores "
            f"{_points(diff)} points {side} than production on average, against {allowed}"
        )
    low, high = float(interval[0]), float(interval[1])
    worst = f"{_points(low)} points {'worse' if low < 0 else 'better'}"
    if verdict == "pass":
        return (
            f"passes: at worst the candidate is {worst} than production, within {allowed}"
            if low < 0
            else f"passes: the candidate scores at least as well as production ({worst} at "
            f"worst), within {allowed}"
        )
    if verdict == "fail" and high < -margin:
        return (
            f"fails: the candidate is at least {_points(high)} points worse than production, "
            f"more than {allowed} allows"
        )
    if verdict == "fail":  # McNemar's test on the items each model alone passes
        return (
            f"fails: the candidate may be up to {_points(low)} points worse than production, "
            f"more than {allowed} allows, and it loses significantly more items than it wins "
            "(McNemar's test)"
        )
    best = f"{_points(high)} points {'better' if high > 0 else 'worse'}"
    return (
        f"undecided: the candidate may be anywhere from {worst} to {best} than production; "
        f"{allowed} lies inside that range, so more items are needed to decide"
    )


def _bounded_sentence(verdict: str, gate: Mapping[str, Any]) -> str:
    """absolute (a score against a threshold) and non_inferiority (a share of the teacher)."""
    threshold = float(gate["threshold"] or 0.0)
    interval = gate.get("interval")
    ratio = gate["comparator"] == "non_inferiority"

    def shown(x: float) -> str:
        return _share(x) if ratio else f"{x:.2f}"

    what = "of the teacher's quality" if ratio else f"on {gate['metric']}"
    keeps = "keeps" if ratio else "scores"
    required = f"the {shown(threshold)} required"
    if interval is None:
        value = float(gate["value"])
        if verdict == "insufficient_data":
            return (
                f"undecided: the candidate {keeps} {shown(value)} {what}, but no interval "
                f"could be computed to compare with {required}"
            )
        side = "at least" if verdict == "pass" else "only"
        return (
            f"{'passes' if verdict == 'pass' else 'fails'}: the candidate {keeps} {side} "
            f"{shown(value)} {what}, against {required}"
        )
    low, high = float(interval[0]), float(interval[1])
    if verdict == "pass":
        return f"passes: the candidate {keeps} at least {shown(low)} {what}, above {required}"
    if verdict == "fail":
        return f"fails: the candidate {keeps} at most {shown(high)} {what}, below {required}"
    return (
        f"undecided: the candidate {keeps} between {shown(low)} and {shown(high)} {what}, a "
        f"range that includes {required}, so more items are needed to decide"
    )


def explain_gate(gate: Mapping[str, Any]) -> str:
    """A gate's verdict and its reason in one plain sentence, for a reader without statistics:
    "fails: the candidate may be up to 3.8 points worse than production, more than the
    2-point margin allows".

    Takes ``GateResult.to_dict()`` or a gate as stored with a decision (older reports hold no
    interval: their sentence quotes the value).
    """
    verdict = str(gate["verdict"])
    comparator = str(gate["comparator"])
    tail = "" if gate.get("blocking", True) else " (this gate does not block the release)"
    short = [s for s in gate.get("slices", []) if s.get("short")]
    items, minimum = gate.get("items"), gate.get("min_items")
    if verdict == "insufficient_data" and gate.get("value") is None:
        why = str(gate.get("why") or "") or "there are no results to judge it on"
        return f"undecided: {why}{tail}."
    if verdict == "insufficient_data" and items is not None and minimum and items < minimum:
        return (
            f"undecided: only {items} paired items, fewer than the {minimum} needed to decide"
            f"{tail}."
        )
    if verdict == "fail" and short:
        overall = gate.get("interval")
        clears = overall is not None and float(overall[0]) > float(gate["threshold"] or 0.0)
        sentence = _slice_sentence(gate, short)
        if clears:
            sentence += ", although over all items it clears the threshold"
        return sentence + tail + "."
    value, threshold = gate.get("value"), float(gate["threshold"] or 0.0)
    if comparator == "no_regression":
        return _no_regression_sentence(verdict, gate) + tail + "."
    if comparator in ("absolute", "non_inferiority"):
        return _bounded_sentence(verdict, gate) + tail + "."
    ratio = float(value) if value is not None else math.nan
    if comparator == "cost":
        cheaper = f"{1 / threshold:.1f}".removesuffix(".0") if threshold > 0 else "∞"
        if verdict == "pass":
            return (
                f"passes: the candidate costs {_share(ratio)} of the teacher per request, "
                f"within the {_share(threshold)} allowed (at least {cheaper}x cheaper){tail}."
            )
        return (
            f"fails: the candidate costs {_share(ratio)} of the teacher per request, more "
            f"than the {_share(threshold)} allowed (at least {cheaper}x cheaper){tail}."
        )
    if comparator == "latency":
        side = "within" if verdict == "pass" else "more than"
        return (
            f"{'passes' if verdict == 'pass' else 'fails'}: the candidate's p95 latency is "
            f"{ratio:.2f}x the reference's, {side} the {threshold:g}x allowed{tail}."
        )
    return f"{verdict.replace('_', ' ')}: value {value} against threshold {threshold:g}{tail}."


# -- the store side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GateReport:
    """Every gate of a plan on one cycle's candidate, and the overall verdict."""

    plan_id: str
    plan_version: int
    cycle: int
    candidate: str | None
    verdict: Verdict
    gates: list[GateResult]
    runs: dict[str, dict[str, str]]
    checked_at: str
    warnings: list[str] = field(default_factory=list)
    """What a reviewer should know that no gate measures (they never change the verdict): a
    candidate evaluated under another system message than the one it was trained under."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: verdict and gates (name, verdict, value, threshold, evidence,
        explanation, …)."""
        out = asdict(self)
        out["gates"] = [g.to_dict() for g in self.gates]
        return out


def _usage(store: Store, run_id: str | None) -> Usage | None:
    if run_id is None:
        return None
    u = run_usage(store, run_id)
    return Usage(
        int(u["requests"] or 0),
        u["mean_input_tokens"],
        u["mean_output_tokens"],
        u["latency_p95_ms"],
        int(u["with_latency"] or 0),
    )


def _latest_run(
    store: Store,
    plan_id: str,
    role: str,
    *,
    cycle: int | None,
    eval_set: str | None,
    version: int | None,
    model: str | None = None,
) -> dict[str, Any] | None:
    sql = (
        "SELECT run_id, model, eval_set, set_version, cycle FROM eval_runs WHERE role = ?"
        " AND (plan_id = ? OR plan_id IS NULL) AND status = 'done'"
    )
    params: list[Any] = [role, plan_id]
    if eval_set:
        sql += " AND eval_set = ?"
        params.append(eval_set)
    if version is not None:
        sql += " AND set_version = ?"
        params.append(version)
    if model is not None:
        sql += " AND model = ?"
        params.append(model)
    if role == "candidate":
        sql += " AND cycle = ?"
        params.append(cycle)
        order = "started_at DESC"
    else:
        # A reference run of this cycle first, then one shared by every cycle, then the newest.
        sql += " AND (cycle IS NULL OR cycle <= ?)"
        params.append(cycle)
        order = "(cycle = ?) DESC, (cycle IS NULL) DESC, cycle DESC, started_at DESC"
        params.append(cycle)
    rows = store.fetch_dicts(f"{sql} ORDER BY {order} LIMIT 1", params)
    return rows[0] if rows else None


def _scores_by_grader(store: Store, run_id: str) -> dict[str, dict[str, float]]:
    """core.evals.item_scores for every grader of a run at once: per grader, one score per
    item, the mean of its graded samples."""
    out: dict[str, dict[str, float]] = {}
    for grader, item_id, score in store.fetch_all(
        "SELECT grader, item_id, avg(score) FROM eval_scores WHERE run_id = ?"
        " AND score IS NOT NULL GROUP BY grader, item_id",
        [run_id],
    ):
        out.setdefault(str(grader), {})[str(item_id)] = float(score)
    return out


def _candidate_model(store: Store, plan_id: str, cycle: int) -> str | None:
    row = store.fetch_one(
        "SELECT model FROM cycle_candidates WHERE plan_id = ? AND cycle = ?", [plan_id, cycle]
    )
    return str(row[0]) if row else None


def check_gates(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    version: int | None = None,
    alpha: float | None = None,
    min_items: int | None = None,
    freeze: bool = True,
    verify_weights: bool = True,
) -> GateReport:
    """Evaluate every gate of the plan on the cycle's candidate (its registered model, else its
    newest candidate run) against production and the teacher; freezes the set versions read
    (``freeze=False`` for a look that changes nothing, e.g. the Overview's).

    Raises GateError when the plan has no gates, or (with ``verify_weights``) when the
    candidate's weights are not the ones its eval runs judged.
    """
    plan, number = load_plan(store, plan_id, version)
    if not plan.gates:
        raise GateError(
            f"Plan '{plan_id}' has no gates; add them on the Plan page (7 · Eval gates)."
        )
    if verify_weights:
        from core.training.jobs import weights_problem

        problem = weights_problem(store, plan_id, cycle)
        if problem:
            raise GateError(problem)
    registered = _candidate_model(store, plan_id, cycle)
    # Gates share runs: look each run up, read its scores, usage and each set's items once.
    run_cache: dict[tuple[Any, ...], dict[str, Any] | None] = {}
    score_cache: dict[str, dict[str, dict[str, float]]] = {}
    usage_cache: dict[str, Usage | None] = {}
    items_cache: dict[tuple[str, int], list[Any]] = {}
    frozen: set[tuple[str, int]] = set()

    def latest_run(role: str, **where: Any) -> dict[str, Any] | None:
        key = (role, *sorted(where.items()))
        if key not in run_cache:
            run_cache[key] = _latest_run(store, plan_id, role, **where)
        return run_cache[key]

    def scores(run: dict[str, Any] | None, grader: str) -> dict[str, float] | None:
        if run is None:
            return None
        run_id = str(run["run_id"])
        if run_id not in score_cache:
            score_cache[run_id] = _scores_by_grader(store, run_id)
        return score_cache[run_id].get(grader, {})

    def usage(run: dict[str, Any] | None) -> Usage | None:
        if run is None:
            return None
        run_id = str(run["run_id"])
        if run_id not in usage_cache:
            usage_cache[run_id] = _usage(store, run_id)
        return usage_cache[run_id]

    results: list[GateResult] = []
    used: dict[str, dict[str, str]] = {}
    for gate in plan.gates:
        candidate = latest_run(
            "candidate",
            cycle=cycle,
            eval_set=gate.eval_set or None,
            version=None,
            model=registered,
        )
        notes: list[str] = []
        if candidate is None:
            where = f" on eval set '{gate.eval_set}'" if gate.eval_set else ""
            notes.append(f"no candidate run for cycle {cycle}{where}")
            results.append(
                _result(
                    gate,
                    "insufficient_data",
                    None,
                    _threshold(gate, plan),
                    notes,
                    why=f"the candidate has no finished eval run for cycle {cycle}{where}",
                )
            )
            continue
        eval_set, set_version = str(candidate["eval_set"]), int(candidate["set_version"])
        if freeze and gate.eval_set and (eval_set, set_version) not in frozen:
            frozen.add((eval_set, set_version))
            freeze_used_version(
                store,
                eval_set,
                set_version,
                reason=f"read by gate '{gate.name}' of plan {plan_id}",
            )
        production = latest_run("production", cycle=cycle, eval_set=eval_set, version=set_version)
        teacher = latest_run("teacher", cycle=cycle, eval_set=eval_set, version=set_version)
        grader = grader_for_metric(gate.metric)
        spec = GRADERS.get(grader)
        notes.append(
            f"candidate {candidate['model']} (run {candidate['run_id']}) on "
            f"{eval_set} v{set_version}, metric {gate.metric} (grader {grader})"
        )
        labels: dict[str, dict[str, str]] = {}
        if gate.slices:
            if (eval_set, set_version) not in items_cache:
                items_cache[(eval_set, set_version)] = load_items(store, eval_set, set_version)
            for item in items_cache[(eval_set, set_version)]:
                labels[item.item_id] = {
                    d: v for d in gate.slices if (v := item.slice_value(d)) is not None
                }
        inputs = GateInputs(
            candidate=scores(candidate, grader) or {},
            production=scores(production, grader),
            teacher=scores(teacher, grader),
            labels=labels,
            binary=spec.binary if spec else None,
            candidate_usage=usage(candidate),
            production_usage=usage(production),
            teacher_usage=usage(teacher),
            notes=tuple(notes),
        )
        results.append(evaluate_gate(gate, plan, inputs, alpha=alpha, min_items=min_items))
        used[gate.name] = {
            role: str(run["run_id"])
            for role, run in (
                ("candidate", candidate),
                ("production", production),
                ("teacher", teacher),
            )
            if run is not None
        }
    candidate_name = registered
    if candidate_name is None:
        any_run = _latest_run(store, plan_id, "candidate", cycle=cycle, eval_set=None, version=None)
        candidate_name = str(any_run["model"]) if any_run else None
    return GateReport(
        plan_id,
        number,
        cycle,
        candidate_name,
        overall_verdict(results),
        results,
        used,
        clock.now().isoformat(timespec="seconds"),
        _system_skew(store, plan_id, cycle, [r["candidate"] for r in used.values()]),
    )


def _described(message: str | None) -> str:
    if not message:
        return "no system message"
    shown = message if len(message) <= 60 else message[:57] + "…"
    return f"the system message {shown!r} ({system_message_hash(message)})"


def _system_skew(store: Store, plan_id: str, cycle: int, run_ids: Sequence[str]) -> list[str]:
    """A warning for each candidate run the gates read that sent another system message than
    the one the candidate was trained under (runs that did not record theirs are named too)."""
    if not run_ids:
        return []
    trained, source = candidate_system_message(store, plan_id, cycle)
    warnings: list[str] = []
    for run_id, sent in store.fetch_all(
        "SELECT run_id, system_message FROM eval_runs WHERE list_contains(?, run_id)"
        " ORDER BY run_id",
        [sorted(set(run_ids))],
    ):
        if sent is None:
            warnings.append(
                f"Candidate run {run_id} did not record the system message it sent (imported or "
                f"older results), so it cannot be checked against the one the candidate was "
                f"trained under ({_described(trained)}, from {source})."
            )
        elif (sent or None) != trained:
            warnings.append(
                f"Train/eval skew: candidate run {run_id} sent {_described(sent)}, but the "
                f"candidate was trained under {_described(trained)}, from {source}. Its scores "
                "may not show how it will be served; run the eval again (a candidate run sends "
                "its training message by default)."
            )
    return warnings


def record_decision(
    store: Store,
    plan_id: str,
    cycle: int,
    *,
    decision: Literal["approved", "overridden", "rejected"],
    user: User,
    reason: str = "",
    version: int | None = None,
) -> str:
    """Record that ``user`` approved, overrode or rejected a cycle's candidate, against the
    gate report computed here and now (``check_gates``), never one a caller hands in: a
    decision cannot rest on a verdict someone edited.

    Approving or rejecting needs the plan.approve permission; shipping against a failing or
    undecided verdict is an override, which needs a written reason and the ml_lead role. Every
    decision is audited under ``user``'s name. Raises GateError, or AccessError (before
    anything is read or written) when ``user`` may not take this decision.
    """
    if decision not in DECISIONS:
        raise GateError(f"Unknown decision '{decision}'; use approved, overridden or rejected.")
    require(user, DECISION_PERMISSIONS[decision])
    report = check_gates(store, plan_id, cycle, version=version)
    who = user.name
    text = reason.strip()
    if decision == "approved" and report.verdict != "pass":
        raise GateError(
            f"The gates' verdict is {report.verdict.replace('_', ' ')}, so the candidate cannot "
            "be approved; override with a written reason, or reject it."
        )
    if decision == "overridden":
        if report.verdict == "pass":
            raise GateError("Every blocking gate passes: approve instead of overriding.")
        if len(text) < _MIN_OVERRIDE_REASON:
            raise GateError(
                f"An override needs a written reason of at least {_MIN_OVERRIDE_REASON} "
                "characters: say why shipping against the gates is acceptable."
            )
    if report.candidate is None:
        raise GateError(f"Cycle {report.cycle} has no candidate to decide on.")
    current = current_decision(store, plan_id, cycle)
    if (
        current is not None
        and current["decision"] == decision
        and current["candidate_model"] == report.candidate
    ):
        raise GateError(
            f"Cycle {cycle}'s candidate {report.candidate} is already {decision} (by "
            f"{current['actor']}, {current['decided_at'].astimezone(UTC):%Y-%m-%d %H:%M} UTC); "
            "the same decision is not recorded twice in a row."
        )
    decided_at = clock.now()
    decision_id = f"dec-{decided_at:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    failing = [g.name for g in report.gates if g.verdict != "pass" and g.blocking]
    with store.transaction() as con:
        con.execute(
            "INSERT INTO gate_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                decision_id,
                report.plan_id,
                report.plan_version,
                report.cycle,
                report.candidate,
                report.verdict,
                decision,
                text,
                who,
                json.dumps(report.to_dict(), default=str),
                decided_at,
            ],
        )
        record_audit(
            con,
            actor=who,
            action=f"gate.{decision}",
            target=f"{report.plan_id}#cycle{report.cycle}",
            detail={
                "decision_id": decision_id,
                "candidate": report.candidate,
                "verdict": report.verdict,
                "blocking_not_passed": failing,
                "reason": text,
            },
        )
    return decision_id


def cycle_decisions(store: Store, plan_id: str, cycle: int | None = None) -> list[dict[str, Any]]:
    """The decisions recorded for a plan (one cycle when given), newest first."""
    sql = (
        "SELECT decision_id, plan_version, cycle, candidate_model, verdict, decision, reason,"
        " actor, decided_at FROM gate_decisions WHERE plan_id = ?"
    )
    params: list[Any] = [plan_id]
    if cycle is not None:
        sql += " AND cycle = ?"
        params.append(cycle)
    return store.fetch_dicts(sql + " ORDER BY decided_at DESC", params)


def current_decision(store: Store, plan_id: str, cycle: int) -> dict[str, Any] | None:
    """The newest decision recorded for a cycle (``cycle_decisions``' keys), None if none."""
    found = cycle_decisions(store, plan_id, cycle)
    return found[0] if found else None
