"""The Overview page through AppTest: each cycle planned against actual on the demo, the cycle
detail, empty states, and figures that follow a change made by another process."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.access import local_operator
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store

NEW_COLUMNS = [
    "funnel (rows in → out)",
    "dataset rows",
    "synthetic",
    "gates",
    "A/B lift [interval]",
    "A/B decision",
    "deviations",
]


def _overview() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    return at


def _table(at: AppTest) -> dict[int, dict[str, object]]:
    """The cycles table, whose columns the page shows as four narrower tables by cycle."""
    merged: dict[int, dict[str, object]] = {}
    for element in at.dataframe[:4]:
        frame = getattr(element.value, "data", element.value)  # a Styler holds .data
        for _, row in frame.iterrows():
            merged.setdefault(int(row["cycle"]), {}).update(dict(row))
    return merged


def test_overview_shows_each_cycle_planned_against_actual(demo_store: Store) -> None:
    at = _overview()
    assert not at.exception, at.exception
    assert not at.error
    table = _table(at)
    assert set(NEW_COLUMNS) <= set(table[1])
    assert [table[c]["status"] for c in range(1, 7)] == [
        "shipped",
        "rejected",
        "dataset built",
        "planned",
        "planned",
        "planned",
    ]
    assert (
        table[1]["gates"] == "pass (4/4 pass)" and table[1]["A/B decision"] == "Ship the treatment"
    )
    assert table[1]["deviations"] == "—"
    assert table[2]["gates"] == "fail (3/4 pass)"
    assert "gate 'No regression vs production' failed" in str(table[2]["deviations"])
    assert "sample ratio mismatch" in str(table[3]["deviations"])
    assert str(table[2]["A/B lift [interval]"]).startswith("-2.0% [")
    assert table[4]["funnel (rows in → out)"] == "—" and table[4]["gates"] == "—"
    assert any("cycle 2: gate 'No regression" in w.value for w in at.warning)
    # timeline, rates, cost, dataset sizes, lift per cycle, then cycle 3's funnel
    assert len(at.get("plotly_chart")) == 6

    # The newest dataset (cycle 3: its window's real answers carried forward with the grid's
    # synthetic rows) leaves no grid cell empty or thin.
    assert any("covers all 21 grid cells, none thin" in s.value for s in at.success), (
        "the coverage of the newest dataset"
    )
    picker = at.selectbox(key="overview_cycle")
    assert picker.value == 3  # the latest cycle that has started
    assert any("no candidate or eval results yet" in i.value for i in at.info)

    picker.set_value(2).run()
    assert not at.exception
    assert any("checked now on the stored results" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 7  # the funnel and the gates against thresholds

    at.selectbox(key="overview_cycle").set_value(1).run()
    assert any("recorded with the decision **approved**" in c.value for c in at.caption)

    at.selectbox(key="overview_cycle").set_value(5).run()
    assert any("Cycle 5 has not started" in i.value for i in at.info)


def test_overview_follows_a_decision_taken_on_the_command_line(demo_store: Store) -> None:
    at = _overview()
    at.selectbox(key="overview_cycle").set_value(2).run()
    assert "candidate rejected" not in str(_table(at)[2]["deviations"])
    done = subprocess.run(
        [sys.executable, "-m", "core", "gate", "decide", "--cycle", "2", "--reject"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    at.run()
    assert not at.exception
    assert "candidate rejected" in str(_table(at)[2]["deviations"])
    assert any("recorded with the decision **rejected**" in c.value for c in at.caption)


def test_overview_of_a_plan_that_has_not_run_says_what_to_do(store: Store) -> None:
    save_plan_version(
        store, starter_plan("python_coding_assistant"), note="t", user=local_operator()
    )
    at = _overview()
    assert not at.exception and not at.error
    assert any("No cycle has traffic or a run yet" in i.value for i in at.info)
