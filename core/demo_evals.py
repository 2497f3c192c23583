"""The demo's evals: the "python-core" eval set, training jobs, candidates and eval results for
the demo plan's cycles, and one decision.

Cycle 1's candidate passes every gate and was approved. Cycle 2's candidate is better overall
but loses on "async and concurrency", so the per-slice no-regression gate fails. Cycle 3's job is
still running. Scores are constructed (seeded), not graded live, so loading stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from core.access import User
from core.clock import clock_at
from core.evals import import_eval_set, load_items, record_results
from core.gates import check_gates, record_decision
from core.plan import Plan, plan_timeline
from core.store import Store

__all__ = ["load_demo_evals"]

EVAL_SET = "python-core"
TEACHER = "gpt-4o"
BASE_STUDENT = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
# The demo serves each cycle's LoRA adapter with vLLM (--enable-lora --lora-modules NAME=PATH).
SERVED_AT = "http://localhost:8000/v1"
TOTAL_STEPS = 300
PER_CELL = 10
_ACTOR = "Omar Haddad (demo)"
_ML_LEAD = User(_ACTOR, frozenset({"ml_lead"}))


def _model(cycle: int) -> str:
    return f"pyassist-lora-c{cycle}"


def _items(plan: Plan) -> list[dict[str, Any]]:
    axes = {a.name: a.values for a in plan.generation.axes}
    rows: list[dict[str, Any]] = []
    for topic in axes.get("topic", []):
        for difficulty in axes.get("difficulty", []):
            for k in range(PER_CELL):
                n = len(rows)
                rows.append(
                    {
                        "item_id": f"pc-{n:03d}",
                        "eval_set": EVAL_SET,
                        "prompt": f"({topic}, {difficulty}) Write `solve_{n}(values)` that "
                        f"returns the values multiplied by {k + 2}, skipping None.",
                        "reference": f"def solve_{n}(values):\n"
                        f"    return [v * {k + 2} for v in values if v is not None]\n",
                        "topic": topic,
                        "difficulty": difficulty,
                        "labels": {
                            "tests": f"assert solve_{n}([1, None, 3]) == [{k + 2}, {3 * (k + 2)}]\n"
                        },
                    }
                )
    return rows


def _output(item_id: str, k: int, correct: bool, parses: bool = True) -> str:
    """The model's answer: right or off by one factor, and (where the parse grade says so) with
    the colon its ``def`` line needs missing."""
    n = int(item_id.split("-")[1])
    factor = k + 2 if correct else k + 1
    colon = ":" if parses else ""
    return (
        f"```python\ndef solve_{n}(values){colon}\n    return [v * {factor} for v in values"
        " if v is not None]\n```\nA comprehension keeps the non-empty values and scales them."
    )


def _rows(
    run_id: str,
    model: str,
    items: list[dict[str, Any]],
    tests: dict[str, float],
    judge: dict[str, float],
    rng: random.Random,
    *,
    tokens: tuple[int, int],
    latency: float,
    unparsed: frozenset[str] | set[str] = frozenset(),
) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    for item in items:
        item_id = item["item_id"]
        k = int(item["prompt"].split("multiplied by ")[1].split(",")[0]) - 2
        base = {
            "run_id": run_id,
            "item_id": item_id,
            "model": model,
            "output": _output(item_id, k, tests[item_id] == 1.0, item_id not in unparsed),
            "latency_ms": round(latency * rng.uniform(0.6, 1.6), 1),
            "input_tokens": tokens[0] + rng.randint(-60, 60),
            "output_tokens": tokens[1] + rng.randint(-80, 80),
        }
        grades = {
            "python_parses": 0.0 if item_id in unparsed else 1.0,
            "python_tests": tests[item_id],
            "llm_judge": judge[item_id],
        }
        for grader, score in grades.items():
            out.append((len(out) + 1, {**base, "grader": grader, "score": score}))
    return out


def _flip(
    base: dict[str, float], ids: list[str], wins: int, losses: int, rng: random.Random
) -> dict[str, float]:
    """A copy of pass/fail scores with ``wins`` failed items now passing and ``losses`` passed
    items now failing, drawn from ``ids``."""
    scores = dict(base)
    failing = [i for i in ids if base[i] == 0.0]
    passing = [i for i in ids if base[i] == 1.0]
    for item_id in rng.sample(failing, min(wins, len(failing))):
        scores[item_id] = 1.0
    for item_id in rng.sample(passing, min(losses, len(passing))):
        scores[item_id] = 0.0
    return scores


def _judge(
    tests: dict[str, float], teacher: dict[str, float] | None, rng: random.Random
) -> dict[str, float]:
    if teacher is None:
        return {
            i: min(1.0, max(0.0, 0.55 + 0.35 * t + rng.gauss(0, 0.05))) for i, t in tests.items()
        }
    return {i: min(1.0, max(0.0, 0.985 * teacher[i] + rng.gauss(0, 0.03))) for i in tests}


def _dataset_version(store: Store, plan_id: str, cycle: int) -> str:
    """The dataset version the demo's cycle built, if the cycles ran; else a label."""
    row = store.fetch_one(
        "SELECT version_id FROM dataset_versions WHERE plan_id = ? AND cycle = ?"
        " ORDER BY created_at DESC LIMIT 1",
        [plan_id, cycle],
    )
    return str(row[0]) if row else f"ds-demo-c{cycle}"


def _export(store: Store, version_id: str) -> tuple[int | None, str | None]:
    """The rows and sha256 of the training split's OpenAI JSONL export, as the job wrote it:
    the real bytes' hash, so the model card's export hash checks against a fresh export."""
    from core.datasets import export_bytes

    row = store.fetch_one(
        "SELECT train_rows FROM dataset_versions WHERE version_id = ?", [version_id]
    )
    if not row:
        return None, None
    data, _ = export_bytes(store, version_id, fmt="openai-jsonl", split="train")
    return int(row[0]), hashlib.sha256(data).hexdigest()


def _job_rows(
    plan: Plan,
    plan_id: str,
    cycle: int,
    status: str,
    when: datetime,
    dataset_version: str,
    export: tuple[int | None, str | None],
) -> list[Any]:
    """A local LoRA job as the store keeps it: 300 steps on one GPU, or 120 so far."""
    done = status == "succeeded"
    step = TOTAL_STEPS if done else 120
    hours = 1.6 + 0.3 * cycle
    job_dir = f"data/training/local-demo-c{cycle}"
    return [
        f"local-demo-c{cycle}",
        plan_id,
        cycle,
        dataset_version,
        f"{job_dir}/train.jsonl",
        export[1],
        export[0],
        "",
        BASE_STUDENT,
        json.dumps(plan.training.local.model_dump(mode="json")),
        "local",
        status,
        _model(cycle) if done else None,
        (1_840_000 + 90_000 * cycle) * step // TOTAL_STEPS,
        round(hours * step / TOTAL_STEPS * plan.economics.gpu_hour_usd, 2),
        None,
        when,
        when + timedelta(hours=hours),
        when + timedelta(hours=hours) if done else None,
        _ACTOR,
        job_dir,
        f"{job_dir}/adapter" if done else None,
        hashlib.sha256(f"demo adapter of cycle {cycle}".encode()).hexdigest() if done else None,
        "NVIDIA L4",
        round(hours * step / TOTAL_STEPS, 3),
        step,
        TOTAL_STEPS,
    ]


def _loss_curve(cycle: int, steps: int, rng: random.Random) -> list[list[Any]]:
    """Training and eval loss every 10 steps, falling as LoRA fine-tuning does."""
    rows = []
    for step in range(10, steps + 1, 10):
        loss = 0.34 + (1.25 - 0.05 * cycle) * math.exp(-step / 70) + rng.gauss(0, 0.015)
        evals = 0.39 + (1.2 - 0.05 * cycle) * math.exp(-step / 75) if step % 50 == 0 else None
        rows.append(
            [
                f"local-demo-c{cycle}",
                step,
                round(3 * step / TOTAL_STEPS, 3),
                round(loss, 4),
                2e-4 * (1 - step / TOTAL_STEPS),
                (1_840_000 + 90_000 * cycle) * step // TOTAL_STEPS,
                round(evals, 4) if evals is not None else None,
            ]
        )
    return rows


def load_demo_evals(store: Store, plan_id: str, plan: Plan, rng: random.Random) -> None:
    """Write the demo's eval set, jobs, candidates, results and the cycle 1 approval."""
    items = _items(plan)
    if not items:
        return
    milestones = {m.cycle: m for m in plan_timeline(plan)}
    if not {1, 2, 3} <= set(milestones):
        return

    def at(day: date, hour: int) -> datetime:
        return datetime.combine(day, time(hour), UTC)

    with tempfile.TemporaryDirectory(prefix="flywheel-demo-") as tmp:
        path = Path(tmp) / "python_core_eval_set.jsonl"
        path.write_text("\n".join(json.dumps(i) for i in items) + "\n", encoding="utf-8")
        # Written while cycle 1's data froze, before any candidate existed.
        with clock_at(at(milestones[1].data_freeze - timedelta(days=1), 11)):
            import_eval_set(store, path, user=_ML_LEAD)
    items_v1 = {i.item_id for i in load_items(store, EVAL_SET, 1)}
    items = [i for i in items if i["item_id"] in items_v1]
    ids = [i["item_id"] for i in items]
    by_topic: dict[str, list[str]] = {}
    for item in items:
        by_topic.setdefault(item["topic"], []).append(item["item_id"])
    weak_topic = "async and concurrency" if "async and concurrency" in by_topic else ""

    versions = {c: _dataset_version(store, plan_id, c) for c in (1, 2, 3)}
    exported = {c: _export(store, v) for c, v in versions.items()}
    with store.transaction() as con:
        for cycle, status in ((1, "succeeded"), (2, "succeeded"), (3, "running")):
            # Each job starts on its dataset, built at the cycle's data freeze that morning.
            when = at(milestones[cycle].data_freeze, 9)
            con.execute(
                "INSERT INTO training_jobs (job_id, plan_id, cycle, dataset_version, export_path,"
                " export_sha256, export_rows, training_file_id, base_model, hyperparameters,"
                " endpoint, status, fine_tuned_model, trained_tokens, cost_usd, error,"
                " created_at, updated_at, finished_at, actor, job_dir, weights_path,"
                " weights_sha256, device, gpu_hours, step, total_steps, backend) VALUES (?, ?, ?,"
                " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'local')",
                _job_rows(
                    plan,
                    plan_id,
                    cycle,
                    status,
                    when,
                    versions[cycle],
                    exported[cycle],
                ),
            )
            steps = TOTAL_STEPS if status == "succeeded" else 120
            con.executemany(
                "INSERT INTO training_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [*row, when + timedelta(minutes=row[1] // 3)]
                    for row in _loss_curve(cycle, steps, random.Random(1000 + cycle))
                ],
            )
            events = [
                "Started.",
                f"Loading {BASE_STUDENT}.",
                "Training on NVIDIA L4 (the version's train split).",
                *(f"Checkpoint at step {n}." for n in range(50, steps + 1, 50)),
            ]
            if status == "succeeded":
                events.append(f"Done: {TOTAL_STEPS} steps; weights in adapter/.")
            con.executemany(
                "INSERT INTO training_events VALUES (?, ?, ?, 'info', ?)",
                [
                    [
                        f"local-demo-c{cycle}",
                        f"{n:06d}",
                        when + timedelta(minutes=12 * n),
                        text,
                    ]
                    for n, text in enumerate(events)
                ],
            )
            if status == "succeeded":
                con.execute(
                    "INSERT INTO cycle_candidates (plan_id, cycle, model, endpoint, source, job_id,"
                    " dataset_version, registered_at, registered_by, base_model) VALUES (?, ?, ?,"
                    " ?, 'fine_tune', ?, ?, ?, ?, ?)",
                    [
                        plan_id,
                        cycle,
                        _model(cycle),
                        SERVED_AT,
                        f"local-demo-c{cycle}",
                        versions[cycle],
                        when + timedelta(hours=5),
                        _ACTOR,
                        BASE_STUDENT,
                    ],
                )

    # Pass/fail on the item tests: production before the plan (the base student) passes ~70%.
    base = {i: float(rng.random() < 0.70) for i in ids}
    c1 = _flip(base, ids, wins=30, losses=9, rng=rng)
    others = [i for i in ids if i not in by_topic.get(weak_topic, [])]
    c2 = _flip(c1, others, wins=38, losses=4, rng=rng)
    weak = by_topic.get(weak_topic, [])
    for item_id in rng.sample([i for i in weak if c1[i] == 1.0], 16) if weak else []:
        c2[item_id] = 0.0
    teacher_tests = _flip(c1, ids, wins=15, losses=2, rng=rng)
    teacher_judge = _judge(teacher_tests, None, rng)
    runs: list[
        tuple[str, str, str, int | None, dict[str, float], dict[str, float], tuple[int, int], float]
    ] = [
        (
            "demo-teacher",
            TEACHER,
            "teacher",
            None,
            teacher_tests,
            teacher_judge,
            (800, 380),
            1800.0,
        ),
        (
            "demo-prod-c1",
            BASE_STUDENT,
            "production",
            1,
            base,
            _judge(base, None, rng),
            (1500, 330),
            700.0,
        ),
        (
            "demo-cand-c1",
            _model(1),
            "candidate",
            1,
            c1,
            _judge(c1, teacher_judge, rng),
            (800, 350),
            650.0,
        ),
        (
            "demo-prod-c2",
            _model(1),
            "production",
            2,
            c1,
            _judge(c1, teacher_judge, rng),
            (800, 350),
            650.0,
        ),
        (
            "demo-cand-c2",
            _model(2),
            "candidate",
            2,
            c2,
            _judge(c2, teacher_judge, rng),
            (800, 340),
            640.0,
        ),
    ]
    for number, (run_id, model, role, run_cycle, tests, judge, tokens, latency) in enumerate(runs):
        unparsed = set(rng.sample(ids, 2))
        rows = _rows(
            run_id,
            model,
            items,
            tests,
            judge,
            rng,
            tokens=tokens,
            latency=latency,
            unparsed=unparsed,
        )
        if run_id == "demo-cand-c1":
            # Human labels on 40 outputs, to check the judge against.
            for item_id in ids[:40]:
                human = 1.0 if judge[item_id] >= 0.5 else 0.0
                if rng.random() < 0.1:
                    human = 1.0 - human
                rows.append(
                    (
                        len(rows) + 1,
                        {
                            "run_id": run_id,
                            "item_id": item_id,
                            "model": model,
                            "output": None,
                            "score": human,
                            "grader": "human",
                        },
                    )
                )
        # Each cycle's runs on its evaluation days, after its candidate was registered.
        evaluated = at(milestones[run_cycle or 1].training_done, 10)
        with clock_at(evaluated + timedelta(minutes=40 * number)):
            record_results(
                store,
                rows,
                eval_set=EVAL_SET,
                role=role,  # type: ignore[arg-type]
                cycle=run_cycle,
                plan_id=plan_id,
                user=_ML_LEAD,
                source="demo",
                system_message=plan.goal.system_message or "",  # asked as the student is served
            )
    # Cycle 1's decision, on its decision day after its A/B test.
    with clock_at(at(milestones[1].decision, 10)):
        report = check_gates(store, plan_id, 1)
        if report.verdict == "pass":
            record_decision(store, plan_id, 1, decision="approved", user=_ML_LEAD)
