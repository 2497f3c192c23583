"""The numbers the A/B commands print: estimates, intervals and p-values (no core.labels, so
that ``stats sample-size`` loads nothing it does not print)."""

from __future__ import annotations


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def interval(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"({ci[0]:+.2%}, {ci[1]:+.2%})"


def pair(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if ci is None else (float(ci[0]), float(ci[1]))


def p_text(value: float | None) -> str:
    """The p-value as "p = 0.021" or "p < 0.0001", through the formatter the pages use."""
    from core.stats import format_p_value

    shown = format_p_value(value)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"
