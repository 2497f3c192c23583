"""The moment an action is recorded at: now, unless a caller has set the clock.

Every action the store records (a plan version, a sign-off, an ingest, a cycle run, a dataset
version, an eval run, a gate decision, an audit entry) takes its time from ``now()``. The demo
seeds a history set in its own months: while it records each step it sets the clock to the moment
of the demo's timeline that step stands for (``clock_at``), so the audit log, the model card and
the documents tell one story instead of mixing the demo's dates with the day it was loaded.

The setting is a context variable: it holds for the code that set it (its thread and the calls
it makes), never for another session's thread. Within it time still runs, from the moment set,
so that durations and the order of steps stay real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

__all__ = ["clock_at", "now"]

# (the moment set, the monotonic reading when it was set)
_SET: ContextVar[tuple[datetime, float] | None] = ContextVar("flywheel_clock", default=None)


def now() -> datetime:
    """The current moment in UTC: the real one, or the one set by ``clock_at`` plus the time
    that has passed since it was set."""
    fixed = _SET.get()
    if fixed is None:
        return datetime.now(UTC)
    moment, since = fixed
    return moment + timedelta(seconds=time.monotonic() - since)


@contextmanager
def clock_at(moment: datetime) -> Iterator[None]:
    """Record what runs inside the block as if it began at ``moment`` (timezone-aware).

    Raises ValueError for a naive ``moment``: the store keeps UTC instants.
    """
    if moment.tzinfo is None:
        raise ValueError("clock_at needs a timezone-aware moment")
    token = _SET.set((moment.astimezone(UTC), time.monotonic()))
    try:
        yield
    finally:
        _SET.reset(token)
