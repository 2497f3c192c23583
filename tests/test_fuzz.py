"""Property-based tests: whatever a plan file or a log line holds, Flywheel never crashes; it
stores the input or rejects it with a clear reason, and its counts always reconcile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.access import local_operator
from core.errors import FlywheelError, PlanError
from core.ingest import batch_rejects, ingest_bytes
from core.plan_files import dump_plan, parse_plan
from core.plan_versions import list_plans, save_plan_version
from core.starters import starter_plan
from core.store import Store

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["true", "false", "2027-01-01", "2027-01-01T10:00:00+02:00", "", "up"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _mutated_plan_data(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    node: Any = data
    for key in path[:-1]:
        node = node[key] if isinstance(node, dict) else node[int(key)]
    if isinstance(node, dict):
        node[path[-1]] = value
    return data


PLAN_PATHS = [
    ["goal", "feature"],
    ["goal", "start_month"],
    ["goal", "horizon_months"],
    ["logging", "fields"],
    ["logging", "sampling_rate"],
    ["consent", "scopes"],
    ["consent", "privacy_review"],
    ["quality_filters"],
    ["generation", "axes"],
    ["generation", "examples_per_cell"],
    ["cadence", "mode"],
    ["cadence", "validation_share"],
    ["gates"],
    ["ab_test", "arms"],
    ["ab_test", "mde"],
    ["economics", "monthly_requests"],
    ["sign_offs", "approvers"],
    ["unknown_section"],
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PLAN_PATHS), json_values)
def test_any_value_in_any_plan_field_is_parsed_or_rejected_with_its_path(
    path: list[str], value: Any
) -> None:
    data = _mutated_plan_data(starter_plan("python_coding_assistant").to_data(), path, value)
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        plan = parse_plan(text, "yaml", source="fuzz.yaml")
    except PlanError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        assert "\n" not in str(exc)
    else:
        assert parse_plan(dump_plan(plan, "yaml"), "yaml") == plan


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_random_yaml_text_never_crashes(text: str) -> None:
    try:
        parse_plan(text, "yaml", source="random.yaml")
    except PlanError as exc:
        assert str(exc).startswith("random.yaml: ")


@pytest.mark.parametrize("body", ["goal: 7", "{", "- a\n- b", "goal:\n  feature: [1, 2]"])
def test_a_rejected_upload_stores_nothing(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str
) -> None:
    """A plan file that does not parse is refused with one line and exit 2, and the store
    holds no plan, version or audit entry afterwards."""
    from core.cli import main

    upload = tmp_path / "plan.yaml"
    upload.write_text(body, encoding="utf-8")
    assert main(["plan", "import", str(upload), "--db", str(store.path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list_plans(store) == []
    assert store.fetch_all("SELECT count(*) FROM plan_versions") == [(0,)]
    assert store.fetch_all("SELECT count(*) FROM audit_log") == [(0,)]


def test_a_save_refused_midway_rolls_back(store: Store) -> None:
    """A new version of a plan that does not exist is refused and writes nothing."""
    with pytest.raises(PlanError, match="no plan 'nope'"):
        save_plan_version(
            store,
            starter_plan("python_coding_assistant"),
            note="n",
            user=local_operator(),
            plan_id="nope",
        )
    assert list_plans(store) == []
    assert store.fetch_all("SELECT count(*) FROM audit_log") == [(0,)]


FIELDS = [
    "interaction_id",
    "ts",
    "user_id",
    "variant",
    "model",
    "prompt",
    "response",
    "system",
    "feedback",
    "accepted",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "topic",
    "difficulty",
    "metadata",
]


def _valid_row(i: int) -> dict[str, Any]:
    return {
        "interaction_id": f"fz-{i}",
        "ts": "2027-02-03T10:00:00Z",
        "user_id": f"u{i % 5}",
        "variant": "control",
        "model": "gpt-4o",
        "prompt": "How do I sort a list?",
        "response": "Use sorted(items).",
        "feedback": "up",
        "accepted": True,
    }


rows_strategy = st.lists(
    st.tuples(st.sampled_from(FIELDS), json_values, st.booleans()), min_size=1, max_size=12
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows_strategy, st.binary(max_size=30))
def test_any_log_line_is_stored_or_quarantined_with_a_reason(
    store: Store, tmp_path: Path, edits: list[tuple[str, Any, bool]], junk: bytes
) -> None:
    lines: list[bytes] = []
    for i, (field, value, drop) in enumerate(edits):
        row = _valid_row(i)
        if drop:
            row.pop(field, None)
        else:
            row[field] = value
        lines.append(json.dumps(row, allow_nan=True).encode())
    lines.append(junk.replace(b"\n", b" "))
    name = f"fuzz-{abs(hash(tuple(lines)))}.jsonl"
    try:
        result = ingest_bytes(store, b"\n".join(lines) + b"\n", name, user=local_operator())
    except FlywheelError as exc:
        assert str(exc)
        return
    assert result.rows_read == result.accepted + result.rejected + result.duplicates
    if result.already_loaded:  # hypothesis replayed a file this store already holds
        assert result.accepted == 0
        return
    reasons = batch_rejects(store, result.batch_id, user=local_operator())
    assert len(reasons) == result.rejected
    assert all(r["reason"] and r["line"] >= 1 for r in reasons)
