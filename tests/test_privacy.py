"""PII detection and redaction: a labelled corpus with hard cases, placeholders, files."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from core.errors import FlywheelError, IngestError
from core.privacy import PII_TYPES, placeholder, redact_file, redact_names, redact_texts


def _luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it Luhn-valid."""
    digits = [int(c) for c in body]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d >= 5 else d * 2) if i % 2 == 0 else d
    return body + str((10 - total % 10) % 10)


def _luhn_invalid(valid: str) -> str:
    last = int(valid[-1])
    return valid[:-1] + str((last + 1) % 10)


def _group(number: str, sep: str, sizes: tuple[int, ...] = (4, 4, 4, 4)) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(number[start : start + size])
        start += size
    return sep.join(p for p in parts if p)


def _corpus() -> list[tuple[str, list[tuple[str, str]]]]:
    """(text, [(type, value), …]) pairs; an empty list means nothing may be flagged."""
    rng = random.Random(11)
    items: list[tuple[str, list[tuple[str, str]]]] = []
    frames = [
        "Please contact {v} about the bug.",
        "{v}",
        "my details: {v}, thanks",
        "I tried {v} but it failed.",
        "(ref {v})",
    ]

    def add(kind: str, value: str) -> None:
        items.append((rng.choice(frames).format(v=value), [(kind, value)]))

    for name, domain in [
        ("jane.doe", "example.com"),
        ("a.b+tag", "mail.co.uk"),
        ("x_y", "sub.domain.org"),
        ("first.last", "company.io"),
        ("dev99", "example.net"),
        ("o'neil", "example.com"),
        ("support", "shop.example.de"),
        ("root", "localhost.dev"),
        ("q", "x.fr"),
        ("john.smith-2", "corp.example.com"),
    ] * 3:
        add("EMAIL", f"{name}{rng.randrange(100)}@{domain}")
    phones = [
        "+44 20 7946 0958",
        "+1 (555) 123-4567",
        "+1-555-123-4567",
        "+49 30 12345678",
        "+33 6 12 34 56 78",
        "+81-3-1234-5678",
        "+919876543210",
        "+61 2 9876 5432",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-800-555-0199",
        "020 7946 0958",
        "06 12 34 56 78",
        "030 1234 5678",
        "(020) 7946 0958",
        "+353 1 234 5678",
        "+34 912 345 678",
        "+7 495 123-45-67",
        "+55 11 91234-5678",
        "555 123 4567",
        "+1 415.555.2671",
        "+852 2123 4567",
        "+31 20 123 4567",
        "+46 8 123 456 78",
        "+39 06 1234 5678",
        "+27 21 123 4567",
        "+65 6123 4567",
        "+971 4 123 4567",
        "+64 9 123 4567",
    ]
    for phone in phones:
        add("PHONE", phone)
    for _ in range(30):
        prefix = rng.choice(["4", "51", "52", "37", "6011"])
        length = 15 if prefix == "37" else 16
        body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - 1 - len(prefix)))
        card = _luhn_complete(body)
        sep = rng.choice([" ", "-", ""])
        shown = _group(card, sep, (4, 6, 5)) if length == 15 else _group(card, sep)
        add("CARD", shown)
    ibans = [
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
        "NL91 ABNA 0417 1643 00",
        "ES91 2100 0418 4502 0005 1332",
        "IT60X0542811101000000123456",
        "BE68539007547034",
        "CH9300762011623852957",
    ]
    for iban in ibans * 2:
        add("IBAN", iban)
    for _ in range(20):
        octets = [rng.randrange(1, 224), rng.randrange(256), rng.randrange(256)]
        add("IP", ".".join(str(o) for o in [*octets, rng.randrange(1, 255)]))
    for ip6 in [
        "2001:db8::8a2e:370:7334",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1ff:fe23:4567:890a",
        "2001:db8:0:1::1",
        "fe80::1",
        "2a00:1450:4001:81b::200e",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
    ]:
        add("IP", ip6)
    for _ in range(20):
        add(
            "SSN",
            f"{rng.choice([123, 234, 345, 456, 512, 601, 712, 899])}-"
            f"{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}",
        )
    secrets = [
        "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
        "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAJEXAMPLEXEG2JICQ",
        "ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
    ] * 3
    for secret in secrets:
        add("SECRET", secret)
    for token in [
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
        "abcdef0123456789abcdef",
        "Zm9vYmFyYmF6cXV4MTIzNDU2",
    ]:
        value = token
        items.append((f"Authorization: Bearer {value}", [("SECRET", value)]))
        items.append(
            (
                f"curl -H 'authorization: bearer {value}' https://api.example.com",
                [("SECRET", value)],
            )
        )
    for url in [
        "postgres://admin:hunter2@db.example.com:5432/app",
        "https://user:p4ss@example.com/path",
        "mysql://root:toor@10.0.0.5/db",
        "redis://:secretpass@cache.internal:6379",
        "ftp://anon:guest@files.example.org/pub",
        "amqp://guest:guest@rabbit.local:5672",
    ] * 2:
        add("URL_CREDENTIALS", url.split("/", 3)[0] + "//" + url.split("//", 1)[1].split("/", 1)[0])
    # Several values in one text.
    items.append(
        (
            "Mail ana@example.com or call +44 20 7946 0958 from 192.168.0.12",
            [("EMAIL", "ana@example.com"), ("PHONE", "+44 20 7946 0958"), ("IP", "192.168.0.12")],
        )
    )
    # Hard negatives: nothing here may be flagged.
    negatives = [
        "Python 3.12.1 was released on 2024-10-07.",
        "Upgrade to version 2.0.0 or 1.26.4.",
        "numpy==1.26.4 and pandas>=2.2.0",
        "The meeting is on 2024-01-15 at 10:30:45.",
        "Dates: 01-02-2024, 12/31/2023, 2023.12.31",
        "It costs $1,234.56 or €99.99 per seat.",
        "Total: 12,345,678 rows in 3.5 s",
        "Order #123456789 shipped.",
        "Card 4111 1111 1111 1112 is a typo (fails Luhn).",
        "Luhn-invalid 1234 5678 9012 3456",
        "Tracking 1Z999AA10123456784",
        "slice a[1::2] and b[::3] and c[10::20]",
        "std::vector<int> v;",
        "Timestamp 12:30:45 and 23:59:59",
        "MAC 00:1A:2B:3C:4D:5E is not an IP",
        "ISBN 978-3-16-148410-0",
        "Use @property and @dataclass decorators",
        "See https://docs.python.org/3/library/re.html",
        "range(0, 100, 5) gives 20 values",
        "The answer is 42 and pi is 3.14159",
        "Port 8080 and 443 are open",
        "Room 101, floor 3, building 7",
        "x = 0x1F + 0b1010",
        "Version v1.2.3.4 of the SDK",
        "sk-short is not a key",
        "AKIA is a prefix only",
        "bearer of bad news",
        "ZIP 94105 and 10001",
        "Score: 98.6% on 1,000 items",
        "He ran 5 km in 25:30",
        "Use ratio 16:9 or 4:3",
        "A 2x3 matrix, a 10x10 grid",
        "Call me maybe",
        "Email me later",
        "FR is a country code, DE too",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sha 9f86d081884c7d659a2feaa0c55ad015",
        "Invoice INV-2024-000123",
        "ssn field is empty",
        "The year 1999 and 2024",
    ]
    for text in negatives:
        items.append((text, []))
    extra = [
        "Compare 3.10 vs 3.11 performance",
        "List [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
        "Sleep for 1500 ms then 3000 ms",
        "Between 2020-2024 sales grew",
        "Pages 123-456 of the report",
    ]
    while len(items) < 320:
        items.append((rng.choice(negatives + extra) + f" #{len(items)}", []))
    return items


CORPUS = _corpus()


def test_corpus_is_large_and_hard() -> None:
    assert len(CORPUS) >= 300
    assert sum(1 for _, found in CORPUS if not found) >= 60


def test_recall_and_precision_on_structured_pii() -> None:
    result = redact_texts([text for text, _ in CORPUS])
    expected = sum(len(found) for _, found in CORPUS)
    placeholders = re.compile("<(" + "|".join(PII_TYPES) + ")>")
    predicted = sum(len(placeholders.findall(t or "")) for t in result.texts)
    true_positive = 0
    misses = []
    for (text, found), redacted in zip(CORPUS, result.texts, strict=True):
        assert redacted is not None
        for kind, value in found:
            if value not in redacted and placeholder(kind) in redacted:
                true_positive += 1
            else:
                misses.append((kind, text, redacted))
    recall = true_positive / expected
    precision = true_positive / predicted
    false_alarms = [
        (t, r) for (t, f), r in zip(CORPUS, result.texts, strict=True) if not f and r != t
    ]
    assert recall >= 0.98, misses[:10]
    assert precision >= 0.95, false_alarms[:10]


def test_hard_negatives_are_left_alone() -> None:
    negatives = [text for text, found in CORPUS if not found]
    result = redact_texts(negatives)
    wrong = [(a, b) for a, b in zip(negatives, result.texts, strict=True) if a != b]
    assert len(wrong) / len(negatives) <= 0.02, wrong


def test_types_and_counts_per_text() -> None:
    result = redact_texts(
        ["a@b.co and c@d.org", "nothing here", None, "4111-1111-1111-1111 at 10.0.0.1"]
    )
    assert result.texts[0] == "<EMAIL> and <EMAIL>"
    assert result.types == [["EMAIL"], [], [], ["CARD", "IP"]]
    assert result.found == {"EMAIL": 2, "CARD": 1, "IP": 1}
    assert result.texts[2] is None


def test_bearer_keeps_the_scheme() -> None:
    result = redact_texts(["Authorization: Bearer abcdefghijklmnop1234"])
    assert result.texts == ["Authorization: Bearer <SECRET>"]


def test_redact_file_rewrites_text_and_lists_types(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"id": 1, "text": "mail me: x@y.com"})
        + "\n\n"
        + json.dumps({"id": 2, "text": "fine"})
        + "\n"
    )
    rows, found = redact_file(source, tmp_path / "out.jsonl")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == 2 and found == {"EMAIL": 1}
    assert out == [
        {"id": 1, "text": "mail me: <EMAIL>", "pii": ["EMAIL"]},
        {"id": 2, "text": "fine", "pii": []},
    ]


def test_redact_file_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        redact_file(tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(IngestError, match="line 2"):
        redact_file(bad, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_presidio_pass_is_optional_and_says_what_to_install() -> None:
    pytest.importorskip("pytest")
    try:
        import presidio_analyzer  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(FlywheelError, match="pip install presidio"):
            redact_names(["Alice met Bob"])
    else:  # pragma: no cover - only where a team installed Presidio
        pytest.skip("Presidio is installed here")
