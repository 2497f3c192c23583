"""Limits on what a plan or a command line may ask for: a huge generation grid is refused before
a cell is listed, and no output path may overwrite the store, its WAL or a file Flywheel
manages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.access import local_operator
from core.backup import backup_store
from core.cli import main
from core.datasets import export_dataset
from core.documents import write_document
from core.errors import OutputPathError, PlanError
from core.generation import GenerationSpec
from core.lint import lint_plan
from core.paths import check_output_path
from core.plan import Axis, Generation, grid_cells
from core.plan_versions import save_plan_version
from core.privacy import redact_file
from core.settings import PROJECT_ROOT
from core.starters import starter_plan
from core.store import Store
from core.training import start_training

AT_ONCE_S = 2.0


def _billion() -> Generation:
    values = [f"v{i}" for i in range(1000)]
    return Generation(axes=[Axis(name=n, values=values) for n in ("a", "b", "c")])


def test_a_billion_cell_grid_is_refused_before_any_cell_is_listed() -> None:
    started = time.monotonic()
    with pytest.raises(PlanError, match=r"1,000,000,000 cells.*FLYWHEEL_MAX_GRID_CELLS"):
        grid_cells(_billion())
    plan = starter_plan("python_coding_assistant")
    plan.generation = _billion()
    assert "GRID_TOO_LARGE" in {f.code for f in lint_plan(plan).errors}
    with pytest.raises(PlanError):
        _ = GenerationSpec("p", 1, plan).cells
    assert time.monotonic() - started < AT_ONCE_S


def test_the_grid_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = Generation(axes=[Axis(name="a", values=["1", "2", "3"])])
    assert len(grid_cells(gen)) == 3
    monkeypatch.setenv("FLYWHEEL_MAX_GRID_CELLS", "2")
    with pytest.raises(PlanError, match="over the limit of 2"):
        grid_cells(gen)


def test_managed_files_are_refused_and_others_allowed(store: Store, tmp_path: Path) -> None:
    refused = [
        store.path,
        Path(f"{store.path}.wal"),
        store.path.parent / f".{store.path.name}.rewrite-1234",
        PROJECT_ROOT / "core" / "plan.py",
        PROJECT_ROOT / "templates" / "plan.md.j2",
        PROJECT_ROOT / "app.py",
    ]
    link = tmp_path / "innocent.md"
    store.fetch_all("SELECT 1")  # the store file exists
    link.symlink_to(store.path)
    for path in [*refused, link]:
        with pytest.raises(OutputPathError, match="refusing to write over it"):
            check_output_path(path)
    assert check_output_path(tmp_path / "plan.md") == tmp_path / "plan.md"


def test_every_writer_refuses_the_store(store: Store, tmp_path: Path) -> None:
    store.fetch_all("SELECT 1")
    before = store.path.read_bytes()
    with pytest.raises(OutputPathError):
        write_document("plan", "md", store.path, generated_at=None)  # type: ignore[arg-type]
    with pytest.raises(OutputPathError):
        export_dataset(store, "no-such-version", store.path)
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(OutputPathError):
        redact_file(source, Path(f"{store.path}.wal"))
    assert store.path.read_bytes() == before


def test_backups_and_training_exports_refuse_managed_paths(store: Store, tmp_path: Path) -> None:
    """A backup folder and the export a training job writes are output paths like any other."""
    operator = local_operator()
    for folder in (Path(f"{store.path}.backup"), PROJECT_ROOT / "core" / "backup-here"):
        with pytest.raises(OutputPathError, match="refusing to write over it"):
            backup_store(store, folder, user=operator)
        assert not folder.exists()
    plan_id, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="t", user=operator
    )
    beside = Path(f"{store.path}.train.jsonl")
    for target in (beside, PROJECT_ROOT / "templates" / "exports" / "train.jsonl"):
        with pytest.raises(OutputPathError, match="refusing to write over it"):
            start_training(
                store,
                plan_id,
                1,
                dataset_version="any",
                export_path=target,
                backend="together",
                user=operator,
            )
    assert not (PROJECT_ROOT / "templates" / "exports").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["report", "plan", "--format", "md", "--out", "{db}"],
        ["plan", "export", "--out", "{db}.wal"],
        ["plan", "export", "--out", "{db}"],
        ["report", "privacy", "--format", "html", "--out", "{db}"],
        ["dataset", "export", "any-version", "--out", "{db}"],
        ["data", "pii-redact", "--in", "{src}", "--out", "{db}"],
        ["store", "backup", "{db}.bk"],
    ],
)
def test_the_command_line_refuses_with_one_line_and_exit_2(
    demo_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n', encoding="utf-8")
    before = demo_store.path.read_bytes()
    filled = [a.format(db=demo_store.path, src=source) for a in args]
    code = main([*filled, "--db", str(demo_store.path)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "refusing to write over it" in err
    assert demo_store.path.read_bytes() == before
