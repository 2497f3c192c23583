"""Cycle monitoring: per-cycle actuals and records against figures computed here from the
store, plan against actual, and their charts."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from core.abtest import ab_window, analyse_cycle
from core.access import local_operator
from core.charts import cost_per_1k_figure, cycle_rates_figure
from core.ingest import ingest_file
from core.monitoring import (
    cycle_actuals,
    cycle_monitoring,
    plan_vs_actual,
    realised_monthly_savings,
)
from core.plan import Plan, plan_timeline
from core.plan_versions import load_plan, save_plan_version
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
    stamp = store.stamp()  # what the dashboard's caches are keyed on
    from datetime import UTC, datetime

    enforce_retention(store, plan, user=local_operator(), now=datetime(2028, 1, 1, tzinfo=UTC))
    assert store.stamp() != stamp
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
    # Each line is named with its base (core.metrics), as the Overview's table names it.
    assert [t.name for t in rates.data] == [
        "Accepted (of interactions)",
        "Rated up (of rated)",
        "Consented for training (of active users)",
        "Eligible for training (of interactions)",
    ]
    assert list(rates.data[0].y) == [a.acceptance_rate for a in actuals]
    assert list(rates.data[2].y) == [a.consented_user_rate for a in actuals]
    assert list(rates.data[3].y) == [a.consent_rate for a in actuals]
    cost = cost_per_1k_figure(actuals)
    assert [t.name for t in cost.data] == ["Teacher", "Student"]
    assert list(cost.data[1].y) == [a.student_cost_per_1k for a in actuals]
    assert all(t < s for t, s in zip(cost.data[1].y, cost.data[0].y, strict=True))


# -- per cycle: funnel, dataset, gates, A/B ----------------------------------------------------

DEMO = "python-coding-assistant"


def _newest_run(store: Store, cycle: int) -> tuple[str, str]:
    row = store.fetch_one(
        "SELECT run_id, dataset_version FROM cycle_runs WHERE plan_id = ? AND cycle = ?"
        " ORDER BY started_at DESC LIMIT 1",
        [DEMO, cycle],
    )
    assert row is not None
    return str(row[0]), str(row[1])


def _acceptance_lift(store: Store, plan: Plan, cycle: int) -> float:
    """Relative lift of the acceptance rate, treatment on control, over the users of the
    cycle's A/B window who stayed in one arm: computed here in SQL from the raw rows."""
    first, last = ab_window(plan, cycle)
    rates = dict(
        store.fetch_all(
            """
            WITH test AS (
                SELECT user_id, variant, accepted FROM interactions
                WHERE cycle = $cycle AND ts >= $start AND ts < $stop
                    AND variant IN ('control', 'treatment')
            ),
            one_arm AS (
                SELECT user_id FROM test GROUP BY user_id HAVING count(DISTINCT variant) = 1
            )
            SELECT variant,
                sum(CASE WHEN accepted THEN 1 ELSE 0 END) / count(accepted)
            FROM test WHERE user_id IN (SELECT user_id FROM one_arm) GROUP BY variant
            """,
            {
                "cycle": cycle,
                "start": datetime.combine(first, time(0), UTC),
                "stop": datetime.combine(last + timedelta(days=1), time(0), UTC),
            },
        )
    )
    return float((rates["treatment"] - rates["control"]) / rates["control"])


def test_cycle_monitoring_matches_the_store(demo_store: Store) -> None:
    from core.plan_versions import load_plan

    plan, _ = load_plan(demo_store, DEMO)
    records = {r.cycle: r for r in cycle_monitoring(demo_store, DEMO, plan)}
    assert list(records) == [1, 2, 3, 4, 5, 6]

    for cycle in (1, 2, 3):
        record = records[cycle]
        run_id, version = _newest_run(demo_store, cycle)
        assert record.run_id == run_id
        stages = demo_store.fetch_all(
            "SELECT name, rows_in, rows_out, removed, added FROM cycle_stages WHERE run_id = ?"
            " ORDER BY position",
            [run_id],
        )
        assert [tuple(s.to_dict().values()) for s in record.funnel] == stages
        counts = demo_store.fetch_one(
            "SELECT count(*), count(*) FILTER (WHERE source = 'production'),"
            " count(*) FILTER (WHERE source = 'synthetic'), count(*) FILTER (WHERE split ="
            " 'train'), count(*) FILTER (WHERE split = 'validation') FROM dataset_rows"
            " WHERE version_id = ?",
            [version],
        )
        dataset = record.dataset
        assert dataset is not None and dataset.version_id == version
        assert counts == (
            dataset.rows,
            dataset.production,
            dataset.synthetic,
            dataset.train,
            dataset.validation,
        )
        assert record.ab is not None
        assert record.ab.lift == pytest.approx(_acceptance_lift(demo_store, plan, cycle))
        # The interval is the one the A/B page shows and its decision reads.
        page = analyse_cycle(demo_store, plan, cycle, plan_id=DEMO)
        assert page is not None
        assert record.ab.ci == pytest.approx(page.primary.ci)
        assert record.ab.verdict == page.decision.verdict

    # Cycle 1: the decision recorded its gate report; the table shows that report's figures.
    decided = demo_store.fetch_all(
        "SELECT g.name, g.verdict, g.value, g.threshold FROM gate_decisions,"
        " unnest(CAST(report->'$.gates' AS JSON[])) AS t(gate),"
        " LATERAL (SELECT gate->>'$.name' AS name, gate->>'$.verdict' AS verdict,"
        " CAST(gate->>'$.value' AS DOUBLE) AS value,"
        " CAST(gate->>'$.threshold' AS DOUBLE) AS threshold) g"
        " WHERE plan_id = ? AND cycle = 1",
        [DEMO],
    )
    gates = records[1].gates
    assert gates is not None and gates.decision == "approved" and gates.verdict == "pass"
    assert sorted((g.name, g.verdict, g.value, g.threshold) for g in gates.gates) == sorted(decided)

    # Cycle 2: no decision, so the gates are checked now. "Code parses" is the candidate's
    # mean python_parses score, the regression gate's value the mean paired difference.
    gates = records[2].gates
    assert gates is not None and gates.decision is None and gates.verdict == "fail"
    by_name = {g.name: g for g in gates.gates}
    parses = demo_store.fetch_one(
        "SELECT avg(score) FROM eval_scores WHERE run_id = 'demo-cand-c2'"
        " AND grader = 'python_parses'"
    )
    assert parses is not None and by_name["Code parses"].value == pytest.approx(parses[0])
    diff = demo_store.fetch_one(
        "SELECT avg(c.score - p.score) FROM eval_scores c JOIN eval_scores p USING (item_id)"
        " WHERE c.run_id = 'demo-cand-c2' AND p.run_id = 'demo-prod-c2'"
        " AND c.grader = 'python_tests' AND p.grader = 'python_tests'"
    )
    regression = by_name["No regression vs production"]
    assert diff is not None and regression.value == pytest.approx(diff[0])
    assert regression.verdict == "fail" and regression.threshold == -0.02
    frozen_before = demo_store.fetch_one("SELECT count(*) FROM audit_log")
    cycle_monitoring(demo_store, DEMO, plan)
    assert demo_store.fetch_one("SELECT count(*) FROM audit_log") == frozen_before

    assert [records[c].status for c in (1, 2, 3, 4)] == [
        "shipped",
        "rejected",
        "dataset built",
        "planned",
    ]
    assert records[2].deviations == [
        "gate 'No regression vs production' failed",
        "A/B says roll back",
    ]
    assert records[3].deviations == ["A/B sample ratio mismatch"]
    assert records[3].gates is None  # cycle 3's fine-tuning job is still running
    empty = records[5]
    assert (empty.actuals, empty.run_id, empty.funnel, empty.dataset, empty.gates, empty.ab) == (
        None,
        None,
        (),
        None,
        None,
        None,
    )
    assert empty.deviations == []


def test_a_lift_interval_below_zero_is_a_deviation() -> None:
    from core.monitoring import CycleRecord, LiftFigures

    lift = LiftFigures(
        metric="acceptance_rate",
        method="sequential",
        higher_is_better=True,
        lift=-0.2,
        ci=(-0.3, -0.1),
        p_value=0.001,
        users_control=500,
        users_treatment=500,
        verdict="stop_no_effect",
        srm_mismatch=False,
    )
    record = CycleRecord(cycle=1, start=date(2027, 1, 1), end=date(2027, 2, 1), ab=lift)
    assert record.deviations == ["A/B lift interval below zero"]
    worse_is_lower = replace(lift, higher_is_better=False, lift=0.2, ci=(0.1, 0.3))
    assert replace(record, ab=worse_is_lower).deviations == ["A/B lift interval below zero"]
    assert replace(record, ab=replace(lift, ci=(-0.3, 0.1))).deviations == []


def test_cycle_monitoring_on_a_plan_that_has_not_run(store: Store) -> None:
    plan = starter_plan("python_coding_assistant")
    plan_id, _ = save_plan_version(store, plan, note="p", user=local_operator())
    records = cycle_monitoring(store, plan_id, plan)
    assert [r.cycle for r in records] == [c.cycle for c in plan_timeline(plan)]
    assert {r.status for r in records} == {"planned"}


def test_coverage_gaps_name_the_empty_the_thin_and_what_traffic_asks_more_of(
    demo_store: Store,
) -> None:
    from core.monitoring import coverage_gaps

    plan, _ = load_plan(demo_store, DEMO)
    version, composition = demo_store.fetch_one(
        "SELECT version_id, composition FROM dataset_versions WHERE plan_id = ?"
        " ORDER BY created_at DESC, version_id DESC LIMIT 1",
        [DEMO],
    ) or ("", "{}")
    cells = json.loads(composition)["cells"]
    emptied, thinned = cells[0], cells[1]
    emptied.update(production=0, synthetic=0)
    thinned.update(production=1, synthetic=0)
    with demo_store.transaction() as con:
        con.execute(
            "UPDATE dataset_versions SET composition = ? WHERE version_id = ?",
            [json.dumps({**json.loads(composition), "cells": cells}), version],
        )
        # A surge of traffic on one cell that the dataset holds no more of than before.
        con.execute(
            "INSERT INTO interactions SELECT * REPLACE ('surge-' || interaction_id AS"
            " interaction_id, 'testing' AS topic, 'beginner' AS difficulty)"
            " FROM interactions LIMIT 5000"
        )
    coverage = coverage_gaps(demo_store, DEMO, plan)
    assert coverage.version_id == version and coverage.cells == 21
    found = {(tuple(sorted(g.where.items())), g.kind) for g in coverage.gaps}
    assert (tuple(sorted(emptied["cell"].items())), "empty") in found
    assert (tuple(sorted(thinned["cell"].items())), "thin") in found
    surge = next(
        g
        for g in coverage.gaps
        if g.kind == "under-represented"
        and g.where == {"topic": "testing", "difficulty": "beginner"}
    )
    labelled, on_cell = demo_store.fetch_one(
        "SELECT count(*), count(*) FILTER (topic = 'testing' AND difficulty = 'beginner')"
        " FROM interactions WHERE topic IS NOT NULL AND difficulty IS NOT NULL"
    ) or (0, 0)
    assert surge.traffic_share == pytest.approx(on_cell / labelled)
    rows = sum(int(c["production"]) + int(c["synthetic"]) for c in cells)
    assert surge.traffic_share is not None and surge.dataset_share is not None
    assert surge.dataset_share == pytest.approx(surge.dataset_rows / rows)
    assert surge.traffic_share >= 1.5 * surge.dataset_share


def test_coverage_gaps_wait_for_a_dataset(store: Store) -> None:
    from core.monitoring import coverage_gaps

    plan = starter_plan("python_coding_assistant")
    plan_id, _ = save_plan_version(store, plan, note="p", user=local_operator())
    coverage = coverage_gaps(store, plan_id, plan)
    assert coverage.version_id is None and coverage.gaps == [] and coverage.cells == 21


def test_off_plan_names_the_checks_that_fell_short_then_what_went_wrong(
    demo_store: Store,
) -> None:
    """One rule for every reader: a cycle is off plan where its primary metric or cost
    reduction falls short of the plan by more than the tolerance, or where a gate failed, a
    decision went against the gates or the A/B test harmed the metric."""
    from core.monitoring import off_plan, plan_vs_actual

    plan, _ = load_plan(demo_store, DEMO)
    records = cycle_monitoring(demo_store, DEMO, plan)
    lenient = off_plan(plan, records, tolerance=0.99)
    assert lenient == {r.cycle: r.deviations for r in records}
    strict = off_plan(plan, records, tolerance=-1000.0)  # any actual counts as short
    checks = plan_vs_actual(plan, [r.actuals for r in records if r.actuals], tolerance=-1000.0)
    for record in records:
        short = [
            f"{d.metric} {d.actual:.2f} vs {d.planned:.2f} planned"
            for d in checks
            if d.cycle == record.cycle and d.actual is not None
        ]
        assert strict[record.cycle] == short + record.deviations
    assert any(strict[r.cycle][:1] for r in records if r.actuals)
