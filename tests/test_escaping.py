"""One escaper per output: names from a plan reach SQL, JSON paths, Markdown, chart SVG and CSV
as text, never as SQL, a path, markup, a link or a formula."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from cycle_helpers import build_workspace, cycle_plan, interaction

from core.access import local_operator
from core.audit import AuditEntry, audit_csv
from core.charts import composition_heatmap_figure, grid_heatmap_figure, pii_by_type_figure
from core.cycles import run_cycle
from core.datasets import get_version
from core.documents import render_document
from core.escaping import chart_text, csv_cell, json_path, markdown_text, sql_identifier
from core.plan import Axis, FieldCondition
from core.store import Store

AT = datetime(2027, 3, 1, tzinfo=UTC)
LINK = '<a href="javascript:alert(1)">x</a>'
AXIS = f'say "hi" {LINK} | *'


@pytest.mark.parametrize("name", ['a"b', "a.b", "*", "a/b", "a~b", "it's", '\\"', "[0]", "$"])
def test_json_path_names_exactly_one_member(name: str) -> None:
    con = duckdb.connect()
    doc = json.dumps({name: "hit", "a": {"b": "nested"}, "other": "miss"})
    [(found,)] = con.execute(
        "SELECT json_extract_string(?::JSON, ?)", [doc, json_path(name)]
    ).fetchall()
    assert found == "hit"


def test_sql_identifier_quotes_any_name() -> None:
    con = duckdb.connect()
    name = 'x"; DROP TABLE t; --'
    con.execute(f"CREATE TABLE t ({sql_identifier(name)} INTEGER)")
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert [r[0] for r in con.execute("DESCRIBE t").fetchall()] == [name]


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("plain", "plain"),
        (3, "3"),
        (None, ""),
    ],
)
def test_csv_cells_never_start_a_formula(cell: object, written: str) -> None:
    assert csv_cell(cell) == written


def test_the_audit_csv_neutralises_formulas() -> None:
    entry = AuditEntry(1, AT, "=cmd|' /C calc'!A0", "@import", "+target", "-2+3")
    rows = list(csv.reader(io.StringIO(audit_csv([entry]))))
    assert rows[1][2:] == ["'=cmd|' /C calc'!A0", "'@import", "'+target", "'-2+3"]


def test_markdown_text_keeps_links_tags_and_cells_out() -> None:
    text = markdown_text(f"{LINK} | ![img](http://x) &lt;")
    for special in "<>[]|!&":
        assert text.count(special) == text.count("\\" + special), special


def test_chart_labels_are_text_not_markup() -> None:
    fig = grid_heatmap_figure([("topic", [LINK]), (AXIS, ["v"])], {}, 2)
    data = fig.to_dict()
    assert data["data"][0]["x"] == ["v"]
    assert data["data"][0]["y"] == [chart_text(LINK)]
    assert "<a" not in json.dumps(data) and "&lt;a href" in json.dumps(data)
    cells = [{"cell": {AXIS: LINK}, "production": 1, "synthetic": 0}]
    assert "<a" not in json.dumps(composition_heatmap_figure(cells, [AXIS]).to_dict())
    assert pii_by_type_figure({"EMAIL": 2}).to_dict()["data"][0]["x"] == ["&lt;EMAIL&gt;"]


def _hostile_workspace(store: Store, tmp: Path) -> str:
    plan = cycle_plan()
    plan.generation.axes.append(Axis(name=AXIS, values=["vim"]))
    plan.quality_filters.append(FieldCondition(field='client "x"', op="!=", value="emacs"))
    metadata = {AXIS: "vim", 'client "x"': "vim"}
    rows = [interaction(n, metadata=metadata) for n in range(40)]
    return build_workspace(store, tmp, rows, plan=plan)


def test_an_axis_name_with_quotes_runs_a_cycle_and_stays_text_in_the_datasheet(
    store: Store, tmp_path: Path
) -> None:
    plan_id = _hostile_workspace(store, tmp_path)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    version = get_version(store, result.dataset_version)
    labelled = [c["cell"] for c in version.composition["cells"] if c["production"]]
    assert labelled and all(cell[AXIS] == "vim" for cell in labelled)
    text = render_document(
        "datasheet", "md", generated_at=AT, store=store, version_id=result.dataset_version
    ).decode("utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| Cell ("))
    assert header.count("<") == header.count("\\<")  # no tag, only escaped text
    assert header.count(" | ") == 2  # three columns, none added by the name's pipe
    assert markdown_text(AXIS) in header


_HAND_QUOTING = (
    """.replace('"', '""')""",
    """.replace("'", "''")""",
    """f'"{""",  # a double-quoted identifier built by hand
)


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for folder in ("core", "pages")
        for p in (Path(__file__).resolve().parent.parent / folder).rglob("*.py")
        if p.name != "escaping.py"
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_identifiers_and_literals_are_quoted_by_one_helper(path: Path) -> None:
    """Quoting lives in core.escaping only: a second, hand-rolled quoter is how one call site
    ends up forgetting a quote or a NUL check."""
    source = path.read_text(encoding="utf-8")
    assert [q for q in _HAND_QUOTING if q in source] == []
