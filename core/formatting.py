"""How numbers read wherever a person sees them: the pages, the documents, gate verdicts and
statistics summaries. One home, so that a share, an amount or a count reads the same everywhere.

Each formatter takes ``None`` for a value that does not exist (an empty base, a test not run)
and prints ``missing`` for it: by default "—", as tables and tiles show it, and "n/a" for
``significant``, whose statistics mostly read inside a sentence.
"""

from __future__ import annotations

import math

__all__ = [
    "MISSING",
    "NOT_AVAILABLE",
    "lift",
    "money",
    "number",
    "percent",
    "rounded",
    "significant",
]

MISSING = "—"
"""How a missing value reads: never "None", "nan" or an empty cell a reviewer must guess at."""

NOT_AVAILABLE = "n/a"
"""How a missing statistic reads inside a sentence (a gate's or a test's explanation)."""


def percent(
    value: float | None, digits: int = 0, *, signed: bool = False, missing: str = MISSING
) -> str:
    """A share as a percentage: 0.053 → "5%" (``digits=1``: "5.3%"; ``signed``: "+5.3%")."""
    if value is None or not math.isfinite(value):
        return missing
    return f"{value:+.{digits}%}" if signed else f"{value:.{digits}%}"


def lift(value: float | None, *, missing: str = MISSING) -> str:
    """A relative change with its sign, to a tenth of a percent: 0.0512 → "+5.1%"."""
    return percent(value, 1, signed=True, missing=missing)


def money(value: float | None, digits: int = 2, *, missing: str = MISSING) -> str:
    """An amount in US dollars with thousands grouped: 1234.5 → "$1,234.50"."""
    return missing if value is None else f"${value:,.{digits}f}"


def rounded(value: float | None, *, missing: str = MISSING) -> str:
    """A measure rounded to a whole number, thousands grouped: 1234.6 → "1,235"."""
    return missing if value is None else f"{value:,.0f}"


def number(value: float | None, *, missing: str = MISSING) -> str:
    """A number as a person reads it: a whole number in full with thousands grouped
    ("1,234,567"), a large one rounded to a whole ("12,346"), else 4 significant digits
    ("0.1235", "1,234")."""
    if value is None:
        return missing
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if abs(value) >= 1e4:
        return rounded(value)
    return f"{value:,.4g}"


def significant(value: float | None, digits: int = 4, *, missing: str = NOT_AVAILABLE) -> str:
    """A statistic to ``digits`` significant digits ("0.8125", "1.2e-05"); an unbounded one as
    "∞" or "-∞"."""
    if value is None:
        return missing
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"
