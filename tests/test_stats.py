"""core.stats against scipy/statsmodels on the same inputs, and against STATS.md's vectors."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, normal_sample_size_one_tail
from statsmodels.stats.proportion import (
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

import core.stats as st
from core.stats import (
    ABResult,
    ArmStats,
    GuardrailResult,
    SRMResult,
    ab_decision,
    ab_duration_days,
    arm_from_values,
    bh_adjusted,
    cuped_arm_from_values,
    cuped_test,
    gate_verdict,
    guardrail_check,
    holm_adjusted,
    item_means,
    mcnemar_exact,
    mde_for_duration,
    non_inferiority_gate,
    non_inferiority_paired,
    non_inferiority_unpaired,
    paired_bootstrap,
    paired_bootstrap_per_item,
    paired_t_test,
    plan_ab_test,
    proportion_arm,
    ratio_metric_arm,
    regressed_slices,
    relative_lift,
    sample_size_per_arm,
    sequential_test,
    srm_test,
    two_proportion_z_test,
    welch_t_test,
    wilson_interval,
)

SEEDS = [1, 2, 3, 4, 5, 6]


def ref(printed: str) -> object:
    """A STATS.md value: 1e-5 relative, or half a unit in its last printed digit if looser."""
    exponent = Decimal(printed).as_tuple().exponent
    assert isinstance(exponent, int)
    half_unit = 0.5 * 10.0**exponent
    return pytest.approx(float(printed), rel=1e-5, abs=half_unit)


def close(expected: float) -> object:
    """Peer comparison: the same formula evaluated by scipy/statsmodels."""
    return pytest.approx(float(expected), rel=1e-9, abs=1e-12)


def _some(value: float | None) -> float:
    assert value is not None
    return value


def _ci(result: ABResult) -> tuple[float, float]:
    assert result.ci is not None, result.reason
    return result.ci


# Reference arms of STATS.md (gbstats' test_two_sided_ttest, written as sums).
WELCH_A = ArmStats(n=3407, sum=1396.87, sum_sq=52377.9767)
WELCH_B = ArmStats(n=3461, sum=2422.7, sum_sq=134698.29)


def _random_arms(seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(20, 400, size=2)
    a = rng.gamma(2.0, 1.5, size=n_a)
    b = rng.gamma(2.0, 1.5, size=n_b) * rng.uniform(0.8, 1.3)
    return a, b


# ---------------------------------------------------------------------------------------------
# Arm summaries
# ---------------------------------------------------------------------------------------------


def test_arm_mean_and_variance_match_numpy() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, size=57)
    arm = arm_from_values(values)
    assert arm.mean == close(values.mean())
    assert arm.variance == close(values.var(ddof=1))


def test_proportion_arm_uses_p_times_one_minus_p() -> None:
    arm = proportion_arm(200, 30)
    assert arm.mean == close(0.15)
    assert arm.variance == close(0.15 * 0.85)


@pytest.mark.parametrize(("n", "x"), [(10, 11), (10, -1), (-1, 0)])
def test_impossible_proportion_arm_is_rejected(n: int, x: int) -> None:
    with pytest.raises(ValueError):
        proportion_arm(n, x)


# ---------------------------------------------------------------------------------------------
# Fixed-horizon A/B: Welch, relative lift, pooled z
# ---------------------------------------------------------------------------------------------


def test_welch_reference_vector() -> None:
    result = welch_t_test(WELCH_A, WELCH_B)
    assert result.estimate == ref("0.29")
    assert _ci(result) == (ref("0.04538"), ref("0.53462"))
    assert result.p_value == ref("0.02016")


def test_relative_lift_reference_vector() -> None:
    result = relative_lift(WELCH_A, WELCH_B)
    assert result.estimate == ref("0.70732")
    assert result.se == ref("0.37879")
    assert _ci(result) == (ref("-0.03526"), ref("1.44989"))
    assert result.p_value == ref("0.06191")


def test_welch_reference_vector_agrees_with_scipy_from_stats() -> None:
    peer = sps.ttest_ind_from_stats(
        WELCH_B.mean,
        math.sqrt(WELCH_B.variance),
        WELCH_B.n,
        WELCH_A.mean,
        math.sqrt(WELCH_A.variance),
        WELCH_A.n,
        equal_var=False,
    )
    result = welch_t_test(WELCH_A, WELCH_B)
    assert result.statistic == close(peer.statistic)
    assert result.p_value == close(peer.pvalue)


@pytest.mark.parametrize("seed", SEEDS)
def test_welch_matches_scipy_on_random_samples(seed: int) -> None:
    a, b = _random_arms(seed)
    peer = sps.ttest_ind(b, a, equal_var=False)
    peer_ci = peer.confidence_interval(0.95)
    result = welch_t_test(arm_from_values(a), arm_from_values(b))
    assert result.estimate == close(b.mean() - a.mean())
    assert result.statistic == close(peer.statistic)
    assert result.p_value == close(peer.pvalue)
    assert result.df == close(peer.df)
    assert _ci(result) == (close(peer_ci.low), close(peer_ci.high))


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_one_sided_welch_matches_scipy(alternative: st.Alternative) -> None:
    a, b = _random_arms(11)
    peer = sps.ttest_ind(b, a, equal_var=False, alternative=alternative)
    result = welch_t_test(arm_from_values(a), arm_from_values(b), alternative=alternative)
    assert result.p_value == close(peer.pvalue)
    peer_ci = peer.confidence_interval(0.95)
    assert _ci(result) == (close(peer_ci.low), close(peer_ci.high))


def test_identical_arms_give_no_effect() -> None:
    values = np.random.default_rng(3).normal(size=40)
    arm = arm_from_values(values)
    absolute = welch_t_test(arm, arm)
    relative = relative_lift(arm, arm)
    assert absolute.estimate == 0.0
    assert absolute.p_value == close(sps.ttest_ind(values, values, equal_var=False).pvalue)
    assert absolute.p_value == pytest.approx(1.0)
    assert relative.estimate == 0.0
    assert relative.p_value == pytest.approx(1.0)


def test_proportion_reference_vector_pooled_z() -> None:
    result = two_proportion_z_test(proportion_arm(10000, 1000), proportion_arm(10000, 1100))
    assert result.statistic == ref("2.306635")
    assert result.p_value == ref("0.0210752")


def test_proportion_reference_vector_relative_lift() -> None:
    result = relative_lift(proportion_arm(10000, 1000), proportion_arm(10000, 1100))
    assert result.estimate == ref("0.1")
    assert result.se == ref("0.0454753")
    assert _ci(result) == (ref("0.0108647"), ref("0.1891353"))


@pytest.mark.parametrize("seed", SEEDS)
def test_pooled_z_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_a, n_b = (int(v) for v in rng.integers(50, 5000, size=2))
    x_a, x_b = int(rng.binomial(n_a, 0.2)), int(rng.binomial(n_b, 0.22))
    z, p = proportions_ztest([x_b, x_a], [n_b, n_a])
    result = two_proportion_z_test(proportion_arm(n_a, x_a), proportion_arm(n_b, x_b))
    assert result.statistic == close(z)
    assert result.p_value == close(p)


def test_pooled_z_needs_proportion_arms() -> None:
    with pytest.raises(ValueError, match="proportion"):
        two_proportion_z_test(WELCH_A, WELCH_B)


@pytest.mark.parametrize("seed", SEEDS)
def test_relative_lift_matches_delta_method_on_scipy_t(seed: int) -> None:
    a, b = _random_arms(seed)
    mu_a, mu_b = a.mean(), b.mean()
    v_a, v_b = a.var(ddof=1), b.var(ddof=1)
    se = math.sqrt(v_b / (b.size * mu_a**2) + v_a * mu_b**2 / (a.size * mu_a**4))
    df = sps.ttest_ind(b, a, equal_var=False).df
    estimate = (mu_b - mu_a) / mu_a
    result = relative_lift(arm_from_values(a), arm_from_values(b))
    assert result.estimate == close(estimate)
    assert result.se == close(se)
    assert result.p_value == close(2 * sps.t.sf(abs(estimate / se), df))


def test_unequal_split_matches_scipy() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(1.0, 1.0, size=900), rng.normal(1.1, 3.0, size=100)
    peer = sps.ttest_ind(b, a, equal_var=False)
    result = welch_t_test(arm_from_values(a), arm_from_values(b))
    assert result.p_value == close(peer.pvalue)
    assert result.df == close(peer.df)


# --- edges: nothing divides by zero, nothing is NaN -------------------------------------------


def test_control_mean_of_zero_is_explicitly_not_computable() -> None:
    result = relative_lift(proportion_arm(500, 0), proportion_arm(500, 7))
    assert not result.computable
    assert result.estimate is None and result.se is None and result.ci is None
    assert result.reason is not None and "control mean is 0" in result.reason


def test_zero_conversions_in_both_arms() -> None:
    control, treatment = proportion_arm(1000, 0), proportion_arm(1000, 0)
    for result in (
        welch_t_test(control, treatment),
        relative_lift(control, treatment),
        two_proportion_z_test(control, treatment),
        sequential_test(control, treatment),
    ):
        assert not result.computable
        assert result.p_value is None


def test_zero_conversions_in_treatment_only_keeps_absolute_effect() -> None:
    control, treatment = proportion_arm(400, 12), proportion_arm(400, 0)
    absolute = welch_t_test(control, treatment)
    peer = sps.ttest_ind_from_stats(0.0, 0.0, 400, 0.03, math.sqrt(0.03 * 0.97), 400, False)
    assert absolute.p_value == close(peer.pvalue)
    assert not relative_lift(control, treatment).computable  # a variance ≤ 0


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_arms_are_not_computable(n: int) -> None:
    tiny = ArmStats(n=n, sum=float(n), sum_sq=float(n))
    big = arm_from_values([1.0, 2.0, 3.0])
    for result in (welch_t_test(tiny, big), relative_lift(big, tiny), sequential_test(tiny, big)):
        assert not result.computable
        assert result.reason is not None and "at least 2" in result.reason


def test_two_units_per_arm_match_scipy() -> None:
    a, b = np.array([1.0, 2.0]), np.array([2.0, 4.5])
    peer = sps.ttest_ind(b, a, equal_var=False)
    result = welch_t_test(arm_from_values(a), arm_from_values(b))
    assert result.p_value == close(peer.pvalue)


@pytest.mark.parametrize("seed", range(40))
def test_no_nan_escapes_from_degenerate_arms(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def degenerate() -> ArmStats:
        n = int(rng.integers(0, 4))
        return proportion_arm(n, int(rng.integers(0, n + 1)))

    control, treatment = degenerate(), degenerate()
    for result in (
        welch_t_test(control, treatment),
        relative_lift(control, treatment),
        two_proportion_z_test(control, treatment),
        sequential_test(control, treatment),
        sequential_test(control, treatment, effect="absolute", alternative="less"),
    ):
        numbers = [result.estimate, result.se, result.p_value, result.statistic, result.df]
        numbers += list(result.ci or ())
        assert not any(v is not None and math.isnan(v) for v in numbers)
        assert result.computable == (result.p_value is not None)


# ---------------------------------------------------------------------------------------------
# Ratio metrics (rate per interaction, user randomised)
# ---------------------------------------------------------------------------------------------


def _ratio_users(seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-user successes and interactions (the user, not the interaction, is randomised)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 600))
    interactions = rng.poisson(4.0, size=n).astype(np.float64) + 1.0
    successes = rng.binomial(interactions.astype(int), 0.3).astype(np.float64)
    return successes, interactions


def _ratio_arm(y: npt.NDArray[np.float64], m: npt.NDArray[np.float64]) -> st.RatioArmStats:
    return ratio_metric_arm(
        n=y.size,
        sum_y=float(y.sum()),
        sum_y_sq=float(y @ y),
        sum_m=float(m.sum()),
        sum_m_sq=float(m @ m),
        sum_ym=float(y @ m),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_ratio_variance_matches_linearised_values(seed: int) -> None:
    y, m = _ratio_users(seed)
    ratio = y.sum() / m.sum()
    linearised = (y - ratio * m) / m.mean()
    arm = _ratio_arm(y, m)
    assert arm.mean == close(ratio)
    assert arm.variance == close(linearised.var(ddof=1))


def test_ratio_with_one_interaction_per_user_is_a_plain_mean() -> None:
    y = np.random.default_rng(4).binomial(1, 0.3, size=300).astype(float)
    arm = _ratio_arm(y, np.ones_like(y))
    plain = arm_from_values(y)
    assert arm.mean == close(plain.mean)
    assert arm.variance == close(plain.variance)


def test_ratio_variance_is_the_sampling_variance_of_the_ratio() -> None:
    rng = np.random.default_rng(42)
    ratios = []
    for _ in range(3000):
        m = rng.poisson(3.0, size=400) + 1.0
        y = rng.binomial(m.astype(int), rng.beta(2, 5, size=400)).astype(float)
        ratios.append(y.sum() / m.sum())
    m = rng.poisson(3.0, size=400).astype(np.float64) + 1.0
    y = rng.binomial(m.astype(int), rng.beta(2, 5, size=400)).astype(np.float64)
    predicted = _ratio_arm(y, m).variance / 400
    assert predicted == pytest.approx(np.var(ratios, ddof=1), rel=0.15)


@pytest.mark.parametrize("seed", SEEDS)
def test_ab_analysis_accepts_ratio_arms(seed: int) -> None:
    control, treatment = _ratio_arm(*_ratio_users(seed)), _ratio_arm(*_ratio_users(seed + 100))
    peer = sps.ttest_ind_from_stats(
        treatment.mean,
        math.sqrt(treatment.variance),
        treatment.n,
        control.mean,
        math.sqrt(control.variance),
        control.n,
        equal_var=False,
    )
    assert welch_t_test(control, treatment).p_value == close(peer.pvalue)
    assert relative_lift(control, treatment).computable


def test_ratio_arm_without_interactions_is_rejected() -> None:
    with pytest.raises(ValueError, match="interactions"):
        ratio_metric_arm(n=5, sum_y=0, sum_y_sq=0, sum_m=0, sum_m_sq=0, sum_ym=0)


# ---------------------------------------------------------------------------------------------
# Sample ratio mismatch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "p_value", "status"),
    [([5000, 5200], "0.0476704", "ok"), ([5000, 5400], "8.76994e-05", "mismatch")],
)
def test_srm_reference_vectors(counts: list[int], p_value: str, status: str) -> None:
    result = srm_test(counts)
    assert result.p_value == ref(p_value)
    assert result.status == status


@pytest.mark.parametrize("seed", SEEDS)
def test_srm_with_weights_matches_scipy_chisquare(seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.1, 1.0, size=3)
    counts = rng.multinomial(3000, weights / weights.sum())
    peer = sps.chisquare(counts, f_exp=weights / weights.sum() * counts.sum())
    result = srm_test([int(c) for c in counts], [float(w) for w in weights])
    assert result.statistic == close(peer.statistic)
    assert result.p_value == close(peer.pvalue)
    assert result.df == 2


def test_srm_does_not_judge_arms_with_fewer_than_8_units() -> None:
    result = srm_test([5, 3])
    assert result.status == "not_judged"
    assert result.p_value is None and not result.mismatch


def test_srm_judges_from_eight_expected_units() -> None:
    assert srm_test([8, 8]).status == "ok"
    assert srm_test([7, 8]).status == "not_judged"  # 7.5 expected per arm


def test_srm_still_flags_an_empty_arm_that_should_be_full() -> None:
    assert srm_test([1000, 0]).status == "mismatch"


def test_srm_rejects_mismatched_weights() -> None:
    with pytest.raises(ValueError, match="weight"):
        srm_test([10, 10], [0.5])


# ---------------------------------------------------------------------------------------------
# Sequential testing
# ---------------------------------------------------------------------------------------------


def test_sequential_reference_vector_gbstats() -> None:
    result = sequential_test(proportion_arm(3000, 1396), proportion_arm(3461, 2422), n_star=5000)
    assert result.estimate == ref("0.50386")
    assert _ci(result) == (ref("0.40098"), ref("0.60675"))
    # gbstats' expected uplift stddev for this test: the half-width scales the relative SE.
    assert result.se == ref("0.03386")
    assert result.always_valid


# Further vectors from gbstats' own test suite (tests/frequentist/test_tests.py), same arms.
SEQ_A = ArmStats(n=3000, sum=1396.87, sum_sq=52377.9767)
SEQ_B = ArmStats(n=3461, sum=2422.7, sum_sq=134698.29)


def test_sequential_means_vector_gbstats() -> None:
    result = sequential_test(SEQ_A, SEQ_B, n_star=1000)
    assert result.estimate == ref("0.50336")
    assert result.se == ref("0.33341")
    assert _ci(result) == (ref("-0.55844"), ref("1.56516"))
    assert result.p_value == 1.0


def test_one_sided_sequential_vector_gbstats() -> None:
    # gbstats' SequentialOneSidedTreatmentLesserTTest: upper bound only, ρ tuned at 2α.
    result = sequential_test(SEQ_A, SEQ_B, alternative="less")
    assert result.estimate == ref("0.5033610858562358")
    assert _ci(result) == (-math.inf, ref("1.4302867177403806"))


def test_one_sided_sequence_needs_alpha_below_half() -> None:
    with pytest.raises(ValueError, match="2α"):
        sequential_test(SEQ_A, SEQ_B, alpha=0.6, alternative="greater")


def test_sequential_default_n_star_is_5000() -> None:
    control, treatment = proportion_arm(3000, 1396), proportion_arm(3461, 2422)
    assert sequential_test(control, treatment) == sequential_test(control, treatment, n_star=5000)


@pytest.mark.parametrize("seed", SEEDS)
def test_sequential_interval_is_wider_than_the_fixed_one(seed: int) -> None:
    a, b = _random_arms(seed)
    control, treatment = arm_from_values(a), arm_from_values(b)
    fixed = _ci(relative_lift(control, treatment))
    sequential = _ci(sequential_test(control, treatment))
    assert sequential[0] < fixed[0] and fixed[1] < sequential[1]


@pytest.mark.parametrize("seed", range(30))
def test_always_valid_p_value_agrees_with_the_interval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 20000))
    control = proportion_arm(n, int(rng.binomial(n, 0.1)))
    treatment = proportion_arm(n, int(rng.binomial(n, 0.1 * rng.uniform(0.9, 1.25))))
    for alternative in ("two-sided", "greater", "less"):
        result = sequential_test(control, treatment, alternative=alternative, n_star=2 * n)
        low, high = _ci(result)
        assert result.significant == (low > 0 or high < 0)


def _shifted_treatment(control: ArmStats, treatment: ArmStats, shift: float) -> ArmStats:
    """The treatment arm moved to mean control.mean + shift, keeping its n and variance."""
    n, total = treatment.n, (control.mean + shift) * treatment.n
    return ArmStats(n=n, sum=total, sum_sq=treatment.variance * (n - 1) + total**2 / n)


@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
@pytest.mark.parametrize("n_star", [1000, 5000, 50000])
def test_always_valid_p_value_is_alpha_on_the_boundary(
    alternative: st.Alternative, n_star: int
) -> None:
    control, treatment = arm_from_values([0.0, 1.0] * 400), arm_from_values([0.5, 1.5] * 300)
    first = sequential_test(
        control, treatment, effect="absolute", n_star=n_star, alternative=alternative
    )
    half_width = _some(first.estimate) - _ci(first)[0]
    on_boundary = _shifted_treatment(control, treatment, half_width)
    result = sequential_test(
        control, on_boundary, effect="absolute", n_star=n_star, alternative=alternative
    )
    assert _ci(result)[0] == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == pytest.approx(0.05, rel=1e-9)


def test_one_sided_sequence_uses_rho_at_two_alpha() -> None:
    control, treatment = proportion_arm(3000, 1396), proportion_arm(3461, 2422)
    two_sided_2a = sequential_test(control, treatment, alpha=0.10)
    one_sided = sequential_test(control, treatment, alpha=0.05, alternative="greater")
    two_sided = sequential_test(control, treatment, alpha=0.05)
    # ln(1 + x) > ln(x): a touch wider than two-sided at 2α, narrower than two-sided at α.
    assert _ci(two_sided)[0] < _ci(one_sided)[0] < _ci(two_sided_2a)[0]
    assert _ci(one_sided)[1] == math.inf


def test_sequential_absolute_effect_scales_the_welch_se() -> None:
    control, treatment = proportion_arm(3000, 1396), proportion_arm(3461, 2422)
    absolute = sequential_test(control, treatment, effect="absolute")
    assert absolute.se == close(_some(welch_t_test(control, treatment).se))


def test_guardrail_breach_in_the_harmful_direction_only() -> None:
    control, worse = proportion_arm(5000, 250), proportion_arm(5000, 400)
    errors_up = guardrail_check("error rate", control, worse, harmful_direction="increase")
    quality_down = guardrail_check("quality", control, worse, harmful_direction="decrease")
    assert errors_up.breached
    assert not quality_down.breached


def test_fixed_guardrail_matches_one_sided_scipy() -> None:
    a, b = _random_arms(5)
    check = guardrail_check(
        "latency",
        arm_from_values(a),
        arm_from_values(b),
        harmful_direction="increase",
        sequential=False,
        effect="absolute",
    )
    peer = sps.ttest_ind(b, a, equal_var=False, alternative="greater")
    assert check.result.p_value == close(peer.pvalue)


# ---------------------------------------------------------------------------------------------
# CUPED
# ---------------------------------------------------------------------------------------------

CUPED_CONTROL = cuped_arm_from_values([1.2, 2.1, 3.3, 3.9, 5.2, 6.1], [1, 2, 3, 4, 5, 6])
CUPED_TREATMENT = cuped_arm_from_values([2.6, 1.4, 4.7, 3.3, 6.8, 5.5], [2, 1, 4, 3, 6, 5])


def test_cuped_reference_vector() -> None:
    result = cuped_test(CUPED_CONTROL, CUPED_TREATMENT)
    assert result.theta == ref("1.0214286")
    assert result.absolute.estimate == ref("0.416667")
    assert result.absolute.se == ref("0.0916991")
    assert result.adjusted


def _cuped_samples(seed: int) -> tuple[npt.NDArray[np.float64], ...]:
    rng = np.random.default_rng(seed)
    n_a, n_b = (int(v) for v in rng.integers(30, 300, size=2))
    x_a, x_b = rng.gamma(3.0, 2.0, size=n_a), rng.gamma(3.0, 2.0, size=n_b)
    y_a = 2.0 + 0.8 * x_a + rng.normal(0.0, 1.0, size=n_a)
    y_b = 2.4 + 0.8 * x_b + rng.normal(0.0, 1.0, size=n_b)
    return y_a, x_a, y_b, x_b


@pytest.mark.parametrize("seed", SEEDS)
def test_cuped_is_welch_on_adjusted_values(seed: int) -> None:
    y_a, x_a, y_b, x_b = _cuped_samples(seed)
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    theta = np.cov(y, x, ddof=1)[0, 1] / x.var(ddof=1)
    adj_a, adj_b = y_a - theta * x_a, y_b - theta * x_b
    peer = sps.ttest_ind(adj_b, adj_a, equal_var=False)
    result = cuped_test(cuped_arm_from_values(y_a, x_a), cuped_arm_from_values(y_b, x_b))
    assert result.theta == close(theta)
    assert result.absolute.estimate == close(adj_b.mean() - adj_a.mean())
    assert result.absolute.statistic == close(peer.statistic)
    assert result.absolute.p_value == close(peer.pvalue)
    assert result.absolute.df == close(peer.df)
    assert _some(result.absolute.se) < _some(
        welch_t_test(arm_from_values(y_a), arm_from_values(y_b)).se
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_cuped_relative_lift_divides_by_the_unadjusted_control_mean(seed: int) -> None:
    y_a, x_a, y_b, x_b = _cuped_samples(seed)
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    theta = np.cov(y, x, ddof=1)[0, 1] / x.var(ddof=1)
    adj_a, adj_b = y_a - theta * x_a, y_b - theta * x_b
    diff, mean_y_a = adj_b.mean() - adj_a.mean(), y_a.mean()
    # Influence-function (linearisation) variance of diff / ȳ_a, from the raw values.
    influence_a = -adj_a / mean_y_a - diff * y_a / mean_y_a**2
    variance = adj_b.var(ddof=1) / (y_b.size * mean_y_a**2) + influence_a.var(ddof=1) / y_a.size
    result = cuped_test(cuped_arm_from_values(y_a, x_a), cuped_arm_from_values(y_b, x_b))
    assert result.relative.estimate == close(diff / mean_y_a)
    assert result.relative.se == close(math.sqrt(variance))


def test_cuped_falls_back_when_the_pre_period_is_constant() -> None:
    y_a, _, y_b, _ = _cuped_samples(9)
    result = cuped_test(
        cuped_arm_from_values(y_a, np.ones_like(y_a)),
        cuped_arm_from_values(y_b, np.ones_like(y_b)),
    )
    assert not result.adjusted and result.theta == 0.0
    peer = sps.ttest_ind(y_b, y_a, equal_var=False)
    assert result.absolute.p_value == close(peer.pvalue)
    plain = relative_lift(arm_from_values(y_a), arm_from_values(y_b))
    assert result.relative.se == close(_some(plain.se))


def test_cuped_with_a_tiny_arm_is_not_computable() -> None:
    result = cuped_test(cuped_arm_from_values([1.0], [2.0]), CUPED_TREATMENT)
    assert not result.absolute.computable and not result.relative.computable


# ---------------------------------------------------------------------------------------------
# Multiplicity
# ---------------------------------------------------------------------------------------------


def test_holm_reference_vector() -> None:
    adjusted = holm_adjusted([0.01, 0.04, 0.03, 0.005, 0.55, 0.6])
    assert list(adjusted) == [ref(v) for v in ["0.05", "0.12", "0.12", "0.03", "1", "1"]]


def test_bh_reference_vector() -> None:
    adjusted = bh_adjusted([0.898, 0.138, 0.007, 0.964, 0.538, 0.006, 0.138])
    expected = ["0.964", "0.2415", "0.0245", "0.964", "0.7532", "0.0245", "0.2415"]
    assert list(adjusted) == [ref(v) for v in expected]


@pytest.mark.parametrize("seed", SEEDS)
def test_corrections_match_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=int(rng.integers(1, 15)))
    p[rng.integers(0, p.size)] = p[0]  # a tie
    for method, ours in (("holm", holm_adjusted), ("fdr_bh", bh_adjusted)):
        peer = multipletests(p, method=method)[1]
        assert list(ours(list(p))) == [close(v) for v in peer]


def test_empty_family_is_empty() -> None:
    assert holm_adjusted([]) == () and bh_adjusted([]) == ()


# ---------------------------------------------------------------------------------------------
# Power, sample size and duration
# ---------------------------------------------------------------------------------------------


def test_sample_size_reference_vectors() -> None:
    assert sample_size_per_arm(0.10, 0.01) == 14749
    assert sample_size_per_arm(0.10, 0.01, method="cohen_h") == 14745
    assert sample_size_per_arm(0.10, 0.10, relative=True) == 14749


@pytest.mark.parametrize("seed", SEEDS)
def test_sample_size_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p1 = float(rng.uniform(0.02, 0.6))
    p2 = p1 + float(rng.uniform(0.005, 0.05))
    alpha, power = float(rng.choice([0.01, 0.05, 0.1])), float(rng.choice([0.8, 0.9]))
    std = math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    unpooled = normal_sample_size_one_tail(
        p2 - p1, power, alpha / 2, std_null=std, std_alternative=std
    )
    cohen = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(p2, p1), alpha=alpha, power=power
    )
    ours = sample_size_per_arm(p1, p2 - p1, alpha=alpha, power=power)
    ours_h = sample_size_per_arm(p1, p2 - p1, alpha=alpha, power=power, method="cohen_h")
    assert ours == math.ceil(unpooled)
    assert ours_h == math.ceil(cohen)


def test_sample_size_rejects_impossible_targets() -> None:
    with pytest.raises(ValueError):
        sample_size_per_arm(0.95, 0.10)
    with pytest.raises(ValueError):
        sample_size_per_arm(0.10, 0.0)


def test_duration_waits_for_the_smallest_arm() -> None:
    assert ab_duration_days(14749, 1000, [0.5, 0.5]) == 30  # 14749 / 500 = 29.5
    assert ab_duration_days(1000, 1000, [0.8, 0.2]) == 5
    assert ab_duration_days(435, 1500, [0.29, 0.29]) == 1  # 435 / 435.00000000000006, not 2
    assert ab_duration_days(0, 1000, [0.5, 0.5]) == 0


@pytest.mark.parametrize("shares", [[0.7, 0.7], [0.0, 0.5], [1.0]])
def test_duration_rejects_impossible_splits(shares: list[float]) -> None:
    with pytest.raises(ValueError):
        ab_duration_days(100, 1000, shares)


@pytest.mark.parametrize(("baseline", "days"), [(0.1, 30), (0.03, 14), (0.5, 7), (0.8, 60)])
def test_mde_for_duration_inverts_the_sample_size(baseline: float, days: int) -> None:
    daily_units, shares = 2000.0, [0.5, 0.5]
    mde = mde_for_duration(baseline, days, daily_units, shares)
    p2 = baseline + mde
    std = math.sqrt(baseline * (1 - baseline) + p2 * (1 - p2))
    peer_n = normal_sample_size_one_tail(mde, 0.8, 0.025, std_null=std, std_alternative=std)
    assert peer_n == pytest.approx(days * daily_units * 0.5, rel=1e-9)
    relative = mde_for_duration(baseline, days, daily_units, shares, relative=True)
    assert relative == close(mde / baseline)


def test_mde_is_infinite_when_nothing_is_detectable() -> None:
    assert mde_for_duration(0.5, 1, 2.0, [0.5, 0.5]) == math.inf
    assert mde_for_duration(0.1, 0, 1000.0, [0.5, 0.5]) == math.inf


def test_plan_checks_the_retraining_cadence() -> None:
    plan = plan_ab_test(0.10, 0.01, daily_units=1000, traffic_shares=[0.5, 0.5], cadence_days=14)
    assert (plan.n_per_arm, plan.days, plan.fits_cadence) == (14749, 30, False)
    roomy = plan_ab_test(0.10, 0.01, daily_units=5000, traffic_shares=[0.5, 0.5], cadence_days=7)
    assert roomy.fits_cadence


# ---------------------------------------------------------------------------------------------
# Eval gates
# ---------------------------------------------------------------------------------------------

# STATS.md's paired binary vector: 30 only candidate right, 12 only baseline, 50 both, 50 neither.
CANDIDATE = np.concatenate([np.ones(30), np.zeros(12), np.ones(50), np.zeros(50)])
BASELINE = np.concatenate([np.zeros(30), np.ones(12), np.ones(50), np.zeros(50)])


def test_mcnemar_reference_vector() -> None:
    assert mcnemar_exact(30, 12).p_value == ref("0.00791590")


@pytest.mark.parametrize(("n01", "n10"), [(0, 5), (3, 3), (17, 4), (1, 0), (40, 61)])
def test_mcnemar_matches_statsmodels(n01: int, n10: int) -> None:
    peer = mcnemar([[20, n10], [n01, 20]], exact=True)
    assert mcnemar_exact(n01, n10).p_value == close(peer.pvalue)


def test_mcnemar_without_discordant_pairs_finds_nothing() -> None:
    assert mcnemar_exact(0, 0).p_value == 1.0


def test_paired_t_reference_vector() -> None:
    assert paired_t_test(CANDIDATE, BASELINE).p_value == ref("0.0050873")


@pytest.mark.parametrize("seed", SEEDS)
def test_paired_t_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    baseline = rng.uniform(0, 1, size=int(rng.integers(5, 300)))
    candidate = np.clip(baseline + rng.normal(0.02, 0.1, size=baseline.size), 0, 1)
    peer = sps.ttest_rel(candidate, baseline)
    peer_ci = peer.confidence_interval(0.95)
    result = paired_t_test(candidate, baseline)
    assert result.statistic == close(peer.statistic)
    assert result.p_value == close(peer.pvalue)
    assert result.ci == (close(peer_ci.low), close(peer_ci.high))


def test_paired_t_on_identical_scores_is_not_computable() -> None:
    result = paired_t_test(BASELINE, BASELINE)
    assert not result.computable and result.mean_diff == 0.0


def test_paired_scores_must_line_up() -> None:
    with pytest.raises(ValueError, match="same items"):
        paired_t_test([1.0, 2.0], [1.0])


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_paired_bootstrap_matches_scipy_with_the_same_seed(seed: int) -> None:
    rng = np.random.default_rng(99)
    baseline = rng.uniform(size=200)
    candidate = baseline + rng.normal(0.01, 0.2, size=200)
    peer = sps.bootstrap(
        (candidate, baseline),
        lambda c, b, axis: c.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    result = paired_bootstrap(candidate, baseline, seed=seed)
    ci = peer.confidence_interval
    assert result.ci == (close(ci.low), close(ci.high))
    assert result.se == close(peer.standard_error)
    assert result.n_resamples == 10_000


def test_paired_bootstrap_is_reproducible() -> None:
    first = paired_bootstrap(CANDIDATE, BASELINE, seed=3)
    assert paired_bootstrap(CANDIDATE, BASELINE, seed=3) == first


def test_paired_bootstrap_averages_samples_within_each_item_first() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 5, size=80)
    candidate = [list(rng.uniform(size=k)) for k in sizes]
    baseline = [list(rng.uniform(size=k)) for k in sizes]
    per_item = paired_bootstrap_per_item(candidate, baseline, n_resamples=2000, seed=1)
    means = paired_bootstrap(
        [np.mean(c) for c in candidate], [np.mean(b) for b in baseline], n_resamples=2000, seed=1
    )
    assert per_item == means
    assert list(item_means([[1.0, 2.0], [4.0]])) == [1.5, 4.0]


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (3, 10), (10, 10), (150, 299), (290, 300)])
def test_wilson_matches_statsmodels(successes: int, n: int) -> None:
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    result = wilson_interval(successes, n)
    assert result.ci == (close(low), close(high))
    assert result.small_sample_warning == (n < 300)


def test_wilson_needs_items() -> None:
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def _student_teacher(seed: int, keep: float) -> tuple[npt.NDArray[np.float64], ...]:
    rng = np.random.default_rng(seed)
    teacher = rng.uniform(0.4, 1.0, size=int(rng.integers(40, 400)))
    student = keep * teacher + rng.normal(0.0, 0.08, size=teacher.size)
    return student, teacher


@pytest.mark.parametrize("seed", SEEDS)
def test_paired_non_inferiority_matches_scipy(seed: int) -> None:
    student, teacher = _student_teacher(seed, keep=0.96)
    peer = sps.ttest_1samp(student - 0.95 * teacher, 0.0, alternative="greater")
    result = non_inferiority_paired(student, teacher, ratio=0.95)
    assert result.statistic == close(peer.statistic)
    assert result.p_value == close(peer.pvalue)


@pytest.mark.parametrize("seed", SEEDS)
def test_fieller_bounds_are_where_the_one_sided_test_sits_at_alpha(seed: int) -> None:
    student, teacher = _student_teacher(seed, keep=0.97)
    result = non_inferiority_paired(student, teacher, alpha=0.05)
    assert result.ratio_bounds is not None
    low, high = result.ratio_bounds
    at_low = sps.ttest_1samp(student - low * teacher, 0.0, alternative="greater")
    at_high = sps.ttest_1samp(student - high * teacher, 0.0, alternative="less")
    assert at_low.pvalue == pytest.approx(0.05, rel=1e-7)
    assert at_high.pvalue == pytest.approx(0.05, rel=1e-7)
    assert result.non_inferior == (low > 0.95)


@pytest.mark.parametrize("seed", SEEDS)
def test_unpaired_non_inferiority_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(0.78, 0.2, size=150), rng.normal(0.8, 0.25, size=220)
    peer = CompareMeans(DescrStatsW(student), DescrStatsW(0.95 * teacher)).ztest_ind(
        alternative="larger", usevar="unequal"
    )
    result = non_inferiority_unpaired(arm_from_values(student), arm_from_values(teacher))
    assert result.statistic == close(peer[0])
    assert result.p_value == close(peer[1])
    assert result.ratio_bounds is not None
    low, _ = result.ratio_bounds
    at_low = CompareMeans(DescrStatsW(student), DescrStatsW(low * teacher)).ztest_ind(
        alternative="larger", usevar="unequal"
    )
    assert at_low[1] == pytest.approx(0.05, rel=1e-7)


def test_non_inferiority_gate_three_outcomes() -> None:
    student, teacher = _student_teacher(1, keep=1.0)
    passing = non_inferiority_gate(student, teacher)
    assert passing.verdict == "pass"
    student, teacher = _student_teacher(2, keep=0.80)
    assert non_inferiority_gate(student, teacher).verdict == "fail"
    student, teacher = _student_teacher(3, keep=0.95)
    assert non_inferiority_gate(student[:40], teacher[:40]).verdict == "insufficient_data"
    assert non_inferiority_gate(student[:10], teacher[:10]).verdict == "insufficient_data"
    assert any("ratio" in line for line in passing.evidence)


def test_gate_verdict_reads_the_interval_against_the_threshold() -> None:
    def verdict(interval: tuple[float, float] | None, higher_is_better: bool = True) -> str:
        return gate_verdict(
            "g", interval=interval, threshold=0.0, n_items=500, higher_is_better=higher_is_better
        ).verdict

    assert verdict((0.01, 0.05)) == "pass"
    assert verdict((-0.05, -0.01)) == "fail"
    assert verdict((-0.01, 0.05)) == "insufficient_data"
    assert verdict(None) == "insufficient_data"
    assert verdict((-0.3, -0.1), higher_is_better=False) == "pass"
    few = gate_verdict("g", interval=(0.01, 0.05), threshold=0.0, n_items=5, min_items=30)
    assert few.verdict == "insufficient_data"


def test_regressed_slices_are_holm_corrected() -> None:
    p = {"en": 0.004, "de": 0.03, "fr": 0.5}  # de alone would pass at 0.05
    holm = multipletests(list(p.values()), alpha=0.05, method="holm")[0]
    assert regressed_slices(p) == tuple(name for name, r in zip(p, holm, strict=True) if r)
    assert regressed_slices(p) == ("en",)


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------

SRM_OK = srm_test([5000, 5000])


def _decide(
    primary: ABResult,
    guardrails: list[GuardrailResult] | None = None,
    srm: SRMResult = SRM_OK,
    min_effect: float | None = None,
) -> st.ABDecision:
    return ab_decision(
        primary,
        guardrails or [],
        srm,
        planned_n_per_arm=5000,
        daily_units=1000.0,
        traffic_shares=[0.5, 0.5],
        min_effect=min_effect,
    )


def test_decision_ships_a_clear_sequential_win() -> None:
    primary = sequential_test(proportion_arm(3000, 300), proportion_arm(3000, 420), n_star=10000)
    decision = _decide(primary)
    assert decision.verdict == "ship" and decision.reasons


def test_decision_keeps_running_with_days_to_the_plan() -> None:
    primary = sequential_test(proportion_arm(1000, 100), proportion_arm(1000, 104), n_star=10000)
    decision = _decide(primary)
    assert decision.verdict == "keep_running"
    assert decision.days_remaining == ab_duration_days(4000, 1000.0, [0.5, 0.5]) == 8


def test_decision_does_not_read_a_fixed_test_before_the_plan() -> None:
    early_win = welch_t_test(proportion_arm(3000, 300), proportion_arm(3000, 420))
    assert early_win.significant
    assert _decide(early_win).verdict == "keep_running"


def test_decision_stops_without_effect_at_the_planned_sample() -> None:
    flat = welch_t_test(proportion_arm(5000, 500), proportion_arm(5000, 505))
    assert _decide(flat).verdict == "stop_no_effect"


def test_decision_stops_early_when_the_sequence_rules_out_the_effect() -> None:
    flat = sequential_test(proportion_arm(4000, 2000), proportion_arm(4000, 2004), n_star=8000)
    assert _decide(flat, min_effect=0.2).verdict == "stop_no_effect"
    assert _decide(flat).verdict == "keep_running"


def test_decision_reads_a_fixed_test_at_the_planned_sample() -> None:
    win = welch_t_test(proportion_arm(5000, 500), proportion_arm(5000, 600))
    loss = welch_t_test(proportion_arm(5000, 600), proportion_arm(5000, 500))
    assert _decide(win).verdict == "ship"
    assert _decide(loss).verdict == "roll_back"


def test_decision_respects_lower_is_better_metrics() -> None:
    latency_up = sequential_test(proportion_arm(3000, 300), proportion_arm(3000, 420))
    decision = ab_decision(
        latency_up,
        [],
        SRM_OK,
        planned_n_per_arm=5000,
        daily_units=1000.0,
        traffic_shares=[0.5, 0.5],
        higher_is_better=False,
    )
    assert decision.verdict == "roll_back"


def test_decision_rolls_back_on_a_breached_guardrail() -> None:
    primary = sequential_test(proportion_arm(3000, 300), proportion_arm(3000, 420), n_star=10000)
    guardrail = guardrail_check(
        "refusals",
        proportion_arm(3000, 30),
        proportion_arm(3000, 90),
        harmful_direction="increase",
        n_star=10000,
    )
    decision = _decide(primary, [guardrail])
    assert decision.verdict == "roll_back"
    assert any("refusals" in reason for reason in decision.reasons)


def test_decision_distrusts_everything_under_srm() -> None:
    primary = sequential_test(proportion_arm(3000, 300), proportion_arm(3000, 420))
    assert _decide(primary, srm=srm_test([5000, 5400])).verdict == "invalid_srm"


def test_decision_notes_an_unjudged_split() -> None:
    primary = sequential_test(proportion_arm(5, 1), proportion_arm(4, 1))
    decision = _decide(primary, srm=srm_test([5, 4]))
    assert decision.verdict == "keep_running"
    assert any("not judged" in reason for reason in decision.reasons)


# ---------------------------------------------------------------------------------------------
# Public face
# ---------------------------------------------------------------------------------------------


def test_public_names_exist_and_are_documented() -> None:
    assert sorted(st.__all__) == st.__all__
    for name in st.__all__:
        obj = getattr(st, name)
        if callable(obj) and not name[0].isupper():
            assert obj.__doc__, f"{name} has no docstring"


def test_aa_peeking_bench_is_importable_and_runs_small() -> None:
    from bench.aa_peeking import simulate

    rates = simulate(simulations=20, days=3)
    assert 0.0 <= rates.sequential <= 1.0 and 0.0 <= rates.fixed_z <= 1.0
