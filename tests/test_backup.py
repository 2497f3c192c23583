"""Backup and restore round-trip the whole store, and refuse damaged, altered or risky
restores without running anything from the backup or touching the target."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli
from conftest import ROOT, parquet_from_sql

import core.store
from core.access import AccessError, User, local_operator
from core.audit import record_audit
from core.backup import backup_store, restore_store
from core.cycles import run_cycle
from core.errors import StoreError
from core.escaping import sql_identifier
from core.plan_versions import list_plans, list_versions
from core.store import Store, forget_migrated, migrations

OPERATOR = local_operator()


def _dump(store: Store) -> dict[str, list[str]]:
    """Every row of every table, but the audit entries of the backup and restore themselves."""
    tables = [
        r[0]
        for r in store.fetch_all(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY 1"
        )
    ]
    dump = {
        t: sorted(map(repr, store.fetch_all(f"SELECT * FROM {sql_identifier(t)}"))) for t in tables
    }
    dump["audit_log"] = sorted(
        map(repr, store.fetch_all("SELECT * FROM audit_log WHERE action NOT LIKE 'store.%'"))
    )
    return dump


def _seed(store: Store) -> None:
    """A few rows in a table that has a sequence, and one in a plain table."""
    with store.transaction() as con:
        for i in range(3):
            record_audit(con, actor="ana@example.com", action="test", target="t", detail={"i": i})
        con.execute("INSERT INTO workspace VALUES ('owner', 'flywheel team')")


def _manifest(backup: Path) -> dict[str, Any]:
    return json.loads((backup / "manifest.json").read_text())  # type: ignore[no-any-return]


def _save_manifest(backup: Path, manifest: dict[str, Any]) -> None:
    (backup / "manifest.json").write_text(json.dumps(manifest))


def _reseal(backup: Path, name: str) -> None:
    """List ``name`` in the manifest with its current checksum, as anyone who can write the
    backup folder can."""
    manifest = _manifest(backup)
    manifest["files"][name] = hashlib.sha256((backup / name).read_bytes()).hexdigest()
    _save_manifest(backup, manifest)


def _files(directory: Path) -> dict[str, str]:
    """Every file beside the store and its checksum: what a refused restore must leave alone."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture
def backup(store: Store, tmp_path: Path) -> Path:
    """A backup of a small store; the store itself is the target a tampered restore aims at."""
    _seed(store)
    backup_store(store, tmp_path / "bk", user=OPERATOR)
    return tmp_path / "bk"


def _refused(store: Store, backup: Path, match: str) -> None:
    """Restoring ``backup`` over ``store`` is refused, and the store's folder is unchanged."""
    before = _files(store.path.parent)
    with pytest.raises(StoreError, match=match):
        restore_store(backup, store.path, user=OPERATOR, replace=True)
    assert _files(store.path.parent) == before


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_restores_every_row(demo_store: Store, tmp_path: Path) -> None:
    result = backup_store(demo_store, tmp_path / "bk", user=OPERATOR)
    assert result.tables["plan_versions"] == 3
    assert not result.signed
    assert not list((tmp_path / "bk").glob("*.sql"))  # a backup holds data, never SQL
    (made,) = demo_store.fetch_all(
        "SELECT actor, target FROM audit_log WHERE action = 'store.backup'"
    )
    assert made == (OPERATOR.name, str((tmp_path / "bk").resolve()))
    restored = restore_store(tmp_path / "bk", tmp_path / "restored.duckdb", user=OPERATOR)
    assert restored.tables == result.tables
    again = Store(tmp_path / "restored.duckdb")
    assert _dump(again) == _dump(demo_store)
    assert [p.plan_id for p in list_plans(again)] == ["python-coding-assistant"]
    # sequences continue where they were: a new audit entry gets a fresh id
    from core.plan_versions import load_plan, save_plan_version

    plan, _ = load_plan(again, "python-coding-assistant")
    save_plan_version(
        again, plan, note="after restore", user=local_operator(), plan_id="python-coding-assistant"
    )
    assert len(list_versions(again, "python-coding-assistant")) == 4


def test_restore_replaces_a_store_and_continues_its_sequences(store: Store, backup: Path) -> None:
    with store.transaction() as con:
        con.execute("DELETE FROM workspace")
    restored = restore_store(backup, store.path, user=OPERATOR, replace=True)
    assert restored.tables["audit_log"] == 3
    assert store.fetch_all("SELECT * FROM workspace") == [("owner", "flywheel team")]
    with store.transaction() as con:
        record_audit(con, actor="ana@example.com", action="test", target="t", detail={})
    entries = store.fetch_all("SELECT audit_id, action, actor FROM audit_log ORDER BY 1")
    assert [(i, a) for i, a, _ in entries] == [
        (1, "test"),
        (2, "test"),
        (3, "test"),
        (4, "store.restore"),
        (5, "test"),
    ]
    assert entries[3][2] == OPERATOR.name
    leftovers = [p.name for p in store.path.parent.iterdir() if "restoring" in p.name]
    assert leftovers == []


def test_a_backup_of_an_older_schema_is_migrated_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = migrations()
    older = Store(tmp_path / "old.duckdb")
    with monkeypatch.context() as patch:
        patch.setattr(core.store, "migrations", lambda: every[:-2])
        _seed(older)
        backup_store(older, tmp_path / "bk", user=OPERATOR)
    assert _manifest(tmp_path / "bk")["schema_version"] == every[-3].version
    restored = restore_store(tmp_path / "bk", tmp_path / "new.duckdb", user=OPERATOR)
    assert restored.schema_version == every[-1].version
    new = Store(tmp_path / "new.duckdb")
    versions = [r[0] for r in new.fetch_all("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in every]
    assert new.fetch_all("SELECT * FROM workspace") == [("owner", "flywheel team")]


def test_a_backup_holding_dataset_rows_as_a_table_restores_them_as_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup made before versions pointed at stored texts (dataset_rows a table) restores
    every row, readable as before, its texts stored once per row."""
    every = migrations()
    before = [m for m in every if m.version < 15]
    older = Store(tmp_path / "old.duckdb")
    with monkeypatch.context() as patch:
        patch.setattr(core.store, "migrations", lambda: before)
        older.schema_version()
        with older.transaction() as con:
            for version in ("ds-p-c1-v1", "ds-p-c2-v1"):
                con.execute(
                    "INSERT INTO dataset_rows SELECT ?, 'i' || n, 'production', 'i' || n,"
                    " 'u' || (n % 3), '{}', 'train', 'sys', 'prompt ' || n, 'answer ' || n,"
                    " md5('i' || n), 1, 'ds-p-c1-v1', NULL FROM range(5) t(n)",
                    [version],
                )
        rows = sorted(
            older.fetch_all("SELECT version_id, row_key, prompt, response FROM dataset_rows")
        )
        backup_store(older, tmp_path / "bk", user=OPERATOR)
    restore_store(tmp_path / "bk", tmp_path / "new.duckdb", user=OPERATOR)
    new = Store(tmp_path / "new.duckdb")
    assert (
        sorted(new.fetch_all("SELECT version_id, row_key, prompt, response FROM dataset_rows"))
        == rows
    )
    assert new.fetch_all("SELECT count(*) FROM dataset_members") == [(10,)]
    assert new.fetch_all("SELECT count(*) FROM dataset_texts") == [(5,)]


def test_a_backup_from_a_newer_flywheel_is_refused(store: Store, backup: Path) -> None:
    manifest = _manifest(backup)
    manifest["schema_version"] = 9999
    _save_manifest(backup, manifest)
    _refused(store, backup, "newer than this Flywheel")


# -- tampered backups: refused, nothing run, the target untouched -----------------------------


def test_sql_added_to_a_backup_never_runs(store: Store, backup: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran.csv"
    payload = f"CREATE TABLE pwned AS SELECT 1 AS x;\nCOPY (SELECT 'owned') TO '{marker}';\n"
    (backup / "schema.sql").write_text(payload)
    _refused(store, backup, "'schema.sql', which its manifest does not list")
    # Listed with its checksum (as a backup written by an older Flywheel lists its schema.sql):
    # it is checked like every file, and never read.
    _reseal(backup, "schema.sql")
    restore_store(backup, store.path, user=OPERATOR, replace=True)
    assert not marker.exists()
    assert store.fetch_all("SELECT 1 FROM duckdb_tables() WHERE table_name = 'pwned'") == []
    with (backup / "schema.sql").open("a") as handle:
        handle.write("ATTACH 'elsewhere.duckdb';\n")
    _refused(store, backup, r"schema.sql changed since the backup")
    assert not marker.exists()


def test_a_file_left_out_of_the_manifest_is_refused(store: Store, backup: Path) -> None:
    manifest = _manifest(backup)
    del manifest["files"]["workspace.parquet"]
    _save_manifest(backup, manifest)
    _refused(store, backup, "'workspace.parquet', which its manifest does not list")


def test_a_stray_file_is_refused(store: Store, backup: Path) -> None:
    (backup / "notes.txt").write_text("hello")
    _refused(store, backup, "'notes.txt', which its manifest does not list")
    _reseal(backup, "notes.txt")
    _refused(store, backup, "'notes.txt', which is no table's file")


@pytest.mark.parametrize("name", ["../plans.parquet", "/etc/passwd", "sub/plans.parquet", ".."])
def test_a_name_outside_the_backup_folder_is_refused(store: Store, backup: Path, name: str) -> None:
    manifest = _manifest(backup)
    manifest["files"][name] = "0" * 64
    _save_manifest(backup, manifest)
    _refused(store, backup, "not a plain file name")


def test_a_linked_file_is_refused(store: Store, backup: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.parquet"
    (backup / "workspace.parquet").rename(outside)
    (backup / "workspace.parquet").symlink_to(outside)  # same bytes, same checksum
    _refused(store, backup, "workspace.parquet is a link")


@pytest.mark.parametrize(
    "table",
    ['workspace"; DROP TABLE audit_log; --', "workspace; COPY (SELECT 1) TO 'x.csv'", "Plans"],
)
def test_sql_in_a_table_name_is_refused(store: Store, backup: Path, table: str) -> None:
    manifest = _manifest(backup)
    manifest["tables"][table] = 1
    _save_manifest(backup, manifest)
    _refused(store, backup, "not a table name")


def test_a_table_the_migrations_do_not_create_is_refused(store: Store, backup: Path) -> None:
    (backup / "pwned.parquet").write_bytes((backup / "workspace.parquet").read_bytes())
    _reseal(backup, "pwned.parquet")
    manifest = _manifest(backup)
    manifest["tables"]["pwned"] = 1
    _save_manifest(backup, manifest)
    _refused(store, backup, "pwned that Flywheel's migrations do not create")


def test_a_table_of_other_columns_is_refused(store: Store, backup: Path) -> None:
    parquet_from_sql("SELECT 'owner' AS key, 42 AS value", backup / "workspace.parquet")
    _reseal(backup, "workspace.parquet")
    _refused(
        store, backup, r"columns of workspace.parquet differ: value INTEGER \(expected VARCHAR"
    )


def test_a_changed_file_is_refused(store: Store, backup: Path) -> None:
    victim = backup / "audit_log.parquet"
    victim.write_bytes(victim.read_bytes()[:-10])
    _refused(store, backup, "audit_log.parquet changed since the backup")
    target = store.path.with_name("fresh.duckdb")
    with pytest.raises(StoreError, match="changed since the backup"):
        restore_store(backup, target, user=OPERATOR)
    assert not target.exists()


def test_row_counts_must_match_the_manifest(store: Store, backup: Path) -> None:
    manifest = _manifest(backup)
    manifest["tables"]["audit_log"] = 2
    _save_manifest(backup, manifest)
    _refused(store, backup, "audit_log holds other rows than its manifest counts")


# -- the backup key ---------------------------------------------------------------------------


def test_with_a_backup_key_an_altered_or_unsigned_backup_is_refused(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(store)
    unsigned = backup_store(store, tmp_path / "unsigned", user=OPERATOR)
    monkeypatch.setenv("FLYWHEEL_BACKUP_KEY", "a key kept in the team's vault")
    signed = backup_store(store, tmp_path / "signed", user=OPERATOR)
    assert signed.signed and not unsigned.signed
    assert "a key kept" not in (tmp_path / "signed" / "manifest.json").read_text()
    _refused(store, tmp_path / "unsigned", "not signed")

    # Whoever can write the folder changes a row and recomputes the checksum: the signature
    # no longer matches.
    parquet_from_sql(
        "SELECT 'owner' AS key, 'mallory' AS value", tmp_path / "signed" / "workspace.parquet"
    )
    _reseal(tmp_path / "signed", "workspace.parquet")
    _refused(store, tmp_path / "signed", "signature does not match")

    fresh = backup_store(store, tmp_path / "fresh", user=OPERATOR)
    restored = restore_store(tmp_path / "fresh", tmp_path / "copy.duckdb", user=OPERATOR)
    assert restored.signed and restored.tables == fresh.tables
    monkeypatch.setenv("FLYWHEEL_BACKUP_KEY", "another key")
    _refused(store, tmp_path / "fresh", "signature does not match")


# -- the store's lock -------------------------------------------------------------------------


def _hold_in_another_process(path: Path, seconds: float) -> subprocess.Popen[str]:
    """A process that holds the store as a running cycle does, for ``seconds``."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from core.store import Store\n"
            "with Store(sys.argv[1]).hold():\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(float(sys.argv[2]))\n",
            str(path),
            str(seconds),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_a_restore_during_a_running_cycle_is_refused(
    store: Store, backup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_LOCK_TIMEOUT_S", "0.5")
    holder = _hold_in_another_process(store.path, 60)
    try:
        _refused(store, backup, "stayed in use .* nothing was replaced")
    finally:
        holder.kill()
        holder.communicate()


def test_a_restore_waits_for_a_running_cycle_to_finish(
    store: Store, backup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.transaction() as con:
        con.execute("DELETE FROM workspace")
    monkeypatch.setenv("FLYWHEEL_LOCK_TIMEOUT_S", "30")
    holder = _hold_in_another_process(store.path, 1.5)
    restore_store(backup, store.path, user=OPERATOR, replace=True)
    assert holder.poll() is not None  # the swap came after the holder let go
    holder.communicate()
    assert store.fetch_all("SELECT * FROM workspace") == [("owner", "flywheel team")]


def test_a_cycle_run_holds_the_store_throughout(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def body(store: Store, *args: object, **kwargs: object) -> None:
        with (
            pytest.raises(StoreError, match="stayed in use"),
            Store(store.path, lock_timeout_s=0.2).exclusive(),
        ):
            pass
        seen.append("refused while the cycle ran")

    monkeypatch.setattr("core.cycles._run_cycle", body)
    run_cycle(store, "any-plan", 1, user=OPERATOR)
    assert seen == ["refused while the cycle ran"]
    with Store(store.path, lock_timeout_s=0.2).exclusive():  # free again afterwards
        pass


def test_a_store_being_replaced_makes_others_wait(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.exclusive():
        started = time.monotonic()
        with pytest.raises(StoreError, match="being replaced by a restore"):
            Store(store.path, lock_timeout_s=0.3).fetch_all("SELECT 1")
        assert time.monotonic() - started >= 0.3


# -- the command line and roles ---------------------------------------------------------------


def test_backup_refuses_a_non_empty_directory(store: Store, tmp_path: Path) -> None:
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty"):
        backup_store(store, tmp_path / "bk", user=OPERATOR)


def test_restore_refuses_to_overwrite_without_replace(store: Store, backup: Path) -> None:
    with pytest.raises(StoreError, match="--replace"):
        restore_store(backup, store.path, user=OPERATOR)


def test_cli_backup_then_restore(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(store)
    env = {"FLYWHEEL_DB": str(store.path), "FLYWHEEL_BACKUP_KEY": "cli key"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env)

    backed = run("store", "backup", str(tmp_path / "bk"), "--json")
    assert backed.returncode == 0, backed.stderr
    assert json.loads(backed.stdout)["tables"]["workspace"] == 1
    assert json.loads(backed.stdout)["signed"] is True
    target = tmp_path / "copy.duckdb"
    restored = run("store", "restore", str(tmp_path / "bk"), "--db", str(target))
    assert restored.returncode == 0, restored.stderr
    assert "signature verified" in restored.stdout
    refused = run("store", "restore", str(tmp_path / "bk"), "--db", str(target))
    assert refused.returncode == 2 and "--replace" in refused.stderr
    (tmp_path / "bk" / "extra.parquet").write_bytes(b"PAR1")
    tampered = run("store", "restore", str(tmp_path / "bk"), "--db", str(target), "--replace")
    assert tampered.returncode == 2
    assert tampered.stderr.count("\n") == 1 and "does not list" in tampered.stderr


def test_only_an_ml_or_eng_lead_backs_up_or_restores(store: Store, tmp_path: Path) -> None:
    viewer, privacy = (
        User("Val", frozenset({"viewer"})),
        User("Priya", frozenset({"privacy_reviewer"})),
    )
    for who in (viewer, privacy):
        with pytest.raises(AccessError, match=r"back up or restore the store \(store.backup\)"):
            backup_store(store, tmp_path / "bk", user=who)
    assert not (tmp_path / "bk").exists()  # refused before anything is written
    backup_store(store, tmp_path / "bk", user=User("Eve", frozenset({"eng_lead"})))
    with pytest.raises(AccessError, match="needs the eng_lead or ml_lead role"):
        restore_store(tmp_path / "bk", tmp_path / "r.duckdb", user=viewer)
    assert not (tmp_path / "r.duckdb").exists()
    restore_store(tmp_path / "bk", tmp_path / "r.duckdb", user=User("Omar", frozenset({"ml_lead"})))
    assert (tmp_path / "r.duckdb").exists()
    forget_migrated(tmp_path / "r.duckdb")
