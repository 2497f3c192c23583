"""A cycle: each stage alone, the whole run, its funnel, atomicity, consent and erasure."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import duckdb
import ibis
import pytest
from cycle_helpers import EVAL_QUESTION, build_workspace, cycle_plan, interaction

from core import cycles, quality
from core.access import local_operator
from core.consent import forget_user
from core.cycles import (
    StageRecord,
    cycle_window,
    pipeline_rules,
    run_cycle,
    run_stages,
    why_dropped,
)
from core.datasets import get_version
from core.errors import CycleError
from core.plan import (
    Accepted,
    CodeParses,
    FieldCondition,
    Language,
    LengthBounds,
    NearDedup,
    PositiveFeedback,
    PositiveOrAccepted,
)
from core.plan_versions import load_plan, save_plan_version
from core.store import Store

# -- stages alone ---------------------------------------------------------------------------------


def _rows_con(rows: list[dict[str, Any]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    quality.install_stage_functions(con)
    columns = list(quality.CYCLE_ROW_SCHEMA.names)
    types = {
        "ts": "TIMESTAMPTZ",
        "accepted": "BOOLEAN",
        "latency_ms": "BIGINT",
        "input_tokens": "BIGINT",
        "output_tokens": "BIGINT",
        "cost_usd": "DOUBLE",
    }
    con.execute(
        "CREATE TABLE t (" + ", ".join(f"{c} {types.get(c, 'VARCHAR')}" for c in columns) + ")"
    )
    for row in rows:
        full = {"ts": "2027-01-10T00:00:00Z", "user_id": "u", "cell_key": "{}", **row}
        con.execute(
            f"INSERT INTO t VALUES ({', '.join('?' for _ in columns)})",
            [full.get(c) for c in columns],
        )
    return con


def _dropped(con: duckdb.DuckDBPyConnection, verdict: ibis.Table) -> dict[str, str]:
    sql = ibis.to_sql(verdict, dialect="duckdb")
    found = con.execute(f"SELECT interaction_id, fw_drop FROM ({sql}) WHERE fw_drop IS NOT NULL")
    return {str(i): str(why) for i, why in found.fetchall()}


def _table() -> ibis.Table:
    return ibis.table(quality.CYCLE_ROW_SCHEMA, name="t")


ROWS: list[dict[str, Any]] = [
    {
        "interaction_id": "up",
        "feedback": "up",
        "accepted": False,
        "prompt": "the question is",
        "response": "and the answer is in English with the words you expect",
    },
    {
        "interaction_id": "acc",
        "feedback": None,
        "accepted": True,
        "prompt": "q",
        "response": "short",
    },
    {
        "interaction_id": "down",
        "feedback": "down",
        "accepted": None,
        "prompt": "q",
        "response": "Die Antwort ist nicht das, was ich mit der Frage wollte und wie",
    },
    {
        "interaction_id": "code",
        "feedback": None,
        "accepted": False,
        "prompt": "q",
        "response": "```python\nfor i in range(3)\n    print(i)\n```",
        "latency_ms": 900,
        "metadata": '{"client": "vim"}',
    },
]


@pytest.mark.parametrize(
    ("rule", "dropped"),
    [
        (PositiveFeedback(), {"acc", "down", "code"}),
        (Accepted(), {"up", "down", "code"}),
        (PositiveOrAccepted(), {"down", "code"}),
        (LengthBounds(min_chars=6, max_chars=70), {"acc"}),
        (Language(languages=["en"]), {"down"}),
        (CodeParses(), {"code"}),
        (FieldCondition(field="latency_ms", op="<", value="500"), {"up", "acc", "down", "code"}),
        (FieldCondition(field="client", op="in", value="vim, emacs"), {"up", "acc", "down"}),
        (FieldCondition(field="feedback", op="!=", value="down"), {"down", "acc", "code"}),
    ],
)
def test_each_row_rule_drops_exactly_the_rows_it_should(rule: Any, dropped: set[str]) -> None:
    con = _rows_con(ROWS)
    found = _dropped(con, quality.rule_stage(_table(), rule))
    assert set(found) == dropped
    if isinstance(rule, CodeParses):
        assert "expected ':'" in found["code"]


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="knows en"):
        quality.rule_stage(_table(), Language(languages=["xx"]))


def test_exact_duplicates_keep_the_earliest_or_the_best_rated() -> None:
    con = _rows_con(
        [
            {
                "interaction_id": "a",
                "ts": "2027-01-01T00:00:00Z",
                "prompt": "Sort  a list",
                "response": "Use sorted.",
                "feedback": "down",
            },
            {
                "interaction_id": "b",
                "ts": "2027-01-02T00:00:00Z",
                "prompt": "sort a LIST",
                "response": "use   sorted.",
                "feedback": "up",
            },
            {
                "interaction_id": "c",
                "ts": "2027-01-03T00:00:00Z",
                "prompt": "sort a list",
                "response": "use sorted!",
                "feedback": None,
            },
        ]
    )
    earliest = _dropped(con, quality.exact_duplicate_stage(_table(), "earliest"))
    assert earliest == {"b": "exact duplicate of a"}
    best = _dropped(con, quality.exact_duplicate_stage(_table(), "best_rated"))
    assert best == {"a": "exact duplicate of b"}


def test_near_duplicates_name_a_kept_twin() -> None:
    words = " ".join(f"word{i}" for i in range(40))
    con = _rows_con(
        [
            {"interaction_id": "a", "ts": "2027-01-02T00:00:00Z", "prompt": words, "response": "x"},
            {
                "interaction_id": "b",
                "ts": "2027-01-01T00:00:00Z",
                "prompt": words + " extra",
                "response": "x",
            },
            {
                "interaction_id": "c",
                "ts": "2027-01-03T00:00:00Z",
                "prompt": "unrelated text",
                "response": "entirely",
            },
        ]
    )
    found = _dropped(
        con, quality.near_duplicate_stage(con, _table(), threshold=0.8, keep="earliest")
    )
    assert list(found) == ["a"]
    assert found["a"].startswith("near-duplicate of b (Jaccard 0.9")


def _word_shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = " ".join(text.lower().split()).split(" ")
    return {tuple(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _word_shingles(a), _word_shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_planted_near_duplicate_pairs_recall_and_false_removals() -> None:
    rng = random.Random(2027)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(5000)
    ]
    rows, pairs = [], []
    for n in range(900):
        words = [rng.choice(vocabulary) for _ in range(80)]
        twin = list(words)
        # 0 to 40 substituted words: Jaccard from 1 down to well under 0.3.
        for position in rng.sample(range(80), rng.randint(0, 40) if n % 3 else rng.randint(0, 3)):
            twin[position] = rng.choice(vocabulary)
        a, b = " ".join(words), " ".join(twin)
        rows.append({"interaction_id": f"a{n:04d}", "prompt": a, "response": "."})
        rows.append({"interaction_id": f"b{n:04d}", "prompt": b, "response": "."})
        pairs.append((f"a{n:04d}", f"b{n:04d}", _jaccard(a + " .", b + " .")))
    con = _rows_con(rows)
    dropped = _dropped(
        con, quality.near_duplicate_stage(con, _table(), threshold=0.8, keep="earliest")
    )
    high = [p for p in pairs if p[2] >= 0.8]
    low = [p for p in pairs if p[2] < 0.5]
    assert len(high) >= 250 and len(low) >= 200
    recall = sum(1 for a, b, _ in high if a in dropped or b in dropped) / len(high)
    false_removals = sum(1 for a, b, _ in low if a in dropped or b in dropped) / len(low)
    assert recall >= 0.95
    assert false_removals <= 0.01


def test_shared_word_3grams_give_the_verdicts_of_cutting_each_stage_alone() -> None:
    rng = random.Random(7)
    vocabulary = [f"w{n}" for n in range(300)]
    rows = []
    for n in range(60):
        words = [rng.choice(vocabulary) for _ in range(40)]
        rows.append({"interaction_id": f"r{n:02d}", "prompt": " ".join(words), "response": "ok"})
        if n % 4 == 0:  # a near-duplicate: one word changed, other case and punctuation
            words[5] = "changed"
            twin = ", ".join(words).upper() + "!"
            rows.append({"interaction_id": f"t{n:02d}", "prompt": twin, "response": "ok."})
    con = _rows_con(rows)
    # The cycle cuts the 3-grams once, for more rows than a later stage sees.
    tokens = quality.token_table(con, _table(), "shared_tokens")
    fewer = _table().filter(_table().interaction_id != "r01")
    alone = _dropped(con, quality.near_duplicate_stage(con, fewer, threshold=0.8, keep="earliest"))
    shared = _dropped(
        con,
        quality.near_duplicate_stage(con, fewer, threshold=0.8, keep="earliest", tokens=tokens),
    )
    assert alone == shared
    assert set(alone) == {f"t{n:02d}" for n in range(0, 60, 4)}
    # 37 of the 43 distinct 3-grams shared: one changed word breaks three.
    for twin, why in alone.items():
        assert why == f"near-duplicate of r{twin[1:]} (Jaccard 0.86)"


def test_words_split_at_punctuation_and_whitespace_in_any_case() -> None:
    con = duckdb.connect()
    text = "Sort(a, key=len)\tthen\nPRINT it;  done."
    [(words,)] = con.execute(f"SELECT {quality.words_sql('$t')}", {"t": text}).fetchall()
    assert words == ["sort", "a", "key", "len", "then", "print", "it", "done"]
    [(grams,)] = con.execute(
        f"SELECT {quality.word_trigrams_sql('$t')} = {quality.word_trigrams_sql('$u')}",
        {"t": text, "u": "sort a key len then print it done"},
    ).fetchall()
    assert grams


def test_decontamination_removes_a_planted_eval_item(store: Store, tmp_path: Path) -> None:
    build_workspace(store, tmp_path, [interaction(1)], synthetic=0)
    con_rows = [
        {
            "interaction_id": "pasted",
            "prompt": f"Homework: {EVAL_QUESTION}.",
            "response": "def fib(n): ...",
        },
        {
            "interaction_id": "clean",
            "prompt": "How do I write a fast Fibonacci function?",
            "response": "Use a loop that keeps two variables and runs in linear time.",
        },
    ]
    with store.connect() as con:
        con.execute(
            "CREATE TEMP TABLE t AS SELECT * FROM (VALUES (?, ?, ?), (?, ?, ?))"
            " v(interaction_id, prompt, response)",
            [v for r in con_rows for v in r.values()],
        )
        table = ibis.table(
            {"interaction_id": "string", "prompt": "string", "response": "string"}, name="t"
        )
        verdict = quality.contamination_stage(con, table, ngram=13, threshold=0.5, eval_sets=[])
        found = _dropped(con, verdict)
    assert list(found) == ["pasted"]
    assert "e-1 (python-core) prompt: 100% of 13-grams" in found["pasted"]


def test_pipeline_adds_missing_dedup_and_decontamination_with_defaults() -> None:
    plan = cycle_plan()
    plan.quality_filters = [PositiveOrAccepted(), NearDedup(threshold=0.9)]
    rules = [(r.rule, origin) for r, origin in pipeline_rules(plan)]
    assert rules == [
        ("pii_redacted", "pipeline"),
        ("positive_or_accepted", "plan"),
        ("exact_dedup", "default"),
        ("near_dedup", "plan"),
        ("decontamination", "default"),
    ]


def test_window_runs_from_the_previous_freeze_to_this_one() -> None:
    plan = cycle_plan()
    assert cycle_window(plan, 1) == (None, None)
    start, end = cycle_window(plan, 2)
    assert (start.isoformat(), end.isoformat()) == (  # type: ignore[union-attr]
        "2027-01-07T00:00:00+00:00",
        "2027-02-07T00:00:00+00:00",
    )
    with pytest.raises(CycleError, match="cycles 1 to 6"):
        cycle_window(plan, 9)


# -- the whole cycle ------------------------------------------------------------------------------


def _workspace_rows() -> list[dict[str, Any]]:
    rows = [interaction(n) for n in range(30)]
    rows.append(interaction(30, prompt=rows[0]["prompt"], response=rows[0]["response"]))
    rows.append(interaction(31, user_id="u-0", feedback="down", accepted=False))
    rows.append(
        interaction(
            32, prompt=f"Please: {EVAL_QUESTION}", response="Keep two variables and loop n times."
        )
    )
    rows.append(interaction(33, ts="2027-03-01T00:00:00Z"))  # outside cycle 2's window
    rows.append(interaction(35, user_id="u-3"))  # no consent
    rows.append(interaction(36, response="```python\ndef broken(:\n```"))
    return rows


def assert_funnel_reconciles(stages: list[StageRecord]) -> None:
    """Two inputs: the carried rows (stage 0) and the window's, whose stages chain up to the
    mix; the mix takes both."""
    carried, chain = stages[0], stages[1:]
    assert carried.name == "carried"
    mix = next(i for i, s in enumerate(chain) if s.name == "mix")
    for before, after in itertools.pairwise(chain[:mix]):
        assert after.rows_in == before.rows_out
    assert chain[mix].rows_in == chain[mix - 1].rows_out + carried.rows_out
    for before, after in itertools.pairwise(chain[mix:]):
        assert after.rows_in == before.rows_out


def test_cycle_end_to_end_funnel_reconciles(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    result = run_cycle(store, plan_id, 2, user=local_operator())
    stages = result.stages
    assert [s.name for s in stages][:4] == ["carried", "window", "consent", "pii_redacted"]
    assert stages[0].rows_in == stages[0].rows_out == 0  # no earlier version to carry
    assert stages[1].rows_in == 35  # every row but the one after the freeze
    assert_funnel_reconciles(stages)
    removed = dict(
        store.fetch_all(
            "SELECT position, count(*) FROM cycle_removed_rows WHERE run_id = ? GROUP BY 1",
            [result.run_id],
        )
    )
    for stage in stages:
        assert stage.rows_out == stage.rows_in - stage.removed + stage.added
        assert removed.get(stage.position, 0) == stage.removed
    assert stages[-1].rows_out == result.rows
    version = get_version(store, result.dataset_version)
    assert version.rows == version.train_rows + version.validation_rows == result.rows
    # 35 in the window; u-3 (no consent) has 8; then a filter each for i-030, -031, -032, -036.
    assert version.production_rows == 35 - 8 - 4
    reasons = {
        row["interaction_id"]: (row["stage"], row["detail"])
        for row in store.fetch_dicts(
            "SELECT interaction_id, stage, detail FROM cycle_removed_rows WHERE run_id = ?",
            [result.run_id],
        )
    }
    assert reasons["i-030"][0] == "exact_dedup"
    assert reasons["i-031"][0] == "positive_or_accepted"
    assert reasons["i-032"][0] == "decontamination"
    assert reasons["i-035"] == (
        "consent",
        "no training consent granted at or before the interaction",
    )
    assert reasons["i-036"][0] == "code_parses"
    assert version.lineage["window"][0].startswith("2027-01-07")
    assert version.composition["production"] == version.production_rows
    assert sum(c["production"] + c["synthetic"] for c in version.composition["cells"]) == (
        version.rows
    )


def test_pii_is_checked_again_only_for_batches_redacted_by_other_detectors(
    store: Store, tmp_path: Path
) -> None:
    plan_id = build_workspace(store, tmp_path, [interaction(n) for n in range(12)])
    # Text a detector finds, as if it had slipped past the detectors of its batch's ingest.
    with store.transaction() as con:
        con.execute(
            "UPDATE interactions SET prompt = prompt || ' mail me at jo@example.com'"
            " WHERE interaction_id = 'i-001'"
        )

    def pii_stage() -> tuple[dict[str, Any], str]:
        result = run_cycle(store, plan_id, 2, user=local_operator())
        stage = next(s for s in result.stages if s.name == "pii_redacted")
        [(prompt,)] = store.fetch_all(
            "SELECT prompt FROM dataset_rows WHERE version_id = ? AND interaction_id = 'i-001'",
            [result.dataset_version],
        )
        return stage.params, prompt

    # Today's detectors redacted the batch: redacting again would change nothing, so no row is
    # checked (the planted text shows the check really was skipped).
    params, prompt = pii_stage()
    assert params == {"rows_checked_again": 0, "texts_redacted_again": 0}
    assert "jo@example.com" in prompt
    # A batch redacted by older detectors is checked again, and the dataset holds the redaction.
    store.execute("UPDATE ingest_batches SET pii_detectors = 'older' WHERE kind = 'interactions'")
    params, prompt = pii_stage()
    assert params == {"rows_checked_again": 9, "texts_redacted_again": 1}
    assert "jo@example.com" not in prompt and "<EMAIL>" in prompt


def test_decontamination_may_run_before_near_duplicates(store: Store, tmp_path: Path) -> None:
    plan = cycle_plan()
    filters = plan.quality_filters
    near = next(i for i, f in enumerate(filters) if f.rule == "near_dedup")
    filters.append(filters.pop(near))  # decontamination, then near-duplicates
    rows = _workspace_rows()
    twin = interaction(37, prompt=rows[5]["prompt"] + " thanks", response=rows[5]["response"])
    plan_id = build_workspace(store, tmp_path, [*rows, twin], plan=plan)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    assert [s.name for s in result.stages][-4:-2] == ["decontamination", "near_dedup"]
    reasons = dict(
        store.fetch_all(
            "SELECT interaction_id, stage FROM cycle_removed_rows WHERE run_id = ?",
            [result.run_id],
        )
    )
    assert reasons["i-032"] == "decontamination"
    assert reasons["i-037"] == "near_dedup"  # rated alike: the earlier i-005 stays


def test_mix_follows_the_ratio_and_the_cap(store: Store, tmp_path: Path) -> None:
    plan = cycle_plan(original_to_new_ratio=0.5, max_dataset_size=12)
    plan_id = build_workspace(store, tmp_path, [interaction(n) for n in range(20)], plan=plan)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    mix = next(s for s in result.stages if s.name == "mix")
    # 15 consented rows; the cap of 12 keeps 12 // 1.5 = 8 production rows and 4 synthetic.
    assert (mix.rows_in, mix.removed, mix.added, mix.rows_out) == (15, 7, 4, 12)
    cut = store.fetch_all(
        "SELECT DISTINCT rule FROM cycle_removed_rows WHERE run_id = ? AND stage = 'mix'",
        [result.run_id],
    )
    assert cut == [("max_dataset_size=12",)]


def test_split_is_stratified_by_cell(store: Store, tmp_path: Path) -> None:
    plan = cycle_plan(validation_share=0.25)
    plan_id = build_workspace(store, tmp_path, [interaction(n) for n in range(40)], plan=plan)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    for cell in get_version(store, result.dataset_version).composition["cells"]:
        total = cell["train"] + cell["validation"]
        assert cell["validation"] == int(total * 0.25 + 0.5)


def test_same_cycle_over_same_data_gives_the_same_hash(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    first = run_cycle(store, plan_id, 2, user=local_operator())
    again = run_cycle(store, plan_id, 2, user=local_operator())
    assert (again.dataset_version, again.sha256, again.new_version) == (
        first.dataset_version,
        first.sha256,
        False,
    )
    other = Store(tmp_path / "other.duckdb")
    monkeypatch.setenv("FLYWHEEL_DB", str(other.path))
    (tmp_path / "b").mkdir()
    other_plan = build_workspace(other, tmp_path / "b", list(reversed(_workspace_rows())))
    assert run_cycle(other, other_plan, 2, user=local_operator()).sha256 == first.sha256


def test_cycle_refuses_without_an_approved_privacy_review(store: Store, tmp_path: Path) -> None:
    plan = cycle_plan()
    plan.consent.privacy_review.status = "in_review"
    plan_id = build_workspace(store, tmp_path, plan=plan)
    with pytest.raises(CycleError, match="privacy review is 'in_review', not approved"):
        run_cycle(store, plan_id, 2, user=local_operator())
    assert store.fetch_one("SELECT count(*) FROM cycle_runs") == (0,)


def test_a_failing_stage_leaves_the_store_as_it_was(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    tables = (
        "cycle_runs",
        "cycle_stages",
        "cycle_removed_rows",
        "dataset_versions",
        "dataset_rows",
        "interactions",
        "audit_log",
    )
    before = {t: store.fetch_one(f"SELECT count(*) FROM {t}") for t in tables}

    def broken(*_: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(cycles.STAGE_RUNNERS, "near_dedup", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_cycle(store, plan_id, 2, user=local_operator())
    assert {t: store.fetch_one(f"SELECT count(*) FROM {t}") for t in tables} == before
    monkeypatch.undo()
    assert run_cycle(store, plan_id, 2, user=local_operator()).new_version


def test_why_was_this_interaction_dropped(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    run_cycle(store, plan_id, 2, user=local_operator())
    (dropped,) = why_dropped(store, "i-031")
    assert dropped["outcome"] == "removed" and dropped["stage"] == "positive_or_accepted"
    assert "neither rated thumbs-up nor accepted" in dropped["why"]
    assert why_dropped(store, "i-033")[0]["outcome"] == "outside window"
    assert why_dropped(store, "i-001")[0]["outcome"] == "kept"
    with pytest.raises(CycleError, match="No interaction 'nope'"):
        why_dropped(store, "nope")


def test_forget_removes_dataset_rows_and_counts_them(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    result = run_cycle(store, plan_id, 2, user=local_operator())
    (in_dataset,) = store.fetch_one(  # type: ignore[misc]
        "SELECT count(*) FROM dataset_rows WHERE user_id = 'u-1'"
    )
    assert in_dataset > 0
    outcome = forget_user(store, "u-1", by=local_operator())
    assert outcome.dataset_rows_deleted == in_dataset
    assert store.fetch_one("SELECT count(*) FROM dataset_rows WHERE user_id = 'u-1'") == (0,)
    assert store.fetch_one("SELECT count(*) FROM cycle_removed_rows WHERE user_id = 'u-1'") == (0,)
    assert get_version(store, result.dataset_version).erased_rows == in_dataset


def test_stages_are_stored_with_the_run(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    result = run_cycle(store, plan_id, 2, user=local_operator())
    assert [s.to_dict() for s in run_stages(store, result.run_id)] == [
        s.to_dict() | {"seconds": round(s.seconds, 3)} for s in result.stages
    ]
    plan, _ = load_plan(store, plan_id)
    plan.consent.privacy_review.status = "rejected"
    save_plan_version(store, plan, note="rejected", user=local_operator(), plan_id=plan_id)
    with pytest.raises(CycleError, match="'rejected'"):
        run_cycle(store, plan_id, 3, user=local_operator())


def test_production_cycle_needs_the_privacy_reviewers_sign_off(
    store: Store, tmp_path: Path
) -> None:
    plan_id = build_workspace(store, tmp_path, _workspace_rows())
    plan, _ = load_plan(store, plan_id)
    plan.cadence.validation_share = 0.2
    _, version = save_plan_version(store, plan, note="edit", user=local_operator(), plan_id=plan_id)
    with pytest.raises(CycleError, match=f"approve this exact plan version \\(v{version}\\)"):
        run_cycle(store, plan_id, 2, user=local_operator())
    assert store.fetch_one("SELECT count(*) FROM dataset_versions") == (0,)


# -- the student's system message -----------------------------------------------------------------

TERSE = "You are a terse Python assistant."


def _system_by_row(store: Store, version_id: str) -> dict[str, tuple[str, str | None]]:
    rows = store.fetch_all(
        "SELECT row_key, source, system FROM dataset_rows WHERE version_id = ?", [version_id]
    )
    return {str(k): (str(source), s) for k, source, s in rows}


@pytest.mark.parametrize("policy", ["plan", "logged"])
def test_production_rows_take_the_plans_system_message_or_keep_the_logged_one(
    store: Store, tmp_path: Path, policy: str
) -> None:
    plan = cycle_plan()
    plan.goal.production_system = policy  # type: ignore[assignment]
    rows = [interaction(n) for n in range(12)]
    rows += [interaction(20, system=TERSE), interaction(21, system="You are a Python expert.")]
    plan_id = build_workspace(store, tmp_path, rows, plan=plan)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    by_row = _system_by_row(store, result.dataset_version)
    expert = "You are a Python expert."
    assert {s for source, s in by_row.values() if source == "synthetic"} == {expert}
    production = {k: s for k, (source, s) in by_row.items() if source == "production"}
    assert {"i-020", "i-021"} <= set(production)
    if policy == "plan":
        assert set(production.values()) == {expert}
    else:
        assert production["i-020"] == TERSE and production["i-021"] == expert
        assert {s for k, s in production.items() if k not in ("i-020", "i-021")} == {None}
    lineage = get_version(store, result.dataset_version).lineage["system_message"]
    others = len(production) - 2
    assert lineage["text"] == expert and lineage["production_rows"] == policy
    # Whatever the policy, the version says how many production rows logged something else:
    # one another text, the rest none.
    assert (lineage["logged_other"], lineage["logged_none"]) == (1, others)
    assert lineage["logged_different"] == 1 + others
    assert sum(c["rows"] for c in lineage["carried"]) == len(by_row)


def test_a_plan_without_a_system_message_trains_without_one(store: Store, tmp_path: Path) -> None:
    plan = cycle_plan()
    plan.goal.student_system_message = ""
    plan_id = build_workspace(store, tmp_path, [*map(interaction, range(12))], plan=plan)
    result = run_cycle(store, plan_id, 2, user=local_operator())
    assert set(s for _, s in _system_by_row(store, result.dataset_version).values()) == {None}
    lineage = get_version(store, result.dataset_version).lineage["system_message"]
    assert lineage["text"] is None and lineage["logged_different"] == 0


def test_a_new_system_message_makes_a_new_version(store: Store, tmp_path: Path) -> None:
    plan_id = build_workspace(store, tmp_path)
    first = run_cycle(store, plan_id, 1, user=local_operator())  # synthetic rows only
    plan, _ = load_plan(store, plan_id)
    plan.goal.student_system_message = "You are a senior Python reviewer."
    save_plan_version(store, plan, note="new prompt", user=local_operator(), plan_id=plan_id)
    second = run_cycle(store, plan_id, 1, user=local_operator())
    assert second.new_version and second.sha256 != first.sha256
    assert _system_by_row(store, second.dataset_version).popitem()[1][1] == plan.goal.system_message


def test_a_candidate_is_evaluated_under_its_training_data_not_a_newer_plan(
    store: Store, tmp_path: Path
) -> None:
    from core.evals import candidate_system_message

    plan_id = build_workspace(store, tmp_path)
    built = run_cycle(store, plan_id, 1, user=local_operator())
    plan, _ = load_plan(store, plan_id)
    plan.goal.student_system_message = "You are a senior Python reviewer."
    save_plan_version(store, plan, note="new prompt", user=local_operator(), plan_id=plan_id)
    assert candidate_system_message(store, plan_id, 1) == (
        "You are a Python expert.",
        f"its training data ({built.dataset_version})",
    )
    assert candidate_system_message(store, plan_id, 3)[0] == "You are a senior Python reviewer."
