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

The sandbox of ``python_tests`` runs the code and tests in a fresh temporary directory with a
timeout, an address-space limit, a file-size limit and no network: inside a new network
namespace (``unshare -rn``) where the system allows it, and always behind an audit hook that
refuses sockets, process spawning, native-library loading and writes outside that directory.
The hook is defence in depth, not a boundary against hostile code; the namespace is.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import jsonschema

from core.errors import EvalError, UserTemplateError
from core.settings import get_setting
from core.templating import render_user_template

__all__ = [
    "DEFAULT_RUBRIC",
    "GRADERS",
    "METRIC_GRADERS",
    "Grade",
    "GraderSpec",
    "JudgeAgreement",
    "SandboxResult",
    "cohens_kappa",
    "extract_python",
    "grade_output",
    "grader_for_metric",
    "judge_agreement",
    "judge_messages",
    "network_namespace_available",
    "normalise_text",
    "parse_judge_score",
    "run_python_tests",
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


# -- the sandbox -------------------------------------------------------------------------------

_BOOTSTRAP = r"""
import os, sys
ROOT = os.path.realpath(os.getcwd())
NONCE = sys.stdin.readline().strip()
SOLUTION = open("solution.py", encoding="utf-8").read()
TESTS = open("tests.py", encoding="utf-8").read()

def _inside(path):
    if isinstance(path, int):
        return True
    try:
        real = os.path.realpath(os.fsdecode(os.fspath(path)))
    except Exception:
        return False
    return real == ROOT or real.startswith(ROOT + os.sep)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rename", "os.replace", "os.mkdir", "os.rmdir", "os.chmod",
                "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
                "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move",
                "os.chflags", "os.setxattr", "os.removexattr", "os.mkfifo", "os.mknod"}
_NETWORK = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
            "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
            "socket.getnameinfo"}
_SPAWN = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
          "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "os.kill", "os.killpg"}

def _guard(event, args):
    if event == "open":
        path, mode, flags = (list(args) + [None, None, 0])[:3]
        writing = bool(mode) and any(c in str(mode) for c in "wax+")
        writing = writing or bool((flags or 0) & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the work directory: {path}")
    elif event in _PATH_EVENTS:
        for value in args:
            if isinstance(value, (str, bytes, os.PathLike)) and not _inside(value):
                raise PermissionError(f"sandbox: {event} outside the work directory: {value}")
    elif event in _NETWORK:
        raise PermissionError("sandbox: network access is not allowed")
    elif event in _SPAWN:
        raise PermissionError(f"sandbox: {event} is not allowed")

sys.addaudithook(_guard)
namespace = {"__name__": "solution"}
try:
    exec(compile(SOLUTION, "solution.py", "exec"), namespace)
except SystemExit as exc:
    print(f"the code called exit({exc.code}) while loading", file=sys.stderr)
    sys.exit(3)
namespace["__name__"] = "tests"
exec(compile(TESTS, "tests.py", "exec"), namespace)
for name, value in list(namespace.items()):
    if name.startswith("test") and callable(value):
        value()
print(NONCE)
"""


@dataclass(frozen=True)
class SandboxResult:
    """What running code and tests in the sandbox did."""

    passed: bool
    timed_out: bool
    returncode: int | None
    stderr: str
    isolated_network: bool

    @property
    def reason(self) -> str:
        """One line a reader understands."""
        if self.passed:
            return "tests passed"
        if self.timed_out:
            return "timed out"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {self.returncode}"
        if self.returncode == 0:
            return "the process ended before the tests finished"
        if self.returncode is not None and self.returncode < 0:
            last = f"killed by signal {-self.returncode} ({last})"
        return last[:300]


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` can give a subprocess its own, empty network namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        done = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _limits(memory_mb: int, cpu_s: int) -> Callable[[], None]:
    def apply() -> None:
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python_tests(
    code: str,
    tests: str,
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    network: Literal["auto", "namespace", "hook"] = "auto",
) -> SandboxResult:
    """Run ``code`` then ``tests`` (asserts, or ``test_*`` functions) in a sandboxed subprocess.

    The child gets a fresh temporary directory as its only writable place, a timeout (its
    process group is killed), an address-space limit, no network and no child processes.
    """
    timeout = float(get_setting("sandbox_timeout_s")) if timeout_s is None else timeout_s
    memory = int(get_setting("sandbox_memory_mb")) if memory_mb is None else memory_mb
    isolate = network == "namespace" or (network == "auto" and network_namespace_available())
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as tmp:
        work = Path(tmp)
        (work / "solution.py").write_text(code, encoding="utf-8")
        (work / "tests.py").write_text(tests, encoding="utf-8")
        (work / "_sandbox.py").write_text(_BOOTSTRAP, encoding="utf-8")
        command = [sys.executable, "-I", "-B", "_sandbox.py"]
        if isolate:
            command = [shutil.which("unshare") or "unshare", "-rn", *command]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        process = subprocess.Popen(
            command,
            cwd=tmp,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_limits(memory, max(1, math.ceil(timeout)) + 1),
        )
        try:
            stdout, stderr = process.communicate(nonce + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            with _suppress_lookup():
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return SandboxResult(False, True, None, "", isolate)
    passed = process.returncode == 0 and stdout.strip().endswith(nonce)
    return SandboxResult(passed, False, process.returncode, stderr[-4000:], isolate)


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, ProcessLookupError | PermissionError)


def _python_tests(output: str, item: Mapping[str, Any]) -> Grade:
    labels = item.get("labels") or {}
    tests = labels.get("tests") if isinstance(labels, dict) else None
    if not tests or not str(tests).strip():
        return Grade(None, "the item has no labels.tests to run")
    code = extract_python(output)
    if not code.strip():
        return Grade(0.0, detail="no code")
    result = run_python_tests(code, str(tests))
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
