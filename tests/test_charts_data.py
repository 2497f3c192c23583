"""Chart builders: the Data, Consent, Evals and Overview charts by their traces and values."""

from __future__ import annotations

from datetime import date

import pytest

from core.charts import (
    STATUS_COLOURS,
    VERDICT_COLOURS,
    consent_rate_figure,
    dataset_sizes_figure,
    gate_thresholds_figure,
    lift_by_cycle_figure,
    pii_by_type_figure,
    timeline_figure,
)
from core.monitoring import CycleRecord, DatasetFigures, GateFigure, LiftFigures


def test_pii_by_type_bars_largest_first() -> None:
    fig = pii_by_type_figure({"EMAIL": 3, "CARD": 7, "IP": 3})
    bar = fig.data[0]
    # Entities: Plotly would read a bare <CARD> as a tag and draw nothing.
    assert list(bar.x) == ["&lt;CARD&gt;", "&lt;EMAIL&gt;", "&lt;IP&gt;"]
    assert list(bar.y) == [7, 3, 3]


def test_consent_rate_line() -> None:
    rows = [
        {"day": date(2027, 1, 1), "users": 4, "granted": 2, "rate": 0.5},
        {"day": date(2027, 1, 2), "users": 4, "granted": 3, "rate": 0.75},
    ]
    fig = consent_rate_figure(rows)
    assert list(fig.data[0].x) == ["2027-01-01", "2027-01-02"]
    assert list(fig.data[0].y) == [0.5, 0.75]
    assert fig.layout.yaxis.range == (0, 1)


def test_slice_heatmap_rows_are_models_and_marks_short_slices() -> None:
    from core.charts import slice_heatmap_figure

    fig = slice_heatmap_figure(
        {"candidate": {"async": 0.4, "files": 0.9}, "production": {"async": 0.8}},
        short=["async"],
    )
    heat = fig.data[0]
    assert list(heat.y) == ["candidate", "production"]
    assert list(heat.x) == ["⚠ async", "files"]
    assert [list(r) for r in heat.z] == [[0.4, 0.9], [0.8, None]]
    assert [list(r) for r in heat.text] == [["0.40", "0.90"], ["0.80", "–"]]
    assert slice_heatmap_figure({}).data == ()


def test_wins_losses_stacked_per_slice() -> None:
    from core.charts import wins_losses_figure

    fig = wins_losses_figure(
        [{"slice": "async", "wins": 2, "losses": 9, "ties": 19}], baseline="production"
    )
    assert [t.name for t in fig.data] == ["candidate better", "tie", "production better"]
    assert [list(t.x) for t in fig.data] == [[2], [19], [9]]
    assert fig.layout.barmode == "stack"


def test_slice_scores_bars_with_threshold_ticks_and_reference_diamonds() -> None:
    from core.charts import SLICE_STATUS_COLOURS, slice_scores_figure

    rows = [
        {
            "gate": "No regression",
            "slice": "all items",
            "n": 210,
            "candidate": 0.86,
            "threshold": 0.74,
            "reference": 0.76,
            "status": "pass",
        },
        {
            "gate": "No regression",
            "slice": "topic = async",
            "n": 30,
            "candidate": 0.23,
            "threshold": 0.75,
            "reference": 0.77,
            "status": "fail",
        },
        {
            "gate": "Parses",
            "slice": "topic = async",
            "n": 30,
            "candidate": 0.9,
            "threshold": 0.95,
            "reference": None,
            "status": "below",
        },
    ]
    fig = slice_scores_figure(rows)
    bars, ticks, diamonds = fig.data
    assert (bars.type, bars.orientation, list(bars.y), list(bars.x)) == (
        "bar",
        "h",
        [0, 1, 2],
        [0.86, 0.23, 0.9],
    )
    assert list(bars.marker.color) == [SLICE_STATUS_COLOURS[s] for s in ("pass", "fail", "below")]
    assert list(bars.text) == ["0.86", "0.23", "0.90"]
    assert [list(c) for c in bars.customdata][1] == ["No regression", "topic = async", 30, "fail"]
    # Rows of two gates: the all-items row names its gate; equal slice names stay apart.
    assert list(fig.layout.yaxis.ticktext) == [
        "No regression: all items",
        "topic = async",
        "topic = async",
    ]
    assert list(fig.layout.yaxis.tickvals) == [0, 1, 2]
    assert (ticks.name, list(ticks.y), list(ticks.x)) == (
        "threshold",
        [0, 1, 2],
        [0.74, 0.75, 0.95],
    )
    assert ticks.marker.symbol == "line-ns"
    assert (diamonds.name, list(diamonds.y), list(diamonds.x)) == (
        "reference",
        [0, 1],
        [0.76, 0.77],
    )
    assert fig.layout.xaxis.range == (0, 1.02)

    one_gate = slice_scores_figure(rows[:2])
    assert list(one_gate.layout.yaxis.ticktext) == ["all items", "topic = async"]
    assert slice_scores_figure([]).data == ()


def _record(cycle: int, **parts: object) -> CycleRecord:
    return CycleRecord(cycle=cycle, start=date(2027, cycle, 1), end=date(2027, cycle, 28), **parts)  # type: ignore[arg-type]


def _lift(lift: float, ci: tuple[float, float], verdict: str) -> LiftFigures:
    return LiftFigures(
        metric="acceptance_rate",
        method="sequential",
        higher_is_better=True,
        lift=lift,
        ci=ci,
        p_value=0.01,
        users_control=100,
        users_treatment=100,
        verdict=verdict,
        srm_mismatch=False,
    )


def test_gate_chart_draws_each_interval_against_its_threshold() -> None:
    inf = float("inf")
    gates = [
        GateFigure("Code parses", "absolute", "parse_rate", True, "pass", 0.99, 0.95, (0.97, 1.0)),
        GateFigure(
            "No regression", "no_regression", "tests", True, "fail", 0.0143, -0.02, (-0.038, 0.06)
        ),
        GateFigure("Keeps 95%", "non_inferiority", "judge", True, "pass", 0.99, 0.95, (0.96, inf)),
        GateFigure("Cost", "cost", "cost_per_1k", False, "insufficient_data", None, 0.2),
    ]
    fig = gate_thresholds_figure(gates)
    by_name: dict[str, dict[str, object]] = {}
    for trace in fig.data:
        by_name.setdefault(str(trace.name), {})[str(trace.y[0])] = trace
    intervals, estimates = by_name["interval"], by_name["estimate"]
    thresholds = by_name["threshold (margin)"]
    assert list(intervals) == ["Code parses", "No regression", "Keeps 95%"]
    # The regression gate is drawn in points: its interval runs from 3.8 points worse to
    # 6 better, across the 2-point margin, in the fail colour; the estimate sits on it.
    regression = intervals["No regression"]
    assert list(regression.x) == pytest.approx([-3.8, 6.0])  # type: ignore[attr-defined]
    assert regression.line.color == VERDICT_COLOURS["fail"]  # type: ignore[attr-defined]
    assert list(thresholds["No regression"].x) == pytest.approx([-2.0])  # type: ignore[attr-defined]
    assert list(estimates["No regression"].x) == pytest.approx([1.43])  # type: ignore[attr-defined]
    # An unbounded end is cut at the row's edge and drawn as an arrow.
    ratio = intervals["Keeps 95%"]
    assert ratio.x[1] < inf and ratio.marker.symbol[1] == "triangle-right"  # type: ignore[attr-defined]
    assert intervals["Code parses"].line.color == VERDICT_COLOURS["pass"]  # type: ignore[attr-defined]
    # A gate with no value keeps its threshold and says it has none; each row has its scale.
    assert "Cost (non-blocking)" in thresholds and "Cost (non-blocking)" not in estimates
    assert any("no value" in a.text for a in fig.layout.annotations)
    assert fig.layout.xaxis2.range[0] < -3.8 and fig.layout.xaxis.range[0] > 0.9


def test_lift_by_cycle_points_with_asymmetric_intervals() -> None:
    records = [
        _record(1, ab=_lift(0.3, (0.1, 0.6), "ship")),
        _record(2),  # no A/B data: left out
        _record(3, ab=_lift(-0.1, (-0.25, 0.02), "roll_back")),
    ]
    point = lift_by_cycle_figure(records).data[0]
    assert list(point.x) == ["Cycle 1", "Cycle 3"]
    assert list(point.y) == [0.3, -0.1]
    assert list(point.error_y.array) == pytest.approx([0.3, 0.12])
    assert list(point.error_y.arrayminus) == pytest.approx([0.2, 0.15])
    assert point.marker.color[1] == "#de2d26"


def test_dataset_growth_stacks_synthetic_and_production_by_the_cycle_that_added_it() -> None:
    carried = (("production", 2, 75), ("production", 3, 93), ("synthetic", 1, 205))
    records = [
        _record(1, dataset=DatasetFigures("ds-c1", 205, 0, 205, 184, 21, (("synthetic", 1, 205),))),
        _record(
            2,
            dataset=DatasetFigures(
                "ds-c2", 280, 75, 205, 252, 28, (("production", 2, 75), ("synthetic", 1, 205))
            ),
        ),
        _record(3, dataset=DatasetFigures("ds-c3", 373, 168, 205, 336, 37, carried)),
        _record(4),
    ]
    fig = dataset_sizes_figure(records)
    assert [t.name for t in fig.data] == [
        "Production · added by cycle 2",
        "Production · added by cycle 3",
        "Synthetic",
    ]
    assert [list(t.y) for t in fig.data] == [[0, 75, 75], [0, 0, 93], [205, 205, 205]]
    assert list(fig.data[0].x) == ["Cycle 1", "Cycle 2", "Cycle 3"]
    assert fig.layout.barmode == "stack"
    # A version written before rows kept their origin counts as its own cycle's.
    old = dataset_sizes_figure([_record(2, dataset=DatasetFigures("ds-c2", 105, 75, 30, 91, 14))])
    assert [(t.name, list(t.y)) for t in old.data] == [
        ("Production · added by cycle 2", [75]),
        ("Synthetic", [30]),
    ]


def test_timeline_marks_what_actually_happened() -> None:
    from core.plan import plan_timeline
    from core.starters import starter_plan

    cycles = plan_timeline(starter_plan("python_coding_assistant"))
    plain = timeline_figure(cycles)
    assert "Actual" not in [t.name for t in plain.data]
    marked = timeline_figure(cycles, status={1: "shipped", 2: "rejected"})
    actual = next(t for t in marked.data if t.name == "Actual")
    assert list(actual.text) == ["shipped", "rejected"]
    assert list(actual.x) == [cycles[0].end.isoformat(), cycles[1].end.isoformat()]
    assert list(actual.marker.color) == [STATUS_COLOURS["shipped"], STATUS_COLOURS["rejected"]]
