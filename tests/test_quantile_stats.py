"""The p95 guardrail's statistic and the p-value formatter, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from core.stats import (
    format_p_value,
    quantile_arm_from_values,
    quantile_difference,
    quantile_ranks,
)


@pytest.mark.parametrize(("n", "q", "seed"), [(120, 0.95, 0), (500, 0.95, 1), (301, 0.5, 2)])
def test_order_statistic_bounds_are_scipys_distribution_free_interval(
    n: int, q: float, seed: int
) -> None:
    x = np.random.default_rng(seed).lognormal(6, 0.5, n)
    arm = quantile_arm_from_values(x, q=q)
    assert arm is not None
    ci = sps.quantile_test(x, q=float(np.quantile(x, q)), p=q).confidence_interval(0.95)
    assert (arm.lower, arm.upper) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert arm.quantile == pytest.approx(np.quantile(x, q), rel=1e-12)
    low, high, coverage = quantile_ranks(n, q) or (0, 0, 0.0)
    exact = sps.binom.cdf(high - 1, n, q) - sps.binom.cdf(low - 1, n, q)
    assert coverage == pytest.approx(exact, rel=1e-12) and coverage >= 0.95
    # Price–Bonett: the interval's width over twice the normal quantile of its coverage.
    z = sps.norm.ppf((1 + coverage) / 2)
    assert arm.se == pytest.approx((arm.upper - arm.lower) / (2 * z), rel=1e-12)


def test_too_few_values_for_a_p95_give_no_interval() -> None:
    assert quantile_ranks(40, 0.95) is None
    assert quantile_arm_from_values(np.arange(40.0), q=0.95) is None


def test_the_standard_error_agrees_with_scipys_bootstrap() -> None:
    x = np.random.default_rng(3).lognormal(6, 0.5, 3000)
    arm = quantile_arm_from_values(x, q=0.95)
    assert arm is not None
    boot = sps.bootstrap(
        (x,),
        lambda s, axis=-1: np.quantile(s, 0.95, axis=axis),
        n_resamples=2000,
        rng=np.random.default_rng(4),
        method="percentile",
    )
    assert arm.se == pytest.approx(boot.standard_error, rel=0.2)


def test_the_quantile_difference_holds_its_level_and_finds_a_shift() -> None:
    rng = np.random.default_rng(5)
    rejections = 0
    trials = 300
    for _ in range(trials):
        a = quantile_arm_from_values(rng.lognormal(6, 0.4, 400))
        b = quantile_arm_from_values(rng.lognormal(6, 0.4, 400))
        assert a is not None and b is not None
        p = quantile_difference(a, b).p_value
        rejections += p is not None and p < 0.05
    assert 0.02 <= rejections / trials <= 0.09  # about alpha under no difference

    a = quantile_arm_from_values(rng.lognormal(6, 0.4, 2000))
    b = quantile_arm_from_values(rng.lognormal(6, 0.4, 2000) * 1.3)
    assert a is not None and b is not None
    shifted = quantile_difference(a, b, alternative="greater", ratio=1.1)
    assert shifted.estimate == pytest.approx(b.quantile / a.quantile - 1)
    assert shifted.significant and shifted.ci is not None and shifted.ci[0] > 0.1
    within = quantile_difference(a, b, alternative="greater", ratio=1.5)
    assert not within.significant


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.0, "< 0.0001"),
        (8.13e-310, "< 0.0001"),
        (9.99e-5, "< 0.0001"),
        (0.0001, "0.0001"),
        (0.00051, "0.00051"),
        (0.0210752, "0.021"),
        (0.05, "0.05"),
        (0.4, "0.4"),
        (1.0, "1"),
        (None, "—"),
    ],
)
def test_p_values_print_as_people_read_them(p: float | None, text: str) -> None:
    assert format_p_value(p) == text
