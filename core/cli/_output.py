"""Text for people: tables and records.

What --json prints keeps the code names (DESIGN.md's contract); what a person reads names each
column, field, stage, state and decision by its label in core.labels, and shows a missing value
as "—", never "None".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.labels import label, label_path, show

if TYPE_CHECKING:
    from core.lint import LintReport


def cell(value: Any, *, code: bool = False) -> str:
    """One value as a person reads it, on one line; a code value (a stage, state, decision,
    backend) by its label."""
    text = label(value) if code and value is not None and value != "" else show(value)
    return " ↵ ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, codes: Sequence[str] = ()
) -> str:
    """Rows as aligned columns under their labels; numbers to the right."""
    header = [label(c) for c in columns]
    body = [[cell(row.get(c), code=c in codes) for c in columns] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *body, strict=True)]
    numeric = [
        any(_is_number(row.get(c)) for row in rows)
        and all(row.get(c) is None or _is_number(row.get(c)) for row in rows)
        for c in columns
    ]
    return "\n".join(
        "  ".join(
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(line, widths, numeric, strict=True)
        ).rstrip()
        for line in [header, *body]
    )


def record(fields: dict[str, Any], *, codes: Sequence[str] = (), indent: str = "  ") -> str:
    """A key/value record, one field a line: ``  Label:  value``."""
    labels = {key: label(key) + ":" for key in fields}
    width = max((len(text) for text in labels.values()), default=0)
    return "\n".join(
        f"{indent}{labels[key].ljust(width)}  {cell(value, code=key in codes)}"
        for key, value in fields.items()
    )


def lint_lines(report: LintReport) -> list[str]:
    """Each finding with its place in the plan by its labels, and the path that the plan file
    spells (``Eval gates › 3 › Ratio to teacher (gates[2].ratio)``)."""
    return [
        f"{label(f.severity)}: "
        + (f"{label_path(f.path)} ({f.path}): " if f.path else "")
        + f"{f.message} [{f.code}]"
        for f in report.findings
    ]
