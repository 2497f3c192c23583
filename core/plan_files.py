"""Reading and writing plan files (JSON or YAML), with errors that name the field and reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from core.errors import PlanError
from core.plan import FILTER_KINDS, Plan

__all__ = [
    "dump_plan",
    "format_loc",
    "parse_plan",
    "plan_format_for",
    "read_plan_file",
    "validation_messages",
]

PlanFormat = Literal["json", "yaml"]


def plan_format_for(name: str) -> PlanFormat:
    """The plan format a file name implies; raises PlanError for other extensions."""
    suffix = Path(name).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in {".yaml", ".yml"}:
        return "yaml"
    raise PlanError(f"{name}: a plan file must end in .json, .yaml or .yml.")


def format_loc(loc: Sequence[int | str]) -> str:
    """A Pydantic error location as a plan path, e.g. ``gates[1].margin``."""
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(previous, int) and part in FILTER_KINDS:
            pass  # the discriminator tag of a quality filter is not part of the path
        elif not str(part).isidentifier():
            path += f"[{str(part)!r}]"  # an unknown key with spaces or newlines, quoted
        else:
            path += f".{part}" if path else part
        previous = part
    return path or "(plan)"


def validation_messages(error: ValidationError) -> list[tuple[str, str]]:
    """(path, reason) for each problem a ValidationError reports."""
    return [(format_loc(item["loc"]), item["msg"]) for item in error.errors()]


def parse_plan(text: str, fmt: PlanFormat, *, source: str = "plan") -> Plan:
    """Parse and validate a plan; raises PlanError naming the field and the reason."""
    data: Any
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(
                f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise PlanError(f"{source}: invalid YAML{where}: {problem}.") from None
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a plan file must hold a mapping of sections at the top.")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = validation_messages(exc)
        listed = "; ".join(f"{path}: {reason}" for path, reason in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PlanError(f"{source}: {listed}{more}.") from None


def read_plan_file(path: str | Path) -> Plan:
    """Read and validate a plan file; raises PlanError when unreadable or invalid."""
    file = Path(path)
    fmt = plan_format_for(file.name)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{file}: no such file.") from None
    except UnicodeDecodeError:
        raise PlanError(f"{file}: not UTF-8 text.") from None
    except OSError as exc:
        raise PlanError(f"{file}: cannot be read ({exc.strerror}).") from None
    return parse_plan(text, fmt, source=file.name)


def dump_plan(plan: Plan, fmt: PlanFormat) -> str:
    """The plan as a JSON or YAML document (derived fields left out)."""
    data = plan.to_data()
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
