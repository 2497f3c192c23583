"""The demo workspace: a deterministic, seeded set of plans (and later cycles) to explore.

Everything it writes is labelled as demo data (``plans.is_demo`` and the ``demo`` workspace key),
so the dashboard can say so. Loading it twice adds nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from core.access import User
from core.clock import clock_at
from core.generation import GenerationSpec, cell_key, write_examples
from core.ingest import Kind, ingest_file
from core.plan import Plan, plan_timeline
from core.plan_versions import list_plans, load_plan, save_plan_version
from core.signoffs import record_decision, required_roles
from core.starters import starter_plan
from core.store import Store

__all__ = ["DEMO_PRESENT", "DemoSummary", "is_demo_workspace", "load_demo"]

# The demo acts as the people who would take each step, with their roles: the PM writes the
# plan and loads the logs, the ML lead runs the cycles.
DEMO_PM = User("Maya Chen (demo)", frozenset({"pm"}))
DEMO_ML_LEAD = User("Omar Haddad (demo)", frozenset({"ml_lead"}))

# The demo's calendar: the privacy review approved the plan on this day, and the demo's "now" is
# the morning after cycle 3's A/B test ended. Nothing it records is dated after that, and
# consent events that would fall later are not in its ledger.
REVIEW_APPROVED_ON = date(2026, 12, 15)
DEMO_PRESENT = datetime(2027, 4, 1, 8, 0, tzinfo=UTC)


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    """A moment of the demo's timeline, in UTC."""
    return datetime.combine(day, time(hour, minute), UTC)


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

    # Every step is recorded at the moment of the demo's own timeline it stands for (the
    # clock), so that the audit log, the model card and the documents tell one story.
    # Version 1: the PM's first draft, with the contradictions a first draft has.
    final = starter_plan("python_coding_assistant")
    # The demo's reviewer approved the plan before its first cycle (a starter plan's review
    # starts pending), and its months of traffic are a small team's: cycles retrain on 20 new
    # rows, so that each demo cycle adds its window to the dataset it carries forward.
    final.consent.privacy_review.status = "approved"
    final.consent.privacy_review.decided_on = REVIEW_APPROVED_ON
    final.cadence.min_new_examples = 20
    draft = final.model_copy(deep=True)
    draft.consent.privacy_review.status = "in_review"
    draft.consent.privacy_review.decided_on = None
    draft.logging.fields[2].retention_days = 365
    draft.gates = [g for g in draft.gates if g.comparator != "no_regression"]
    draft.ab_test.daily_traffic = 1500
    with clock_at(_at(date(2026, 12, 1), 10)):
        plan_id, _ = save_plan_version(store, draft, note="First draft", user=DEMO_PM, is_demo=True)

    # Version 2: the privacy review's and the ML lead's comments addressed, on the day the
    # reviewer approved.
    reviewed = final.model_copy(deep=True)
    reviewed.ab_test.daily_traffic = 3000 + rng.randrange(0, 500, 100)
    with clock_at(_at(REVIEW_APPROVED_ON, 15)):
        save_plan_version(
            store,
            reviewed,
            note="Retention cut to 90 days; regression gate added; privacy review approved",
            user=DEMO_PM,
            plan_id=plan_id,
        )

    # Version 3: traffic estimate from the launch forecast, then every approver signs it off.
    with clock_at(_at(REVIEW_APPROVED_ON + timedelta(days=1), 9)):
        save_plan_version(
            store, final, note="Traffic from the launch forecast", user=DEMO_PM, plan_id=plan_id
        )
    with clock_at(_at(REVIEW_APPROVED_ON + timedelta(days=1), 14)):
        _demo_sign_offs(store, plan_id)

    _demo_generation(store, plan_id, rng)
    logs = _demo_logs(final, rng)
    logs += _demo_ab_logs(final, random.Random(seed * 1_000 + 6))
    _demo_cycles(store, plan_id, final, logs)
    from core.demo_evals import load_demo_evals  # the eval stack (scipy) only when loading

    load_demo_evals(store, plan_id, final, rng)

    with store.transaction() as con:
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo', 'true')")
        con.execute("INSERT OR REPLACE INTO workspace VALUES ('demo_seed', ?)", [str(seed)])
    return DemoSummary(plan_id, len(plan_timeline(final)), _interaction_count(store), True)


def _demo_sign_offs(store: Store, plan_id: str) -> None:
    """Every required role approves the final version, as its named approvers."""
    plan, version = load_plan(store, plan_id)
    names: dict[str, str] = {a.role: a.name for a in plan.sign_offs.approvers}
    for role in required_roles(plan):
        approver = User(f"{names.get(role, role)} (demo)", frozenset({role}))
        record_decision(
            store,
            plan_id,
            version,
            role=role,
            user=approver,
            decision="approve",
            note="Demo approval.",
        )


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
    when = datetime(2027, 1, 5, 9, 30, tzinfo=UTC)  # two days before cycle 1's data freeze
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
    with clock_at(when + timedelta(minutes=7)):
        write_examples(store, rows, user=DEMO_PM)
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


# The answer to each task: a short script that runs as is (its own example data, no network, files
# only under a temporary folder), with the user's record name and a number in it.
_TASK_CODE: dict[str, str] = {
    "merge two dicts": "defaults = {{'{name}': {k}, 'retries': 3}}\n"
    "overrides = {{'{name}': {k} + 1}}\n"
    "merged = {{**defaults, **overrides}}  # the right-hand dict wins\n"
    "print(merged)\n",
    "dedupe a list keeping order": "def unique_{name}s(items):\n"
    "    return list(dict.fromkeys(items))\n\n\n"
    "print(unique_{name}s([{k}, 1, {k}, 2, 1]))\n",
    "use a deque as a queue": "from collections import deque\n\n"
    "{name}_queue = deque(maxlen={k})\n"
    "for n in range({k} + 2):\n    {name}_queue.append(n)\n"
    "print({name}_queue.popleft(), list({name}_queue))\n",
    "strip accents": "import unicodedata\n\n\n"
    "def strip_accents(text):\n"
    "    decomposed = unicodedata.normalize('NFKD', text)\n"
    "    return ''.join(c for c in decomposed if not unicodedata.combining(c))\n\n\n"
    "print(strip_accents('Crème brûlée for {name} #{k}'))\n",
    "split on several separators": "import re\n\n"
    "{name}_line = 'a,b;c  d|{k}'\n"
    "print(re.split(r'[,;|\\s]+', {name}_line))\n",
    "format a table": "rows = [('{name}', {k}), ('total', {k} * 10)]\n"
    "width = max(len(label) for label, _ in rows)\n"
    "for label, value in rows:\n    print(f'{{label:<{{width}}}} {{value:>6}}')\n",
    "read a large CSV lazily": "import csv\nimport tempfile\nfrom pathlib import Path\n\n\n"
    "def iter_{name}s(path):\n"
    "    with open(path, newline='', encoding='utf-8') as handle:\n"
    "        yield from csv.DictReader(handle)\n\n\n"
    "with tempfile.TemporaryDirectory() as tmp:\n"
    "    path = Path(tmp) / '{name}s.csv'\n"
    "    path.write_text('id,value\\n' + ''.join(f'{{i}},{{i * {k}}}\\n' for i in range(5)))\n"
    "    print(sum(int(row['value']) for row in iter_{name}s(path)))\n",
    "write JSON atomically": "import json\nimport os\nimport tempfile\n"
    "from pathlib import Path\n\n\n"
    "def write_{name}(path, data):\n"
    "    tmp = path.with_suffix('.tmp')\n"
    "    tmp.write_text(json.dumps(data), encoding='utf-8')\n"
    "    os.replace(tmp, path)  # readers see the old file or the new one, never half\n\n\n"
    "with tempfile.TemporaryDirectory() as folder:\n"
    "    target = Path(folder) / '{name}.json'\n"
    "    write_{name}(target, {{'count': {k}}})\n"
    "    print(target.read_text())\n",
    "walk a directory tree": "import tempfile\nfrom pathlib import Path\n\n"
    "with tempfile.TemporaryDirectory() as tmp:\n"
    "    root = Path(tmp)\n"
    "    for n in range({k}):\n"
    "        (root / f'{name}_{{n % 3}}').mkdir(exist_ok=True)\n"
    "        (root / f'{name}_{{n % 3}}' / f'{{n}}.txt').write_text(str(n))\n"
    "    print(sorted(p.name for p in root.rglob('*.txt')))\n",
    "retry with backoff": "import random\nimport time\n\n\n"
    "def with_retries(call, attempts={k}, base=0.01):\n"
    "    for attempt in range(attempts):\n"
    "        try:\n            return call()\n"
    "        except ConnectionError:\n"
    "            if attempt == attempts - 1:\n                raise\n"
    "            time.sleep(base * 2**attempt + random.random() * base)\n\n\n"
    "print(with_retries(lambda: '{name} fetched'))\n",
    "chain exceptions": "class {Name}Error(Exception):\n    pass\n\n\n"
    "def load_{name}(raw):\n"
    "    try:\n        return int(raw) * {k}\n"
    "    except ValueError as exc:\n"
    "        raise {Name}Error(f'cannot read {{raw!r}}') from exc\n\n\n"
    "try:\n    load_{name}('x')\n"
    "except {Name}Error as err:\n    print(err, '<-', repr(err.__cause__))\n",
    "log a traceback": "import logging\n\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "log = logging.getLogger('{name}')\n\n"
    "try:\n    {k} / 0\n"
    "except ZeroDivisionError:\n    log.exception('could not split the {name} batch')\n",
    "use dataclasses": "from dataclasses import dataclass, field\n\n\n"
    "@dataclass\nclass {Name}:\n    key: str\n    quantity: int = {k}\n"
    "    tags: list[str] = field(default_factory=list)\n\n\n"
    "print({Name}('a'), {Name}('b', 1) == {Name}('b', 1))\n",
    "write a context manager": "from contextlib import contextmanager\nimport time\n\n\n"
    "@contextmanager\ndef timed(label):\n    start = time.perf_counter()\n"
    "    try:\n        yield\n"
    "    finally:\n        print(label, f'{{time.perf_counter() - start:.3f}} s')\n\n\n"
    "with timed('{name} x{k}'):\n    sum(range({k} * 1000))\n",
    "add a mixin": "import json\n\n\n"
    "class JsonMixin:\n    def to_json(self):\n        return json.dumps(vars(self))\n\n\n"
    "class {Name}(JsonMixin):\n    def __init__(self, size):\n        self.size = size\n\n\n"
    "print({Name}({k}).to_json())\n",
    "mock a clock": "from unittest import mock\nimport time\n\n\n"
    "def {name}_age(created):\n    return time.time() - created\n\n\n"
    "with mock.patch('time.time', return_value=100.0 + {k}):\n"
    "    assert {name}_age(100.0) == {k}\n"
    "print('ok')\n",
    "parametrize a test": "import pytest\n\n\n"
    "@pytest.mark.parametrize('n, expected', [(0, 0), ({k}, {k} * 2)])\n"
    "def test_double_{name}(n, expected):\n    assert n * 2 == expected\n",
    "test an exception": "import pytest\n\n\n"
    "def parse_{name}(text):\n    return int(text)\n\n\n"
    "def test_parse_{name}_rejects_words():\n"
    "    with pytest.raises(ValueError, match='invalid literal'):\n"
    "        parse_{name}('{k} items')\n",
    "gather tasks": "import asyncio\n\n\n"
    "async def fetch_{name}(n):\n    await asyncio.sleep(0)\n    return n * {k}\n\n\n"
    "async def main():\n"
    "    return await asyncio.gather(*(fetch_{name}(n) for n in range(4)))\n\n\n"
    "print(asyncio.run(main()))\n",
    "limit concurrency": "import asyncio\n\n\n"
    "async def main():\n    limit = asyncio.Semaphore({k})\n\n"
    "    async def one_{name}(n):\n        async with limit:\n"
    "            await asyncio.sleep(0)\n            return n\n\n"
    "    return await asyncio.gather(*(one_{name}(n) for n in range(10)))\n\n\n"
    "print(asyncio.run(main()))\n",
    "cancel a task cleanly": "import asyncio\n\n\n"
    "async def {name}_worker():\n    try:\n        await asyncio.sleep({k})\n"
    "    except asyncio.CancelledError:\n        print('cleaned up')\n        raise\n\n\n"
    "async def main():\n    task = asyncio.create_task({name}_worker())\n"
    "    await asyncio.sleep(0)\n    task.cancel()\n"
    "    try:\n        await task\n    except asyncio.CancelledError:\n"
    "        print('cancelled:', task.cancelled())\n\n\n"
    "asyncio.run(main())\n",
}


def _answer(rng: random.Random, task: str, *, explained: bool = True) -> tuple[str, str]:
    """A user's detail for a question about ``task`` and the assistant's answer to it: a script
    that runs as is, then a short explanation (``explained=False``: one fixed line, for the
    many A/B rows that never reach a dataset)."""
    noun = rng.choice(_NOUNS)
    k = rng.randint(2, 9)
    code = _TASK_CODE[task].format(name=noun, Name=noun.title().replace("_", ""), k=k)
    detail = f"My data are {noun.replace('_', ' ')} records, about {k} at a time."
    explanation = (
        " ".join(rng.sample(_WORDS, 18)).capitalize() + "."
        if explained
        else "Adapt the names to your own code."
    )
    return detail, f"Here is one way to {task}:\n\n```python\n{code}```\n\n{explanation}"


def _assigned_arm(user: str, arms: list[str]) -> str:
    """A user's arm by a hash of their id: sticky, and independent of their consent segment."""
    return arms[int(hashlib.sha256(user.encode()).hexdigest(), 16) % len(arms)]


def _demo_interactions(plan: Plan, rng: random.Random, users: list[str]) -> list[list[str]]:
    """One JSONL document per cycle: interactions over the cycle's collection window."""
    axes = {axis.name: axis.values for axis in plan.generation.axes}
    topics = axes.get("topic") or list(_TASKS)
    levels = axes.get("difficulty") or ["beginner"]
    arms = [arm.name for arm in plan.ab_test.arms] or ["control", "treatment"]
    models = {arm.name: arm.model for arm in plan.ab_test.arms}
    arm_of = {user: _assigned_arm(user, arms) for user in users}
    files: list[list[str]] = []
    number = 0
    for cycle in plan_timeline(plan)[:DEMO_CYCLES]:
        lines: list[str] = []
        # Answers draw from their own generator, so the seeded traffic stays as it was.
        answers = random.Random(f"demo-answers-{cycle.cycle}")
        days = max(1, (cycle.end - cycle.start).days)
        for _ in range(DEMO_INTERACTIONS_PER_CYCLE):
            number += 1
            topic = rng.choice(topics)
            task = rng.choice(_TASKS.get(topic, ["write a function"]))
            question = rng.choice(_QUESTIONS).format(what=task)
            detail, response = _answer(answers, task)
            prompt = f"{question} {detail}"
            if rng.random() < 0.06:
                planted = rng.choice(_PLANTED_PII).format(
                    name=rng.choice(["ana", "bo", "chen", "dara"]),
                    n=number % 1000,
                    a=number % 250,
                    b=(number * 7) % 250,
                )
                prompt = f"{prompt} {planted}"
            rng.choice(arms)  # drawn and unused: keeps the seeded sequence of the other fields
            moment = datetime.combine(cycle.start, time(8), UTC) + timedelta(
                days=rng.randrange(days), minutes=rng.randrange(600)
            )
            feedback = rng.choices(["up", "down", None], weights=[3, 1, 6])[0]
            user = rng.choice(users)
            arm = arm_of[user]  # randomised per user, as the A/B analysis assumes
            tokens_in, tokens_out = rng.randint(40, 900), rng.randint(80, 700)
            econ = plan.economics
            prices = (
                (econ.teacher_input_per_1m, econ.teacher_output_per_1m)
                if models.get(arm, arm) == plan.goal.teacher_model
                else (econ.student_input_per_1m, econ.student_output_per_1m)
            )
            record = {
                "interaction_id": f"demo-{number:05d}",
                "ts": moment.isoformat(),
                "user_id": user,
                "variant": arm,
                "model": models.get(arm, arm),
                "prompt": prompt,
                "response": response,
                "feedback": feedback,
                "accepted": rng.random() < (0.36 if arm == "treatment" else 0.3),
                "latency_ms": rng.randint(300, 2500),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "cost_usd": round((tokens_in * prices[0] + tokens_out * prices[1]) / 1e6, 7),
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


@dataclass(frozen=True)
class _DemoLog:
    """One log the demo loads: its kind, the cycle its rows are tagged with, its lines."""

    name: str
    kind: Kind
    cycle: int | None
    lines: list[str]


def _demo_logs(plan: Plan, rng: random.Random) -> list[_DemoLog]:
    """The demo's consent ledger and each cycle's interaction log, as JSONL lines."""
    users = [f"user-{rng.randrange(16**6):06x}" for _ in range(DEMO_USERS)]
    timeline = plan_timeline(plan)
    if not timeline:
        return []
    consent = _demo_consent(plan, rng, users, timeline[0].start)
    logs = [_DemoLog("demo_consent_events", "consent", None, consent)]
    for cycle, lines in zip(timeline, _demo_interactions(plan, rng, users), strict=False):
        logs.append(
            _DemoLog(f"demo_interactions_cycle{cycle.cycle}", "interactions", cycle.cycle, lines)
        )
    return logs


# -- A/B tests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ABScenario:
    """How one demo cycle's A/B test behaves."""

    treatment_share: float  # share of users the logs show in treatment (0.5 = as planned)
    acceptance_lift: float  # treatment acceptance = control propensity × this
    latency_factor: float  # treatment latency = control latency × this
    story: str


DEMO_AB_USERS_PER_DAY = 150
DEMO_AB_SCENARIOS = {
    1: _ABScenario(0.5, 1.3, 0.55, "the student wins: ship"),
    2: _ABScenario(0.5, 1.03, 1.4, "a slow serving region breaches the latency guardrail"),
    3: _ABScenario(0.45, 1.1, 0.55, "treatment logs are lost: a sample-ratio mismatch"),
}


def _demo_ab_interactions(
    plan: Plan, rng: random.Random, cycle: int, scenario: _ABScenario
) -> list[str]:
    """Users randomised once each over the cycle's A/B window; some active before it too."""
    milestones = plan_timeline(plan)[cycle - 1]
    arms = {arm.name: arm for arm in plan.ab_test.arms}
    control, treatment = "control", "treatment"
    prices = plan.economics
    days = max(1, (milestones.ab_end - milestones.ab_start).days + 1)
    topics = list(_TASKS)
    lines: list[str] = []
    number = 0
    # Answers draw from their own generator, so the seeded test traffic stays as it was.
    answers = random.Random(f"demo-ab-answers-{cycle}")

    def record(user: str, arm: str, moment: datetime, p_accept: float, slow: float) -> str:
        nonlocal number
        number += 1
        topic = rng.choice(topics)
        task = rng.choice(_TASKS[topic])
        detail, response = _answer(answers, task, explained=False)
        tokens_in, tokens_out = rng.randint(200, 900), rng.randint(120, 600)
        teacher = arm == control
        cost = (
            tokens_in * (prices.teacher_input_per_1m if teacher else prices.student_input_per_1m)
            + tokens_out
            * (prices.teacher_output_per_1m if teacher else prices.student_output_per_1m)
        ) / 1_000_000
        return json.dumps(
            {
                "interaction_id": f"demo-ab{cycle}-{number:06d}",
                "ts": moment.isoformat(),
                "user_id": user,
                "variant": arm,
                "model": arms[arm].model if arm in arms else arm,
                "prompt": f"{rng.choice(_QUESTIONS).format(what=task)} {detail}",
                "response": response,
                "feedback": rng.choices(["up", "down", None], weights=[22, 7, 71])[0],
                "accepted": rng.random() < p_accept,
                "latency_ms": round(rng.lognormvariate(7.0, 0.35) * slow),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "cost_usd": round(cost, 6),
                "topic": topic,
            }
        )

    start = datetime.combine(milestones.ab_start, time(7), UTC)
    for index in range(DEMO_AB_USERS_PER_DAY * days):
        user = f"ab{cycle}-{index:05d}-{rng.randrange(16**4):04x}"
        arm = treatment if rng.random() < scenario.treatment_share else control
        # Users differ in how much they use the assistant and how often they accept its answers;
        # both carry over from before the test, which is what CUPED exploits.
        propensity = rng.betavariate(1.5, 3.5)
        activity = rng.choice((1, 1, 1, 2, 3))
        if rng.random() < 0.5:  # a returning user, served by production before the test
            for _ in range(activity + rng.randint(0, 1)):
                before = start - timedelta(days=rng.randint(1, 10), minutes=rng.randrange(600))
                lines.append(record(user, control, before, propensity, 1.0))
        treated = arm == treatment
        p_accept = min(0.95, propensity * (scenario.acceptance_lift if treated else 1.0))
        slow = scenario.latency_factor if treated else 1.0
        entry = index // DEMO_AB_USERS_PER_DAY
        for _ in range(activity + (rng.random() < 0.3)):
            day = min(days - 1, entry + rng.randrange(3))
            moment = start + timedelta(days=day, minutes=rng.randrange(660))
            lines.append(record(user, arm, moment, p_accept, slow))
    return lines


def _demo_ab_logs(plan: Plan, rng: random.Random) -> list[_DemoLog]:
    """Each demo cycle's A/B test log, tagged with its cycle."""
    timeline = plan_timeline(plan)
    logs: list[_DemoLog] = []
    for cycle, scenario in DEMO_AB_SCENARIOS.items():
        if cycle > len(timeline):
            break
        lines = _demo_ab_interactions(plan, rng, cycle, scenario)
        logs.append(_DemoLog(f"demo_ab_cycle{cycle}", "interactions", cycle, lines))
    return logs


# -- cycles --------------------------------------------------------------------------------------

DEMO_EVAL_ITEMS = [
    (
        "pc-001",
        "Write a function that returns the n-th Fibonacci number iteratively without recursion "
        "and explain its time complexity",
        "Loop with two variables a and b; it runs in linear time and constant memory.",
    ),
    (
        "pc-002",
        "Explain the difference between a shallow copy and a deep copy of a nested list in "
        "Python and show when each one is the right choice",
        "copy.copy copies the outer list only; copy.deepcopy copies the nested lists too.",
    ),
    (
        "pc-003",
        "How do you read a very large text file line by line in Python without loading the "
        "whole file into memory at once",
        "Iterate over the open file object; each iteration yields one line lazily.",
    ),
    (
        "pc-004",
        "Show how to retry a flaky network call three times with exponential backoff and "
        "jitter using only the standard library",
        "Wrap the call in a loop with time.sleep(base * 2 ** attempt + random.random()).",
    ),
]
_NEAR_RESPONSE = (
    "Use a dictionary comprehension over the items and keep the last value for each key; it "
    "runs in linear time, keeps insertion order since Python 3.7, and reads clearly:\n\n"
    "```python\nfirst = {'a': 1, 'b': 2}\nsecond = {'b': 3}\nmerged = {**first, **second}\n"
    "print(merged)  # {'a': 1, 'b': 3}\n```"
)


def _demo_cycle_extras(plan: Plan) -> tuple[list[str], list[str], list[str]]:
    """Eval items, consent and interactions planted so that the cycles' funnel has something
    to show at each stage: an eval question pasted into a prompt, a near-duplicate pair, a
    code block that does not parse."""
    timeline = plan_timeline(plan)
    evals = [
        json.dumps(
            {
                "item_id": i,
                "eval_set": "python-core",
                "prompt": p,
                "reference": r,
                "topic": "data structures",
                "difficulty": "intermediate",
            }
        )
        for i, p, r in DEMO_EVAL_ITEMS
    ]
    user = "user-demo-planted"
    first = datetime.combine(timeline[0].start, time(6), UTC)
    consent = [
        json.dumps(
            {
                "user_id": user,
                "ts": first.isoformat(),
                "scope": "training",
                "action": "grant",
                "policy_version": "2026-11",
                "source": "us-onboarding-notice",
            }
        )
    ]
    moment = datetime.combine(timeline[1].start, time(9), UTC)
    base = {
        "user_id": user,
        "variant": "treatment",
        "model": "qwen2.5-coder-1.5b-python-assistant",
        "feedback": "up",
        "accepted": True,
        "topic": "data structures",
        "difficulty": "intermediate",
    }
    planted: list[dict[str, object]] = [
        {
            "interaction_id": "demo-planted-eval",
            "prompt": "For my homework: " + DEMO_EVAL_ITEMS[0][1] + ".",
            "response": "Here is an iterative version:\n\n"
            "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
            "        a, b = b, a + b\n    return a\n```",
        },
        {
            "interaction_id": "demo-planted-near-1",
            "prompt": "How do I merge two dicts so that "
            "the second one wins on duplicate keys in Python?",
            "response": _NEAR_RESPONSE,
        },
        {
            "interaction_id": "demo-planted-near-2",
            "prompt": "How can I merge two dicts so that "
            "the second one wins on duplicate keys in Python?",
            "response": _NEAR_RESPONSE,
            "feedback": None,
        },
        {
            "interaction_id": "demo-planted-badcode",
            "prompt": "Show me a loop that prints the numbers from one to ten in Python please.",
            "response": "Like this:\n\n```python\nfor i in range(1, 11)\n    print(i)\n```",
        },
    ]
    lines = []
    for offset, row in enumerate(planted):
        record = {**base, **row, "ts": (moment + timedelta(hours=offset)).isoformat()}
        lines.append(json.dumps(record))
    return evals, consent, lines


def _line_moment(line: str) -> datetime | None:
    """When a log line happened, or None for a line that names no readable moment."""
    try:
        ts = json.loads(line).get("ts")
        moment = datetime.fromisoformat(str(ts))
    except (ValueError, AttributeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ingest_until(
    store: Store,
    folder: Path,
    logs: list[_DemoLog],
    until: datetime,
    loaded: set[tuple[int, int]],
) -> None:
    """Load, at ``until``, every line of ``logs`` that happened before it and is not loaded
    yet: one batch per kind and cycle, as a team ships its logs (a line without a readable
    moment goes with the first batch, where the quarantine shows it)."""
    batches: dict[tuple[Kind, int | None], list[str]] = {}
    for index, log in enumerate(logs):
        for number, line in enumerate(log.lines):
            key = (index, number)
            if key in loaded:
                continue
            moment = _line_moment(line)
            if moment is None or moment < until:
                loaded.add(key)
                batches.setdefault((log.kind, log.cycle), []).append(line)
    with clock_at(until):
        for (kind, cycle), lines in batches.items():
            tag = "" if cycle is None else f"_cycle{cycle}"
            path = folder / f"demo_{kind}{tag}_until_{until:%Y-%m-%d}.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            ingest_file(store, path, user=DEMO_PM, kind=kind, cycle=cycle)


def _demo_cycles(store: Store, plan_id: str, plan: Plan, logs: list[_DemoLog]) -> None:
    """The demo's months in order: before each cycle's data freeze the logs so far are loaded
    (as a team would ship them), then the ML lead runs the cycle on them; the rest of the logs
    arrive by the demo's present. Planted rows and eval items give the funnel something to show
    at each stage."""
    from core.cycles import run_cycle

    timeline = plan_timeline(plan)
    if len(timeline) < 2:
        return
    evals, consent, lines = _demo_cycle_extras(plan)
    logs = [
        *logs,
        _DemoLog("demo_consent_planted", "consent", None, consent),
        _DemoLog("demo_interactions_planted", "interactions", 2, lines),
    ]
    loaded: set[tuple[int, int]] = set()
    with tempfile.TemporaryDirectory(prefix="flywheel-demo-") as tmp:
        folder = Path(tmp)
        evals_path = folder / "demo_eval_python_core.jsonl"
        evals_path.write_text("\n".join(evals) + "\n", encoding="utf-8")
        with clock_at(_at(timeline[0].data_freeze - timedelta(days=1), 10)):
            ingest_file(store, evals_path, kind="eval-items", user=DEMO_PM)
        for cycle in timeline[:DEMO_CYCLES]:
            _ingest_until(store, folder, logs, _at(cycle.data_freeze, 5), loaded)
            with clock_at(_at(cycle.data_freeze, 6)):
                run_cycle(store, plan_id, cycle.cycle, user=DEMO_ML_LEAD)
        # The last logs arrive an hour before the demo's present (so nothing is dated later).
        _ingest_until(store, folder, logs, DEMO_PRESENT - timedelta(hours=1), loaded)
