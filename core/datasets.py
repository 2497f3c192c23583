"""Dataset versions: what a cycle built, its lineage and composition, comparisons and exports.

A version is immutable once written: its rows (``dataset_rows``), its hash (the sha256 of its
rows' canonical JSONL lines' sha256 digests, in the canonical order: ``version_digest`` of an
export of every row), its lineage (plan version, cycle, window, batches, filter parameters,
parent) and composition (production against synthetic rows, per cell of the generation grid).
The one exception is erasure: ``forget`` deletes a user's rows from every version, and a
version then reports how many rows it lost.

A version that carries most of its parent's rows is stored as a delta over a full version
(migration 0016): its own members are the rows it holds otherwise than that base, and the
base's rows it does not hold are listed as drops. ``dataset_version_members`` resolves them.

The canonical order is the md5 of each row's key: a shuffle that does not depend on the order
rows were inserted in, so the same cycle over the same data gives the same bytes and hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from core.errors import DatasetError
from core.paths import check_output_path
from core.store import Store

__all__ = [
    "EXPORT_FORMATS",
    "SPLITS",
    "CellChange",
    "DatasetVersion",
    "ExportResult",
    "FormatReport",
    "VersionDiff",
    "canonical_jsonl",
    "check_openai_jsonl",
    "compare_versions",
    "dataset_rows",
    "estimated_epochs",
    "example_token_limit",
    "export_dataset",
    "export_file_name",
    "get_version",
    "list_versions",
    "openai_example",
    "version_system_message",
]

ExportFormat = Literal["openai-jsonl", "parquet"]
Split = Literal["train", "validation", "all"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("openai-jsonl", "parquet")
SPLITS: tuple[Split, ...] = ("train", "validation", "all")

# Longest training example each fine-tunable model takes, in tokens (OpenAI's documentation).
_TOKEN_LIMITS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 65_536),
    ("gpt-4o-mini", 65_536),
    ("gpt-4o", 65_536),
    ("gpt-3.5-turbo", 16_385),
)
_DEFAULT_TOKEN_LIMIT = 16_385
_ROLES = ("system", "user", "assistant", "tool", "function")


def example_token_limit(model: str) -> int:
    """The most tokens one training example may hold for ``model`` (unknown: 16,385)."""
    name = model.lower().removeprefix("ft:")
    for prefix, limit in _TOKEN_LIMITS:
        if name.startswith(prefix):
            return limit
    return _DEFAULT_TOKEN_LIMIT


def estimated_epochs(examples: int) -> int:
    """The epochs OpenAI's ``n_epochs="auto"`` picks: 3, raised for small sets so training
    sees at least 100 examples, lowered for large ones so it sees at most 25,000."""
    if examples <= 0:
        return 0
    if examples * 3 < 100:
        return min(25, math.ceil(100 / examples))
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable dataset version and what it is made of."""

    version_id: str
    plan_id: str
    plan_version: int
    cycle: int
    number: int
    parent_version: str | None
    run_id: str
    sha256: str
    rows: int
    train_rows: int
    validation_rows: int
    production_rows: int
    synthetic_rows: int
    lineage: dict[str, Any]
    composition: dict[str, Any]
    created_by: str
    created_at: datetime
    rows_now: int

    @property
    def erased_rows(self) -> int:
        """Rows erased from the version since it was built (forget)."""
        return self.rows - self.rows_now

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, with the erased row count."""
        return {**asdict(self), "erased_rows": self.erased_rows}


_VERSION_COLUMNS = (
    "v.version_id, v.plan_id, v.plan_version, v.cycle, v.number, v.parent_version, v.run_id, "
    "v.sha256, v.rows, v.train_rows, v.validation_rows, v.production_rows, v.synthetic_rows, "
    "v.lineage, v.composition, v.created_by, v.created_at, "
    "(SELECT count(*) FROM dataset_version_members r WHERE r.version_id = v.version_id) AS rows_now"
)


def _version(row: dict[str, Any]) -> DatasetVersion:
    row = dict(row)
    row["lineage"] = json.loads(row["lineage"])
    row["composition"] = json.loads(row["composition"])
    row["rows_now"] = int(row["rows_now"])
    return DatasetVersion(**row)


def list_versions(store: Store, plan_id: str | None = None) -> list[DatasetVersion]:
    """Every dataset version (of one plan when given), newest first."""
    rows = store.fetch_dicts(
        f"SELECT {_VERSION_COLUMNS} FROM dataset_versions v "
        "WHERE $plan IS NULL OR v.plan_id = $plan ORDER BY v.created_at DESC, v.version_id DESC",
        {"plan": plan_id},
    )
    return [_version(r) for r in rows]


def get_version(store: Store, version_id: str) -> DatasetVersion:
    """One dataset version; raises DatasetError when there is none of that id."""
    rows = store.fetch_dicts(
        f"SELECT {_VERSION_COLUMNS} FROM dataset_versions v WHERE v.version_id = ?", [version_id]
    )
    if not rows:
        raise DatasetError(
            f"No dataset version {version_id!r}; `python -m core cycle run --cycle N` builds "
            "one and prints its id (the Cycles page lists them)."
        )
    return _version(rows[0])


def dataset_rows(
    store: Store, version_id: str, split: Split = "all", *, limit: int | None = None
) -> list[dict[str, Any]]:
    """A version's rows in the canonical order (of one split unless ``all``)."""
    sql = (
        "SELECT row_key, source, interaction_id, cell_key, split, system, prompt, response "
        "FROM dataset_rows WHERE version_id = $v AND ($split = 'all' OR split = $split) "
        "ORDER BY sort_key, row_key"
    )
    params: dict[str, Any] = {"v": version_id, "split": split}
    if limit is not None:
        sql += " LIMIT $limit"
        params["limit"] = limit
    return store.fetch_dicts(sql, params)


# -- the OpenAI chat format ------------------------------------------------------------------------


def openai_example(system: str | None, prompt: str, response: str) -> dict[str, Any]:
    """One fine-tuning example: ``{"messages": [system?, user, assistant]}``."""
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": response})
    return {"messages": messages}


def version_system_message(store: Store, version_id: str) -> str | None:
    """The system message a version trains under: the one most of its train rows carry (None
    when most carry none). Raises DatasetError for an unknown version."""
    get_version(store, version_id)
    row = store.fetch_one(
        "SELECT nullif(system, '') AS s FROM dataset_version_members"
        " WHERE version_id = ? AND split = 'train'"
        " GROUP BY s ORDER BY count(*) DESC, s NULLS FIRST LIMIT 1",
        [version_id],
    )
    return str(row[0]) if row and row[0] is not None else None


# json.dumps(ensure_ascii=False) escapes these as \b \t \n \f \r, every other control
# character as \u00xx in lower case; DuckDB's to_json writes the hex digits of a few in upper
# case (\u000B, \u001A…), so a text holding one of those is escaped by hand instead.
_SHORT_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
_UPPER_HEX_CONTROLS = "[\\x0b\\x0e\\x0f\\x1a-\\x1f]"


def _json_string_sql(column: str) -> str:
    """SQL for ``column`` as a JSON string literal, byte for byte what
    ``json.dumps(value, ensure_ascii=False)`` writes."""
    by_hand = f"replace(replace({column}, '\\', '\\\\'), '\"', '\\\"')"
    for code in range(32):
        escape = _SHORT_ESCAPES.get(code, f"\\u{code:04x}")
        by_hand = f"replace({by_hand}, chr({code}), '{escape}')"
    return (
        f"CASE WHEN regexp_matches({column}, '{_UPPER_HEX_CONTROLS}')"
        f" THEN '\"' || {by_hand} || '\"' ELSE to_json({column})::VARCHAR END"
    )


def canonical_line_sql(
    system: str = "system", prompt: str = "prompt", response: str = "response"
) -> str:
    """SQL for a row's line of ``canonical_jsonl`` (its newline included), from its columns."""
    return (
        f"CASE WHEN coalesce({system}, '') <> ''"
        f' THEN \'{{"messages": [{{"role": "system", "content": \' || {_json_string_sql(system)}'
        f" || '}}, ' ELSE '{{\"messages\": [' END"
        f' || \'{{"role": "user", "content": \' || {_json_string_sql(prompt)}'
        f' || \'}}, {{"role": "assistant", "content": \' || {_json_string_sql(response)}'
        " || '}]}' || chr(10)"
    )


def line_sha_sql(system: str = "system", prompt: str = "prompt", response: str = "response") -> str:
    """SQL for the sha256 (hex) of a row's canonical line: what each member keeps as
    ``line_sha`` when it is written."""
    return f"sha256({canonical_line_sql(system, prompt, response)})"


def version_sha256(con: duckdb.DuckDBPyConnection, members: str, params: Any = None) -> str:
    """A version's hash: the sha256 of its rows' line digests (``line_sha``, hex),
    concatenated in the canonical order. ``members`` is a table or a parenthesised query with
    sort_key, row_key and line_sha columns. Each row's digest is taken once, when it is first
    written, so a cycle that carries half a million rows sorts their digests and reads none
    of their texts. ``version_digest`` computes the same from an exported file."""
    import pyarrow as pa

    reader = con.sql(
        f"SELECT line_sha FROM {members} ORDER BY sort_key, row_key", params=params
    ).to_arrow_reader(100_000)
    digest = hashlib.sha256()
    for batch in reader:
        column = batch.column(0)
        if len(column) == 0:
            continue
        if column.null_count:
            raise DatasetError("A dataset row has no line digest; the store is damaged.")
        if not pa.types.is_large_string(column.type):
            column = column.cast(pa.large_string())
        _validity, offsets, data = column.buffers()
        bounds = memoryview(offsets).cast("q")
        first, last = bounds[column.offset], bounds[column.offset + len(column)]
        digest.update(memoryview(data)[first:last])
    return digest.hexdigest()


def version_digest(jsonl: bytes) -> str:
    """The version hash of an exported file of every row (``--split all``, OpenAI JSONL):
    the sha256 of each line's sha256 (hex, the line with its newline), concatenated. A
    reviewer checks an export against its version with it."""
    lines = jsonl.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return hashlib.sha256(
        b"".join(hashlib.sha256(line + b"\n").hexdigest().encode() for line in lines)
    ).hexdigest()


def canonical_jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    """The OpenAI JSONL bytes of rows (system, prompt, response), one example a line."""
    lines = [
        json.dumps(openai_example(r.get("system"), r["prompt"], r["response"]), ensure_ascii=False)
        for r in rows
    ]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


@dataclass
class FormatReport:
    """What the upload checks found: examples, errors by line, tokens against the limit."""

    examples: int
    total_tokens: int
    max_example_tokens: int
    token_limit: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    system_tokens: int = 0
    """Of ``total_tokens``, those of the system messages (with their framing)."""

    @property
    def ok(self) -> bool:
        """Whether the file would pass OpenAI's checks of a fine-tuning upload."""
        return not self.errors and self.examples > 0


def _message_errors(example: Any) -> list[str]:
    if not isinstance(example, dict):
        return ["the line is not a JSON object"]
    if set(example) - {"messages"}:
        return [f"unknown keys: {', '.join(sorted(set(example) - {'messages'}))}"]
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["no messages list"]
    problems: list[str] = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            problems.append(f"message {index} lacks role or content")
            continue
        if set(message) - {"role", "content", "name", "weight", "tool_calls", "function_call"}:
            problems.append(f"message {index} has unrecognised keys")
        if message["role"] not in _ROLES:
            problems.append(f"message {index} has the unrecognised role {message['role']!r}")
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            problems.append(f"message {index} ({message['role']}) has empty content")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append("no assistant message")
    return problems


def check_openai_jsonl(data: bytes, *, model: str) -> FormatReport:
    """Check JSONL bytes the way OpenAI checks a chat fine-tuning upload: every line a JSON
    object with a messages list, known roles, non-empty content, an assistant message, and
    at most the model's tokens per example (cl100k_base: an estimate for other tokenizers).
    The counts take in every message, the system message included."""
    from core.tokens import MESSAGE_OVERHEAD, estimate_tokens, text_tokens

    limit = example_token_limit(model)
    report = FormatReport(0, 0, 0, limit)
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        report.examples += 1
        try:
            example = json.loads(line)
        except json.JSONDecodeError as exc:
            report.errors.append({"line": number, "message": f"not valid JSON ({exc.msg})"})
            continue
        problems = _message_errors(example)
        if problems:
            report.errors.extend({"line": number, "message": p} for p in problems)
            continue
        tokens = estimate_tokens(
            {"content": str(m["content"])} for m in example["messages"] if isinstance(m, dict)
        )
        report.total_tokens += tokens
        report.system_tokens += sum(
            MESSAGE_OVERHEAD + text_tokens(str(m["content"]))
            for m in example["messages"]
            if isinstance(m, dict) and m.get("role") == "system"
        )
        report.max_example_tokens = max(report.max_example_tokens, tokens)
        if tokens > limit:
            report.errors.append(
                {"line": number, "message": f"{tokens} tokens, over the {limit}-token limit"}
            )
    return report


# -- exports ---------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """A written export: the ``dataset export --json`` keys and the format check's figures."""

    path: str
    rows: int
    sha256: str
    version_id: str
    format: str
    split: str
    total_tokens: int | None = None
    max_example_tokens: int | None = None
    token_limit: int | None = None
    epochs: int | None = None
    estimated_training_cost_usd: float | None = None
    tokenizer: str = "cl100k_base (estimate)"
    system_tokens: int | None = None
    """Of ``total_tokens``, those of the system messages: they are trained on every epoch too."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise DatasetError(f"{path}: cannot be written ({exc.strerror}).") from None


def parquet_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as Parquet (zstd); the same rows give the same bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ("row_key", "split", "source", "cell_key", "system", "prompt", "response")
    table = pa.table({n: pa.array([r.get(n) for r in rows], type=pa.string()) for n in names})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", store_schema=False)
    return sink.getvalue()


def export_dataset(
    store: Store,
    version_id: str,
    out_path: str | Path,
    *,
    fmt: str = "openai-jsonl",
    split: str = "train",
) -> ExportResult:
    """Write a version (one split, or all) as OpenAI chat JSONL or Parquet; byte-stable.

    The JSONL is checked as OpenAI checks an upload before anything is written, with total
    tokens and the training cost at the plan's price; an export of every row is checked
    against the version hash. Raises DatasetError for an unknown version, format or split, a
    split with no rows, a failed check or a version that no longer reads back as it was built
    (nothing written then);
    OutputPathError when ``out_path`` is the store or another file Flywheel manages.
    """
    out = check_output_path(out_path)
    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise DatasetError(f"Unknown format {fmt!r}; use --format openai-jsonl or parquet.")
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; use --split train, validation or all.")
    version = get_version(store, version_id)
    rows = dataset_rows(store, version_id, split)
    if not rows:
        raise DatasetError(f"Dataset version {version_id} has no {split} rows to export.")
    if fmt == "parquet":
        data = parquet_bytes(rows)
        _write_atomically(out, data)
        return ExportResult(
            str(out), len(rows), hashlib.sha256(data).hexdigest(), version_id, fmt, split
        )
    from core.plan_versions import load_plan

    plan, _ = load_plan(store, version.plan_id, version.plan_version)
    data = canonical_jsonl(rows)
    report = check_openai_jsonl(data, model=plan.goal.student_model)
    if not report.ok:
        first = report.errors[0]
        raise DatasetError(
            f"Dataset version {version_id} fails the fine-tuning format check "
            f"({len(report.errors)} problem(s)); line {first['line']}: {first['message']}. "
            "Nothing was written."
        )
    if split == "all" and version.erased_rows == 0 and version_digest(data) != version.sha256:
        raise DatasetError(
            f"Dataset version {version_id} does not read back as it was built: its rows'"
            " digest differs from the version hash, so the store was changed outside Flywheel."
            " Nothing was written; restore a backup."
        )
    _write_atomically(out, data)
    epochs = estimated_epochs(len(rows))
    cost = report.total_tokens * epochs * plan.economics.student_training_per_1m / 1_000_000
    return ExportResult(
        str(out),
        len(rows),
        hashlib.sha256(data).hexdigest(),
        version_id,
        fmt,
        split,
        total_tokens=report.total_tokens,
        max_example_tokens=report.max_example_tokens,
        token_limit=report.token_limit,
        epochs=epochs,
        estimated_training_cost_usd=round(cost, 4),
        system_tokens=report.system_tokens,
    )


def export_file_name(version_id: str, *, fmt: str, split: str) -> str:
    """The file name a download of one split of a version gets."""
    return f"{version_id}-{split}.{'parquet' if fmt == 'parquet' else 'jsonl'}"


def export_bytes(store: Store, version_id: str, *, fmt: str, split: str) -> tuple[bytes, str]:
    """The bytes of an export and a file name for it (for downloads); checks as export does."""
    with tempfile.TemporaryDirectory(prefix="flywheel-export-") as tmp:
        name = export_file_name(version_id, fmt=fmt, split=split)
        result = export_dataset(store, version_id, Path(tmp) / name, fmt=fmt, split=split)
        return Path(result.path).read_bytes(), name


# -- comparing versions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CellChange:
    """One cell's rows in two versions: added in the newer, removed from the older, kept
    (carried). Of the removed, ``retired`` left under the cap's retirement policy and
    ``rechecked`` failed the newer run's check of carried rows (consent, retention, a
    changed rule, an item no longer valid); the rest left for other reasons (another plan
    version, a cut that was not a carry)."""

    cell_key: str
    cell: dict[str, str]
    added: int
    removed: int
    kept: int
    retired: int = 0
    rechecked: int = 0

    def to_row(self) -> dict[str, Any]:
        """The cell's counts as a table shows them (the CLI's and the Cycles page's)."""
        return {
            "cell_key": self.cell_key,
            "carried": self.kept,
            "added": self.added,
            "retired": self.retired,
            "removed_on_recheck": self.rechecked,
            "removed": self.removed,
        }


@dataclass(frozen=True)
class VersionDiff:
    """Rows added and removed per cell between an older and a newer version."""

    old: str
    new: str
    added: int
    removed: int
    kept: int
    cells: list[CellChange]
    retired: int = 0
    rechecked: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


def compare_versions(store: Store, old: str, new: str) -> VersionDiff:
    """Rows (by key: interaction id or synthetic item) added, removed and kept per cell, the
    removed split by why the newer version's run let them go."""
    get_version(store, old)
    get_version(store, new)
    rows = store.fetch_all(
        "WITH a AS (SELECT row_key, cell_key FROM dataset_version_members"
        " WHERE version_id = $old), b AS (SELECT row_key, cell_key FROM dataset_version_members"
        " WHERE version_id = $new), "
        "r AS (SELECT interaction_id AS row_key, any_value(stage) AS stage"
        " FROM cycle_removed_rows WHERE run_id = (SELECT run_id FROM dataset_versions"
        " WHERE version_id = $new) GROUP BY 1) "
        "SELECT coalesce(b.cell_key, a.cell_key) AS cell, "
        "count(*) FILTER (WHERE a.row_key IS NULL), count(*) FILTER (WHERE b.row_key IS NULL), "
        "count(*) FILTER (WHERE a.row_key IS NOT NULL AND b.row_key IS NOT NULL), "
        "count(*) FILTER (WHERE b.row_key IS NULL AND r.stage = 'mix'), "
        "count(*) FILTER (WHERE b.row_key IS NULL AND r.stage = 'carried') "
        "FROM a FULL JOIN b ON a.row_key = b.row_key LEFT JOIN r ON r.row_key = a.row_key"
        " GROUP BY cell ORDER BY cell",
        {"old": old, "new": new},
    )
    cells = [
        CellChange(
            str(c), json.loads(c), int(added), int(removed), int(kept), int(retired), int(recheck)
        )
        for c, added, removed, kept, retired, recheck in rows
    ]
    return VersionDiff(
        old,
        new,
        sum(c.added for c in cells),
        sum(c.removed for c in cells),
        sum(c.kept for c in cells),
        cells,
        sum(c.retired for c in cells),
        sum(c.rechecked for c in cells),
    )
