"""The demo workspace: a deterministic, seeded set of plans (and later cycles) to explore.

Everything it writes is labelled as demo data (``plans.is_demo`` and the ``demo`` workspace key),
so the dashboard can say so. Loading it twice adds nothing the second time.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from core.ingest import ingest_file
from core.plan import Plan, plan_timeline
from core.plan_versions import list_plans, load_plan, save_plan_version
from core.starters import starter_plan
from core.store import Store

__all__ = ["DemoSummary", "is_demo_workspace", "load_demo"]

DEMO_AUTHOR = "Maya Chen (demo)"


@dataclass(frozen=True)
class DemoSummary:
    """What the demo workspace holds."""

    plan_id: str
    cycles: int
    interactions: int
    created: bool

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)


def is_demo_workspace(store: Store) -> bool:
    """Whether the store holds the demo workspace."""
    row = store.fetch_one("SELECT value FROM workspace WHERE key = 'demo'")
    return row is not None and row[0] == "true"


def _interaction_count(store: Store) -> int:
    row = store.fetch_one(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'interactions'"
    )
    if not row or not row[0]:
        return 0
    counted = store.fetch_one("SELECT count(*) FROM interactions")
    return int(counted[0]) if counted else 0


def load_demo(store: Store, *, seed: int = 7) -> DemoSummary:
    """Load the demo workspace into ``store`` unless it is there already."""
    existing = [p for p in list_plans(store) if p.is_demo]
    if existing:
        plan, _ = load_plan(store, existing[0].plan_id)
        return DemoSummary(
            existing[0].plan_id, len(plan_timeline(plan)), _interaction_count(store), False
        )
    rng = random.Random(seed)

    # Version 1: the PM's first draft, with the contradictions a first draft has.
    final = starter_plan("python_coding_assistant")
    draft = final.model_copy(deep=True)
    draft.consent.privacy_review.status = "in_review"
    draft.consent.privacy_review.decided_on = None
    draft.logging.fields[2].retention_days = 365
    draft.gates = [g for g in draft.gates if g.comparator != "no_regression"]
    draft.ab_test.daily_traffic = 1500
    plan_id, _ = save_plan_version(
        store, draft, note="First draft", author=DEMO_AUTHOR, is_demo=True
    )

    # Version 2: the privacy review's and the ML lead's comments addressed.
    reviewed = final.model_copy(deep=True)
    reviewed.ab_test.daily_traffic = 3000 + rng.randrange(0, 500, 100)
    save_plan_version(
        store,
        reviewed,
        note="Retention cut to 90 days; regression gate added; privacy review approved",
        author=DEMO_AUTHOR,
        plan_id=plan_id,
    )

    # Version 3: traffic estimate from the launch forecast.
    save_plan_version(
        store, final, note="Traffic from the launch forecast", author=DEMO_AUTHOR, plan_id=plan_id
    )

    _load_demo_data(store, final, rng)

    with store.transaction() as con:
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo', 'true')")
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo_seed', ?)", [str(seed)])
    return DemoSummary(plan_id, len(plan_timeline(final)), _interaction_count(store), True)


DEMO_USERS = 240
DEMO_INTERACTIONS_PER_CYCLE = 900
DEMO_CYCLES = 3

_PLANTED_PII = [
    "You can reach me at {name}.dev@example.com if the fix works.",
    "My staging key is sk-demo{n:04d}Xq9LmZpR2tYvB7nK3wE, why does it fail?",
    "Call me on +44 20 7946 0{n:03d} after standup.",
    "The server at 10.20.{a}.{b} refuses the connection.",
    "Billing test card 4111 1111 1111 1111 keeps failing validation.",
    "Connecting with postgres://app:s3cret@db.internal.example.com/prod gives a timeout.",
]
_QUESTIONS = [
    "How do I {what} in Python?",
    "Why does my code fail when I {what}?",
    "What is the cleanest way to {what}?",
    "Can you show a short example to {what}?",
]
_TASKS = {
    "data structures": ["merge two dicts", "dedupe a list keeping order", "use a deque as a queue"],
    "string processing": ["strip accents", "split on several separators", "format a table"],
    "file I/O": ["read a large CSV lazily", "write JSON atomically", "walk a directory tree"],
    "error handling": ["retry with backoff", "chain exceptions", "log a traceback"],
    "object-oriented design": ["use dataclasses", "write a context manager", "add a mixin"],
    "testing": ["mock a clock", "parametrize a test", "test an exception"],
    "async and concurrency": ["gather tasks", "limit concurrency", "cancel a task cleanly"],
}


def _demo_interactions(plan: Plan, rng: random.Random, users: list[str]) -> list[list[str]]:
    """One JSONL document per cycle: interactions over the cycle's collection window."""
    axes = {axis.name: axis.values for axis in plan.generation.axes}
    topics = axes.get("topic") or list(_TASKS)
    levels = axes.get("difficulty") or ["beginner"]
    arms = [arm.name for arm in plan.ab_test.arms] or ["control", "treatment"]
    models = {arm.name: arm.model for arm in plan.ab_test.arms}
    files: list[list[str]] = []
    number = 0
    for cycle in plan_timeline(plan)[:DEMO_CYCLES]:
        lines: list[str] = []
        days = max(1, (cycle.end - cycle.start).days)
        for _ in range(DEMO_INTERACTIONS_PER_CYCLE):
            number += 1
            topic = rng.choice(topics)
            task = rng.choice(_TASKS.get(topic, ["write a function"]))
            prompt = rng.choice(_QUESTIONS).format(what=task)
            if rng.random() < 0.06:
                planted = rng.choice(_PLANTED_PII).format(
                    name=rng.choice(["ana", "bo", "chen", "dara"]),
                    n=number % 1000,
                    a=number % 250,
                    b=(number * 7) % 250,
                )
                prompt = f"{prompt} {planted}"
            arm = rng.choice(arms)
            moment = datetime.combine(cycle.start, time(8), UTC) + timedelta(
                days=rng.randrange(days), minutes=rng.randrange(600)
            )
            feedback = rng.choices(["up", "down", None], weights=[3, 1, 6])[0]
            record = {
                "interaction_id": f"demo-{number:05d}",
                "ts": moment.isoformat(),
                "user_id": rng.choice(users),
                "variant": arm,
                "model": models.get(arm, arm),
                "prompt": prompt,
                "response": f"Here is one way to {task}:\n\n```python\n# ...\n```",
                "feedback": feedback,
                "accepted": rng.random() < (0.36 if arm == "treatment" else 0.3),
                "latency_ms": rng.randint(300, 2500),
                "input_tokens": rng.randint(40, 900),
                "output_tokens": rng.randint(80, 700),
                "cost_usd": round(rng.uniform(0.0002, 0.01), 5),
                "topic": topic,
                "difficulty": rng.choice(levels),
            }
            lines.append(json.dumps(record))
        # A few lines that break the contract, so the quarantine has something to show.
        lines.insert(10, '{"interaction_id": "demo-broken-1", "ts": "2027-01-05T10:00:00Z"')
        lines.insert(20, json.dumps({"interaction_id": f"demo-x{cycle.cycle}", "ts": "soon"}))
        lines.insert(
            30,
            json.dumps(
                {
                    "interaction_id": f"demo-y{cycle.cycle}",
                    "ts": "2027-01-05T10:00:00Z",
                    "user_id": users[0],
                    "variant": "control",
                    "model": "gpt-4o",
                    "prompt": "ok",
                    "response": "ok",
                    "accepted": "sometimes",
                }
            ),
        )
        files.append(lines)
    return files


def _demo_consent(plan: Plan, rng: random.Random, users: list[str], start: date) -> list[str]:
    """Consent events: EU users opt in (many later), US users are granted by notice (opt-out)."""
    flows = {flow.segment: flow for flow in plan.consent.flows}
    lines: list[str] = []
    for index, user in enumerate(users):
        segment = "EU" if index % 2 == 0 else "US"
        flow = flows.get(segment)
        version = (flow.policy_version if flow else "") or "2026-11"
        signup = datetime.combine(start, time(7), UTC) + timedelta(hours=rng.randrange(24 * 40))
        events: list[tuple[datetime, str, str]] = []
        if flow is not None and flow.mechanism == "opt_in":
            if rng.random() < 0.55:
                events.append((signup + timedelta(days=rng.randrange(30)), "grant", "eu-settings"))
        else:
            events.append((signup, "grant", "us-onboarding-notice"))
        if events and rng.random() < 0.12:
            events.append(
                (events[-1][0] + timedelta(days=rng.randrange(5, 60)), "withdraw", "privacy-toggle")
            )
        if rng.random() < 0.3:
            events.append((signup, "grant", "analytics-banner"))
        for moment, action, source in events:
            scope = "analytics" if source == "analytics-banner" else "training"
            lines.append(
                json.dumps(
                    {
                        "user_id": user,
                        "ts": moment.isoformat(),
                        "scope": scope,
                        "action": action,
                        "policy_version": version,
                        "source": source,
                    }
                )
            )
    rng.shuffle(lines)  # the ledger does not depend on the order events arrive in
    return lines


def _load_demo_data(store: Store, plan: Plan, rng: random.Random) -> None:
    """Write the demo's logs to temporary JSONL files and load them through the real ingest."""
    users = [f"user-{rng.randrange(16**6):06x}" for _ in range(DEMO_USERS)]
    timeline = plan_timeline(plan)
    if not timeline:
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-demo-") as tmp:
        folder = Path(tmp)
        consent = folder / "demo_consent_events.jsonl"
        consent.write_text("\n".join(_demo_consent(plan, rng, users, timeline[0].start)) + "\n")
        ingest_file(store, consent, kind="consent", actor=DEMO_AUTHOR)
        for cycle, lines in zip(timeline, _demo_interactions(plan, rng, users), strict=False):
            path = folder / f"demo_interactions_cycle{cycle.cycle}.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            ingest_file(store, path, kind="interactions", cycle=cycle.cycle, actor=DEMO_AUTHOR)
