"""Graders: turn one model output for one eval item into a score in 0..1, or an error.

    exact           the output equals the reference (surrounding whitespace ignored)
    normalised      equal after Unicode NFKC, case folding, collapsed whitespace and trimmed
                    punctuation
    regex           the output matches the item's ``labels.regex`` (else the reference as a pattern)
    json_schema     the output is JSON valid against the item's ``labels.schema``
    python_parses   the output's Python code (fenced blocks, else the whole text) parses
    python_tests    that code passes the item's ``labels.tests`` in a sandboxed subprocess
    llm_judge       a judge model scores the output with a rubric (scored by the eval runner,
                    which owns the endpoint; see ``judge_messages`` and ``parse_judge_score``)

A grader that cannot grade (no reference, no tests, a broken schema) returns an error and no
score; the run records it and goes on. A candidate's code that fails, times out or breaks the
sandbox's rules scores 0: that is the model's failure, not the grader's.

``python_tests`` runs the code in an OS sandbox (``core.sandbox``: bubblewrap, no network, no view
of the store, the project or the environment, limits on processes, memory, CPU, disk and time)
and takes its verdict only from the sandbox's signed answer. Where no sandbox can be made, the
grade is an error and the code is not run.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from core.errors import EvalError, SandboxUnavailable, UserTemplateError
from core.sandbox import run_python_tests
from core.templating import render_user_template

__all__ = [
    "DEFAULT_RUBRIC",
    "GRADERS",
    "METRIC_GRADERS",
    "Grade",
    "GraderSpec",
    "JudgeAgreement",
    "cohens_kappa",
    "extract_python",
    "grade_output",
    "grader_for_metric",
    "judge_agreement",
    "judge_messages",
    "normalise_text",
    "parse_judge_score",
]


@dataclass(frozen=True)
class Grade:
    """One grader's verdict on one output: a score in 0..1, or the error that stopped it."""

    score: float | None
    error: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class GraderSpec:
    """A grader's name, whether its scores are binary, and what it needs from an item."""

    name: str
    binary: bool
    needs: str
    help: str


GRADERS: dict[str, GraderSpec] = {
    g.name: g
    for g in [
        GraderSpec("exact", True, "reference", "Output equals the reference."),
        GraderSpec(
            "normalised", True, "reference", "Equal after case, whitespace and Unicode folding."
        ),
        GraderSpec("regex", True, "labels.regex or reference", "Output matches a pattern."),
        GraderSpec("json_schema", True, "labels.schema", "Output is JSON valid against a schema."),
        GraderSpec("python_parses", True, "nothing", "Output's Python code parses."),
        GraderSpec(
            "python_tests", True, "labels.tests", "Code passes the item's tests (sandboxed)."
        ),
        GraderSpec("llm_judge", False, "a judge model", "A judge scores with a rubric (0..1)."),
    ]
}

# The plan's gate metrics and the grader each reads; any other metric names a grader itself
# (results imported from elsewhere may carry their own grader names).
METRIC_GRADERS: dict[str, str] = {
    "parse_rate": "python_parses",
    "tests_pass_rate": "python_tests",
    "pass_rate": "python_tests",
    "judge_score": "llm_judge",
    "exact_match": "exact",
    "normalised_match": "normalised",
    "regex_match": "regex",
    "json_valid": "json_schema",
}


def grader_for_metric(metric: str) -> str:
    """The grader whose scores a gate's metric reads."""
    return METRIC_GRADERS.get(metric, metric)


# -- text graders ------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding punctuation and quotes trimmed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    collapsed = re.sub(r"\s+", " ", folded).strip()
    return collapsed.strip(" .,;:!?\"'`")


def _exact(output: str, item: Mapping[str, Any]) -> Grade:
    reference = item.get("reference")
    if reference is None:
        return Grade(None, "the item has no reference to compare with")
    return Grade(float(output.strip() == str(reference).strip()))


def _normalised(output: str, item: Mapping[str, Any]) -> Grade:
    reference = item.get("reference")
    if reference is None:
        return Grade(None, "the item has no reference to compare with")
    return Grade(float(normalise_text(output) == normalise_text(str(reference))))


def _regex(output: str, item: Mapping[str, Any]) -> Grade:
    labels = item.get("labels") or {}
    pattern = labels.get("regex") if isinstance(labels, dict) else None
    pattern = pattern if pattern is not None else item.get("reference")
    if not pattern:
        return Grade(None, "the item has no labels.regex and no reference pattern")
    try:
        compiled = re.compile(str(pattern), re.DOTALL)
    except re.error as exc:
        return Grade(None, f"the item's pattern does not compile: {exc}")
    return Grade(float(compiled.search(output) is not None))


_JSON_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def _json_schema(output: str, item: Mapping[str, Any]) -> Grade:
    labels = item.get("labels") or {}
    schema = labels.get("schema") if isinstance(labels, dict) else None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError:
            return Grade(None, "the item's labels.schema is not JSON")
    if not isinstance(schema, dict):
        return Grade(None, "the item has no labels.schema (a JSON schema object)")
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return Grade(None, f"the item's schema is invalid: {exc.message}")
    text = output.strip()
    fenced = _JSON_FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Grade(0.0, detail=f"not JSON: {exc.msg}")
    errors = sorted(validator_class(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        return Grade(0.0, detail=f"{where}: {errors[0].message}")
    return Grade(1.0)


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_python(output: str) -> str:
    """The Python code of an output: its fenced blocks joined, else the whole text."""
    blocks = _FENCE.findall(output)
    return "\n\n".join(b.rstrip() for b in blocks) + "\n" if blocks else output


def _python_parses(output: str, item: Mapping[str, Any]) -> Grade:
    code = extract_python(output)
    if not code.strip():
        return Grade(0.0, detail="no code")
    try:
        ast.parse(code)
    except SyntaxError as exc:
        return Grade(0.0, detail=f"SyntaxError: {exc.msg} (line {exc.lineno})")
    return Grade(1.0)


# -- code tests --------------------------------------------------------------------------------


def _python_tests(output: str, item: Mapping[str, Any]) -> Grade:
    labels = item.get("labels") or {}
    tests = labels.get("tests") if isinstance(labels, dict) else None
    if not tests or not str(tests).strip():
        return Grade(None, "the item has no labels.tests to run")
    code = extract_python(output)
    if not code.strip():
        return Grade(0.0, detail="no code")
    try:
        result = run_python_tests(code, str(tests))
    except SandboxUnavailable as exc:
        return Grade(None, str(exc))
    return Grade(float(result.passed), detail=result.reason)


# -- the judge ---------------------------------------------------------------------------------

DEFAULT_RUBRIC = """You grade an answer to a user's request.

Request:
{{ prompt }}
{% if reference %}
A reference answer:
{{ reference }}
{% endif %}
Answer to grade:
{{ output }}

Rate how correct and helpful the answer is, from {{ scale_min }} (wrong or useless) to \
{{ scale_max }} (correct and complete). Reply with one line "Score: N" and then one sentence \
saying why."""


def judge_messages(
    rubric: str,
    item: Mapping[str, Any],
    output: str,
    *,
    scale: tuple[int, int] = (1, 5),
) -> list[dict[str, str]]:
    """The judge's chat messages: the rubric rendered with the item and the output, in the
    sandbox of user templates (core.templating).

    Raises EvalError when the rubric does not parse, names an unknown value, reaches for
    something the sandbox refuses or exceeds a limit.
    """
    try:
        text = render_user_template(
            rubric,
            {
                "prompt": item.get("prompt", ""),
                "reference": item.get("reference") or "",
                "output": output,
                "labels": item.get("labels") or {},
                "scale_min": scale[0],
                "scale_max": scale[1],
            },
            what="The judge's rubric",
        )
    except UserTemplateError as exc:
        raise EvalError(
            f"{exc} A rubric may use prompt, reference, output, labels, scale_min and scale_max."
        ) from exc
    return [{"role": "user", "content": text}]


_SCORE_PATTERNS = (
    re.compile(r"score\W{0,3}\s*(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"score\W{0,3}\s*(-?\d+(?:\.\d+)?)", re.I),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"^\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*$", re.M),
)


def parse_judge_score(text: str | None, *, scale: tuple[int, int] = (1, 5)) -> float | None:
    """A judge's reply as a score in 0..1, or None when no score on the scale can be read.

    Reads JSON ({"score": 4}), "Score: 4", "Score: 4/5", "8/10", "4 out of 5" or a bare number
    on its own line; a score "x/N" with N ≠ the scale's top is read as the fraction x/N.
    """
    if not text or not text.strip():
        return None
    low, high = scale
    body = text.strip()
    fenced = _JSON_FENCE.match(body)
    candidate = fenced.group(1) if fenced else body
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("score"), int | float):
        return _on_scale(float(data["score"]), None, low, high)
    if isinstance(data, int | float) and not isinstance(data, bool):
        return _on_scale(float(data), None, low, high)
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(body)
        if match:
            groups = match.groups()
            denominator = float(groups[1]) if len(groups) > 1 and groups[1] else None
            return _on_scale(float(groups[0]), denominator, low, high)
    return None


def _on_scale(value: float, denominator: float | None, low: int, high: int) -> float | None:
    if denominator is not None and denominator != high:
        if denominator <= 0 or not 0 <= value <= denominator:
            return None
        return value / denominator
    if not low <= value <= high or high <= low:
        return None
    return (value - low) / (high - low)


@dataclass(frozen=True)
class JudgeAgreement:
    """How often the judge agrees with human labels (pass = score ≥ 0.5) and Cohen's kappa."""

    n: int
    agreement: float | None
    kappa: float | None
    table: tuple[tuple[int, int], tuple[int, int]] = field(default=((0, 0), (0, 0)))


def cohens_kappa(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Cohen's kappa of two raters' labels; None when it is undefined (chance agreement 1)."""
    if len(a) != len(b):
        raise ValueError("two raters need labels on the same items")
    n = len(a)
    if n == 0:
        return None
    categories = sorted(set(a) | set(b))
    observed = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def judge_agreement(judge: Sequence[float], human: Sequence[float]) -> JudgeAgreement:
    """Agreement and Cohen's kappa of judge and human scores on the same outputs."""
    if len(judge) != len(human):
        raise ValueError("judge and human scores must be paired")
    a = [int(s >= 0.5) for s in judge]
    b = [int(s >= 0.5) for s in human]
    n = len(a)
    table = (
        (
            sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 0),
            sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1),
        ),
        (
            sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0),
            sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 1),
        ),
    )
    if n == 0:
        return JudgeAgreement(0, None, None, table)
    agreement = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    return JudgeAgreement(n, agreement, cohens_kappa(a, b), table)


# -- dispatch ----------------------------------------------------------------------------------

_LOCAL: dict[str, Callable[[str, Mapping[str, Any]], Grade]] = {
    "exact": _exact,
    "normalised": _normalised,
    "regex": _regex,
    "json_schema": _json_schema,
    "python_parses": _python_parses,
    "python_tests": _python_tests,
}


def grade_output(grader: str, output: str, item: Mapping[str, Any]) -> Grade:
    """Grade one output with a local grader; an unexpected failure is the grader's error.

    Raises EvalError for an unknown grader name (and for llm_judge, which the runner scores).
    """
    function = _LOCAL.get(grader)
    if grader == "llm_judge":
        raise EvalError("llm_judge needs a judge model: the eval runner scores it.")
    if function is None:
        known = ", ".join(GRADERS)
        raise EvalError(f"Unknown grader '{grader}'; use one of {known}.")
    try:
        return function(output, item)
    except Exception as exc:  # a grader bug must not stop the run
        return Grade(None, f"grader failed: {type(exc).__name__}: {exc}")
