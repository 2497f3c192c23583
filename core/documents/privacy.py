"""The privacy review packet: what is logged, consent flows, redaction and the placeholders
it writes, erasure, the review with its recorded sign-offs, open risks and privacy lint."""

from __future__ import annotations

from core.documents.plan import _plan_values, _signoff_values
from core.documents.rendering import DocumentContext, document
from core.documents.sections import _findings
from core.lint import lint_plan
from core.plan import Plan
from core.privacy import PII_TYPES, placeholder
from core.store import Store

# What each PII type the redaction detects (core.privacy.DETECTORS) is, in words.
PII_DESCRIPTIONS: dict[str, str] = {
    "EMAIL": "email addresses",
    "PHONE": "phone numbers",
    "CARD": "payment card numbers, confirmed by the Luhn checksum",
    "IBAN": "IBANs, confirmed by their check digits",
    "IP": "IPv4 and IPv6 addresses",
    "SSN": "US social security numbers",
    "SECRET": "secrets: API keys, access tokens, private keys",
    "URL_CREDENTIALS": "URLs with credentials (user:password@host)",
}


def pii_placeholders() -> list[tuple[str, str]]:
    """Each placeholder the redaction writes (core.privacy.placeholder, e.g. ``<EMAIL>``)
    with what it stands for, in the order the detectors run: the packet shows what is used."""
    return [
        (placeholder(pii_type), PII_DESCRIPTIONS.get(pii_type, pii_type.lower()))
        for pii_type in PII_TYPES
    ]


# Lint codes that concern personal data, consent and the privacy review.
PRIVACY_LINT_CODES: frozenset[str] = frozenset(
    {
        "RETENTION_EXCEEDS_CONSENT",
        "FREE_TEXT_UNREDACTED",
        "REDACTION_NOT_FIRST",
        "NO_TRAINING_CONSENT",
        "OPT_IN_DEFAULT_GRANTED",
        "NO_CONSENT_FLOW",
        "PRIVACY_REVIEW_LATE",
        "APPROVERS_MISSING",
    }
)


@document("privacy", "Privacy review packet", "plan")
def build_privacy_packet(
    *, plan: Plan, plan_id: str, version: int, store: Store | None = None
) -> DocumentContext:
    """What is logged, consent flows, redaction (the placeholders it writes), erasure, the
    review with the sign-offs recorded for this version, open risks, privacy lint."""
    values = _plan_values(plan, plan_id, version)
    values.update(_signoff_values(store, plan, plan_id, version))
    rules = [f.rule for f in plan.quality_filters]
    position = rules.index("pii_redacted") + 1 if "pii_redacted" in rules else None
    privacy = [f for f in lint_plan(plan).findings if f.code in PRIVACY_LINT_CODES]
    values.update(
        pii_types=pii_placeholders(),
        example_placeholder=placeholder("EMAIL"),
        redaction_position=position,
        filters_before_redaction=rules[: position - 1] if position else [],
        free_text_fields=[f.name for f in plan.logging.fields if f.pii_class == "free_text"],
        privacy_findings=_findings(privacy),
    )
    return DocumentContext(values)
