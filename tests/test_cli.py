"""The command line in-process through click's CliRunner (tests/cli_helpers.py), and a few runs
of the real entry point, as a scheduled job or a CI pipeline starts it."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from cli_helpers import ROOT, run_cli, run_entry_point
from cycle_helpers import build_workspace

import core.plan_versions
from core.access import local_operator
from core.cli import NOUNS, RENAMED, walk
from core.cli._base import Noun, resolve
from core.cycles import run_cycle
from core.plan_files import dump_plan
from core.plan_versions import list_plans
from core.starters import starter_plan
from core.store import Store


def test_demo_prints_one_json_object(store: Store) -> None:
    result = run_cli("demo", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plan_id"] == "python-coding-assistant"
    assert payload["cycles"] == 6
    assert "interactions" in payload


def test_lint_exit_codes(store: Store, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(dump_plan(starter_plan("python_coding_assistant"), "yaml"))
    assert run_cli("plan", "lint", good).returncode == 0

    plan = starter_plan("python_coding_assistant")
    plan.gates[2].ratio = 1.5
    bad = tmp_path / "bad.json"
    bad.write_text(dump_plan(plan, "json"))
    result = run_cli("plan", "lint", bad, "--json")
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert [e["path"] for e in payload["errors"]] == ["gates[2].ratio"]
    assert set(payload["errors"][0]) >= {"code", "path", "message"}


def test_malformed_file_exits_2_with_one_line_and_stores_nothing(
    store: Store, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("goal:\n  feature: Assistant\n  horizon_months: six\n  colour: blue\n")
    result = run_cli("plan", "import", broken)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "goal.horizon_months" in lines[0] and "goal.colour" in lines[0]
    assert list_plans(store) == []


def test_import_then_export_round_trips(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "support.yaml"
    source.write_text(dump_plan(starter_plan("customer_support_assistant"), "yaml"))
    imported = json.loads(run_cli("plan", "import", source, "--json").stdout)
    assert imported["version"] == 1
    again = run_cli("plan", "import", source, "--plan", imported["plan_id"], "--json")
    assert json.loads(again.stdout) == {**imported, "version": 2}
    out = tmp_path / "out.json"
    exported = run_cli(
        "plan", "export", "--out", out, "--plan", imported["plan_id"], "--plan-version", "1"
    )
    assert exported.returncode == 0, exported.stderr
    assert json.loads(out.read_text()) == starter_plan("customer_support_assistant").to_data()


def test_export_with_no_plan_says_what_to_do(store: Store, tmp_path: Path) -> None:
    result = run_cli("plan", "export", "--out", tmp_path / "p.yaml")
    assert result.returncode == 2
    assert "python -m core demo" in result.stderr


def test_unknown_extension_is_bad_input(store: Store, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.txt"
    plan_file.write_text("{}")
    result = run_cli("plan", "lint", plan_file)
    assert result.returncode == 2
    assert ".json, .yaml or .yml" in result.stderr


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["plan", "frobnicate"], "No such command 'frobnicate'"),
        (["plan", "list", "--frob"], "No such option '--frob'"),
        (["stats", "srm", "--counts", "5000,lots"], "'--counts'"),
        (["dataset", "export", "ds-1", "--out", "x.jsonl", "--split", "test"], "'--split'"),
        (["gate", "check"], "Missing option '--cycle'"),
        (["plan"], "python -m core plan needs a command: lint, import, export, list"),
        ([], "python -m core needs a command: demo, plan, data"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(store: Store, argv: list[str], named: str) -> None:
    done = run_cli(*argv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert named in done.stderr and "--help" in done.stderr


def test_db_and_json_are_taken_before_or_after_the_command(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "support.yaml"
    source.write_text(dump_plan(starter_plan("customer_support_assistant"), "yaml"))
    other = tmp_path / "other.duckdb"
    assert run_cli("--db", other, "plan", "import", source).returncode == 0
    # The store of FLYWHEEL_DB stays empty: every spelling below reads --db's.
    monkeypatch.setenv("FLYWHEEL_DB", str(store.path))
    answers = [
        run_cli("--db", other, "--json", "plan", "list"),
        run_cli("plan", "list", "--db", other, "--json"),
        run_cli("--json", "plan", "list", "--db", other),
        run_cli("--db", tmp_path / "unused.duckdb", "plan", "list", "--json", "--db", other),
    ]
    assert {a.returncode for a in answers} == {0}
    assert len({a.stdout for a in answers}) == 1
    (plan,) = json.loads(answers[0].stdout)["plans"]
    assert plan["latest_version"] == 1 and plan["demo"] is False
    assert json.loads(run_cli("plan", "list", "--json").stdout) == {"plans": []}
    assert not (tmp_path / "unused.duckdb").exists()


def _lines(text: str) -> list[str]:
    return text.strip().splitlines()


def test_an_old_spelling_runs_the_new_one_after_one_deprecation_line(tmp_path: Path) -> None:
    flags = ["--control-n", "1000", "--control-x", "100", "--treatment-n", "1000"]
    new = run_cli("ab", "compare", *flags, "--treatment-x", "130", "--json")
    old = run_cli("stats", "ab", *flags, "--treatment-x", "130", "--json")
    assert (old.returncode, old.stdout) == (new.returncode, new.stdout) == (0, new.stdout)
    assert new.stderr == ""
    (line,) = _lines(old.stderr)
    assert line.startswith("warning: `python -m core stats ab` is deprecated")
    assert line.endswith("use `python -m core ab compare`.")

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "mail me@example.org"}) + "\n")
    redact: list[str | Path] = ["--in", source, "--out", tmp_path / "out.jsonl", "--json"]
    assert run_cli("pii", "redact", *redact).stdout == run_cli("data", "pii-redact", *redact).stdout
    (line,) = _lines(run_cli("pii", "redact", *redact).stderr)
    assert "`python -m core data pii-redact`" in line


def test_the_old_version_flag_is_the_plan_version_with_one_line(
    demo_store: Store, tmp_path: Path
) -> None:
    old = run_cli("plan", "export", "--out", tmp_path / "a.json", "--version", "1", "--json")
    new = run_cli("plan", "export", "--out", tmp_path / "b.json", "--plan-version", "1")
    assert (old.returncode, new.returncode) == (0, 0)
    assert json.loads(old.stdout)["version"] == 1
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    (line,) = _lines(old.stderr)
    assert line.startswith("warning: --version is deprecated") and "--plan-version" in line


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_every_old_spelling_is_the_new_command_hidden_from_help(old: str, new: str) -> None:
    target = resolve(new)
    alias = resolve(old)
    assert alias.callback is target.callback and alias.params == target.params
    assert alias.hidden and not target.hidden
    help_text = run_cli(*old.split(), "--help")
    assert help_text.returncode == 0 and help_text.stdout == run_cli(
        *new.split(), "--help"
    ).stdout.replace(f"python -m core {new}", f"python -m core {old}")
    listed = dict(walk())
    assert new in listed and old not in listed


def test_the_readme_lists_every_old_spelling_with_its_new_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for old, new in RENAMED.items():
        assert f"| `{old}` | `{new}` |" in readme


def test_every_repeated_option_has_one_help_text() -> None:
    helps: dict[str, set[str]] = {}
    for name, command in walk():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                option = param.opts[0]
                if option == "--format" and name.startswith("report "):
                    option = "a document's --format"  # a dataset's is its file's format
                helps.setdefault(option, set()).add(param.help or "")
    for option in ("--db", "--json", "--cycle", "--plan-version", "--set-version"):
        assert len(helps[option]) == 1, (option, helps[option])
    assert len(helps["a document's --format"]) == 1
    # --plan is the plan acted on, a listing's filter, or (plan import) the plan to extend.
    assert len(helps["--plan"]) == 3


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
    [
        ["plan", "list"],
        ["dataset", "list"],
        ["data", "forget", "user-1"],
        ["store", "backup", "BACKUP"],
    ],
)
def test_a_truncated_or_unreadable_store_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    for db in (_truncated_store(tmp_path), tmp_path / "garbage.duckdb"):
        if db.name == "garbage.duckdb":
            db.write_bytes(b"not a store " * 1000)
        argv = [str(tmp_path / "bk") if a == "BACKUP" else a for a in command]
        done = run_cli(*argv, "--db", db)
        assert done.returncode == 2
        err = done.stderr
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("command", [["plan", "lint"], ["plan", "import"]])
def test_nesting_beyond_the_depth_limit_is_bad_input(
    store: Store, tmp_path: Path, suffix: str, command: list[str]
) -> None:
    deep = tmp_path / f"deep{suffix}"
    nested = "[" * 50_000 + "]" * 50_000
    deep.write_text(nested if suffix == ".json" else f"name: {nested}\n")
    done = run_cli(*command, deep)
    assert done.returncode == 2
    assert "nested too deeply" in done.stderr and done.stderr.count("\n") == 1


def test_an_unwritable_output_is_one_line_and_exit_2(store: Store, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli("store", "backup", blocker / "backup")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_an_unexpected_error_names_the_command_and_a_log_with_the_traceback(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(core.plan_versions, "list_plans", broken)
    done = run_cli("plan", "list")
    assert done.returncode == 3
    err = done.stderr
    assert err.count("\n") == 1 and "plan list" in err
    log = Path(err.rsplit(" ", 1)[1].strip())
    assert "ZeroDivisionError: boom" in log.read_text() and "Traceback" in log.read_text()


def test_a_bug_while_the_line_is_read_is_exit_3_with_a_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(NOUNS, "plan", Noun("no_such_module", "a noun whose module is broken"))
    done = run_cli("plan", "list", "--json")
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: plan list: ")
    log = Path(done.stderr.rsplit(" ", 1)[1].strip())
    assert "ModuleNotFoundError" in log.read_text()


def test_the_entry_point_turns_a_truncated_store_into_exit_2(tmp_path: Path) -> None:
    done = run_entry_point("dataset", "list", env={"FLYWHEEL_DB": str(_truncated_store(tmp_path))})
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_the_entry_point_takes_db_and_json_anywhere_and_keeps_old_spellings(
    tmp_path: Path,
) -> None:
    db = tmp_path / "flywheel.duckdb"
    before = run_entry_point(
        "--db",
        db,
        "--json",
        "stats",
        "ab",
        "--control-n",
        "10",
        "--control-x",
        "1",
        "--treatment-n",
        "10",
        "--treatment-x",
        "2",
    )
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["abs_diff"] == pytest.approx(0.1)
    assert before.stderr.count("\n") == 1 and "ab compare" in before.stderr
    usage = run_entry_point("plan", "list", "--frob", "--db", db)
    assert (usage.returncode, usage.stdout, usage.stderr.count("\n")) == (2, "", 1)
    assert "Traceback" not in usage.stderr
    assert not db.exists()  # neither the statistics nor a usage error opened the store


def test_text_tables_name_columns_by_their_labels_and_show_a_dash_for_missing_values(
    store: Store, tmp_path: Path
) -> None:
    plan_id = build_workspace(store, tmp_path)
    run_cycle(store, plan_id, 2, user=local_operator())
    db = ["--db", str(store.path)]

    listed = run_cli("dataset", "list", *db)
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    for shown in ("Dataset version", "Production rows", "Synthetic rows", "Parent version"):
        assert shown in header
    assert not {"version_id", "production_rows", "parent_version"} & set(header.split())
    # The first version has no parent: a dash under the column's label, never "None".
    assert "None" not in row and row.endswith("—")
    assert row.index("—") == header.index("Parent version")

    plans = run_cli("plan", "list", *db)
    assert plans.returncode == 0
    header, row = plans.stdout.splitlines()
    assert header.split() == ["Plan", "Latest", "version", "Ready", "Demo", "Name"]
    assert row.split()[:4] == [plan_id, "1", "yes", "no"]

    # --json keeps the code names and null (DESIGN.md's contract).
    versions = run_cli("dataset", "list", "--json", *db)
    assert versions.returncode == 0
    (version,) = json.loads(versions.stdout)["versions"]
    assert version["parent_version"] is None and version["production_rows"] > 0
