"""The Data and Consent charts: traces and values."""

from __future__ import annotations

from datetime import date

from core.charts import consent_rate_figure, pii_by_type_figure


def test_pii_by_type_bars_largest_first() -> None:
    fig = pii_by_type_figure({"EMAIL": 3, "CARD": 7, "IP": 3})
    bar = fig.data[0]
    assert list(bar.x) == ["<CARD>", "<EMAIL>", "<IP>"]
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
