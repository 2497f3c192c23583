"""One table of human labels (core.labels): every field, stage, decision and metric a page shows
has an entry, and values read as a person expects (missing as "—", JSON as key-value text)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any, Literal, get_args, get_origin

import pandas as pd
import pytest
from pydantic import BaseModel

from core import gates, monitoring, signoffs, stats
from core.abtest import METRICS
from core.cycles import STAGE_RUNNERS
from core.labels import LABELS, MISSING, label, label_path, missing_labels, show
from core.plan import FILTER_KINDS, Plan


def _members(annotation: Any) -> list[Any]:
    """The annotation and everything nested in it (Optional, list, Annotated unions)."""
    found = [annotation]
    for arg in get_args(annotation):
        found.extend(_members(arg))
    return found


def _plan_keys(model: type[BaseModel], seen: set[type[BaseModel]]) -> tuple[set[str], set[str]]:
    """The field names the plan form labels, and the code values its selectboxes offer."""
    fields: set[str] = set()
    options: set[str] = set()
    if model in seen:
        return fields, options
    seen.add(model)
    for name, info in model.model_fields.items():
        fields.add(name)
        for member in _members(info.annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                more_fields, more_options = _plan_keys(member, seen)
                fields |= more_fields
                options |= more_options
            elif get_origin(member) is Literal:
                options |= {str(v) for v in get_args(member) if isinstance(v, str)}
    return fields, options


def _plan_form_keys() -> tuple[set[str], set[str]]:
    seen: set[type[BaseModel]] = set()
    fields, options = _plan_keys(Plan, seen)
    for kind in FILTER_KINDS.values():
        more_fields, more_options = _plan_keys(kind, seen)
        fields |= more_fields
        options |= more_options
    return fields, options


def test_every_plan_field_the_form_shows_has_a_label() -> None:
    fields, _ = _plan_form_keys()
    assert "mde" in fields and "budget_usd" in fields  # the walk reaches nested sections
    assert missing_labels(fields) == []


def test_every_choice_the_plan_form_offers_has_a_label() -> None:
    _, options = _plan_form_keys()
    # comparison operators are shown as the symbols a reader knows
    words = {o for o in options if any(c.isalpha() for c in o)} - {"not_in", "in"}
    assert "direct_identifier" in words and "opt_in" in words
    assert missing_labels(words) == []


def _literal_values(annotation: Any) -> set[str]:
    return {str(v) for v in get_args(annotation)}


@pytest.mark.parametrize(
    ("what", "keys"),
    [
        ("cycle stages", {"window", "consent", "mix", "split", *STAGE_RUNNERS}),
        ("filter rules", set(FILTER_KINDS)),
        (
            "A/B decisions",
            _literal_values(typing.get_type_hints(stats.ABDecision)["verdict"]),
        ),
        ("gate verdicts", _literal_values(gates.Verdict)),
        (
            "gate decisions",
            _literal_values(typing.get_type_hints(gates.record_decision)["decision"]),
        ),
        ("sign-off decisions", _literal_values(signoffs.Decision)),
        ("A/B metrics", set(METRICS)),
    ],
)
def test_every_stage_decision_and_metric_has_a_label(what: str, keys: set[str]) -> None:
    assert keys, what
    assert missing_labels(keys) == [], what


def test_cycle_statuses_are_already_words() -> None:
    for status in _literal_values(monitoring.CycleStatus):
        assert "_" not in status


def test_labels_read_as_words() -> None:
    assert label("mde") == "Minimum detectable effect"
    assert label("pii_class") == "PII class"
    assert label("budget_usd") == "Budget (USD)"
    assert label("n_epochs") == "Epochs"
    assert label("invalid_srm") == "Invalid: sample ratio mismatch"
    for text in LABELS.values():
        assert text and "_" not in text, text
        assert text[0].isupper() or text.startswith(("p-value", "p (", "N-gram")), text


def test_a_key_without_an_entry_still_reads_as_words() -> None:
    assert label("teacher_api_url") == "Teacher API URL"
    assert missing_labels(["teacher_api_url", "mde"]) == ["teacher_api_url"]


def test_a_plan_path_is_labelled_part_by_part() -> None:
    assert label_path("ab_test.mde") == "A/B test › Minimum detectable effect"
    assert label_path("gates[1].threshold") == "Eval gates › 2 › Threshold"


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, pd.NaT, "", "  ", [], {}])
def test_missing_values_show_as_a_dash(missing: object) -> None:
    assert show(missing) == MISSING


def test_json_shows_as_key_value_text() -> None:
    assert show('{"rows_in": 1200, "pii_class": "free_text"}') == (
        "Rows in: 1,200; PII class: free_text"
    )
    assert show({"window": {"start": "2026-01-01", "end": None}}) == (
        "Production window: (Start: 2026-01-01; End: —)"
    )
    assert show(["a", None, 2]) == "a, —, 2"
    assert "{" not in show('{"a": {"b": [1, 2]}}')


def test_numbers_booleans_and_times_read_plainly() -> None:
    assert show(1234567) == "1,234,567"
    assert show(3.0) == "3"
    assert show(0.123456) == "0.1235"
    assert show(True) == "yes"
    assert show(datetime(2026, 3, 1, 9, 30, tzinfo=UTC)) == "2026-03-01 09:30 UTC"
    assert show("not json {") == "not json {"
