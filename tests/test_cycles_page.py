"""The Cycles page through AppTest, and its chart builders."""

from __future__ import annotations

from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.charts import composition_heatmap_figure, funnel_figure
from core.cycles import cycle_runs
from core.store import Store


def _cycles_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.run()
    at.switch_page("pages/cycles.py")
    at.run()
    return at


def test_page_shows_the_demo_funnel_versions_and_downloads(demo_store: Store) -> None:
    at = _cycles_page()
    assert not at.exception, at.exception
    assert not at.error
    assert at.selectbox(key="version_pick").options[0].startswith("ds-python-coding-assistant-c3")
    assert "Stage and rule" in [s.label for s in at.selectbox]
    assert at.get("download_button")
    at.text_input(key="why_id").input("demo-planted-eval").run()
    assert any("decontamination" in m.value for m in at.markdown)


def test_run_button_builds_a_version(demo_store: Store) -> None:
    before = len(cycle_runs(demo_store))
    at = _cycles_page()
    at.selectbox(key="cycle_pick").select(2).run()
    at.button(key="cycle_run").click().run()
    assert not at.exception, at.exception
    # The demo ran cycle 2 at its data freeze; run today, it also sees what was loaded since
    # (later consent events), so it builds a second version carrying cycle 1's rows.
    built = [s.value for s in at.success]
    assert any("Built ds-python-coding-assistant-c2-v2" in v for v in built), built
    assert len(cycle_runs(demo_store)) == before + 1
    # Run again with nothing changed, it builds nothing new.
    at.button(key="cycle_run").click().run()
    assert any(
        "Unchanged: same bytes as ds-python-coding-assistant-c2-v2" in s.value for s in at.success
    )
    assert len(cycle_runs(demo_store)) == before + 2


def test_empty_store_says_what_to_do(store: Store) -> None:
    at = _cycles_page()
    assert not at.exception
    assert any("No plan yet" in i.value for i in at.info)


def test_funnel_and_heatmap_figures_hold_the_counts() -> None:
    stages = [
        {"name": "window", "rows_out": 100, "removed": 0, "added": 0},
        {"name": "consent", "rows_out": 60, "removed": 40, "added": 0},
        {"name": "mix", "rows_out": 90, "removed": 0, "added": 30},
    ]
    fig = funnel_figure(stages)
    # Stages by their labels, a long one wrapped between words rather than cut.
    assert list(fig.data[0].y) == [
        "Production window",
        "Consent",
        "Mixed with synthetic and<br>carried rows",
    ]
    assert list(fig.data[0].x) == [100, 60, 90]
    assert [list(c) for c in fig.data[0].customdata] == [[0, 0], [40, 0], [0, 30]]
    cells = [
        {"cell": {"topic": "a", "difficulty": "x"}, "production": 2, "synthetic": 1},
        {"cell": {"topic": "b", "difficulty": "x"}, "production": 0, "synthetic": 5},
    ]
    heat = composition_heatmap_figure(cells, ["difficulty", "topic"])
    assert list(heat.data[0].x) == ["a", "b"] and list(heat.data[0].y) == ["x"]
    assert [list(r) for r in heat.data[0].z] == [[3, 5]]
    only = composition_heatmap_figure(cells, ["difficulty", "topic"], source="production")
    assert [list(r) for r in only.data[0].z] == [[2, 0]]
