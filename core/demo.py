"""The demo workspace: a deterministic, seeded set of plans (and later cycles) to explore.

Everything it writes is labelled as demo data (``plans.is_demo`` and the ``demo`` workspace key),
so the dashboard can say so. Loading it twice adds nothing the second time.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.generation import GenerationSpec, cell_key, write_examples
from core.plan import plan_timeline
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

    _demo_generation(store, plan_id, rng)

    with store.transaction() as con:
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo', 'true')")
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo_seed', ?)", [str(seed)])
    return DemoSummary(plan_id, len(plan_timeline(final)), _interaction_count(store), True)


# -- generated examples ------------------------------------------------------------------------

_NOUN_TEXT = (
    "invoice order sensor playlist inventory ledger logline csv_row user_record sample "
    "price_quote shipment ticket booking payment token session cache_key setting image_tile "
    "message stock_level survey route segment"
)
_VERB_TEXT = "parse group merge filter count validate load store rank split index retry"
_EXPLANATION_TEXT = (
    "because the loop keeps only what it needs, memory stays flat while each step stays "
    "readable; a small helper isolates the edge case so tests can pin it down, and the "
    "standard library already covers the heavy lifting without extra dependencies or "
    "global state that would surprise a reviewer later on"
)
_NOUNS = tuple(_NOUN_TEXT.split())
_VERBS = tuple(_VERB_TEXT.split())
_WORDS = tuple(_EXPLANATION_TEXT.split())
_CODE = {
    "data structures": "from collections import defaultdict\n\n"
    "def {verb}_{noun}(rows):\n    groups = defaultdict(list)\n    for key, value in rows:\n"
    "        groups[key].append(value * {k})\n    return dict(groups)\n",
    "string processing": "def {verb}_{noun}(text):\n"
    "    words = [w.strip('.,') for w in text.split()]\n"
    "    return ' '.join(w.title() for w in words if len(w) > {k})\n",
    "file I/O": "from pathlib import Path\n\ndef {verb}_{noun}(path):\n"
    "    lines = Path(path).read_text(encoding='utf-8').splitlines()\n"
    "    return [line for line in lines[{k}:] if line]\n",
    "error handling": "def {verb}_{noun}(raw):\n    try:\n        return int(raw) + {k}\n"
    "    except ValueError as exc:\n        raise ValueError(f'bad value: {{raw!r}}') from exc\n",
    "object-oriented design": "class {Noun}Store:\n    def __init__(self):\n"
    "        self._items = {{}}\n\n    def {verb}(self, key, item):\n"
    "        self._items[key] = item\n        return len(self._items) + {k}\n",
    "testing": "import pytest\n\n@pytest.mark.parametrize('n', [{k}, {k} + 1])\n"
    "def test_{verb}_{noun}(n):\n    assert sorted([n, 0]) == [0, n]\n",
    "async and concurrency": "import asyncio\n\nasync def {verb}_{noun}(items):\n"
    "    sem = asyncio.Semaphore({k})\n\n    async def one(item):\n"
    "        async with sem:\n            await asyncio.sleep(0)\n            return item\n\n"
    "    return await asyncio.gather(*(one(i) for i in items))\n",
}


def _demo_example(rng: random.Random, topic: str, difficulty: str) -> tuple[str, str]:
    noun = rng.choice(_NOUNS)
    verb = rng.choice(_VERBS)
    k = rng.randint(2, 9)
    code = _CODE[topic].format(verb=verb, noun=noun, Noun=noun.title().replace("_", ""), k=k)
    context = ", ".join(n.replace("_", " ") for n in rng.sample(_NOUNS, 3))
    question = (
        f"({difficulty}) How should I {verb} each {noun.replace('_', ' ')} when working on "
        f"{topic}, given {context}?"
    )
    explanation = " ".join(rng.sample(_WORDS, 22)).capitalize() + "."
    return question, f"```python\n{code}```\n\n{explanation}"


def _demo_generation(store: Store, plan_id: str, rng: random.Random) -> None:
    """Stored examples for the demo plan's grid, as if generated the day before: provenance on
    each, a few failures, and one thin cell (failures plus a near-duplicate)."""
    plan, version = load_plan(store, plan_id)
    spec = GenerationSpec(plan_id, version, plan)
    gen = plan.generation
    run_id = "gen-demo-1"
    when = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    thin = {"topic": "async and concurrency", "difficulty": "advanced"}
    failing = {
        (cell_key(thin), 6): "invalid reply: schema coding_qa: answer: the code block does not "
        "parse: invalid syntax (line 4) (after 3 attempts)",
        (cell_key(thin), 7): "HTTP 429 on 6 attempt(s); gave up after 5 retries",
        (cell_key(thin), 8): "invalid reply: malformed JSON: Unterminated string at character "
        "412 (after 3 attempts)",
        (cell_key(thin), 9): "request timed out on 6 attempt(s); gave up after 5 retries",
        (cell_key({"topic": "file I/O", "difficulty": "beginner"}), 3): "invalid reply: schema "
        "coding_qa: answer: the explanation must be one paragraph (after 3 attempts)",
    }
    rows: list[dict[str, object]] = []
    for cell in spec.cells:
        key = cell_key(cell)
        for index in range(gen.examples_per_cell):
            tokens_in = 180 + rng.randint(0, 40)
            tokens_out = 260 + rng.randint(0, 240)
            row: dict[str, object] = {
                "spec_hash": spec.spec_hash,
                "cell_key": key,
                "item_index": index,
                "plan_id": plan_id,
                "run_id": run_id,
                "cell": key,
                "attempts": 1,
                "teacher_model": spec.teacher_model,
                "endpoint": "https://api.openai.com/v1",
                "template_hash": spec.template_hash,
                "temperature": gen.temperature,
                "generated_at": when + timedelta(seconds=len(rows) * 2),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "cost_usd": spec.cost(tokens_in, tokens_out),
            }
            reason = failing.get((key, index))
            if reason:
                row.update(status="failed", failure_reason=reason, attempts=3)
            elif key == cell_key(thin) and index == 5:
                # A near-copy of the cell's first example: the diversity check flags it.
                first = next(r for r in rows if r["cell_key"] == key and r["item_index"] == 0)
                row.update(
                    status="valid",
                    question=str(first["question"]).replace("How should I", "How do I"),
                    answer=first["answer"],
                )
            else:
                question, answer = _demo_example(rng, cell["topic"], cell["difficulty"])
                row.update(status="valid", question=question, answer=answer)
            if row["status"] == "valid":
                row["payload"] = json.dumps({"question": row["question"], "answer": row["answer"]})
            rows.append(row)
    write_examples(store, rows)
    valid = sum(1 for r in rows if r["status"] == "valid")
    with store.transaction() as con:
        con.execute(
            "INSERT INTO generation_runs (run_id, plan_id, plan_version, spec_hash, mode, status,"
            " started_at, finished_at, requested, generated, failed, api_calls, input_tokens,"
            " output_tokens, cost_usd, estimated_cost_usd, budget_usd, message)"
            " VALUES (?, ?, ?, ?, 'online', 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                plan_id,
                version,
                spec.spec_hash,
                when,
                when + timedelta(minutes=7),
                len(rows),
                valid,
                len(rows) - valid,
                len(rows) + 31,
                sum(int(str(r["input_tokens"])) for r in rows),
                sum(int(str(r["output_tokens"])) for r in rows),
                sum(float(str(r["cost_usd"])) for r in rows),
                1.56,
                gen.budget_usd,
                f"{valid} generated, {len(rows) - valid} failed.",
            ],
        )
