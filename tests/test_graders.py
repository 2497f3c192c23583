"""Each grader, the judge's score parsing and its agreement with human labels (the sandbox of
code tests has its own battery in test_sandbox.py)."""

from __future__ import annotations

import pytest
from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

from core.errors import EvalError
from core.graders import (
    cohens_kappa,
    extract_python,
    grade_output,
    judge_agreement,
    judge_messages,
    normalise_text,
    parse_judge_score,
)

ADD = "```python\ndef add(a, b):\n    return a + b\n```\nIt adds."
ADD_TESTS = "assert add(2, 3) == 5\n\ndef test_negative():\n    assert add(-1, 1) == 0\n"


def test_exact_and_normalised_match() -> None:
    item = {"reference": "Paris"}
    assert grade_output("exact", " Paris\n", item).score == 1.0
    assert grade_output("exact", "paris", item).score == 0.0
    assert grade_output("normalised", "  PARIS. ", item).score == 1.0
    assert grade_output("normalised", "Lyon", item).score == 0.0
    assert normalise_text("Ｐａｒｉｓ  is\tnice!") == "paris is nice"


def test_a_grader_without_its_input_records_an_error_not_a_score() -> None:
    for grader in ("exact", "normalised", "python_tests", "json_schema"):
        grade = grade_output(grader, "anything", {"labels": {}})
        assert grade.score is None and grade.error


def test_regex_uses_the_items_pattern_or_the_reference() -> None:
    assert grade_output("regex", "answer: 42", {"labels": {"regex": r"\b42\b"}}).score == 1.0
    assert grade_output("regex", "answer: 43", {"reference": r"4[0-2]"}).score == 0.0
    broken = grade_output("regex", "x", {"labels": {"regex": "("}})
    assert broken.score is None and "does not compile" in str(broken.error)


def test_json_schema_grader() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    item = {"labels": {"schema": schema}}
    assert grade_output("json_schema", '{"name": "Ada", "age": 36}', item).score == 1.0
    assert grade_output("json_schema", '```json\n{"name": "Ada", "age": 36}\n```', item).score == 1
    wrong = grade_output("json_schema", '{"name": "Ada", "age": "old"}', item)
    assert wrong.score == 0.0 and "age" in wrong.detail
    assert grade_output("json_schema", "not json", item).score == 0.0
    bad_schema = grade_output("json_schema", "{}", {"labels": {"schema": {"type": 12}}})
    assert bad_schema.score is None and "schema is invalid" in str(bad_schema.error)


def test_python_parses_reads_fenced_blocks_or_the_whole_text() -> None:
    assert grade_output("python_parses", ADD, {}).score == 1.0
    assert grade_output("python_parses", "x = [1, 2", {}).score == 0.0
    assert grade_output("python_parses", "```python\ndef f(:\n```", {}).score == 0.0
    assert extract_python("no fence: print(1)") == "no fence: print(1)"


def test_python_tests_pass_and_fail() -> None:
    item = {"labels": {"tests": ADD_TESTS}}
    assert grade_output("python_tests", ADD, item).score == 1.0
    wrong = grade_output("python_tests", ADD.replace("a + b", "a - b"), item)
    assert wrong.score == 0.0 and "AssertionError" in wrong.detail


def test_judge_score_parsing_is_robust() -> None:
    scale = (1, 5)
    assert parse_judge_score("Score: 5\nGreat.", scale=scale) == 1.0
    assert parse_judge_score("**Score:** 3/5 — partly right", scale=scale) == 0.5
    assert parse_judge_score('{"score": 2, "why": "wrong"}', scale=scale) == 0.25
    assert parse_judge_score("I'd give it 8/10.", scale=scale) == 0.8
    assert parse_judge_score("4 out of 5", scale=scale) == 0.75
    assert parse_judge_score("4", scale=scale) == 0.75
    assert parse_judge_score("Score: 9", scale=scale) is None  # off the scale
    assert parse_judge_score("I cannot grade this.", scale=scale) is None
    assert parse_judge_score("", scale=scale) is None


def test_the_rubric_template_sees_the_item_and_output() -> None:
    messages = judge_messages(
        "Q: {{ prompt }} R: {{ reference }} A: {{ output }} ({{ scale_min }}-{{ scale_max }})",
        {"prompt": "p", "reference": "r"},
        "o",
    )
    assert messages[0]["content"] == "Q: p R: r A: o (1-5)"
    with pytest.raises(EvalError, match="rubric"):
        judge_messages("{{ nope }}", {"prompt": "p"}, "o")


def test_cohens_kappa_matches_statsmodels() -> None:
    judge = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0]
    human = [1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0]
    table = [[0, 0], [0, 0]]
    for a, b in zip(judge, human, strict=True):
        table[a][b] += 1
    expected = sm_kappa(table).kappa
    assert cohens_kappa(judge, human) == pytest.approx(expected, rel=1e-9)
    agreement = judge_agreement([float(x) for x in judge], [float(x) for x in human])
    assert agreement.n == 12 and agreement.agreement == pytest.approx(9 / 12)
    assert agreement.kappa == pytest.approx(expected, rel=1e-9)
    assert cohens_kappa([1, 1], [1, 1]) is None


def test_unknown_grader_is_refused() -> None:
    with pytest.raises(EvalError, match="Unknown grader"):
        grade_output("vibes", "x", {})
