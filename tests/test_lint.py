"""Each lint check fires on a plan with its contradiction and stays quiet on a consistent one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from core.lint import CHECKS, LintReport, lint_data, lint_plan
from core.plan import TRAINING_BACKEND_LAST_DAY, Gate, LengthBounds, Plan, plan_timeline
from core.starters import STARTERS, starter_plan

Mutation = Callable[[Plan], None]


def _retention(p: Plan) -> None:
    p.logging.fields[2].retention_days = 400  # free-text prompt, consent allows 180


def _no_redaction(p: Plan) -> None:
    p.quality_filters = [f for f in p.quality_filters if f.rule != "pii_redacted"]


def _redaction_late(p: Plan) -> None:
    first = p.quality_filters.pop(0)
    p.quality_filters.append(first)


def _duplicate_field(p: Plan) -> None:
    p.logging.fields.append(p.logging.fields[0].model_copy())


def _no_training_scope(p: Plan) -> None:
    p.consent.scopes = ["analytics"]


def _opt_in_granted(p: Plan) -> None:
    p.consent.flows[0].default_state = "granted"


def _no_flows(p: Plan) -> None:
    p.consent.flows = []


def _review_after_production(p: Plan) -> None:
    p.consent.privacy_review.decided_on = date(2027, 3, 1)  # cycle 2 starts 2027-02-01


def _one_cycle(p: Plan) -> None:
    p.goal.horizon_months = 1


def _mix(p: Plan) -> None:
    p.cadence.min_new_examples = 15_000  # × (1 + 0.4) = 21,000 > 20,000


def _freeze_late(p: Plan) -> None:
    p.cadence.data_freeze_day = 40


def _one_arm(p: Plan) -> None:
    p.ab_test.arms = p.ab_test.arms[:1]


def _ab_too_long(p: Plan) -> None:
    p.ab_test.daily_traffic = 500  # 14,853 per arm at 250 a day: 60 days


def _no_regression_gate(p: Plan) -> None:
    p.gates = [g for g in p.gates if g.comparator != "no_regression"]


def _ni_ratio(p: Plan) -> None:
    p.gates[2].ratio = 1.2


def _gate_param(p: Plan) -> None:
    p.gates[1].margin = None


def _empty_axis(p: Plan) -> None:
    p.generation.axes[1].values = []


def _over_budget(p: Plan) -> None:
    p.generation.budget_usd = 1.0  # 210 examples ≈ $1.60


def _template(p: Plan) -> None:
    p.generation.prompt_template = "Write a Python question about {{ topic }}."


def _template_unsafe(p: Plan) -> None:
    p.generation.prompt_template = "{{ cycler.__init__.__globals__.os.popen('id').read() }}"


def _grid_too_large(p: Plan) -> None:
    p.generation.axes[0].values = [f"topic {i}" for i in range(1000)]
    p.generation.axes[1].values = [f"level {i}" for i in range(1000)]


def _backend_closed(p: Plan) -> None:
    p.training.backend = "openai"  # cycle 1 trains on 2027-01-10, after OpenAI's last day


def _no_base_model(p: Plan) -> None:
    p.training.local.base_model = " "


def _lora_rank(p: Plan) -> None:
    p.training.local.lora_rank = 0


def _endpoint_credentials(p: Plan) -> None:
    p.generation.endpoint = "https://user:hunter22@teacher.example/v1?api_key=sk-live-0123456789"


def _no_student_system(p: Plan) -> None:
    p.goal.student_system_message = "  "  # the teacher writes coding_qa examples


def _long_student_system(p: Plan) -> None:
    p.goal.student_system_message = "You are a Python expert. " * 100  # ~600 tokens > 400


def _savings(p: Plan) -> None:
    p.economics.student_output_per_1m = 5.0


def _owner(p: Plan) -> None:
    p.goal.owner = " "


def _approvers(p: Plan) -> None:
    p.sign_offs.approvers = [a for a in p.sign_offs.approvers if a.role != "privacy_reviewer"]


CASES: dict[str, tuple[Mutation, str]] = {
    "OWNER_MISSING": (_owner, "goal.owner"),
    "APPROVERS_MISSING": (_approvers, "sign_offs.approvers"),
    "RETENTION_EXCEEDS_CONSENT": (_retention, "logging.fields[2].retention_days"),
    "FREE_TEXT_UNREDACTED": (_no_redaction, "quality_filters"),
    "REDACTION_NOT_FIRST": (_redaction_late, "quality_filters[6]"),
    "DUPLICATE_LOGGED_FIELD": (_duplicate_field, "logging.fields[0].name"),
    "NO_TRAINING_CONSENT": (_no_training_scope, "consent.scopes"),
    "OPT_IN_DEFAULT_GRANTED": (_opt_in_granted, "consent.flows[0].default_state"),
    "NO_CONSENT_FLOW": (_no_flows, "consent.flows"),
    "PRIVACY_REVIEW_LATE": (_review_after_production, "consent.privacy_review.decided_on"),
    "TOO_FEW_CYCLES": (_one_cycle, "cadence"),
    "MIX_INFEASIBLE": (_mix, "cadence.max_dataset_size"),
    "FREEZE_AFTER_CYCLE": (_freeze_late, "cadence.data_freeze_day"),
    "AB_ARMS": (_one_arm, "ab_test.arms"),
    "AB_TOO_LONG": (_ab_too_long, "ab_test.daily_traffic"),
    "NO_REGRESSION_GATE": (_no_regression_gate, "gates"),
    "NI_RATIO_RANGE": (_ni_ratio, "gates[2].ratio"),
    "GATE_PARAMETER_MISSING": (_gate_param, "gates[1].margin"),
    "AXIS_VALUES": (_empty_axis, "generation.axes[1].values"),
    "GENERATION_OVER_BUDGET": (_over_budget, "generation.budget_usd"),
    "TEMPLATE_AXES": (_template, "generation.axes[1].name"),
    "TEMPLATE_UNSAFE": (_template_unsafe, "generation.prompt_template"),
    "GRID_TOO_LARGE": (_grid_too_large, "generation.axes"),
    "TRAINING_BACKEND_CLOSED": (_backend_closed, "training.backend"),
    "TRAINING_BASE_MODEL_MISSING": (_no_base_model, "training.local.base_model"),
    "LORA_OUT_OF_RANGE": (_lora_rank, "training.local.lora_rank"),
    "ENDPOINT_CREDENTIALS": (_endpoint_credentials, "generation.endpoint"),
    "STUDENT_SYSTEM_MISSING": (_no_student_system, "goal.student_system_message"),
    "STUDENT_SYSTEM_TOO_LONG": (_long_student_system, "goal.student_system_message"),
    "SAVINGS_BELOW_TARGET": (_savings, "economics.student_output_per_1m"),
}


def test_every_check_has_a_case() -> None:
    assert set(CASES) == set(CHECKS)
    assert len(CHECKS) >= 12


def _approved_starter(key: str = "python_coding_assistant") -> Plan:
    """A starter plan whose privacy reviewer has approved it before its first cycle."""
    plan = starter_plan(key)
    first = plan_timeline(plan)[0].start
    plan.consent.privacy_review.status = "approved"
    plan.consent.privacy_review.decided_on = date.fromordinal(first.toordinal() - 14)
    return plan


@pytest.mark.parametrize("key", list(STARTERS))
def test_starter_plans_start_with_the_privacy_review_pending(key: str) -> None:
    review = starter_plan(key).consent.privacy_review
    assert review.status in ("not_started", "in_review") and review.decided_on is None
    findings = lint_plan(starter_plan(key)).findings
    assert [(f.code, f.severity) for f in findings] == [("PRIVACY_REVIEW_LATE", "warning")]


@pytest.mark.parametrize("key", list(STARTERS))
def test_starter_plans_have_no_findings_once_the_review_approves(key: str) -> None:
    report = lint_plan(_approved_starter(key))
    assert report.findings == []


@pytest.mark.parametrize("code", list(CASES))
def test_check_fires_on_its_contradiction(code: str) -> None:
    plan = _approved_starter()
    mutate, path = CASES[code]
    assert not [f for f in lint_plan(plan).findings if f.code == code]
    mutate(plan)
    hits = [f for f in lint_plan(plan).findings if f.code == code]
    assert hits, f"{code} did not fire"
    assert path in {f.path for f in hits}
    assert all(f.message.endswith((".", ")")) and len(f.message) > 20 for f in hits)


def test_ab_duration_uses_the_two_proportion_sample_size() -> None:
    plan = starter_plan("python_coding_assistant")
    # 0.30 → 0.315, α 0.05, power 0.8: n = (z.975 + z.8)² (p1q1 + p2q2) / δ²
    z = 1.959963984540054 + 0.8416212335729143
    n = -(-(z**2) * (0.3 * 0.7 + 0.315 * 0.685) // 0.015**2)
    plan.ab_test.daily_traffic = int(2 * n / 15)  # exactly 15 days per arm at 50/50
    message = next((f.message for f in lint_plan(plan).findings if f.code == "AB_TOO_LONG"), None)
    assert message is None  # 15 days fit in the 16 of February's cycle
    plan.ab_test.daily_traffic = int(2 * n / 17)
    message = next(f.message for f in lint_plan(plan).findings if f.code == "AB_TOO_LONG")
    assert f"{int(n):,} users per arm" in message


def test_review_pending_is_a_warning_not_an_error() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.consent.privacy_review.status = "in_review"
    plan.consent.privacy_review.decided_on = None
    findings = [f for f in lint_plan(plan).findings if f.code == "PRIVACY_REVIEW_LATE"]
    assert [f.severity for f in findings] == ["warning"]
    assert lint_plan(plan).ready


def test_non_inferiority_ratio_below_half_is_an_error() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.gates[2].ratio = 0.4
    assert "gates[2].ratio" in {f.path for f in lint_plan(plan).errors}


def test_absolute_gate_without_threshold() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.gates.append(Gate(name="Style", metric="lint_rate", eval_set="py", comparator="absolute"))
    assert "gates[4].threshold" in {f.path for f in lint_plan(plan).errors}


def test_repeated_axis_values_are_named() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.generation.axes[1].values = ["beginner", "advanced", "beginner"]
    message = next(f.message for f in lint_plan(plan).errors if f.code == "AXIS_VALUES")
    assert "beginner" in message


def test_schema_problems_come_back_as_findings_with_paths() -> None:
    data = starter_plan("python_coding_assistant").to_data()
    data["cadence"]["validation_share"] = 0.9
    data["quality_filters"].append({"rule": "length_bounds", "min_chars": "x"})
    plan, report = lint_data(data)
    assert plan is None
    paths = {f.path for f in report.errors}
    assert "cadence.validation_share" in paths
    assert "quality_filters[7].min_chars" in paths
    assert all(f.code == "SCHEMA" for f in report.findings)


def test_lint_data_on_a_valid_plan_returns_it() -> None:
    original = starter_plan("customer_support_assistant")
    original.quality_filters.append(LengthBounds(min_chars=1, max_chars=10))
    plan, report = lint_data(original.to_data())
    assert plan == original
    assert report.ready


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter22@teacher.example/v1",
        "https://teacher.example/v1?key=AIzaSyD-0123456789",
        "https://teacher.example/v1?api_key=0123456789abcdef",
        "https://teacher.example/v1?api-version=2024-06-01&access_token=0123456789abcdef",
    ],
)
def test_credentials_in_an_endpoint_are_an_error_naming_the_field(url: str) -> None:
    plan = starter_plan("python_coding_assistant")
    plan.training.openai.endpoint = url
    hits = [f for f in lint_plan(plan).errors if f.code == "ENDPOINT_CREDENTIALS"]
    assert [f.path for f in hits] == ["training.openai.endpoint"]
    assert not any(secret in hits[0].message for secret in ("hunter22", "0123456789"))


def test_an_endpoint_without_credentials_is_fine() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.generation.endpoint = "http://127.0.0.1:8000/v1?api-version=2024-06-01"
    assert not [f for f in lint_plan(plan).findings if f.code == "ENDPOINT_CREDENTIALS"]


def _openai_plan(start_month: str, cadence_weeks: int | None = None) -> Plan:
    plan = starter_plan("python_coding_assistant")
    plan.goal = plan.goal.model_copy(update={"start_month": start_month})
    plan.training = plan.training.model_copy(update={"backend": "openai"})
    return plan


def test_openai_training_is_an_error_on_and_after_its_last_day_only() -> None:
    # 2026-07 monthly: the sixth cycle trains on 2026-12-10, before 2027-01-06.
    before = _openai_plan("2026-07")
    assert max(c.training_done for c in plan_timeline(before)) < date(2027, 1, 6)
    assert "TRAINING_BACKEND_CLOSED" not in _codes(lint_plan(before))
    # One month later the last cycle trains on 2027-01-10: an error naming the date and the
    # other backends.
    after = _openai_plan("2026-08")
    late = [c for c in plan_timeline(after) if c.training_done >= date(2027, 1, 6)]
    assert [c.cycle for c in late] == [6]
    finding = next(f for f in lint_plan(after).errors if f.code == "TRAINING_BACKEND_CLOSED")
    assert "2027-01-06" in finding.message and "cycle 6" in finding.message
    assert "local" in finding.message and "together" in finding.message
    # The same plan trained locally or on Together is fine.
    for backend in ("local", "together"):
        after.training = after.training.model_copy(update={"backend": backend})
        assert "TRAINING_BACKEND_CLOSED" not in _codes(lint_plan(after))


def test_a_new_last_day_is_data_not_a_new_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _openai_plan("2026-07")
    plan.training = plan.training.model_copy(update={"backend": "together"})
    monkeypatch.setitem(TRAINING_BACKEND_LAST_DAY, "together", date(2026, 9, 1))
    finding = next(f for f in lint_plan(plan).errors if f.code == "TRAINING_BACKEND_CLOSED")
    assert "2026-09-01" in finding.message


def _codes(report: LintReport) -> set[str]:
    return {f.code for f in report.findings}


def _student_system_codes(plan: Plan) -> list[str]:
    return [f.code for f in lint_plan(plan).findings if f.code.startswith("STUDENT_SYSTEM")]


def test_an_empty_student_system_message_is_fine_where_nothing_assumes_one() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.goal.student_system_message = ""
    plan.generation.output_schema = "qa"  # plain question and answer: no assistant's role
    assert _student_system_codes(plan) == []
    plan.logging.fields.append(plan.logging.fields[-1].model_copy(update={"name": "system"}))
    assert _student_system_codes(plan) == ["STUDENT_SYSTEM_MISSING"]  # production logs one


def test_the_system_message_budget_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = starter_plan("python_coding_assistant")  # "You are a Python expert.": 6 tokens
    assert _student_system_codes(plan) == []
    monkeypatch.setenv("FLYWHEEL_STUDENT_SYSTEM_MAX_TOKENS", "5")
    finding = next(f for f in lint_plan(plan).findings if f.code == "STUDENT_SYSTEM_TOO_LONG")
    assert finding.severity == "warning" and "over the budget of 5" in finding.message
