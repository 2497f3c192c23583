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
    erasure_hash,
    erasure_key,
    forget_user,
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


def _victims_workspace(store: Store, tmp_path: Path, victim: str) -> None:
    """The victim's interactions (one with a distinctive phrase), a keeper's, a broken line of
    the victim in the quarantine and an eval item built from the victim's question."""
    rows = [interaction(f"v{n}", victim, "2027-01-10T00:00:00Z") for n in range(3)]
    rows[0]["prompt"] = "mail me at victim@example.com"
    rows[1]["prompt"] = PHRASE
    rows += [interaction(f"k{n}", "keeper", "2027-01-10T00:00:00Z") for n in range(2)]
    load(
        store, tmp_path, "events.jsonl", [event(victim, "2027-01-01T00:00:00Z", "grant")], "consent"
    )
    load(store, tmp_path, "log.jsonl", rows, "interactions")
    # A quarantined line of the victim, broken enough that it has no parsed user_id.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(f'{{"interaction_id": "v9", "user_id": "{victim}", "ts": \n')
    ingest_file(store, broken, user=local_operator())
    items = [
        {"item_id": "from-victim", "eval_set": "prod", "prompt": f"Answer this: {PHRASE}"},
        {"item_id": "kept", "eval_set": "prod", "prompt": "An unrelated question about sorting."},
    ]
    load(store, tmp_path, "items.jsonl", items, "eval-items")


PHRASE = "my quokka named Bartholomew-Zynx lives in Wollongong"


def test_forget_leaves_no_trace_and_audits_a_keyed_hash(store: Store, tmp_path: Path) -> None:
    victim = "user-7f3a9c"
    _victims_workspace(store, tmp_path, victim)
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
    assert result.eval_items_deleted == 1
    assert result.rows_deleted["quarantine"] == 1
    leftovers = [
        t
        for t in _every_text_value(store)
        if victim in t[2] or "victim@" in t[2] or "quokka" in t[2]
    ]
    assert leftovers == []
    assert store.fetch_one("SELECT count(*) FROM interactions") == (2,)
    assert store.fetch_one("SELECT count(*) FROM dataset_rows_later") == (2,)
    assert store.fetch_all("SELECT item_id FROM eval_items") == [("kept",)]
    # The hash is keyed by a secret kept outside the store: a key file beside it, 0600.
    key_file = Path(f"{store.path}.audit-key")
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = erasure_key(store)
    assert key.decode() not in "".join(v for _, _, v in _every_text_value(store))
    audit = store.fetch_one("SELECT target, detail FROM audit_log WHERE action = 'forget'")
    assert audit is not None and audit[0] == "user:" + erasure_hash(key, victim)
    assert store.fetch_one("SELECT count(*) FROM workspace WHERE key = 'erasure_salt'") == (0,)

    with pytest.raises(ConsentError, match="already forgotten"):
        forget_user(store, victim, by=local_operator())
    with pytest.raises(ConsentError, match="holds nothing"):
        forget_user(store, "never-seen", by=local_operator())
    assert store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'forget'") == (1,)


def _store_bytes(store: Store) -> bytes:
    wal = Path(f"{store.path}.wal")
    return store.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_forget_leaves_no_byte_of_the_user_in_the_store_file(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB neither zeroes the blocks of deleted rows nor shrinks the file at a checkpoint:
    without the rewrite, the id and the text stay readable in the file's bytes."""
    victim = "user-7f3a9c"
    monkeypatch.setenv("FLYWHEEL_AUDIT_KEY", "a-key-from-the-secrets-manager")
    _victims_workspace(store, tmp_path, victim)
    with store.connect() as con:
        con.execute("CHECKPOINT")
    before = _store_bytes(store)
    assert victim.encode() in before and b"Bartholomew-Zynx" in before

    forget_user(store, victim, by=local_operator())
    # Later writes and checkpoints do not bring anything back either.
    load(
        store,
        tmp_path,
        "more.jsonl",
        [interaction("k9", "keeper", "2027-01-11T00:00:00Z")],
        "interactions",
    )
    with store.connect() as con:
        con.execute("CHECKPOINT")
    after = _store_bytes(store)
    for trace in (victim, "Bartholomew-Zynx", "victim@example.com", "a-key-from-the-secrets"):
        assert after.find(trace.encode()) == -1, f"{trace!r} is still in the store file"
    assert not Path(f"{store.path}.audit-key").exists()  # the configured key is used instead
    assert store.fetch_one("SELECT count(*) FROM interactions") == (3,)
    assert [p.name for p in store.path.parent.iterdir() if "rewrite" in p.name] == []


def test_forget_lists_exports_backups_and_models_beyond_the_store(
    store: Store, tmp_path: Path
) -> None:
    from core.audit import record_audit

    victim = "user-7f3a9c"
    _victims_workspace(store, tmp_path, victim)
    store.execute(
        "INSERT INTO dataset_versions VALUES ('ds-1', 'p', 1, 1, 1, NULL, 'run', 'sha', 1, 1, 0,"
        " 1, 0, '{}', '{}', 'me', now()), ('ds-2', 'p', 1, 2, 1, NULL, 'run', 'sha', 1, 1, 0,"
        " 1, 0, '{}', '{}', 'me', now())"
    )
    store.execute(
        "INSERT INTO dataset_texts SELECT interaction_id, md5(prompt || chr(31) || response),"
        " interaction_id, user_id, prompt, response FROM interactions"
    )
    store.execute(
        "INSERT INTO dataset_members SELECT 'ds-1', interaction_id, 'production', interaction_id,"
        " user_id, '{}', 'train', NULL, md5(interaction_id), 1, 'ds-1',"
        " md5(prompt || chr(31) || response), NULL FROM interactions"
    )
    store.execute(
        "INSERT INTO dataset_members SELECT 'ds-2', interaction_id, 'production', interaction_id,"
        " user_id, '{}', 'train', NULL, md5(interaction_id), 1, 'ds-1',"
        " md5(prompt || chr(31) || response), NULL FROM interactions WHERE user_id = 'keeper'"
    )
    for job, version, model in [("ftjob-1", "ds-1", "ft:student:1"), ("ftjob-2", "ds-2", "x")]:
        store.execute(
            "INSERT INTO training_jobs (job_id, plan_id, cycle, dataset_version, export_path,"
            " export_sha256, export_rows, training_file_id, base_model, hyperparameters,"
            " endpoint, status, fine_tuned_model, created_at, updated_at, actor) VALUES (?, 'p',"
            " 1, ?, ?, 'sha', 3, 'file', 'base', '{}', 'http://h', 'succeeded', ?, now(), now(),"
            " 'me')",
            [job, version, f"data/exports/{version}.jsonl", model],
        )
    with store.transaction() as con:
        record_audit(
            con,
            actor="me",
            action="dataset.export",
            target="dataset:ds-1",
            detail={"path": "/shared/ds-1-train.jsonl"},
        )
        record_audit(con, actor="ops", action="store.backup", target="/backups/monday")

    result = forget_user(store, victim, by=local_operator())
    assert result.dataset_versions == ["ds-1"]
    assert [(m["job_id"], m["fine_tuned_model"]) for m in result.models] == [
        ("ftjob-1", "ft:student:1")
    ]
    assert {e["path"] for e in result.exports} == {
        "/shared/ds-1-train.jsonl",
        "data/exports/ds-1.jsonl",
    }
    assert [b["target"] for b in result.backups] == ["/backups/monday"]
    assert set(result.to_dict()) >= {"exports", "backups", "models", "dataset_versions"}


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
