"""The statistics behind every ship, roll-back and feasibility call (specification: STATS.md).

Pure functions over per-arm sums or per-item scores; no I/O. Families, in file order:

    arm summaries        ArmStats, proportion_arm, ratio_metric_arm, CupedArmStats
    fixed-horizon A/B    welch_t_test, relative_lift, two_proportion_z_test
    sample ratio         srm_test
    sequential A/B       sequential_test, guardrail_check (asymptotic confidence sequences)
    CUPED                cuped_test
    multiplicity         holm_adjusted, bh_adjusted
    power and duration   sample_size_per_arm, ab_duration_days, planned_total, mde_for_duration,
                         plan_ab_test
    eval gates           mcnemar_exact, paired_t_test, paired_bootstrap(_per_item), item_means,
                         wilson_interval, non_inferiority_paired, non_inferiority_unpaired,
                         gate_verdict, non_inferiority_gate, regressed_slices
    decisions            ab_decision

Arms are always (control, treatment) and effects are treatment minus control. A result that
cannot be computed (control mean of zero, no variance, fewer than two units) says so in
``reason`` and carries ``None`` instead of numbers; no division error or NaN escapes.
Invalid arguments (negative counts, shares outside (0, 1], ...) raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TYPE_CHECKING, Literal, Protocol

from core.formatting import NOT_AVAILABLE, significant

# numpy and scipy load inside the functions that use them: together they take over a second
# to import, and the command line's sample size and the plan lint need neither.
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "ABDecision",
    "ABResult",
    "ABTestPlan",
    "Alternative",
    "ArmStats",
    "ArmSummary",
    "BootstrapResult",
    "CupedArmStats",
    "CupedResult",
    "Effect",
    "GateVerdict",
    "GuardrailResult",
    "McNemarResult",
    "NonInferiorityResult",
    "PairedTestResult",
    "RatioArmStats",
    "SRMResult",
    "WilsonInterval",
    "ab_decision",
    "ab_duration_days",
    "arm_from_values",
    "bh_adjusted",
    "cuped_arm_from_values",
    "cuped_test",
    "gate_verdict",
    "guardrail_check",
    "holm_adjusted",
    "item_means",
    "mcnemar_exact",
    "mde_for_duration",
    "non_inferiority_gate",
    "non_inferiority_paired",
    "non_inferiority_unpaired",
    "paired_bootstrap",
    "paired_bootstrap_per_item",
    "paired_t_test",
    "plan_ab_test",
    "planned_total",
    "proportion_arm",
    "ratio_metric_arm",
    "regressed_slices",
    "relative_lift",
    "sample_size_per_arm",
    "sequential_test",
    "srm_test",
    "two_proportion_z_test",
    "welch_t_test",
    "wilson_interval",
]

Alternative = Literal["two-sided", "greater", "less"]
Effect = Literal["absolute", "relative"]

DEFAULT_N_STAR = 5000
SRM_THRESHOLD = 0.001
SRM_MIN_UNITS = 8
WILSON_SMALL_SAMPLE = 300
_STANDARD_NORMAL = NormalDist()
# Bootstrap index matrices are drawn in blocks of at most this many cells (32 MB of int64).
_BOOTSTRAP_BLOCK_CELLS = 1 << 22


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def _sf(x: float, df: float | None) -> float:
    """Upper tail of Student t(df), or of the standard normal when df is None."""
    # erfc keeps far-tail p-values exact and skips scipy's per-call overhead (the A/A bench
    # calls this thousands of times).
    if df is None:
        return 0.5 * math.erfc(x / math.sqrt(2.0))
    from scipy import stats

    return float(stats.t.sf(x, df))


def _ppf(q: float, df: float | None) -> float:
    """Quantile of Student t(df), or of the standard normal when df is None."""
    if df is None:
        return _STANDARD_NORMAL.inv_cdf(q)
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _inference(
    estimate: float, se: float, df: float | None, alpha: float, alternative: Alternative
) -> tuple[float, float, tuple[float, float]]:
    """Statistic, p-value and interval of estimate/se under t(df), or the normal if df is None."""
    statistic = estimate / se
    if alternative == "two-sided":
        p_value = min(1.0, 2.0 * _sf(abs(statistic), df))
        q = _ppf(1.0 - alpha / 2.0, df)
        return statistic, p_value, (estimate - q * se, estimate + q * se)
    q = _ppf(1.0 - alpha, df)
    if alternative == "greater":
        return statistic, _sf(statistic, df), (estimate - q * se, math.inf)
    return statistic, _sf(-statistic, df), (-math.inf, estimate + q * se)


# ---------------------------------------------------------------------------------------------
# Arm summaries: per-arm sums in, mean and unit-level variance out
# ---------------------------------------------------------------------------------------------


class ArmSummary(Protocol):
    """What an A/B analysis reads from an arm: units, mean, and variance with Var(mean) = v/n."""

    @property
    def n(self) -> int: ...

    @property
    def mean(self) -> float: ...

    @property
    def variance(self) -> float: ...


@dataclass(frozen=True)
class ArmStats:
    """One arm from sums: n units, Σy and Σy²; a proportion arm uses the variance p(1−p)."""

    n: int
    sum: float
    sum_sq: float
    kind: Literal["mean", "proportion"] = "mean"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"an arm cannot have a negative number of units ({self.n})")

    @property
    def mean(self) -> float:
        """Σy/n; raises ValueError for an empty arm."""
        if self.n == 0:
            raise ValueError("an empty arm has no mean")
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """p(1−p) for proportions, else (Σy² − (Σy)²/n)/(n−1), floored at 0 against rounding."""
        if self.kind == "proportion":
            p = self.mean
            return p * (1.0 - p)
        if self.n < 2:
            raise ValueError("a sample variance needs at least 2 units")
        return max(0.0, (self.sum_sq - self.sum * self.sum / self.n) / (self.n - 1))


def proportion_arm(n: int, x: int) -> ArmStats:
    """A binary-metric arm with x successes out of n units."""
    if not 0 <= x <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {x}")
    return ArmStats(n=n, sum=float(x), sum_sq=float(x), kind="proportion")


def arm_from_values(values: npt.ArrayLike) -> ArmStats:
    """A mean-metric arm summarised from per-unit values."""
    import numpy as np

    y = np.asarray(values, dtype=float).ravel()
    return ArmStats(n=int(y.size), sum=float(y.sum()), sum_sq=float(np.dot(y, y)))


@dataclass(frozen=True)
class RatioArmStats:
    """A ratio metric Σy/Σm (e.g. rate per interaction) over n randomised users."""

    n: int
    sum_y: float
    sum_y_sq: float
    sum_m: float
    sum_m_sq: float
    sum_ym: float

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("a ratio-metric arm needs at least one user")
        if self.sum_m <= 0:
            raise ValueError("a ratio-metric arm needs a positive denominator (no interactions)")

    @property
    def mean(self) -> float:
        """The ratio Σy/Σm."""
        return self.sum_y / self.sum_m

    @property
    def variance(self) -> float:
        """Delta-method unit variance (σ_y² − 2Rσ_ym + R²σ_m²)/m̄², so Var(R) = variance/n."""
        if self.n < 2:
            raise ValueError("a ratio-metric variance needs at least 2 users")
        n = self.n
        ratio = self.mean
        var_y = (self.sum_y_sq - self.sum_y**2 / n) / (n - 1)
        var_m = (self.sum_m_sq - self.sum_m**2 / n) / (n - 1)
        cov_ym = (self.sum_ym - self.sum_y * self.sum_m / n) / (n - 1)
        mean_m = self.sum_m / n
        return max(0.0, (var_y - 2.0 * ratio * cov_ym + ratio**2 * var_m) / mean_m**2)


def ratio_metric_arm(
    n: int, sum_y: float, sum_y_sq: float, sum_m: float, sum_m_sq: float, sum_ym: float
) -> RatioArmStats:
    """A ratio-metric arm from per-user sums of y, y², m, m² and y·m (user is the unit)."""
    return RatioArmStats(n, sum_y, sum_y_sq, sum_m, sum_m_sq, sum_ym)


@dataclass(frozen=True)
class CupedArmStats:
    """One arm for CUPED: n units, sums of the metric y and its pre-period covariate x."""

    n: int
    sum_y: float
    sum_y_sq: float
    sum_x: float
    sum_x_sq: float
    sum_xy: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"an arm cannot have a negative number of units ({self.n})")


def cuped_arm_from_values(y: npt.ArrayLike, x: npt.ArrayLike) -> CupedArmStats:
    """A CUPED arm summarised from per-unit metric values y and pre-period values x."""
    import numpy as np

    ys = np.asarray(y, dtype=float).ravel()
    xs = np.asarray(x, dtype=float).ravel()
    if ys.shape != xs.shape:
        raise ValueError("y and x must have one value per unit each")
    return CupedArmStats(
        n=int(ys.size),
        sum_y=float(ys.sum()),
        sum_y_sq=float(np.dot(ys, ys)),
        sum_x=float(xs.sum()),
        sum_x_sq=float(np.dot(xs, xs)),
        sum_xy=float(np.dot(xs, ys)),
    )


# ---------------------------------------------------------------------------------------------
# Fixed-horizon A/B tests: Welch, delta-method relative lift, pooled two-proportion z
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABResult:
    """An A/B effect (treatment − control) with its test; numbers are None when not computable."""

    method: str
    effect: Effect
    n_control: int
    n_treatment: int
    mean_control: float | None
    mean_treatment: float | None
    estimate: float | None
    se: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    statistic: float | None
    df: float | None
    alpha: float
    alternative: Alternative = "two-sided"
    always_valid: bool = False
    reason: str | None = None

    @property
    def computable(self) -> bool:
        """True when the numbers are there; otherwise ``reason`` says why not."""
        return self.reason is None

    @property
    def significant(self) -> bool:
        """True when computable and p < alpha."""
        return self.p_value is not None and self.p_value < self.alpha


def _arms_problem(control: ArmSummary, treatment: ArmSummary) -> str | None:
    for label, arm in (("control", control), ("treatment", treatment)):
        if arm.n < 2:
            return f"the {label} arm has {arm.n} unit(s); at least 2 are needed"
    return None


def _not_computable(
    method: str,
    effect: Effect,
    control: ArmSummary,
    treatment: ArmSummary,
    reason: str,
    *,
    alpha: float,
    alternative: Alternative = "two-sided",
    always_valid: bool = False,
) -> ABResult:
    return ABResult(
        method=method,
        effect=effect,
        n_control=control.n,
        n_treatment=treatment.n,
        mean_control=control.mean if control.n > 0 else None,
        mean_treatment=treatment.mean if treatment.n > 0 else None,
        estimate=None,
        se=None,
        ci=None,
        p_value=None,
        statistic=None,
        df=None,
        alpha=alpha,
        alternative=alternative,
        always_valid=always_valid,
        reason=reason,
    )


def _welch_df(control: ArmSummary, treatment: ArmSummary) -> float:
    """Welch–Satterthwaite degrees of freedom; needs n ≥ 2 and at least one positive variance."""
    va = control.variance / control.n
    vb = treatment.variance / treatment.n
    return (va + vb) ** 2 / (va**2 / (control.n - 1) + vb**2 / (treatment.n - 1))


def welch_t_test(
    control: ArmSummary,
    treatment: ArmSummary,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> ABResult:
    """Absolute difference of means by Welch's t-test (unequal variances, Satterthwaite df)."""
    _check_alpha(alpha)
    problem = _arms_problem(control, treatment)
    if problem is None and control.variance <= 0 and treatment.variance <= 0:
        problem = "both arms have zero variance, so the difference has no standard error"
    if problem is not None:
        return _not_computable(
            "welch_t", "absolute", control, treatment, problem, alpha=alpha, alternative=alternative
        )
    estimate = treatment.mean - control.mean
    se = math.sqrt(treatment.variance / treatment.n + control.variance / control.n)
    df = _welch_df(control, treatment)
    statistic, p_value, ci = _inference(estimate, se, df, alpha, alternative)
    return ABResult(
        method="welch_t",
        effect="absolute",
        n_control=control.n,
        n_treatment=treatment.n,
        mean_control=control.mean,
        mean_treatment=treatment.mean,
        estimate=estimate,
        se=se,
        ci=ci,
        p_value=p_value,
        statistic=statistic,
        df=df,
        alpha=alpha,
        alternative=alternative,
    )


def _relative_problem(control: ArmSummary, treatment: ArmSummary) -> str | None:
    problem = _arms_problem(control, treatment)
    if problem is not None:
        return problem
    if control.mean == 0:
        return "the control mean is 0, so a relative lift is undefined"
    if control.variance <= 0 or treatment.variance <= 0:
        return "an arm has zero variance, so the delta-method variance is degenerate"
    return None


def _relative_se(control: ArmSummary, treatment: ArmSummary) -> float:
    mu_a, mu_b = control.mean, treatment.mean
    var = treatment.variance / (treatment.n * mu_a**2) + control.variance * mu_b**2 / (
        control.n * mu_a**4
    )
    return math.sqrt(var)


def relative_lift(
    control: ArmSummary,
    treatment: ArmSummary,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> ABResult:
    """Relative lift (μ_b − μ_a)/|μ_a| by the delta method, t on the Welch df (as gbstats)."""
    _check_alpha(alpha)
    problem = _relative_problem(control, treatment)
    if problem is not None:
        return _not_computable(
            "delta_t", "relative", control, treatment, problem, alpha=alpha, alternative=alternative
        )
    estimate = (treatment.mean - control.mean) / abs(control.mean)
    se = _relative_se(control, treatment)
    df = _welch_df(control, treatment)
    statistic, p_value, ci = _inference(estimate, se, df, alpha, alternative)
    return ABResult(
        method="delta_t",
        effect="relative",
        n_control=control.n,
        n_treatment=treatment.n,
        mean_control=control.mean,
        mean_treatment=treatment.mean,
        estimate=estimate,
        se=se,
        ci=ci,
        p_value=p_value,
        statistic=statistic,
        df=df,
        alpha=alpha,
        alternative=alternative,
    )


def two_proportion_z_test(
    control: ArmStats,
    treatment: ArmStats,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> ABResult:
    """Pooled two-proportion z-test; ``se`` is the pooled SE, ``ci`` the unpooled Wald interval.

    The pooled SE is only right under the null, so the interval uses the unpooled one.
    Raises ValueError if an arm is not a proportion arm.
    """
    _check_alpha(alpha)
    if control.kind != "proportion" or treatment.kind != "proportion":
        raise ValueError("the two-proportion z-test needs proportion arms (see proportion_arm)")
    problem = _arms_problem(control, treatment)
    n_a, n_b = control.n, treatment.n
    pooled = (control.sum + treatment.sum) / (n_a + n_b) if problem is None else 0.0
    if problem is None and pooled in (0.0, 1.0):
        problem = "every unit in both arms has the same outcome, so there is no variance"
    if problem is not None:
        return _not_computable(
            "pooled_z",
            "absolute",
            control,
            treatment,
            problem,
            alpha=alpha,
            alternative=alternative,
        )
    estimate = treatment.mean - control.mean
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    statistic, p_value, _ = _inference(estimate, se_pooled, None, alpha, alternative)
    se_wald = math.sqrt(control.variance / n_a + treatment.variance / n_b)
    if se_wald > 0:
        _, _, ci = _inference(estimate, se_wald, None, alpha, alternative)
    else:
        ci = (estimate, estimate)
    return ABResult(
        method="pooled_z",
        effect="absolute",
        n_control=n_a,
        n_treatment=n_b,
        mean_control=control.mean,
        mean_treatment=treatment.mean,
        estimate=estimate,
        se=se_pooled,
        ci=ci,
        p_value=p_value,
        statistic=statistic,
        df=None,
        alpha=alpha,
        alternative=alternative,
    )


# ---------------------------------------------------------------------------------------------
# Sample ratio mismatch
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SRMResult:
    """Chi-square check that arms received their planned shares of units."""

    status: Literal["ok", "mismatch", "not_judged"]
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float | None
    p_value: float | None
    df: int
    threshold: float
    reason: str | None = None

    @property
    def mismatch(self) -> bool:
        """True when the split is judged and p < threshold."""
        return self.status == "mismatch"


def srm_test(
    counts: Sequence[int],
    weights: Sequence[float] | None = None,
    *,
    threshold: float = SRM_THRESHOLD,
    min_units: int = SRM_MIN_UNITS,
) -> SRMResult:
    """Pearson χ² of observed units per arm against weights (default equal); flag at p < 0.001.

    Not judged while any arm's expected count is below ``min_units``: the χ² approximation
    is unreliable there. Expected (not observed) counts decide, so an arm that should have
    hundreds of units but has none is still flagged. Raises ValueError on bad inputs.
    """
    observed = tuple(int(c) for c in counts)
    k = len(observed)
    if k < 2:
        raise ValueError("a sample ratio check needs at least two arms")
    if any(c < 0 for c in observed):
        raise ValueError("unit counts cannot be negative")
    shares = [1.0] * k if weights is None else [float(w) for w in weights]
    if len(shares) != k:
        raise ValueError(f"got {k} counts but {len(shares)} weights; give one weight per arm")
    if any(not w > 0 for w in shares):
        raise ValueError("every arm needs a positive planned weight")
    total = sum(observed)
    expected = tuple(w / sum(shares) * total for w in shares)
    if min(expected) < min_units:
        return SRMResult(
            status="not_judged",
            counts=observed,
            expected=expected,
            statistic=None,
            p_value=None,
            df=k - 1,
            threshold=threshold,
            reason=f"an arm expects fewer than {min_units} units; too early to judge the split",
        )
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    from scipy import stats

    p_value = float(stats.chi2.sf(statistic, k - 1))
    return SRMResult(
        status="mismatch" if p_value < threshold else "ok",
        counts=observed,
        expected=expected,
        statistic=statistic,
        p_value=p_value,
        df=k - 1,
        threshold=threshold,
    )


# ---------------------------------------------------------------------------------------------
# Sequential (peeking-safe) A/B: asymptotic confidence sequences, Waudby-Smith et al. eq. 9
# ---------------------------------------------------------------------------------------------


def _rho(alpha: float, n_star: float) -> float:
    """Mixing parameter tuned so the sequence is tightest at n_star total units."""
    log_alpha = math.log(alpha)
    return math.sqrt((-2.0 * log_alpha + math.log(-2.0 * log_alpha + 1.0)) / n_star)


def sequential_test(
    control: ArmSummary,
    treatment: ArmSummary,
    *,
    alpha: float = 0.05,
    n_star: float = DEFAULT_N_STAR,
    effect: Effect = "relative",
    alternative: Alternative = "two-sided",
) -> ABResult:
    """Always-valid confidence sequence and p-value on the effect, as GrowthBook computes them.

    The half-width scales the SE of the chosen effect (the delta-method SE for relative
    effects, as gbstats does). Set ``n_star`` to the planned total sample. One-sided
    sequences (guardrails) use ρ tuned at 2α. ``df`` is None: the sequence is asymptotic.
    """
    _check_alpha(alpha)
    if n_star <= 0:
        raise ValueError(f"n_star must be positive (the planned total sample), got {n_star}")
    if alternative != "two-sided" and alpha >= 0.5:
        raise ValueError(f"a one-sided sequence tunes ρ at 2α, so alpha must be below 0.5: {alpha}")
    if effect == "relative":
        problem = _relative_problem(control, treatment)
    else:
        problem = _arms_problem(control, treatment)
        if problem is None and control.variance <= 0 and treatment.variance <= 0:
            problem = "both arms have zero variance, so the difference has no standard error"
    if problem is not None:
        return _not_computable(
            "sequential",
            effect,
            control,
            treatment,
            problem,
            alpha=alpha,
            alternative=alternative,
            always_valid=True,
        )
    if effect == "relative":
        estimate = (treatment.mean - control.mean) / abs(control.mean)
        se = _relative_se(control, treatment)
    else:
        estimate = treatment.mean - control.mean
        se = math.sqrt(treatment.variance / treatment.n + control.variance / control.n)
    n = control.n + treatment.n
    z = estimate / se
    # With k = Nρ², SE·√N·√(2(Nρ²+1)/(N²ρ²)·L) simplifies to SE·√(2(k+1)/k·L).
    if alternative == "two-sided":
        k = n * _rho(alpha, n_star) ** 2
        log_term = math.log(math.sqrt(k + 1.0) / alpha)
        half_width = se * math.sqrt(2.0 * (k + 1.0) / k * log_term)
        ci = (estimate - half_width, estimate + half_width)
        p_value = min(1.0, math.sqrt(1.0 + k) * math.exp(-k * z * z / (2.0 * (1.0 + k))))
    else:
        k = n * _rho(2.0 * alpha, n_star) ** 2
        log_term = math.log(1.0 + math.sqrt(k + 1.0) / (2.0 * alpha))
        half_width = se * math.sqrt(2.0 * (k + 1.0) / k * log_term)
        if alternative == "greater":
            ci = (estimate - half_width, math.inf)
        else:
            ci = (-math.inf, estimate + half_width)
        p_value = _one_sided_sequential_p(z if alternative == "greater" else -z, k)
    return ABResult(
        method="sequential",
        effect=effect,
        n_control=control.n,
        n_treatment=treatment.n,
        mean_control=control.mean,
        mean_treatment=treatment.mean,
        estimate=estimate,
        se=se,
        ci=ci,
        p_value=p_value,
        statistic=z,
        df=None,
        alpha=alpha,
        alternative=alternative,
        always_valid=True,
    )


def _one_sided_sequential_p(z: float, k: float) -> float:
    """Smallest α whose one-sided boundary (at this ρ) z exceeds: the boundary solved for α.

    From k·z²/(2(k+1)) = ln(1 + √(k+1)/(2α)): α = √(k+1) / (2(exp(k·z²/(2(k+1))) − 1)).
    """
    if z <= 0:
        return 1.0
    exponent = k * z * z / (2.0 * (k + 1.0))
    # log(expm1(x)) ≈ x once exp(x) dwarfs 1; avoids OverflowError for huge z.
    log_expm1 = exponent if exponent > 50.0 else math.log(math.expm1(exponent))
    log_p = 0.5 * math.log(k + 1.0) - math.log(2.0) - log_expm1
    return min(1.0, math.exp(log_p))


@dataclass(frozen=True)
class GuardrailResult:
    """A guardrail metric tested one-sided in its harmful direction."""

    name: str
    harmful_direction: Literal["increase", "decrease"]
    result: ABResult

    @property
    def breached(self) -> bool:
        """True when the harm is significant (the one-sided bound excludes no change)."""
        return self.result.significant


def guardrail_check(
    name: str,
    control: ArmSummary,
    treatment: ArmSummary,
    *,
    harmful_direction: Literal["increase", "decrease"],
    alpha: float = 0.05,
    sequential: bool = True,
    n_star: float = DEFAULT_N_STAR,
    effect: Effect = "relative",
) -> GuardrailResult:
    """One-sided test that a guardrail moved the harmful way (sequential unless told otherwise)."""
    alternative: Alternative = "greater" if harmful_direction == "increase" else "less"
    if sequential:
        result = sequential_test(
            control, treatment, alpha=alpha, n_star=n_star, effect=effect, alternative=alternative
        )
    elif effect == "relative":
        result = relative_lift(control, treatment, alpha=alpha, alternative=alternative)
    else:
        result = welch_t_test(control, treatment, alpha=alpha, alternative=alternative)
    return GuardrailResult(name=name, harmful_direction=harmful_direction, result=result)


# ---------------------------------------------------------------------------------------------
# CUPED: variance reduction with a pre-period covariate
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AdjustedArm:
    n: int
    mean: float
    variance: float


@dataclass(frozen=True)
class CupedResult:
    """CUPED effects; ``adjusted`` is False when it fell back to the unadjusted estimate."""

    theta: float
    adjusted: bool
    absolute: ABResult
    relative: ABResult
    reason: str | None = None


def cuped_test(
    control: CupedArmStats, treatment: CupedArmStats, *, alpha: float = 0.05
) -> CupedResult:
    """CUPED with θ = Cov(Y,X)/Var(X) over both arms pooled; Welch t on the adjusted means.

    The relative lift divides by the unadjusted control mean, and its delta-method variance
    includes the covariance between that denominator and the adjusted control mean.
    """
    _check_alpha(alpha)
    n = control.n + treatment.n
    problem = next(
        (
            f"the {label} arm has {arm.n} unit(s); at least 2 are needed"
            for label, arm in (("control", control), ("treatment", treatment))
            if arm.n < 2
        ),
        None,
    )
    sum_x = control.sum_x + treatment.sum_x
    sum_y = control.sum_y + treatment.sum_y
    var_x = (control.sum_x_sq + treatment.sum_x_sq - sum_x * sum_x / n) / (n - 1) if n > 1 else 0.0
    cov_xy = (control.sum_xy + treatment.sum_xy - sum_x * sum_y / n) / (n - 1) if n > 1 else 0.0
    fallback = None
    if var_x <= 0:
        theta = 0.0
        fallback = "the pre-period covariate has zero variance; unadjusted estimate used"
    else:
        theta = cov_xy / var_x

    x_centre = sum_x / n if n else 0.0
    moments_a, moments_b = _arm_moments(control), _arm_moments(treatment)
    arms = [_adjusted(m, theta, x_centre) for m in (moments_a, moments_b)]
    if problem is not None:
        control_arm, treatment_arm = arms
        absolute = _not_computable(
            "cuped_welch_t", "absolute", control_arm, treatment_arm, problem, alpha=alpha
        )
        relative = _not_computable(
            "cuped_delta_t", "relative", control_arm, treatment_arm, problem, alpha=alpha
        )
        return CupedResult(theta, fallback is None, absolute, relative, problem)

    absolute = replace(welch_t_test(arms[0], arms[1], alpha=alpha), method="cuped_welch_t")
    relative = _cuped_relative(moments_a, arms[0], arms[1], theta, alpha)
    return CupedResult(theta, fallback is None, absolute, relative, fallback)


@dataclass(frozen=True)
class _ArmMoments:
    n: int
    mean_y: float
    mean_x: float
    var_y: float
    var_x: float
    cov_xy: float


def _arm_moments(arm: CupedArmStats) -> _ArmMoments:
    """Sample means, variances and covariance of one CUPED arm (zeros below 2 units)."""
    n = arm.n
    mean_y = arm.sum_y / n if n else 0.0
    mean_x = arm.sum_x / n if n else 0.0
    if n < 2:
        return _ArmMoments(n, mean_y, mean_x, 0.0, 0.0, 0.0)
    var_y = max(0.0, (arm.sum_y_sq - arm.sum_y**2 / n) / (n - 1))
    var_x = max(0.0, (arm.sum_x_sq - arm.sum_x**2 / n) / (n - 1))
    cov = (arm.sum_xy - arm.sum_x * arm.sum_y / n) / (n - 1)
    return _ArmMoments(n, mean_y, mean_x, var_y, var_x, cov)


def _adjusted(m: _ArmMoments, theta: float, x_centre: float) -> _AdjustedArm:
    """Adjusted mean ȳ − θ(x̄ − x_centre) and variance σ_y² + θ²σ_x² − 2θ·cov.

    Centring on the pooled pre-period mean keeps adjusted means on the metric's own scale;
    the difference between arms is the same as with ȳ − θx̄.
    """
    variance = max(0.0, m.var_y + theta**2 * m.var_x - 2.0 * theta * m.cov_xy)
    return _AdjustedArm(m.n, m.mean_y - theta * (m.mean_x - x_centre), variance)


def _cuped_relative(
    control: _ArmMoments,
    adj_a: _AdjustedArm,
    adj_b: _AdjustedArm,
    theta: float,
    alpha: float,
) -> ABResult:
    """(adj_b − adj_a)/|ȳ_a| by the delta method, ȳ_a being the unadjusted control mean."""
    mean_y_a = control.mean_y
    # Cov(adjusted control mean, unadjusted control mean) per unit: σ_y² − θ·cov.
    cov_adj_y_a = control.var_y - theta * control.cov_xy
    problem = None
    if mean_y_a == 0:
        problem = "the control mean is 0, so a relative lift is undefined"
    elif adj_a.variance <= 0 or adj_b.variance <= 0:
        problem = "an arm has zero adjusted variance, so the delta-method variance is degenerate"
    if problem is not None:
        return _not_computable("cuped_delta_t", "relative", adj_a, adj_b, problem, alpha=alpha)
    diff = adj_b.mean - adj_a.mean
    var = (
        adj_b.variance / (adj_b.n * mean_y_a**2)
        + adj_a.variance / (adj_a.n * mean_y_a**2)
        + diff**2 * control.var_y / (adj_a.n * mean_y_a**4)
        + 2.0 * diff * cov_adj_y_a / (adj_a.n * mean_y_a**3)
    )
    if var <= 0:
        return _not_computable(
            "cuped_delta_t", "relative", adj_a, adj_b, "the delta-method variance is 0", alpha=alpha
        )
    estimate = diff / abs(mean_y_a)
    se = math.sqrt(var)
    df = _welch_df(adj_a, adj_b)
    statistic, p_value, ci = _inference(estimate, se, df, alpha, "two-sided")
    return ABResult(
        method="cuped_delta_t",
        effect="relative",
        n_control=adj_a.n,
        n_treatment=adj_b.n,
        mean_control=adj_a.mean,
        mean_treatment=adj_b.mean,
        estimate=estimate,
        se=se,
        ci=ci,
        p_value=p_value,
        statistic=statistic,
        df=df,
        alpha=alpha,
    )


# ---------------------------------------------------------------------------------------------
# Multiplicity: Holm (family-wise) and Benjamini–Hochberg (false discovery rate)
# ---------------------------------------------------------------------------------------------


def _p_array(p_values: Sequence[float]) -> npt.NDArray[np.float64]:
    import numpy as np

    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must be a flat list of numbers between 0 and 1")
    return p


def holm_adjusted(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm step-down adjusted p-values, in input order (statsmodels' ``holm``)."""
    import numpy as np

    p = _p_array(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return tuple(float(v) for v in adjusted)


def bh_adjusted(p_values: Sequence[float]) -> tuple[float, ...]:
    """Benjamini–Hochberg step-up adjusted p-values, in input order (statsmodels' ``fdr_bh``)."""
    import numpy as np

    p = _p_array(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")[::-1]
    ranks = m - np.arange(m)
    stepped = np.minimum.accumulate(p[order] * m / ranks)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return tuple(float(v) for v in adjusted)


# ---------------------------------------------------------------------------------------------
# Power, sample size and duration for two proportions
# ---------------------------------------------------------------------------------------------


def _check_rate(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")


def sample_size_per_arm(
    baseline: float,
    mde: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    method: Literal["unpooled", "cohen_h"] = "unpooled",
) -> int:
    """Units per arm for a two-sided test to detect baseline → baseline + mde (or × (1 + mde)).

    "unpooled": (z_{1−α/2} + z_{power})²(p₁q₁ + p₂q₂)/δ²; "cohen_h": statsmodels'
    NormalIndPower on Cohen's h, both tails counted. Raises ValueError on impossible rates.
    """
    _check_rate("baseline", baseline)
    _check_rate("alpha", alpha)
    _check_rate("power", power)
    target = baseline * (1.0 + mde) if relative else baseline + mde
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"baseline {baseline} with effect {mde} gives a rate of {target}")
    if target == baseline:
        raise ValueError("the minimum detectable effect must not be zero")
    z_sum = _ppf(1.0 - alpha / 2.0, None) + _ppf(power, None)
    if method == "unpooled":
        variance = baseline * (1.0 - baseline) + target * (1.0 - target)
        n = z_sum**2 * variance / (target - baseline) ** 2
    else:
        h = abs(2.0 * math.asin(math.sqrt(target)) - 2.0 * math.asin(math.sqrt(baseline)))
        z_alpha = _ppf(1.0 - alpha / 2.0, None)

        def power_gap(n_arm: float) -> float:
            shift = h * math.sqrt(n_arm / 2.0)
            return _sf(z_alpha - shift, None) + _sf(z_alpha + shift, None) - power

        from scipy import optimize

        one_tail = 2.0 * (z_sum / h) ** 2
        n = float(optimize.brentq(power_gap, one_tail * 0.5, one_tail, xtol=1e-10, rtol=1e-14))
    # Round away float noise before the ceiling so 14748.9999999 and 14749.0 agree.
    return math.ceil(round(n, 6))


def _check_traffic(daily_units: float, traffic_shares: Sequence[float]) -> float:
    """Smallest arm's daily share of units; raises ValueError on an impossible split."""
    if not daily_units > 0:
        raise ValueError(f"daily traffic must be positive, got {daily_units}")
    shares = list(traffic_shares)
    if len(shares) < 2:
        raise ValueError("give a traffic share for each arm (at least two)")
    if any(not 0.0 < s <= 1.0 for s in shares) or sum(shares) > 1.0 + 1e-9:
        raise ValueError(f"traffic shares must be in (0, 1] and sum to at most 1, got {shares}")
    return min(shares)


def ab_duration_days(n_per_arm: int, daily_units: float, traffic_shares: Sequence[float]) -> int:
    """Whole days until the smallest arm reaches n_per_arm units, at daily_units × share per arm."""
    if n_per_arm < 0:
        raise ValueError(f"n_per_arm cannot be negative, got {n_per_arm}")
    smallest = _check_traffic(daily_units, traffic_shares)
    return math.ceil(round(n_per_arm / (daily_units * smallest), 9))


def planned_total(n_per_arm: int, traffic_shares: Sequence[float]) -> int:
    """Units in all arms when the smallest holds n_per_arm: the N* of the confidence sequence."""
    return math.ceil(round(n_per_arm * sum(traffic_shares) / min(traffic_shares), 6))


def mde_for_duration(
    baseline: float,
    days: float,
    daily_units: float,
    traffic_shares: Sequence[float],
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Smallest upward effect the unpooled two-sided test detects in ``days``; inf if none can.

    Solves n·δ² = Z(p₁q₁ + p₂q₂) for δ with p₂ = p₁ + δ, n the smallest arm's units.
    """
    _check_rate("baseline", baseline)
    _check_rate("alpha", alpha)
    _check_rate("power", power)
    if days < 0:
        raise ValueError(f"days cannot be negative, got {days}")
    n = math.floor(round(days * daily_units * _check_traffic(daily_units, traffic_shares), 9))
    if n == 0:
        return math.inf
    z2 = (_ppf(1.0 - alpha / 2.0, None) + _ppf(power, None)) ** 2
    p, q = baseline, 1.0 - baseline
    # (n + Z)δ² − Z(1 − 2p)δ − 2Zpq = 0, positive root.
    a, b, c = n + z2, -z2 * (1.0 - 2.0 * p), -2.0 * z2 * p * q
    delta = (-b + math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
    if delta > q:
        return math.inf
    return delta / baseline if relative else delta


@dataclass(frozen=True)
class ABTestPlan:
    """Sample and duration a planned A/B test needs, and whether it fits the retraining cadence."""

    n_per_arm: int
    days: int
    cadence_days: int
    fits_cadence: bool


def plan_ab_test(
    baseline: float,
    mde: float,
    *,
    daily_units: float,
    traffic_shares: Sequence[float],
    cadence_days: int,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    method: Literal["unpooled", "cohen_h"] = "unpooled",
) -> ABTestPlan:
    """Sample per arm and days to collect it, checked against the retraining cadence."""
    n = sample_size_per_arm(
        baseline, mde, relative=relative, alpha=alpha, power=power, method=method
    )
    days = ab_duration_days(n, daily_units, traffic_shares)
    return ABTestPlan(n, days, cadence_days, days <= cadence_days)


# ---------------------------------------------------------------------------------------------
# Eval gates: paired comparisons of candidate and baseline on the same items
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test; n01 = items only the candidate got right, n10 = only the baseline."""

    n01: int
    n10: int
    p_value: float


def mcnemar_exact(n01: int, n10: int) -> McNemarResult:
    """p = min(1, 2·BinomCDF(min(n01, n10); n01 + n10, ½)); p = 1 with no discordant pairs."""
    if n01 < 0 or n10 < 0:
        raise ValueError("discordant-pair counts cannot be negative")
    discordant = n01 + n10
    if discordant == 0:
        return McNemarResult(n01, n10, 1.0)
    from scipy import stats

    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(n01, n10), discordant, 0.5)))
    return McNemarResult(n01, n10, p_value)


def _paired(candidate: npt.ArrayLike, baseline: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-item differences candidate − baseline; raises ValueError if items do not line up."""
    import numpy as np

    c = np.asarray(candidate, dtype=np.float64).ravel()
    b = np.asarray(baseline, dtype=np.float64).ravel()
    if c.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {c.size} vs {b.size} scores")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(b))):
        raise ValueError("scores must be finite numbers")
    return c - b


@dataclass(frozen=True)
class PairedTestResult:
    """Paired t-test on per-item differences candidate − baseline."""

    n: int
    mean_diff: float | None
    se: float | None
    ci: tuple[float, float] | None
    statistic: float | None
    p_value: float | None
    df: int
    reason: str | None = None

    @property
    def computable(self) -> bool:
        """True when the numbers are there; otherwise ``reason`` says why not."""
        return self.reason is None


def paired_t_test(
    candidate: npt.ArrayLike,
    baseline: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> PairedTestResult:
    """Paired t-test of candidate against baseline scores on the same items."""
    _check_alpha(alpha)
    d = _paired(candidate, baseline)
    n = int(d.size)
    if n < 2:
        return PairedTestResult(
            n, None, None, None, None, None, max(n - 1, 0), "fewer than 2 items"
        )
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0:
        reason = "every item has the same score difference, so there is no variance to test"
        return PairedTestResult(n, mean, None, None, None, None, n - 1, reason)
    se = sd / math.sqrt(n)
    statistic, p_value, ci = _inference(mean, se, n - 1, alpha, alternative)
    return PairedTestResult(n, mean, se, ci, statistic, p_value, n - 1)


def item_means(samples_per_item: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """One score per item: the mean of that item's samples (raises ValueError on an empty item)."""
    import numpy as np

    if any(len(samples) == 0 for samples in samples_per_item):
        raise ValueError("every item needs at least one scored sample")
    return np.array([float(np.mean(samples)) for samples in samples_per_item], dtype=np.float64)


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of the mean difference: percentile CI and the bootstrap SE."""

    n: int
    mean_diff: float
    ci: tuple[float, float]
    se: float
    n_resamples: int


def paired_bootstrap(
    candidate: npt.ArrayLike,
    baseline: npt.ArrayLike,
    *,
    n_resamples: int = 10_000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
) -> BootstrapResult:
    """Percentile CI for mean(candidate − baseline), resampling items jointly with a seeded RNG.

    Draws indices as scipy.stats.bootstrap(paired=True) does, so equal seeds give equal CIs.
    """
    import numpy as np

    _check_alpha(alpha)
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    d = _paired(candidate, baseline)
    n = int(d.size)
    if n < 2:
        raise ValueError("a bootstrap needs at least 2 items")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        index = rng.integers(0, n, size=(size, n))
        means[start : start + size] = d[index].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    se = float(means.std(ddof=1)) if n_resamples > 1 else 0.0
    return BootstrapResult(n, float(d.mean()), (float(low), float(high)), se, n_resamples)


def paired_bootstrap_per_item(
    candidate_samples: Sequence[Sequence[float]],
    baseline_samples: Sequence[Sequence[float]],
    *,
    n_resamples: int = 10_000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
) -> BootstrapResult:
    """Paired bootstrap when items carry several samples each: averaged within item first."""
    return paired_bootstrap(
        item_means(candidate_samples),
        item_means(baseline_samples),
        n_resamples=n_resamples,
        alpha=alpha,
        seed=seed,
    )


@dataclass(frozen=True)
class WilsonInterval:
    """A pass rate with its Wilson score interval; small_sample_warning when n < 300."""

    successes: int
    n: int
    rate: float
    ci: tuple[float, float]
    small_sample_warning: bool


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> WilsonInterval:
    """Wilson score interval for successes/n; raises ValueError when n ≤ 0 or counts are off."""
    _check_alpha(alpha)
    if n <= 0:
        raise ValueError("a pass rate needs at least one scored item")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    z = _ppf(1.0 - alpha / 2.0, None)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    ci = (max(0.0, centre - half), min(1.0, centre + half))
    return WilsonInterval(successes, n, p, ci, n < WILSON_SMALL_SAMPLE)


@dataclass(frozen=True)
class NonInferiorityResult:
    """Test that student ≥ ratio × teacher, one-sided; Fieller bounds on student/teacher."""

    margin_ratio: float
    n_student: int
    n_teacher: int
    ratio_estimate: float | None
    estimate: float | None
    se: float | None
    statistic: float | None
    p_value: float | None
    df: float | None
    ratio_bounds: tuple[float, float] | None
    alpha: float
    reason: str | None = None

    @property
    def computable(self) -> bool:
        """True when the test statistic is there; otherwise ``reason`` says why not."""
        return self.reason is None

    @property
    def non_inferior(self) -> bool:
        """True when the one-sided p-value is below alpha."""
        return self.p_value is not None and self.p_value < self.alpha


def _fieller(
    mean_s: float, mean_t: float, var_s: float, var_t: float, cov_st: float, q: float
) -> tuple[float, float] | None:
    """Fieller's bounds on mean_s/mean_t at critical value q (variances are of the means).

    None when the teacher mean is not clearly away from 0, which makes the set unbounded.
    """
    a = mean_t**2 - q * q * var_t
    if mean_t <= 0 or a <= 0:
        return None
    b = mean_s * mean_t - q * q * cov_st
    c = mean_s**2 - q * q * var_s
    root = math.sqrt(max(0.0, b * b - a * c))
    return (b - root) / a, (b + root) / a


def non_inferiority_paired(
    student: npt.ArrayLike,
    teacher: npt.ArrayLike,
    *,
    ratio: float = 0.95,
    alpha: float = 0.05,
) -> NonInferiorityResult:
    """Paired one-sided t-test on d_i = s_i − r₀·t_i, with Fieller's bounds at one-sided alpha."""
    import numpy as np

    _check_alpha(alpha)
    s = np.asarray(student, dtype=np.float64).ravel()
    t = np.asarray(teacher, dtype=np.float64).ravel()
    d = _paired(s, ratio * t)
    n = int(d.size)
    mean_t = float(t.mean()) if n else 0.0
    ratio_estimate = float(s.mean()) / mean_t if n and mean_t != 0 else None

    def _fail(reason: str) -> NonInferiorityResult:
        return NonInferiorityResult(
            ratio, n, n, ratio_estimate, None, None, None, None, None, None, alpha, reason
        )

    if n < 2:
        return _fail("fewer than 2 items")
    sd = float(d.std(ddof=1))
    if sd == 0:
        return _fail("every item has the same margin difference, so there is no variance")
    estimate = float(d.mean())
    se = sd / math.sqrt(n)
    statistic, p_value, _ = _inference(estimate, se, n - 1, alpha, "greater")
    covariance = np.cov(s, t, ddof=1)
    q = _ppf(1.0 - alpha, n - 1)
    bounds = _fieller(
        float(s.mean()),
        mean_t,
        float(covariance[0, 0]) / n,
        float(covariance[1, 1]) / n,
        float(covariance[0, 1]) / n,
        q,
    )
    return NonInferiorityResult(
        ratio, n, n, ratio_estimate, estimate, se, statistic, p_value, n - 1, bounds, alpha
    )


def non_inferiority_unpaired(
    student: ArmSummary,
    teacher: ArmSummary,
    *,
    ratio: float = 0.95,
    alpha: float = 0.05,
) -> NonInferiorityResult:
    """One-sided z = (μ_S − r₀μ_T)/√(v_S/n_S + r₀²v_T/n_T), with Fieller's bounds (normal)."""
    _check_alpha(alpha)
    problem = _arms_problem(student, teacher)
    ratio_estimate = None
    if problem is None and teacher.mean != 0:
        ratio_estimate = student.mean / teacher.mean
    if problem is None:
        var_s = student.variance / student.n
        var_t = teacher.variance / teacher.n
        se = math.sqrt(var_s + ratio**2 * var_t)
        if se == 0:
            problem = "both groups have zero variance"
    if problem is not None:
        return NonInferiorityResult(
            ratio,
            student.n,
            teacher.n,
            ratio_estimate,
            None,
            None,
            None,
            None,
            None,
            None,
            alpha,
            problem,
        )
    estimate = student.mean - ratio * teacher.mean
    statistic, p_value, _ = _inference(estimate, se, None, alpha, "greater")
    q = _ppf(1.0 - alpha, None)
    bounds = _fieller(student.mean, teacher.mean, var_s, var_t, 0.0, q)
    return NonInferiorityResult(
        ratio,
        student.n,
        teacher.n,
        ratio_estimate,
        estimate,
        se,
        statistic,
        p_value,
        None,
        bounds,
        alpha,
    )


@dataclass(frozen=True)
class GateVerdict:
    """One gate's outcome with the evidence a reviewer reads."""

    gate: str
    verdict: Literal["pass", "fail", "insufficient_data"]
    evidence: tuple[str, ...]


def gate_verdict(
    gate: str,
    *,
    interval: tuple[float, float] | None,
    threshold: float,
    n_items: int,
    min_items: int = 30,
    higher_is_better: bool = True,
    evidence: Sequence[str] = (),
) -> GateVerdict:
    """Pass if the interval clears the threshold, fail if it lies wholly on the wrong side.

    Anything else (too few items, no interval, an interval straddling the threshold) is
    insufficient data: more items would decide it.
    """
    notes = [*evidence, f"{n_items} items (minimum {min_items})"]
    if n_items < min_items:
        return GateVerdict(gate, "insufficient_data", (*notes, "too few items to decide"))
    if interval is None:
        return GateVerdict(gate, "insufficient_data", (*notes, "no interval could be computed"))
    low, high = interval
    notes.append(f"interval ({low:.4g}, {high:.4g}) against threshold {threshold:.4g}")
    clears = low > threshold if higher_is_better else high < threshold
    misses = high < threshold if higher_is_better else low > threshold
    if clears:
        return GateVerdict(gate, "pass", tuple(notes))
    if misses:
        return GateVerdict(gate, "fail", tuple(notes))
    return GateVerdict(gate, "insufficient_data", (*notes, "interval straddles the threshold"))


def non_inferiority_gate(
    student: npt.ArrayLike,
    teacher: npt.ArrayLike,
    *,
    ratio: float = 0.95,
    alpha: float = 0.05,
    min_items: int = 30,
    gate: str = "non-inferiority",
) -> GateVerdict:
    """Gate "student keeps ≥ ratio of teacher quality" on paired scores, via Fieller's bounds."""
    result = non_inferiority_paired(student, teacher, ratio=ratio, alpha=alpha)
    evidence = [f"student/teacher ratio {significant(result.ratio_estimate)} (margin {ratio:g})"]
    if result.p_value is not None:
        evidence.append(f"one-sided paired t p = {format_p_value(result.p_value)}")
    if result.reason is not None:
        evidence.append(result.reason)
    return gate_verdict(
        gate,
        interval=result.ratio_bounds,
        threshold=ratio,
        n_items=result.n_student,
        min_items=min_items,
        evidence=evidence,
    )


def regressed_slices(
    one_sided_p_values: Mapping[str, float], *, alpha: float = 0.05
) -> tuple[str, ...]:
    """Slices whose regression p-value survives Holm's correction across all slices."""
    names = list(one_sided_p_values)
    adjusted = holm_adjusted([one_sided_p_values[name] for name in names])
    return tuple(name for name, p in zip(names, adjusted, strict=True) if p < alpha)


def _fmt_interval(ci: tuple[float, float] | None) -> str:
    return NOT_AVAILABLE if ci is None else f"({significant(ci[0])}, {significant(ci[1])})"


# ---------------------------------------------------------------------------------------------
# Decisions: what to do with a running A/B test
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABDecision:
    """Ship, keep running (with days left), stop, roll back or distrust, and why."""

    verdict: Literal["ship", "keep_running", "stop_no_effect", "roll_back", "invalid_srm"]
    reasons: tuple[str, ...]
    days_remaining: int | None = None


def ab_decision(
    primary: ABResult,
    guardrails: Sequence[GuardrailResult],
    srm: SRMResult,
    *,
    planned_n_per_arm: int,
    daily_units: float,
    traffic_shares: Sequence[float],
    higher_is_better: bool = True,
    min_effect: float | None = None,
) -> ABDecision:
    """Decide an A/B test from its primary metric, guardrails and SRM check.

    A fixed-horizon primary is read only at the planned sample; a sequential one at any
    look. With ``min_effect``, a sequential interval inside (−min_effect, min_effect) stops
    the test early for lack of a worthwhile effect.
    """
    if srm.mismatch:
        return ABDecision(
            "invalid_srm",
            (
                f"sample ratio mismatch: p = {format_p_value(srm.p_value)} < {srm.threshold:g}; "
                "assignment or logging is broken, so no metric can be trusted",
            ),
        )
    notes: list[str] = []
    if srm.status == "not_judged":
        notes.append(f"sample ratio not judged yet: {srm.reason}")
    breached = [g for g in guardrails if g.breached]
    if breached:
        return ABDecision(
            "roll_back",
            tuple(
                f"guardrail '{g.name}' moved the harmful way ({g.harmful_direction}): "
                f"p = {format_p_value(g.result.p_value)}, interval {_fmt_interval(g.result.ci)}"
                for g in breached
            )
            + tuple(notes),
        )
    if guardrails:
        notes.append(f"{len(guardrails)} guardrail(s) show no significant harm")

    reached = min(primary.n_control, primary.n_treatment) >= planned_n_per_arm
    if not reached:
        remaining = planned_n_per_arm - min(primary.n_control, primary.n_treatment)
        days = ab_duration_days(remaining, daily_units, traffic_shares)
    else:
        days = 0

    def keep_running(reason: str) -> ABDecision:
        return ABDecision("keep_running", (reason, *notes), days)

    if primary.reason is not None:
        if reached:
            return ABDecision("stop_no_effect", (f"primary metric: {primary.reason}", *notes))
        return keep_running(f"primary metric not computable yet: {primary.reason}")
    if not primary.always_valid and not reached:
        return keep_running(
            "fixed-horizon test: read it only at the planned sample, peeking inflates "
            f"false positives ({days} day(s) to go)"
        )
    if primary.estimate is None or primary.ci is None:  # unreachable: reason is None
        return keep_running("primary metric has no estimate")
    summary = (
        f"primary {primary.effect} effect {primary.estimate:.4g}, "
        f"interval ({primary.ci[0]:.4g}, {primary.ci[1]:.4g}), "
        f"p = {format_p_value(primary.p_value)}"
    )
    if primary.significant:
        improved = (primary.estimate > 0) == higher_is_better
        if improved:
            return ABDecision("ship", (summary + ": a significant improvement", *notes))
        return ABDecision("roll_back", (summary + ": the primary metric got worse", *notes))
    if (
        min_effect is not None
        and primary.always_valid
        and -min_effect < primary.ci[0]
        and primary.ci[1] < min_effect
    ):
        return ABDecision(
            "stop_no_effect",
            (summary + f": rules out effects of ±{min_effect:g} or more", *notes),
        )
    if reached:
        return ABDecision(
            "stop_no_effect", (summary + ": no significant effect at the planned sample", *notes)
        )
    return keep_running(summary + f": not significant yet, {days} day(s) to the planned sample")


# ---------------------------------------------------------------------------------------------
# Quantiles (a p95 guardrail) and how p-values are written
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantileArmStats:
    """One arm's sample quantile with the order statistics that bound it: ``lower`` = x_(l)
    and ``upper`` = x_(u) of ``quantile_ranks``, which cover the true quantile with
    probability ``coverage`` exactly (distribution-free)."""

    n: int
    q: float
    quantile: float
    lower: float
    upper: float
    coverage: float

    @property
    def se(self) -> float:
        """Price–Bonett standard error: the order-statistic interval's width over twice the
        normal quantile of its exact coverage."""
        z = NormalDist().inv_cdf((1.0 + self.coverage) / 2.0)
        return (self.upper - self.lower) / (2.0 * z)


def quantile_ranks(n: int, q: float, *, alpha: float = 0.05) -> tuple[int, int, float] | None:
    """The 1-based ranks (l, u) of the order statistics that bound the q-quantile of n values
    with at least 1 − alpha coverage (those of scipy's ``quantile_test(...).confidence_interval``),
    and their exact coverage P(l ≤ B < u), B ~ Binomial(n, q); None when n is too small for
    both ranks to exist (a p95 needs about 60 values)."""
    from scipy.stats import binom

    _check_alpha(alpha)
    if n < 2 or not 0.0 < q < 1.0:
        return None
    low = int(binom.ppf(alpha / 2.0, n, q))
    high = int(binom.ppf(1.0 - alpha / 2.0, n, q)) + 1
    if low < 1 or high > n:
        return None
    coverage = float(binom.cdf(high - 1, n, q) - binom.cdf(low - 1, n, q))
    return low, high, coverage


def quantile_arm_from_values(
    values: npt.ArrayLike, *, q: float = 0.95, alpha: float = 0.05
) -> QuantileArmStats | None:
    """``QuantileArmStats`` of raw values (the quantile interpolated as DuckDB's
    ``quantile_cont`` does); None when there are too few values."""
    import numpy as np

    x = np.sort(np.asarray(values, dtype=float))
    ranks = quantile_ranks(int(x.size), q, alpha=alpha)
    if ranks is None:
        return None
    low, high, coverage = ranks
    return QuantileArmStats(
        int(x.size), q, float(np.quantile(x, q)), float(x[low - 1]), float(x[high - 1]), coverage
    )


def quantile_difference(
    control: QuantileArmStats,
    treatment: QuantileArmStats,
    *,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    ratio: float = 1.0,
) -> ABResult:
    """The relative change of a quantile (treatment / control − 1), e.g. of p95 latency.

    Each arm's standard error is Price–Bonett's (``QuantileArmStats.se``); the test of
    H0: Q_t = ratio · Q_c uses z = (Q_t − ratio·Q_c) / √(se_t² + ratio²·se_c²), so a guardrail
    with tolerance τ tests ratio = 1 + τ. The interval on the relative change is the delta
    method's: Var = se_t²/Q_c² + Q_t²·se_c²/Q_c⁴, two-sided or one-sided as ``alternative``.
    """
    _check_alpha(alpha)
    method = f"quantile difference (q = {control.q:g}, Price–Bonett)"

    def not_computable(reason: str) -> ABResult:
        return ABResult(
            method, "relative", control.n, treatment.n, control.quantile, treatment.quantile,
            None, None, None, None, None, None, alpha, alternative, reason=reason,
        )  # fmt: skip

    if control.quantile <= 0:
        return not_computable("the control arm's quantile is not positive")
    qc, qt = control.quantile, treatment.quantile
    se_c, se_t = control.se, treatment.se
    spread = math.sqrt(se_t**2 + ratio**2 * se_c**2)
    if spread <= 0:
        return not_computable("both arms' order statistics are tied: no spread to test on")
    z = (qt - ratio * qc) / spread
    normal = NormalDist()
    if alternative == "two-sided":
        p = 2.0 * (1.0 - normal.cdf(abs(z)))
    elif alternative == "greater":
        p = 1.0 - normal.cdf(z)
    else:
        p = normal.cdf(z)
    estimate = qt / qc - 1.0
    se = math.sqrt(se_t**2 / qc**2 + qt**2 * se_c**2 / qc**4)
    if alternative == "two-sided":
        half = normal.inv_cdf(1.0 - alpha / 2.0) * se
        ci = (estimate - half, estimate + half)
    elif alternative == "greater":
        ci = (estimate - normal.inv_cdf(1.0 - alpha) * se, math.inf)
    else:
        ci = (-math.inf, estimate + normal.inv_cdf(1.0 - alpha) * se)
    return ABResult(
        method, "relative", control.n, treatment.n, qc, qt, estimate, se, ci,
        min(1.0, max(0.0, p)), z, None, alpha, alternative,
    )  # fmt: skip


def format_p_value(p: float | None) -> str:
    """A p-value as people read it: "< 0.0001" below 1e-4 (never "0" or "8.13e-310"), else
    up to two significant figures ("0.021", "0.0005"); "—" when there is none."""
    if p is None or math.isnan(p):
        return "—"
    if p < 1e-4:
        return "< 0.0001"
    if p >= 0.9995:
        return "1"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}".rstrip("0").rstrip(".")
