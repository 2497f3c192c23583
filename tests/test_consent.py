"""Consent eligibility at its boundaries, and erasure that leaves no trace."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from core.access import User, local_operator
from core.consent import (
    consent_counts,
    consent_rate_over_time,
    consented_since_sql,
    count_eligible,
    eligible_interactions_sql,
    forget_user,
    salted_hash,
    user_consent,
)
from core.errors import ConsentError
from core.ingest import ingest_file
from core.store import Store


def load(store: Store, tmp_path: Path, name: str, rows: list[dict[str, Any]], kind: str) -> None:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = ingest_file(store, path, kind=kind, user=local_operator())  # type: ignore[arg-type]
    assert result.rejected == 0, result


def interaction(iid: str, user: str, ts: str) -> dict[str, Any]:
    return {
        "interaction_id": iid,
        "ts": ts,
        "user_id": user,
        "variant": "control",
        "model": "m",
        "prompt": f"question {iid} from {user}",
        "response": "answer",
    }


def event(user: str, ts: str, action: str, scope: str = "training") -> dict[str, Any]:
    return {
        "user_id": user,
        "ts": ts,
        "scope": scope,
        "action": action,
        "policy_version": "2026-11",
        "source": "settings",
    }


def eligible(store: Store) -> set[str]:
    return {
        r[0] for r in store.fetch_all(f"SELECT interaction_id FROM ({eligible_interactions_sql()})")
    }


def test_eligibility_rule_at_its_boundaries(store: Store, tmp_path: Path) -> None:
    t = "2027-01-10T12:00:00Z"
    rows = [
        interaction("no-record", "nobody", t),
        interaction("granted-before", "ana", t),
        interaction("granted-same-instant", "bo", t),
        interaction("granted-after", "cy", t),
        interaction("tie-withdraw-wins", "di", t),
        interaction("withdrawn-later", "ed", t),
        interaction("regranted", "fa", t),
        interaction("other-scope-only", "gu", t),
        interaction("before-withdrawal", "ha", "2027-01-05T00:00:00Z"),
        interaction("after-withdrawal", "ha", "2027-01-20T00:00:00Z"),
    ]
    events = [
        event("ed", "2027-01-15T00:00:00Z", "withdraw"),  # out of order on purpose
        event("ana", "2027-01-01T00:00:00Z", "grant"),
        event("bo", t, "grant"),
        event("cy", "2027-01-11T00:00:00Z", "grant"),
        event("di", "2027-01-01T00:00:00Z", "grant"),
        event("di", "2027-01-01T00:00:00Z", "withdraw"),
        event("ed", "2027-01-01T00:00:00Z", "grant"),
        event("fa", "2027-01-01T00:00:00Z", "withdraw"),
        event("fa", "2027-01-02T00:00:00Z", "grant"),
        event("gu", "2027-01-01T00:00:00Z", "grant", scope="analytics"),
        event("ha", "2027-01-01T00:00:00Z", "grant"),
        event("ha", "2027-01-10T00:00:00Z", "withdraw"),
    ]
    load(store, tmp_path, "events.jsonl", events, "consent")
    load(store, tmp_path, "log.jsonl", rows, "interactions")
    assert eligible(store) == {"granted-before", "granted-same-instant", "regranted"}
    assert count_eligible(store) == 3


def test_events_in_any_order_give_the_same_answer(store: Store, tmp_path: Path) -> None:
    rows = [interaction(f"i{n}", f"u{n % 4}", f"2027-02-0{n % 9 + 1}T00:00:00Z") for n in range(12)]
    events = [
        event("u0", "2027-01-01T00:00:00Z", "grant"),
        event("u1", "2027-01-01T00:00:00Z", "grant"),
        event("u1", "2027-02-03T00:00:00Z", "withdraw"),
        event("u2", "2027-02-04T00:00:00Z", "grant"),
    ]
    load(store, tmp_path, "e1.jsonl", list(reversed(events)), "consent")
    load(store, tmp_path, "log.jsonl", rows, "interactions")
    # u0 granted before everything; u1's later withdrawal revokes all; u2 granted on 4 Feb,
    # so only its interaction of 7 Feb counts; u3 has no record.
    assert eligible(store) == {"i0", "i4", "i8", "i6"}


def test_ledger_views(store: Store, tmp_path: Path) -> None:
    events = [
        event("a", "2027-01-01T09:00:00Z", "grant"),
        event("b", "2027-01-01T09:00:00Z", "grant"),
        event("b", "2027-01-02T09:00:00Z", "withdraw"),
        event("c", "2027-01-02T09:00:00Z", "grant", scope="analytics"),
    ]
    load(store, tmp_path, "events.jsonl", events, "consent")
    counts = {(r["scope"], r["action"]): r["users"] for r in consent_counts(store)}
    assert counts == {
        ("training", "grant"): 2,
        ("training", "withdraw"): 1,
        ("analytics", "grant"): 1,
    }
    rate = consent_rate_over_time(store)
    assert [(str(r["day"]), r["granted"], r["users"]) for r in rate] == [
        ("2027-01-01", 2, 2),
        ("2027-01-02", 1, 2),
    ]
    lookup = user_consent(store, "b")
    assert lookup["state"]["training"] == "withdrawn"
    assert lookup["state"]["analytics"].startswith("no record")


def _every_text_value(store: Store) -> list[tuple[str, str, str]]:
    """(table, column, value) for every VARCHAR, JSON or VARCHAR[] value in the store."""
    columns = store.fetch_all(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND (data_type LIKE 'VARCHAR%' OR data_type = 'JSON')"
    )
    found = []
    for table, column, _ in columns:
        for (value,) in store.fetch_all(f'SELECT CAST("{column}" AS VARCHAR) FROM "{table}"'):
            if value is not None:
                found.append((table, column, value))
    return found


def test_forget_leaves_no_trace_and_audits_a_salted_hash(store: Store, tmp_path: Path) -> None:
    victim = "user-7f3a9c"
    rows = [interaction(f"v{n}", victim, "2027-01-10T00:00:00Z") for n in range(3)]
    rows[0]["prompt"] = "mail me at victim@example.com"
    rows += [interaction(f"k{n}", "keeper", "2027-01-10T00:00:00Z") for n in range(2)]
    load(
        store, tmp_path, "events.jsonl", [event(victim, "2027-01-01T00:00:00Z", "grant")], "consent"
    )
    load(store, tmp_path, "log.jsonl", rows, "interactions")
    # A quarantined line of the victim, broken enough that it has no parsed user_id.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(f'{{"interaction_id": "v9", "user_id": "{victim}", "ts": \n')
    ingest_file(store, broken, user=local_operator())
    # A table added later (e.g. another copy of dataset rows) is covered without code changes.
    store.execute(
        "CREATE TABLE dataset_rows_later (dataset_version INTEGER, interaction_id VARCHAR,"
        " text VARCHAR)"
    )
    store.execute(
        "INSERT INTO dataset_rows_later SELECT 1, interaction_id, prompt FROM interactions"
    )
    assert any(victim in v for _, _, v in _every_text_value(store))

    result = forget_user(store, victim, by=User("privacy officer", frozenset({"privacy_reviewer"})))
    assert result.interactions_deleted == 3
    assert result.dataset_rows_deleted == 3
    assert result.rows_deleted["quarantine"] == 1
    leftovers = [t for t in _every_text_value(store) if victim in t[2] or "victim@" in t[2]]
    assert leftovers == []
    assert store.fetch_one("SELECT count(*) FROM interactions") == (2,)
    assert store.fetch_one("SELECT count(*) FROM dataset_rows_later") == (2,)
    salt = store.fetch_one("SELECT value FROM workspace WHERE key = 'erasure_salt'")
    assert salt is not None
    audit = store.fetch_one("SELECT target, detail FROM audit_log WHERE action = 'forget'")
    assert audit is not None and audit[0] == "user:" + salted_hash(str(salt[0]), victim)

    with pytest.raises(ConsentError, match="already forgotten"):
        forget_user(store, victim, by=local_operator())
    with pytest.raises(ConsentError, match="holds nothing"):
        forget_user(store, "never-seen", by=local_operator())
    assert store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'forget'") == (1,)


def test_demo_holds_interactions_consent_and_quarantine(demo_store: Store) -> None:
    from core.demo import load_demo

    summary = load_demo(demo_store)
    counted = demo_store.fetch_one("SELECT count(*) FROM interactions")
    assert counted is not None and summary.interactions == counted[0] > 2000
    cycles = demo_store.fetch_all("SELECT DISTINCT cycle FROM interactions ORDER BY 1")
    assert cycles == [(1,), (2,), (3,)]
    assert demo_store.fetch_one("SELECT count(*) > 0 FROM quarantine") == (True,)
    assert demo_store.fetch_one("SELECT count(DISTINCT pii_type) >= 5 FROM pii_counts") == (True,)
    assert 0 < count_eligible(demo_store) < counted[0]
    sources = {r[0] for r in demo_store.fetch_all("SELECT DISTINCT source FROM consent_events")}
    assert {"eu-settings", "us-onboarding-notice"} <= sources


def _random_ledger(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded users with a few grants and withdrawals each (ties on the same instant and
    events in any order included) and interactions spread over the same days."""
    rng = random.Random(seed)
    moments = [f"2027-01-{d:02d}T{h:02d}:00:00Z" for d in range(1, 15) for h in (0, 12)]
    users = [f"u{n}" for n in range(30)]
    events = [
        event(user, rng.choice(moments), rng.choice(["grant", "grant", "withdraw"]), scope)
        for user in users
        for _ in range(rng.randrange(5))
        for scope in [rng.choice(["training", "training", "analytics"])]
    ]
    rng.shuffle(events)
    rows = [interaction(f"i{n}", rng.choice(users), rng.choice(moments)) for n in range(300)]
    return events, rows


def test_consented_since_is_the_eligibility_rule(store: Store, tmp_path: Path) -> None:
    events, rows = _random_ledger(11)
    load(store, tmp_path, "events.jsonl", events, "consent")
    load(store, tmp_path, "log.jsonl", rows, "interactions")
    since = {
        r[0]
        for r in store.fetch_all(
            f"SELECT i.interaction_id FROM interactions i JOIN ({consented_since_sql()}) c"
            " ON c.user_id = i.user_id AND i.ts >= c.since",
            {"scope": "training"},
        )
    }
    assert since == eligible(store)
    assert 0 < count_eligible(store) == len(since) < len(rows)


def test_consent_rate_over_time_follows_each_users_latest_event(
    store: Store, tmp_path: Path
) -> None:
    events, _ = _random_ledger(12)
    load(store, tmp_path, "events.jsonl", events, "consent")
    # The definition, day by day: every user's latest event by the end of the day.
    expected = store.fetch_dicts(
        "WITH days AS (SELECT unnest(generate_series(min(ts)::DATE, max(ts)::DATE,"
        " INTERVAL 1 DAY))::DATE AS day FROM consent_events WHERE scope = 'training'),"
        " state AS (SELECT d.day, e.user_id, arg_max(e.action = 'grant',"
        " (e.ts, e.action = 'withdraw')) AS granted FROM days d JOIN consent_events e"
        " ON e.scope = 'training' AND e.ts < d.day + INTERVAL 1 DAY GROUP BY d.day, e.user_id)"
        " SELECT day, count(*) AS users, count(*) FILTER (WHERE granted) AS granted,"
        " count(*) FILTER (WHERE granted) / count(*) AS rate FROM state GROUP BY day ORDER BY day"
    )
    assert len(expected) > 10
    assert consent_rate_over_time(store, "training") == expected
