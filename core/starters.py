"""Starter plans a PM can begin from; each is free of lint errors (a test holds them to it).

A starter's privacy review is ``not_started`` with no decision date: nobody has reviewed a plan
that was just created, so its documents say so, lint warns until the reviewer approves, and a
cycle refuses to run on it until then.
"""

from __future__ import annotations

from importlib import resources

from core.plan import Plan
from core.plan_files import parse_plan

__all__ = ["STARTERS", "starter_plan"]

STARTERS: dict[str, str] = {
    "python_coding_assistant": "Python coding assistant (7 topics × 3 difficulties × 10)",
    "customer_support_assistant": "Customer-support reply assistant (6 intents × 2 tones × 2)",
}


def starter_plan(key: str) -> Plan:
    """A fresh copy of the starter plan named ``key`` (one of ``STARTERS``)."""
    if key not in STARTERS:
        raise KeyError(f"no starter plan {key!r}; choose one of {', '.join(STARTERS)}")
    text = resources.files("core.starter_plans").joinpath(f"{key}.yaml").read_text("utf-8")
    return parse_plan(text, "yaml", source=f"{key}.yaml")
