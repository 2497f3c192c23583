"""The DuckDB store: short-lived connections, numbered schema migrations, transactions.

DuckDB lets one process hold a database file for writing, and no other process may open it
meanwhile. So every operation opens a connection, works and closes it, and a lock held by
another process (the dashboard, a scheduled ``python -m core`` run) is retried with backoff
before it is reported. Within one process DuckDB shares one database instance per file, so a
connection per operation (and per Streamlit session thread) is cheap and thread-safe.

A lock file beside the store (``<store>.lock``) keeps a restore from swapping the file under
anyone: every connection and every long run (``Store.hold``: a cycle) holds it shared, and a
restore takes it alone (``Store.exclusive``) for the moment it puts the new file in place.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from core.errors import StoreError
from core.escaping import sql_identifier, sql_string
from core.paths import managed_store
from core.settings import default_db_path, settings

__all__ = ["Migration", "Store", "forget_migrated", "insert_rows", "migrations"]

Params = Sequence[Any] | dict[str, Any]

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")
_migrated: set[str] = set()
_migrate_lock = threading.Lock()
_write_locks: dict[str, threading.RLock] = {}


def _write_lock(path: Path) -> threading.RLock:
    """The lock that makes this process's writers to one store file take turns."""
    key = str(path.resolve())
    with _migrate_lock:
        return _write_locks.setdefault(key, threading.RLock())


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema, applied once and recorded in the store: a SQL file,
    or a Python module whose ``apply(con)`` runs what SQL alone cannot write (a step that
    computes with the SQL ``core`` generates)."""

    version: int
    name: str
    sql: str  # the file's text: the SQL, or the Python module's source
    step: Callable[[duckdb.DuckDBPyConnection], None] | None = None

    def apply(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.step is None:
            con.execute(self.sql)
        else:
            self.step(con)


def migrations() -> list[Migration]:
    """The migrations shipped with this version of Flywheel, in order."""
    found: list[Migration] = []
    for entry in resources.files("core.migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if not match:
            continue
        text = entry.read_text(encoding="utf-8")
        step = None
        if match[3] == "py":
            module = importlib.import_module(f"core.migrations.{entry.name[:-3]}")
            step = module.apply
        found.append(Migration(int(match[1]), match[2], text, step))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"Two migrations share a number: {versions}.")
    return found


def _is_lock_conflict(exc: Exception) -> bool:
    """Whether opening failed only because someone else holds the file for now: another
    process's lock, or (within this process) DuckDB still closing the file's last connection
    while another thread opens it."""
    text = str(exc)
    return any(
        sign in text
        for sign in ("Could not set lock", "Conflicting lock", "Unique file handle conflict")
    )


class Store:
    """One DuckDB file and the only way Flywheel reads or writes it."""

    def __init__(self, path: str | Path | None = None, *, lock_timeout_s: float | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        managed_store(self.path)  # no output path may overwrite it (core.paths)
        timeout = settings.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        self.lock_timeout_s = float(timeout)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def stamp(self) -> str:
        """A value that changes whenever a write is committed to the store, by any process.

        DuckDB appends every commit to the file's write-ahead log and folds the log into the
        file at a checkpoint; reads touch neither. So the size and modification time of the
        two files change with every write and never with a read, and reading them costs no
        connection: the dashboard keys its caches on it.
        """
        parts = []
        for path in (self.path, Path(f"{self.path}.wal")):
            try:
                info = path.stat()
            except FileNotFoundError:
                parts.append("-")
                continue
            parts.append(f"{info.st_size}:{info.st_mtime_ns}")
        return "/".join(parts)

    # -- connections ---------------------------------------------------------------------------

    def _open(self) -> duckdb.DuckDBPyConnection:
        """Open a connection, retrying while another process holds the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path))
            except (duckdb.IOException, duckdb.ResourceInUseException) as exc:
                if not _is_lock_conflict(exc):
                    raise StoreError(f"Cannot open the store {self.path}: {exc}") from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreError(
                        f"The store {self.path} is in use by another process and stayed locked "
                        f"for {self.lock_timeout_s:.0f} s; wait for that run to finish and try "
                        "again."
                    ) from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
            except duckdb.Error as exc:
                raise StoreError(
                    f"Cannot open the store {self.path}: {exc}. If it was written by a newer "
                    "DuckDB, upgrade Flywheel's requirements or point --db at another file."
                ) from None

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A migrated connection for one operation; closed on exit."""
        with self._file_lock(exclusive=False):
            con = self._open()
            try:
                self._ensure_migrated(con)
                yield con
            finally:
                con.close()

    @property
    def lock_path(self) -> Path:
        """The lock file beside the store (see the module docstring)."""
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the store's file in place until the block ends: a long run (a cycle) holds it
        across its separate reads and writes, so that a restore waits for it or refuses."""
        with self._file_lock(exclusive=False):
            yield

    @contextmanager
    def session(self) -> Iterator[None]:
        """Keep the database open across the operations of one short step (a run's set-up):
        each connection inside then costs about a millisecond instead of opening and closing
        the file (tens of ms). Other processes wait until the block ends, as for any
        connection, so keep it short."""
        with self.connect():
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store alone, to replace its file: waits, up to the lock timeout, until no
        connection or held run of any process is left, and keeps new ones waiting meanwhile.

        Raises StoreError when the store stays in use. Within the block this process must not
        connect to the store either (it would wait for itself).
        """
        with self._file_lock(exclusive=True):
            self._wait_until_closed()
            yield

    def _wait_until_closed(self) -> None:
        """Open and close the file once, retrying while another process holds it: one that
        opened it without the lock file (an older Flywheel, the DuckDB shell). A file DuckDB
        cannot open at all is left to the caller, who is about to replace it."""
        if not self.path.exists():
            return
        try:
            self._open().close()
        except StoreError as exc:
            if "in use by another process" in str(exc):
                raise

    @contextmanager
    def _file_lock(self, *, exclusive: bool) -> Iterator[None]:
        """Take the lock file shared or alone, retrying with backoff as ``_open`` does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + self.lock_timeout_s
            delay = 0.05
            while True:
                try:
                    fcntl.flock(fd, mode)
                    break
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StoreError(self._busy_message(exclusive)) from None
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 1.0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _busy_message(self, exclusive: bool) -> str:
        waited = f"{self.lock_timeout_s:g} s"
        if exclusive:
            return (
                f"The store {self.path} stayed in use for {waited} (a cycle run, the dashboard or "
                "another command holds it); nothing was replaced. Try again when it finishes."
            )
        return (
            f"The store {self.path} is being replaced by a restore and stayed locked for "
            f"{waited}; try again when the restore finishes."
        )

    @contextmanager
    def write_turn(self) -> Iterator[None]:
        """Hold this process's turn to write the store (reentrant); raises StoreError when
        another change keeps it longer than the lock timeout."""
        lock = _write_lock(self.path)
        if not lock.acquire(timeout=self.lock_timeout_s):
            raise StoreError(
                f"The store {self.path} is busy with another change in this process for more "
                f"than {self.lock_timeout_s:.0f} s; try again when it finishes."
            )
        try:
            yield
        finally:
            lock.release()

    def rewrite(self) -> None:
        """Copy the store into a fresh file and put it in place of the old one, so that no byte
        of a deleted row is left on disk: DuckDB reuses freed blocks but never zeroes them, and
        a checkpoint does not shrink the file.

        Holds this process's write turn and the store alone (``exclusive``: every connection of
        any process closed, new ones waiting), so nobody reads or writes the old file meanwhile.
        The new file replaces the old one atomically; on any error the old one stays as it was.
        Raises StoreError, also when the store stays in use for longer than the lock timeout.
        """
        temp = self.path.with_name(f".{self.path.name}.rewrite-{uuid.uuid4().hex[:8]}")
        with self.write_turn(), self.exclusive():
            con = self._open()
            try:
                self._ensure_migrated(con)
                con.execute("CHECKPOINT")
                wal = Path(f"{self.path}.wal")
                if wal.exists() and wal.stat().st_size:
                    raise StoreError(f"{wal} was not folded into the store by a checkpoint.")
                (catalog,) = con.execute("SELECT current_database()").fetchone() or ("",)
                con.execute(f"ATTACH {sql_string(str(temp))} AS fw_rewrite")
                con.execute(f"COPY FROM DATABASE {sql_identifier(catalog)} TO fw_rewrite")
                con.execute("DETACH fw_rewrite")
                con.close()
                os.chmod(temp, self.path.stat().st_mode & 0o777)
                os.replace(temp, self.path)
            except (duckdb.Error, OSError) as exc:
                raise StoreError(f"Rewriting the store {self.path} failed: {exc}") from None
            finally:
                con.close()
                for leftover in (temp, Path(f"{temp}.wal")):
                    leftover.unlink(missing_ok=True)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: committed on success, rolled back on error.

        Writers in one process take turns (DuckDB would otherwise abort one of two concurrent
        transactions that touch the same rows, e.g. two sessions saving the same plan); across
        processes the file lock does the same.
        """
        with self.write_turn(), self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- queries -------------------------------------------------------------------------------

    def fetch_all(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a query with bound parameters and return every row."""
        with self.connect() as con:
            return con.execute(sql, params).fetchall()

    def fetch_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Run a query with bound parameters and return its first row, if any."""
        with self.connect() as con:
            return con.execute(sql, params).fetchone()

    def fetch_dicts(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a query and return its rows as dicts keyed by column name."""
        with self.connect() as con:
            cur = con.execute(sql, params)
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def execute(self, sql: str, params: Params = ()) -> None:
        """Run one statement in its own transaction."""
        with self.transaction() as con:
            con.execute(sql, params)

    # -- schema --------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The newest migration applied to this store."""
        row = self.fetch_one("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(row[0]) if row else 0

    def _ensure_migrated(self, con: duckdb.DuckDBPyConnection) -> None:
        key = str(self.path.resolve())
        if key in _migrated:
            return
        with _migrate_lock:
            if key not in _migrated:
                migrate(con, self.path)
                _migrated.add(key)


def insert_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: Sequence[Sequence[Any]],
    *,
    columns: Sequence[str] | None = None,
    replace: bool = False,
) -> None:
    """Insert ``rows`` (each with every column of ``table``, in order, or with the named
    ``columns``) in one statement: each column is bound as one list and unnested. ``table``
    is a constant of the caller; ``replace`` replaces a row with the same key.

    Thousands of quarantined lines took seconds through executemany (a statement a row) and
    through multi-row VALUES (every value parsed); bound as lists they take milliseconds.
    Each column's values must share one type (None goes with any)."""
    if not rows:
        return
    values = list(zip(*rows, strict=True))
    target = sql_identifier(table)
    if columns is not None:
        target += " (" + ", ".join(sql_identifier(c) for c in columns) + ")"
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    con.execute(
        f"{verb} INTO {target} SELECT " + ", ".join(f"unnest($c{i})" for i in range(len(values))),
        {f"c{i}": list(column) for i, column in enumerate(values)},
    )


def forget_migrated(path: Path) -> None:
    """Forget that ``path`` was migrated in this process (its file was replaced)."""
    with _migrate_lock:
        _migrated.discard(str(path.resolve()))


def migrate(
    con: duckdb.DuckDBPyConnection, path: Path, *, only: Collection[int] | None = None
) -> list[int]:
    """Apply the migrations this store lacks, in order, each in its own transaction; with
    ``only``, just those of its numbers (a restore rebuilds a backup's schema as it was).

    A store may lack a lower number than its newest (two branches' migrations landing in
    either order), so the missing ones are applied, not only those above the newest.

    Raises StoreError when the store was written by a newer Flywheel.
    """
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
    )
    done = {int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    current = max(done, default=0)
    known = migrations()
    newest = known[-1].version if known else 0
    if current > newest:
        raise StoreError(
            f"The store {path} has schema version {current}, newer than this Flywheel knows "
            f"({newest}). Upgrade Flywheel, or point --db / FLYWHEEL_DB at another file."
        )
    applied: list[int] = []
    for step in known:
        if step.version in done or (only is not None and step.version not in only):
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            step.apply(con)
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                [step.version, step.name],
            )
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            raise StoreError(
                f"Migration {step.version:04d}_{step.name} failed on {path}: {exc}"
            ) from None
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        applied.append(step.version)
    return applied
