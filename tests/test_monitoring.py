"""Cycle monitoring: per-cycle actuals from the store, plan against actual, and their charts."""

from __future__ import annotations

import json
from pathlib import Path

from core.access import local_operator
from core.charts import cost_per_1k_figure, cycle_rates_figure
from core.ingest import ingest_file
from core.monitoring import (
    cycle_actuals,
    plan_vs_actual,
    realised_monthly_savings,
    store_revision,
)
from core.plan_versions import save_plan_version
from core.retention import enforce_retention
from core.starters import starter_plan
from core.store import Store


def _log(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _row(i: int, cycle_day: str, model: str, **extra: object) -> dict[str, object]:
    return {
        "interaction_id": f"m{i}",
        "ts": f"{cycle_day}T10:00:00Z",
        "user_id": f"u{i % 4}",
        "variant": "control" if model == "gpt-4o" else "treatment",
        "model": model,
        "prompt": "How do I read a CSV?",
        "response": "Use csv.reader.",
        **extra,
    }


def test_actuals_per_cycle_match_the_rows(store: Store, tmp_path: Path) -> None:
    plan = starter_plan("python_coding_assistant")
    save_plan_version(store, plan, note="p", user=local_operator())
    rows = [
        _row(
            1, "2027-01-03", "gpt-4o", accepted=True, feedback="up", cost_usd=0.01, latency_ms=100
        ),
        _row(
            2,
            "2027-01-04",
            "gpt-4o",
            accepted=False,
            feedback="down",
            cost_usd=0.03,
            latency_ms=300,
        ),
        _row(3, "2027-01-05", "ft:mini", accepted=True, cost_usd=0.002, latency_ms=200),
        _row(
            4,
            "2027-01-06",
            "ft:mini",
            accepted=True,
            feedback="up",
            cost_usd=0.002,
            prompt="mail me at ana@example.com",
        ),
    ]
    ingest_file(store, _log(tmp_path / "c1.jsonl", rows), cycle=1, user=local_operator())
    consent = tmp_path / "consent.jsonl"
    consent.write_text(
        json.dumps(
            {
                "user_id": "u1",
                "ts": "2027-01-01T00:00:00Z",
                "scope": "training",
                "action": "grant",
                "policy_version": "1",
                "source": "EU",
            }
        )
        + "\n"
    )
    ingest_file(store, consent, kind="consent", user=local_operator())

    (actual,) = cycle_actuals(store, plan)
    assert (actual.cycle, actual.interactions, actual.users) == (1, 4, 4)
    assert actual.acceptance_rate == 3 / 4
    assert actual.thumbs_up_rate == 2 / 3
    assert actual.teacher_cost_per_1k == 1000 * 0.04 / 2
    assert actual.student_cost_per_1k == 1000 * 0.004 / 2
    assert actual.realised_reduction == 10.0
    assert actual.consent_rate == 1 / 4  # only u1 granted training consent
    assert actual.pii_rows == 1

    teacher_month = plan.economics.teacher_monthly_cost
    assert realised_monthly_savings(plan, actual) == teacher_month * (1 - 1 / 10)
    checks = {(d.cycle, d.metric): d.status for d in plan_vs_actual(plan, [actual])}
    assert checks[(1, "cost reduction (x)")] == "on plan"
    assert checks[(1, "acceptance_rate (baseline)")] == "on plan"
    assert checks[(2, "cost reduction (x)")] == "no data"


def test_actuals_survive_retention(store: Store, tmp_path: Path) -> None:
    plan = starter_plan("python_coding_assistant")
    save_plan_version(store, plan, note="p", user=local_operator())
    rows = [_row(i, "2027-01-03", "gpt-4o", accepted=i % 2 == 0, cost_usd=0.01) for i in range(10)]
    ingest_file(store, _log(tmp_path / "c1.jsonl", rows), cycle=1, user=local_operator())
    before = cycle_actuals(store, plan)[0]
    revision = store_revision(store)
    from datetime import UTC, datetime

    enforce_retention(store, plan, actor="cron", now=datetime(2028, 1, 1, tzinfo=UTC))
    assert store_revision(store) > revision
    after = cycle_actuals(store, plan)[0]
    assert (after.interactions, after.accepted, after.teacher_cost_per_1k) == (
        before.interactions,
        before.accepted,
        before.teacher_cost_per_1k,
    )


def test_charts_hold_one_point_per_cycle(demo_store: Store) -> None:
    from core.plan_versions import load_plan

    plan, _ = load_plan(demo_store, "python-coding-assistant")
    actuals = cycle_actuals(demo_store, plan)
    rates = cycle_rates_figure(actuals)
    assert [t.name for t in rates.data] == [
        "Accepted",
        "Thumbs up (of rated)",
        "Consented for training",
    ]
    assert list(rates.data[0].y) == [a.acceptance_rate for a in actuals]
    cost = cost_per_1k_figure(actuals)
    assert [t.name for t in cost.data] == ["Teacher", "Student"]
    assert list(cost.data[1].y) == [a.student_cost_per_1k for a in actuals]
    assert all(t < s for t, s in zip(cost.data[1].y, cost.data[0].y, strict=True))
