"""Pure statistics (no I/O). See shared/STATS.md for the methods and reference vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from scipy import stats as _sp

__all__ = ["ab_duration_days", "sample_size_per_arm"]


def sample_size_per_arm(
    baseline: float,
    mde: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    method: Literal["unpooled", "cohen_h"] = "unpooled",
) -> int:
    """Units per arm to detect ``mde`` on a proportion ``baseline`` (two-sided test)."""
    p1 = baseline
    p2 = baseline * (1 + mde) if relative else baseline + mde
    if not (0 < p1 < 1 and 0 < p2 < 1) or p1 == p2:
        raise ValueError("baseline and baseline + MDE must be distinct proportions in (0, 1)")
    z = float(_sp.norm.ppf(1 - alpha / 2) + _sp.norm.ppf(power))
    if method == "cohen_h":
        h = 2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1))
        return math.ceil(2 * (z / h) ** 2)
    return math.ceil(z**2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p2 - p1) ** 2)


def ab_duration_days(n_per_arm: int, daily_units: float, traffic_shares: Sequence[float]) -> int:
    """Days until the smallest arm has ``n_per_arm`` units at ``daily_units`` a day."""
    smallest = min(traffic_shares) * daily_units
    if smallest <= 0:
        raise ValueError("every arm needs a positive share of positive traffic")
    return math.ceil(n_per_arm / smallest)
