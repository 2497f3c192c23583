"""Backup and restore of the whole store: one Parquet file per table plus a manifest of row
counts and file checksums, optionally signed with a key kept outside the backup.

A backup is untrusted input: whoever can write its folder can change any byte of it. So a
restore executes nothing from it. It checks that the manifest lists exactly the files in the
folder (plain names only, no links), their checksums and, with ``FLYWHEEL_BACKUP_KEY`` set, the
manifest's HMAC-SHA256 signature; it then builds a new store in a file beside the target with
Flywheel's own migrations, as far as the backup's schema went, fills the tables those migrations
created from their Parquet files (columns by name, types checked) and brings the schema up to
date. The target is replaced only when the new store is whole, under the store's lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from core import __version__
from core.access import User, require
from core.audit import record_audit
from core.errors import StoreError
from core.escaping import sql_identifier
from core.paths import check_output_path
from core.settings import settings
from core.store import Store, forget_migrated, migrate, migrations

__all__ = ["BackupResult", "backup_store", "restore_store"]

MANIFEST = "manifest.json"
# The manifest's layout: 2 is one Parquet file per table, written by ``backup_store``. Backups
# of layout 1 (DuckDB's EXPORT DATABASE) restore too; their schema.sql and load.sql are checked
# against the manifest like every file, and never read.
FORMAT = 2
_NEVER_READ = frozenset({"schema.sql", "load.sql"})
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_GLOB = re.compile(r"[*?\[\]{}]")


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore wrote: where, the schema version, rows per table, and whether
    the manifest was signed (backup) or its signature verified (restore) with the backup key."""

    path: str
    schema_version: int
    tables: dict[str, int]
    signed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backup_key() -> bytes | None:
    key = settings.backup_key
    return key.encode("utf-8") if key else None


def _signature(manifest: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the manifest without its signature, over canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The one value a query returns, read in full (DuckDB 2 keeps a half-read result open)."""
    return con.execute(sql, params or []).fetchall()[0][0]


def _row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    names = [
        str(r[0])
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal AND NOT temporary"
            " ORDER BY table_name"
        ).fetchall()
    ]
    return {n: int(_scalar(con, f"SELECT count(*) FROM {sql_identifier(n)}")) for n in names}


def backup_store(store: Store, directory: str | Path, *, user: User) -> BackupResult:
    """Write every table of ``store`` to ``directory`` (new or empty) as Parquet, with a
    manifest (signed when ``FLYWHEEL_BACKUP_KEY`` is set); audited as ``store.backup``.

    Raises StoreError when the directory holds files already; OutputPathError when it is the
    store, a file beside it or another place Flywheel manages; AccessError, before anything is
    written, when ``user`` may not back up the store (a backup holds raw PII).
    """
    require(user, "store.backup")
    key = _backup_key()
    target = check_output_path(directory)
    if target.exists() and any(target.iterdir()):
        raise StoreError(f"{target} is not empty; back up into a new or empty directory.")
    target.mkdir(parents=True, exist_ok=True)
    with store.transaction() as con:  # one snapshot: counts and files agree
        counts = _row_counts(con)
        version = int(_scalar(con, "SELECT coalesce(max(version), 0) FROM schema_migrations"))
        for name in counts:
            relation = con.sql(f"SELECT * FROM {sql_identifier(name)}")
            relation.write_parquet(str(target / f"{name}.parquet"))
    files = {p.name: _sha256(p) for p in sorted(target.iterdir()) if p.name != MANIFEST}
    manifest: dict[str, Any] = {
        "flywheel": __version__,
        "format": FORMAT,
        "schema_version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "tables": counts,
        "files": files,
    }
    if key is not None:
        manifest["signature"] = _signature(manifest, key)
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), "utf-8")
    with store.transaction() as con:  # erasure lists the backups made before it from here
        record_audit(
            con,
            actor=user.name,
            action="store.backup",
            target=str(target.resolve()),
            detail={"schema_version": version, "rows": sum(counts.values()), "signed": bool(key)},
        )
    return BackupResult(str(target), version, counts, signed=key is not None)


# -- restore -----------------------------------------------------------------------------------


def _refuse(source: Path, why: str) -> StoreError:
    return StoreError(f"{source} cannot be restored: {why} Nothing was restored.")


def _plain_name(name: object) -> bool:
    """Whether ``name`` names a file directly inside the backup folder."""
    return (
        isinstance(name, str)
        and name not in {"", ".", ".."}
        and not any(c in name for c in "/\\\0")
        and not Path(name).is_absolute()
    )


def _verified_manifest(source: Path, key: bytes | None) -> dict[str, Any]:
    """The backup's manifest once the folder holds exactly the files it lists, each plain,
    regular and unchanged, and (with a key) its signature matches. Raises StoreError."""
    if _GLOB.search(str(source.resolve())):
        raise _refuse(source, "its path holds a wildcard character (* ? [ ] { }); rename it.")
    if not source.is_dir():
        raise _refuse(source, "it is not a directory.")
    manifest_path = source / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise _refuse(source, f"it holds no {MANIFEST} (a plain file): it is not a backup.")
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _refuse(source, f"its {MANIFEST} is damaged.") from None
    if not isinstance(manifest, dict):
        raise _refuse(source, f"its {MANIFEST} is not a Flywheel manifest.")
    files, tables = manifest.get("files"), manifest.get("tables")
    if not (
        isinstance(files, dict)
        and isinstance(tables, dict)
        and all(isinstance(d, str) for d in files.values())
        and all(type(n) is int and n >= 0 for n in tables.values())
        and type(manifest.get("schema_version")) is int
    ):
        raise _refuse(source, f"its {MANIFEST} is not a Flywheel manifest.")
    if manifest.get("format", 1) not in range(1, FORMAT + 1):
        raise _refuse(source, "it was written by a newer Flywheel; upgrade Flywheel to restore it.")
    if key is not None:
        signature = manifest.get("signature")
        if not isinstance(signature, str):
            raise _refuse(
                source, "its manifest is not signed, and FLYWHEEL_BACKUP_KEY requires a signature."
            )
        if not hmac.compare_digest(signature, _signature(manifest, key)):
            raise _refuse(
                source,
                "its manifest's signature does not match FLYWHEEL_BACKUP_KEY: the backup was "
                "altered, or signed with another key.",
            )
    for name in files:
        if not _plain_name(name) or name == MANIFEST:
            raise _refuse(source, f"its manifest lists {name!r}, which is not a plain file name.")
    present = {entry.name: entry for entry in os.scandir(source)}
    unlisted = sorted(set(present) - set(files) - {MANIFEST})
    if unlisted:
        raise _refuse(source, f"it holds {unlisted[0]!r}, which its manifest does not list.")
    for table in tables:
        if not _TABLE_NAME.match(table):
            raise _refuse(source, f"its manifest names a table {table!r}, not a table name.")
        if f"{table}.parquet" not in files:
            raise _refuse(source, f"its manifest lists no file for the table {table}.")
    strays = sorted(set(files) - {f"{t}.parquet" for t in tables} - _NEVER_READ)
    if strays:
        raise _refuse(source, f"its manifest lists {strays[0]!r}, which is no table's file.")
    for name, digest in sorted(files.items()):
        entry = present.get(name)
        if entry is None:
            raise _refuse(source, f"{name} is listed in its manifest but missing.")
        if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            raise _refuse(source, f"{name} is a link or not a plain file.")
        if _sha256(source / name) != digest:
            raise _refuse(source, f"{name} changed since the backup (its checksum differs).")
    newest = migrations()[-1].version
    if manifest["schema_version"] > newest:
        raise _refuse(
            source,
            f"it has schema version {manifest['schema_version']}, newer than this Flywheel "
            f"knows ({newest}); upgrade Flywheel to restore it.",
        )
    return manifest


def _columns(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> dict[str, str]:
    described = con.execute(f"DESCRIBE {sql}", params).fetchall()
    return {str(r[0]): str(r[1]) for r in described}


def _table_columns(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    """The columns and types of every table the migrations created in ``con`` (views hold no
    rows of their own: they are not backed up)."""
    found: dict[str, dict[str, str]] = {}
    for table, column, kind in con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns()"
        " WHERE NOT internal AND database_name = current_database() AND table_oid IN"
        " (SELECT table_oid FROM duckdb_tables() WHERE database_name = current_database())"
        " ORDER BY table_name, column_index"
    ).fetchall():
        found.setdefault(str(table), {})[str(column)] = str(kind)
    return found


def _fill(
    con: duckdb.DuckDBPyConnection, source: Path, table: str, columns: dict[str, str], rows: int
) -> None:
    """Insert the table's Parquet rows, column by column name, once their types match."""
    file = str(source / f"{table}.parquet")
    try:
        found = _columns(con, "SELECT * FROM read_parquet(?)", [file])
    except duckdb.Error as exc:
        raise _refuse(source, f"{table}.parquet is not a readable Parquet file ({exc}).") from None
    if found != columns:
        wrong = sorted(
            f"{name} {found.get(name, 'missing')} (expected {columns.get(name, 'no such column')})"
            for name in set(found) | set(columns)
            if found.get(name) != columns.get(name)
        )
        raise _refuse(source, f"the columns of {table}.parquet differ: {'; '.join(wrong)}.")
    names = ", ".join(sql_identifier(c) for c in columns)
    con.execute(
        f"INSERT INTO {sql_identifier(table)} ({names}) SELECT {names} FROM read_parquet(?)",
        [file],
    )
    if _scalar(con, f"SELECT count(*) FROM {sql_identifier(table)}") != rows:
        raise _refuse(source, f"{table} holds other rows than its manifest counts.")


def _continue_sequences(con: duckdb.DuckDBPyConnection) -> None:
    """Move each sequence past the largest id restored in the column it numbers."""
    for table, column, default in con.execute(
        "SELECT table_name, column_name, column_default FROM duckdb_columns()"
        " WHERE NOT internal AND column_default LIKE 'nextval(%'"
    ).fetchall():
        sequence = re.fullmatch(r"nextval\('([a-z_][a-z0-9_]*)'\)", str(default))
        if sequence is None:
            continue
        top = _scalar(con, f"SELECT max({sql_identifier(column)}) FROM {sql_identifier(table)}")
        if top is not None:
            con.execute("SELECT setval(?, ?)", [sequence[1], int(top)]).fetchall()


def _build(source: Path, manifest: dict[str, Any], staging: Path) -> None:
    """Build the restored store in ``staging``: the backup's schema from our migrations, its
    rows from the Parquet files, then the migrations it lacked. Raises StoreError."""
    tables: dict[str, int] = manifest["tables"]
    if "schema_migrations" not in tables:
        raise _refuse(source, "it holds no schema_migrations table.")
    known = {m.version for m in migrations()}
    con = duckdb.connect(str(staging))
    try:
        con.execute("SET TimeZone = 'UTC'")
        migrate(con, staging, only=())  # the schema_migrations table alone
        ledger = _table_columns(con)["schema_migrations"]
        _fill(con, source, "schema_migrations", ledger, tables["schema_migrations"])
        applied = {
            int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()
        }
        if max(applied, default=0) != manifest["schema_version"] or not applied <= known:
            raise _refuse(
                source,
                f"its migrations {sorted(applied)} do not match its schema version "
                f"{manifest['schema_version']} or this Flywheel's migrations.",
            )
        con.execute("DELETE FROM schema_migrations")
        migrate(con, staging, only=applied)
        con.execute("DELETE FROM schema_migrations")
        schema = _table_columns(con)
        unknown = sorted(set(tables) - set(schema))
        if unknown:
            raise _refuse(
                source,
                f"it holds table(s) {', '.join(unknown)} that Flywheel's migrations do not create.",
            )
        missing = sorted(set(schema) - set(tables))
        if missing:
            raise _refuse(source, f"it lacks the table(s) {', '.join(missing)}.")
        con.execute("BEGIN TRANSACTION")
        for table in sorted(tables):
            _fill(con, source, table, schema[table], tables[table])
        _continue_sequences(con)
        con.execute("COMMIT")
        migrate(con, staging)
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        raise _refuse(source, f"its data does not fit Flywheel's tables ({exc}).") from None
    finally:
        con.close()


@contextmanager
def _staging_file(destination: Path) -> Iterator[Path]:
    """A new file beside ``destination`` for the restore to build in; removed unless used."""
    staging = destination.with_name(f".{destination.name}.restoring-{uuid.uuid4().hex[:8]}")
    try:
        yield staging
    finally:
        for leftover in (staging, Path(f"{staging}.wal")):
            leftover.unlink(missing_ok=True)


def restore_store(
    source: str | Path, target: str | Path, *, user: User, replace: bool = False
) -> BackupResult:
    """Rebuild the store at ``target`` from a backup directory (see the module docstring), then
    bring its schema up to date. The old file is replaced only once the restore is whole, while
    no connection or cycle run of any process holds it; the new store's audit log records the
    restore (``store.restore``).

    Raises StoreError, with the target untouched, when the backup is damaged, altered,
    unsigned while FLYWHEEL_BACKUP_KEY is set, holds anything but the tables Flywheel's
    migrations create, or comes from a newer Flywheel; when ``target`` holds a store and
    ``replace`` is False; or when the store stays in use past the lock timeout. AccessError,
    before anything is read or written, when ``user`` may not restore a store.
    """
    require(user, "store.backup")
    key = _backup_key()
    backup, destination = Path(source), Path(target)
    manifest = _verified_manifest(backup, key)
    if destination.exists() and not replace:
        raise StoreError(
            f"{destination} already holds a store; pass --replace to overwrite it with the backup."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    store = Store(destination)
    with _staging_file(destination) as staging:
        _build(backup, manifest, staging)
        with store.exclusive():
            if destination.exists() and not replace:
                raise StoreError(
                    f"{destination} was created meanwhile; pass --replace to overwrite it."
                )
            # The old write-ahead log must not be replayed onto the new file.
            Path(f"{destination}.wal").unlink(missing_ok=True)
            os.replace(staging, destination)
            forget_migrated(destination)
    with store.transaction() as con:
        record_audit(
            con,
            actor=user.name,
            action="store.restore",
            target=str(backup.resolve()),
            detail={"schema_version": manifest["schema_version"], "signed": bool(key)},
        )
    version = store.schema_version()
    return BackupResult(str(destination), version, dict(manifest["tables"]), signed=key is not None)
