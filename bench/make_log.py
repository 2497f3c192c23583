"""Write a seeded interaction log for the ingest benchmark: ``python bench/make_log.py [--rows N]``.

One JSON object a line (the interaction contract of DESIGN.md), about 900 bytes a row, with PII
planted in about 4% of rows and a malformed line every 20,000 rows, into ``bench/out/``.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"

TOPICS = ["data structures", "string processing", "file I/O", "error handling", "testing"]
LEVELS = ["beginner", "intermediate", "advanced"]
WORDS = [
    "how",
    "do",
    "I",
    "sort",
    "a",
    "list",
    "of",
    "dicts",
    "by",
    "key",
    "in",
    "python",
    "without",
    "mutating",
    "the",
    "original",
    "list",
    "when",
    "the",
    "values",
    "may",
    "be",
    "None",
    "and",
    "the",
    "order",
    "of",
    "equal",
    "items",
    "must",
    "stay",
    "stable",
    "please",
    "explain",
    "the",
    "difference",
    "between",
    "a",
    "generator",
    "and",
    "an",
    "iterator",
    "and",
    "show",
    "an",
    "example",
    "using",
    "version",
    "3.12.1",
    "of",
    "the",
    "interpreter",
    "released",
    "on",
    "2024-10-07",
    "for",
    "about",
    "$12.50",
    "per",
    "seat",
]
PLANTED = [
    "contact me at jane.doe{n}@example.com",
    "my card is 4111 1111 1111 1111",
    "call +44 20 7946 0{n:03d}",
    "key sk-proj{n:06d}abcdefghijklmnopqrstuv",
    "from 10.0.{a}.{b}",
    "SSN 123-45-{n:04d}",
    "AWS AKIAIOSFODNN7EXAMPLE",
    "IBAN GB82 WEST 1234 5698 7654 32",
]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def write_log(path: Path, rows: int, seed: int = 42) -> Path:
    """Write ``rows`` interactions to ``path`` and return it."""
    rng = random.Random(seed)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = [_text(rng, rng.randint(30, 44)) for _ in range(5000)]
    responses = [_text(rng, rng.randint(44, 58)) for _ in range(5000)]
    with path.open("w", encoding="utf-8") as out:
        for n in range(rows):
            if n % 20_000 == 19_999:
                out.write('{"interaction_id": "broken-' + str(n) + '", "ts": \n')
                continue
            prompt = prompts[rng.randrange(5000)]
            if rng.random() < 0.04:
                planted = rng.choice(PLANTED).format(n=n % 1000, a=n % 250, b=(n // 250) % 250)
                prompt = f"{prompt} {planted}"
            row = {
                "interaction_id": f"i-{n:08d}",
                "ts": (start + timedelta(seconds=n * 7)).isoformat(),
                "user_id": f"u-{rng.randrange(50_000):05d}",
                "variant": "control" if n % 2 else "treatment",
                "model": "gpt-4o" if n % 2 else "ft:gpt-4o-mini:python-assistant",
                "prompt": prompt,
                "response": responses[rng.randrange(5000)],
                "system": "You are a helpful Python assistant.",
                "feedback": rng.choice(["up", "down", None, None, None]),
                "accepted": rng.random() < 0.3,
                "latency_ms": rng.randint(200, 4000),
                "input_tokens": rng.randint(50, 900),
                "output_tokens": rng.randint(50, 900),
                "cost_usd": round(rng.random() / 100, 6),
                "topic": rng.choice(TOPICS),
                "difficulty": rng.choice(LEVELS),
                "metadata": {"client": "vscode", "session": n // 5},
            }
            out.write(json.dumps(row) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=OUT / "interactions_1m.jsonl")
    args = parser.parse_args()
    path = write_log(args.out, args.rows, args.seed)
    print(f"wrote {args.rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB to {path}")


if __name__ == "__main__":
    main()
