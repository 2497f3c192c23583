"""Charts keep their labels whole: margins sized to the longest category label in DejaVu Sans
(the font WeasyPrint and Debian's browsers fall back to), long labels wrapped between words,
heatmap labels clear of the title."""

from __future__ import annotations

from datetime import date

import plotly.graph_objects as go
import pytest
from PIL import ImageFont

from core.charts import (
    composition_heatmap_figure,
    funnel_figure,
    grid_heatmap_figure,
    slice_heatmap_figure,
    slice_scores_figure,
    timeline_figure,
    wins_losses_figure,
    wrap_label,
)
from core.labels import label
from core.plan import plan_timeline
from core.starters import starter_plan

FONT = ImageFont.truetype("DejaVuSans.ttf", 12)


def _widest(labels: list[str]) -> float:
    return max(FONT.getlength(line) for text in labels for line in text.split("<br>"))


def _y_labels(fig: go.Figure) -> list[str]:
    if fig.layout.yaxis.ticktext:
        return [str(t) for t in fig.layout.yaxis.ticktext]
    return [str(y) for trace in fig.data for y in (trace.y or ()) if isinstance(y, str)]


STAGES = [
    {"name": name, "rows_out": rows, "removed": 5, "added": 0}
    for name, rows in [
        ("window", 5000),
        ("consent", 4000),
        ("positive_or_accepted", 2000),
        ("decontamination", 1800),
        ("mix", 2400),
        ("split", 2400),
    ]
]
LONG_MODEL = "qwen2.5-coder-1.5b-python-assistant-lora-cycle-2"


def _figures() -> dict[str, go.Figure]:
    plan = starter_plan("python_coding_assistant")
    return {
        "timeline": timeline_figure(plan_timeline(plan), today=date(2027, 2, 1)),
        "funnel": funnel_figure(STAGES),
        "slice heatmap": slice_heatmap_figure(
            {LONG_MODEL: {"async and concurrency": 0.7}, "gpt-4o": {"async and concurrency": 0.9}}
        ),
        "slice scores": slice_scores_figure(
            [
                {
                    "gate": "No regression vs production",
                    "slice": "topic = object-oriented design",
                    "n": 30,
                    "candidate": 0.8,
                    "threshold": 0.7,
                    "reference": 0.75,
                    "status": "pass",
                }
            ]
        ),
        "wins and losses": wins_losses_figure(
            [{"slice": "topic = object-oriented design", "wins": 3, "ties": 20, "losses": 7}],
            baseline="production",
        ),
        "composition": composition_heatmap_figure(
            [
                {
                    "cell": {"difficulty": "intermediate", "topic": "error handling"},
                    "production": 3,
                    "synthetic": 2,
                },
                {
                    "cell": {"difficulty": "advanced", "topic": "async"},
                    "production": 1,
                    "synthetic": 4,
                },
            ],
            ["difficulty", "topic"],
        ),
        "grid": grid_heatmap_figure(
            [("difficulty", ["beginner", "intermediate"]), ("topic", ["async", "data structures"])],
            {("beginner", "async"): 3},
            10,
        ),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_the_left_margin_holds_the_longest_category_label(name: str) -> None:
    fig = _figures()[name]
    labels = _y_labels(fig)
    assert labels, name
    needed = _widest(labels)
    assert fig.layout.margin.l >= needed + 8, (name, fig.layout.margin.l, needed)
    assert fig.layout.yaxis.automargin is True


def test_the_timeline_names_every_cycle_whole() -> None:
    fig = _figures()["timeline"]
    assert "Cycle 2 · production data" in _y_labels(fig)


def test_funnel_stages_read_as_words_and_long_ones_wrap_between_words() -> None:
    labels = _y_labels(_figures()["funnel"])
    assert labels[0] == label("window") == "Production window"
    mixed = labels[4]
    assert "<br>" in mixed and mixed.replace("<br>", " ") == label("mix")
    assert all(len(line) <= 24 for text in labels for line in text.split("<br>"))


def test_wrap_label_keeps_words_whole() -> None:
    assert wrap_label("Mixed with synthetic and carried rows") == (
        "Mixed with synthetic and<br>carried rows"
    )
    assert wrap_label("short") == "short"
    assert wrap_label("a" * 40) == "a" * 40  # a single long word is never cut


@pytest.mark.parametrize("name", ["slice heatmap", "composition", "grid"])
def test_heatmap_labels_sit_below_the_squares_clear_of_the_title(name: str) -> None:
    fig = _figures()[name]
    assert fig.layout.xaxis.side == "bottom"
    assert fig.layout.title.text
    assert fig.layout.margin.b >= 10 + 12  # room for one line of x labels
