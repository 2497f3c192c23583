"""One definition per rate, named with its base: the figures count what core.metrics says, the
Overview and the Consent page show the same figure for the same metric, the README defines each."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from conftest import ROOT
from cycle_helpers import cycle_plan, interaction, write_jsonl
from streamlit.testing.v1 import AppTest

from core.access import local_operator
from core.ingest import ingest_file
from core.metrics import METRICS, metric
from core.monitoring import cycle_actuals
from core.plan_versions import save_plan_version
from core.store import Store

CONSENTED = metric("consented_users")
ELIGIBLE = metric("eligible_share")


def test_a_rate_is_shown_with_its_base() -> None:
    assert CONSENTED.of(0.0678) == "6.8% of users active this cycle"
    assert CONSENTED.sentence(0.0678) == "Consented for training: 6.8% of users active this cycle"
    assert CONSENTED.of(None) == "—" and CONSENTED.percent(None) == "—"
    assert metric("rated_up_share").column == "Rated up (of rated)"
    # Two figures that share a word but not a base have two names.
    labels = [m.label for m in METRICS.values()]
    assert len(labels) == len(set(labels))


def test_consent_figures_count_users_and_interactions_on_their_own_bases(
    store: Store, tmp_path: Path
) -> None:
    plan = cycle_plan()
    save_plan_version(store, plan, note="t", user=local_operator())
    start = datetime(2027, 1, 10, 9, tzinfo=UTC)

    def event(user: str, when: datetime, action: str = "grant") -> dict[str, str]:
        return {
            "user_id": user,
            "ts": when.isoformat(),
            "scope": "training",
            "action": action,
            "policy_version": "1",
            "source": "test",
        }

    consent = [
        event("u-0", datetime(2026, 12, 1, tzinfo=UTC)),  # in force before every interaction
        event("u-1", start + timedelta(minutes=11)),  # granted between two of their interactions
        event("u-2", datetime(2026, 12, 1, tzinfo=UTC)),
        event("u-2", datetime(2027, 1, 20, tzinfo=UTC), "withdraw"),  # no longer in force
        # u-3: no event, no consent
    ]
    ingest_file(
        store, write_jsonl(tmp_path / "c.jsonl", consent), kind="consent", user=local_operator()
    )
    rows = [
        interaction(
            10 * u + k, user_id=f"u-{u}", ts=(start + timedelta(minutes=10 * u + k)).isoformat()
        )
        for u in range(4)
        for k in range(3)
    ]
    ingest_file(store, write_jsonl(tmp_path / "i.jsonl", rows), user=local_operator(), cycle=2)
    (actual,) = cycle_actuals(store, plan)
    assert (actual.users, actual.consented_users) == (4, 2)  # u-0 and u-1
    assert actual.consented_user_rate == 0.5
    # u-0's three interactions and u-1's two at or after their grant, of twelve.
    assert (actual.interactions, actual.eligible) == (12, 5)
    assert ELIGIBLE.of(actual.consent_rate) == "41.7% of the cycle's interactions"


def _metric_values(at: AppTest) -> dict[str, str]:
    return {m.label: str(m.value) for m in at.metric}


def test_overview_and_consent_page_show_the_same_consent_figure(demo_store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    tiles = _metric_values(at)
    # The one-cycle tiles are the latest cycle with traffic's, named in the caption above them.
    heading = next(
        c.value
        for c in at.caption
        if c.value.endswith("the latest with traffic, against the plan:")
    )
    cycle = int(re.match(r"Cycle (\d+),", heading).group(1))  # type: ignore[union-attr]
    overview_figure = tiles[CONSENTED.column]
    assert re.fullmatch(r"\d+\.\d%", overview_figure)

    at.switch_page("pages/consent.py")
    at.run()
    assert not at.exception, at.exception
    frames = [pd.DataFrame(getattr(d.value, "data", d.value)) for d in at.dataframe]
    per_cycle = next(f for f in frames if CONSENTED.column in f.columns)
    row = per_cycle[per_cycle["cycle"] == cycle].iloc[0]
    assert row[CONSENTED.column] == overview_figure
    assert ELIGIBLE.column in per_cycle.columns
    # The chart's rate has its own name and base, never "consented for training".
    granting = metric("consent_grant_rate")
    assert any(f"of {granting.base}" in c.value for c in at.caption)


def test_the_readme_glossary_defines_every_metric_with_its_base() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    glossary = readme.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    for m in METRICS.values():
        line = next((ln for ln in glossary.splitlines() if f"**{m.label}**" in ln), None)
        assert line is not None, f"the glossary has no entry for {m.label}"
        assert m.base in line and m.counts in line, line
