"""The data commands in-process: data ingest, data rejects, data forget, data pii-redact."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import run_cli

from core.store import Store


def test_ingest_rejects_forget_round_trip(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    good = {
        "interaction_id": "i-1",
        "ts": "2027-01-02T10:00:00Z",
        "user_id": "user-cli-1",
        "variant": "treatment",
        "model": "m",
        "prompt": "my key is sk-abcdefghijklmnopqrstuvwxyz",
        "response": "rotate it",
    }
    log.write_text(json.dumps(good) + "\n{broken\n")
    done = run_cli("data", "ingest", str(log), "--cycle", "2", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {k: out[k] for k in ("rows_read", "accepted", "rejected", "duplicates", "cycle")} == {
        "rows_read": 2,
        "accepted": 1,
        "rejected": 1,
        "duplicates": 0,
        "cycle": 2,
    }
    again = run_cli("data", "ingest", str(log))
    assert again.returncode == 0 and "nothing added" in again.stdout

    rejects = run_cli("data", "rejects", "--batch", out["batch_id"], "--json")
    assert json.loads(rejects.stdout)["rows"] == [{"line": 2, "reason": "invalid JSON"}]
    missing = run_cli("data", "rejects", "--batch", "nope")
    assert missing.returncode == 2 and missing.stderr.startswith("error: No batch")

    forgot = run_cli("data", "forget", "user-cli-1", "--json")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["interactions_deleted"] == 1
    twice = run_cli("data", "forget", "user-cli-1")
    assert twice.returncode == 2 and "already forgotten" in twice.stderr


def test_bad_input_exits_2_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    done = run_cli("data", "ingest", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    wrong = run_cli("data", "ingest", str(tmp_path / "x.jsonl"), "--kind", "bogus")
    assert wrong.returncode == 2
    assert store.fetch_one("SELECT count(*) FROM ingest_batches") == (0,)


def test_pii_redact_file(tmp_path: Path, store: Store) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"text": "reach me: +1 (555) 123-4567 or me@example.org"})
        + "\n"
        + json.dumps({"text": "version 3.12.1 released 2024-10-07"})
        + "\n"
    )
    target = tmp_path / "out.jsonl"
    done = run_cli("data", "pii-redact", "--in", str(source), "--out", str(target), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"path": ""} == {
        "rows": 2,
        "found": {"EMAIL": 1, "PHONE": 1},
        "path": "",
    }
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines[0] == {"text": "reach me: <PHONE> or <EMAIL>", "pii": ["EMAIL", "PHONE"]}
    assert lines[1]["pii"] == []
