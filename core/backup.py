"""Backup and restore of the whole store: DuckDB's EXPORT / IMPORT DATABASE plus a manifest
of row counts and file checksums, so a restore can prove it got back what was saved."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from core import __version__
from core.access import User, require
from core.errors import StoreError
from core.store import Store, forget_migrated, migrations

__all__ = ["BackupResult", "backup_store", "restore_store"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore wrote: where, the schema version and rows per table."""

    path: str
    schema_version: int
    tables: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    names = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY table_name"
        ).fetchall()
    ]
    return {n: int(con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}  # type: ignore[index]


def backup_store(store: Store, directory: str | Path, *, user: User) -> BackupResult:
    """Write every table of ``store`` to ``directory`` (new or empty) as Parquet, with a
    manifest. Raises StoreError when the directory holds files already; AccessError, before
    anything is written, when ``user`` may not back up the store (a backup holds raw PII)."""
    require(user, "store.backup")
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise StoreError(f"{target} is not empty; back up into a new or empty directory.")
    target.mkdir(parents=True, exist_ok=True)
    with store.transaction() as con:  # one snapshot: counts and files agree
        counts = _row_counts(con)
        version = int(con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])  # type: ignore[index]
        con.execute(f"EXPORT DATABASE '{_sql_path(target)}' (FORMAT parquet)")
    files = {p.name: _sha256(p) for p in sorted(target.iterdir()) if p.name != MANIFEST}
    manifest = {
        "flywheel": __version__,
        "schema_version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "tables": counts,
        "files": files,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), "utf-8")
    return BackupResult(str(target), version, counts)


def _sql_path(path: Path) -> str:
    text = str(path.resolve())
    if "'" in text:
        raise StoreError(f"{path}: a backup path may not contain a quote.")
    return text


def _read_manifest(source: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((source / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{source} holds no {MANIFEST}: it is not a Flywheel backup.") from None
    except json.JSONDecodeError:
        raise StoreError(f"{source}/{MANIFEST} is damaged; it cannot be restored.") from None
    for name, digest in manifest.get("files", {}).items():
        file = source / name
        if not file.exists() or _sha256(file) != digest:
            raise StoreError(
                f"{source}/{name} is missing or changed since the backup; nothing was restored."
            )
    newest = migrations()[-1].version
    if int(manifest.get("schema_version", 0)) > newest:
        raise StoreError(
            f"The backup has schema version {manifest['schema_version']}, newer than this "
            f"Flywheel knows ({newest}); upgrade Flywheel to restore it."
        )
    return manifest


def restore_store(
    source: str | Path, target: str | Path, *, user: User, replace: bool = False
) -> BackupResult:
    """Rebuild the store at ``target`` from a backup directory, checking files and row counts,
    then bring its schema up to date. The old file is replaced only once the restore is whole.

    Raises StoreError when the backup is damaged, or when ``target`` holds a store and
    ``replace`` is False; AccessError, before anything is read or written, when ``user`` may
    not restore a store.
    """
    require(user, "store.backup")
    backup, destination = Path(source), Path(target)
    manifest = _read_manifest(backup)
    if destination.exists() and not replace:
        raise StoreError(
            f"{destination} already holds a store; pass --replace to overwrite it with the backup."
        )
    staging = destination.with_name(destination.name + ".restoring")
    for leftover in (staging, Path(str(staging) + ".wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect(str(staging))
    try:
        con.execute(f"IMPORT DATABASE '{_sql_path(backup)}'")
        counts = _row_counts(con)
    except duckdb.Error as exc:
        con.close()
        staging.unlink(missing_ok=True)
        raise StoreError(f"Restoring {backup} failed: {exc}. Nothing was changed.") from None
    con.close()
    if counts != manifest["tables"]:
        staging.unlink(missing_ok=True)
        raise StoreError(f"{backup}: the restored row counts differ from the manifest.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    Path(str(destination) + ".wal").unlink(missing_ok=True)
    os.replace(staging, destination)
    forget_migrated(destination)
    restored = Store(destination)
    version = restored.schema_version()
    return BackupResult(str(destination), version, counts)
