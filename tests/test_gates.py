"""Gates on constructed results with known verdicts: pass, fail and insufficient data for each
comparator, slices with Holm across them, and the overall verdict."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from core.gates import GateInputs, GateResult, Usage, evaluate_gate, overall_verdict
from core.plan import Gate, Plan
from core.starters import starter_plan
from core.stats import format_p_value


@pytest.fixture
def plan() -> Plan:
    return starter_plan("python_coding_assistant")


def _binary(n: int, passed: int, prefix: str = "i") -> dict[str, float]:
    return {f"{prefix}{k:03d}": float(k < passed) for k in range(n)}


ABSOLUTE = Gate(
    name="Parses", metric="parse_rate", eval_set="s", comparator="absolute", threshold=0.9
)


@pytest.mark.parametrize(
    ("n", "passed", "verdict"),
    [
        (200, 196, "pass"),
        (200, 150, "fail"),
        (200, 181, "insufficient_data"),
        (10, 10, "insufficient_data"),
    ],
)
def test_absolute_gate_on_a_pass_rate(plan: Plan, n: int, passed: int, verdict: str) -> None:
    result = evaluate_gate(ABSOLUTE, plan, GateInputs(candidate=_binary(n, passed)))
    assert result.verdict == verdict
    assert result.value == pytest.approx(passed / n)
    assert result.threshold == 0.9
    if n >= 30:
        low, high = proportion_confint(passed, n, alpha=0.05, method="wilson")
        assert f"({low:.4g}, {high:.4g})" in " ".join(result.evidence)


NO_REGRESSION = Gate(
    name="No regression",
    metric="tests_pass_rate",
    eval_set="s",
    comparator="no_regression",
    margin=0.02,
    slices=["topic"],
)


def _paired_binary(
    n: int, wins: int, losses: int, both: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Candidate and production pass/fail: ``wins`` only the candidate passes, ``losses`` only
    production, ``both`` both, the rest neither."""
    cand: dict[str, float] = {}
    prod: dict[str, float] = {}
    for k in range(n):
        key = f"i{k:03d}"
        if k < wins:
            cand[key], prod[key] = 1.0, 0.0
        elif k < wins + losses:
            cand[key], prod[key] = 0.0, 1.0
        elif k < wins + losses + both:
            cand[key], prod[key] = 1.0, 1.0
        else:
            cand[key], prod[key] = 0.0, 0.0
    return cand, prod


def test_no_regression_passes_when_the_candidate_is_clearly_not_worse(plan: Plan) -> None:
    cand, prod = _paired_binary(300, wins=30, losses=2, both=200)
    result = evaluate_gate(
        NO_REGRESSION.model_copy(update={"slices": []}), plan, GateInputs(cand, prod)
    )
    assert result.verdict == "pass"
    assert result.value == pytest.approx(28 / 300)
    assert result.threshold == -0.02
    p = sps.binomtest(2, 32, 0.5).pvalue  # McNemar exact = two-sided binomial on discordant pairs
    assert f"p = {format_p_value(p)}" in " ".join(result.evidence)


def test_no_regression_fails_on_a_significant_drop_beyond_the_margin(plan: Plan) -> None:
    cand, prod = _paired_binary(300, wins=3, losses=40, both=150)
    result = evaluate_gate(
        NO_REGRESSION.model_copy(update={"slices": []}), plan, GateInputs(cand, prod)
    )
    assert result.verdict == "fail"


def test_no_regression_with_too_few_items_or_no_production_is_insufficient(plan: Plan) -> None:
    cand, prod = _paired_binary(12, wins=1, losses=0, both=10)
    gate = NO_REGRESSION.model_copy(update={"slices": []})
    assert evaluate_gate(gate, plan, GateInputs(cand, prod)).verdict == "insufficient_data"
    missing = evaluate_gate(gate, plan, GateInputs(cand, None))
    assert missing.verdict == "insufficient_data"
    assert any("production" in e for e in missing.evidence)
    even = _paired_binary(200, wins=10, losses=10, both=150)
    assert evaluate_gate(gate, plan, GateInputs(*even)).verdict == "insufficient_data"


def test_a_regressed_slice_fails_the_gate_after_holm(plan: Plan) -> None:
    """Overall the candidate is better, but on one topic it loses 16 of 30 items."""
    topics = ["async", "files", "strings", "tests"]
    cand: dict[str, float] = {}
    prod: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    for t_index, topic in enumerate(topics):
        for k in range(60):
            key = f"{topic}-{k:02d}"
            labels[key] = {"topic": topic}
            if topic == "async":
                cand[key], prod[key] = (
                    (0.0, 1.0) if k < 16 else (1.0, 1.0) if k < 50 else (0.0, 0.0)
                )
            else:
                cand[key], prod[key] = (
                    (1.0, 0.0) if k < 12 + t_index else (1.0, 1.0) if k < 50 else (0.0, 0.0)
                )
    result = evaluate_gate(NO_REGRESSION, plan, GateInputs(cand, prod, labels=labels))
    assert result.verdict == "fail"
    short = [s for s in result.slices if s.short]
    assert [s.value for s in short] == ["async"]
    # One-sided exact McNemar per slice, then Holm across the slices (statsmodels).
    raw = []
    for s in result.slices:
        ids = [k for k in cand if labels[k]["topic"] == s.value]
        wins = sum(1 for k in ids if cand[k] == 1 and prod[k] == 0)
        losses = sum(1 for k in ids if cand[k] == 0 and prod[k] == 1)
        raw.append(sps.binomtest(wins, wins + losses, 0.5, alternative="less").pvalue)
        assert s.p_value == pytest.approx(raw[-1], rel=1e-9)
    expected = multipletests(raw, method="holm")[1]
    assert [s.p_holm for s in result.slices] == pytest.approx(list(expected), rel=1e-9)
    without_slices = evaluate_gate(
        NO_REGRESSION.model_copy(update={"slices": []}), plan, GateInputs(cand, prod, labels=labels)
    )
    assert without_slices.verdict == "pass"


def test_no_regression_on_continuous_scores_uses_the_paired_bootstrap(plan: Plan) -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.9, 200)
    cand = {f"i{k}": float(min(1, v + 0.05 + rng.normal(0, 0.02))) for k, v in enumerate(base)}
    prod = {f"i{k}": float(v) for k, v in enumerate(base)}
    gate = NO_REGRESSION.model_copy(update={"slices": []})
    result = evaluate_gate(gate, plan, GateInputs(cand, prod))
    assert result.verdict == "pass"
    assert any("bootstrap" in e for e in result.evidence)
    worse = {k: max(0.0, v - 0.2) for k, v in prod.items()}
    assert evaluate_gate(gate, plan, GateInputs(worse, prod)).verdict == "fail"


NON_INFERIORITY = Gate(
    name="Keeps 95%", metric="judge_score", eval_set="s", comparator="non_inferiority", ratio=0.95
)


@pytest.mark.parametrize(
    ("factor", "n", "verdict"),
    [(1.0, 200, "pass"), (0.8, 200, "fail"), (1.0, 8, "insufficient_data")],
)
def test_non_inferiority_against_the_teacher(
    plan: Plan, factor: float, n: int, verdict: str
) -> None:
    rng = np.random.default_rng(2)
    teacher = rng.uniform(0.6, 1.0, n)
    student = np.clip(teacher * factor + rng.normal(0, 0.03, n), 0, 1)
    result = evaluate_gate(
        NON_INFERIORITY,
        plan,
        GateInputs(
            {f"i{k}": float(v) for k, v in enumerate(student)},
            teacher={f"i{k}": float(v) for k, v in enumerate(teacher)},
        ),
    )
    assert result.verdict == verdict
    assert result.threshold == 0.95
    assert result.value == pytest.approx(student.mean() / teacher.mean())


COST = Gate(name="Cost", metric="cost_per_1k", comparator="cost", threshold=0.2, blocking=False)


def test_cost_gate_compares_cost_per_1k_requests_at_plan_prices(plan: Plan) -> None:
    econ = plan.economics
    student = Usage(100, 800.0, 350.0, None, 0)
    teacher = Usage(100, 800.0, 350.0, None, 0)
    result = evaluate_gate(
        COST, plan, GateInputs({}, candidate_usage=student, teacher_usage=teacher)
    )
    expected = (800 * econ.student_input_per_1m + 350 * econ.student_output_per_1m) / (
        800 * econ.teacher_input_per_1m + 350 * econ.teacher_output_per_1m
    )
    assert result.verdict == "pass" and result.value == pytest.approx(expected)
    verbose = Usage(100, 800.0, 350.0 * 30, None, 0)
    assert (
        evaluate_gate(
            COST, plan, GateInputs({}, candidate_usage=verbose, teacher_usage=teacher)
        ).verdict
        == "fail"
    )
    assert evaluate_gate(COST, plan, GateInputs({})).verdict == "insufficient_data"
    default = COST.model_copy(update={"threshold": None})
    assert evaluate_gate(
        default, plan, GateInputs({}, candidate_usage=student)
    ).threshold == pytest.approx(1 / plan.goal.target_cost_reduction)


def test_latency_gate(plan: Plan) -> None:
    gate = Gate(name="Latency", metric="latency_p95_ms", comparator="latency", threshold=1.2)
    fast = Usage(100, None, None, 900.0, 100)
    slow = Usage(100, None, None, 1500.0, 100)
    reference = Usage(100, None, None, 1000.0, 100)
    assert (
        evaluate_gate(
            gate, plan, GateInputs({}, candidate_usage=fast, production_usage=reference)
        ).verdict
        == "pass"
    )
    assert (
        evaluate_gate(
            gate, plan, GateInputs({}, candidate_usage=slow, production_usage=reference)
        ).verdict
        == "fail"
    )
    assert (
        evaluate_gate(gate, plan, GateInputs({}, candidate_usage=fast)).verdict
        == "insufficient_data"
    )


def _result(verdict: str, blocking: bool = True) -> GateResult:
    return GateResult("g", "absolute", "m", "s", blocking, verdict, None, None, [])  # type: ignore[arg-type]


def test_overall_verdict_needs_every_blocking_gate_to_pass() -> None:
    assert overall_verdict([_result("pass"), _result("fail", blocking=False)]) == "pass"
    assert overall_verdict([_result("pass"), _result("fail")]) == "fail"
    assert overall_verdict([_result("pass"), _result("insufficient_data")]) == "insufficient_data"
    assert overall_verdict([_result("fail"), _result("insufficient_data")]) == "fail"
    assert overall_verdict([]) == "insufficient_data"


# -- every verdict explains itself in one plain sentence -------------------------------------


def _pts(x: float) -> str:
    return f"{abs(x) * 100:.1f}".removesuffix(".0")


def _one_sentence(text: str) -> str:
    assert text.endswith(".") and text.count(". ") == 0 and "\n" not in text, text
    assert "_" not in text.split(":")[0], text  # no snake_case verdict
    return text


def test_no_regression_explanations_quote_the_interval_against_the_margin(plan: Plan) -> None:
    gate = NO_REGRESSION.model_copy(update={"slices": []})
    passed = evaluate_gate(gate, plan, GateInputs(*_paired_binary(300, 30, 2, 200)))
    low = passed.interval[0] if passed.interval else None
    assert low is not None and passed.explanation == _one_sentence(
        "passes: the candidate scores at least as well as production "
        f"({_pts(low)} points better at worst), within the 2-point margin."
        if low >= 0
        else f"passes: at worst the candidate is {_pts(low)} points worse than "
        "production, within the 2-point margin."
    )
    failed = evaluate_gate(gate, plan, GateInputs(*_paired_binary(300, 3, 40, 150)))
    assert failed.verdict == "fail" and failed.interval is not None
    high = failed.interval[1]
    assert high < -0.02
    assert failed.explanation == (
        f"fails: the candidate is at least {_pts(high)} points worse than production, "
        "more than the 2-point margin allows."
    )
    even = evaluate_gate(gate, plan, GateInputs(*_paired_binary(200, 10, 10, 150)))
    assert even.verdict == "insufficient_data"
    assert _one_sentence(even.explanation).startswith("undecided: the candidate may be anywhere")
    assert "2-point margin lies inside that range" in even.explanation
    few = evaluate_gate(gate, plan, GateInputs(*_paired_binary(12, 1, 0, 10)))
    assert few.explanation == "undecided: only 12 paired items, fewer than the 30 needed to decide."
    missing = evaluate_gate(gate, plan, GateInputs(_binary(50, 45), None))
    assert missing.explanation == (
        "undecided: there are no production scores on the same eval set version to compare with."
    )


def test_a_slice_failure_names_the_slice_and_holm(plan: Plan) -> None:
    topics = ["async", "files", "strings", "tests"]
    cand: dict[str, float] = {}
    prod: dict[str, float] = {}
    labels: dict[str, dict[str, str]] = {}
    for t_index, topic in enumerate(topics):
        for k in range(60):
            key = f"{topic}-{k:02d}"
            labels[key] = {"topic": topic}
            if topic == "async":
                cand[key], prod[key] = (0.0, 1.0) if k < 16 else (1.0, 1.0) if k < 50 else (0, 0)
            else:
                cand[key], prod[key] = (
                    (1.0, 0.0) if k < 12 + t_index else (1.0, 1.0) if k < 50 else (0.0, 0.0)
                )
    result = evaluate_gate(NO_REGRESSION, plan, GateInputs(cand, prod, labels=labels))
    assert result.verdict == "fail"
    assert result.explanation == _one_sentence(
        "fails: on topic = async the candidate scores 0.57 against production's 0.83 over 60 "
        "items, short by more than the gate allows even after correcting for the 4 slices "
        "tested (Holm), although over all items it clears the threshold."
    )


@pytest.mark.parametrize(
    ("n", "passed", "start"),
    [
        (200, 196, "passes: the candidate scores at least {low:.2f} on parse_rate, above the 0.90"),
        (200, 150, "fails: the candidate scores at most {high:.2f} on parse_rate, below the 0.90"),
        (200, 181, "undecided: the candidate scores between {low:.2f} and {high:.2f} on parse"),
        (10, 10, "undecided: only 10 paired items, fewer than the 30 needed"),
    ],
)
def test_absolute_explanations(plan: Plan, n: int, passed: int, start: str) -> None:
    result = evaluate_gate(ABSOLUTE, plan, GateInputs(candidate=_binary(n, passed)))
    low, high = proportion_confint(passed, n, alpha=0.05, method="wilson")
    expected = start.format(low=low, high=high)
    assert _one_sentence(result.explanation).startswith(expected), result.explanation


def test_non_inferiority_cost_and_latency_explanations(plan: Plan) -> None:
    rng = np.random.default_rng(2)
    teacher = rng.uniform(0.6, 1.0, 200)
    for factor, start in ((1.0, "passes: the candidate keeps at least 9"), (0.8, "fails: ")):
        student = np.clip(teacher * factor + rng.normal(0, 0.03, 200), 0, 1)
        result = evaluate_gate(
            NON_INFERIORITY,
            plan,
            GateInputs(
                {f"i{k}": float(v) for k, v in enumerate(student)},
                teacher={f"i{k}": float(v) for k, v in enumerate(teacher)},
            ),
        )
        assert _one_sentence(result.explanation).startswith(start)
        assert "of the teacher's quality" in result.explanation
        assert "95% required" in result.explanation

    usage = Usage(100, 800.0, 350.0, None, 0)
    cheap = evaluate_gate(COST, plan, GateInputs({}, candidate_usage=usage, teacher_usage=usage))
    assert cheap.value is not None
    assert cheap.explanation == (
        f"passes: the candidate costs {cheap.value:.0%} of the teacher per request, within the "
        "20% allowed (at least 5x cheaper) (this gate does not block the release)."
    )
    unknown = evaluate_gate(COST, plan, GateInputs({}))
    assert unknown.explanation.startswith("undecided: no tokens were measured")

    gate = Gate(name="Latency", metric="latency_p95_ms", comparator="latency", threshold=1.2)
    slow = Usage(100, None, None, 1500.0, 100)
    reference = Usage(100, None, None, 1000.0, 100)
    result = evaluate_gate(
        gate, plan, GateInputs({}, candidate_usage=slow, production_usage=reference)
    )
    assert result.explanation == (
        "fails: the candidate's p95 latency is 1.50x the reference's, more than the 1.2x allowed."
    )


def test_a_stored_report_without_an_interval_still_explains_itself() -> None:
    from core.gates import explain_gate

    stored = {
        "name": "No regression vs production",
        "comparator": "no_regression",
        "metric": "tests_pass_rate",
        "blocking": True,
        "verdict": "fail",
        "value": -0.0381,
        "threshold": -0.02,
        "slices": [],
    }
    assert explain_gate(stored) == (
        "fails: the candidate scores 3.8 points worse than production on average, against the "
        "2-point margin."
    )
