"""``stats srm|sample-size``: A/B statistics from counts, with no store and no plan.

``sample-size`` imports only the standard library beyond click (core.stats computes it without
numpy or scipy): it answers at once (bench/cli.py)."""

from __future__ import annotations

from typing import Any

import click

from core.cli._base import CommaSeparated, Outcome, noun_group
from core.cli._numbers import number, p_text
from core.errors import AnalysisError

command = noun_group("stats")


@command.leaf("srm", help="sample-ratio-mismatch check", store=False)
@click.option(
    "--counts",
    type=CommaSeparated(int, "5000,5200"),
    required=True,
    help="units per arm, e.g. 5000,5200",
)
@click.option(
    "--weights",
    type=CommaSeparated(float, "1,1"),
    help="planned shares per arm, e.g. 1,1 (default equal)",
)
def srm(counts: list[int], weights: list[float] | None) -> Outcome:
    from core.stats import srm_test

    try:
        result = srm_test(counts, weights)
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
        text = f"chi2 = {number(result.statistic)}, {p_text(result.p_value)}: {verdict}."
    return Outcome(data, text, exit_code=1 if result.mismatch else 0)


@command.leaf("sample-size", help="per-arm sample size", store=False)
@click.option("--baseline", type=float, required=True, help="control rate, e.g. 0.10")
@click.option("--mde", type=float, required=True, help="minimum detectable effect")
@click.option("--relative", is_flag=True, help="the MDE is relative (0.05 = +5%)")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="two-sided level")
@click.option("--power", type=float, default=0.8, show_default=True, help="power")
@click.option(
    "--daily-traffic", type=float, help="users a day, all arms: also print the days needed"
)
@click.option(
    "--shares",
    type=CommaSeparated(float, "0.5,0.5"),
    default="0.5,0.5",
    show_default=True,
    help="traffic share per arm",
)
def sample_size(
    baseline: float,
    mde: float,
    relative: bool,
    alpha: float,
    power: float,
    daily_traffic: float | None,
    shares: list[float],
) -> Outcome:
    # The functions core.abtest.design_ab_test sizes with, called here so that the answer
    # needs neither the plan models nor the store (test_cli_startup compares the two).
    from core.stats import ab_duration_days, planned_total, sample_size_per_arm

    try:
        n_per_arm = sample_size_per_arm(baseline, mde, relative=relative, alpha=alpha, power=power)
        days = ab_duration_days(n_per_arm, daily_traffic or 1.0, shares)
    except ValueError as exc:
        raise AnalysisError(f"Cannot size the A/B test: {exc}.") from None
    total = planned_total(n_per_arm, shares)
    data: dict[str, Any] = {
        "n_per_arm": n_per_arm,
        "total": total,
        "baseline": baseline,
        "mde": mde,
        "relative": relative,
        "alpha": alpha,
        "power": power,
        "days": days if daily_traffic else None,
    }
    text = f"{n_per_arm:,} users per arm ({total:,} in total)"
    if daily_traffic:
        text += f"; {days} day(s) at {daily_traffic:,g} users a day"
    return Outcome(data, text + ".")
