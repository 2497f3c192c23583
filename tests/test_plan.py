"""The plan model: what it accepts, what it rejects, and what derives from it."""

from __future__ import annotations

import json
from datetime import date

import pytest
from pydantic import ValidationError

from core.errors import PlanError
from core.plan import Plan, grid_cells, plan_timeline
from core.plan_files import dump_plan, format_loc, parse_plan
from core.starters import STARTERS, starter_plan


@pytest.fixture
def plan() -> Plan:
    return starter_plan("python_coding_assistant")


def test_coding_assistant_grid_is_seven_topics_by_three_difficulties(plan: Plan) -> None:
    cells = grid_cells(plan.generation)
    assert len(cells) == 21
    assert plan.generation.grid_size * plan.generation.examples_per_cell == 210
    assert {"topic": "testing", "difficulty": "advanced"} in cells


def test_grid_takes_any_number_of_axes() -> None:
    support = starter_plan("customer_support_assistant")
    cells = grid_cells(support.generation)
    assert len(cells) == 6 * 2 * 2
    assert set(cells[0]) == {"intent", "tone", "channel"}


def test_unknown_field_is_rejected_with_its_path(plan: Plan) -> None:
    data = plan.to_data()
    data["gates"][1]["treshold"] = 0.9
    with pytest.raises(ValidationError) as info:
        Plan.model_validate(data)
    assert format_loc(info.value.errors()[0]["loc"]) == "gates[1].treshold"


def test_quality_filter_paths_leave_out_the_rule_tag(plan: Plan) -> None:
    data = plan.to_data()
    data["quality_filters"][5]["threshold"] = "high"
    with pytest.raises(PlanError, match=r"quality_filters\[5\]\.threshold"):
        parse_plan(json.dumps(data), "json")


@pytest.mark.parametrize("key", list(STARTERS))
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_plan_files_round_trip(key: str, fmt: str) -> None:
    original = starter_plan(key)
    again = parse_plan(dump_plan(original, fmt), fmt)  # type: ignore[arg-type]
    assert again == original
    assert again.fingerprint() == original.fingerprint()


def test_wrong_type_names_field_and_reason(plan: Plan) -> None:
    text = dump_plan(plan, "yaml").replace("examples_per_cell: 10", "examples_per_cell: ten")
    with pytest.raises(PlanError) as info:
        parse_plan(text, "yaml", source="p.yaml")
    assert "generation.examples_per_cell" in str(info.value)
    assert "integer" in str(info.value)


def test_broken_yaml_says_where() -> None:
    with pytest.raises(PlanError, match=r"invalid YAML at line \d+, column \d+"):
        parse_plan("goal:\n  feature: [unclosed\n", "yaml")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(PlanError, match="mapping"):
        parse_plan("- a\n- b\n", "yaml")


def test_monthly_cadence_gives_six_cycles_in_six_months(plan: Plan) -> None:
    cycles = plan_timeline(plan)
    assert [c.cycle for c in cycles] == [1, 2, 3, 4, 5, 6]
    assert cycles[0].start == date(2027, 1, 1)
    assert cycles[-1].end == date(2027, 7, 1)
    assert all(c.start < c.data_freeze < c.ab_start < c.ab_end <= c.end for c in cycles)
    assert not cycles[0].uses_production_data
    assert all(c.uses_production_data for c in cycles[1:])


def test_weekly_cadence_counts_whole_cycles_only(plan: Plan) -> None:
    plan.cadence.mode = "weeks"
    plan.cadence.every_weeks = 8
    cycles = plan_timeline(plan)
    assert len(cycles) == 3  # 24 weeks fit in the 181 days of Jan–Jun 2027; a 4th would not
    assert (cycles[1].start - cycles[0].start).days == 56


def test_economics_projects_monthly_cost_and_savings(plan: Plan) -> None:
    econ = plan.economics
    tokens_in = econ.monthly_requests * econ.avg_input_tokens
    tokens_out = econ.monthly_requests * econ.avg_output_tokens
    teacher = (tokens_in * 2.5 + tokens_out * 10.0) / 1e6
    student = (tokens_in * 0.05 + tokens_out * 0.2) / 1e6  # a self-hosted 1.5B coder
    assert econ.teacher_monthly_cost == pytest.approx(teacher, abs=0.01)
    assert econ.student_monthly_cost == pytest.approx(student, abs=0.01)
    assert econ.monthly_savings == pytest.approx(teacher - student, abs=0.02)


def test_fingerprint_changes_with_any_field(plan: Plan) -> None:
    before = plan.fingerprint()
    plan.cadence.validation_share = 0.2
    assert plan.fingerprint() != before


def test_start_month_must_be_year_and_month(plan: Plan) -> None:
    data = plan.to_data()
    data["goal"]["start_month"] = "2027-13"
    with pytest.raises(ValidationError):
        Plan.model_validate(data)
