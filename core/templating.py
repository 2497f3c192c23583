"""User-written templates: one sandboxed Jinja environment, with limits on what a render costs.

Prompt templates (``generation.prompt_template``) and LLM-judge rubrics come from people and
files Flywheel does not fully trust (a shared plan, an API caller), so they never render in a
plain ``jinja2.Environment`` — there ``{{ cycler.__init__.__globals__.os.popen('id').read() }}``
runs a shell. They render here, in Jinja's ``ImmutableSandboxedEnvironment`` narrowed further:

* **names**: the values the caller passes and ``range`` only (no ``cycler``, ``joiner``,
  ``lipsum``, ``namespace`` or ``dict``); no ``include``, ``import`` or ``extends``;
* **attributes**: the plain methods of strings and mappings in ``_SAFE_METHODS`` and the loop
  variable's fields; nothing starting with ``_``, no ``format``, nothing of any other object;
* **filters**: the plain ones of ``TEMPLATE_FILTERS`` (no ``attr``, ``format``, ``center``,
  ``indent``, ``wordwrap``, ``batch``, ``sum``…);
* **size**: the output is at most ``template_max_output_chars`` characters (a setting), every
  string or list built by ``*``, ``+``, ``~``, ``join`` or ``replace`` too, and all of them
  together at most ``_WORK_FACTOR`` times that; ``%`` formatting of strings is refused, and so
  are numbers beyond ``_MAX_INT_BITS`` bits;
* **work**: loop iterations and calls (macros, methods, filters) at most ``MAX_TEMPLATE_STEPS``.

Breaking a limit raises ``TemplateLimitError``; anything else that stops a render (a syntax
error, an unknown name, a refused attribute) raises ``UserTemplateError``.

What a plan's template may *say* is narrower still, and a lint matter: ``template_problems``
reads the template's syntax tree and allows only names it is given (the axis values), literals,
attribute or item lookups with a literal key, the filters of ``PLAIN_FILTERS``, ``~``, ``+`` and
``-``, comparisons and tests, and ``if`` / ``for`` blocks. No call, assignment, macro, block,
filter section or ``with``: a prompt needs none of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2 import TemplateSyntaxError as _JinjaSyntaxError
from jinja2.filters import FILTERS as _JINJA_FILTERS
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

from core.errors import FlywheelError, TemplateLimitError, UserTemplateError
from core.settings import settings

__all__ = [
    "MAX_TEMPLATE_STEPS",
    "PLAIN_FILTERS",
    "TEMPLATE_FILTERS",
    "max_output_chars",
    "render_user_template",
    "template_problems",
    "user_template_environment",
]

MAX_TEMPLATE_STEPS = 10_000
_WORK_FACTOR = 4
_MAX_INT_BITS = 4096

# Filters whose result is at most a small multiple of their input; each is metered.
TEMPLATE_FILTERS: frozenset[str] = frozenset(
    {
        "abs",
        "capitalize",
        "count",
        "d",
        "default",
        "dictsort",
        "e",
        "escape",
        "first",
        "float",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "reject",
        "replace",
        "reverse",
        "round",
        "select",
        "sort",
        "string",
        "striptags",
        "title",
        "trim",
        "truncate",
        "unique",
        "upper",
        "wordcount",
    }
)

# What lint lets a plan's template use: the filters that only reshape a value.
PLAIN_FILTERS: frozenset[str] = frozenset(
    {
        "capitalize",
        "count",
        "d",
        "default",
        "dictsort",
        "e",
        "escape",
        "first",
        "items",
        "join",
        "last",
        "length",
        "lower",
        "replace",
        "sort",
        "string",
        "title",
        "trim",
        "truncate",
        "unique",
        "upper",
        "wordcount",
    }
)

_SAFE_METHODS: dict[type, frozenset[str]] = {
    str: frozenset(
        {
            "capitalize",
            "endswith",
            "lower",
            "lstrip",
            "rstrip",
            "split",
            "startswith",
            "strip",
            "title",
            "upper",
        }
    ),
    dict: frozenset({"get", "items", "keys", "values"}),
}

_ITER = "__flywheel_iter"
_CONCAT = "__flywheel_concat"


def max_output_chars() -> int:
    """The most characters one render of a user template may produce (a setting)."""
    return settings.template_max_output_chars


# -- the budget of one render ------------------------------------------------------------------


@dataclass
class _Budget:
    steps: int
    chars: int
    limit: int
    what: str

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateLimitError(
                f"{self.what} loops or calls more than {MAX_TEMPLATE_STEPS:,} times; "
                "a template may only use the axis values and plain filters."
            )

    def size(self, n: int) -> None:
        """Account for a built value of ``n`` characters or items, before it is built."""
        if n > self.limit:
            raise TemplateLimitError(
                f"{self.what} builds a text of {n:,} characters, over the limit of "
                f"{self.limit:,} (FLYWHEEL_TEMPLATE_MAX_OUTPUT_CHARS)."
            )
        self.chars -= n
        if self.chars < 0:
            raise TemplateLimitError(
                f"{self.what} builds more than {_WORK_FACTOR * self.limit:,} characters of "
                "text in all; a template may only use the axis values and plain filters."
            )


_BUDGET: ContextVar[_Budget | None] = ContextVar("flywheel_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # compiled user templates only run inside render_user_template
        raise UserTemplateError("A user template may only be rendered by render_user_template.")
    return budget


def _sized(value: object) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


def _metered_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _metered_concat(*parts: object) -> str:
    texts = [str(p) for p in parts]
    _budget().size(sum(map(len, texts)))
    return "".join(texts)


def _metered_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)  # keeps jinja's pass_context / pass_eval_context marks
    def run(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        result = fn(*args, **kwargs)
        size = _sized(result)
        if size is not None:
            budget.size(size)
        return result

    return run


def _join_size(value: Iterable[Any], separator: object) -> tuple[list[Any], int]:
    items = list(value)
    size = sum(len(str(v)) for v in items) + len(str(separator)) * max(0, len(items) - 1)
    return items, size


def _filters() -> dict[str, Callable[..., Any]]:
    chosen = {name: _JINJA_FILTERS[name] for name in TEMPLATE_FILTERS}
    join, replace = chosen["join"], chosen["replace"]

    @functools.wraps(join)
    def checked_join(
        eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None
    ) -> Any:
        items, size = _join_size(value, d)
        _budget().size(size)
        return join(eval_ctx, items, d, attribute)

    @functools.wraps(replace)
    def checked_replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> Any:
        text, old, new = str(s), str(old), str(new)
        hits = text.count(old) if old else len(text) + 1
        if count is not None:
            hits = min(hits, max(count, 0))
        _budget().size(len(text) + hits * max(0, len(new) - len(old)))
        return replace(eval_ctx, text, old, new, count)

    chosen["join"] = checked_join
    chosen["replace"] = checked_replace
    return {name: _metered_filter(name, fn) for name, fn in chosen.items()}


# -- the environment ---------------------------------------------------------------------------


class _Metering(NodeTransformer):
    """Routes every loop and every ``~`` through the render's budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(
            nodes.Name(_ITER, "load"), [node.iter], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(
            nodes.Name(_CONCAT, "load"), list(node.nodes), [], None, None, lineno=node.lineno
        )

    def visit_Extends(self, node: nodes.Extends) -> nodes.Node:
        raise _JinjaSyntaxError("a user template cannot extend another template", node.lineno)

    def visit_Include(self, node: nodes.Include) -> nodes.Node:
        raise _JinjaSyntaxError("a user template cannot include another template", node.lineno)

    def visit_Import(self, node: nodes.Import) -> nodes.Node:
        raise _JinjaSyntaxError("a user template cannot import another template", node.lineno)

    def visit_FromImport(self, node: nodes.FromImport) -> nodes.Node:
        raise _JinjaSyntaxError("a user template cannot import another template", node.lineno)


class _UserTemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox of user templates; see the module docstring for what it refuses."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.globals.clear()
        self.globals.update({"range": safe_range, _ITER: _metered_iter, _CONCAT: _metered_concat})
        self.filters = _filters()

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, LoopContext):
            return True
        for kind, allowed in _SAFE_METHODS.items():
            if isinstance(obj, kind):
                return attr in allowed
        return False

    def wrap_str_format(self, value: Any) -> None:
        """No ``str.format`` or ``format_map`` at all: a width in a format spec builds any size
        of text (``is_safe_attribute`` refuses the methods themselves)."""
        return None

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().step()
        result = super().call(__context, __obj, *args, **kwargs)
        size = _sized(result)
        if size is not None:
            _budget().size(size)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "%" and isinstance(left, str):
            raise UserTemplateError(
                "A user template cannot format strings with %; write the values in place."
            )
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _sized(seq) is not None and isinstance(times, int):
                    budget.size(len(seq) * max(times, 0))
            if _is_int(left) and _is_int(right) and _bits(left) + _bits(right) > _MAX_INT_BITS:
                raise TemplateLimitError(
                    f"{budget.what} builds a number over {_MAX_INT_BITS} bits."
                )
        if (
            operator == "**"
            and _is_int(left)
            and _is_int(right)
            and right > 0
            and _bits(left) * right > _MAX_INT_BITS
        ):
            raise TemplateLimitError(f"{budget.what} builds a number over {_MAX_INT_BITS} bits.")
        if operator == "+" and _sized(left) is not None and _sized(right) is not None:
            budget.size(len(left) + len(right))
        return super().call_binop(context, operator, left, right)

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        metered = _Metering().visit(source)
        metered.set_environment(self)
        return super()._generate(metered, name, filename, defer_init)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bits(value: int) -> int:
    return max(1, abs(value).bit_length())


@functools.cache
def user_template_environment() -> ImmutableSandboxedEnvironment:
    """The one environment every user-written template compiles in (shared, immutable)."""
    return _UserTemplateEnvironment()


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> Any:
    return user_template_environment().from_string(source)


def render_user_template(source: str, values: Mapping[str, Any], *, what: str) -> str:
    """Render a user-written template with ``values`` in the sandbox, within its limits.

    ``what`` names the template in messages ("The prompt template"). Raises
    TemplateLimitError when the render would exceed a limit, UserTemplateError when the
    template does not parse, names an unknown value or reaches for something the sandbox
    refuses.
    """
    limit = max_output_chars()
    budget = _Budget(MAX_TEMPLATE_STEPS, _WORK_FACTOR * limit, limit, what)
    token = _BUDGET.set(budget)
    try:
        template = _compiled(source)
        chunks: list[str] = []
        produced = 0
        for chunk in template.generate(**values):
            produced += len(chunk)
            if produced > limit:
                raise TemplateLimitError(
                    f"{what} renders more than {limit:,} characters "
                    "(FLYWHEEL_TEMPLATE_MAX_OUTPUT_CHARS)."
                )
            chunks.append(chunk)
        return "".join(chunks)
    except FlywheelError:
        raise
    except _JinjaSyntaxError as exc:
        raise UserTemplateError(
            f"{what} does not parse (line {exc.lineno}): {exc.message}."
        ) from None
    except RecursionError:
        raise TemplateLimitError(f"{what} nests or recurses too deeply.") from None
    except MemoryError:
        raise TemplateLimitError(f"{what} needs more memory than a template may use.") from None
    except Exception as exc:  # untrusted code: every way it fails is the template's fault
        raise UserTemplateError(f"{what} cannot be rendered: {_reason(exc)}") from None
    finally:
        _BUDGET.reset(token)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


# -- what a plan's template may say (lint) -----------------------------------------------------

_PLAIN_TESTS = frozenset(
    {
        "defined",
        "undefined",
        "none",
        "string",
        "number",
        "integer",
        "eq",
        "ne",
        "equalto",
        "in",
        "lower",
        "upper",
        "odd",
        "even",
        "divisibleby",
        "true",
        "false",
    }
)
_LOOP_FIELDS = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "previtem", "nextitem"}
)
_ALLOWED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.If,
    nodes.For,
    nodes.Name,
    nodes.Const,
    nodes.List,
    nodes.Tuple,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Filter,
    nodes.Test,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Add,
    nodes.Sub,
    nodes.Keyword,
)
_WHAT: dict[type[nodes.Node], str] = {
    nodes.Call: "calls a function or method",
    nodes.Assign: "sets a variable",
    nodes.AssignBlock: "sets a variable",
    nodes.Macro: "defines a macro",
    nodes.CallBlock: "calls a macro",
    nodes.Block: "defines a block",
    nodes.Extends: "extends another template",
    nodes.Include: "includes another template",
    nodes.Import: "imports another template",
    nodes.FromImport: "imports another template",
    nodes.FilterBlock: "filters a section",
    nodes.With: "opens a with block",
    nodes.Mul: "multiplies",
    nodes.Pow: "raises to a power",
    nodes.Mod: "uses % (modulo or string formatting)",
    nodes.Div: "divides",
    nodes.FloorDiv: "divides",
    nodes.Slice: "slices a value",
    nodes.Dict: "builds a mapping",
}


def template_problems(source: str, names: Iterable[str]) -> list[str]:
    """What a user template does beyond using ``names`` and plain filters, one sentence each
    with its line; empty when it only does that (or when it is empty).

    Allowed: the ``names``, literals, ``loop`` fields inside a ``for``, attribute and item
    lookups with a literal key that does not start with ``_``, the filters of
    ``PLAIN_FILTERS`` with literal or name arguments, comparisons, tests, ``and`` / ``or`` /
    ``not``, ``~``, ``+`` / ``-``, inline ``if``, and ``if`` / ``for`` blocks.
    """
    try:
        tree = user_template_environment().parse(source)
    except _JinjaSyntaxError as exc:
        return [f"does not parse (line {exc.lineno}): {exc.message}"]
    known = set(names)
    problems: list[str] = []

    def report(node: nodes.Node, text: str) -> None:
        line = f"{text} (line {node.lineno})"
        if line not in problems:
            problems.append(line)

    def visit(node: nodes.Node, scope: frozenset[str], in_loop: bool) -> None:
        if not isinstance(node, _ALLOWED_NODES):
            report(node, _WHAT.get(type(node), f"uses {type(node).__name__.lower()}"))
            return
        if isinstance(node, nodes.Name):
            if (
                node.ctx == "load"
                and node.name not in scope
                and not (in_loop and node.name == "loop")
            ):
                report(node, f"uses '{node.name}', which is not one of {', '.join(sorted(known))}")
            return
        if isinstance(node, nodes.Getattr):
            if node.attr.startswith("_"):
                report(node, f"reaches for the hidden attribute '{node.attr}'")
            elif (
                isinstance(node.node, nodes.Name)
                and node.node.name == "loop"
                and node.attr not in _LOOP_FIELDS
            ):
                report(node, f"uses loop.{node.attr}")
            visit(node.node, scope, in_loop)
            return
        if isinstance(node, nodes.Getitem):
            key = node.arg
            if not isinstance(key, nodes.Const) or not isinstance(key.value, str | int):
                report(node, "looks up an item by a computed key")
            elif isinstance(key.value, str) and key.value.startswith("_"):
                report(node, f"reaches for the hidden item '{key.value}'")
            visit(node.node, scope, in_loop)
            return
        if isinstance(node, nodes.Filter) and node.name not in PLAIN_FILTERS:
            report(node, f"uses the filter '{node.name}' (plain filters: {_plain_list()})")
        if isinstance(node, nodes.Test) and node.name not in _PLAIN_TESTS:
            report(node, f"uses the test '{node.name}'")
        if isinstance(node, nodes.Filter | nodes.Test) and (node.dyn_args or node.dyn_kwargs):
            report(node, f"passes computed arguments to '{node.name}'")
        if isinstance(node, nodes.For):
            if node.recursive:
                report(node, "loops recursively")
            visit(node.iter, scope, in_loop)
            inner = scope | {n.name for n in node.target.find_all(nodes.Name)}
            for child in [*node.body, *node.else_]:
                visit(child, inner, True)
            if node.test is not None:
                visit(node.test, inner, True)
            return
        for child in node.iter_child_nodes():
            visit(child, scope, in_loop)

    visit(tree, frozenset(known), False)
    return problems


def _plain_list() -> str:
    return ", ".join(sorted(PLAIN_FILTERS))
