"""The cycle's table stages give the same rows, for the same reasons, on local PySpark as in
``cycle run`` on DuckDB."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import ibis
import pyarrow as pa
import pytest
from cycle_helpers import EVAL_QUESTION, WINDOW_DAY, build_workspace, cycle_plan
from test_privacy import CORPUS

from core import quality
from core.access import local_operator
from core.cycles import cycle_window, run_cycle
from core.plan import FieldCondition, Language, Plan
from core.portable import PortableRun, run_on_duckdb, run_on_spark
from core.portable_quality import java_regex, near_duplicate_pairs, redacted, shingle_sets
from core.privacy import redact_texts
from core.starters import starter_plan
from core.store import Store

pytestmark = [
    pytest.mark.spark,
    # py4j leaves its gateway sockets to the garbage collector, and PySpark 4.0 / Ibis' PySpark
    # backend still pass pandas' deprecated copy keyword: neither is ours to fix.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]


def _spark_view(spark: Any, name: str, table: pa.Table) -> None:
    spark.createDataFrame(table).createOrReplaceTempView(name)


# -- the test dataset -----------------------------------------------------------------------------

_RNG = random.Random(29)
_VOCABULARY = sorted(
    {
        "".join(_RNG.choice("bcdfghjklmnpqrstvwxz") + _RNG.choice("aeiou") for _ in range(3))
        for _ in range(900)
    }
)


def _words(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(_VOCABULARY) for _ in range(count)]


def _substituted(words: list[str], position: int, rng: random.Random) -> list[str]:
    changed = list(words)
    changed[position] = rng.choice([w for w in _VOCABULARY if w not in words])
    return changed


def _shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = " ".join(text.split()).lower().split(" ")
    return {tuple(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


PII_PROMPTS = {
    "pii-email": "Mail me at jane.doe42@example.com about the failing build",
    "pii-phone": "Call +44 20 7946 0958 if the script fails again",
    "pii-card": "My card 4111 1111 1111 1111 was charged twice by the job",
    "pii-card-typo": "Card 4111 1111 1111 1112 fails Luhn, so it is not a card",
    "pii-iban": "Refund to DE89 3704 0044 0532 0130 00 after the test run",
    "pii-ipv4": "The server at 192.168.10.12 refuses the connection",
    "pii-ipv6": "Bind to 2001:db8::8a2e:370:7334 instead of localhost",
    "pii-ssn": "Form field 123-45-6789 shows up in the logs",
    "pii-secret": "Key sk-proj-abcdefghijklmnopqrstuvwxyz123456 leaked in a commit",
    "pii-bearer": "Header Authorization: Bearer abcdefghijklmnop1234 is rejected",
    "pii-url": "Connect with postgres://admin:hunter2@db.example.com:5432/app please",
}
"""Raw PII planted after ingest (as if ingested before today's detectors)."""


def _row(rid: str, minute: int, prompt: str, response: str, **fields: Any) -> dict[str, Any]:
    row = {
        "interaction_id": rid,
        "ts": (WINDOW_DAY + timedelta(minutes=minute)).isoformat(),
        "user_id": f"u-{minute % 3}",
        "variant": "treatment",
        "model": "student",
        "prompt": prompt,
        "response": response,
        "feedback": "up",
        "accepted": True,
        "latency_ms": 400,
        "topic": ["testing", "file I/O"][minute % 2],
        "difficulty": "beginner",
        "metadata": {"app": "ide"},
    }
    row.update(fields)
    return row


def _cycle_rows() -> list[dict[str, Any]]:
    """Rows that every stage acts on: unconsented, each row rule, exact and near-duplicates
    (Jaccard 1.0 after a normalisation-insensitive edit, ~0.91, a chain, ~0.65 kept, texts
    that only a careless normalisation would call equal), pasted and partly pasted eval items,
    and rows that hold each PII type (planted after ingest)."""
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    minute = 0

    def add(rid: str, prompt: str, response: str, **fields: Any) -> None:
        nonlocal minute
        minute += 1
        rows.append(_row(rid, minute, prompt, response, **fields))

    def text(count: int) -> str:
        return " ".join(_words(rng, count))

    for n in range(24):  # clearly different rows (Jaccard well under 0.5)
        add(f"base-{n:02d}", f"How do I {text(8)}?", text(rng.randint(35, 55)))
    add("consent-none", "How do I " + text(8), text(40), user_id="u-3")
    add("rule-down", "How do I " + text(8), text(40), feedback="down", accepted=False)
    add("rule-short", "How do I " + text(8), "Yes.")
    add("rule-code-bad", "Fix " + text(6), "Try:\n```python\ndef f(:\n    pass\n```\n" + text(20))
    add("rule-code-ok", "Fix " + text(6), "Try:\n```python\ndef f():\n    pass\n```\n" + text(20))
    add(
        "rule-german",
        "Wie kann ich die Liste sortieren, ist das nicht mit der Funktion sorted?",
        "Ja, das ist mit sorted und der Liste einfach, und die Reihenfolge ist stabil.",
    )
    add("rule-internal", "How do I " + text(8), text(40), metadata={"app": "internal"})
    add("rule-slow", "How do I " + text(8), text(40), latency_ms=9000)
    exact_prompt, exact_response = "Sort " + text(8), text(40)
    add("exact-1", exact_prompt, exact_response, feedback=None)
    add("exact-2", "  " + exact_prompt.upper(), exact_response.replace(" ", "   "))
    # Jaccard 1.0 once normalised, yet not an exact duplicate: the words move from the
    # response to the prompt, in another case; the worse rated copy comes first.
    prompt, response = "Parse " + text(8), text(50).split(" ")
    add(
        "same-moved",
        f"{prompt} {' '.join(response[:3])}".upper(),
        " ".join(response[3:]),
        feedback=None,
    )
    add("same-first", prompt, " ".join(response))
    # ~0.91: one word of 70 changed; the later copy is better rated and kept.
    words = _words(rng, 66)
    add("near-1", "Merge " + " ".join(words[:6]), " ".join(words[6:]), feedback=None)
    changed = _substituted(words, 40, rng)
    add("near-2", "Merge " + " ".join(changed[:6]), " ".join(changed[6:]))
    # A chain: chain-2 and chain-3 each differ from chain-1 in one word (~0.91), from each
    # other in two (~0.84); both name chain-1, the kept one.
    words = _words(rng, 66)
    for rid, position in (("chain-1", None), ("chain-2", 20), ("chain-3", 50)):
        body = words if position is None else _substituted(words, position, rng)
        add(rid, "Split " + " ".join(body[:6]), " ".join(body[6:]))
    # ~0.65: similar but not near-duplicates; both stay.
    words = _words(rng, 66)
    add("similar-1", "Join " + " ".join(words[:6]), " ".join(words[6:]))
    body = list(words)
    for position in (12, 26, 40, 54):
        body = _substituted(body, position, rng)
    add("similar-2", "Join " + " ".join(body[:6]), " ".join(body[6:]))
    # Normalised alike on both engines: "of " keeps its "f" when trimmed, and a vertical tab
    # is no space to RE2, so neither pair is an exact duplicate; both are near-duplicates.
    words, response_words = _words(rng, 6), text(80)
    add("trim-of", f"Explain {' '.join(words)} of ", response_words)
    add("trim-o", f"Explain {' '.join(words)} o", response_words)
    prompt, response = "Count " + text(8), text(80).split(" ")
    add("vtab-1", prompt, f"{response[0]}\x0b{' '.join(response[1:])}")
    add("vtab-2", prompt, " ".join(response))
    add("eval-paste", f"Quick one. {EVAL_QUESTION}. Thanks!", text(30))
    first_words = " ".join(EVAL_QUESTION.split()[:12])  # 1 of the item's 6 13-grams: kept
    add("eval-part", f"{first_words} but in Rust", text(30))
    add(
        "eval-short-item",
        "How do I " + text(8),
        f"Homework: explain what a context manager is and write one with contextlib. {text(20)}",
    )
    for rid in PII_PROMPTS:
        add(rid, "How do I " + text(8), text(40))
    return rows


def _workspace(store: Store, tmp: Path) -> tuple[str, Plan]:
    plan = cycle_plan(max_dataset_size=5000, original_to_new_ratio=0.1)
    filters = plan.quality_filters
    at = next(i for i, rule in enumerate(filters) if rule.rule == "exact_dedup")
    filters[at:at] = [
        Language(languages=["en"]),
        FieldCondition(field="app", op="not_in", value="internal"),
        FieldCondition(field="latency_ms", op="<", value="5000"),
    ]
    plan_id = build_workspace(store, tmp, _cycle_rows(), plan=plan)
    # PII that older detectors missed at ingest: the cycle checks that batch again.
    with store.transaction() as con:
        for rid, prompt in PII_PROMPTS.items():
            con.execute(
                "UPDATE interactions SET prompt = ? WHERE interaction_id = ?", [prompt, rid]
            )
        con.execute("UPDATE ingest_batches SET pii_detectors = 'older detectors'")
    return plan_id, plan


CYCLE_ROW_COLUMNS = ", ".join(
    "'{}' AS cell_key"
    if c == "cell_key"
    else ("metadata::VARCHAR AS metadata" if c == "metadata" else c)
    for c in quality.CYCLE_ROW_SCHEMA.names
)
"""The select list of a cycle row over the store's interactions (the cell is not compared)."""


def _window_tables(store: Store, plan: Plan, cycle: int = 2) -> dict[str, pa.Table]:
    """The cycle's rows (as ``cycle run`` reads its window), the consent ledger, the eval
    items."""
    start, end = cycle_window(plan, cycle)
    columns = CYCLE_ROW_COLUMNS
    with store.connect() as con:
        rows = con.sql(
            f"SELECT {columns} FROM interactions WHERE ts >= ? AND ts < ?", params=[start, end]
        ).to_arrow_table()
        events = con.sql(
            "SELECT user_id, ts, scope, action, policy_version, source FROM consent_events"
        ).to_arrow_table()
        items = con.sql(
            "SELECT item_id, eval_set, prompt, reference FROM eval_items"
        ).to_arrow_table()
    return {
        "cycle_rows": rows.cast(quality.CYCLE_ROW_SCHEMA.to_pyarrow()),
        "consent_events": events,
        "eval_items": items,
    }


def _removed(run: PortableRun) -> set[tuple[str, str, str]]:
    return {(r["interaction_id"], r["stage"], r["detail"]) for r in run.removed.to_pylist()}


def _texts(rows: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {r["interaction_id"]: (r["system"], r["prompt"], r["response"]) for r in rows}


def _versioned(rows: list[dict[str, Any]], plan: Plan) -> dict[str, tuple[Any, ...]]:
    """Kept rows as the dataset version stores them: under the student's system message when
    the plan replaces what production logged (the mix, which stays with the store, does it)."""
    replace = plan.goal.production_system == "plan"
    return {
        key: (plan.goal.system_message if replace else system, prompt, response)
        for key, (system, prompt, response) in _texts(rows).items()
    }


# -- the tests ------------------------------------------------------------------------------------


def test_the_cycle_keeps_the_same_rows_for_the_same_reasons_on_spark(
    spark: Any, store: Store, tmp_path: Path
) -> None:
    plan_id, plan = _workspace(store, tmp_path)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    cycle_removed = {
        (i, stage, detail)
        for i, stage, detail in store.fetch_all(
            "SELECT interaction_id, stage, detail FROM cycle_removed_rows"
            " WHERE run_id = ? AND stage <> 'mix'",
            [result.run_id],
        )
    }
    cycle_kept = _texts(
        store.fetch_dicts(
            "SELECT interaction_id, system, prompt, response FROM dataset_rows"
            " WHERE version_id = ? AND source = 'production'",
            [result.dataset_version],
        )
    )
    cycle_funnel = [
        (s.name, s.rows_in, s.rows_out)
        for s in result.stages
        if s.name not in ("window", "mix", "split")
    ]

    tables = _window_tables(store, plan)
    for name, table in tables.items():
        _spark_view(spark, name, table)
    on_spark = run_on_spark(spark, plan)
    duck = duckdb.connect()
    for name, table in tables.items():
        duck.register(name, table)
    on_duckdb = run_on_duckdb(duck, plan)

    for run in (on_spark, on_duckdb):
        assert _removed(run) == cycle_removed
        assert _versioned(run.kept.to_pylist(), plan) == cycle_kept
        assert [(s.name, s.rows_in, s.rows_out) for s in run.stages] == cycle_funnel
        assert run.redacted_again == len(PII_PROMPTS) - 1  # the Luhn-invalid card stays

    # Every stage did what the dataset plants, so the agreement is not trivial.
    why = on_spark.dropped()
    assert why["consent-none"].startswith("no training consent")
    assert why["rule-down"] == "neither rated thumbs-up nor accepted"
    assert why["rule-short"] == "response is 4 characters, outside 20–8000"
    assert why["rule-code-bad"].startswith("code block 1 does not parse")
    assert why["rule-german"] == "text looks like 'de', not one of en"
    assert why["rule-internal"] == "app = internal fails app not_in internal"
    assert why["rule-slow"] == "latency_ms = 9000 fails latency_ms < 5000"
    assert why["exact-1"] == "exact duplicate of exact-2"  # best rated kept
    assert why["same-moved"] == "near-duplicate of same-first (Jaccard 1.00)"
    assert re.fullmatch(r"near-duplicate of near-2 \(Jaccard 0\.9\d\)", why["near-1"])
    assert re.fullmatch(r"near-duplicate of chain-1 \(Jaccard 0\.9\d\)", why["chain-2"])
    assert re.fullmatch(r"near-duplicate of chain-1 \(Jaccard 0\.9\d\)", why["chain-3"])
    assert re.fullmatch(r"near-duplicate of trim-of \(Jaccard 0\.9\d\)", why["trim-o"])
    assert re.fullmatch(r"near-duplicate of vtab-1 \(Jaccard 0\.9\d\)", why["vtab-2"])
    assert why["eval-paste"] == "overlaps eval item e-1 (python-core) prompt: 100% of 13-grams"
    assert why["eval-short-item"] == (
        "overlaps eval item e-2 (python-core) prompt: 100% of 11-grams"
    )
    kept = set(cycle_kept)
    assert {"similar-1", "similar-2", "eval-part", "near-2", "chain-1", "same-first"} <= kept
    assert {f"base-{n:02d}" for n in range(24)} <= kept
    kept_texts = on_spark.kept.to_pylist()
    prompts = {r["interaction_id"]: r["prompt"] for r in kept_texts}
    assert "<CARD>" in prompts["pii-card"] and "4111 1111 1111 1112" in prompts["pii-card-typo"]
    for rid, kind in [
        ("pii-email", "EMAIL"),
        ("pii-phone", "PHONE"),
        ("pii-iban", "IBAN"),
        ("pii-ipv4", "IP"),
        ("pii-ipv6", "IP"),
        ("pii-ssn", "SSN"),
        ("pii-secret", "SECRET"),
        ("pii-bearer", "SECRET"),
        ("pii-url", "URL_CREDENTIALS"),
    ]:
        assert f"<{kind}>" in prompts[rid], (rid, prompts[rid])


def test_planted_pairs_have_the_jaccard_the_test_claims() -> None:
    rows = {r["interaction_id"]: f"{r['prompt']} {r['response']}" for r in _cycle_rows()}
    assert _jaccard(rows["same-moved"], rows["same-first"]) == 1.0
    assert 0.9 <= _jaccard(rows["near-1"], rows["near-2"]) < 0.95
    assert 0.8 <= _jaccard(rows["chain-2"], rows["chain-3"]) < 0.88
    assert 0.5 < _jaccard(rows["similar-1"], rows["similar-2"]) < 0.8
    others = [rows[f"base-{n:02d}"] for n in range(24)]
    assert max(_jaccard(a, b) for i, a in enumerate(others) for b in others[i + 1 :]) < 0.5


def test_pii_is_redacted_alike_on_spark_and_duckdb(spark: Any) -> None:
    edge_cases = [
        "é4111111111111111 beside a letter RE2 does not count as a word character",
        "tab\x0bthen 4111 1111 1111 1111",
        "a@b.co\n",
        "bEaReR abcdefghijklmnop1234 and DE89370400440532013000 and GB82 WEST 1234 5698 7654 32",
        "twice +1 (555) 123-4567 and +1 (555) 123-4567 again",
        None,
    ]
    corpus = [text for text, _ in CORPUS]
    # Texts with a non-ASCII character take the path that emulates RE2's ASCII \b.
    texts = corpus + [f"Grüße: {text}" for text in corpus] + edge_cases
    table = pa.table({"i": list(range(len(texts))), "t": pa.array(texts, pa.string())})
    _spark_view(spark, "pii_texts", table)
    backend = ibis.pyspark.connect(spark)
    source = backend.table("pii_texts")
    on_spark = backend.to_pyarrow(
        source.select("i", r=redacted(source.t, "pyspark")).order_by("i")
    ).column("r")
    assert on_spark.to_pylist() == redact_texts(texts).texts


def test_near_duplicates_on_spark_find_the_planted_pairs(spark: Any) -> None:
    """Issue 4's recall target on Spark: ≥ 0.95 of pairs at Jaccard ≥ 0.8, none below it."""
    rng = random.Random(5)
    texts = [" ".join(_words(rng, 60)) for _ in range(300)]
    for i in range(50):  # Jaccard 0.73 to 1.0
        words = texts[i].split()
        for _ in range(rng.randint(0, 3)):
            words[rng.randrange(len(words))] = rng.choice(_VOCABULARY)
        texts[-1 - i] = " ".join(words)
    ids = [f"t{i:03d}" for i in range(len(texts))]
    table = pa.table({"interaction_id": ids, "prompt": texts, "response": [""] * len(texts)})
    _spark_view(spark, "nd_texts", table)
    backend = ibis.pyspark.connect(spark)
    sets = shingle_sets(backend.table("nd_texts"), "pyspark")
    found = backend.to_pyarrow(near_duplicate_pairs(sets, "pyspark", threshold=0.8))
    pairs = {(a, b) for a, b in zip(found["a"].to_pylist(), found["b"].to_pylist(), strict=True)}
    sets_ = [_shingles(t) for t in texts]
    truth = {
        (ids[i], ids[j])
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if len(sets_[i] & sets_[j]) >= 0.8 * len(sets_[i] | sets_[j])
    }
    assert len(truth) >= 35
    assert len(pairs & truth) >= 0.95 * len(truth)
    assert pairs <= truth


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"\bab\b", "ab éab ab_", ["ab", "ab"]),  # é is not a word character in RE2
        (r"a\sb", "a\x0bb a b", ["a b"]),  # nor \x0B a space
        (r"x$", "x\n", []),  # $ is the end of the text
        (r"a.b", "a\rb a\nb", ["a\rb"]),  # . stops only at \n
        (r"a[\v]b", "a\x0bb a\u2028b", ["a\x0bb"]),  # \v is the vertical tab alone
        (r"[[]x", "[x x", ["[x"]),  # [ in a class is a literal
    ],
)
def test_java_regex_keeps_re2_meaning(
    spark: Any, pattern: str, text: str, matches: list[str]
) -> None:
    con = duckdb.connect()
    assert con.execute("SELECT regexp_extract_all(?, ?)", [text, pattern]).fetchone() == (matches,)
    found = spark.sql(
        "SELECT regexp_extract_all(:t, :p, 0) AS m", args={"t": text, "p": java_regex(pattern)}
    ).collect()[0]["m"]
    assert found == matches


def test_consent_stage_drops_the_unconsented_and_withdrawn() -> None:
    start = datetime(2027, 2, 1, tzinfo=UTC)
    rows = [
        {
            **dict.fromkeys(quality.CYCLE_ROW_SCHEMA.names),
            "interaction_id": f"i{i}",
            "user_id": f"u{i % 3}",
            "ts": start + timedelta(hours=i),
            "prompt": f"How do I sort list {i} of records?",
            "response": f"Use sorted(records) for list {i} of records.",
            "feedback": "up",
        }
        for i in range(9)
    ]
    events = [
        {
            "user_id": user,
            "ts": start,
            "scope": "training",
            "action": action,
            "policy_version": "1",
            "source": "EU",
        }
        for user, action in [("u1", "grant"), ("u2", "grant"), ("u2", "withdraw")]
    ]
    duck = duckdb.connect()
    duck.register("cycle_rows", pa.Table.from_pylist(rows, quality.CYCLE_ROW_SCHEMA.to_pyarrow()))
    duck.register("consent_events", pa.Table.from_pylist(events))
    run = run_on_duckdb(duck, starter_plan("python_coding_assistant"), eval_items=None)
    assert set(run.dropped("consent")) == {"i0", "i3", "i6", "i2", "i5", "i8"}
    assert "Decontamination had no eval items" in " ".join(run.warnings)
