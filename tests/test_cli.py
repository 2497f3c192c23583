"""The command line through a subprocess, as a scheduled job or a CI pipeline runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from cycle_helpers import build_workspace

import core.cli
from core.access import local_operator
from core.cli import main
from core.cycles import run_cycle
from core.plan_files import dump_plan
from core.plan_versions import list_plans
from core.starters import starter_plan
from core.store import Store


def run(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLYWHEEL_DB": str(db)}
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_demo_prints_one_json_object(store: Store) -> None:
    result = run("demo", "--json", db=store.path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plan_id"] == "python-coding-assistant"
    assert payload["cycles"] == 6
    assert "interactions" in payload


def test_lint_exit_codes(store: Store, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(dump_plan(starter_plan("python_coding_assistant"), "yaml"))
    assert run("plan", "lint", str(good), db=store.path).returncode == 0

    plan = starter_plan("python_coding_assistant")
    plan.gates[2].ratio = 1.5
    bad = tmp_path / "bad.json"
    bad.write_text(dump_plan(plan, "json"))
    result = run("plan", "lint", str(bad), "--json", db=store.path)
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert [e["path"] for e in payload["errors"]] == ["gates[2].ratio"]
    assert set(payload["errors"][0]) >= {"code", "path", "message"}


def test_malformed_file_exits_2_with_one_line_and_stores_nothing(
    store: Store, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("goal:\n  feature: Assistant\n  horizon_months: six\n  colour: blue\n")
    result = run("plan", "import", str(broken), db=store.path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "goal.horizon_months" in lines[0] and "goal.colour" in lines[0]
    assert list_plans(store) == []


def test_import_then_export_round_trips(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "support.yaml"
    source.write_text(dump_plan(starter_plan("customer_support_assistant"), "yaml"))
    imported = json.loads(run("plan", "import", str(source), "--json", db=store.path).stdout)
    assert imported["version"] == 1
    again = json.loads(
        run(
            "plan", "import", str(source), "--plan", imported["plan_id"], "--json", db=store.path
        ).stdout
    )
    assert again == {**imported, "version": 2}
    out = tmp_path / "out.json"
    exported = run(
        "plan",
        "export",
        "--out",
        str(out),
        "--plan",
        imported["plan_id"],
        "--version",
        "1",
        "--json",
        db=store.path,
    )
    assert json.loads(exported.stdout)["path"] == str(out)
    assert json.loads(out.read_text()) == starter_plan("customer_support_assistant").to_data()


def test_export_with_no_plan_says_what_to_do(store: Store, tmp_path: Path) -> None:
    result = run("plan", "export", "--out", str(tmp_path / "p.yaml"), db=store.path)
    assert result.returncode == 2
    assert "python -m core demo" in result.stderr


def test_unknown_extension_is_bad_input(store: Store, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.txt"
    plan_file.write_text("{}")
    result = run("plan", "lint", str(plan_file), db=store.path)
    assert result.returncode == 2
    assert ".json, .yaml or .yml" in result.stderr


def test_usage_error_exits_2(store: Store) -> None:
    assert run("plan", "frobnicate", db=store.path).returncode == 2


def _truncated_store(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.duckdb"
    Store(whole).schema_version()
    # A copy under another name: this process never opened it, so nothing of it is cached.
    path = tmp_path / "cut.duckdb"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "command",
    [["plan", "list"], ["dataset", "list"], ["forget", "user-1"], ["backup", "BACKUP"]],
)
def test_a_truncated_or_unreadable_store_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    for db in (_truncated_store(tmp_path), tmp_path / "garbage.duckdb"):
        if db.name == "garbage.duckdb":
            db.write_bytes(b"not a store " * 1000)
        argv = [str(tmp_path / "bk") if a == "BACKUP" else a for a in command]
        assert main([*argv, "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("command", [["plan", "lint"], ["plan", "import"]])
def test_nesting_beyond_the_depth_limit_is_bad_input(
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    command: list[str],
) -> None:
    deep = tmp_path / f"deep{suffix}"
    nested = "[" * 50_000 + "]" * 50_000
    deep.write_text(nested if suffix == ".json" else f"name: {nested}\n")
    assert main([*command, str(deep)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and err.count("\n") == 1


def test_an_unwritable_output_is_one_line_and_exit_2(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["backup", str(blocker / "backup")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_an_unexpected_error_names_the_command_and_a_log_with_the_traceback(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(core.cli, "cmd_plan_list", broken)
    assert main(["plan", "list"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plan list" in err
    log = Path(err.rsplit(" ", 1)[1].strip())
    assert "ZeroDivisionError: boom" in log.read_text() and "Traceback" in log.read_text()


def test_the_entry_point_turns_a_truncated_store_into_exit_2(tmp_path: Path) -> None:
    done = run("dataset", "list", db=_truncated_store(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_text_tables_name_columns_by_their_labels_and_show_a_dash_for_missing_values(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_id = build_workspace(store, tmp_path)
    run_cycle(store, plan_id, 2, user=local_operator())
    db = ["--db", str(store.path)]

    assert main(["dataset", "list", *db]) == 0
    header, row = capsys.readouterr().out.splitlines()
    for shown in ("Dataset version", "Production rows", "Synthetic rows", "Parent version"):
        assert shown in header
    assert not {"version_id", "production_rows", "parent_version"} & set(header.split())
    # The first version has no parent: a dash under the column's label, never "None".
    assert "None" not in row and row.endswith("—")
    assert row.index("—") == header.index("Parent version")

    assert main(["plan", "list", *db]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["Plan", "Latest", "version", "Ready", "Demo", "Name"]
    assert row.split()[:4] == [plan_id, "1", "yes", "no"]

    # --json keeps the code names and null (DESIGN.md's contract).
    assert main(["dataset", "list", "--json", *db]) == 0
    (version,) = json.loads(capsys.readouterr().out)["versions"]
    assert version["parent_version"] is None and version["production_rows"] > 0
