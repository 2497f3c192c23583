"""Shared pieces of the generation tests: a tiny plan and a client on httpx2.MockTransport."""

from __future__ import annotations

import json
import random
import re
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
        self,
        script: list[str] | None = None,
        *,
        usage_tokens: int | None = None,
        seed: int = 3,
        by_item: dict[int, list[str]] | None = None,
        retry_after: str = "0",
    ):
        self.script = list(script or [])
        # Faults of each item (by its index in the cell), whatever order requests come in.
        self.by_item = {i: list(f) for i, f in (by_item or {}).items()}
        self.calls = 0
        self.requests: list[dict[str, object]] = []
        self.rng = random.Random(seed)
        self.usage_tokens = usage_tokens
        self.retry_after = retry_after

    @staticmethod
    def item_index(body: dict[str, object]) -> int:
        """The item a request asks for: its prompt's "Variation N of" (N - 1)."""
        prompt = str(body["messages"][1]["content"])  # type: ignore[index]
        match = re.search(r"Variation (\d+) of", prompt)
        return int(match[1]) - 1 if match else -1

    def _fault(self, body: dict[str, object]) -> str:
        if self.by_item:
            faults = self.by_item.get(self.item_index(body), [])
            return faults.pop(0) if faults else ""
        return self.script.pop(0) if self.script else ""

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.calls += 1
        self.requests.append(body)
        fault = self._fault(body)
        if fault == "429":
            return httpx2.Response(
                429,
                json={"error": {"message": "slow down"}},
                headers={"Retry-After": self.retry_after},
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
