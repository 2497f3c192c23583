"""A small workspace for cycle tests: a plan, interactions in cycle 2's window, consent, eval
items and synthetic examples, all loaded through the real ingest."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from core.access import User, local_operator
from core.generation import GenerationSpec, cell_key, write_examples
from core.ingest import ingest_file
from core.plan import Plan
from core.plan_versions import load_plan, save_plan_version
from core.signoffs import record_decision
from core.starters import starter_plan
from core.store import Store

EVAL_QUESTION = (
    "Write a function that returns the n-th Fibonacci number iteratively without recursion "
    "and explain its time complexity"
)
WINDOW_DAY = datetime(2027, 1, 10, 9, tzinfo=UTC)  # inside cycle 2's window of the starter


def cycle_plan(**cadence: Any) -> Plan:
    """The coding-assistant plan with test-sized cadence values (a plan the linter accepts, so
    that its privacy reviewer can approve it)."""
    plan = starter_plan("python_coding_assistant")
    # A starter's privacy review starts pending; these cycles run once it has approved.
    plan.consent.privacy_review.status = "approved"
    plan.consent.privacy_review.decided_on = date(2026, 12, 15)
    plan.cadence.min_new_examples = 4
    for key, value in cadence.items():
        setattr(plan.cadence, key, value)
    return plan


def interaction(n: int, **fields: Any) -> dict[str, Any]:
    row = {
        "interaction_id": f"i-{n:03d}",
        "ts": (WINDOW_DAY + timedelta(minutes=n)).isoformat(),
        "user_id": f"u-{n % 4}",
        "variant": "treatment",
        "model": "student",
        "prompt": f"How do I sort list number {n} of records by their key {n * 7} in Python?",
        "response": f"Use sorted(records, key=lambda r: r.k{n}) which returns a new list {n}.",
        "feedback": "up",
        "accepted": True,
        "topic": ["testing", "file I/O"][n % 2],
        "difficulty": "beginner",
    }
    row.update(fields)
    return row


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def withdraw_consent(store: Store, tmp: Path, user_id: str, ts: str) -> None:
    """Load one training-consent withdrawal of ``user_id`` at ``ts`` through the real ingest."""
    withdrawal = {
        "user_id": user_id,
        "ts": ts,
        "scope": "training",
        "action": "withdraw",
        "policy_version": "1",
        "source": "test",
    }
    path = write_jsonl(tmp / f"withdraw-{user_id}.jsonl", [withdrawal])
    ingest_file(store, path, kind="consent", user=local_operator())


def build_workspace(
    store: Store,
    tmp: Path,
    rows: list[dict[str, Any]] | None = None,
    *,
    plan: Plan | None = None,
    synthetic: int = 12,
    consent_users: tuple[str, ...] = ("u-0", "u-1", "u-2"),
) -> str:
    """Store a plan, interactions, consent (u-3 has none), an eval set and synthetic rows."""
    chosen = plan or cycle_plan()
    plan_id, _ = save_plan_version(store, chosen, note="test", user=local_operator())
    reviewer = User("Priya", frozenset({"privacy_reviewer"}))
    record_decision(store, plan_id, 1, role="privacy_reviewer", user=reviewer, decision="approve")
    granted = datetime(2026, 12, 1, tzinfo=UTC).isoformat()
    consent = [
        {
            "user_id": u,
            "ts": granted,
            "scope": "training",
            "action": "grant",
            "policy_version": "1",
            "source": "test",
        }
        for u in consent_users
    ]
    ingest_file(
        store, write_jsonl(tmp / "consent.jsonl", consent), kind="consent", user=local_operator()
    )
    evals = [
        {
            "item_id": "e-1",
            "eval_set": "python-core",
            "prompt": EVAL_QUESTION,
            "reference": "Loop with two variables.",
        },
        {
            "item_id": "e-2",
            "eval_set": "python-core",
            "prompt": "Explain what a context manager is and write one with contextlib",
        },
    ]
    ingest_file(
        store, write_jsonl(tmp / "evals.jsonl", evals), kind="eval-items", user=local_operator()
    )
    data = rows if rows is not None else [interaction(n) for n in range(40)]
    ingest_file(store, write_jsonl(tmp / "interactions.jsonl", data), user=local_operator())
    if synthetic:
        stored, version = load_plan(store, plan_id)
        spec = GenerationSpec(plan_id, version, stored)
        examples = []
        for index in range(synthetic):
            cell = spec.cells[index % len(spec.cells)]
            examples.append(
                {
                    "spec_hash": spec.spec_hash,
                    "cell_key": cell_key(cell),
                    "item_index": index,
                    "plan_id": plan_id,
                    "run_id": "gen-test",
                    "cell": cell_key(cell),
                    "status": "valid",
                    "question": f"Synthetic question {index} about {cell}?",
                    "answer": f"Synthetic answer {index}.",
                    "teacher_model": "gpt-4o",
                    "endpoint": "http://127.0.0.1",
                    "template_hash": spec.template_hash,
                    "temperature": 0.7,
                    "generated_at": WINDOW_DAY,
                }
            )
        write_examples(store, examples, user=local_operator())
    return plan_id
