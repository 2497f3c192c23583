"""Retention: raw interactions older than the plan allows are deleted, their daily aggregates
kept. Idempotent and transactional, so it is safe to schedule (e.g. nightly from cron)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.access import User, require
from core.audit import record_audit
from core.plan import Plan
from core.store import Store

__all__ = ["RetentionResult", "enforce_retention", "raw_text_retention_days"]


@dataclass(frozen=True)
class RetentionResult:
    """What one retention run removed (or would remove, in a dry run)."""

    retention_days: int
    cutoff: str
    interactions_deleted: int
    days_rolled_up: int
    quarantine_lines_cleared: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


def raw_text_retention_days(plan: Plan) -> int:
    """How long raw interaction text may be kept: the shortest retention of any logged field
    that can identify a person (direct identifiers, free text), else the consent policy's limit."""
    sensitive = [
        f.retention_days
        for f in plan.logging.fields
        if f.pii_class in {"direct_identifier", "free_text"}
    ]
    return min([*sensitive, plan.consent.retention_limit_days])


_ROLL_UP = """
INSERT INTO interaction_daily_metrics
SELECT CAST(ts AS DATE), cycle, variant, model, topic, difficulty,
       count(*),
       count(*) FILTER (WHERE feedback = 'up'),
       count(*) FILTER (WHERE feedback = 'down'),
       count(*) FILTER (WHERE accepted),
       coalesce(sum(latency_ms), 0), count(latency_ms),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(cost_usd), 0)
FROM interactions WHERE ts < ?
GROUP BY ALL
"""


def enforce_retention(
    store: Store,
    plan: Plan,
    *,
    user: User,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """Delete interactions older than the plan's raw-text retention after rolling them up into
    daily metrics, and clear the raw text of quarantined lines as old; one transaction.

    A dry run only counts, for anyone; raises AccessError, before anything is written, when
    ``user`` may not enforce retention. The audit log names ``user``."""
    if not dry_run:
        require(user, "data.retention")
    days = raw_text_retention_days(plan)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    with store.transaction() as con:
        expired = con.execute("SELECT count(*) FROM interactions WHERE ts < ?", [cutoff])
        count = int(expired.fetchone()[0])  # type: ignore[index]
        day_row = con.execute(
            "SELECT count(DISTINCT CAST(ts AS DATE)) FROM interactions WHERE ts < ?", [cutoff]
        ).fetchone()
        rolled = int(day_row[0]) if day_row else 0
        quarantine = con.execute(
            "SELECT count(*) FROM quarantine q JOIN ingest_batches b USING (batch_id)"
            " WHERE b.finished_at < ? AND q.raw IS NOT NULL",
            [cutoff],
        ).fetchone()
        cleared = int(quarantine[0]) if quarantine else 0
        if not dry_run and (count or cleared):
            con.execute(_ROLL_UP, [cutoff])
            con.execute("DELETE FROM interactions WHERE ts < ?", [cutoff])
            con.execute(
                "UPDATE quarantine SET raw = NULL, user_id = NULL WHERE raw IS NOT NULL AND"
                " batch_id IN (SELECT batch_id FROM ingest_batches WHERE finished_at < ?)",
                [cutoff],
            )
            record_audit(
                con,
                actor=user.name,
                action="retention.enforce",
                target=f"before {cutoff.date().isoformat()}",
                detail={
                    "retention_days": days,
                    "interactions_deleted": count,
                    "days_rolled_up": rolled,
                    "quarantine_lines_cleared": cleared,
                },
            )
    return RetentionResult(days, cutoff.isoformat(), count, rolled, cleared, dry_run)
