"""What each stage of a cycle is, for every engine: its rules, its keep and re-check rules, its
reasons and warnings.

``cycle run`` (core.cycles, DuckDB SQL on the store) and the portable stages (core.portable,
Ibis on DuckDB or Spark) both read their stage list, keep rule, re-check rule and wording from
here, so that a change to what a stage means is made once and holds on every engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import ibis
import ibis.expr.types as ir

from core.consent import eligible_interactions
from core.plan import Decontamination, ExactDedup, NearDedup, PiiRedacted, Plan

__all__ = [
    "RULE_CHANGED",
    "carried_prefix",
    "consent_stage",
    "describe_rule",
    "keep_rule",
    "language_verdict",
    "pii_recheck_warning",
    "pipeline_rules",
    "retention_reason",
    "rule_key",
    "rules_to_recheck",
]

Keep = Literal["earliest", "best_rated"]

_DROP = "fw_drop"
_CANONICAL = ("exact_dedup", "near_dedup", "decontamination")
_DEFAULTS = {"exact_dedup": ExactDedup, "near_dedup": NearDedup, "decontamination": Decontamination}


# -- which stages run ----------------------------------------------------------------------------


def pipeline_rules(plan: Plan) -> list[tuple[Any, str]]:
    """The filter stages a cycle runs, in order, each with its origin (plan or default).

    The plan's rules keep their order; PII redaction always runs first. Exact duplicates,
    near-duplicates and decontamination always run: where the plan lacks one, it is added
    with its defaults before the first later one the plan has (else at the end).
    """
    rules: list[tuple[Any, str]] = [(PiiRedacted(), "pipeline")]
    for rule in plan.quality_filters:
        if rule.rule == "pii_redacted":
            rules[0] = (rule, "plan")
        else:
            rules.append((rule, "plan"))
    for index, name in enumerate(_CANONICAL):
        if any(r.rule == name for r, _ in rules):
            continue
        later = [i for i, (r, _) in enumerate(rules) if r.rule in _CANONICAL[index + 1 :]]
        position = later[0] if later else len(rules)
        rules.insert(position, (_DEFAULTS[name](), "default"))
    return rules


def describe_rule(rule: Any) -> str:
    """A filter as the funnel shows it: ``near_dedup(threshold=0.85, keep=earliest)``."""
    params = rule.model_dump(exclude={"rule", "expected_pass_rate"})
    inner = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{rule.rule}({inner})" if inner else str(rule.rule)


def keep_rule(rules: Sequence[tuple[Any, str]]) -> Keep:
    """Which copy every duplicate stage keeps: the near-duplicate rule's ``keep`` (exact
    duplicates follow it, so that both stages keep the same copy), else the earliest."""
    near = next((rule for rule, _ in rules if rule.rule == "near_dedup"), None)
    return near.keep if near is not None else "earliest"


# -- carrying the parent's rows ------------------------------------------------------------------


def rule_key(name: str, params: dict[str, Any]) -> str:
    """A filter as a version's lineage records it (name and parameters): carried rows are
    checked again by every rule whose key the parent's lineage does not hold."""
    return json.dumps([name, params], sort_keys=True, default=str)


def rules_to_recheck(
    rules: Sequence[tuple[Any, str]],
    parent_filters: Collection[Mapping[str, Any]],
    eval_items_now: Callable[[], str],
    parent_eval_items: str | None,
) -> list[Any]:
    """The filters a carried row is checked by again, in the pipeline's order: every one the
    parent version did not run with these parameters (a rule the PM tightened applies to old
    rows too), and decontamination also when the eval items changed since the parent
    (``eval_items_now``: their fingerprint, asked for only when it decides)."""
    ran = {rule_key(str(f["name"]), f["params"]) for f in parent_filters}
    again: list[Any] = []
    for rule, _origin in rules[1:]:
        changed = rule_key(rule.rule, rule.model_dump(mode="json")) not in ran
        if rule.rule == "decontamination" and not changed:
            changed = eval_items_now() != parent_eval_items
        if changed:
            again.append(rule)
    return again


RULE_CHANGED = " (the rule is not the one the parent version ran)"
"""Ends the reason of a carried row removed by a rule the parent did not run."""


def carried_prefix(version_id: str) -> str:
    """Begins the reason of every carried row removed on its re-check."""
    return f"carried from {version_id}: "


def retention_reason(days: int) -> str:
    """Why a carried row past the plan's raw-text retention is removed."""
    return f"older than the plan's raw-text retention ({days} days) at the data freeze"


def pii_recheck_warning(count: int) -> str:
    """The warning when today's PII detectors found what ingest's did not."""
    return (
        f"PII check: {count} row(s) held PII today's detectors find and ingest's did not; "
        "they were redacted again in the dataset."
    )


# -- row stages every engine shares --------------------------------------------------------------


def consent_stage(rows: ir.Table, events: ir.Table) -> ir.Table:
    """Rows plus ``fw_drop``: why a row lacks training consent (none, or withdrawn)."""
    eligible = eligible_interactions(rows, events)
    training = events.filter((events.scope == "training") & (events.action == "grant"))
    granted_before = rows.semi_join(
        training, [rows.user_id == training.user_id, training.ts <= rows.ts]
    ).select(g_id=rows.interaction_id)
    is_eligible = rows.interaction_id.isin(eligible.interaction_id)
    had_grant = rows.interaction_id.isin(granted_before.g_id)
    why = ibis.cases(
        (is_eligible, ibis.null("string")),
        (had_grant, "training consent withdrawn at or after the interaction"),
        else_="no training consent granted at or before the interaction",
    )
    return rows.mutate(**{_DROP: why})


def language_verdict(
    rows: ir.Table, rule: Any, known: Collection[str], found: Callable[[ir.StringValue], Any]
) -> ir.Table:
    """The ``language`` rule: ``rows`` plus ``fw_drop`` for a text that looks like a language
    the rule does not keep (a text that looks like none is kept). ``known``: the languages the
    engine tells apart; ``found``: the engine's guess for a text. Raises ValueError for a
    language the engine does not know."""
    unknown = sorted(set(rule.languages) - set(known))
    if unknown:
        raise ValueError(f"the language rule knows {', '.join(known)}; not {', '.join(unknown)}")
    guess = found(rows.prompt.concat(" ", rows.response))
    drop = (guess != "und") & ~guess.isin(list(rule.languages))
    detail = ibis.literal("text looks like '").concat(
        guess, f"', not one of {', '.join(rule.languages)}"
    )
    return rows.mutate(**{_DROP: ibis.ifelse(drop, detail, ibis.null("string"))})
