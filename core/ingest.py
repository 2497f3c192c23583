"""Reading interaction logs, consent events and eval items into the store; quarantine of bad rows.

A load is a batch: file name, sha256, counts and times. Every row read is accepted, rejected
(quarantined with its line number and reason) or counted as a duplicate, so the counts always
reconcile. A file whose sha256 is already stored for the same kind adds nothing.

How a file becomes rows (all inside DuckDB):

* JSONL, the fast path: ``read_json`` with every field as VARCHAR, ``ignore_errors`` and
  ``WITH ORDINALITY``; a malformed line becomes an all-NULL row at its own position, so the
  ordinality is the line number. A Python pre-pass over the bytes (needed for the sha256
  anyway) checks that the file has no BOM and no blank lines, which would break that equality.
* JSONL, the exact path (gzip, BOM, blank lines): ``read_csv`` reading each line whole as one
  VARCHAR, ``json_extract_string`` per field; lines DuckDB refuses as invalid UTF-8 come back
  from its rejects table with their line numbers, and only they are quarantined.
* CSV (quoted newlines included) and Parquet: DuckDB's readers, every column cast to VARCHAR.

Validation, coercion and PII redaction are Ibis expressions over that VARCHAR relation
(``interaction_stage``), compiled to one DuckDB query; they run unchanged on other Ibis
backends once the PII macros exist there.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir

from core.audit import record_audit
from core.errors import IngestError
from core.privacy import PII_TYPES, install_pii_macros
from core.settings import get_setting
from core.store import Store

__all__ = [
    "CONSENT_FIELDS",
    "EVAL_ITEM_FIELDS",
    "INTERACTION_FIELDS",
    "KINDS",
    "FieldSpec",
    "IngestResult",
    "Kind",
    "batch_rejects",
    "ingest_bytes",
    "ingest_file",
    "interaction_stage",
    "list_batches",
]

Kind = Literal["interactions", "consent", "eval-items"]
KINDS: tuple[Kind, ...] = ("interactions", "consent", "eval-items")

FieldType = Literal["id", "text", "timestamp", "bool", "int", "number", "object", "enum"]


@dataclass(frozen=True)
class FieldSpec:
    """One field of a data contract: its type, whether it is required, allowed values."""

    name: str
    type: FieldType
    required: bool = False
    values: tuple[str, ...] = ()


INTERACTION_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("interaction_id", "id", True),
    FieldSpec("ts", "timestamp", True),
    FieldSpec("user_id", "id", True),
    FieldSpec("variant", "id", True),
    FieldSpec("model", "id", True),
    FieldSpec("prompt", "text", True),
    FieldSpec("response", "text", True),
    FieldSpec("system", "text"),
    FieldSpec("feedback", "enum", values=("up", "down")),
    FieldSpec("accepted", "bool"),
    FieldSpec("latency_ms", "int"),
    FieldSpec("input_tokens", "int"),
    FieldSpec("output_tokens", "int"),
    FieldSpec("cost_usd", "number"),
    FieldSpec("topic", "id"),
    FieldSpec("difficulty", "id"),
    FieldSpec("metadata", "object"),
)

CONSENT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("user_id", "id", True),
    FieldSpec("ts", "timestamp", True),
    FieldSpec("scope", "enum", True, ("training", "human_review", "analytics")),
    FieldSpec("action", "enum", True, ("grant", "withdraw")),
    FieldSpec("policy_version", "id", True),
    FieldSpec("source", "id", True),
)

EVAL_ITEM_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("item_id", "id", True),
    FieldSpec("eval_set", "id", True),
    FieldSpec("prompt", "text", True),
    FieldSpec("reference", "text"),
    FieldSpec("topic", "id"),
    FieldSpec("difficulty", "id"),
    FieldSpec("labels", "object"),
)

_FIELDS: dict[Kind, tuple[FieldSpec, ...]] = {
    "interactions": INTERACTION_FIELDS,
    "consent": CONSENT_FIELDS,
    "eval-items": EVAL_ITEM_FIELDS,
}
_TEXT_FIELDS = ("prompt", "response", "system")


@dataclass
class IngestResult:
    """What one load did; ``rows_read == accepted + rejected + duplicates`` always."""

    batch_id: str
    kind: str
    file_name: str
    sha256: str
    rows_read: int
    accepted: int
    rejected: int
    duplicates: int
    already_loaded: bool = False
    cycle: int | None = None
    pii_found: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the ``ingest --json`` keys)."""
        return asdict(self)

    @property
    def summary(self) -> str:
        """One line for people."""
        if self.already_loaded:
            return (
                f"{self.file_name} was already loaded as batch {self.batch_id} "
                f"(sha256 {self.sha256[:12]}…): nothing added."
            )
        pii = ", ".join(f"{n} {t}" for t, n in sorted(self.pii_found.items()))
        return (
            f"Batch {self.batch_id} ({self.kind}): {self.rows_read} rows read, "
            f"{self.accepted} accepted, {self.rejected} rejected, {self.duplicates} duplicates"
            + (f"; PII redacted: {pii}" if pii else "")
            + "."
        )


# -- the Ibis stage ------------------------------------------------------------------------------


@ibis.udf.scalar.builtin(name="fw_redact")
def _redact(text: str) -> str:  # type: ignore[empty-body]
    """DuckDB macro of core.privacy: the text with PII replaced by placeholders."""


@ibis.udf.scalar.builtin(name="fw_pii_found")
def _pii_found(a: str, b: str, c: str) -> dt.Array(dt.string):  # type: ignore[empty-body,valid-type]
    """DuckDB macro of core.privacy: the sorted PII types whose placeholders occur in texts."""


@ibis.udf.scalar.builtin(name="json_valid")
def _json_valid(text: str) -> bool:  # type: ignore[empty-body]
    """DuckDB's json_valid."""


@ibis.udf.scalar.builtin(name="strlen")
def _byte_length(text: str) -> int:  # type: ignore[empty-body]
    """DuckDB's strlen: the length in bytes of the UTF-8 text."""


@ibis.udf.scalar.builtin(name="json_type")
def _json_type(text: str) -> str:  # type: ignore[empty-body]
    """DuckDB's json_type."""


def _source_schema(fields: tuple[FieldSpec, ...]) -> ibis.Schema:
    columns: dict[str, str] = {"line": "int64", "fw_pre_reason": "string"}
    columns.update({f.name: "string" for f in fields})
    return ibis.schema(columns)


def _check(spec: FieldSpec, value: ir.StringValue, max_text_bytes: int) -> list[tuple[Any, Any]]:
    """(condition, reason) pairs of one field, in the order they are reported."""
    name = spec.name
    present = value.notnull()
    checks: list[tuple[Any, Any]] = []
    if spec.required:
        missing = value.isnull() | ((value.strip() == "") if spec.type != "text" else False)
        checks.append((missing, f"missing required field: {name}"))
    shown = value.substr(0, 40)
    if spec.type == "timestamp":
        bad = present & value.try_cast("timestamp('UTC')").isnull()
        checks.append((bad, ibis.literal(f"{name} is not a timestamp: ").concat(shown)))
    elif spec.type == "bool":
        bad = present & ~value.lower().isin(["true", "false"])
        checks.append((bad, ibis.literal(f"{name} is not true/false: ").concat(shown)))
    elif spec.type == "int":
        number = value.try_cast("float64")
        bad = present & (number.isnull() | (number != number.round()) | (number < 0))
        checks.append((bad, ibis.literal(f"{name} is not a whole number ≥ 0: ").concat(shown)))
    elif spec.type == "number":
        bad = present & value.try_cast("float64").isnull()
        checks.append((bad, ibis.literal(f"{name} is not a number: ").concat(shown)))
    elif spec.type == "object":
        bad = present & (~_json_valid(value) | (_json_type(value) != "OBJECT"))
        checks.append((bad, f"{name} is not a JSON object"))
    elif spec.type == "enum":
        bad = present & ~value.lower().isin(list(spec.values))
        allowed = " / ".join(spec.values)
        checks.append((bad, ibis.literal(f"{name} is not one of {allowed}: ").concat(shown)))
    elif spec.type == "text":
        bad = present & (_byte_length(value) > max_text_bytes)
        checks.append((bad, f"{name} is over the {max_text_bytes}-byte limit (max_text_bytes)"))
    return checks


def interaction_stage(kind: Kind = "interactions", *, max_text_bytes: int) -> ir.Table:
    """The validation + coercion + redaction stage over a VARCHAR relation named ``fw_source``.

    Columns out: ``line``, ``reason`` (NULL when the row is accepted), the typed fields and, for
    interactions, redacted texts with ``pii`` (types found) and ``raw_*`` originals kept only
    where PII was found.
    """
    fields = _FIELDS[kind]
    source = ibis.table(_source_schema(fields), name="fw_source")
    cases: list[tuple[Any, Any]] = [(source.fw_pre_reason.notnull(), source.fw_pre_reason)]
    for spec in fields:
        cases.extend(_check(spec, source[spec.name], max_text_bytes))
    reason = ibis.cases(*cases, else_=ibis.null("string"))
    out: dict[str, Any] = {"line": source.line, "reason": reason}
    for spec in fields:
        value = source[spec.name]
        if spec.type == "timestamp":
            out[spec.name] = value.try_cast("timestamp('UTC')")
        elif spec.type == "bool":
            out[spec.name] = value.lower() == "true"
        elif spec.type == "int":
            out[spec.name] = value.try_cast("float64").try_cast("int64")
        elif spec.type == "number":
            out[spec.name] = value.try_cast("float64")
        elif spec.type == "enum":
            out[spec.name] = value.lower()
        elif kind == "interactions" and spec.name in _TEXT_FIELDS:
            out[spec.name] = _redact(value)
            out["raw_" + spec.name] = value
        else:
            out[spec.name] = value
    stage = source.select(**out)
    if kind != "interactions":
        return stage
    stage = stage.mutate(pii=_pii_found(*(stage[name] for name in _TEXT_FIELDS)))
    found = stage.pii.length() > 0
    return stage.mutate(
        **{
            "raw_" + name: ibis.ifelse(found, stage["raw_" + name], ibis.null("string"))
            for name in _TEXT_FIELDS
        }
    )


# -- reading files -------------------------------------------------------------------------------

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def _file_format(name: str) -> tuple[str, bool]:
    lower = name.lower()
    gz = lower.endswith(".gz")
    stem = lower[:-3] if gz else lower
    suffix = Path(stem).suffix
    if suffix == ".parquet" and not gz:
        return "parquet", False
    if suffix in _FORMATS:
        return _FORMATS[suffix], gz
    raise IngestError(
        f"{name}: unknown file type; use .jsonl, .csv or .parquet (JSONL and CSV may be .gz)."
    )


@dataclass
class _Scan:
    sha256: str
    bom: bool
    blank_lines: bool


def _scan(path: Path) -> _Scan:
    """sha256 of the bytes, and whether the file starts with a BOM or holds blank lines."""
    digest = hashlib.sha256()
    bom = blank = False
    previous = b""
    with path.open("rb") as handle:
        first = True
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
            if first:
                bom = chunk.startswith(b"\xef\xbb\xbf")
                blank = chunk.startswith((b"\n", b"\r\n"))
                first = False
            if not blank:
                joined = previous + chunk[:2]
                blank = (
                    b"\n\n" in chunk
                    or b"\n\r\n" in chunk
                    or b"\n\n" in joined
                    or b"\n\r\n" in joined
                )
            previous = chunk[-2:]
    return _Scan(digest.hexdigest(), bom, blank)


def _lines_sql(path: Path, rejects: str) -> str:
    """Each physical line of ``path`` as one VARCHAR, numbered; bad UTF-8 goes to ``rejects``."""
    return (
        "SELECT ordinality AS k, raw FROM read_csv("
        + _sql_string(str(path))
        + ", columns={'raw': 'VARCHAR'}, "
        "delim=E'\\x1f', quote='', escape='', header=false, auto_detect=false, "
        f"ignore_errors=true, strict_mode=false, max_line_size={_max_line_bytes()}, "
        "store_rejects=true, "
        f"rejects_table='{rejects}_errors', rejects_scan='{rejects}_scans') WITH ORDINALITY"
    )


def _struct(fields: tuple[FieldSpec, ...], kind: str) -> str:
    return "{" + ", ".join(f"'{f.name}': '{kind}'" for f in fields) + "}"


def _prepare_source(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    gz: bool,
    scan: _Scan,
    fields: tuple[FieldSpec, ...],
) -> tuple[str, str | None]:
    """Create the temp relation ``fw_source``; return how it was read and the rejects prefix."""
    names = [f.name for f in fields]
    params = {"path": str(path)}
    if fmt == "jsonl" and not gz and not scan.bom and not scan.blank_lines:
        all_null = " AND ".join(f"{n} IS NULL" for n in names)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW fw_raw AS SELECT * FROM read_json($path, "
            f"format='newline_delimited', columns={_struct(fields, 'VARCHAR')}, "
            f"ignore_errors=true, maximum_object_size={_max_line_bytes()}) WITH ORDINALITY".replace(
                "$path", _sql_string(str(path))
            )
        )
        con.execute(
            "CREATE OR REPLACE TEMP VIEW fw_source AS SELECT ordinality AS line, "
            f"CASE WHEN {all_null} THEN 'fw_suspect' END AS fw_pre_reason, "
            + ", ".join(names)
            + " FROM fw_raw"
        )
        return "fast", None
    if fmt == "jsonl":
        rejects = "fw_rj_" + uuid.uuid4().hex[:8]
        paths = "[" + ", ".join(f"'$.{n}'" for n in names) + "]"
        extracted = ", ".join(f"v[{i + 1}] AS {n}" for i, n in enumerate(names))
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE fw_lines AS {_lines_sql(path, rejects)}"
        )
        bad = con.execute(
            f"SELECT line, bool_or(error_type = 'INVALID ENCODING') FROM {rejects}_errors "
            "GROUP BY line ORDER BY line"
        ).fetchall()
        # The k-th line DuckDB kept is physical line k + (number of refused lines before it).
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_bad_lines (line BIGINT, j BIGINT, reason VARCHAR)"
        )
        too_long = f"line is over the {_max_line_bytes()}-byte read limit"
        _insert_many(
            con,
            "fw_bad_lines",
            [[b, i + 1, "invalid UTF-8" if utf8 else too_long] for i, (b, utf8) in enumerate(bad)],
        )
        typed = ", ".join(
            f"CASE WHEN fw_ok THEN v[{i + 1}] END AS {n}" for i, n in enumerate(names)
        )
        nulls = ", ".join(f"NULL AS {n}" for n in names)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW fw_source AS "
            "SELECT line, CASE WHEN NOT json_valid(raw) THEN 'invalid JSON' "
            "WHEN NOT fw_ok THEN 'not a JSON object' END AS fw_pre_reason, "
            f"{typed}, raw FROM ("
            "SELECT line, raw, fw_ok, CASE WHEN fw_ok THEN "
            f"try(json_extract_string(raw, {paths})) END AS v FROM ("
            "SELECT k + (SELECT count(*) FROM fw_bad_lines b WHERE b.line - b.j < k) AS line, "
            "raw, coalesce(try(json_type(raw)) = 'OBJECT', false) AS fw_ok FROM fw_lines "
            "WHERE raw IS NOT NULL AND trim(raw) <> ''))"
            f" UNION ALL SELECT line, reason, {nulls}, NULL FROM fw_bad_lines"
        )
        return "lines", rejects
    if fmt == "csv":
        header = [
            str(r[0])
            for r in con.execute(
                "DESCRIBE SELECT * FROM read_csv($path, header=true, all_varchar=true)", params
            ).fetchall()
        ]
        present = ", ".join(
            (f'"{n}"' if n in header else "NULL::VARCHAR") + f" AS {n}" for n in names
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_csv AS SELECT ordinality + 1 AS line, * FROM "
            "read_csv($path, header=true, all_varchar=true, ignore_errors=true, "
            "strict_mode=false) WITH ORDINALITY".replace("$path", _sql_string(str(path)))
        )
        con.execute(
            "CREATE OR REPLACE TEMP VIEW fw_source AS SELECT line, NULL::VARCHAR AS "
            f"fw_pre_reason, {present} FROM fw_csv"
        )
        return "csv", None
    columns = [
        str(r[0])
        for r in con.execute("DESCRIBE SELECT * FROM read_parquet($path)", params).fetchall()
    ]
    present = ", ".join(
        (f'CAST("{n}" AS VARCHAR)' if n in columns else "NULL::VARCHAR") + f" AS {n}"
        for n in names
    )
    con.execute(
        "CREATE OR REPLACE TEMP VIEW fw_source AS SELECT file_row_number + 1 AS line, "
        f"NULL::VARCHAR AS fw_pre_reason, {present} FROM read_parquet("
        + _sql_string(str(path))
        + ", file_row_number=true)"
    )
    return "parquet", None


def _max_line_bytes() -> int:
    """Longest JSONL line the fast path reads: room for three texts at the size limit."""
    return max(16 << 20, 4 * int(get_setting("max_text_bytes")) + (1 << 20))


def _sql_string(text: str) -> str:
    """A SQL string literal. DuckDB views cannot hold bound parameters, so the file path of a
    temporary view is quoted here: the only value ever formatted into SQL, escaped as SQL does."""
    return "'" + text.replace("'", "''") + "'"


def _physical_lines(path: Path, wanted: list[int]) -> dict[int, bytes]:
    """The raw bytes of the given 1-based lines, found by counting newlines (memchr speed)."""
    result: dict[int, bytes] = {}
    targets = sorted(set(wanted))
    if not targets:
        return result
    index = 0
    line = 1
    carry = b""
    with path.open("rb") as handle:
        while index < len(targets) and (chunk := handle.read(1 << 24)):
            data = carry + chunk
            start = 0
            while index < len(targets):
                end = data.find(b"\n", start)
                if end < 0:
                    break
                if line == targets[index]:
                    result[line] = data[start:end].rstrip(b"\r")
                    index += 1
                    start = end + 1
                    line += 1
                    continue
                # Jump over lines before the next target without slicing each one.
                gap = targets[index] - line
                newlines = data.count(b"\n", start)
                if newlines <= gap:
                    line += newlines
                    start = data.rfind(b"\n") + 1
                    break
                for _ in range(gap):
                    start = data.find(b"\n", start) + 1
                line += gap
            carry = data[start:]
        if index < len(targets) and carry and line == targets[index]:
            result[line] = carry.rstrip(b"\r")
    return result


def _classify(raw: bytes) -> str | None:
    """Why a line the fast path could not read was refused, or None if it is a JSON object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid UTF-8"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return "invalid JSON"
    return None if isinstance(value, dict) else "not a JSON object"


# -- the load ------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def ingest_file(
    store: Store,
    path: str | Path,
    *,
    kind: Kind = "interactions",
    cycle: int | None = None,
    file_name: str | None = None,
    actor: str | None = None,
) -> IngestResult:
    """Load one file as a batch; bad rows go to the quarantine, duplicates are counted.

    Raises IngestError when the file cannot be read at all (missing, unknown type, not the
    format its name says); nothing is written then.
    """
    source = Path(path)
    name = file_name or source.name
    if kind not in KINDS:
        raise IngestError(f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not source.is_file():
        raise IngestError(f"{source}: no such file; give the path of a JSONL, CSV or Parquet file.")
    fmt, gz = _file_format(name)
    started = _now()
    scan = _scan(source)
    existing = store.fetch_one(
        "SELECT batch_id, rows_read, cycle FROM ingest_batches WHERE sha256 = ? AND kind = ?",
        [scan.sha256, kind],
    )
    if existing is not None:
        rows = int(existing[1])
        return IngestResult(
            str(existing[0]), kind, name, scan.sha256, rows, 0, 0, rows, True, existing[2]
        )
    batch_id = started.strftime("b%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    max_bytes = int(get_setting("max_text_bytes"))
    fields = _FIELDS[kind]
    try:
        with store.transaction() as con:
            _configure(con, store)
            install_pii_macros(con)
            how, _ = _prepare_source(con, source, fmt, gz, scan, fields)
            stage_sql = ibis.to_sql(interaction_stage(kind, max_text_bytes=max_bytes), "duckdb")
            con.execute(f"CREATE OR REPLACE TEMP TABLE fw_stage AS {stage_sql}")
            if how == "fast":
                _reclassify_suspects(con, source, fields)
            result = _store_batch(con, kind, batch_id, cycle, source, how)
            con.execute(
                "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    batch_id,
                    kind,
                    name,
                    scan.sha256,
                    cycle,
                    result["rows_read"],
                    result["accepted"],
                    result["rejected"],
                    result["duplicates"],
                    started,
                    _now(),
                    actor or str(get_setting("actor")),
                ],
            )
            record_audit(
                con,
                actor=actor or str(get_setting("actor")),
                action="ingest",
                target=batch_id,
                detail={
                    "kind": kind,
                    "file_name": name,
                    "sha256": scan.sha256,
                    **{k: v for k, v in result.items() if k != "pii_found"},
                },
            )
            for table in ("fw_stage", "fw_lines", "fw_csv", "fw_bad_lines", "fw_suspects"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
    except duckdb.Error as exc:
        raise IngestError(
            f"{name}: cannot be read as {fmt.upper()}{' (gzip)' if gz else ''} ({exc}); "
            "check that the file is what its name says."
        ) from None
    return IngestResult(
        batch_id,
        kind,
        name,
        scan.sha256,
        result["rows_read"],
        result["accepted"],
        result["rejected"],
        result["duplicates"],
        False,
        cycle,
        result["pii_found"],
    )


def _configure(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    con.execute("SET TimeZone = 'UTC'")
    limit = str(get_setting("ingest_memory_limit"))
    if limit:
        con.execute("SET memory_limit = ?", [limit])


def _reclassify_suspects(
    con: duckdb.DuckDBPyConnection, path: Path, fields: tuple[FieldSpec, ...]
) -> None:
    """Give the rows the fast path read as all-NULL their true reason, from their bytes."""
    lines = [
        int(r[0])
        for r in con.execute("SELECT line FROM fw_stage WHERE reason = 'fw_suspect'").fetchall()
    ]
    if not lines:
        return
    raw = _physical_lines(path, lines)
    first_required = next(f.name for f in fields if f.required)
    limit = _max_line_bytes()
    updates = [
        [
            f"line is over the {limit}-byte read limit"
            if len(raw.get(line, b"")) > limit
            else _classify(raw.get(line, b"")) or f"missing required field: {first_required}",
            line,
        ]
        for line in lines
    ]
    if updates:
        con.executemany("UPDATE fw_stage SET reason = ? WHERE line = ?", updates)


def _store_batch(
    con: duckdb.DuckDBPyConnection, kind: Kind, batch_id: str, cycle: int | None, path: Path, how: str
) -> dict[str, Any]:
    """Move the stage into its table, the rejects into the quarantine; return the counts."""
    rows_read = int(con.execute("SELECT count(*) FROM fw_stage").fetchall()[0][0])
    # Duplicates: an accepted row whose key is stored already, or repeats an earlier line.
    if kind == "interactions":
        key, table = "interaction_id", "interactions"
    elif kind == "eval-items":
        key, table = "item_id", "eval_items"
    else:
        key, table = "", "consent_events"
    if key:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE fw_keep AS SELECT s.line FROM fw_stage s "
            f"WHERE s.reason IS NULL AND NOT EXISTS (SELECT 1 FROM {table} t "
            f"WHERE t.{key} = s.{key}) QUALIFY row_number() OVER (PARTITION BY s.{key} "
            "ORDER BY s.line) = 1"
        )
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_keep AS SELECT s.line FROM fw_stage s "
            "WHERE s.reason IS NULL AND NOT EXISTS (SELECT 1 FROM consent_events t WHERE "
            "t.user_id = s.user_id AND t.ts = s.ts AND t.scope = s.scope AND "
            "t.action = s.action AND t.policy_version = s.policy_version AND "
            "t.source = s.source) QUALIFY row_number() OVER (PARTITION BY s.user_id, s.ts, "
            "s.scope, s.action, s.policy_version, s.source ORDER BY s.line) = 1"
        )
    keep = "SELECT s.* FROM fw_stage s SEMI JOIN fw_keep k ON s.line = k.line"
    pii_found: dict[str, int] = {}
    if kind == "interactions":
        con.execute(
            "INSERT INTO interactions SELECT interaction_id, ?, ?, line, ts, user_id, variant, "
            "model, prompt, response, system, feedback, accepted, latency_ms, input_tokens, "
            f"output_tokens, cost_usd, topic, difficulty, metadata::JSON, pii FROM ({keep})",
            [batch_id, cycle],
        )
        con.execute(
            "INSERT INTO pii_originals SELECT interaction_id, ?, user_id, raw_prompt, "
            f"raw_response, raw_system FROM ({keep}) WHERE len(pii) > 0",
            [batch_id],
        )
        counts = con.execute(
            "SELECT "
            + ", ".join(
                f"coalesce(sum(fw_pii_count(prompt, '{t}') + fw_pii_count(response, '{t}') "
                f"+ fw_pii_count(system, '{t}')), 0)"
                for t in PII_TYPES
            )
            + " FROM interactions WHERE batch_id = ? AND len(pii) > 0",
            [batch_id],
        ).fetchall()[0]
        pii_found = {t: int(n) for t, n in zip(PII_TYPES, counts, strict=True) if n}
        _insert_many(con, "pii_counts", [[batch_id, t, n] for t, n in pii_found.items()])
    elif kind == "consent":
        con.execute(
            "INSERT INTO consent_events SELECT ?, line, user_id, ts, scope, action, "
            f"policy_version, source FROM ({keep})",
            [batch_id],
        )
    else:
        con.execute(
            "INSERT INTO eval_items SELECT item_id, ?, eval_set, prompt, reference, topic, "
            f"difficulty, labels::JSON FROM ({keep})",
            [batch_id],
        )
    accepted = int(con.execute("SELECT count(*) FROM fw_keep").fetchall()[0][0])
    rejected_lines = con.execute(
        "SELECT line, reason, " + ("user_id" if kind != "eval-items" else "NULL")
        + " FROM fw_stage WHERE reason IS NOT NULL ORDER BY line"
    ).fetchall()
    raw = _raw_of_rejects(con, path, how, [int(r[0]) for r in rejected_lines])
    _insert_many(
        con,
        "quarantine",
        [
            [batch_id, int(line), reason, raw.get(int(line)), user or _user_in(raw.get(int(line)))]
            for line, reason, user in rejected_lines
        ],
    )
    rejected = len(rejected_lines)
    return {
        "rows_read": rows_read,
        "accepted": accepted,
        "rejected": rejected,
        "duplicates": rows_read - accepted - rejected,
        "pii_found": pii_found,
    }


def _insert_many(con: duckdb.DuckDBPyConnection, table: str, rows: list[list[Any]]) -> None:
    """Insert rows into one of our tables (``table`` is a constant of this module)."""
    if rows:
        marks = ", ".join("?" for _ in rows[0])
        con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


def _user_in(raw: str | None) -> str | None:
    """The user id of a quarantined line that is still a JSON object, so erasure finds it."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    user = value.get("user_id") if isinstance(value, dict) else None
    return str(user) if user is not None else None


def _raw_of_rejects(
    con: duckdb.DuckDBPyConnection, path: Path, how: str, lines: list[int]
) -> dict[int, str]:
    """The original text of each rejected line, as shown in the quarantine."""
    if not lines:
        return {}
    if how == "fast":
        return {
            n: b.decode("utf-8", errors="replace") for n, b in _physical_lines(path, lines).items()
        }
    if how == "lines":
        rows = con.execute(
            "SELECT line, raw FROM fw_source WHERE line IN (SELECT unnest(?))", [lines]
        ).fetchall()
        found = {int(r[0]): r[1] for r in rows if r[1] is not None}
        missing = [n for n in lines if n not in found]
        if missing:
            # Lines DuckDB refused (invalid UTF-8) are read as bytes, shown with U+FFFD.
            found.update(
                {
                    n: b.decode("utf-8", errors="replace")
                    for n, b in _physical_lines_any(path, missing).items()
                }
            )
        return found
    table = "fw_csv" if how == "csv" else "fw_source"
    rows = con.execute(
        f"SELECT line, to_json(t)::VARCHAR FROM {table} t WHERE line IN (SELECT unnest(?))",
        [lines],
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def _physical_lines_any(path: Path, lines: list[int]) -> dict[int, bytes]:
    """Like _physical_lines, through gzip when the file is compressed and without a BOM."""
    if path.name.lower().endswith(".gz") or _is_gzip(path):
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "plain"
            with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            return _strip_bom(_physical_lines(plain, lines))
    return _strip_bom(_physical_lines(path, lines))


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _strip_bom(found: dict[int, bytes]) -> dict[int, bytes]:
    if 1 in found and found[1].startswith(b"\xef\xbb\xbf"):
        found[1] = found[1][3:]
    return found


def ingest_bytes(
    store: Store,
    data: bytes,
    file_name: str,
    *,
    kind: Kind = "interactions",
    cycle: int | None = None,
    actor: str | None = None,
) -> IngestResult:
    """Load an uploaded file (its bytes and name) exactly as ``ingest_file`` loads a path."""
    _file_format(file_name)
    suffix = "".join(Path(file_name).suffixes[-2:]) or ".jsonl"
    handle, temp = tempfile.mkstemp(suffix=suffix, prefix="flywheel-upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return ingest_file(
            store, temp, kind=kind, cycle=cycle, file_name=Path(file_name).name, actor=actor
        )
    finally:
        Path(temp).unlink(missing_ok=True)


# -- reading back --------------------------------------------------------------------------------


def list_batches(store: Store) -> list[dict[str, Any]]:
    """Every batch, newest first."""
    return store.fetch_dicts(
        "SELECT batch_id, kind, file_name, sha256, cycle, rows_read, accepted, rejected, "
        "duplicates, started_at, finished_at FROM ingest_batches ORDER BY started_at DESC"
    )


def batch_rejects(store: Store, batch_id: str) -> list[dict[str, Any]]:
    """The quarantined rows of one batch: line, reason and the raw line.

    Raises IngestError when the batch does not exist.
    """
    if store.fetch_one("SELECT 1 FROM ingest_batches WHERE batch_id = ?", [batch_id]) is None:
        raise IngestError(
            f"No batch {batch_id!r}; `python -m core ingest FILE` prints the id of each batch."
        )
    return store.fetch_dicts(
        "SELECT line, reason, raw FROM quarantine WHERE batch_id = ? ORDER BY line", [batch_id]
    )
