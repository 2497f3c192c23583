"""User-written templates run in the sandbox: a plan's prompt template, a judge's rubric and the
Synthetic data page's preview cannot run code, read Flywheel's internals or exhaust memory, and
plan lint flags a template that does more than use the axis values and plain filters."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gen_helpers import store_plan, tiny_plan
from streamlit.testing.v1 import AppTest

from core.access import User
from core.errors import EvalError, GenerationError, TemplateLimitError, UserTemplateError
from core.generation import GenerationSpec, dry_run, render_prompt
from core.graders import judge_messages
from core.lint import lint_plan
from core.plan_versions import list_plans
from core.store import Store
from core.templating import render_user_template, template_problems

ROOT = Path(__file__).resolve().parent.parent
CELL = {"topic": "python", "difficulty": "easy"}
VALUES = {**CELL, "cell": CELL, "index": 0}


def _escapes(marker: Path) -> list[str]:
    """Templates that, rendered by a plain jinja2.Environment, run ``touch marker``."""
    command = f"touch {marker}"
    return [
        f"{{{{ cycler.__init__.__globals__.os.popen('{command}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__.os.popen('{command}').read() }}}}",
        f"{{{{ namespace.__init__.__globals__.os.popen('{command}').read() }}}}",
        f"{{{{ lipsum.__globals__['os'].popen('{command}').read() }}}}",
        f"{{{{ self._TemplateReference__context.cycler.__init__.__globals__.os"
        f".popen('{command}').read() }}}}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}"
        f"{{{{ c('{command}', shell=True).wait() }}}}"
        "{% endif %}{% endfor %}",
        f"{{{{ (cycler|attr('__init__')|attr('__globals__'))['os'].popen('{command}').read() }}}}",
        "{{ topic.__class__.__base__.__subclasses__() }}"
        f"{{{{ cycler.__init__.__globals__['os'].system('{command}') }}}}",
    ]


READS = [
    "{{ topic.__class__ }}",
    "{{ cell.__class__.__mro__ }}",
    "{{ cell['__class__'] }}",
    "{{ self.__init__ }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(topic) }}",
    "{{ topic.format_map(cell) }}",
    "{{ '%s' % topic }}",
    "{{ topic|attr('__class__') }}",
    "{{ topic|format(1) }}",
    "{% include '/etc/passwd' %}",
    "{% import '/etc/passwd' as x %}",
    "{% extends '/etc/passwd' %}",
    "{{ dict(a=1) }}",
]

HUGE = [
    "{{ 'a' * 1000000000 }}",
    "{{ range(1000000000)|list }}",
    "{{ range(99999)|join('x' * 99999) }}",
    "{{ (topic * 100000)|replace('p', 'q' * 100000) }}",
    "{% set s = 'a' * 600000 %}{{ s ~ s }}",
    "{{ 'a'|center(1000000000) }}",
    "{{ 'a'|indent(1000000000, true) }}",
    "{{ 'x'|wordwrap(1000000000) }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ 9 ** (9 ** 9) }}",
    "{{ 2 ** 10000000 }}",
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{{ topic }}{{ topic }}{{ topic }}{{ topic }}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(64) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for x in cell recursive %}{{ loop(cell) }}{% endfor %}",
    "{{ lipsum(1000000) }}",
]


@pytest.mark.parametrize("index", range(8))
def test_no_template_escape_runs_anything(tmp_path: Path, index: int) -> None:
    marker = tmp_path / "pwned"
    payload = _escapes(marker)[index]
    with pytest.raises(UserTemplateError):
        render_user_template(payload, VALUES, what="The prompt template")
    assert not marker.exists()


@pytest.mark.parametrize("payload", READS)
def test_internals_and_formatting_are_refused(payload: str) -> None:
    with pytest.raises(UserTemplateError):
        render_user_template(payload, VALUES, what="The prompt template")


@pytest.mark.parametrize("payload", HUGE)
def test_huge_renders_stop_at_once_with_a_limit_error(payload: str) -> None:
    started = time.monotonic()
    with pytest.raises(UserTemplateError) as raised:
        render_user_template(payload, VALUES, what="The prompt template")
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith(("The prompt template", "A user template"))


def test_the_output_cap_is_a_setting_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TEMPLATE_MAX_OUTPUT_CHARS", "50")
    assert render_user_template("{{ topic }}", VALUES, what="T") == "python"
    with pytest.raises(TemplateLimitError, match="more than 50 characters"):
        render_user_template("{% for v in range(30) %}{{ topic }}{% endfor %}", VALUES, what="T")
    with pytest.raises(TemplateLimitError, match="FLYWHEEL_TEMPLATE_MAX_OUTPUT_CHARS"):
        render_user_template("{{ topic * 20 }}", VALUES, what="T")


def test_plain_templates_still_render() -> None:
    text = render_user_template(
        "Write a {{ difficulty|upper }} question on {{ topic|title }} ({{ cell['topic'] }}, "
        "{{ cell.difficulty }}), variation {{ index + 1 }}."
        "{% if difficulty == 'easy' %} Keep it short.{% endif %}"
        "{% for name, value in cell|dictsort %} {{ loop.index }}:{{ name }}={{ value }}"
        "{% endfor %}{{ ' ' ~ topic|replace('py', 'Py') }} {{ topic.upper() }}",
        VALUES,
        what="T",
    )
    assert text == (
        "Write a EASY question on Python (python, easy), variation 1. Keep it short. "
        "1:difficulty=easy 2:topic=python Python PYTHON"
    )


def test_the_prompt_template_payload_in_a_plan_runs_nothing(store: Store, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plan = tiny_plan()
    plan.generation.prompt_template = _escapes(marker)[0]
    plan_id = store_plan(store, plan)
    spec = GenerationSpec.load(store, plan_id)
    with pytest.raises(GenerationError, match="The prompt template"):
        render_prompt(spec, spec.cells[0])
    with pytest.raises(GenerationError):
        dry_run(store, plan_id)
    assert not marker.exists()
    assert "TEMPLATE_UNSAFE" in {f.code for f in lint_plan(plan).errors}


def test_a_rubric_payload_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(EvalError, match="The judge's rubric"):
        judge_messages(_escapes(marker)[0], {"prompt": "p"}, "o")
    with pytest.raises(EvalError, match="The judge's rubric"):
        judge_messages("{{ output * 100000000 }}", {"prompt": "p"}, "o")
    assert not marker.exists()


def test_the_page_preview_runs_nothing_for_a_viewer(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    plan = tiny_plan()
    plan.generation.prompt_template = _escapes(marker)[0]
    store_plan(store, plan)
    viewer = User("Val", frozenset({"viewer"}))
    monkeypatch.setattr("pages._common.current_user", lambda: viewer)
    at = AppTest.from_file(str(ROOT / "pages" / "generation.py"), default_timeout=60)
    at.session_state["plan_id"] = list_plans(store)[0].plan_id
    at.run()
    assert not at.exception
    assert any("The prompt template" in str(e.value) for e in at.error)
    assert not marker.exists()


# -- lint --------------------------------------------------------------------------------------

NAMES = ["topic", "difficulty", "cell", "index"]


@pytest.mark.parametrize(
    "template",
    [
        "Write a {{ difficulty }} question about {{ topic }}.",
        "{{ topic|title }} {{ cell['topic'] }} {{ cell.difficulty|default('any') }} "
        "#{{ index + 1 }}",
        "{% if difficulty == 'hard' %}Be tricky.{% elif difficulty in ['easy'] %}Be kind."
        "{% else %}Be fair.{% endif %}",
        "{% for name, value in cell|items %}{{ loop.index }}. {{ name }}: {{ value }}{% endfor %}",
        "{{ topic ~ '/' ~ difficulty|upper }} {{ 'yes' if topic is string else 'no' }}",
        "",
    ],
)
def test_lint_accepts_plain_templates(template: str) -> None:
    assert template_problems(template, NAMES) == []


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{{ cycler.__init__.__globals__ }}", "hidden attribute '__globals__'"),
        ("{{ cycler }}", "uses 'cycler'"),
        ("{{ self }}", "uses 'self'"),
        ("{{ topic.upper() }}", "calls a function"),
        ("{{ topic|attr('x') }}", "the filter 'attr'"),
        ("{{ topic|format(1) }}", "the filter 'format'"),
        ("{{ topic * 3 }}", "multiplies"),
        ("{{ '%s' % topic }}", "%"),
        ("{% set x = topic %}{{ x }}", "sets a variable"),
        ("{% macro m() %}{% endmacro %}", "defines a macro"),
        ("{% include 'x' %}", "includes another template"),
        ("{% for i in range(3) %}{% endfor %}", "calls a function"),
        ("{{ cell[topic] }}", "computed key"),
        ("{{ cell['__class__'] }}", "hidden item"),
        ("{% for x in cell recursive %}{{ x }}{% endfor %}", "recursively"),
        ("{{ topic", "does not parse"),
        ("{% for x in cell %}{{ loop.cycle('a') }}{% endfor %}", "calls a function"),
        ("{{ topic|truncate(*cell) }}", "computed arguments"),
    ],
)
def test_lint_flags_what_a_template_does_beyond_axis_values(template: str, problem: str) -> None:
    problems = template_problems(template, NAMES)
    assert any(problem in p for p in problems), problems


def test_the_lint_finding_names_the_template_and_blocks_the_plan() -> None:
    plan = tiny_plan()
    plan.generation.prompt_template = "{{ topic.__class__ }} {{ difficulty }}"
    findings = [f for f in lint_plan(plan).findings if f.code == "TEMPLATE_UNSAFE"]
    assert [f.path for f in findings] == ["generation.prompt_template"]
    assert findings[0].severity == "error"
    assert "__class__" in findings[0].message and "line 1" in findings[0].message
