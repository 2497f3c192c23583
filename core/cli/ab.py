"""``ab report|compare``: a cycle's stored A/B test, or two arms from their counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from core import stats
from core.cli._base import Outcome, cycle_option, default_plan_id, noun_group, plan_option
from core.cli._numbers import interval, number, p_text, pair
from core.errors import AnalysisError
from core.labels import label

if TYPE_CHECKING:
    from core.abtest import Correction
    from core.store import Store

command = noun_group("ab")
CORRECTIONS = ("holm", "bh")  # core.abtest.Correction


@command.leaf("report", help="analyse the cycle's A/B test and recommend a decision")
@cycle_option(required=True)
@plan_option
@click.option(
    "--correction",
    type=click.Choice(CORRECTIONS),
    default="holm",
    show_default=True,
    help="multiplicity correction of the secondary metrics",
)
def report(store: Store, cycle: int, plan: str | None, correction: Correction) -> Outcome:
    from core.abtest import analyse_cycle
    from core.plan_versions import load_plan

    plan_id = plan or default_plan_id(store)
    stored, _ = load_plan(store, plan_id)
    analysis = analyse_cycle(store, stored, cycle, plan_id=plan_id, correction=correction)
    if analysis is None:
        raise AnalysisError(
            f"Cycle {cycle} of plan '{plan_id}' has no A/B interactions in its test window; "
            f"load them with `python -m core data ingest FILE --cycle {cycle}`."
        )
    data = analysis.to_dict()
    primary = analysis.primary
    arms = ", ".join(f"{a.arm} {a.users:,} users" for a in analysis.arms)
    lines = [
        f"Cycle {analysis.cycle} A/B test ({analysis.window[0]} to {analysis.window[1]}): {arms}.",
        f"Sample ratio: {p_text(analysis.srm.p_value)} ({label(analysis.srm.status)}).",
        f"{label(analysis.primary_metric)}: lift {number(primary.estimate)}, "
        f"{'confidence sequence' if analysis.sequential else 'CI'} "
        f"{interval(pair(primary.ci))}, {p_text(primary.p_value)}.",
    ]
    for g in analysis.guardrails:
        state = "BREACHED" if g.breached else "ok"
        lines.append(
            f"Guardrail {label(g.metric)} (tolerance +{g.tolerance:.0%}): lift "
            f"{number(g.lift)}, {state}"
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


@command.leaf("compare", help="two-proportion analysis of control against treatment", store=False)
@click.option("--control-n", type=int, required=True, help="users in control")
@click.option("--control-x", type=int, required=True, help="conversions in control")
@click.option("--treatment-n", type=int, required=True, help="users in treatment")
@click.option("--treatment-x", type=int, required=True, help="conversions in treatment")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="significance level")
@click.option("--sequential", is_flag=True, help="confidence sequence: safe to peek")
@click.option(
    "--n-star",
    type=int,
    default=stats.DEFAULT_N_STAR,
    show_default=True,
    help="planned total sample the sequence is tuned for",
)
def compare(
    control_n: int,
    control_x: int,
    treatment_n: int,
    treatment_x: int,
    alpha: float,
    sequential: bool,
    n_star: int,
) -> Outcome:
    try:
        control = stats.proportion_arm(control_n, control_x)
        treatment = stats.proportion_arm(treatment_n, treatment_x)
        absolute = stats.two_proportion_z_test(control, treatment, alpha=alpha)
        if sequential:
            relative = stats.sequential_test(control, treatment, alpha=alpha, n_star=n_star)
            p_value = relative.p_value
        else:
            relative = stats.relative_lift(control, treatment, alpha=alpha)
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
        "method": relative.method if sequential else absolute.method,
        "sequential": sequential,
        "n_star": n_star if sequential else None,
        "alpha": alpha,
        "reason": relative.reason or absolute.reason,
    }
    kind = "confidence sequence" if sequential else "CI"
    text = (
        f"control {number(absolute.mean_control)} vs treatment "
        f"{number(absolute.mean_treatment)}: difference {number(absolute.estimate)}, "
        f"relative lift {number(relative.estimate)}, {kind} {interval(pair(relative.ci))}, "
        f"{p_text(p_value)}" + (f" ({data['reason']})" if data["reason"] else "")
    )
    return Outcome(data, text)
