"""The rates a person reads on the pages, in the documents and in the README's glossary: each
defined once, with the base it is a share of.

Two figures that share a word ("consent", "thumbs up") but not a base are two metrics with two
names here, so a page never shows 6.8% and another 91% under one label: "Consented for training:
5.3% of users active this cycle" and "Granting training consent: 91% of users with a training
consent event" say what each counts. The A/B metrics (per interaction, averaged over randomised
users) are computed by ``core.abtest``; their rows here name the same definitions.

    METRICS         name → Metric (label, base, what is counted, formula)
    metric(name)    the Metric, KeyError for a name not defined here
    Metric.of(v)    "5.3% of users active this cycle"
"""

from __future__ import annotations

from dataclasses import dataclass

from core.formatting import MISSING, percent

__all__ = ["METRICS", "Metric", "metric"]


@dataclass(frozen=True)
class Metric:
    """One rate: what it counts over which base, and where it is computed."""

    name: str
    label: str
    counts: str
    base: str
    short_base: str
    formula: str
    computed_in: str

    def percent(self, value: float | None, digits: int = 1) -> str:
        """The value as a percentage ("5.3%"), "—" when there is none (an empty base)."""
        return percent(value, digits)

    def of(self, value: float | None, digits: int = 1) -> str:
        """The value with its base: "5.3% of users active this cycle"; "—" when there is none."""
        return MISSING if value is None else f"{self.percent(value, digits)} of {self.base}"

    def sentence(self, value: float | None, digits: int = 1) -> str:
        """The label, the value and its base: "Consented for training: 5.3% of users active
        this cycle"."""
        return f"{self.label}: {self.of(value, digits)}"

    @property
    def column(self) -> str:
        """The label with its base in brief, for a column or a tile: "Rated up (of rated)"."""
        return f"{self.label} ({self.short_base})"

    @property
    def definition(self) -> str:
        """One plain sentence: "Users whose … , of users active this cycle."."""
        return f"{self.counts[0].upper()}{self.counts[1:]}, of {self.base}."


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            name="accepted_share",
            label="Accepted",
            counts="interactions whose answer the user accepted (copied or applied)",
            base="the cycle's interactions",
            short_base="of interactions",
            formula="interactions with accepted = true ÷ interactions tagged with the cycle",
            computed_in="core.monitoring.CycleActuals.acceptance_rate (Overview)",
        ),
        Metric(
            name="rated_up_share",
            label="Rated up",
            counts="interactions rated thumbs-up",
            base="the cycle's rated interactions",
            short_base="of rated",
            formula="interactions with feedback = up ÷ interactions with feedback up or down",
            computed_in="core.monitoring.CycleActuals.thumbs_up_rate (Overview)",
        ),
        Metric(
            name="eligible_share",
            label="Eligible for training",
            counts="interactions whose user's training consent was in force when they "
            "happened, with no withdrawal since",
            base="the cycle's interactions",
            short_base="of interactions",
            formula="interactions at or after the user's first training grant since their last "
            "withdrawal ÷ interactions tagged with the cycle",
            computed_in="core.monitoring.CycleActuals.consent_rate (Overview, Consent page)",
        ),
        Metric(
            name="consented_users",
            label="Consented for training",
            counts="users whose training consent is in force (a grant, no withdrawal since)",
            base="users active this cycle",
            short_base="of active users",
            formula="users with an interaction tagged with the cycle and training consent in "
            "force ÷ users with an interaction tagged with the cycle",
            computed_in="core.monitoring.CycleActuals.consented_user_rate (Overview, Consent page)",
        ),
        Metric(
            name="consent_grant_rate",
            label="Granting training consent",
            counts="users whose latest training consent event by that day is a grant",
            base="users with a training consent event by that day",
            short_base="of users with an event",
            formula="users whose latest training event is a grant ÷ users with any training "
            "event, day by day",
            computed_in="core.consent.consent_rate_over_time (Consent page chart)",
        ),
        Metric(
            name="acceptance_rate",
            label="Acceptance rate",
            counts="accepted answers",
            base="interactions with an acceptance signal, pooled over the arm's users",
            short_base="per interaction with a signal",
            formula="Σ accepted ÷ Σ interactions with accepted set, over the arm's randomised "
            "users (a ratio metric: delta-method variance)",
            computed_in="core.abtest.METRICS (A/B test page, ab report)",
        ),
        Metric(
            name="thumbs_up_rate",
            label="Thumbs-up rate",
            counts="thumbs-up ratings",
            base="all interactions, rated or not, pooled over the arm's users",
            short_base="per interaction",
            formula="Σ thumbs-up ÷ Σ interactions, over the arm's randomised users",
            computed_in="core.abtest.METRICS (A/B test page, ab report)",
        ),
        Metric(
            name="thumbs_down_rate",
            label="Thumbs-down rate",
            counts="thumbs-down ratings",
            base="all interactions, rated or not, pooled over the arm's users",
            short_base="per interaction",
            formula="Σ thumbs-down ÷ Σ interactions, over the arm's randomised users",
            computed_in="core.abtest.METRICS (A/B test page, ab report)",
        ),
    ]
}


def metric(name: str) -> Metric:
    """The metric called ``name``. Raises KeyError for a name not defined here."""
    return METRICS[name]
