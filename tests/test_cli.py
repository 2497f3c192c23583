"""The command line through a subprocess, as a scheduled job or a CI pipeline runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

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
