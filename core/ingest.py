"""Reading interaction logs, consent events and eval items into the store; quarantine of bad rows.

A load is a batch: file name, sha256, counts and times. Every row read is accepted, rejected
(quarantined with its line number and reason) or counted as a duplicate, so the counts always
reconcile. A file whose sha256 is already stored for the same kind adds nothing.

How a file becomes rows (all inside DuckDB):

* JSONL of interactions, the parallel path (``read_path`` "parallel"; a BOM and CRLF
  included): ``read_json`` with every field as VARCHAR and ``ignore_errors``, parsed in
  parallel with no row numbering (numbering held the reader to one thread). The reader makes
  one row of each line that is not blank, an all-NULL row of a line it cannot read (invalid
  JSON or UTF-8, the BOM's line). Every row is inserted in file order: an accepted one with
  ``line`` NULL, a rejected one as a placeholder with ``line = 0``. A placeholder's rank among
  the rows, plus the blank lines before it, is its line number; the placeholders are deleted,
  their lines read again (a thread that hashes the file also indexes its newlines) and judged
  one by one by the same stage as on the exact path, which gives each reject its reason from
  the line's own text (a BOM's first line, which the reader cannot parse, is stored from there
  when the stage accepts it). Counts that do not agree, or a reader that gives up (a very long
  line), send the file to the exact path. The rows are committed before the placeholders and
  duplicates are deleted (``_load_parallel``): DuckDB rewrites a whole bulk insert at commit
  when its own transaction deleted any of its rows.
* JSONL, the exact path (``read_path`` "exact": gzip, consent and eval items, the fallback):
  ``read_csv`` reading each line whole as one VARCHAR, numbered ``WITH ORDINALITY`` (one
  thread), ``json_extract_string`` per field; lines DuckDB refuses as invalid UTF-8 come back
  from its rejects table with their line numbers, and only they are quarantined.
* CSV (quoted newlines included) and Parquet: DuckDB's readers, every column cast to VARCHAR.

Validation, coercion and PII redaction are Ibis expressions over that VARCHAR relation
(``interaction_stage``), compiled to one DuckDB query; they run unchanged on other Ibis
backends once the PII macros exist there. A rejected row's reason names every problem it has,
joined by "; " (a line that is not a JSON object has only that one).
"""

from __future__ import annotations

import bisect
import functools
import gzip
import hashlib
import json
import mmap
import os
import re
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import duckdb
import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import numpy as np

from core import clock
from core.access import User, require
from core.audit import record_audit
from core.errors import IngestError
from core.escaping import sql_identifier, sql_string
from core.ingest_reads import batch_rejects, list_batches, pii_samples, pii_summary
from core.privacy import DETECTORS_FINGERPRINT, PII_TYPES, REDACTION_STEPS, install_pii_macros
from core.settings import settings
from core.store import Store, insert_rows

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
    "pii_samples",
    "pii_summary",
]

Kind = Literal["interactions", "consent", "eval-items"]
KINDS: tuple[Kind, ...] = ("interactions", "consent", "eval-items")

FieldType = Literal["id", "text", "timestamp", "bool", "int", "number", "object", "enum"]

# How a load read its file (module docstring): JSONL in parallel or line by line, CSV, Parquet.
ReadPath = Literal["parallel", "exact", "csv", "parquet"]


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
    # How the file was read; for a file loaded before, how that load read it (None: a batch
    # stored before this was recorded).
    read_path: ReadPath | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the ``data ingest --json`` keys)."""
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


@ibis.udf.scalar.builtin(name="fw_pii_candidate")  # type: ignore[untyped-decorator]
def _pii_candidate(text: str) -> bool:  # type: ignore[empty-body]
    """DuckDB macro of core.privacy: whether any detector's pattern occurs in the text."""


def _redaction_step(name: str) -> Any:
    @ibis.udf.scalar.builtin(name=name)  # type: ignore[untyped-decorator]
    def step(text: str) -> str:  # type: ignore[empty-body]
        """DuckDB macro of core.privacy: one detector's values replaced in the text."""

    return step


_REDACTION_STEPS = tuple(_redaction_step(name) for name in REDACTION_STEPS)


@ibis.udf.scalar.builtin(name="fw_pii_found")  # type: ignore[untyped-decorator]
def _pii_found(a: str, b: str, c: str) -> dt.Array(dt.string):  # type: ignore[valid-type]
    """DuckDB macro of core.privacy: the sorted PII types whose placeholders occur in texts."""


@ibis.udf.scalar.builtin(name="fw_is_json_object")  # type: ignore[untyped-decorator]
def _is_json_object(text: str) -> bool:  # type: ignore[empty-body]
    """Macro installed by the load: whether a text is a JSON object (never raises)."""


@ibis.udf.scalar.builtin(name="strlen")  # type: ignore[untyped-decorator]
def _byte_length(text: str) -> int:  # type: ignore[empty-body]
    """DuckDB's strlen: the length in bytes of the UTF-8 text."""


def _source_schema(fields: tuple[FieldSpec, ...]) -> ibis.Schema:
    columns: dict[str, str] = {"line": "int64", "fw_pre_reason": "string"}
    columns.update({f.name: "string" for f in fields})
    return ibis.schema(columns)


def _typed(spec: FieldSpec, value: ir.StringValue) -> ir.Value | None:
    """The field's parsed value (NULL where it cannot be read), or None for text kept as is."""
    if spec.type == "timestamp":
        return value.try_cast("timestamp('UTC')")
    if spec.type in ("int", "number"):
        return value.try_cast("float64")
    if spec.type in ("bool", "enum"):
        return value.lower()
    return None


def _check(
    spec: FieldSpec, value: ir.StringValue, typed: ir.Value | None, max_text_bytes: int
) -> list[tuple[Any, Any]]:
    """(condition, reason) pairs of one field, in the order they are reported. ``typed`` is
    the field's parsed value (``_typed``), computed once for the check and the output."""
    name = spec.name
    present = value.notnull()
    checks: list[tuple[Any, Any]] = []
    if spec.required:
        # Blank: empty or whitespace only. Such a value sorts before "!" (ASCII whitespace is
        # below it); only those are trimmed: a CASE evaluates its result on the rows its
        # condition selects, where an OR would trim every value.
        blank = ibis.cases((value < "!", value.strip() == ""), else_=False)
        missing = value.isnull() | (blank if spec.type != "text" else False)
        checks.append((missing, f"missing required field: {name}"))
    shown = value.substr(0, 40)
    if spec.type == "timestamp":
        assert typed is not None
        checks.append(
            (present & typed.isnull(), ibis.literal(f"{name} is not a timestamp: ").concat(shown))
        )
    elif spec.type == "bool":
        assert isinstance(typed, ir.StringValue)
        bad = present & ~typed.isin(["true", "false"])
        checks.append((bad, ibis.literal(f"{name} is not true/false: ").concat(shown)))
    elif spec.type == "int":
        assert isinstance(typed, ir.NumericValue)
        bad = present & (typed.isnull() | (typed != typed.round()) | (typed < 0))
        checks.append((bad, ibis.literal(f"{name} is not a whole number ≥ 0: ").concat(shown)))
    elif spec.type == "number":
        assert typed is not None
        checks.append(
            (present & typed.isnull(), ibis.literal(f"{name} is not a number: ").concat(shown))
        )
    elif spec.type == "object":
        bad = present & ~_is_json_object(value)
        checks.append((bad, f"{name} is not a JSON object"))
    elif spec.type == "enum":
        assert isinstance(typed, ir.StringValue)
        bad = present & ~typed.isin(list(spec.values))
        allowed = " / ".join(spec.values)
        checks.append((bad, ibis.literal(f"{name} is not one of {allowed}: ").concat(shown)))
    elif spec.type == "text":
        bad = present & (_byte_length(value) > max_text_bytes)
        checks.append((bad, f"{name} is over the {max_text_bytes}-byte limit (max_text_bytes)"))
    return checks


def interaction_stage(kind: Kind = "interactions", *, max_text_bytes: int) -> ir.Table:
    """The validation + coercion + redaction stage over a VARCHAR relation named ``fw_source``.

    Columns out: ``line``, ``reason`` (NULL when the row is accepted), ``ok`` (the same as a
    boolean), the typed fields and, for
    interactions, redacted texts with ``pii`` (types found) and ``raw_*`` originals kept only
    where PII was found.
    """
    fields = _FIELDS[kind]
    source = ibis.table(_source_schema(fields), name="fw_source")
    # Each field is parsed once, in a first projection; the checks and the output read it.
    parsed = {
        "fw_typed_" + spec.name: typed
        for spec in fields
        if (typed := _typed(spec, source[spec.name])) is not None
    }
    source = source.mutate(**parsed)

    def typed_of(spec: FieldSpec) -> Any:
        return source["fw_typed_" + spec.name] if "fw_typed_" + spec.name in parsed else None

    checks: list[tuple[Any, Any]] = []
    for spec in fields:
        checks.extend(_check(spec, source[spec.name], typed_of(spec), max_text_bytes))
    # Every problem of the row, in the fields' order; a line that is no JSON object has only
    # that one (its fields are all missing).
    problems = ibis.literal("; ").join(
        [ibis.ifelse(condition, problem, ibis.null("string")) for condition, problem in checks]
    )
    reason = ibis.cases(
        (source.fw_pre_reason.notnull(), source.fw_pre_reason), else_=problems.nullif("")
    )
    # The same checks as one boolean: cheaper than building the reason for every row.
    cases = [(source.fw_pre_reason.notnull(), source.fw_pre_reason), *checks]
    ok = ~ibis.or_(*(condition.fill_null(True) for condition, _ in cases))
    out: dict[str, Any] = {"line": source.line, "reason": reason, "ok": ok}
    for spec in fields:
        value = source[spec.name]
        typed = typed_of(spec)
        if spec.type == "bool":
            out[spec.name] = typed == "true"
        elif spec.type == "int":
            out[spec.name] = typed.try_cast("int64")
        elif typed is not None:
            out[spec.name] = typed
        elif kind == "interactions" and spec.name in _TEXT_FIELDS:
            out[spec.name] = value
            out["raw_" + spec.name] = value
            out["fw_candidate_" + spec.name] = _pii_candidate(value)
        else:
            out[spec.name] = value
    stage = source.select(**out)
    if kind != "interactions":
        return stage
    # Redaction (core.privacy's fw_redact), one projection per detector over the candidate
    # texts only: cheaper than nesting the steps in one expression.
    for step in _REDACTION_STEPS:
        stage = stage.mutate(
            **{
                name: ibis.ifelse(stage["fw_candidate_" + name], step(stage[name]), stage[name])
                for name in _TEXT_FIELDS
            }
        )
    # Only a row with a candidate text can hold a placeholder of ours: the others skip the
    # search for placeholders (code often holds '<').
    candidate = ibis.or_(*(stage["fw_candidate_" + name] for name in _TEXT_FIELDS))
    stage = stage.mutate(
        pii=ibis.ifelse(
            candidate,
            _pii_found(*(stage[name] for name in _TEXT_FIELDS)),
            ibis.literal([], type="array<string>"),
        )
    ).drop(*("fw_candidate_" + name for name in _TEXT_FIELDS))
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


_CHUNK = 1 << 24  # bytes read at a time by the scans of the file
_BLOCK = 1 << 15  # the newline index's granularity: bytes a block


@dataclass
class _Scan:
    """One read of the file's bytes: its sha256 and, for the parallel JSONL path, its line
    count, the number of newlines before each ``_BLOCK`` boundary (to find a line by seeking)
    and the numbers of its blank (whitespace-only) lines, of which the reader makes no row."""

    sha256: str
    lines: int
    newlines_before: list[int]
    blank_lines: list[int] = field(default_factory=list)


_BLANK = b" \t\r\x0b\x0c"  # what a blank line holds besides its newline (JSON's whitespace)
_BLANK_RUN = re.compile(rb"[ \t\r\x0b\x0c]*")


def _all_blank(data: bytes | bytearray, start: int, end: int) -> bool:
    """Whether ``data[start:end]`` is whitespace only (without copying it)."""
    run = _BLANK_RUN.match(data, start, end)
    return run is not None and run.end() == end


def _scan(path: Path, *, count_lines: bool) -> _Scan:
    """sha256 (and the line index) in one pass; hashlib and numpy release the GIL, so this runs
    in a thread beside DuckDB. A last line without a newline counts."""
    digest = hashlib.sha256()
    lines = 0
    newlines_before = [0]
    blank_lines: list[int] = []
    pending = True  # the line not yet ended holds only whitespace so far
    last = b""
    offset = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
            if count_lines:
                chunk = np.frombuffer(buffer, np.uint8, count=size)
                newlines = np.flatnonzero(chunk == 10)
                bounds = np.arange((offset // _BLOCK + 1) * _BLOCK, offset + size + 1, _BLOCK)
                newlines_before += (lines + np.searchsorted(newlines, bounds - offset)).tolist()
                if pending:
                    pending = _all_blank(buffer, 0, int(newlines[0]) if len(newlines) else size)
                if len(newlines):
                    if pending:
                        blank_lines.append(lines + 1)
                    # A blank line starts with whitespace or is empty: only those are looked at.
                    starts = newlines[:-1] + 1
                    first = chunk[starts]
                    for i in np.flatnonzero((first == 32) | ((first >= 9) & (first <= 13))):
                        if _all_blank(buffer, int(starts[i]), int(newlines[i + 1])):
                            blank_lines.append(lines + int(i) + 2)
                    pending = _all_blank(buffer, int(newlines[-1]) + 1, size)
                    lines += len(newlines)
                last = bytes(buffer[size - 1 : size])
            offset += size
    if last and last != b"\n":
        lines += 1
        if pending:
            blank_lines.append(lines)
    return _Scan(digest.hexdigest(), lines, newlines_before, blank_lines)


def _has_bom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(3) == b"\xef\xbb\xbf"


_RAW_SHOWN = 1 << 16  # bytes of a refused line kept in the quarantine
_SNIFF = 1 << 16  # bytes of (decompressed) content looked at to tell text from binary


def _open_content(path: Path, gz: bool) -> BinaryIO:
    """The file's content as bytes: through gzip when its name says it is compressed."""
    return gzip.open(path, "rb") if gz else path.open("rb")  # type: ignore[return-value]


def _check_content(path: Path, name: str, fmt: str, gz: bool) -> None:
    """Refuse a file that is not what its name says, before anything is read into the store.

    Raises IngestError for an empty file, a ``.gz`` that is not gzip, a ``.parquet`` without
    Parquet's magic bytes, and JSONL or CSV whose first bytes hold NUL (binary data).
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise IngestError(f"{name}: the file is empty; there are no rows to load.")
    if fmt == "parquet":
        if head != b"PAR1":
            raise IngestError(
                f"{name}: cannot be read as PARQUET (no Parquet header); "
                "check that the file is what its name says."
            )
        return
    if gz and head[:2] != b"\x1f\x8b":
        raise IngestError(
            f"{name}: cannot be read as {fmt.upper()} (gzip): it is not gzip-compressed; "
            "check that the file is what its name says."
        )
    try:
        with _open_content(path, gz) as content:
            sample = content.read(_SNIFF)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IngestError(
            f"{name}: cannot be read as {fmt.upper()} (gzip): {exc}; "
            "check that the file is what its name says."
        ) from None
    if b"\x00" in sample:
        raise IngestError(
            f"{name}: cannot be read as {fmt.upper()}{' (gzip)' if gz else ''}: it holds binary "
            "data (NUL bytes); check that the file is what its name says."
        )
    if not sample.strip(b" \t\r\n\x0b\x0c\xef\xbb\xbf"):
        raise IngestError(f"{name}: the file holds no rows (only blank lines); nothing to load.")


def _long_lines(path: Path, gz: bool, limit: int) -> list[tuple[int, bool]]:
    """The lines longer than ``limit`` bytes (a trailing CR excluded): (1-based number,
    whether it ends in CR).

    DuckDB's line reader reports most such lines in its rejects table, but drops some silently
    (a 300 MB line inside a gzip); this count is the one the quarantine trusts. Reading in
    chunks no longer than ``limit`` means only a line that spans a chunk boundary can be too
    long, so the scan counts newlines at memchr speed and never walks the lines in Python.
    """
    found: list[tuple[int, bool]] = []
    lines = 0
    current = 0  # bytes of the line being read so far
    ends_cr = False
    chunk_size = min(_CHUNK, limit)
    with _open_content(path, gz) as content:
        while chunk := content.read(chunk_size):
            first = chunk.find(b"\n")
            if first < 0:
                current += len(chunk)
                ends_cr = chunk.endswith(b"\r")
                continue
            current += first
            ends_cr = chunk[:first].endswith(b"\r") if first else ends_cr
            if current - ends_cr > limit:
                found.append((lines + 1, ends_cr))
            lines += chunk.count(b"\n")
            last = chunk.rfind(b"\n")
            current = len(chunk) - last - 1
            ends_cr = chunk.endswith(b"\r")
    if current - ends_cr > limit:
        found.append((lines + 1, ends_cr))
    return found


def _struct(fields: tuple[FieldSpec, ...], kind: str) -> str:
    return "{" + ", ".join(f"{sql_string(f.name)}: {sql_string(kind)}" for f in fields) + "}"


def _define_lines_source(
    con: duckdb.DuckDBPyConnection, fields: tuple[FieldSpec, ...], *, mapped: bool
) -> None:
    """``fw_source`` over ``fw_lines(k, raw)`` (one JSON text a line) and ``fw_bad_lines``.

    ``mapped``: ``k`` counts only the lines DuckDB kept, so the physical line is k plus the
    refused lines before it; otherwise ``k`` is the physical line already.
    """
    names = [f.name for f in fields]
    paths = "[" + ", ".join(f"'$.{n}'" for n in names) + "]"
    typed = ", ".join(f"CASE WHEN fw_ok THEN v[{i + 1}] END AS {n}" for i, n in enumerate(names))
    nulls = ", ".join(f"NULL AS {n}" for n in names)
    line = "k + (SELECT count(*) FROM fw_bad_lines b WHERE b.line - b.j < k)" if mapped else "k"
    con.execute(
        "CREATE OR REPLACE TEMP VIEW fw_source AS "
        "SELECT line, CASE WHEN NOT json_valid(raw) THEN 'invalid JSON' "
        "WHEN NOT fw_ok THEN 'not a JSON object' END AS fw_pre_reason, "
        f"{typed}, raw FROM ("
        "SELECT line, raw, fw_ok, CASE WHEN fw_ok THEN "
        f"try(json_extract_string(raw, {paths})) END AS v FROM ("
        f"SELECT {line} AS line, "
        "raw, coalesce(try(json_type(raw)) = 'OBJECT', false) AS fw_ok FROM fw_lines "
        "WHERE raw IS NOT NULL "
        "AND trim(raw, ' ' || chr(9) || chr(11) || chr(12) || chr(13)) <> ''))"
        f" UNION ALL SELECT line, reason, {nulls}, NULL FROM fw_bad_lines"
    )


def _prepare_source(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    fast: bool,
    fields: tuple[FieldSpec, ...],
    long_lines: Future[list[tuple[int, bool]]] | None = None,
) -> str:
    """Create the temp view ``fw_source`` (VARCHAR fields + line); return how it reads.

    ``long_lines``: the lines over the read limit found by ``_long_lines`` (JSONL, exact path).
    """
    names = [f.name for f in fields]
    # DuckDB views cannot hold bound parameters, so the file path of a temporary view is the
    # one value formatted into SQL, as a string literal.
    literal = sql_string(str(path))
    if fast:
        # No line numbers here: numbering the rows would hold DuckDB's parallel reader to one
        # thread. The rows keep the file's order instead (see _fast_rejects).
        all_null = " AND ".join(f"{n} IS NULL" for n in names)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW fw_source AS SELECT NULL::BIGINT AS line, "
            f"CASE WHEN {all_null} THEN 'fw_suspect' END AS fw_pre_reason, "
            + ", ".join(names)
            + f" FROM read_json({literal}, format='newline_delimited', "
            f"columns={_struct(fields, 'VARCHAR')}, ignore_errors=true, "
            f"maximum_object_size={_max_line_bytes()})"
        )
        return "fast"
    if fmt == "jsonl":
        rejects = "fw_rj_" + uuid.uuid4().hex[:8]
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_lines AS SELECT ordinality AS k, raw FROM read_csv("
            f"{literal}, columns={{'raw': 'VARCHAR'}}, delim=E'\\x1f', quote='', escape='', "
            "header=false, auto_detect=false, ignore_errors=true, strict_mode=false, "
            f"max_line_size={_max_line_bytes()}, store_rejects=true, "
            f"rejects_table='{rejects}_errors', rejects_scan='{rejects}_scans') WITH ORDINALITY"
        )
        # Over-long lines are taken from our own scan (_long_lines): DuckDB drops some without
        # a reject, and after one that ends in CRLF it yields an extra empty row.
        bad = con.execute(
            f"SELECT DISTINCT line FROM {rejects}_errors WHERE error_type = 'INVALID ENCODING'"
        ).fetchall()
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_bad_lines (line BIGINT, j BIGINT, reason VARCHAR)"
        )
        too_long = f"line is over the {_max_line_bytes()}-byte read limit"
        reasons = {int(b): "invalid UTF-8" for (b,) in bad}
        long = long_lines.result() if long_lines is not None else []
        for line, _ in long:
            reasons[line] = too_long
        _drop_rows_after_crlf(con, [line for line, crlf in long if crlf], sorted(reasons))
        insert_rows(
            con,
            "fw_bad_lines",
            [[b, i + 1, reasons[b]] for i, b in enumerate(sorted(reasons))],
        )
        _define_lines_source(con, fields, mapped=True)
        return "lines"
    if fmt == "csv":
        header = [
            str(r[0])
            for r in con.execute(
                "DESCRIBE SELECT * FROM read_csv($path, header=true, all_varchar=true)",
                {"path": str(path)},
            ).fetchall()
        ]
        present = ", ".join(
            (sql_identifier(n) if n in header else "NULL::VARCHAR") + f" AS {n}" for n in names
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_csv AS SELECT ordinality + 1 AS line, * FROM "
            f"read_csv({literal}, header=true, all_varchar=true, ignore_errors=true, "
            "strict_mode=false) WITH ORDINALITY"
        )
        con.execute(
            "CREATE OR REPLACE TEMP VIEW fw_source AS SELECT line, NULL::VARCHAR AS "
            f"fw_pre_reason, {present} FROM fw_csv"
        )
        return "csv"
    columns = [
        str(r[0])
        for r in con.execute(
            "DESCRIBE SELECT * FROM read_parquet($path)", {"path": str(path)}
        ).fetchall()
    ]
    present = ", ".join(
        (f"CAST({sql_identifier(n)} AS VARCHAR)" if n in columns else "NULL::VARCHAR") + f" AS {n}"
        for n in names
    )
    con.execute(
        "CREATE OR REPLACE TEMP VIEW fw_source AS SELECT file_row_number + 1 AS line, "
        f"NULL::VARCHAR AS fw_pre_reason, {present} FROM read_parquet({literal}, "
        "file_row_number=true)"
    )
    return "parquet"


def _drop_rows_after_crlf(
    con: duckdb.DuckDBPyConnection, crlf_lines: list[int], bad: list[int]
) -> None:
    """Remove from ``fw_lines`` the empty row DuckDB's line reader yields for the CR of each
    over-long line it skipped, and number the rows again, so ``k`` maps to physical lines."""
    spurious: list[int] = []
    for line in crlf_lines:
        # Rows before this line: the lines before it not refused, plus extra rows found so far.
        ordinal = line - bisect.bisect_left(bad, line) + len(spurious)
        row = con.execute("SELECT raw FROM fw_lines WHERE k = ?", [ordinal]).fetchall()
        if row and row[0][0] is None:
            spurious.append(ordinal)
    if spurious:
        con.execute("DELETE FROM fw_lines WHERE k IN (SELECT unnest(?))", [spurious])
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_lines AS "
            "SELECT row_number() OVER (ORDER BY k) AS k, raw FROM fw_lines"
        )


def _max_line_bytes() -> int:
    """Longest JSONL line the readers take: room for three texts at the size limit."""
    return max(16 << 20, 4 * settings.max_text_bytes + (1 << 20))


def _physical_lines(
    content: BinaryIO, wanted: list[int], cap: int | None = None
) -> dict[int, bytes]:
    """The raw bytes of the given 1-based lines (without CR), found by counting newlines at
    memchr speed; with ``cap``, at most ``cap`` bytes of each (a 300 MB line is not held)."""
    result: dict[int, bytes] = {}
    targets = sorted(set(wanted))
    index, line = 0, 1
    taking: bytearray | None = None  # the wanted line being read, across chunks
    while index < len(targets) and (chunk := content.read(1 << 24)):
        start = 0
        while index < len(targets):
            if taking is None:
                gap = targets[index] - line
                if gap > 0:
                    if chunk.count(b"\n", start) < gap:
                        line += chunk.count(b"\n", start)
                        break
                    for _ in range(gap):
                        start = chunk.find(b"\n", start) + 1
                    line += gap
                taking = bytearray()
            end = chunk.find(b"\n", start)
            piece = chunk[start : len(chunk) if end < 0 else end]
            if cap is None or len(taking) < cap + 1:
                taking += piece if cap is None else piece[: cap + 1 - len(taking)]
            if end < 0:
                break
            result[line] = bytes(taking).rstrip(b"\r")
            taking = None
            index += 1
            start = end + 1
            line += 1
    if taking is not None and taking:
        result[line] = bytes(taking).rstrip(b"\r")
    return result


# -- the load ------------------------------------------------------------------------------------


class _AlreadyLoaded(Exception):
    """Raised inside the transaction to roll back a file that was loaded before."""

    def __init__(self, row: tuple[Any, ...]) -> None:
        super().__init__("already loaded")
        self.row = row


def _now() -> datetime:
    return clock.now()


_TARGETS: dict[Kind, tuple[str, tuple[str, ...]]] = {
    "interactions": ("interactions", ("interaction_id",)),
    "eval-items": ("eval_items", ("item_id",)),
    "consent": (
        "consent_events",
        ("user_id", "ts", "scope", "action", "policy_version", "source"),
    ),
}

_INSERTS: dict[Kind, str] = {
    "interactions": (
        "INSERT INTO interactions SELECT interaction_id, $batch, $cycle, line, ts, user_id, "
        "variant, model, prompt, response, system, feedback, accepted, latency_ms, input_tokens, "
        "output_tokens, cost_usd, topic, difficulty, metadata::JSON, pii, raw_prompt, "
        "raw_response, raw_system FROM fw_stage WHERE ok"
    ),
    "consent": (
        "INSERT INTO consent_events SELECT $batch, line, user_id, ts, scope, action, "
        "policy_version, source FROM fw_stage WHERE ok"
    ),
    "eval-items": (
        "INSERT INTO eval_items SELECT item_id, $batch, line, eval_set, prompt, reference, topic, "
        "difficulty, labels::JSON FROM fw_stage WHERE ok"
    ),
}


# The parallel path stores every row of the reader in file order: a rejected one as a
# placeholder (``line = 0``, required columns filled, texts empty) whose place numbers its line.
_FAST_INSERT = (
    "INSERT INTO interactions SELECT CASE WHEN ok THEN interaction_id ELSE '' END, $batch, "
    "$cycle, CASE WHEN ok THEN NULL ELSE 0 END, CASE WHEN ok THEN ts ELSE 'epoch' END, "
    "CASE WHEN ok THEN user_id ELSE '' END, CASE WHEN ok THEN variant ELSE '' END, "
    "CASE WHEN ok THEN model ELSE '' END, CASE WHEN ok THEN prompt ELSE '' END, "
    "CASE WHEN ok THEN response ELSE '' END, CASE WHEN ok THEN system END, feedback, accepted, "
    "latency_ms, input_tokens, output_tokens, cost_usd, topic, difficulty, "
    "CASE WHEN ok THEN metadata::JSON END, CASE WHEN ok THEN pii ELSE [] END, "
    "CASE WHEN ok THEN raw_prompt END, CASE WHEN ok THEN raw_response END, "
    "CASE WHEN ok THEN raw_system END FROM fw_stage"
)


def ingest_file(
    store: Store,
    path: str | Path,
    *,
    user: User,
    kind: Kind = "interactions",
    cycle: int | None = None,
    file_name: str | None = None,
) -> IngestResult:
    """Load one file as a batch, recorded under ``user``'s name; bad rows go to the
    quarantine, duplicates are counted.

    Raises IngestError when the file cannot be read at all (missing, unknown type, not the
    format its name says); AccessError when ``user`` may not ingest data. Nothing is written
    then.
    """
    require(user, "data.ingest")
    source = Path(path)
    name = file_name or source.name
    if kind not in KINDS:
        raise IngestError(f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not source.is_file():
        raise IngestError(f"{source}: no such file; give the path of a JSONL, CSV or Parquet file.")
    fmt, gz = _file_format(name)
    started = _now()
    # JSONL of interactions takes the parallel path (_load_parallel); gzip, consent, eval
    # items, CSV and Parquet the exact one (_load).
    _check_content(source, name, fmt, gz)
    fast = fmt == "jsonl" and not gz and kind == "interactions"
    # The sha256 (and the line count) runs in a thread while DuckDB loads; a file that turns
    # out to be loaded already is rolled back. The exact JSONL path also counts its over-long
    # lines in a second thread (through gzip where the file is compressed).
    with ThreadPoolExecutor(max_workers=2) as pool:
        scan = pool.submit(_scan, source, count_lines=fast)
        long_lines = (
            pool.submit(_long_lines, source, gz, _max_line_bytes())
            if fmt == "jsonl" and not fast
            else None
        )
        batch = _Batch(
            started.strftime("b%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
            kind,
            name,
            cycle,
            started,
            user.name,
        )
        while True:
            try:
                if fast:
                    parallel = _load_parallel(store, source, scan, batch)
                    if parallel is None:  # the reader's rows did not line up with the lines
                        fast = False
                        long_lines = pool.submit(_long_lines, source, gz, _max_line_bytes())
                        continue
                    result = parallel
                else:
                    with store.transaction() as con:
                        result = _load(
                            con, source, (fmt, gz), long_lines, kind, batch.batch_id, cycle
                        )
                        _record_batch(con, batch, scan.result().sha256, result)
            except _AlreadyLoaded as done:
                rows = int(done.row[1])
                return IngestResult(
                    str(done.row[0]),
                    kind,
                    name,
                    scan.result().sha256,
                    rows,
                    0,
                    0,
                    rows,
                    True,
                    done.row[2],
                    read_path=done.row[3],
                )
            except duckdb.Error as exc:
                if fast:
                    # The parallel reader gives up on some files it cannot split (a line
                    # over its object limit): they load on the exact path instead.
                    fast = False
                    long_lines = pool.submit(_long_lines, source, gz, _max_line_bytes())
                    continue
                raise IngestError(
                    f"{name}: cannot be read as {fmt.upper()}{' (gzip)' if gz else ''} "
                    f"({_first_line(exc)}); check that the file is what its name says."
                ) from None
            break
    return IngestResult(
        batch.batch_id,
        kind,
        name,
        scan.result().sha256,
        result["rows_read"],
        result["accepted"],
        result["rejected"],
        result["duplicates"],
        False,
        cycle,
        result["pii_found"],
        result["read_path"],
    )


@dataclass(frozen=True)
class _Batch:
    """What a load records about its batch besides the counts."""

    batch_id: str
    kind: Kind
    file_name: str
    cycle: int | None
    started: datetime
    actor: str


def _check_not_loaded(con: duckdb.DuckDBPyConnection, kind: Kind, sha256: str) -> None:
    """Raises _AlreadyLoaded when a file with this sha256 is stored for the kind."""
    earlier = con.execute(
        "SELECT batch_id, rows_read, cycle, read_path FROM ingest_batches "
        "WHERE sha256 = ? AND kind = ?",
        [sha256, kind],
    ).fetchall()
    if earlier:
        raise _AlreadyLoaded(earlier[0])


def _record_batch(
    con: duckdb.DuckDBPyConnection, batch: _Batch, sha256: str, result: dict[str, Any]
) -> None:
    """The batch row and its audit entry, in the load's transaction.

    Raises IngestError when the file held no rows; _AlreadyLoaded (to roll back) when it was
    loaded before.
    """
    if not result["rows_read"]:
        raise IngestError(f"{batch.file_name}: the file holds no rows; nothing to load.")
    _check_not_loaded(con, batch.kind, sha256)
    con.execute(
        "INSERT INTO ingest_batches (batch_id, kind, file_name, sha256, cycle, rows_read, "
        "accepted, rejected, duplicates, started_at, finished_at, actor, pii_detectors, "
        "read_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            batch.batch_id,
            batch.kind,
            batch.file_name,
            sha256,
            batch.cycle,
            result["rows_read"],
            result["accepted"],
            result["rejected"],
            result["duplicates"],
            batch.started,
            _now(),
            batch.actor,
            DETECTORS_FINGERPRINT if batch.kind == "interactions" else None,
            result["read_path"],
        ],
    )
    record_audit(
        con,
        actor=batch.actor,
        action="ingest",
        target=batch.batch_id,
        detail={
            "kind": batch.kind,
            "file_name": batch.file_name,
            "sha256": sha256,
            **{k: v for k, v in result.items() if k != "pii_found"},
        },
    )


def _prepare_connection(con: duckdb.DuckDBPyConnection, kind: Kind) -> str:
    """Session settings and the macros the stage calls; returns the stage's SQL."""
    con.execute("SET TimeZone = 'UTC'")
    # Row order is what numbers the rejected lines of the parallel path: DuckDB's default, kept.
    con.execute("SET preserve_insertion_order = true")
    limit = settings.ingest_memory_limit
    if limit:
        con.execute("SET memory_limit = ?", [limit])
    install_pii_macros(con)
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_is_json_object(v) AS "
        "coalesce(try(json_type(v)) = 'OBJECT', false)"
    )
    return _stage_sql(kind, settings.max_text_bytes)


def _load_parallel(
    store: Store, path: Path, scan: Future[_Scan], batch: _Batch
) -> dict[str, Any] | None:
    """The parallel path, in two transactions; returns the counts, or None when the reader's
    rows do not line up with the file's lines (nothing is left stored then).

    The first transaction inserts every row the reader makes in file order, a rejected one as
    a placeholder with ``line = 0`` (accepted rows keep ``line`` NULL), and commits: DuckDB
    moves a bulk insert into the file as it stands only when the transaction deleted none of
    its rows, and rewrites it all otherwise. The second numbers and judges the rejected lines
    (``_fast_rejects``), deletes the placeholders and duplicates (cheap on stored rows) and
    records the batch; should it fail, the batch's rows are deleted again. Between the two
    the rows are stored without a batch row; this process's other writers wait their turn.
    """
    params = {"batch": batch.batch_id, "cycle": batch.cycle}
    with store.write_turn():
        with store.transaction() as con:
            stage_sql = _prepare_connection(con, "interactions")
            _prepare_source(con, path, "jsonl", True, INTERACTION_FIELDS)
            con.execute(f"CREATE OR REPLACE TEMP VIEW fw_stage AS {stage_sql}")
            con.execute(_FAST_INSERT, params)
            _check_not_loaded(con, "interactions", scan.result().sha256)
        try:
            with store.transaction() as con:
                stage_sql = _prepare_connection(con, "interactions")
                _lines_table(con, [], [])
                con.execute(f"CREATE OR REPLACE TEMP VIEW fw_stage AS {stage_sql}")
                found = _fast_rejects(con, path, batch.batch_id, scan.result(), params)
                if found is None:
                    raise _LinesDoNotAgree
                rows_read, rejected, raw = found
                result = _settle(con, "interactions", batch.batch_id, rows_read, rejected, raw)
                result["read_path"] = "parallel"
                _record_batch(con, batch, scan.result().sha256, result)
        except BaseException as exc:
            with store.transaction() as con:
                con.execute("DELETE FROM interactions WHERE batch_id = ?", [batch.batch_id])
            if isinstance(exc, _LinesDoNotAgree):
                return None
            raise
    return result


class _LinesDoNotAgree(Exception):
    """Raised inside the parallel path's second transaction to fall back to the exact path."""


def _load(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    form: tuple[str, bool],
    long_lines: Future[list[tuple[int, bool]]] | None,
    kind: Kind,
    batch_id: str,
    cycle: int | None,
) -> dict[str, Any]:
    """The exact path and CSV and Parquet: validate, redact and store one file's rows in one
    pass, numbered; then sort out duplicates and quarantine the rest. Returns the counts."""
    stage_sql = _prepare_connection(con, kind)
    fields = _FIELDS[kind]
    params = {"batch": batch_id, "cycle": cycle} if kind == "interactions" else {"batch": batch_id}
    fmt, _ = form
    how = _prepare_source(con, path, fmt, False, fields, long_lines)
    con.execute(f"CREATE OR REPLACE TEMP VIEW fw_stage AS {stage_sql}")
    con.execute(_INSERTS[kind], params)
    rows_read = int(con.execute("SELECT count(*) FROM fw_source").fetchall()[0][0])
    rejected = [
        (int(r[0]), str(r[1]), r[2])
        for r in con.execute(
            "SELECT line, reason, "
            + ("user_id" if kind != "eval-items" else "NULL")
            + " FROM fw_stage WHERE reason IS NOT NULL ORDER BY line"
        ).fetchall()
    ]
    result = _settle(con, kind, batch_id, rows_read, rejected, None, (path, how))
    result["read_path"] = _READ_PATHS[how]
    return result


def _settle(
    con: duckdb.DuckDBPyConnection,
    kind: Kind,
    batch_id: str,
    rows_read: int,
    rejected: list[tuple[int, str, str | None]],
    raw: dict[int, str] | None,
    source: tuple[Path, str] | None = None,
) -> dict[str, Any]:
    """After the insert: drop duplicates, quarantine the rejected lines (their raw text given,
    or read back from ``source``: the file and how it was read), count PII; the counts."""
    table, key = _TARGETS[kind]
    duplicates = _drop_duplicates(con, table, key, batch_id)
    if raw is None:
        assert source is not None
        raw = _raw_of_rejects(con, source[0], source[1], [r[0] for r in rejected])
    insert_rows(
        con,
        "quarantine",
        [
            [batch_id, line, reason, raw.get(line), user or _user_in(raw.get(line))]
            for line, reason, user in rejected
        ],
    )
    pii_found: dict[str, int] = {}
    if kind == "interactions":
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
        insert_rows(con, "pii_counts", [[batch_id, t, n] for t, n in pii_found.items()])
    for temp in ("fw_lines", "fw_csv", "fw_bad_lines", "fw_dup_rows"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")
    return {
        "rows_read": rows_read,
        "accepted": rows_read - len(rejected) - duplicates,
        "rejected": len(rejected),
        "duplicates": duplicates,
        "pii_found": pii_found,
    }


_READ_PATHS: dict[str, ReadPath] = {
    "fast": "parallel",
    "lines": "exact",
    "csv": "csv",
    "parquet": "parquet",
}


@functools.lru_cache(maxsize=8)
def _stage_sql(kind: Kind, max_text_bytes: int) -> str:
    """The stage compiled to DuckDB SQL (compiling takes longer than many a load)."""
    return str(ibis.to_sql(interaction_stage(kind, max_text_bytes=max_text_bytes), "duckdb"))


def _drop_duplicates(
    con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...], batch_id: str
) -> int:
    """Delete this batch's rows whose key was stored before or repeats an earlier line.

    The earlier line is the smaller ``line`` or, where lines are not stored (the fast path),
    the earlier row: rows are inserted in file order.
    """
    keys = ", ".join(key)
    match = " AND ".join(f"o.{k} = n.{k}" for k in key)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE fw_dup_rows AS "
        f"SELECT n.rowid AS r FROM {table} n WHERE n.batch_id = $batch AND EXISTS ("
        f"SELECT 1 FROM {table} o WHERE o.batch_id <> $batch AND {match}) "
        f"UNION SELECT r FROM (SELECT rowid AS r, row_number() OVER (PARTITION BY {keys} "
        f"ORDER BY line, rowid) AS rn FROM {table} WHERE batch_id = $batch AND ({keys}) IN ("
        f"SELECT ({keys}) FROM {table} WHERE batch_id = $batch GROUP BY ALL "
        "HAVING count(*) > 1)) WHERE rn > 1",
        {"batch": batch_id},
    )
    count = int(con.execute("SELECT count(*) FROM fw_dup_rows").fetchall()[0][0])
    if count:
        con.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT r FROM fw_dup_rows)")
    return count


def _fast_rejects(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    batch_id: str,
    scan: _Scan,
    params: dict[str, Any],
) -> tuple[int, list[tuple[int, str, str | None]], dict[int, str]] | None:
    """Parallel path: rows read, the rejected lines (line, reason, user id) and their raw text.

    The reader's rows were inserted in file order, a rejected one as a placeholder with
    ``line = 0``. The k-th row comes from the k-th line that is not blank, so a placeholder's
    rank gives its line. Each rejected line is read again and judged alone by the stage (its
    reason from its own text), and the placeholders are deleted. The reader cannot parse the
    line of a BOM: when the stage accepts it, it is stored here with its line number, which
    keeps it first among the batch's rows for the duplicate rule. None when anything does not
    add up (the caller then loads the file on the exact path).
    """
    count, first, last = con.execute(
        "SELECT count(*), min(rowid), max(rowid) FROM interactions WHERE batch_id = ?",
        [batch_id],
    ).fetchall()[0]
    if not count or last - first + 1 != count:
        return None
    rows = count  # the reader's rows: one per line that is not blank
    blanks = scan.blank_lines
    if rows != scan.lines - len(blanks):
        return None
    limit = _max_line_bytes()
    over = _lines_over(path, scan, limit)
    if over:
        # The reader may have parsed a line over the read limit: it is rejected all the same,
        # as the exact path does.
        con.execute(
            "UPDATE interactions SET line = 0 WHERE batch_id = $batch AND rowid IN "
            "(SELECT unnest($ranks) + $base)",
            {
                "batch": batch_id,
                "ranks": [n - bisect.bisect_left(blanks, n) for n in over],
                "base": first - 1,
            },
        )
    ranks = [
        int(r[0])
        for r in con.execute(
            "SELECT rowid - $base FROM interactions WHERE batch_id = $batch AND line = 0 "
            "ORDER BY rowid",
            {"batch": batch_id, "base": first - 1},
        ).fetchall()
    ]
    con.execute("DELETE FROM interactions WHERE batch_id = ? AND line = 0", [batch_id])
    lines = _lines_of_ranks(ranks, blanks)
    bom = _has_bom(path)
    if bom and lines[:1] != [1]:
        return None  # the reader read the BOM's line after all: the stage never judged it
    texts: list[list[Any]] = []
    bad: list[list[Any]] = []
    raw_of: dict[int, str] = {}
    for line, (data, length) in _lines_at(path, lines, scan.newlines_before, limit).items():
        if line == 1 and bom:
            data = data[3:]
        raw_of[line] = data[:_RAW_SHOWN].decode("utf-8", errors="replace") + (
            " … [cut]" if length > _RAW_SHOWN else ""
        )
        if length > limit:
            bad.append([line, 0, f"line is over the {limit}-byte read limit"])
        elif not data.strip(_BLANK):
            return None  # a row made of a blank line: the ranks cannot be trusted
        else:
            try:
                texts.append([line, data.decode("utf-8")])
            except UnicodeDecodeError:
                bad.append([line, 0, "invalid UTF-8"])
    judged = _judge_lines(con, texts, bad)
    rejected: list[tuple[int, str, str | None]] = []
    for line in lines:
        reason, user = judged.get(line, (None, None))
        if reason is not None:
            rejected.append((line, reason, user))
        elif line == 1 and bom:
            con.execute(_INSERTS["interactions"], params)  # fw_stage: the judged lines
        else:
            return None  # the reader refused a line the stage accepts
    return rows, rejected, {line: raw_of[line] for line, _, _ in rejected}


def _lines_of_ranks(ranks: list[int], blanks: list[int]) -> list[int]:
    """The line numbers of the reader's rows of the given ranks (both sorted), the blank
    lines being skipped."""
    lines: list[int] = []
    skipped = 0
    for rank in ranks:
        while skipped < len(blanks) and blanks[skipped] <= rank + skipped:
            skipped += 1
        lines.append(rank + skipped)
    return lines


def _lines_over(path: Path, scan: _Scan, limit: int) -> list[int]:
    """The plain file's lines over ``limit`` bytes, read again only where the newline index
    shows a stretch of blocks long enough to hold one."""
    span = max(limit // _BLOCK - 1, 1)
    marks = scan.newlines_before
    if not any(marks[i] == marks[i + span] for i in range(len(marks) - span)):
        return []
    return [line for line, _ in _long_lines(path, False, limit)]


def _lines_at(
    path: Path, wanted: list[int], newlines_before: list[int], limit: int
) -> dict[int, tuple[bytes, int]]:
    """Given sorted 1-based line numbers, each line's bytes without its CR (only the first
    ``_RAW_SHOWN + 1`` of a line over ``limit``) and its length, found through the newline
    index: a seek to the block the line starts in, then a few newlines counted."""
    found: dict[int, tuple[bytes, int]] = {}
    if not wanted:
        return found
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        size = len(view)
        at, line = 0, 1  # ``at`` is where ``line`` starts
        for target in wanted:
            block = bisect.bisect_left(newlines_before, target - 1) - 1
            if block >= 0 and newlines_before[block] + 2 > line:
                at = view.find(b"\n", block * _BLOCK) + 1
                line = newlines_before[block] + 2
            while line < target:
                at = view.find(b"\n", at) + 1
                line += 1
            end = view.find(b"\n", at)
            end = size if end < 0 else end
            stop = end - 1 if end > at and view[end - 1] == 13 else end
            length = stop - at
            found[target] = (
                view[at : at + (length if length <= limit else _RAW_SHOWN + 1)],
                length,
            )
            at, line = end + 1, line + 1
    return found


def _judge_lines(
    con: duckdb.DuckDBPyConnection, texts: list[list[Any]], bad: list[list[Any]]
) -> dict[int, tuple[str | None, str | None]]:
    """The stage over single interaction lines: line -> (reason or None, user id)."""
    _lines_table(con, texts, bad)
    return {
        int(r[0]): (r[1], r[2])
        for r in con.execute("SELECT line, reason, user_id FROM fw_stage").fetchall()
    }


def _lines_table(
    con: duckdb.DuckDBPyConnection, texts: list[list[Any]], bad: list[list[Any]]
) -> None:
    """``fw_source`` over the given (line, text) pairs and refused (line, 0, reason) lines."""
    # Thousands of lines: bound as two lists, one statement (executemany runs one per row).
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_lines AS SELECT unnest($k)::BIGINT AS k, "
        "unnest($raw)::VARCHAR AS raw",
        {"k": [t[0] for t in texts], "raw": [t[1] for t in texts]},
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_bad_lines AS SELECT unnest($line)::BIGINT AS line, "
        "unnest($j)::BIGINT AS j, unnest($reason)::VARCHAR AS reason",
        {"line": [b[0] for b in bad], "j": [b[1] for b in bad], "reason": [b[2] for b in bad]},
    )
    _define_lines_source(con, INTERACTION_FIELDS, mapped=False)


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
    if how == "lines":
        found = {
            int(r[0]): str(r[1])
            for r in con.execute(
                "SELECT line, raw FROM fw_source WHERE raw IS NOT NULL AND line IN "
                "(SELECT unnest(?))",
                [lines],
            ).fetchall()
        }
        missing = [n for n in lines if n not in found]
        if missing:
            # Lines DuckDB refused (invalid UTF-8) are read as bytes, shown with U+FFFD.
            # An over-long line is kept as its first _RAW_SHOWN bytes, marked as cut.
            found.update(
                {
                    n: b[:_RAW_SHOWN].decode("utf-8", errors="replace")
                    + (" … [cut]" if len(b) > _RAW_SHOWN else "")
                    for n, b in _physical_lines_any(path, missing, _RAW_SHOWN).items()
                }
            )
        return found
    table = "fw_csv" if how == "csv" else "fw_source"
    rows = con.execute(
        f"SELECT line, to_json(t)::VARCHAR FROM {table} t WHERE line IN (SELECT unnest(?))",
        [lines],
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def _physical_lines_any(path: Path, lines: list[int], cap: int | None = None) -> dict[int, bytes]:
    """Like _physical_lines over a file, through gzip when it is compressed, without a BOM."""
    with _open_content(path, _is_gzip(path)) as content:
        found = _physical_lines(content, lines, cap)
    if 1 in found and found[1].startswith(b"\xef\xbb\xbf"):
        found[1] = found[1][3:]
    return found


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (DuckDB's run to many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def ingest_bytes(
    store: Store,
    data: bytes,
    file_name: str,
    *,
    user: User,
    kind: Kind = "interactions",
    cycle: int | None = None,
) -> IngestResult:
    """Load an uploaded file (its bytes and name) exactly as ``ingest_file`` loads a path.

    Raises AccessError, before anything is written, when ``user`` may not ingest data.
    """
    require(user, "data.ingest")
    _file_format(file_name)
    suffix = "".join(Path(file_name).suffixes[-2:]) or ".jsonl"
    handle, temp = tempfile.mkstemp(suffix=suffix, prefix="flywheel-upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return ingest_file(
            store, temp, user=user, kind=kind, cycle=cycle, file_name=Path(file_name).name
        )
    finally:
        Path(temp).unlink(missing_ok=True)


# -- reading back --------------------------------------------------------------------------------
