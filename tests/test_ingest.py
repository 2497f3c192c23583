"""Ingest: batches, reconciliation, the quarantine's reasons, duplicates, formats."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import parquet_from_sql

import core.ingest
from core.access import User, local_operator
from core.errors import IngestError
from core.ingest import IngestResult, batch_rejects, ingest_bytes, ingest_file, list_batches
from core.store import Store


def record(n: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "interaction_id": f"i-{n}",
        "ts": "2027-01-02T10:00:00Z",
        "user_id": f"user-{n % 3}",
        "variant": "control",
        "model": "gpt-4o",
        "prompt": f"How do I sort list {n}?",
        "response": "Use sorted().",
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any] | bytes | str]) -> Path:
    parts = []
    for row in rows:
        if isinstance(row, bytes):
            parts.append(row)
        elif isinstance(row, str):
            parts.append(row.encode())
        else:
            parts.append(json.dumps(row).encode())
    path.write_bytes(b"\n".join(parts) + b"\n")
    return path


def reconciles(result: IngestResult) -> bool:
    return result.rows_read == result.accepted + result.rejected + result.duplicates


def reasons(store: Store, result: IngestResult) -> dict[int, str]:
    return {
        r["line"]: r["reason"] for r in batch_rejects(store, result.batch_id, user=local_operator())
    }


BAD_ROWS: list[tuple[Any, str]] = [
    (record(1, user_id=...), "missing required field: user_id"),
    (record(1, prompt=None), "missing required field: prompt"),
    (record(1, user_id=""), "missing required field: user_id"),
    (record(1, model=" \t\r "), "missing required field: model"),
    (record(1, variant="\n"), "missing required field: variant"),
    (record(1, ts="yesterday"), "ts is not a timestamp"),
    (record(1, ts=1700000000), "ts is not a timestamp"),
    (record(1, accepted="maybe"), "accepted is not true/false"),
    (record(1, latency_ms="fast"), "latency_ms is not a whole number"),
    (record(1, latency_ms=12.5), "latency_ms is not a whole number"),
    (record(1, cost_usd="cheap"), "cost_usd is not a number"),
    (record(1, feedback="meh"), "feedback is not one of up / down"),
    (record(1, metadata="plain"), "metadata is not a JSON object"),
    ('{"interaction_id": "i-1", "ts": ', "invalid JSON"),
    ("[1, 2, 3]", "not a JSON object"),
    (b'{"interaction_id": "i-1", "prompt": "\xff\xfe"}', "invalid UTF-8"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_ROWS)
def test_each_reject_reason_is_quarantined_with_its_line(
    store: Store, tmp_path: Path, bad: Any, reason: str
) -> None:
    path = write_jsonl(tmp_path / "log.jsonl", [record(10), record(11), bad, record(12)])
    result = ingest_file(store, path, user=local_operator())
    assert (result.accepted, result.rejected, result.duplicates) == (3, 1, 0)
    assert reconciles(result)
    found = reasons(store, result)
    assert list(found) == [3]
    assert found[3].startswith(reason)


def test_text_over_the_size_limit_is_rejected(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_MAX_TEXT_BYTES", "100")
    path = write_jsonl(tmp_path / "log.jsonl", [record(1, response="é" * 60), record(2)])
    result = ingest_file(store, path, user=local_operator())
    assert reasons(store, result) == {1: "response is over the 100-byte limit (max_text_bytes)"}
    assert result.accepted == 1


def test_unambiguous_values_are_coerced(store: Store, tmp_path: Path) -> None:
    rows = [
        record(1, accepted="true", latency_ms="120", cost_usd="0.002", feedback="UP"),
        record(2, accepted=False, latency_ms=80.0, ts="2027-01-02 10:00:00"),
        record(3, ts="2027-01-02T12:00:00+02:00", metadata={"client": "vscode"}),
    ]
    ingest_file(store, write_jsonl(tmp_path / "log.jsonl", rows), user=local_operator())
    got = store.fetch_all(
        "SELECT interaction_id, accepted, latency_ms, cost_usd, feedback, "
        "epoch(ts)::BIGINT, metadata->>'client' FROM interactions ORDER BY 1"
    )
    assert got[0][1:5] == (True, 120, 0.002, "up")
    assert got[1][1:3] == (False, 80)
    # Without an offset a timestamp is UTC; +02:00 is two hours earlier in UTC.
    assert got[1][5] == 1798884000
    assert got[2][5] == 1798884000
    assert got[2][6] == "vscode"


def test_counts_reconcile_and_reload_adds_nothing(store: Store, tmp_path: Path) -> None:
    rows: list[Any] = [record(n) for n in range(20)]
    rows[5] = "not json"
    rows[9] = record(3)  # repeats an earlier id in the same file
    path = write_jsonl(tmp_path / "log.jsonl", rows)
    first = ingest_file(store, path, cycle=2, user=local_operator())
    assert (first.rows_read, first.accepted, first.rejected, first.duplicates) == (20, 18, 1, 1)
    assert first.cycle == 2
    again = ingest_file(store, path, user=local_operator())
    assert again.already_loaded and again.batch_id == first.batch_id
    assert (again.accepted, again.rejected) == (0, 0) and reconciles(again)
    assert "nothing added" in again.summary
    assert len(list_batches(store)) == 1
    assert store.fetch_one("SELECT count(*) FROM interactions") == (18,)
    # The same ids in another file are duplicates, never stored twice.
    other = write_jsonl(tmp_path / "other.jsonl", [record(1), record(2), record(99)])
    third = ingest_file(store, other, user=local_operator())
    assert (third.accepted, third.duplicates) == (1, 2)
    assert store.fetch_one("SELECT count(DISTINCT interaction_id), count(*) FROM interactions") == (
        19,
        19,
    )
    assert store.fetch_all(
        "SELECT DISTINCT cycle FROM interactions WHERE batch_id = ?", [first.batch_id]
    ) == [(2,)]


def test_crlf_bom_blank_lines_and_gzip_load(store: Store, tmp_path: Path) -> None:
    lines = [json.dumps(record(n)).encode() for n in range(5)]
    body = b"\xef\xbb\xbf" + b"\r\n".join(lines[:2]) + b"\r\n\r\n" + b"\r\n".join(lines[2:])
    body += b"\r\nnot json\r\n"
    plain = tmp_path / "crlf.jsonl"
    plain.write_bytes(body)
    result = ingest_file(store, plain, user=local_operator())
    assert (result.rows_read, result.accepted, result.rejected) == (6, 5, 1)
    assert reasons(store, result) == {7: "invalid JSON"}  # the blank line 3 still counts
    packed = tmp_path / "log.jsonl.gz"
    packed.write_bytes(gzip.compress(body.replace(b'"i-', b'"g-')))
    zipped = ingest_file(store, packed, user=local_operator())
    assert (zipped.accepted, zipped.rejected) == (5, 1)
    assert reasons(store, zipped) == {7: "invalid JSON"}


def test_invalid_utf8_rejects_that_line_only_in_every_reader(store: Store, tmp_path: Path) -> None:
    bad = b'{"interaction_id": "i-9", "prompt": "caf\xe9"}'
    lines = [json.dumps(record(n)).encode() for n in range(4)]
    packed = tmp_path / "log.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\n".join([*lines[:2], bad, *lines[2:]]) + b"\n"))
    result = ingest_file(store, packed, user=local_operator())
    assert (result.accepted, result.rejected) == (4, 1)
    assert reasons(store, result) == {3: "invalid UTF-8"}
    assert (
        "caf"
        in batch_rejects(store, result.batch_id, reveal_raw=True, user=local_operator())[0]["raw"]
    )


def test_csv_with_quoted_newlines_and_parquet(store: Store, tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    csv.write_text(
        "interaction_id,ts,user_id,variant,model,prompt,response,accepted\n"
        'c-1,2027-01-02T10:00:00Z,u1,control,m,"two\nlines, with a comma",ok,true\n'
        "c-2,not a time,u1,control,m,p,r,false\n"
        "c-3,2027-01-02T10:00:00Z,u2,treatment,m,p,r,\n",
        encoding="utf-8",
    )
    result = ingest_file(store, csv, user=local_operator())
    assert (result.rows_read, result.accepted, result.rejected) == (3, 2, 1)
    assert next(iter(reasons(store, result).values())).startswith("ts is not a timestamp")
    assert store.fetch_one("SELECT prompt FROM interactions WHERE interaction_id = 'c-1'") == (
        "two\nlines, with a comma",
    )
    parquet = tmp_path / "log.parquet"
    parquet_from_sql(
        "SELECT 'p-' || i AS interaction_id, TIMESTAMPTZ '2027-01-03 00:00:00+00' AS ts, "
        "'u' || i AS user_id, 'control' AS variant, 'm' AS model, 'mail x@y.com' AS prompt, "
        "'r' AS response, i % 2 = 0 AS accepted, i * 10 AS latency_ms FROM range(4) t(i)",
        parquet,
    )
    loaded = ingest_file(store, parquet, user=local_operator())
    assert (loaded.accepted, loaded.rejected) == (4, 0)
    assert loaded.pii_found == {"EMAIL": 4}


def test_pii_is_redacted_and_originals_kept_only_where_found(store: Store, tmp_path: Path) -> None:
    rows = [record(1, prompt="I am jane@example.com", system="call +44 20 7946 0958"), record(2)]
    result = ingest_file(store, write_jsonl(tmp_path / "log.jsonl", rows), user=local_operator())
    assert result.pii_found == {"EMAIL": 1, "PHONE": 1}
    got = store.fetch_all(
        "SELECT prompt, system, pii, raw_prompt FROM interactions ORDER BY interaction_id"
    )
    assert got[0] == ("I am <EMAIL>", "call <PHONE>", ["EMAIL", "PHONE"], "I am jane@example.com")
    assert got[1][2] == [] and got[1][3] is None
    assert store.fetch_all("SELECT pii_type, found FROM pii_counts ORDER BY 1") == [
        ("EMAIL", 1),
        ("PHONE", 1),
    ]


def test_consent_and_eval_item_kinds(store: Store, tmp_path: Path) -> None:
    events = [
        {
            "user_id": "u1",
            "ts": "2027-01-01",
            "scope": "training",
            "action": "grant",
            "policy_version": "v1",
            "source": "eu",
        },
        {
            "user_id": "u1",
            "ts": "2027-01-01",
            "scope": "training",
            "action": "grant",
            "policy_version": "v1",
            "source": "eu",
        },
        {
            "user_id": "u2",
            "ts": "2027-01-01",
            "scope": "marketing",
            "action": "grant",
            "policy_version": "v1",
            "source": "eu",
        },
    ]
    consent = ingest_file(
        store, write_jsonl(tmp_path / "c.jsonl", events), kind="consent", user=local_operator()
    )
    assert (consent.accepted, consent.duplicates, consent.rejected) == (1, 1, 1)
    assert reasons(store, consent)[3].startswith("scope is not one of")
    items = [
        {
            "item_id": "e1",
            "eval_set": "python-core",
            "prompt": "Reverse a list",
            "reference": "xs[::-1]",
            "topic": "data structures",
            "difficulty": "beginner",
        },
        {"item_id": "e2", "eval_set": "python-core", "prompt": "Read a file"},
        {"item_id": "e3", "prompt": "no set"},
    ]
    evals = ingest_file(
        store, write_jsonl(tmp_path / "e.jsonl", items), kind="eval-items", user=local_operator()
    )
    assert (evals.accepted, evals.rejected) == (2, 1)
    assert store.fetch_all("SELECT item_id, eval_set, reference FROM eval_items ORDER BY 1") == [
        ("e1", "python-core", "xs[::-1]"),
        ("e2", "python-core", None),
    ]


def test_upload_bytes_and_unreadable_files(store: Store, tmp_path: Path) -> None:
    data = (json.dumps(record(1)) + "\n").encode()
    result = ingest_bytes(store, data, "upload.jsonl", user=local_operator())
    assert result.accepted == 1 and result.file_name == "upload.jsonl"
    with pytest.raises(IngestError, match="unknown file type"):
        ingest_bytes(store, data, "upload.txt", user=local_operator())
    with pytest.raises(IngestError, match="no such file"):
        ingest_file(store, tmp_path / "missing.jsonl", user=local_operator())
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(IngestError, match="cannot be read as PARQUET"):
        ingest_file(store, fake, user=local_operator())
    assert len(list_batches(store)) == 1


def test_rejects_of_unknown_batch(store: Store) -> None:
    with pytest.raises(IngestError, match="No batch"):
        batch_rejects(store, "nope", user=local_operator())


def test_viewing_raw_quarantine_lines_is_audited(store: Store, tmp_path: Path) -> None:
    result = ingest_file(
        store, write_jsonl(tmp_path / "l.jsonl", [record(1), "oops"]), user=local_operator()
    )
    assert "raw" not in batch_rejects(store, result.batch_id, user=local_operator())[0]
    before = store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'view_raw_text'")
    rows = batch_rejects(
        store,
        result.batch_id,
        reveal_raw=True,
        user=User("tester", frozenset({"privacy_reviewer"})),
    )
    assert rows[0]["raw"] == "oops"
    after = store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'view_raw_text'")
    assert (before, after) == ((0,), (1,))


def test_whitespace_only_lines_keep_line_numbers(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "ws.jsonl"
    rows = [
        json.dumps(record(1)),
        "   ",
        json.dumps(record(2)),
        "\t",
        "{oops",
        json.dumps(record(3)),
    ]
    path.write_text("\n".join(rows) + "\n")
    result = ingest_file(store, path, user=local_operator())
    assert (result.rows_read, result.accepted, result.rejected) == (4, 3, 1)
    assert reasons(store, result) == {5: "invalid JSON"}


def stored_rows(store: Store, batch_id: str) -> list[tuple[Any, ...]]:
    """A batch's stored interactions, every column but the batch and the source line (which
    only the exact path keeps), in id order."""
    cur = store.fetch_all(
        "SELECT * EXCLUDE (batch_id, line) FROM interactions WHERE batch_id = ? "
        "ORDER BY interaction_id",
        [batch_id],
    )
    return [tuple(row) for row in cur]


def quarantined(store: Store, batch_id: str) -> list[tuple[Any, ...]]:
    return store.fetch_all(
        "SELECT line, reason, user_id, raw IS NOT NULL FROM quarantine WHERE batch_id = ? "
        "ORDER BY line",
        [batch_id],
    )


def dirty_log() -> tuple[bytes, dict[int, str]]:
    """A log with a BOM, CRLF and LF endings, blank lines and every kind of bad line; the
    expected reason (its start) of each rejected line."""
    lines: list[bytes] = [json.dumps(record(n, prompt="x" * (n % 97))).encode() for n in range(400)]
    expected: dict[int, str] = {}

    def bad(index: int, line: Any, reason: str) -> None:
        lines[index] = line if isinstance(line, bytes) else json.dumps(line).encode()
        expected[index + 1] = reason

    bad(3, record(3, user_id=...), "missing required field: user_id")
    bad(4, record(4, model=" \t "), "missing required field: model")
    bad(20, record(20, prompt=None), "missing required field: prompt")
    bad(37, b"", "")
    bad(38, b"  \t\x0b", "")
    bad(60, record(60, latency_ms="fast"), "latency_ms is not a whole number")
    bad(61, record(61, accepted="maybe"), "accepted is not true/false")
    bad(62, record(62, metadata="plain"), "metadata is not a JSON object")
    bad(
        63,
        record(63, cost_usd="cheap", feedback="meh"),
        "feedback is not one of up / down: meh; cost_usd is not a number: cheap",
    )
    bad(90, record(90, ts="yesterday"), "ts is not a timestamp: yesterday")
    bad(91, json.dumps(record(90)).encode(), "")  # the id of a rejected line, stored once
    bad(92, record(92, ts=1700000000), "ts is not a timestamp: 1700000000")
    bad(120, b'{"interaction_id": "i-120", "ts": "2027-01-0', "invalid JSON")
    bad(121, b"{broken", "invalid JSON")
    bad(150, b'{"interaction_id": "i-150", "prompt": "caf\xe9"}', "invalid UTF-8")
    bad(151, b"[1, 2]", "not a JSON object")
    bad(152, b"{}", "missing required field: interaction_id")
    bad(170, record(170, response="r" * 1200), "response is over the 1000-byte limit")
    bad(200, json.dumps(record(7)).encode(), "")  # repeats line 8's id: a duplicate
    bad(201, json.dumps(record(201, prompt="call +44 20 7946 0958")).encode(), "")  # PII
    bad(202, json.dumps(record(0, prompt="a later copy")).encode(), "")  # the BOM line's id
    bad(
        250,
        record(250, user_id=..., ts="soon", accepted="maybe"),
        "ts is not a timestamp: soon; missing required field: user_id; "
        "accepted is not true/false: maybe",
    )
    bad(399, b'{"interaction_id": "i-399", "ts": ', "invalid JSON")
    for line in (38, 39, 92, 201, 202, 203):
        expected.pop(line)
    # A BOM, CRLF for the first 300 lines, LF after, no final newline.
    body = b"\xef\xbb\xbf" + b"\r\n".join(lines[:300]) + b"\n" + b"\n".join(lines[300:])
    return body, expected


@pytest.mark.parametrize("first_line", ["accepted", "rejected"])
def test_the_parallel_path_stores_and_rejects_exactly_as_the_exact_path_on_a_dirty_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_line: str
) -> None:
    # Small blocks make the newline index as coarse, relative to the lines, as in a big file.
    monkeypatch.setattr("core.ingest._BLOCK", 512)
    monkeypatch.setenv("FLYWHEEL_MAX_TEXT_BYTES", "1000")
    body, expected = dirty_log()
    duplicates = 2  # line 201 repeats line 8, line 203 the BOM's line 1
    if first_line == "rejected":  # the BOM's line itself is bad: line 203 is stored
        body = body.replace(b'"user_id": "user-0", ', b"", 1)
        expected[1] = "missing required field: user_id"
        duplicates = 1
    plain = tmp_path / "dirty.jsonl"
    plain.write_bytes(body)
    packed = tmp_path / "dirty.jsonl.gz"  # gzip takes the exact path: the reference
    packed.write_bytes(gzip.compress(body))
    fast_store, exact_store = Store(tmp_path / "fast.duckdb"), Store(tmp_path / "exact.duckdb")
    fast = ingest_file(fast_store, plain, user=local_operator())
    exact = ingest_file(exact_store, packed, user=local_operator())
    assert (fast.read_path, exact.read_path) == ("parallel", "exact")
    assert reconciles(fast) and reconciles(exact)
    assert (fast.rows_read, fast.accepted, fast.rejected, fast.duplicates) == (
        exact.rows_read,
        exact.accepted,
        exact.rejected,
        exact.duplicates,
    )
    assert (fast.rows_read, fast.rejected, fast.duplicates) == (398, len(expected), duplicates)
    assert fast.pii_found == exact.pii_found == {"PHONE": 1}
    assert stored_rows(fast_store, fast.batch_id) == stored_rows(exact_store, exact.batch_id)
    assert quarantined(fast_store, fast.batch_id) == quarantined(exact_store, exact.batch_id)
    found = reasons(fast_store, fast)
    assert list(found) == sorted(expected)
    for line, reason in expected.items():
        assert found[line].startswith(reason), (line, found[line])
    assert list_batches(fast_store)[0]["read_path"] == "parallel"


def test_a_file_the_parallel_reader_cannot_line_up_loads_on_the_exact_path(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A blank line the reader read as a row (were it ever to) would break the line count: the
    # load must then fall back, and still number every line.
    scan = core.ingest._scan

    def no_blank_lines(path: Path, *, count_lines: bool) -> Any:
        found = scan(path, count_lines=count_lines)
        found.blank_lines = []
        return found

    monkeypatch.setattr("core.ingest._scan", no_blank_lines)
    path = write_jsonl(tmp_path / "log.jsonl", [record(1), "", "{oops", record(2)])
    result = ingest_file(store, path, user=local_operator())
    assert result.read_path == "exact"
    assert (result.rows_read, result.accepted, result.rejected) == (3, 2, 1)
    assert reasons(store, result) == {3: "invalid JSON"}
    assert store.fetch_one("SELECT count(*) FROM interactions") == (2,)


def test_a_parallel_load_that_fails_after_storing_its_rows_leaves_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parallel path commits the reader's rows before it numbers the rejects and records
    # the batch; when that second step fails, the rows are taken out again.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr("core.ingest._settle", broken)
    path = write_jsonl(tmp_path / "log.jsonl", [record(1), "{oops", record(2)])
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_file(store, path, user=local_operator())
    assert store.fetch_one("SELECT count(*) FROM interactions") == (0,)
    assert list_batches(store) == []


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_the_scan_finds_blank_lines_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr("core.ingest._CHUNK", chunk)
    path = tmp_path / "x.jsonl"
    cases = [
        (b' \r\n{}\n\n{}\r\n \t\x0c\n{"a": 1}\n\r\n  ', 8, [1, 3, 5, 7, 8]),
        (b"{}\n\n{}\n", 3, [2]),
        (b"\n", 1, [1]),
        (b"{}\n" + b" " * 20 + b"x\n\t\t", 3, [3]),
    ]
    for body, lines, blanks in cases:
        path.write_bytes(body)
        found = core.ingest._scan(path, count_lines=True)
        assert (found.lines, found.blank_lines) == (lines, blanks), body


def write_gzip(path: Path, parts: list[bytes]) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as out:
        for part in parts:
            out.write(part)
    return path


@pytest.mark.parametrize(
    "megabytes",
    [17, pytest.param(300, marks=pytest.mark.slow, id="300MB-dropped-silently-by-duckdb")],
)
@pytest.mark.parametrize("name", ["log.jsonl.gz", "log.jsonl"])
def test_a_line_over_the_read_limit_is_quarantined_in_every_format(
    store: Store, tmp_path: Path, name: str, megabytes: int
) -> None:
    # Otherwise a valid row: only its length (a large metadata object) is wrong.
    valid = json.dumps(record(0, interaction_id="big")).encode()[:-1]
    huge = valid + b', "metadata": {"blob": "' + b"a" * (megabytes << 20) + b'"}}'
    parts = [json.dumps(record(1)).encode(), b"\n", huge, b"\r\n", json.dumps(record(2)).encode()]
    path = tmp_path / name
    if name.endswith(".gz"):
        write_gzip(path, parts)
    else:
        path.write_bytes(b"".join(parts))
    result = ingest_file(store, path, user=local_operator())
    assert (result.rows_read, result.accepted, result.rejected) == (3, 2, 1)
    assert reconciles(result)
    assert reasons(store, result) == {2: "line is over the 16777216-byte read limit"}
    if megabytes == 17:  # DuckDB's parallel reader takes such a line; the load stays on it
        assert result.read_path == ("exact" if name.endswith(".gz") else "parallel")
    raw = batch_rejects(store, result.batch_id, reveal_raw=True, user=local_operator())[0]["raw"]
    assert raw.startswith('{"interaction_id": "big"') and len(raw) < 1 << 17  # kept cut
    assert store.fetch_all("SELECT line FROM interactions ORDER BY 1") in (
        [(1,), (3,)],
        [(None,)] * 2,
    )


def test_long_lines_are_found_across_chunks(tmp_path: Path) -> None:
    limit = 10
    body = b"a" * 10 + b"\n" + b"b" * 11 + b"\r\n" + b"c" * 10 + b"\r\n\n" + b"d" * 25
    path = write_gzip(tmp_path / "x.jsonl.gz", [body])
    plain = tmp_path / "x.jsonl"
    plain.write_bytes(body)
    assert core.ingest._long_lines(path, True, limit) == [(2, True), (5, False)]
    assert core.ingest._long_lines(plain, False, limit) == [(2, True), (5, False)]


NOT_WHAT_THEY_SAY: list[tuple[str, bytes, str]] = [
    ("empty.jsonl", b"", "empty"),
    ("blank.jsonl", b"\n \r\n\n", "no rows"),
    ("empty.jsonl.gz", gzip.compress(b""), "no rows"),
    ("nul.jsonl.gz", gzip.compress(b"\x00" * 4096), "binary data"),
    ("plain.jsonl.gz", json.dumps(record(1)).encode() + b"\n", "not gzip-compressed"),
    ("fake.parquet", b"not parquet at all", "cannot be read as PARQUET"),
    ("binary.csv", bytes(range(256)) * 8, "binary data"),
    ("header.csv", b"interaction_id,ts,user_id\n", "no rows"),
]


@pytest.mark.parametrize(("name", "data", "message"), NOT_WHAT_THEY_SAY)
def test_inputs_with_no_rows_or_not_what_their_name_says_are_refused(
    store: Store, tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IngestError, match=message) as refused:
        ingest_file(store, path, user=local_operator())
    assert "\n" not in str(refused.value)
    assert list_batches(store) == []
    assert store.fetch_all("SELECT count(*) FROM quarantine") == [(0,)]
