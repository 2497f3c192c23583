"""Cycles that build on each other: each dataset version carries its parent's rows forward,
checked again, and a cycle's new rows are deduplicated against them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cycle_helpers import build_workspace, cycle_plan, interaction, withdraw_consent
from test_cycles import assert_funnel_reconciles

from core.access import User, local_operator
from core.backup import backup_store, restore_store
from core.cli import main
from core.consent import forget_user
from core.cycles import run_cycle, why_dropped
from core.datasets import compare_versions, export_dataset, get_version, version_digest
from core.errors import ThinCycleError
from core.plan import FieldCondition, Plan
from core.plan_versions import load_plan, save_plan_version
from core.signoffs import record_decision
from core.store import Store

CYCLE3_DAY = datetime(2027, 2, 10, 9, tzinfo=UTC)  # inside cycle 3's window of the starter


def later(n: int, day: datetime = CYCLE3_DAY, **fields: Any) -> dict[str, Any]:
    """A row of a later cycle's window: its own id, text and time."""
    row = interaction(n, **fields)
    row["interaction_id"] = f"n-{n:03d}"
    row["ts"] = (day + timedelta(minutes=n)).isoformat()
    if "prompt" not in fields:
        row["prompt"] = f"How do I merge dictionaries number {n} when keys {n * 3} collide?"
    if "response" not in fields:
        row["response"] = f"Use {{**a, **b}} so that b{n} wins, or a ChainMap for view {n}."
    return row


def workspace(
    store: Store, tmp: Path, new_rows: list[dict[str, Any]] | None = None, **cadence: Any
) -> str:
    """Cycle 2's window holds i-000…i-019 (u-3's without consent), cycle 3's n-100…n-111."""
    rows = [interaction(n) for n in range(20)]
    rows += new_rows if new_rows is not None else [later(n) for n in range(100, 112)]
    return build_workspace(store, tmp, rows, plan=cycle_plan(**cadence))


def production_keys(store: Store, version: str) -> dict[str, tuple[int, str, str]]:
    """row_key → (origin cycle, origin version, split) of a version's production rows."""
    return {
        str(k): (int(c), str(o), str(s))
        for k, c, o, s in store.fetch_all(
            "SELECT row_key, origin_cycle, origin_version, split FROM dataset_rows"
            " WHERE version_id = ? AND source = 'production'",
            [version],
        )
    }


def removed(store: Store, run_id: str) -> dict[str, tuple[str, str, str]]:
    return {
        str(i): (str(s), str(r), str(d))
        for i, s, r, d in store.fetch_all(
            "SELECT interaction_id, stage, rule, detail FROM cycle_removed_rows WHERE run_id = ?",
            [run_id],
        )
    }


def new_plan_version(store: Store, plan_id: str, change: Any) -> None:
    """Save a new version of the plan (``change`` edits it) and have it signed off."""
    plan, _ = load_plan(store, plan_id)
    edited: Plan = plan.model_copy(deep=True)
    change(edited)
    _, version = save_plan_version(
        store, edited, note="edit", user=local_operator(), plan_id=plan_id
    )
    reviewer = User("Priya", frozenset({"privacy_reviewer"}))
    record_decision(
        store, plan_id, version, role="privacy_reviewer", user=reviewer, decision="approve"
    )


def test_carried_rows_survive_with_their_provenance_and_split(store: Store, tmp_path: Path) -> None:
    plan_id = workspace(store, tmp_path)
    second = run_cycle(store, plan_id, 2, user=local_operator())
    third = run_cycle(store, plan_id, 3, user=local_operator())
    before = production_keys(store, second.dataset_version)
    after = production_keys(store, third.dataset_version)
    assert before and set(before) <= set(after)
    for key, (_origin, _version, split) in before.items():
        assert after[key] == (2, second.dataset_version, split)  # never moves train↔validation
    new = {k for k, (origin, _v, _s) in after.items() if origin == 3}
    assert new and all(k.startswith("n-") for k in new)
    assert third.rows > second.rows  # the dataset grows
    carried = third.stages[0]
    assert (carried.name, carried.rows_in, carried.rows_out) == (
        "carried",
        second.rows,
        second.rows,
    )
    assert get_version(store, third.dataset_version).parent_version == second.dataset_version
    assert_funnel_reconciles(third.stages)
    by_origin = get_version(store, third.dataset_version).composition["by_origin"]
    assert {(o["source"], o["origin_cycle"]) for o in by_origin} >= {
        ("production", 2),
        ("production", 3),
    }
    assert sum(o["rows"] for o in by_origin) == third.rows
    # `cycle why` says where a carried row came from.
    key = next(iter(before))
    answer = why_dropped(store, key, plan_id=plan_id)[0]
    assert answer["outcome"] == "kept" and f"carried from {second.dataset_version}" in answer["why"]


def test_an_unchanged_rerun_builds_nothing_new(store: Store, tmp_path: Path) -> None:
    plan_id = workspace(store, tmp_path)
    run_cycle(store, plan_id, 2, user=local_operator())
    first = run_cycle(store, plan_id, 3, user=local_operator())
    again = run_cycle(store, plan_id, 3, user=local_operator())
    assert first.new_version and not again.new_version
    assert (again.dataset_version, again.sha256) == (first.dataset_version, first.sha256)


def test_a_withdrawal_since_the_parent_removes_carried_rows(store: Store, tmp_path: Path) -> None:
    plan_id = workspace(store, tmp_path)
    second = run_cycle(store, plan_id, 2, user=local_operator())
    withdraw_consent(store, tmp_path, "u-1", "2027-02-20T00:00:00Z")
    third = run_cycle(store, plan_id, 3, user=local_operator())
    u1 = {k for k in production_keys(store, second.dataset_version) if int(k[2:]) % 4 == 1}
    assert u1
    reasons = removed(store, third.run_id)
    for key in u1:
        stage, rule, detail = reasons[key]
        assert (stage, rule) == ("carried", "consent")
        assert detail.startswith(f"carried from {second.dataset_version}: training consent")
    assert not u1 & set(production_keys(store, third.dataset_version))
    assert third.stages[0].removed >= len(u1)
    diff = compare_versions(store, second.dataset_version, third.dataset_version)
    assert diff.rechecked == len(u1) and diff.removed == len(u1)


def test_an_erased_users_carried_rows_are_gone(store: Store, tmp_path: Path) -> None:
    plan_id = workspace(store, tmp_path)
    second = run_cycle(store, plan_id, 2, user=local_operator())
    u2 = {k for k in production_keys(store, second.dataset_version) if int(k[2:]) % 4 == 2}
    assert u2
    forget_user(store, "u-2", by=User("Priya", frozenset({"privacy_reviewer"})))
    assert not store.fetch_all("SELECT * FROM dataset_row_sketches WHERE user_id = 'u-2'")
    third = run_cycle(store, plan_id, 3, user=local_operator())
    assert not u2 & set(production_keys(store, third.dataset_version))
    assert third.stages[0].params["erased"] == len(u2)
    assert third.stages[0].rows_in - third.stages[0].rows_out == len(u2)


def test_a_tightened_filter_removes_old_rows_with_its_reason(store: Store, tmp_path: Path) -> None:
    plan_id = workspace(store, tmp_path)
    second = run_cycle(store, plan_id, 2, user=local_operator())

    def only_testing(plan: Plan) -> None:
        plan.quality_filters.append(
            FieldCondition(field="topic", op="==", value="testing", expected_pass_rate=0.5)
        )

    new_plan_version(store, plan_id, only_testing)
    third = run_cycle(store, plan_id, 3, user=local_operator())
    odd = {k for k in production_keys(store, second.dataset_version) if int(k[2:]) % 2 == 1}
    assert odd  # file I/O rows: the new rule drops them
    reasons = removed(store, third.run_id)
    for key in odd:
        stage, rule, detail = reasons[key]
        assert (stage, rule) == ("carried", "field_condition")
        assert "topic" in detail and "not the one the parent version ran" in detail
    kept = production_keys(store, third.dataset_version)
    assert kept and not odd & set(kept)


def test_retention_retires_carried_rows_at_the_data_freeze(store: Store, tmp_path: Path) -> None:
    may = datetime(2027, 4, 10, 9, tzinfo=UTC)  # cycle 5's window: 90 days past January
    plan_id = workspace(store, tmp_path, [later(n, may) for n in range(100, 112)])
    second = run_cycle(store, plan_id, 2, user=local_operator())
    fifth = run_cycle(store, plan_id, 5, user=local_operator())
    reasons = removed(store, fifth.run_id)
    for key in production_keys(store, second.dataset_version):
        stage, rule, detail = reasons[key]
        assert (stage, rule) == ("carried", "retention") and "90 days" in detail
    assert all(o == 5 for o, _v, _s in production_keys(store, fifth.dataset_version).values())


def test_new_rows_duplicating_a_carried_row_are_removed_citing_it(
    store: Store, tmp_path: Path
) -> None:
    old = interaction(5)
    near = later(100, prompt=old["prompt"] + " please", response=old["response"])
    same = later(101, prompt="  " + old["prompt"].upper(), response=old["response"])
    plan_id = workspace(store, tmp_path, [near, same, *(later(n) for n in range(102, 112))])
    second = run_cycle(store, plan_id, 2, user=local_operator())
    third = run_cycle(store, plan_id, 3, user=local_operator())
    reasons = removed(store, third.run_id)
    assert reasons["n-101"][0] == "exact_dedup"
    assert reasons["n-101"][2] == f"exact duplicate of {second.dataset_version} row i-005"
    assert reasons["n-100"][0] == "near_dedup"
    assert reasons["n-100"][2].startswith(
        f"near-duplicate of {second.dataset_version} row i-005 (Jaccard"
    )
    assert "i-005" in production_keys(store, third.dataset_version)  # the carried row stays


def test_a_thin_cycle_builds_nothing_unless_forced(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_id = workspace(store, tmp_path, [later(n) for n in range(100, 103)], min_new_examples=4)
    run_cycle(store, plan_id, 2, user=local_operator())
    with pytest.raises(ThinCycleError, match="3 new production row"):
        run_cycle(store, plan_id, 3, user=local_operator())
    assert store.fetch_all("SELECT * FROM dataset_versions WHERE cycle = 3") == []
    assert store.fetch_all("SELECT * FROM cycle_runs WHERE cycle = 3") == []
    db = str(store.path)
    assert main(["cycle", "run", "--cycle", "3", "--db", db, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["built"] is False and "min_new_examples" in out["reason"]
    forced = run_cycle(store, plan_id, 3, user=local_operator(), force=True)
    assert forced.new_version and any("Built anyway" in w for w in forced.warnings)


@pytest.mark.parametrize("policy", ["oldest_first", "lowest_rated_first", "cell_balance"])
def test_the_cap_retires_rows_by_the_policy_with_reasons(
    store: Store, tmp_path: Path, policy: str
) -> None:
    new = [later(n, feedback="down" if n % 3 == 0 else "up") for n in range(100, 112)]
    plan_id = workspace(store, tmp_path, new)
    second = run_cycle(store, plan_id, 2, user=local_operator())
    carried = len(production_keys(store, second.dataset_version))

    def cap(plan: Plan) -> None:
        plan.cadence.max_dataset_size = 20
        plan.cadence.original_to_new_ratio = 0.25
        plan.cadence.retirement = policy  # type: ignore[assignment]

    new_plan_version(store, plan_id, cap)
    third = run_cycle(store, plan_id, 3, user=local_operator())
    kept = production_keys(store, third.dataset_version)
    assert len(kept) == 16 and third.rows == 20  # 20 / 1.25 production rows, 4 synthetic
    reasons = removed(store, third.run_id)
    retired = {k for k, (stage, _r, _d) in reasons.items() if stage == "mix"}
    production_retired = {k for k in retired if not k.startswith("syn:")}
    assert len(production_retired) > 0 and not production_retired & set(kept)
    for key in retired:
        _stage, rule, detail = reasons[key]
        assert rule == "max_dataset_size=20" and detail.startswith("retired ")
    if policy == "oldest_first":
        assert all(k.startswith("i-") for k in production_retired)  # cycle 2's go first
        assert all(o == 3 for k, (o, _v, _s) in kept.items() if k.startswith("n-"))
    elif policy == "lowest_rated_first":
        down = {f"n-{n:03d}" for n in range(100, 112) if n % 3 == 0}
        # Thumbs-down rows retire before any thumbs-up one does.
        assert down & production_retired and not down & set(kept)
    else:
        cells = store.fetch_all(
            "SELECT cell_key, count(*) FROM dataset_rows WHERE version_id = ?"
            " AND source = 'production' GROUP BY 1",
            [third.dataset_version],
        )
        counts = sorted(int(n) for _c, n in cells)
        assert len(counts) == 2 and counts[-1] - counts[0] <= 1
    diff = compare_versions(store, second.dataset_version, third.dataset_version)
    carried_retired = {k for k in retired if k.startswith(("i-", "syn:"))}
    assert diff.retired == len(carried_retired) and carried < len(kept) + len(production_retired)


def test_a_deleted_synthetic_item_leaves_the_carried_rows(store: Store, tmp_path: Path) -> None:
    plan_id = workspace(store, tmp_path)
    second = run_cycle(store, plan_id, 2, user=local_operator())
    synthetic = [
        str(k)
        for (k,) in store.fetch_all(
            "SELECT row_key FROM dataset_rows WHERE version_id = ? AND source = 'synthetic'"
            " ORDER BY row_key",
            [second.dataset_version],
        )
    ]
    assert synthetic
    _syn, spec, _cell, index = synthetic[0].split(":")
    with store.transaction() as con:
        con.execute(
            "UPDATE generated_examples SET status = 'invalid' WHERE spec_hash = ?"
            " AND item_index = ?",
            [spec, int(index)],
        )
    third = run_cycle(store, plan_id, 3, user=local_operator())
    stage, rule, detail = removed(store, third.run_id)[synthetic[0]]
    assert (stage, rule) == ("carried", "synthetic item") and "no longer a valid" in detail
    kept = {
        str(k)
        for (k,) in store.fetch_all(
            "SELECT row_key FROM dataset_rows WHERE version_id = ? AND source = 'synthetic'",
            [third.dataset_version],
        )
    }
    assert set(synthetic[1:]) <= kept and synthetic[0] not in kept


def test_carried_texts_are_checked_again_only_when_the_parent_used_other_detectors(
    store: Store, tmp_path: Path
) -> None:
    """A parent checked by today's PII detectors is carried as stored (its texts are not read
    again); one checked by other detectors has its rows of older batches checked again, and the
    next version stores the redaction and counts it."""
    plan_id = workspace(store, tmp_path)
    # Batches redacted by older detectors; cycle 2 (today's detectors) redacts i-001 again.
    store.execute("UPDATE ingest_batches SET pii_detectors = 'older' WHERE kind = 'interactions'")
    with store.transaction() as con:
        con.execute(
            "UPDATE interactions SET prompt = prompt || ' mail me at jo@example.com'"
            " WHERE interaction_id = 'i-001'"
        )
    second = run_cycle(store, plan_id, 2, user=local_operator())

    def carried_prompt(version: str) -> str:
        (prompt,) = store.fetch_one(
            "SELECT prompt FROM dataset_rows WHERE version_id = ? AND row_key = 'i-001'",
            [version],
        ) or ("",)
        return str(prompt)

    assert "<EMAIL>" in carried_prompt(second.dataset_version)
    # Cycle 3 carries cycle 2's checked texts as they are stored: nothing is redacted again.
    third = run_cycle(store, plan_id, 3, user=local_operator())
    assert third.stages[0].params["texts_redacted_again"] == 0
    assert carried_prompt(third.dataset_version) == carried_prompt(second.dataset_version)
    # Had cycle 2 used other detectors, its rows are checked again and the redaction counted.
    (lineage,) = store.fetch_one(
        "SELECT lineage FROM dataset_versions WHERE version_id = ?", [second.dataset_version]
    ) or ("",)
    older = {**json.loads(lineage), "pii_detectors": "other"}
    store.execute(
        "UPDATE dataset_versions SET lineage = ? WHERE version_id = ?",
        [json.dumps(older), second.dataset_version],
    )
    # ...and stored the text unredacted (cycle 3's version, which inherits cycle 2's stored
    # members, is set aside: it was built from the redacted text).
    with store.transaction() as con:
        for table in ("versions", "members", "version_bases", "member_drops"):
            con.execute(
                f"DELETE FROM dataset_{table} WHERE version_id = ?", [third.dataset_version]
            )
        con.execute(
            "INSERT INTO dataset_texts SELECT row_key, md5(p || chr(31) || response),"
            " interaction_id, user_id, p, response FROM (SELECT *, replace(prompt, '<EMAIL>',"
            " 'jo@example.com') AS p FROM dataset_texts WHERE row_key = 'i-001')"
        )
        con.execute(
            "UPDATE dataset_members SET text_md5 = t.text_md5 FROM dataset_texts t"
            " WHERE dataset_members.row_key = 'i-001' AND dataset_members.version_id = ?"
            " AND t.row_key = 'i-001' AND t.prompt LIKE '%jo@example.com%'",
            [second.dataset_version],
        )
    assert "jo@example.com" in carried_prompt(second.dataset_version)
    again = run_cycle(store, plan_id, 3, user=local_operator())
    assert again.stages[0].params["texts_redacted_again"] == 1
    assert "<EMAIL>" in carried_prompt(again.dataset_version)


def members_stored(store: Store, version: str) -> int:
    (n,) = store.fetch_one(
        "SELECT count(*) FROM dataset_members WHERE version_id = ?", [version]
    ) or (0,)
    return int(n)


def exported_digest(store: Store, version: str, out: Path) -> str:
    result = export_dataset(store, version, out, split="all")
    return version_digest(Path(result.path).read_bytes())


def test_a_version_that_carries_its_parent_stores_what_changed_and_reads_whole(
    store: Store, tmp_path: Path
) -> None:
    plan_id = workspace(store, tmp_path, [later(n) for n in range(100, 106)])
    second = run_cycle(store, plan_id, 2, user=local_operator())
    third = run_cycle(store, plan_id, 3, user=local_operator())
    # Written: the rows the parent did not hold; read: every row, the parent's as it held them.
    assert members_stored(store, third.dataset_version) < third.rows
    assert store.fetch_all("SELECT * FROM dataset_version_bases") == [
        (third.dataset_version, second.dataset_version)
    ]
    texts = "SELECT row_key, prompt, response, split FROM dataset_rows WHERE version_id = ?"
    parent_rows = set(store.fetch_all(texts, [second.dataset_version]))
    rows = set(store.fetch_all(texts, [third.dataset_version]))
    assert len(rows) == third.rows and parent_rows <= rows
    assert get_version(store, third.dataset_version).erased_rows == 0
    # Each version's hash is the digest of its export, however it is stored.
    for result in (second, third):
        digest = exported_digest(store, result.dataset_version, tmp_path / f"{result.cycle}.jsonl")
        assert digest == result.sha256
    # Erasure reaches the rows a version inherits: counted once per version holding them.
    held = store.fetch_all(
        "SELECT version_id, count(*) FROM dataset_rows WHERE user_id = 'u-2' GROUP BY 1"
    )
    assert {v for v, _ in held} == {second.dataset_version, third.dataset_version}
    erased = forget_user(store, "u-2", by=User("Priya", frozenset({"privacy_reviewer"})))
    assert erased.dataset_rows_deleted == sum(n for _, n in held)
    assert set(erased.dataset_versions) == {second.dataset_version, third.dataset_version}
    assert not store.fetch_all("SELECT * FROM dataset_rows WHERE user_id = 'u-2'")
    lost = sum(n for v, n in held if v == third.dataset_version)
    assert get_version(store, third.dataset_version).erased_rows == lost
    # A backup restores each version as it reads: the delta, its base and its drops.
    backup_store(store, tmp_path / "backup", user=local_operator())
    restored = Store(tmp_path / "restored.duckdb")
    restore_store(tmp_path / "backup", restored.path, user=local_operator())
    for result in (second, third):
        assert set(restored.fetch_all(texts, [result.dataset_version])) == set(
            store.fetch_all(texts, [result.dataset_version])
        )


def test_a_chain_of_carrying_versions_reads_each_version_as_built(
    store: Store, tmp_path: Path
) -> None:
    """Cycle 4 carries cycle 3, itself stored over cycle 2: it is stored over cycle 2 too,
    holding cycle 3's rows and its own; a version whose every row changed is stored whole."""
    day4 = CYCLE3_DAY + timedelta(days=30)
    plan_id = workspace(
        store,
        tmp_path,
        [later(n) for n in range(100, 106)] + [later(n, day4) for n in range(200, 206)],
    )
    second = run_cycle(store, plan_id, 2, user=local_operator())
    third = run_cycle(store, plan_id, 3, user=local_operator())
    fourth = run_cycle(store, plan_id, 4, user=local_operator(), force=True)
    bases = dict(store.fetch_all("SELECT * FROM dataset_version_bases"))
    assert bases == {
        third.dataset_version: second.dataset_version,
        fourth.dataset_version: second.dataset_version,
    }
    keys = "SELECT row_key FROM dataset_rows WHERE version_id = ?"
    assert {k for (k,) in store.fetch_all(keys, [third.dataset_version])} <= {
        k for (k,) in store.fetch_all(keys, [fourth.dataset_version])
    }
    assert exported_digest(store, fourth.dataset_version, tmp_path / "4.jsonl") == fourth.sha256

    def new_system(plan: Plan) -> None:
        plan.goal.student_system_message = "You answer Python questions in one paragraph."
        plan.goal.production_system = "plan"

    new_plan_version(store, plan_id, new_system)
    again = run_cycle(store, plan_id, 4, user=local_operator(), force=True)
    assert again.new_version and again.sha256 != fourth.sha256
    assert again.dataset_version not in dict(store.fetch_all("SELECT * FROM dataset_version_bases"))
    assert members_stored(store, again.dataset_version) == again.rows
    assert exported_digest(store, again.dataset_version, tmp_path / "4b.jsonl") == again.sha256
