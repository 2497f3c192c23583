"""What a stage is, for every engine (core.pipeline.stages): which rules a carried row is
checked by again, which copy the duplicate stages keep, and the words of the carry reasons."""

from __future__ import annotations

from typing import Any

from cycle_helpers import cycle_plan

from core import cycles, portable
from core.pipeline import keep_rule, pipeline_rules, rules_to_recheck, stages
from core.plan import LengthBounds, NearDedup


def _ran(rules: list[tuple[Any, str]]) -> list[dict[str, Any]]:
    """A parent's lineage that ran exactly ``rules``."""
    return [{"name": r.rule, "params": r.model_dump(mode="json")} for r, _ in rules[1:]]


def test_a_carried_row_is_checked_again_only_by_the_rules_the_parent_did_not_run() -> None:
    plan = cycle_plan()
    rules = pipeline_rules(plan)
    asked: list[str] = []

    def fingerprint() -> str:
        asked.append("asked")
        return "items-v1"

    assert rules_to_recheck(rules, _ran(rules), fingerprint, "items-v1") == []
    # The PM tightens the length rule: only it runs again on old rows.
    tightened = plan.model_copy(deep=True)
    at = next(i for i, r in enumerate(tightened.quality_filters) if r.rule == "length_bounds")
    tightened.quality_filters[at] = LengthBounds(min_chars=200, max_chars=4000)
    again = rules_to_recheck(pipeline_rules(tightened), _ran(rules), fingerprint, "items-v1")
    assert [(r.rule, r.min_chars) for r in again] == [("length_bounds", 200)]


def test_decontamination_runs_again_when_the_eval_items_changed_and_asks_only_then() -> None:
    rules = pipeline_rules(cycle_plan())
    asked: list[str] = []

    def fingerprint() -> str:
        asked.append("asked")
        return "items-v2"

    again = rules_to_recheck(rules, _ran(rules), fingerprint, "items-v1")
    assert [r.rule for r in again] == ["decontamination"]
    assert asked == ["asked"]
    # A parent that never ran decontamination: it runs, and the items are not read to decide.
    asked.clear()
    without = [f for f in _ran(rules) if f["name"] != "decontamination"]
    assert [r.rule for r in rules_to_recheck(rules, without, fingerprint, "items-v2")] == [
        "decontamination"
    ]
    assert asked == []


def test_both_duplicate_stages_keep_the_copy_the_near_duplicate_rule_names() -> None:
    plan = cycle_plan()
    plan.quality_filters = [r for r in plan.quality_filters if r.rule != "near_dedup"]
    assert keep_rule(pipeline_rules(plan)) == "earliest"
    plan.quality_filters.append(NearDedup(keep="best_rated"))
    assert keep_rule(pipeline_rules(plan)) == "best_rated"


def test_both_engines_read_the_stage_definitions_from_one_place() -> None:
    # The loops import, not copy: a change to a stage's rules or words reaches both.
    for module in (cycles, portable):
        held = {name: vars(module)[name] for name in stages.__all__ if name in vars(module)}
        assert {"pipeline_rules", "consent_stage"} <= set(held)
        assert all(value is getattr(stages, name) for name, value in held.items())
