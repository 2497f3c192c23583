"""Dataset versions: exports in OpenAI's format and Parquet, byte-stable, checked; comparisons."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from cli_helpers import run_cli
from cycle_helpers import build_workspace, interaction

from core.access import local_operator
from core.cycles import run_cycle
from core.datasets import (
    check_openai_jsonl,
    compare_versions,
    estimated_epochs,
    example_token_limit,
    export_dataset,
    get_version,
    version_digest,
)
from core.errors import DatasetError
from core.store import Store


@pytest.fixture
def version(store: Store, tmp_path: Path) -> str:
    rows = [interaction(n) for n in range(24)]
    rows.append(interaction(40, system="You are a terse Python assistant."))
    plan_id = build_workspace(store, tmp_path, rows)
    return run_cycle(store, plan_id, 2, user=local_operator()).dataset_version


def test_export_passes_the_upload_checks_and_is_byte_stable(
    store: Store, version: str, tmp_path: Path
) -> None:
    first = export_dataset(store, version, tmp_path / "a.jsonl", split="all")
    second = export_dataset(store, version, tmp_path / "b.jsonl", split="all")
    a, b = Path(first.path).read_bytes(), Path(second.path).read_bytes()
    assert a == b and first.sha256 == second.sha256 == hashlib.sha256(a).hexdigest()
    # The version's hash is checked against an export of every row by its lines' digests.
    assert version_digest(a) == get_version(store, version).sha256
    report = check_openai_jsonl(a, model="gpt-4o-mini")
    assert report.ok and report.examples == first.rows
    lines = [json.loads(line) for line in a.decode().splitlines()]
    for example in lines:
        roles = [m["role"] for m in example["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert all(m["content"].strip() for m in example["messages"])
    assert any(len(e["messages"]) == 3 for e in lines)
    assert first.total_tokens == report.total_tokens > 0
    assert first.epochs == estimated_epochs(first.rows)
    price = 3.0  # the starter plan's student_training_per_1m default
    assert first.estimated_training_cost_usd == pytest.approx(
        report.total_tokens * first.epochs * price / 1e6, abs=1e-4
    )


def test_splits_partition_the_version(store: Store, version: str, tmp_path: Path) -> None:
    train = export_dataset(store, version, tmp_path / "t.jsonl", split="train")
    validation = export_dataset(store, version, tmp_path / "v.jsonl", split="validation")
    v = get_version(store, version)
    assert (train.rows, validation.rows) == (v.train_rows, v.validation_rows)
    assert validation.rows > 0


def test_parquet_export_is_byte_stable(store: Store, version: str, tmp_path: Path) -> None:
    one = export_dataset(store, version, tmp_path / "a.parquet", fmt="parquet", split="all")
    two = export_dataset(store, version, tmp_path / "b.parquet", fmt="parquet", split="all")
    assert Path(one.path).read_bytes() == Path(two.path).read_bytes()
    table = pq.read_table(one.path)
    assert table.num_rows == one.rows
    assert {"row_key", "split", "source", "cell_key", "prompt", "response"} <= set(
        table.column_names
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        (
            {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]},
            "empty content",
        ),
        (
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "unrecognised role",
        ),
        ({"messages": []}, "no messages"),
        ({"prompt": "x", "completion": "y"}, "unknown keys"),
        (
            {
                "messages": [
                    {"role": "user", "content": "word " * 20_000},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "over the 16385-token limit",
        ),
    ],
)
def test_format_check_finds_what_openai_refuses(line: dict[str, object], problem: str) -> None:
    report = check_openai_jsonl((json.dumps(line) + "\n").encode(), model="gpt-3.5-turbo")
    assert not report.ok
    assert problem in report.errors[0]["message"]


def test_token_limits_and_epochs() -> None:
    assert example_token_limit("gpt-4o-mini-2024-07-18") == 65_536
    assert example_token_limit("some-open-model") == 16_385
    assert (estimated_epochs(10), estimated_epochs(1000), estimated_epochs(20_000)) == (10, 3, 1)


def test_compare_counts_rows_added_and_removed_per_cell(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, [interaction(n) for n in range(24)], synthetic=0)
    old = run_cycle(store, plan_id, 2, user=local_operator()).dataset_version
    (tmp_path / "more").mkdir()
    from cycle_helpers import write_jsonl

    from core.ingest import ingest_file

    ingest_file(
        store,
        write_jsonl(tmp_path / "more" / "i.jsonl", [interaction(n) for n in range(50, 54)]),
        user=local_operator(),
    )
    store.execute("DELETE FROM interactions WHERE interaction_id = 'i-000'")
    new = run_cycle(store, plan_id, 2, user=local_operator())
    assert new.new_version and new.dataset_version.endswith("-v2")
    diff = compare_versions(store, old, new.dataset_version)
    # i-050..053: u-2, u-3, u-0, u-1 → three consented; i-000 gone.
    assert (diff.added, diff.removed) == (3, 1)
    assert sum(c.added for c in diff.cells) == 3
    # A version's parent is what it carries: the previous cycle's newest version (none here),
    # not an earlier build of the same cycle.
    assert get_version(store, new.dataset_version).parent_version is None


def test_unknown_version_and_empty_split_are_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="No dataset version 'ds-nope'"):
        export_dataset(store, "ds-nope", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_runs_a_cycle_explains_a_row_and_exports(store: Store, tmp_path: Path) -> None:
    rows = [interaction(n) for n in range(20)]
    rows.append(interaction(21, user_id="u-0", feedback="down", accepted=False))
    plan_id = build_workspace(store, tmp_path, rows)
    ran = run_cli("cycle", "run", "--cycle", "2", "--plan", plan_id, "--json")
    assert ran.returncode == 0, ran.stderr
    data = json.loads(ran.stdout)
    assert data["cycle"] == 2 and data["dataset_version"] == f"ds-{plan_id}-c2-v1"
    assert {"name", "rows_in", "rows_out"} <= set(data["stages"][0])
    why = json.loads(run_cli("cycle", "why", "i-021", "--json").stdout)
    assert why["runs"][0]["stage"] == "positive_or_accepted"
    out = tmp_path / "train.jsonl"
    exported = run_cli("dataset", "export", data["dataset_version"], "--out", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    payload = json.loads(exported.stdout)
    assert payload["path"] == str(out) and payload["rows"] > 0
    assert payload["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    listed = json.loads(run_cli("dataset", "list", "--json").stdout)
    assert [v["version_id"] for v in listed["versions"]] == [data["dataset_version"]]
    compared = run_cli("dataset", "compare", data["dataset_version"], data["dataset_version"])
    assert "+0 added, −0 removed" in compared.stdout


def test_cli_refuses_bad_input_with_one_line(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, [interaction(1)])
    bad = run_cli("cycle", "run", "--cycle", "42", "--plan", plan_id)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "cycle 42" in bad.stderr
    missing = run_cli("dataset", "export", "ds-x", "--out", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 2 and "No dataset version" in missing.stderr


def test_every_exported_example_carries_the_plans_system_message(
    store: Store, version: str, tmp_path: Path
) -> None:
    from core.datasets import version_system_message
    from core.tokens import estimate_tokens

    result = export_dataset(store, version, tmp_path / "t.jsonl", split="all")
    data = Path(result.path).read_bytes()
    examples = [json.loads(line) for line in data.decode().splitlines()]
    # The starter's message, on synthetic rows and on production rows alike (the one that
    # logged "You are a terse Python assistant." too: the plan's policy replaces it).
    assert {json.dumps(e["messages"][0]) for e in examples} == {
        json.dumps({"role": "system", "content": "You are a Python expert."})
    }
    assert [m["role"] for m in examples[0]["messages"]] == ["system", "user", "assistant"]
    assert check_openai_jsonl(data, model="gpt-4o-mini").ok
    assert version_system_message(store, version) == "You are a Python expert."
    # Token counts and the training cost take the system message in: per example, its text
    # and the message's framing.
    without = sum(estimate_tokens(e["messages"][1:]) for e in examples)
    per_example = estimate_tokens([{"content": "You are a Python expert."}]) - 3
    assert result.total_tokens == without + len(examples) * per_example
    assert result.system_tokens == len(examples) * per_example
    assert result.epochs is not None
    assert result.estimated_training_cost_usd == pytest.approx(
        result.total_tokens * result.epochs * 3.0 / 1e6, abs=1e-4
    )


def test_a_versions_hash_is_the_digest_of_its_canonical_file_for_any_text() -> None:
    """Each row's line digest, written by DuckDB, is the sha256 of its line in the JSONL a
    user exports, so the version hash is ``version_digest`` of that file: every character
    JSON escapes (each control character, quotes, backslashes) and none it keeps."""
    import duckdb

    from core.datasets import canonical_jsonl, line_sha_sql, version_sha256

    every = "".join(chr(c) for c in range(128)) + "é ☃ 😀 \u2028 \u2029 \ufeff \x85 \\u000B"
    rows: list[dict[str, Any]] = [
        {"system": None, "prompt": 'quote " slash / back \\ line\n\x01 é \u2028', "response": "ok"},
        {"system": "sys ☃", "prompt": "p", "response": "\t tab"},
        {"system": "", "prompt": "q", "response": "r"},
        {"system": every, "prompt": every[::-1], "response": "\x0b\x1f plain"},
    ]
    rows += [
        {"system": "s", "prompt": f"control {chr(c)} alone", "response": "r"} for c in range(32)
    ]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (n INTEGER, system VARCHAR, prompt VARCHAR, response VARCHAR)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        [[n, r["system"], r["prompt"], r["response"]] for n, r in enumerate(rows)],
    )
    members = (
        f"(SELECT lpad(n::VARCHAR, 3, '0') AS sort_key, '' AS row_key, {line_sha_sql()}"
        " AS line_sha FROM t)"
    )
    data = canonical_jsonl(rows)
    lines = data.split(b"\n")[:-1]
    digests = con.execute(f"SELECT line_sha FROM {members} ORDER BY sort_key").fetchall()
    assert [d for (d,) in digests] == [hashlib.sha256(line + b"\n").hexdigest() for line in lines]
    assert version_sha256(con, members) == version_digest(data)
    con.execute("DELETE FROM t")
    assert version_sha256(con, members) == version_digest(b"") == hashlib.sha256(b"").hexdigest()


def test_versions_stored_before_line_digests_are_restated_on_upgrade(tmp_path: Path) -> None:
    """A store written before members kept their line's digest (migration 16) gets them, and
    each version's hash is restated as the digest of its export: the same rows, in the same
    order, so a rerun of the unchanged cycle still finds the version it built."""
    import duckdb

    from core.datasets import canonical_jsonl
    from core.store import migrate

    path = tmp_path / "older.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, path, only=set(range(1, 16)))
    texts = [("i-1", None, "how?\n", 'so "quoted" \x0b'), ("i-2", "sys ☃", "p", "r")]
    for key, system, prompt, response in texts:
        con.execute(
            "INSERT INTO dataset_texts VALUES (?, md5(? || chr(31) || ?), ?, 'u', ?, ?)",
            [key, prompt, response, key, prompt, response],
        )
        con.execute(
            "INSERT INTO dataset_members VALUES ('ds-1', ?, 'production', ?, 'u', '{}', 'train',"
            " ?, md5(?), 1, 'ds-1', md5(? || chr(31) || ?))",
            [key, key, system, key, prompt, response],
        )
    con.execute(
        "INSERT INTO dataset_versions VALUES ('ds-1', 'p', 1, 1, 1, NULL, 'run', 'old', 2, 2, 0,"
        " 2, 0, '{}', '{}', 'me', now())"
    )
    order = [
        k
        for (k,) in con.execute("SELECT row_key FROM dataset_members ORDER BY sort_key").fetchall()
    ]
    con.close()
    store = Store(path)
    rows = [
        {"system": s, "prompt": p, "response": r}
        for key in order
        for k, s, p, r in texts
        if k == key
    ]
    assert get_version(store, "ds-1").sha256 == version_digest(canonical_jsonl(rows))
    assert store.fetch_all("SELECT count(*) FROM dataset_members WHERE line_sha IS NULL") == [(0,)]


def test_an_export_of_a_version_changed_outside_flywheel_is_refused(
    store: Store, version: str, tmp_path: Path
) -> None:
    """What a reviewer exports is the version as built: a stored text changed behind
    Flywheel's back fails the check against the version hash, and nothing is written."""
    store.execute(
        "UPDATE dataset_texts SET response = response || ' (edited)' WHERE row_key IN"
        " (SELECT row_key FROM dataset_rows WHERE version_id = ? LIMIT 1)",
        [version],
    )
    out = tmp_path / "all.jsonl"
    with pytest.raises(DatasetError, match="does not read back as it was built"):
        export_dataset(store, version, out, split="all")
    assert not out.exists()
