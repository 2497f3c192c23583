"""Shared pieces of the eval tests: eval set files, result files and a model server reply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOPICS = ("lists", "strings", "async")


def code_items(n_per_topic: int = 4, eval_set: str = "py-mini") -> list[dict[str, Any]]:
    """Items asking for ``f_k(x) = x + k``, with tests, across topics and difficulties."""
    items = []
    for t, topic in enumerate(TOPICS):
        for k in range(n_per_topic):
            number = t * n_per_topic + k
            items.append(
                {
                    "item_id": f"{eval_set}-{number:03d}",
                    "eval_set": eval_set,
                    "prompt": f"TASK {number}: write f_{number}(x) returning x + {number}.",
                    "reference": f"def f_{number}(x):\n    return x + {number}\n",
                    "topic": topic,
                    "difficulty": "easy" if k % 2 == 0 else "hard",
                    "labels": {"tests": f"assert f_{number}(1) == {1 + number}\n"},
                }
            )
    return items


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def solve(prompt: str, *, wrong_topics: tuple[str, ...] = ()) -> str:
    """A model's answer to a TASK prompt: right, unless its number is in a wrong range."""
    number = int(prompt.split("TASK ", 1)[1].split(":", 1)[0])
    offset = number if not any(t in prompt for t in wrong_topics) else number + 1
    return f"```python\ndef f_{number}(x):\n    return x + {offset}\n```\nAdds {number}."


def responder(request: dict[str, Any]) -> str | None:
    """Server replies: the judge gives 4/5, 'student' answers right, 'weak' gets 1 in 3 wrong."""
    model = request.get("model")
    prompt = str(request["messages"][-1]["content"])
    if model == "judge":
        return "Score: 4\nMostly right."
    if "TASK " not in prompt:
        return None
    number = int(prompt.split("TASK ", 1)[1].split(":", 1)[0])
    if model == "weak" and number % 3 == 0:
        return f"```python\ndef f_{number}(x):\n    return x\n```"
    return solve(prompt)
