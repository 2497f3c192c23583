"""Plotly figure builders: data in, figure out. Pure: no store, no streamlit.

Plotly reads ``<a href>``, ``<b>`` and ``<br>`` in label, title and hover text as markup, so
every text that comes from users or models (axis and cell names, slices, gates, metrics, models)
goes through ``core.escaping.chart_text`` before it reaches a figure."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from core.escaping import chart_text
from core.labels import label as human_label
from core.metrics import metric
from core.plan import CycleMilestones

if TYPE_CHECKING:  # charts stay pure: no store import at run time
    from core.monitoring import CycleActuals, CycleRecord, GateFigure

__all__ = [
    "PHASE_COLOURS",
    "SLICE_STATUS_COLOURS",
    "STATUS_COLOURS",
    "VERDICT_COLOURS",
    "ab_lift_figure",
    "composition_heatmap_figure",
    "consent_rate_figure",
    "cost_per_1k_figure",
    "cycle_rates_figure",
    "dataset_sizes_figure",
    "funnel_figure",
    "gate_thresholds_figure",
    "grid_heatmap_figure",
    "lift_by_cycle_figure",
    "pii_by_type_figure",
    "slice_heatmap_figure",
    "slice_scores_figure",
    "timeline_figure",
    "training_loss_figure",
    "wins_losses_figure",
    "wrap_label",
]

PHASE_COLOURS: dict[str, str] = {
    "Collect": "#9ecae1",
    "Train": "#6baed6",
    "Evaluate": "#fdae6b",
    "A/B test": "#74c476",
    "Decide": "#9e9ac8",
}

# How far each cycle got (core.monitoring.CycleRecord.status) and gate verdicts, in colour.
STATUS_COLOURS: dict[str, str] = {
    "planned": "#d9d9d9",
    "traffic logged": "#bdbdbd",
    "dataset built": "#9ecae1",
    "evaluated": "#fdae6b",
    "approved": "#74c476",
    "shipped": "#238b45",
    "rejected": "#de2d26",
}
VERDICT_COLOURS: dict[str, str] = {
    "pass": "#31a354",
    "fail": "#de2d26",
    "insufficient_data": "#969696",
}

_DAY_MS = 86_400_000

# Tick labels are 12 px. Margins are sized for DejaVu Sans's average advance (about 0.62 em),
# wider than Open Sans, so a label fits whichever of Plotly's fonts the reader's browser or
# WeasyPrint ends up using; automargin may still widen them, never narrow them.
_TICK_PX = 12
_EM_PER_CHAR = 0.62
_WRAP_AT = 24  # characters per line of a long category label before it wraps


def _texts(values: Iterable[object]) -> list[str]:
    """Labels drawn from users' or models' text, escaped so Plotly shows them as written."""
    return [chart_text(v) for v in values]


def wrap_label(text: str, width: int = _WRAP_AT) -> str:
    """A chart label (already escaped) on lines of at most ``width`` characters, broken
    between words with Plotly's ``<br>``, so a long label is shown whole, not cut."""
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    return "<br>".join(lines) or text


def _label_px(labels: Iterable[str]) -> int:
    """The width in pixels the longest line of ``labels`` needs at the tick font size."""
    longest = max((len(line) for text in labels for line in text.split("<br>")), default=0)
    return int(longest * _TICK_PX * _EM_PER_CHAR) + 1


def _lines(labels: Iterable[str]) -> int:
    return max((text.count("<br>") + 1 for text in labels), default=1)


def _fit_category_labels(
    fig: go.Figure,
    *,
    y_labels: Sequence[str] = (),
    x_labels: Sequence[str] = (),
    y_title: bool = False,
    x_title: bool = False,
    top: int = 40,
) -> None:
    """Margins sized to the category labels (left for y, bottom for x) and axis titles, so
    no label is cut at the figure's edge; automargin stays on to widen them further."""
    left = 10 + (_label_px(y_labels) + 8 if y_labels else 0) + (22 if y_title else 0)
    bottom = 10 + (_TICK_PX + 6) * _lines(x_labels) * bool(x_labels) + (24 if x_title else 0)
    margin = fig.layout.margin
    fig.update_layout(
        margin={
            "l": max(left, margin.l or 0),
            "r": margin.r if margin.r is not None else 10,
            "t": max(top, margin.t or 0),
            "b": max(bottom, margin.b or 0),
        }
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)


def _phases(cycle: CycleMilestones) -> list[tuple[str, date, date]]:
    return [
        ("Collect", cycle.start, cycle.data_freeze),
        ("Train", cycle.data_freeze, cycle.training_done),
        ("Evaluate", cycle.training_done, cycle.eval_done),
        ("A/B test", cycle.ab_start, cycle.ab_end),
        ("Decide", cycle.decision, cycle.end),
    ]


def timeline_figure(
    cycles: list[CycleMilestones],
    *,
    today: date | None = None,
    status: Mapping[int, str] | None = None,
) -> go.Figure:
    """The plan's cycles as a Gantt chart: one row per cycle, one coloured bar per phase.

    With ``status`` (cycle number to how far it got, as in core.monitoring), a marker at each
    cycle's end says what actually happened: planned, dataset built, shipped, rejected, ….
    """
    fig = go.Figure()
    labels = [
        f"Cycle {c.cycle}" + (" · production data" if c.uses_production_data else "")
        for c in cycles
    ]
    for phase, colour in PHASE_COLOURS.items():
        starts: list[str] = []
        lengths: list[int] = []
        rows: list[str] = []
        hover: list[str] = []
        for cycle, label in zip(cycles, labels, strict=True):
            name, start, end = next(p for p in _phases(cycle) if p[0] == phase)
            if end <= start:
                continue
            starts.append(start.isoformat())
            lengths.append((end - start).days * _DAY_MS)
            rows.append(label)
            hover.append(f"{label}<br>{name}: {start:%d %b} → {end:%d %b} ({(end - start).days} d)")
        fig.add_trace(
            go.Bar(
                name=phase,
                orientation="h",
                base=starts,
                x=lengths,
                y=rows,
                marker_color=colour,
                hovertext=hover,
                hoverinfo="text",
            )
        )
    if status is not None:
        shown = [(c, label) for c, label in zip(cycles, labels, strict=True) if c.cycle in status]
        fig.add_trace(
            go.Scatter(
                name="Actual",
                mode="markers+text",
                x=[c.end.isoformat() for c, _ in shown],
                y=[label for _, label in shown],
                text=[status[c.cycle] for c, _ in shown],
                textposition="middle right",
                marker={
                    "symbol": "diamond",
                    "size": 12,
                    "color": [STATUS_COLOURS.get(status[c.cycle], "#636363") for c, _ in shown],
                    "line": {"width": 1, "color": "#252525"},
                },
                hovertemplate="%{y}: %{text}<extra>actual</extra>",
            )
        )
    fig.update_layout(
        barmode="overlay",
        xaxis={"type": "date", "title": None},
        yaxis={"autorange": "reversed", "title": None},
        legend={"orientation": "h", "y": -0.15},
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        height=90 + 40 * max(1, len(cycles)),
        title={"text": "Six-month timeline", "x": 0},
    )
    _fit_category_labels(fig, y_labels=labels, top=30)
    if today is not None:
        fig.add_vline(x=today.isoformat(), line_dash="dot", line_color="#636363")
    return fig


def grid_heatmap_figure(
    axes: list[tuple[str, list[str]]],
    counts: dict[tuple[str, ...], int],
    target: int,
    *,
    title: str = "Valid examples per cell",
) -> go.Figure:
    """The generation grid as a heatmap: one square per cell, coloured by its share of the
    target and labelled "count/target". The last axis runs along x; the others, joined by
    " · ", down y. ``counts`` is keyed by the cell's values in axis order."""
    if not axes:
        return go.Figure(layout={"title": {"text": chart_text(title), "x": 0}})
    *row_axes, (x_name, x_values) = axes
    row_values: list[tuple[str, ...]] = [()]
    for _, values in row_axes:
        row_values = [(*prefix, v) for prefix in row_values for v in values]
    z: list[list[float]] = []
    text: list[list[str]] = []
    for prefix in row_values:
        z_row: list[float] = []
        t_row: list[str] = []
        for x in x_values:
            n = counts.get((*prefix, x), 0)
            z_row.append(min(1.0, n / target) if target else 0.0)
            t_row.append(f"{n}/{target}")
        z.append(z_row)
        text.append(t_row)
    y_labels = [" · ".join(prefix) or x_name for prefix in row_values]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=_texts(x_values),
            y=_texts(y_labels),
            text=text,
            texttemplate="%{text}",
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar={"title": "of target", "tickformat": ".0%"},
            hovertemplate="%{y} · %{x}: %{text}<extra></extra>",
        )
    )
    # The x labels sit below the squares: at the top they collided with the title.
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        xaxis={"title": chart_text(x_name), "side": "bottom"},
        yaxis={"title": chart_text(" · ".join(n for n, _ in row_axes)), "autorange": "reversed"},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=150 + 32 * len(row_values),
    )
    _fit_category_labels(
        fig,
        y_labels=_texts(y_labels),
        x_labels=_texts(x_values),
        y_title=bool(row_axes),
        x_title=True,
    )
    return fig


def pii_by_type_figure(found: Mapping[str, int]) -> go.Figure:
    """PII values redacted, one bar per type, largest first."""
    ordered = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    fig = go.Figure(
        go.Bar(
            x=[chart_text(f"<{t}>") for t, _ in ordered],
            y=[n for _, n in ordered],
            marker_color="#6baed6",
            hovertemplate="%{x}: %{y:,} redacted<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": "PII redacted, by type", "x": 0},
        yaxis={"title": "values redacted"},
        xaxis={"title": None},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=320,
    )
    return fig


def consent_rate_figure(rows: Sequence[Mapping[str, Any]], *, scope: str = "training") -> go.Figure:
    """Share of users whose latest ``scope`` event is a grant, day by day."""
    fig = go.Figure(
        go.Scatter(
            x=[str(r["day"]) for r in rows],
            y=[float(r["rate"]) for r in rows],
            mode="lines",
            line={"color": "#74c476"},
            customdata=[[r["granted"], r["users"]] for r in rows],
            hovertemplate="%{x}: %{y:.1%} (%{customdata[0]:,} of %{customdata[1]:,} users)"
            "<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": chart_text(f"Consent rate over time ({scope})"), "x": 0},
        yaxis={"title": "users granting", "tickformat": ".0%", "range": [0, 1]},
        xaxis={"type": "date", "title": None},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=320,
    )
    return fig


def cycle_rates_figure(actuals: Sequence[CycleActuals]) -> go.Figure:
    """Acceptance, thumbs-up and consent rates per cycle, as lines on a 0–100% axis."""
    cycles = [f"Cycle {a.cycle}" for a in actuals]
    series = {
        metric("accepted_share").column: [a.acceptance_rate for a in actuals],
        metric("rated_up_share").column: [a.thumbs_up_rate for a in actuals],
        metric("consented_users").column: [a.consented_user_rate for a in actuals],
        metric("eligible_share").column: [a.consent_rate for a in actuals],
    }
    fig = go.Figure(
        [
            go.Scatter(
                name=name,
                x=cycles,
                y=values,
                mode="lines+markers",
                hovertemplate="%{x}: %{y:.1%}<extra>" + name + "</extra>",
            )
            for name, values in series.items()
        ]
    )
    fig.update_layout(
        title={"text": "Rates per cycle", "x": 0},
        yaxis={"tickformat": ".0%", "range": [0, 1]},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=320,
    )
    return fig


def cost_per_1k_figure(actuals: Sequence[CycleActuals]) -> go.Figure:
    """Cost of 1,000 requests per cycle, teacher beside student."""
    cycles = [f"Cycle {a.cycle}" for a in actuals]
    fig = go.Figure(
        [
            go.Bar(
                name="Teacher",
                x=cycles,
                y=[a.teacher_cost_per_1k for a in actuals],
                marker_color="#fdae6b",
                hovertemplate="%{x}: $%{y:.2f} per 1k<extra>Teacher</extra>",
            ),
            go.Bar(
                name="Student",
                x=cycles,
                y=[a.student_cost_per_1k for a in actuals],
                marker_color="#6baed6",
                hovertemplate="%{x}: $%{y:.2f} per 1k<extra>Student</extra>",
            ),
        ]
    )
    fig.update_layout(
        title={"text": "Cost per 1,000 requests", "x": 0},
        barmode="group",
        yaxis={"tickprefix": "$"},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=320,
    )
    return fig


def ab_lift_figure(
    points: Sequence[Any], *, metric: str, planned_total: int | None = None
) -> go.Figure:
    """Cumulative relative lift day by day with its confidence-sequence band and fixed CI.

    ``points`` carry ``day``, ``lift``, ``ci`` and ``cs`` (core.abtest.LiftPoint); days
    whose lift is not computable yet are left out. The band is safe to read at every look;
    the dotted fixed-horizon interval only at the planned sample. The y-axis fits every
    estimate and the latest day's intervals: the first days' much wider intervals are cut at
    the edge, each cut marked with a triangle, so that they do not flatten the estimate.
    """
    shown = [p for p in points if p.lift is not None and p.cs is not None and p.ci is not None]
    days = [p.day.isoformat() for p in shown]
    fig = go.Figure()
    low = high = 0.0
    if shown:
        latest = shown[-1]
        values = [p.lift for p in shown] + [*latest.cs, *latest.ci, 0.0]
        low, high = min(values), max(values)
        pad = (high - low) * 0.1 or 0.01
        low, high = low - pad, high + pad

    def clip(value: float) -> float:
        return min(high, max(low, value))

    fig.add_trace(
        go.Scatter(
            x=days + days[::-1],
            y=[clip(p.cs[1]) for p in shown] + [clip(p.cs[0]) for p in shown][::-1],
            fill="toself",
            fillcolor="rgba(116, 196, 118, 0.25)",
            line={"width": 0},
            name="confidence sequence",
            hoverinfo="skip",
        )
    )
    for index, name in ((0, "fixed-horizon CI"), (1, "fixed-horizon CI (upper)")):
        fig.add_trace(
            go.Scatter(
                x=days,
                y=[clip(p.ci[index]) for p in shown],
                mode="lines",
                line={"dash": "dot", "color": "#636363", "width": 1},
                name=name,
                legendgroup="fixed",
                showlegend=index == 0,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=days,
            y=[p.lift for p in shown],
            mode="lines+markers",
            line={"color": "#238b45"},
            name="relative lift",
            customdata=[[p.users_control, p.users_treatment, p.cs[0], p.cs[1]] for p in shown],
            hovertemplate="%{x}: %{y:+.1%} (CS %{customdata[2]:+.1%} to %{customdata[3]:+.1%})"
            "<br>%{customdata[0]:,} control · %{customdata[1]:,} treatment users<extra></extra>",
        )
    )
    cut = [
        (day, edge, bound)
        for day, p in zip(days, shown, strict=True)
        for edge, bound in ((high, max(p.cs[1], p.ci[1])), (low, min(p.cs[0], p.ci[0])))
        if (bound > high if edge == high else bound < low)
    ]
    if cut:
        fig.add_trace(
            go.Scatter(
                x=[day for day, _, _ in cut],
                y=[edge for _, edge, _ in cut],
                mode="markers",
                marker={
                    "symbol": ["triangle-up" if e == high else "triangle-down" for _, e, _ in cut],
                    "size": 9,
                    "color": "#636363",
                },
                name="interval runs off the chart",
                customdata=[bound for _, _, bound in cut],
                hovertemplate="%{x}: the interval reaches %{customdata:+.1%}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line_color="#969696", line_width=1)
    subtitle = f" · N* = {planned_total:,}" if planned_total else ""
    fig.update_layout(
        title={"text": chart_text(f"Lift of {metric} over time{subtitle}"), "x": 0},
        yaxis={
            "title": "relative lift (treatment vs control)",
            "tickformat": "+.0%",
            **({"range": [low, high]} if shown else {}),
        },
        xaxis={"type": "date", "title": None},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=360,
    )
    ticks = [f"{v:+.0%}" for v in (low, high)] if shown else []
    _fit_category_labels(fig, y_labels=[*ticks, "+100%"], y_title=True)
    return fig


def slice_heatmap_figure(
    means: Mapping[str, Mapping[str, float]],
    *,
    short: Sequence[str] = (),
    title: str = "Mean score per slice",
) -> go.Figure:
    """Models down y, slices along x, each square coloured by the model's mean score on the
    slice (0..1) and labelled with it; slices in ``short`` (a gate found them short) get a ⚠."""
    models = list(means)
    slices = sorted({name for row in means.values() for name in row})
    if not models or not slices:
        return go.Figure(layout={"title": {"text": chart_text(title), "x": 0}})
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    for model in models:
        row = means[model]
        z.append([row.get(name) for name in slices])
        text.append([f"{row[name]:.2f}" if name in row else "–" for name in slices])
    labels = [f"⚠ {name}" if name in short else name for name in slices]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=_texts(labels),
            y=_texts(models),
            text=text,
            texttemplate="%{text}",
            zmin=0,
            zmax=1,
            colorscale="RdYlGn",
            colorbar={"title": "score"},
            hovertemplate="%{y} · %{x}: %{text}<extra></extra>",
        )
    )
    # The slice names sit below the squares: at the top they collided with the title.
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        xaxis={"title": None, "side": "bottom"},
        yaxis={"title": None, "autorange": "reversed"},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=150 + 45 * len(models),
    )
    _fit_category_labels(fig, y_labels=_texts(models), x_labels=_texts(labels))
    return fig


def wins_losses_figure(rows: Sequence[Mapping[str, Any]], *, baseline: str) -> go.Figure:
    """Per slice, the candidate's wins, ties and losses against ``baseline`` as stacked bars."""
    names = _texts(str(r["slice"]) for r in rows)
    fig = go.Figure()
    for key, label, colour in (
        ("wins", "candidate better", "#74c476"),
        ("ties", "tie", "#bdbdbd"),
        ("losses", chart_text(f"{baseline} better"), "#fb6a4a"),
    ):
        fig.add_trace(
            go.Bar(
                name=label,
                orientation="h",
                y=names,
                x=[int(r[key]) for r in rows],
                marker_color=colour,
                hovertemplate="%{y}: %{x} items<extra>" + label + "</extra>",
            )
        )
    fig.update_layout(
        barmode="stack",
        title={"text": chart_text(f"Paired comparison with {baseline}, per slice"), "x": 0},
        xaxis={"title": "items"},
        yaxis={"autorange": "reversed", "title": None},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=120 + 28 * max(1, len(rows)),
    )
    _fit_category_labels(fig, y_labels=names)
    return fig


SLICE_STATUS_COLOURS: dict[str, str] = {
    "pass": "#74c476",
    "below": "#fdae6b",
    "fail": "#fb6a4a",
    "insufficient_data": "#bdbdbd",
}


def slice_scores_figure(
    rows: Sequence[Mapping[str, Any]], *, title: str = "Eval score by slice against its threshold"
) -> go.Figure:
    """The candidate's score per slice as horizontal bars coloured by status, the threshold
    the slice must reach as a tick and the reference (production or teacher) as a diamond.

    Each row carries ``gate``, ``slice``, ``n`` (items), ``candidate``, ``threshold`` (or
    None), ``reference`` (or None) and ``status`` (pass, below, fail or insufficient_data),
    in the order to draw them, top to bottom. Bars sit at positions 0, 1, … labelled with the
    slice; a row on all of a gate's items is labelled with the gate when rows come from more
    than one gate, so equal slice names of different gates never merge.
    """
    if not rows:
        return go.Figure(layout={"title": {"text": chart_text(title), "x": 0}})
    several = len({str(r["gate"]) for r in rows}) > 1
    labels = _texts(
        f"{r['gate']}: {r['slice']}" if several and r["slice"] == "all items" else str(r["slice"])
        for r in rows
    )
    positions = list(range(len(rows)))
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            name="candidate",
            orientation="h",
            y=positions,
            x=[float(r["candidate"]) for r in rows],
            marker_color=[SLICE_STATUS_COLOURS.get(str(r["status"]), "#6baed6") for r in rows],
            text=[f"{float(r['candidate']):.2f}" for r in rows],
            textposition="inside",
            insidetextanchor="start",
            customdata=[
                [chart_text(r["gate"]), label, int(r["n"]), str(r["status"]).replace("_", " ")]
                for r, label in zip(rows, labels, strict=True)
            ],
            hovertemplate="%{customdata[0]} · %{customdata[1]}: %{x:.3f} on %{customdata[2]}"
            " items (%{customdata[3]})<extra>candidate</extra>",
        )
    )
    for key, name, symbol, colour in (
        ("threshold", "threshold", "line-ns", "#1f2933"),
        ("reference", "reference", "diamond", "#2457a6"),
    ):
        marked = [
            (p, float(r[key])) for p, r in zip(positions, rows, strict=True) if r[key] is not None
        ]
        if not marked:
            continue
        fig.add_trace(
            go.Scatter(
                name=name,
                mode="markers",
                y=[p for p, _ in marked],
                x=[value for _, value in marked],
                marker={
                    "symbol": symbol,
                    "size": 18 if symbol == "line-ns" else 9,
                    "color": colour,
                    "line": {"width": 3 if symbol == "line-ns" else 1, "color": colour},
                },
                hovertemplate="%{x:.3f}<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        xaxis={"title": "score", "range": [0, 1.02]},
        yaxis={
            "autorange": "reversed",
            "title": None,
            "automargin": True,
            "tickmode": "array",
            "tickvals": positions,
            "ticktext": labels,
        },
        legend={"orientation": "h", "y": -0.15},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        showlegend=True,
        height=150 + 28 * len(rows),
    )
    _fit_category_labels(fig, y_labels=labels)
    return fig


def funnel_figure(stages: Sequence[Mapping[str, Any]], *, title: str = "Cycle funnel") -> go.Figure:
    """Rows left after each stage of a cycle, as a funnel; hover shows rows removed and added.

    Each stage is a mapping with ``name``, ``rows_out``, ``removed`` and ``added``.
    """
    names = [wrap_label(chart_text(human_label(s["name"]))) for s in stages]
    fig = go.Figure(
        go.Funnel(
            y=names,
            x=[int(s["rows_out"]) for s in stages],
            textinfo="value",
            # Two inputs: the rows carried from the parent version (orange) and the window's,
            # which the stages narrow down; the mix adds synthetic rows (purple).
            marker={
                "color": [
                    "#fd8d3c"
                    if s["name"] == "carried"
                    else ("#9e9ac8" if s.get("added") else "#6baed6")
                    for s in stages
                ]
            },
            customdata=[[int(s.get("removed", 0)), int(s.get("added", 0))] for s in stages],
            hovertemplate="%{y}: %{x:,} rows left<br>removed %{customdata[0]:,}"
            " · added %{customdata[1]:,}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=120 + 34 * max(1, len(stages)) + 14 * sum("<br>" in n for n in names),
    )
    _fit_category_labels(fig, y_labels=names)
    return fig


def composition_heatmap_figure(
    cells: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    *,
    source: str = "total",
    title: str = "Dataset composition per cell",
) -> go.Figure:
    """Rows per cell of a dataset version (production, synthetic or their total).

    ``cells`` carry ``cell`` (axis name to value), ``production`` and ``synthetic``. The last
    axis runs along x, the others joined by " · " down y; a value missing from the grid (an
    unlabelled interaction) gets its own row or column.
    """
    if not axes or not cells:
        return go.Figure(layout={"title": {"text": chart_text(title), "x": 0}})
    *row_axes, x_axis = axes

    def amount(cell: Mapping[str, Any]) -> int:
        if source == "total":
            return int(cell["production"]) + int(cell["synthetic"])
        return int(cell[source])

    counts: dict[tuple[str, str], int] = {}
    for cell in cells:
        values = cell["cell"]
        y = " · ".join(str(values.get(a, "(unlabelled)")) for a in row_axes) or x_axis
        x = str(values.get(x_axis, "(unlabelled)"))
        counts[(y, x)] = counts.get((y, x), 0) + amount(cell)
    ys = sorted({y for y, _ in counts})
    xs = sorted({x for _, x in counts})
    z = [[counts.get((y, x), 0) for x in xs] for y in ys]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=_texts(xs),
            y=_texts(ys),
            text=[[str(v) for v in row] for row in z],
            texttemplate="%{text}",
            colorscale="Purples",
            colorbar={"title": "rows"},
            hovertemplate="%{y} · %{x}: %{z:,} rows<extra></extra>",
        )
    )
    # The x labels sit below the squares: at the top they collided with the title.
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        xaxis={"title": chart_text(x_axis), "side": "bottom"},
        yaxis={"title": chart_text(" · ".join(row_axes)), "autorange": "reversed"},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=170 + 30 * len(ys),
    )
    _fit_category_labels(
        fig, y_labels=_texts(ys), x_labels=_texts(xs), y_title=bool(row_axes), x_title=True
    )
    return fig


def gate_thresholds_figure(
    gates: Sequence[GateFigure], *, title: str = "Gates: the interval against the threshold"
) -> go.Figure:
    """One row per gate, each on its own scale: the interval the verdict read as a line
    coloured by the verdict, the estimate as a dot on it, and the threshold (a no-regression
    gate's margin below production) as a dashed black tick. A gate passes when its whole
    interval lies on the good side of the tick, fails when it lies wholly on the other.

    No-regression differences are drawn in points (0.02 of a 0..1 score = 2 points); shares of
    the teacher, cost and latency ratios as written. An interval that runs off without end
    (Fieller's bound) is cut at the row's edge with an arrow; a gate with no value says so.
    """
    from plotly.subplots import make_subplots

    rows = max(1, len(gates))
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=False, vertical_spacing=0.5 / rows)
    for row, gate in enumerate(gates, start=1):
        scale = 100.0 if gate.comparator == "no_regression" else 1.0
        colour = VERDICT_COLOURS.get(gate.verdict, "#969696")
        name = chart_text(gate.name + ("" if gate.blocking else " (non-blocking)"))
        low, high = gate.interval if gate.interval is not None else (None, None)
        points = [
            v * scale
            for v in (gate.value, gate.threshold, low, high)
            if v is not None and abs(v) != float("inf")
        ]
        span = (max(points) - min(points)) if points else 1.0
        pad = span * 0.15 or max(abs(points[0]) * 0.1, 0.01) if points else 1.0
        left = min(points) - pad if points else -1.0
        right = max(points) + pad if points else 1.0
        hover = chart_text(gate.explanation or gate.verdict.replace("_", " "))
        if low is not None and high is not None:
            shown_low = max(low * scale, left)
            shown_high = min(high * scale, right)
            fig.add_trace(
                go.Scatter(
                    x=[shown_low, shown_high],
                    y=[name, name],
                    mode="lines+markers",
                    line={"color": colour, "width": 6},
                    marker={
                        "symbol": [
                            "triangle-left" if low * scale < left else "line-ns",
                            "triangle-right" if high * scale > right else "line-ns",
                        ],
                        "size": 14,
                        "color": colour,
                        "line": {"width": 3, "color": colour},
                    },
                    name="interval",
                    legendgroup="interval",
                    showlegend=row == 1,
                    hovertemplate=f"{name}: %{{x:.3g}}<br>{hover}<extra>interval</extra>",
                ),
                row=row,
                col=1,
            )
        if gate.value is not None:
            fig.add_trace(
                go.Scatter(
                    x=[gate.value * scale],
                    y=[name],
                    mode="markers",
                    marker={"size": 11, "color": "white", "line": {"width": 2, "color": colour}},
                    name="estimate",
                    legendgroup="estimate",
                    showlegend=row == 1,
                    hovertemplate=f"{name}: %{{x:.4g}} "
                    f"({gate.verdict.replace('_', ' ')})<br>{hover}<extra>estimate</extra>",
                ),
                row=row,
                col=1,
            )
        else:
            fig.add_annotation(
                text="no value: " + gate.verdict.replace("_", " "),
                x=0.01,
                xanchor="left",
                xref="x domain" if row == 1 else f"x{row} domain",
                y=name,
                yref="y" if row == 1 else f"y{row}",
                showarrow=False,
                font={"color": "#636363"},
            )
        if gate.threshold is not None:
            label = "margin" if gate.comparator == "no_regression" else "threshold"
            fig.add_trace(
                go.Scatter(
                    x=[gate.threshold * scale],
                    y=[name],
                    mode="markers",
                    marker={
                        "symbol": "line-ns",
                        "size": 30,
                        "line": {"width": 3, "color": "#1f2933"},
                    },
                    name="threshold (margin)",
                    legendgroup="threshold",
                    showlegend=row == 1,
                    hovertemplate=f"{label} %{{x:.4g}}<extra>{name}</extra>",
                ),
                row=row,
                col=1,
            )
        axis_title = {
            "no_regression": "difference from production (points)",
            "non_inferiority": "share of the teacher's score",
            "cost": "cost per request vs the teacher",
            "latency": "p95 latency vs the reference",
        }.get(gate.comparator, chart_text(gate.metric))
        fig.update_xaxes(
            range=[left, right],
            title={"text": axis_title, "standoff": 2, "font": {"size": 11}},
            tickformat=".0%" if gate.comparator in ("non_inferiority", "cost") else None,
            zeroline=gate.comparator == "no_regression",
            row=row,
            col=1,
        )
        fig.update_yaxes(automargin=True, row=row, col=1)
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        height=90 + 95 * rows,
    )
    _fit_category_labels(
        fig,
        y_labels=[chart_text(g.name + ("" if g.blocking else " (non-blocking)")) for g in gates],
        top=60,
    )
    return fig


def lift_by_cycle_figure(records: Sequence[CycleRecord]) -> go.Figure:
    """Each cycle's A/B lift of the primary metric with the interval its decision reads, as a
    point with error bars, coloured by the decision; cycles without a test are left out."""
    tested = [(r.cycle, r.ab) for r in records if r.ab is not None and r.ab.lift is not None]
    lifts = [float(ab.lift or 0.0) for _, ab in tested]
    intervals = [ab.ci or (lift, lift) for (_, ab), lift in zip(tested, lifts, strict=True)]
    colours = {"ship": "#238b45", "roll_back": "#de2d26", "invalid_srm": "#de2d26"}
    metric = tested[0][1].metric if tested else "the primary metric"
    fig = go.Figure(
        go.Scatter(
            name="relative lift",
            mode="markers",
            x=[f"Cycle {cycle}" for cycle, _ in tested],
            y=lifts,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [high - lift for (_, high), lift in zip(intervals, lifts, strict=True)],
                "arrayminus": [lift - low for (low, _), lift in zip(intervals, lifts, strict=True)],
            },
            marker={"size": 11, "color": [colours.get(ab.verdict, "#636363") for _, ab in tested]},
            customdata=[
                [ab.verdict.replace("_", " "), chart_text(ab.method), low, high]
                for (_, ab), (low, high) in zip(tested, intervals, strict=True)
            ],
            hovertemplate="%{x}: %{y:+.1%} (%{customdata[2]:+.1%} to %{customdata[3]:+.1%})"
            "<br>%{customdata[0]} · %{customdata[1]}<extra></extra>",
        )
    )
    fig.add_hline(y=0, line_color="#969696", line_width=1)
    fig.update_layout(
        title={"text": chart_text(f"A/B lift of {metric} per cycle, with its interval"), "x": 0},
        yaxis={"title": "relative lift", "tickformat": "+.0%"},
        xaxis={"title": None},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=320,
    )
    return fig


def dataset_sizes_figure(records: Sequence[CycleRecord]) -> go.Figure:
    """How each cycle's dataset grew: its rows stacked by where they came from, synthetic
    first, then production rows by the cycle that added them (a cycle carries its parent's
    rows forward, so each bar holds the earlier cycles' rows that are still used)."""
    built = [r for r in records if r.dataset is not None]
    cycles = [f"Cycle {r.cycle}" for r in built]
    sources: dict[tuple[str, int], dict[str, int]] = {}
    for record in built:
        dataset = record.dataset
        if dataset is None:
            continue
        origins = dataset.by_origin or (
            ("synthetic", record.cycle, dataset.synthetic),
            ("production", record.cycle, dataset.production),
        )
        for source, origin, rows in origins:
            if not rows:
                continue
            key = ("synthetic", 0) if source == "synthetic" else ("production", origin)
            per = sources.setdefault(key, {})
            per[f"Cycle {record.cycle}"] = per.get(f"Cycle {record.cycle}", 0) + rows
    blues = ["#08519c", "#3182bd", "#6baed6", "#9ecae1", "#c6dbef"]
    traces = []
    for index, key in enumerate(sorted(sources)):
        source, origin = key
        name = "Synthetic" if source == "synthetic" else f"Production · added by cycle {origin}"
        traces.append(
            go.Bar(
                name=name,
                x=cycles,
                y=[sources[key].get(c, 0) for c in cycles],
                marker_color="#9e9ac8" if source == "synthetic" else blues[index % len(blues)],
                hovertemplate="%{x}: %{y:,} rows · " + name.lower() + "<extra></extra>",
            )
        )
    fig = go.Figure(traces)
    fig.update_layout(
        barmode="stack",
        title={"text": "Dataset growth per cycle, by where the rows came from", "x": 0},
        yaxis={"title": "rows"},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=340,
    )
    tallest = max((sum(per.get(c, 0) for per in sources.values()) for c in cycles), default=0)
    _fit_category_labels(fig, y_labels=[f"{tallest:,}0"], y_title=True)  # one digit to spare
    return fig


def training_loss_figure(metrics: Sequence[Mapping[str, Any]], *, title: str) -> go.Figure:
    """A training job's loss per optimizer step, with the eval loss where it was measured."""
    fig = go.Figure()
    for key, name, colour in (
        ("loss", "training loss", "#3182bd"),
        ("eval_loss", "eval loss", "#e6550d"),
    ):
        points = [(int(m["step"]), float(m[key])) for m in metrics if m.get(key) is not None]
        if points:
            fig.add_trace(
                go.Scatter(
                    name=name,
                    x=[step for step, _ in points],
                    y=[value for _, value in points],
                    mode="lines+markers" if len(points) < 40 else "lines",
                    line={"color": colour},
                    hovertemplate="step %{x}: %{y:.4f}<extra>" + name + "</extra>",
                )
            )
    fig.update_layout(
        title={"text": chart_text(title), "x": 0},
        xaxis={"title": "step"},
        yaxis={"title": "loss"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=300,
    )
    return fig
