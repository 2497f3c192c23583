"""Write a seeded interaction log for the ingest benchmark:
``python bench/make_log.py [--rows N] [--dirty]``.

One JSON object a line (the interaction contract of DESIGN.md), about 900 bytes a row, with PII
planted in about 4% of rows and a malformed line every 20,000 rows, into ``bench/out/``.

``--dirty`` writes a log as real ones come: a UTF-8 BOM, CRLF line endings, about 0.5% bad lines
of every kind (missing fields, values of unreadable types, bad timestamps, truncated JSON,
invalid UTF-8, several problems at once), a few whitespace-only lines, one line with a 2 MB
prompt (over the 1 MB ``max_text_bytes``) and about 0.1% in-file duplicate ids.
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


# The dirty log's bad lines, one kind after another: a bad line every _BAD_EVERY rows on average.
BAD_KINDS = (
    "missing field",
    "unreadable type",
    "bad timestamp",
    "truncated JSON",
    "invalid UTF-8",
    "several problems",
)
_BAD_EVERY = 200
_DUPLICATE_EVERY = 1000


def _bad_line(rng: random.Random, row: dict[str, object], kind: str) -> bytes:
    """One line of the given kind of badness, made from a good row."""
    bad = dict(row)
    if kind == "missing field":
        name = rng.choice(["interaction_id", "ts", "user_id", "variant", "model", "prompt"])
        if rng.random() < 0.5:
            del bad[name]
        else:
            bad[name] = rng.choice([None, "", "  "]) if name != "prompt" else None
    elif kind == "unreadable type":
        name, value = rng.choice(
            [
                ("latency_ms", "fast"),
                ("latency_ms", 12.5),
                ("accepted", "maybe"),
                ("cost_usd", "cheap"),
                ("feedback", "meh"),
                ("metadata", "plain"),
                ("input_tokens", -3),
            ]
        )
        bad[name] = value
    elif kind == "bad timestamp":
        bad["ts"] = rng.choice(["yesterday", "2027-13-45T10:00:00Z", 1_800_000_000, "soon"])
    elif kind == "several problems":
        del bad["user_id"]
        bad["ts"] = "yesterday"
        bad["accepted"] = "maybe"
    text = json.dumps(bad).encode()
    if kind == "truncated JSON":
        return text[: rng.randrange(1, len(text) - 1)]
    if kind == "invalid UTF-8":
        return text.replace(b'"prompt": "', b'"prompt": "caf\xe9 \xff ', 1)
    return text


def write_log(path: Path, rows: int, seed: int = 42, *, dirty: bool = False) -> Path:
    """Write ``rows`` interactions to ``path`` and return it (``dirty``: see the docstring)."""
    rng = random.Random(seed)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = [_text(rng, rng.randint(30, 44)) for _ in range(5000)]
    responses = [_text(rng, rng.randint(44, 58)) for _ in range(5000)]
    end = b"\r\n" if dirty else b"\n"
    bad = 0
    with path.open("wb") as out:
        if dirty:
            out.write(b"\xef\xbb\xbf")
        for n in range(rows):
            if not dirty and n % 20_000 == 19_999:
                out.write(b'{"interaction_id": "broken-' + str(n).encode() + b'", "ts": \n')
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
            if dirty:
                if n == rows // 2:
                    row["prompt"] = "x" * (2 << 20)  # the one oversized text
                elif n % (rows // 3 + 1) == 7:
                    out.write(b"  \t" + end)  # a whitespace-only line (not a row)
                elif rng.randrange(_BAD_EVERY) == 0:
                    kind = BAD_KINDS[bad % len(BAD_KINDS)]
                    bad += 1
                    out.write(_bad_line(rng, row, kind) + end)
                    continue
                elif n > 100 and rng.randrange(_DUPLICATE_EVERY) == 0:
                    row["interaction_id"] = f"i-{rng.randrange(n - 100):08d}"
            out.write(json.dumps(row).encode() + end)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--dirty",
        action="store_true",
        help="BOM, CRLF, about 0.5%% bad lines of every kind, one 2 MB prompt, duplicate ids",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="default bench/out/interactions_1m.jsonl (interactions_1m_dirty.jsonl with --dirty)",
    )
    args = parser.parse_args()
    out = args.out or OUT / (
        "interactions_1m_dirty.jsonl" if args.dirty else "interactions_1m.jsonl"
    )
    path = write_log(out, args.rows, args.seed, dirty=args.dirty)
    print(f"wrote {args.rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB to {path}")


if __name__ == "__main__":
    main()
