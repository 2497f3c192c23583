"""How core is put together: the exception family its docstring draws is the one the code
raises, and core never imports streamlit (the CLI and the documents run without it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import core.errors as errors
from core.errors import FlywheelError

CORE = Path(__file__).resolve().parent.parent / "core"


def _drawn_tree() -> dict[str, int]:
    """Each class the docstring draws, with its depth in the tree."""
    drawn = {}
    root = None
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^[\s│├└─]*?([A-Z]\w+)\s{2,}", line)
        if found:
            column = found.start(1)
            root = column if root is None else root
            drawn[found.group(1)] = (column - root) // 4
    return drawn


def test_every_error_of_flywheel_is_drawn_in_the_tree_under_its_parent() -> None:
    """Every FlywheelError subclass defined anywhere in core is drawn, one level below its
    base class (a user reading the tree learns what a page or the CLI may catch)."""
    drawn = _drawn_tree()
    assert drawn.get("FlywheelError") == 0
    defined = {}
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.bases:
                base = node.bases[0]
                if isinstance(base, ast.Name):
                    defined[node.name] = base.id
    family = {"FlywheelError"}
    while True:
        more = {name for name, base in defined.items() if base in family} - family
        if not more:
            break
        family |= more
    for name in family - {"FlywheelError"}:
        assert name in drawn, f"{name} is missing from core/errors.py's tree"
        assert drawn[name] == drawn[defined[name]] + 1, f"{name} is not drawn under its base"
    assert issubclass(errors.AccessError, FlywheelError)


def test_core_never_imports_streamlit() -> None:
    """No module of core imports streamlit, at the top or inside a function: the dashboard
    is one front end of core, the command line another."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            if any(n == "streamlit" or n.startswith("streamlit.") for n in names):
                offenders.append(f"{path.relative_to(CORE.parent)}:{node.lineno}")
    assert offenders == []
