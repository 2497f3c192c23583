"""Retention deletes expired raw interactions, keeps their daily metrics, and is safe to rerun."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cli_helpers import run_cli

from core.access import AccessError, User
from core.plan_versions import load_plan
from core.retention import enforce_retention, raw_text_retention_days
from core.store import Store

CRON = User("cron", frozenset({"ml_lead"}))
VIEWER = User("Val", frozenset({"viewer"}))
TOTALS = (
    "SELECT count(*), count(*) FILTER (WHERE feedback = 'up'), coalesce(sum(cost_usd), 0)"
    " FROM interactions WHERE ts < ?"
)
KEPT = (
    "SELECT coalesce(sum(interactions), 0), coalesce(sum(thumbs_up), 0),"
    " coalesce(sum(cost_usd), 0) FROM interaction_daily_metrics"
)


def test_expired_rows_go_and_their_metrics_stay(demo_store: Store) -> None:
    plan, _ = load_plan(demo_store, "python-coding-assistant")
    assert raw_text_retention_days(plan) == 90  # prompt and response: free text, 90 days
    newest = demo_store.fetch_one("SELECT max(ts), min(ts) FROM interactions")
    assert newest is not None
    latest, earliest = newest
    now = earliest + timedelta(days=91, hours=12)  # expires the first day or two only
    cutoff = now - timedelta(days=90)
    before = demo_store.fetch_one(TOTALS, [cutoff])
    remaining = demo_store.fetch_one("SELECT count(*) FROM interactions WHERE ts >= ?", [cutoff])
    assert before is not None and before[0] > 0

    dry = enforce_retention(demo_store, plan, user=VIEWER, now=now, dry_run=True)
    assert dry.interactions_deleted == before[0]
    assert demo_store.fetch_one(TOTALS, [cutoff]) == before  # a dry run deletes nothing
    with pytest.raises(AccessError, match=r"may not enforce data retention"):
        enforce_retention(demo_store, plan, user=VIEWER, now=now)
    assert demo_store.fetch_one(TOTALS, [cutoff]) == before  # nor does a refused run

    result = enforce_retention(demo_store, plan, user=CRON, now=now)
    assert result.interactions_deleted == before[0]
    assert demo_store.fetch_one(TOTALS, [cutoff])[0] == 0  # type: ignore[index]
    assert demo_store.fetch_one("SELECT count(*) FROM interactions") == remaining
    kept = demo_store.fetch_one(KEPT)
    assert kept is not None and kept[0] == before[0] and kept[1] == before[1]
    assert abs(kept[2] - before[2]) < 1e-9

    again = enforce_retention(demo_store, plan, user=CRON, now=now)
    assert again.interactions_deleted == 0
    assert demo_store.fetch_one(KEPT) == kept  # rerunning adds nothing
    audit = demo_store.fetch_all("SELECT actor FROM audit_log WHERE action = 'retention.enforce'")
    assert audit == [("cron",)]
    assert latest > cutoff


def test_cli_is_schedulable(demo_store: Store) -> None:
    env = {"FLYWHEEL_DB": str(demo_store.path)}
    far = (datetime.now(UTC) + timedelta(days=3650)).date().isoformat()
    run = run_cli("store", "retention", "--now", far, "--json", env=env)
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["interactions_deleted"] > 0 and payload["retention_days"] == 90
    assert demo_store.fetch_one("SELECT count(*) FROM interactions") == (0,)
    bad = run_cli("store", "retention", "--now", "soon", env=env)
    assert bad.returncode == 2 and "ISO" in bad.stderr
