"""The cycle's pipeline: what each stage is, defined once for every engine.

``core.pipeline.stages`` holds what a stage *is*: which filter rules a cycle runs and in which
order (``pipeline_rules``), the copy each duplicate rule keeps (``keep_rule``), which rules a
carried row is checked by again (``rules_to_recheck``), the consent rule, the language rule's
verdict, and the words of every reason and warning the stages give. The engines only say how
to compute it: core.quality holds the DuckDB SQL that ``cycle run`` uses on the store (tuned for
speed), core.portable_quality the Ibis bodies for Spark and other backends; core.cycles and
core.portable run them. tests/test_pipeline_parity.py checks in every test run that the DuckDB
SQL and the Ibis bodies keep the same rows for the same reasons.
"""

from core.pipeline.stages import (
    RULE_CHANGED,
    carried_prefix,
    consent_stage,
    describe_rule,
    keep_rule,
    language_verdict,
    pii_recheck_warning,
    pipeline_rules,
    retention_reason,
    rule_key,
    rules_to_recheck,
)

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
