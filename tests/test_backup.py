"""Backup and restore round-trip the whole store, and refuse damaged or risky restores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from core.access import AccessError, User, local_operator
from core.backup import backup_store, restore_store
from core.errors import StoreError
from core.plan_versions import list_plans, list_versions
from core.store import Store

OPERATOR = local_operator()


def _dump(store: Store) -> dict[str, list[tuple[object, ...]]]:
    tables = [
        r[0]
        for r in store.fetch_all(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY 1"
        )
    ]
    return {t: sorted(map(repr, store.fetch_all(f'SELECT * FROM "{t}"'))) for t in tables}  # type: ignore[misc]


def test_round_trip_restores_every_row(demo_store: Store, tmp_path: Path) -> None:
    result = backup_store(demo_store, tmp_path / "bk", user=OPERATOR)
    assert result.tables["plan_versions"] == 3
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


def test_backup_refuses_a_non_empty_directory(store: Store, tmp_path: Path) -> None:
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty"):
        backup_store(store, tmp_path / "bk", user=OPERATOR)


def test_restore_refuses_to_overwrite_without_replace(demo_store: Store, tmp_path: Path) -> None:
    backup_store(demo_store, tmp_path / "bk", user=OPERATOR)
    with pytest.raises(StoreError, match="--replace"):
        restore_store(tmp_path / "bk", demo_store.path, user=OPERATOR)


def test_changed_backup_file_is_refused_and_nothing_changes(
    demo_store: Store, tmp_path: Path
) -> None:
    backup_store(demo_store, tmp_path / "bk", user=OPERATOR)
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    victim = tmp_path / "bk" / next(n for n in manifest["files"] if n.endswith(".parquet"))
    victim.write_bytes(victim.read_bytes()[:-10])
    target = tmp_path / "target.duckdb"
    with pytest.raises(StoreError, match="changed since the backup"):
        restore_store(tmp_path / "bk", target, user=OPERATOR)
    assert not target.exists()


def test_cli_backup_then_restore(demo_store: Store, tmp_path: Path) -> None:
    env = {**os.environ, "FLYWHEEL_DB": str(demo_store.path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=120,
        )

    backed = run("backup", str(tmp_path / "bk"), "--json")
    assert backed.returncode == 0, backed.stderr
    assert json.loads(backed.stdout)["tables"]["plans"] == 1
    target = tmp_path / "copy.duckdb"
    restored = run("restore", str(tmp_path / "bk"), "--db", str(target), "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["tables"] == json.loads(backed.stdout)["tables"]
    refused = run("restore", str(tmp_path / "bk"), "--db", str(target))
    assert refused.returncode == 2 and "--replace" in refused.stderr


def test_only_an_ml_or_eng_lead_backs_up_or_restores(demo_store: Store, tmp_path: Path) -> None:
    viewer, privacy = (
        User("Val", frozenset({"viewer"})),
        User("Priya", frozenset({"privacy_reviewer"})),
    )
    for who in (viewer, privacy):
        with pytest.raises(AccessError, match=r"back up or restore the store \(store.backup\)"):
            backup_store(demo_store, tmp_path / "bk", user=who)
    assert not (tmp_path / "bk").exists()  # refused before anything is written
    backup_store(demo_store, tmp_path / "bk", user=User("Eve", frozenset({"eng_lead"})))
    with pytest.raises(AccessError, match="needs the eng_lead or ml_lead role"):
        restore_store(tmp_path / "bk", tmp_path / "r.duckdb", user=viewer)
    assert not (tmp_path / "r.duckdb").exists()
    restore_store(tmp_path / "bk", tmp_path / "r.duckdb", user=User("Omar", frozenset({"ml_lead"})))
    assert (tmp_path / "r.duckdb").exists()
