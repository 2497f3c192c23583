"""The command line answers at once: `--help` and the pure statistics import no heavy library,
and a command that works on the store imports only the libraries it uses.

Each test starts a fresh interpreter, as a user's shell does, and reads what it imported; the
wall time itself is bench/cli.py's to measure, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from cli_helpers import ROOT, run_cli
from cycle_helpers import build_workspace
from eval_helpers import code_items, write_jsonl
from test_evals import ML, _gate_workspace

import core.stats
from core.abtest import design_ab_test
from core.access import local_operator
from core.cycles import run_cycle
from core.evals import import_eval_set
from core.store import Store

# Each takes from a tenth of a second (pydantic, duckdb, jinja2 with their dependants) to
# seconds (scipy.stats, openai, the training stack) to import on the machines this runs on.
HEAVY = frozenset(
    [
        "ibis",
        "pandas",
        "pyarrow",
        "plotly",
        "openai",
        "httpx2",
        "weasyprint",
        "kaleido",
        "scipy",
        "numpy",
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
        "tokenizers",
        "jinja2",
        "pydantic",
        "duckdb",
        "sqlglot",
        "streamlit",
    ]
)
SAMPLE_SIZE = ["stats", "sample-size", "--baseline", "0.1", "--mde", "0.01"]


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


# `python -m core ARGS` with the names of the loaded modules written to a file at the end.
_RUN_AND_LIST = """
import json, runpy, sys
listing = sys.argv.pop(1)
try:
    runpy.run_module("core", run_name="__main__", alter_sys=True)
finally:
    with open(listing, "w") as out:
        json.dump(sorted(sys.modules), out)
"""


def _top_level(names: list[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


def test_importing_the_cli_loads_no_heavy_library() -> None:
    done = _python("-c", "import core.cli, sys; print('\\n'.join(sys.modules))")
    assert done.returncode == 0, done.stderr
    loaded = _top_level(done.stdout.split())
    assert "core" in loaded
    assert loaded & HEAVY == set()


@pytest.mark.parametrize(
    ("argv", "answer"),
    [(["--help"], "Flywheel: plan, check and run"), (SAMPLE_SIZE, "14,749 users per arm")],
)
def test_help_and_sample_size_need_only_the_standard_library_and_no_store(
    tmp_path: Path, argv: list[str], answer: str
) -> None:
    bare = _python("-c", "import sys; print('\\n'.join(sys.modules))")
    db = tmp_path / "absent" / "flywheel.duckdb"
    listing = tmp_path / "modules.json"
    done = _python("-c", _RUN_AND_LIST, str(listing), *argv, env={"FLYWHEEL_DB": str(db)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert answer in done.stdout
    loaded = _top_level(json.loads(listing.read_text()))
    beyond = loaded - _top_level(bare.stdout.split()) - {"core", "click"}
    assert beyond - set(sys.stdlib_module_names) == set()
    assert not db.parent.exists()  # the store was never opened


def test_no_commands_help_loads_a_heavy_library() -> None:
    script = """
import contextlib, io, json, sys
from core.cli import RENAMED, main, walk

commands = [name.split() for name, _ in walk()] + [old.split() for old in RENAMED]
codes = set()
for command in commands:
    with contextlib.redirect_stdout(io.StringIO()):
        codes.add(main([*command, "--help"]))
found = {"commands": len(commands), "codes": sorted(codes), "modules": sorted(sys.modules)}
print(json.dumps(found))
"""
    done = _python("-c", script)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["commands"] > 30 and result["codes"] == [0]
    assert _top_level(result["modules"]) & HEAVY == set()


def test_the_options_choices_are_the_literals_of_core() -> None:
    from core.abtest import Correction
    from core.cli import _base, ab, data, dataset, evals, train
    from core.datasets import ExportFormat, Split
    from core.documents import Format
    from core.evals import Role
    from core.ingest import Kind
    from core.plan import TrainingBackend

    assert get_args(Kind) == data.INGEST_KINDS
    assert get_args(ExportFormat) == dataset.EXPORT_FORMATS
    assert get_args(Split) == dataset.EXPORT_SPLITS
    assert get_args(Role) == evals.EVAL_ROLES
    assert get_args(TrainingBackend) == train.TRAINING_BACKENDS
    assert get_args(Correction) == ab.CORRECTIONS
    assert get_args(Format) == _base.DOCUMENT_FORMATS


@pytest.mark.parametrize(
    ("baseline", "mde", "relative", "alpha", "power", "daily", "shares"),
    [
        (0.1, 0.01, False, 0.05, 0.8, None, (0.5, 0.5)),
        (0.1, 0.1, True, 0.05, 0.8, 1000.0, (0.5, 0.5)),
        (0.03, 0.005, False, 0.01, 0.9, None, (0.5, 0.5)),
        (0.2, 0.02, False, 0.05, 0.8, 777.0, (0.2, 0.8)),
        (0.5, 0.01, False, 0.05, 0.8, 5e4, (0.1, 0.1, 0.1)),
    ],
)
def test_sample_size_answers_as_the_ab_design_calculator(
    baseline: float,
    mde: float,
    relative: bool,
    alpha: float,
    power: float,
    daily: float | None,
    shares: tuple[float, ...],
) -> None:
    flags = ["--baseline", str(baseline), "--mde", str(mde), "--alpha", str(alpha)]
    flags += ["--power", str(power), "--shares", ",".join(map(str, shares))]
    flags += ["--relative"] if relative else []
    flags += ["--daily-traffic", str(daily)] if daily else []
    done = run_cli("stats", "sample-size", *flags, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    design = design_ab_test(
        baseline,
        mde,
        relative=relative,
        alpha=alpha,
        power=power,
        daily_traffic=daily or 1.0,
        traffic_shares=shares,
    )
    assert (answer["n_per_arm"], answer["total"]) == (design.n_per_arm, design.total)
    assert answer["days"] == (design.days if daily else None)


@pytest.mark.parametrize(
    "flags",
    [
        ["--baseline", "0.9", "--mde", "0.5"],
        ["--baseline", "0.1", "--mde", "0"],
        ["--baseline", "1.5", "--mde", "0.01"],
        ["--baseline", "0.1", "--mde", "0.01", "--shares", "0.9,0.9"],
        ["--baseline", "0.1", "--mde", "0.01", "--daily-traffic", "-5"],
    ],
)
def test_an_impossible_sample_size_is_one_line_and_exit_2_as_the_calculator_says(
    flags: list[str],
) -> None:
    done = run_cli("stats", "sample-size", *flags)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: Cannot size the A/B test: ")


def test_store_free_commands_never_read_the_store(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"not a store " * 1000)
    srm = run_cli("stats", "srm", "--counts", "5000,5200", "--db", garbage, "--json")
    assert srm.returncode == 0 and json.loads(srm.stdout)["mismatch"] is False
    size = run_cli("--db", garbage, "stats", "sample-size", "--baseline", "0.1", "--mde", "0.01")
    assert size.returncode == 0 and "14,749" in size.stdout
    assert garbage.read_bytes() == b"not a store " * 1000


def test_an_unexpected_error_in_a_store_free_command_is_exit_3_with_a_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(core.stats, "sample_size_per_arm", broken)
    done = run_cli(*SAMPLE_SIZE)
    assert done.returncode == 3
    err = done.stderr
    assert err.count("\n") == 1 and "stats sample-size" in err
    log = Path(err.rsplit(" ", 1)[1].strip())
    assert "ZeroDivisionError: boom" in log.read_text()


def test_p_values_print_through_the_one_formatter() -> None:
    # A gross mismatch has p ~ 1e-300: it prints as "< 0.0001", never "0" or "1e-300".
    gross = run_cli("stats", "srm", "--counts", "5000,9000")
    assert gross.returncode == 1
    assert "p < 0.0001" in gross.stdout and "e-" not in gross.stdout
    assert "p = 0," not in gross.stdout
    fine = run_cli("stats", "srm", "--counts", "5000,5200")
    assert fine.returncode == 0
    assert "p = 0.048" in fine.stdout  # scipy chisquare([5000, 5200]): 0.04767
    flags = ["--control-n", "10000", "--control-x", "1000", "--treatment-n", "10000"]
    far = run_cli("ab", "compare", *flags, "--treatment-x", "2000")
    assert far.returncode == 0 and far.stdout.rstrip().endswith("p < 0.0001")
    near = run_cli("ab", "compare", *flags, "--treatment-x", "1100")
    assert near.returncode == 0
    assert near.stdout.rstrip().endswith("p = 0.021")  # proportions_ztest: 0.02108


# What a command that reads or records in the store has no use for: the query builder, the
# client of model servers, dataframes, charts, documents and the training stack. Commands
# that compute no statistics have no use for numpy, scipy or Arrow either.
NOT_FOR_RECORDS = frozenset(
    [
        "ibis",
        "sqlglot",
        "openai",
        "httpx2",
        "pandas",
        "plotly",
        "weasyprint",
        "kaleido",
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
    ]
)
NO_STATISTICS = NOT_FOR_RECORDS | {"numpy", "scipy", "pyarrow"}


@pytest.fixture(scope="module")
def _workspaces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small stores, built once: one that ran cycle 2; one with eval results to gate (their
    set frozen by the results) and a draft set."""
    built: dict[str, Path] = {}
    for name in ("cycle", "gates"):
        folder = tmp_path_factory.mktemp(f"startup-{name}")
        store = Store(folder / "flywheel.duckdb")
        if name == "cycle":
            plan_id = build_workspace(store, folder)
            run_cycle(store, plan_id, 2, user=local_operator())
        else:
            _gate_workspace(store, folder, regress_async=False)
            draft = write_jsonl(folder / "draft.jsonl", code_items(2, eval_set="py-draft"))
            import_eval_set(store, draft, user=ML)
        built[name] = store.path
    return built


def _command(workspace: str, argv: list[str], answer: str, unused: frozenset[str]) -> Any:
    return pytest.param(workspace, argv, answer, unused, id=" ".join(argv[:2]))


@pytest.mark.parametrize(
    ("workspace", "argv", "answer", "unused"),
    [
        _command("cycle", ["cycle", "why", "i-001"], "kept in ds-", NO_STATISTICS),
        _command(
            "cycle", ["data", "forget", "u-3"], "Forgot user u-3: 10 interactions", NO_STATISTICS
        ),
        _command("cycle", ["train", "list"], "No training jobs yet.", NO_STATISTICS),
        _command("cycle", ["generate", "--dry-run"], "calls, ~", NO_STATISTICS),
        _command("gates", ["eval", "sets"], "py-draft        1      6  no", NO_STATISTICS),
        _command(
            "gates", ["eval", "freeze", "py-draft", "--reason", "ship"], "Froze", NO_STATISTICS
        ),
        _command("gates", ["gate", "check", "--cycle", "1"], "ft:student: PASS", NOT_FOR_RECORDS),
        _command(
            "gates",
            ["gate", "decide", "--cycle", "1", "--approve"],
            "Recorded the decision on ft:student for cycle 1: Approved",
            NOT_FOR_RECORDS,
        ),
    ],
)
def test_a_command_imports_no_heavy_library_it_does_not_use(
    tmp_path: Path,
    _workspaces: dict[str, Path],
    workspace: str,
    argv: list[str],
    answer: str,
    unused: frozenset[str],
) -> None:
    db = tmp_path / "flywheel.duckdb"
    shutil.copyfile(_workspaces[workspace], db)
    listing = tmp_path / "modules.json"
    done = _python(
        "-c", _RUN_AND_LIST, str(listing), *argv, "--db", str(db), env={"FLYWHEEL_AUTO_DEMO": "0"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert answer in done.stdout
    assert _top_level(json.loads(listing.read_text())) & unused == set()


def test_rejects_reads_a_batch_without_the_query_builder(
    tmp_path: Path, _workspaces: dict[str, Path]
) -> None:
    db = tmp_path / "flywheel.duckdb"
    shutil.copyfile(_workspaces["cycle"], db)
    found = Store(db).fetch_one("SELECT batch_id FROM ingest_batches WHERE kind = 'interactions'")
    assert found is not None
    listing = tmp_path / "modules.json"
    done = _python(
        "-c",
        _RUN_AND_LIST,
        str(listing),
        "data",
        "rejects",
        "--batch",
        str(found[0]),
        "--db",
        str(db),
        env={"FLYWHEEL_AUTO_DEMO": "0"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _top_level(json.loads(listing.read_text())) & NO_STATISTICS == set()
