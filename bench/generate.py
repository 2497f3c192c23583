"""Benchmark: generating the 7 × 3 × 10 grid against a local OpenAI-compatible server.

Starts the server on 127.0.0.1 with 200 ms latency per call, then in the same run:
1. the seed's approach — one blocking call after another (the sync client), validated the same;
2. ours at the default concurrency (``generation_concurrency``);
3. a rerun, which must make 0 calls;
4. a fresh spec with 10% of calls faulty — 429, 500, malformed JSON, a 200 whose body is cut
   off, an answer that fails the output schema (a lead-in before the code) — run through the
   command line, ``python -m core generate`` in its own process (start-up included), against
   the sequential loop: all 210 must end valid.

    python bench/generate.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import openai  # noqa: E402
from fake_openai import FakeOpenAI, Faults  # noqa: E402

from core.access import local_operator  # noqa: E402
from core.generation import (  # noqa: E402
    GenerationSpec,
    dry_run,
    messages_for,
    parse_reply,
    response_format,
    run_generation,
)
from core.llm import resolve_endpoint  # noqa: E402
from core.plan_versions import save_plan_version  # noqa: E402
from core.settings import settings  # noqa: E402
from core.starters import starter_plan  # noqa: E402
from core.store import Store  # noqa: E402


def sequential_baseline(spec: GenerationSpec, base_url: str) -> tuple[float, int]:
    """One blocking call after another; returns (seconds, valid items)."""
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    gen = spec.plan.generation
    valid = 0
    start = time.perf_counter()
    for cell in spec.cells:
        for index in range(gen.examples_per_cell):
            reply = client.chat.completions.create(
                model=spec.teacher_model,
                messages=messages_for(spec, cell, index),  # type: ignore[arg-type]
                temperature=gen.temperature,
                response_format=response_format(gen.output_schema, "json_schema"),
            )
            parse_reply(reply.choices[0].message.content, gen.output_schema)
            valid += 1
    return time.perf_counter() - start, valid


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    store = Store(workdir / "bench.duckdb")
    plan = starter_plan("python_coding_assistant")
    plan_id, _ = save_plan_version(store, plan, note="bench", user=local_operator())
    spec = GenerationSpec.load(store, plan_id)
    items = len(spec.cells) * plan.generation.examples_per_cell
    dry_run(store, plan_id)  # warm the tokenizer and the store outside the timings
    concurrency = settings.generation_concurrency
    print(f"grid: {len(spec.cells)} cells × {plan.generation.examples_per_cell} = {items} items")

    with FakeOpenAI(Faults(latency_s=0.2)) as server:
        endpoint = resolve_endpoint(base_url=server.url, api_key="bench")
        seq_s, seq_valid = sequential_baseline(spec, server.url)
        print(f"sequential (one blocking call after another): {seq_s:6.2f} s, {seq_valid} valid")
        start = time.perf_counter()
        ours = run_generation(store, plan_id, user=local_operator(), endpoint=endpoint)
        ours_s = time.perf_counter() - start
        print(
            f"ours (concurrency {concurrency}):                 {ours_s:6.2f} s, "
            f"{ours.generated} valid, {ours.api_calls} calls"
        )
        print(f"speed-up: {seq_s / ours_s:.1f}x (target ≥ 10x)")
        before = server.chat_calls
        rerun = run_generation(store, plan_id, user=local_operator(), endpoint=endpoint)
        print(
            f"rerun: {server.chat_calls - before} calls to the server "
            f"({rerun.api_calls} counted), {rerun.generated} valid stored (target 0 calls)"
        )

    faulty = plan.model_copy(deep=True)
    faulty.generation.temperature = 0.81  # a new spec: nothing stored for it yet
    save_plan_version(store, faulty, note="faults", user=local_operator(), plan_id=plan_id)
    kinds = ("429", "500", "malformed", "truncated", "leadin")
    faults = Faults(latency_s=0.2, rate=0.1, kinds=kinds, seed=4)
    with FakeOpenAI(faults) as server:
        env = {
            **os.environ,
            "FLYWHEEL_TEACHER_BASE_URL": server.url,
            "FLYWHEEL_TEACHER_API_KEY": "bench",
            "FLYWHEEL_RETRY_BACKOFF_S": "0.1",
        }
        command = [sys.executable, "-m", "core", "generate", "--db", str(store.path), "--json"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        took = time.perf_counter() - start
    if done.returncode != 0:
        print(f"generate through the CLI failed (exit {done.returncode}): {done.stderr.strip()}")
        return
    report = json.loads(done.stdout)
    print(
        f"through the CLI, 10% of calls faulty ({', '.join(kinds)}): {report['generated']}/"
        f"{items} valid, {report['failed']} failed, {report['api_calls']} calls, {took:.2f} s"
        f" with process start (target {items} valid)"
    )
    print(f"speed-up through the CLI with faults: {seq_s / took:.1f}x (target ≥ 10x)")


if __name__ == "__main__":
    main()
