"""Shared pieces of the generation tests: a tiny plan and a client on httpx2.MockTransport."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import httpx2
import openai
from fake_openai import completion_body, reply_content

from core.access import local_operator
from core.plan import Axis, Plan
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store

Handler = Callable[[httpx2.Request], httpx2.Response]


def tiny_plan(
    *, topics: int = 2, difficulties: int = 2, per_cell: int = 2, budget: float = 5.0
) -> Plan:
    """The coding starter plan cut down to a small grid."""
    plan = starter_plan("python_coding_assistant")
    gen = plan.generation
    gen.axes = [
        Axis(name="topic", values=gen.axes[0].values[:topics]),
        Axis(name="difficulty", values=gen.axes[1].values[:difficulties]),
    ]
    gen.examples_per_cell = per_cell
    gen.budget_usd = budget
    return plan


def store_plan(store: Store, plan: Plan) -> str:
    """Save ``plan`` and return its id."""
    plan_id, _ = save_plan_version(store, plan, note="test", user=local_operator())
    return plan_id


class MockTeacher:
    """A handler for httpx2.MockTransport that answers chat completions and counts them."""

    def __init__(
        self, script: list[str] | None = None, *, usage_tokens: int | None = None, seed: int = 3
    ):
        self.script = list(script or [])
        self.calls = 0
        self.requests: list[dict[str, object]] = []
        self.rng = random.Random(seed)
        self.usage_tokens = usage_tokens

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.calls += 1
        self.requests.append(body)
        fault = self.script.pop(0) if self.script else ""
        if fault == "429":
            return httpx2.Response(
                429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "0"}
            )
        if fault in {"500", "503"}:
            return httpx2.Response(int(fault), json={"error": {"message": "oops"}})
        if fault == "401":
            return httpx2.Response(401, json={"error": {"message": "bad key"}})
        if fault == "schema_400":
            return httpx2.Response(
                400, json={"error": {"message": "response_format json_schema not supported"}}
            )
        if fault == "malformed":
            content = '{"question": "cut off'
        elif fault == "invalid":
            content = json.dumps({"question": "Where is the answer?"})
        else:
            content = reply_content(self.calls, self.rng)
        payload = completion_body(body["model"], content, 400)
        if self.usage_tokens is not None:
            payload["usage"] = {
                "prompt_tokens": self.usage_tokens,
                "completion_tokens": self.usage_tokens,
                "total_tokens": 2 * self.usage_tokens,
            }
        return httpx2.Response(200, json=payload)


def mock_client(handler: Handler, *, api_key: str = "test") -> openai.AsyncOpenAI:
    """An AsyncOpenAI client whose requests go to ``handler`` instead of the network."""
    return openai.AsyncOpenAI(
        base_url="http://teacher.test/v1",
        api_key=api_key,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
