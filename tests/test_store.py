"""The store: migrations up from older stores, refusal of newer ones, locks, transactions."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from core.errors import StoreError
from core.store import Store, migrations


def _older_store(path: Path) -> None:
    """A store as the first released schema left it, holding one plan."""
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
    )
    first = migrations()[0]
    con.execute(first.sql)
    con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [1, first.name])
    con.execute("INSERT INTO plans VALUES ('old-plan', 'Old plan', current_timestamp, false)")
    con.close()


def test_migrations_are_numbered_once_each_from_one() -> None:
    versions = [m.version for m in migrations()]
    assert versions[0] == 1
    assert versions == sorted(set(versions))  # numbers are reserved per change, so gaps may occur


def test_new_store_gets_every_migration(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.duckdb")
    assert store.schema_version() == migrations()[-1].version
    applied = store.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in applied] == [m.version for m in migrations()]


def test_older_store_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    _older_store(path)
    store = Store(path)
    assert store.schema_version() == migrations()[-1].version
    assert store.fetch_all("SELECT plan_id FROM plans") == [("old-plan",)]


def test_newer_store_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "newer.duckdb"
    _older_store(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    con.close()
    with pytest.raises(StoreError, match=r"schema version 999, newer than this Flywheel"):
        Store(path).fetch_all("SELECT 1")


def test_failed_transaction_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.duckdb")
    store.execute("INSERT INTO workspace VALUES ('k', 'before')")
    with pytest.raises(RuntimeError), store.transaction() as con:
        con.execute("UPDATE workspace SET value = 'after' WHERE key = 'k'")
        con.execute("INSERT INTO workspace VALUES ('other', 'x')")
        raise RuntimeError("a step failed")
    assert store.fetch_all("SELECT key, value FROM workspace") == [("k", "before")]


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(path)!r})\n"
            "print('locked', flush=True)\n"
            f"time.sleep({seconds})\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"locked"
    return holder


def test_lock_held_by_another_process_is_reported_in_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    Store(path).schema_version()
    holder = _hold_lock(path, 5)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="in use by another process") as info:
            Store(path, lock_timeout_s=0.6).fetch_all("SELECT 1")
        assert time.monotonic() - started >= 0.5
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.communicate()


def test_lock_released_within_the_timeout_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "busy.duckdb"
    Store(path).schema_version()
    holder = _hold_lock(path, 0.8)
    try:
        assert Store(path, lock_timeout_s=10).fetch_all("SELECT 42") == [(42,)]
    finally:
        holder.communicate()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database")
    with pytest.raises(StoreError, match="Cannot open the store"):
        Store(path).fetch_all("SELECT 1")


def test_many_threads_opening_and_closing_at_once_all_succeed(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path / "busy.duckdb", lock_timeout_s=30)
    store.schema_version()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(80):
                assert store.fetch_one("SELECT count(*) FROM plans") == (0,)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_stamp_changes_with_every_write_and_never_with_a_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "stamped.duckdb")
    store.schema_version()
    first = store.stamp()
    store.fetch_all("SELECT * FROM plans")
    assert store.stamp() == first
    store.execute("INSERT INTO workspace VALUES ('a', '1')")
    second = store.stamp()
    assert second != first
    store.fetch_one("SELECT value FROM workspace WHERE key = 'a'")
    assert store.stamp() == second
    script = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1]);"
        " con.execute(\"INSERT INTO workspace VALUES ('b', '2')\"); con.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(store.path)], check=True)
    assert store.stamp() != second
    assert Store(tmp_path / "missing.duckdb").stamp() == "-/-"
