"""Numbers read the same wherever a person sees them: tables, tiles, documents, verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from core.documents import environment
from core.formatting import MISSING, lift, money, number, percent, rounded, significant
from core.labels import show
from core.metrics import metric


@pytest.mark.parametrize(
    ("value", "text"),
    [(1234567, "1,234,567"), (12345.0, "12,345"), (12345.6, "12,346"), (0.123456, "0.1235")],
)
def test_a_number_reads_with_thousands_grouped_and_four_significant_digits(
    value: float, text: str
) -> None:
    assert number(value) == text
    assert show(value) == text  # a table cell reads the same


def test_shares_lifts_and_amounts() -> None:
    assert percent(0.053) == "5%"
    assert percent(0.053, 1) == "5.3%"
    assert lift(0.0512) == "+5.1%" and lift(-0.0512) == "-5.1%"
    assert money(1234.5) == "$1,234.50" and money(0.01234, 3) == "$0.012"
    assert rounded(1234.6) == "1,235"
    assert significant(0.000012345) == "1.234e-05" and significant(math.inf) == "∞"


@pytest.mark.parametrize("formatter", [percent, lift, money, number, rounded])
def test_a_missing_value_reads_as_a_dash(formatter: Callable[..., str]) -> None:
    assert formatter(None) == MISSING == "—"


def test_a_share_that_cannot_be_computed_is_not_printed_as_nan_or_inf() -> None:
    assert percent(math.nan) == MISSING and lift(math.inf) == MISSING


def test_a_missing_statistic_reads_as_n_a_inside_a_sentence() -> None:
    assert significant(None) == "n/a"


def test_documents_and_metrics_use_the_same_formatters() -> None:
    filters = environment().filters
    assert (
        filters["percent"](0.053, 1) == percent(0.053, 1) == metric("eligible_share").percent(0.053)
    )
    assert filters["money"](1234.5) == money(1234.5)
    assert filters["number"](12345.6) == number(12345.6)
