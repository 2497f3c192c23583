"""What a stage is, for every engine (core.pipeline.stages): which rules a carried row is
checked by again, which copy the duplicate stages keep, and the words of the carry reasons."""

from __future__ import annotations

from typing import Any

import pytest
from cycle_helpers import cycle_plan

from core import cycles, portable
from core.errors import CycleError
from core.pipeline import stages
from core.pipeline.run import Counted, run_table_stages
from core.pipeline.stages import (
    Keep,
    keep_rule,
    pii_recheck_warning,
    pipeline_rules,
    rules_to_recheck,
)
from core.plan import Language, LengthBounds, NearDedup


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


def test_both_engines_run_the_one_loop_with_the_stage_definitions_of_one_place() -> None:
    # The engines import, not copy: a change to the loop or a stage's words reaches both.
    for module in (cycles, portable):
        assert vars(module)["run_table_stages"] is run_table_stages
        held = {name: vars(module)[name] for name in stages.__all__ if name in vars(module)}
        assert "consent_stage" in held
        assert all(value is getattr(stages, name) for name, value in held.items())


class _Recording:
    """Stage bodies that remove a set number of rows per stage and note each call."""

    def __init__(self, removed: dict[str, int]) -> None:
        self.removed = removed
        self.calls: list[tuple[Any, ...]] = []

    def carry(self, rules: list[tuple[Any, str]], keep: Keep) -> Counted:
        self.calls.append(("carry", keep))
        return Counted(10, 8, "from ds-p-c1-v1", {"texts_redacted_again": 1})

    def window(self) -> Counted:
        self.calls.append(("window",))
        return Counted(50, 50, "the rows given")

    def consent(self) -> int:
        self.calls.append(("consent",))
        return self.removed.get("consent", 0)

    def pii_check(self) -> dict[str, Any]:
        self.calls.append(("pii_check",))
        return {"texts_redacted_again": 2}

    def filter(self, position: int, rule: Any, keep: Keep) -> int:
        self.calls.append((position, rule.rule))
        if rule.rule == "language":
            raise ValueError("the language rule knows en; not xx")
        return self.removed.get(rule.rule, 0)


def test_the_loop_runs_each_stage_once_in_order_and_the_funnel_reconciles() -> None:
    plan = cycle_plan()
    bodies = _Recording({"consent": 5, "exact_dedup": 3, "near_dedup": 2})
    said: list[tuple[float, str]] = []
    run = run_table_stages(bodies, plan, progress=lambda share, text: said.append((share, text)))
    rules = pipeline_rules(plan)
    assert bodies.calls == [
        ("carry", keep_rule(rules)),
        ("window",),
        ("consent",),
        ("pii_check",),
        *[(position, rule.rule) for position, (rule, _) in enumerate(rules[1:], start=4)],
    ]
    assert [s.position for s in run.stages] == list(range(len(rules) + 3))
    assert run.stages[0].rows_in - run.stages[0].rows_out == run.stages[0].removed == 2
    for before, after in zip(run.stages[1:], run.stages[2:], strict=False):
        assert after.rows_in == before.rows_out
        assert after.rows_in - after.rows_out == after.removed
    assert run.new_rows == 50 - 5 - 3 - 2 == run.stages[-1].rows_out
    # Carried and new texts redacted again are counted once, in one warning.
    assert run.redacted_again == 3
    assert run.warnings == [pii_recheck_warning(3)]
    shares = [share for share, _ in said]
    assert shares == sorted(shares) and shares[-1] < 1


def test_a_filter_that_cannot_run_stops_the_loop_naming_the_rule() -> None:
    plan = cycle_plan()
    plan.quality_filters.insert(0, Language(languages=["en"]))
    bodies = _Recording({})
    with pytest.raises(CycleError, match="The plan's language filter cannot run: the language"):
        run_table_stages(bodies, plan)
    assert bodies.calls[-1][1] == "language"
