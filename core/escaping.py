"""One escaper per output: Markdown, HTML, CSV, chart text, SQL identifiers and JSON paths.

Whatever a user or a model wrote (a plan's axis names, a gate's name, a slice label, an audit
detail) reaches a document, an export or a query only through these functions, so that it is
shown as text and never read as markup, a formula, a link or SQL:

* ``markdown_text`` / ``markdown_code`` / ``markdown_fenced``: inside a Markdown paragraph or
  table cell, as a code span, as a fenced block;
* ``html_text``: HTML text or attribute value (the HTML templates autoescape with the same rule);
* ``csv_cell`` / ``csv_text``: a CSV cell that a spreadsheet never evaluates: a text starting
  with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading apostrophe;
* ``chart_text``: a Plotly label, title or hover text: Plotly reads ``<a href>``, ``<b>`` and
  ``<br>`` in them as markup (a live link inside the chart's SVG), so ``&``, ``<`` and ``>``
  become entities, which Plotly shows as the characters;
* ``sql_identifier`` / ``sql_string``: a name or a text inside SQL that cannot hold bound
  parameters (DuckDB views, ``json_object`` keys);
* ``json_path``: the path of one member of a JSON object by its exact name (a JSON pointer,
  which DuckDB's ``json_extract`` reads; no name can reach a wildcard or a nested member).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

from markupsafe import Markup, escape

__all__ = [
    "CSV_FORMULA_PREFIXES",
    "chart_text",
    "csv_cell",
    "csv_text",
    "html_text",
    "json_path",
    "markdown_code",
    "markdown_fenced",
    "markdown_text",
    "sql_identifier",
    "sql_string",
]

# -- Markdown ----------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!&])")


def markdown_text(value: object) -> str:
    """User text safe inside a Markdown paragraph or table cell: one line, specials escaped
    (no emphasis, link, image, HTML tag, entity or cell break can come out of it)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def markdown_code(value: object) -> str:
    """An identifier as a Markdown code span that no backtick or pipe in it can break."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    if not text:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_fenced(value: object) -> str:
    """A multi-line text as a fenced block whose fence is longer than any backtick run in it."""
    text = str(value).rstrip("\n")
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}text\n{text}\n{fence}"


# -- HTML --------------------------------------------------------------------------------------


def html_text(value: object) -> Markup:
    """User text as HTML text or a quoted attribute value: ``& < > " '`` as entities."""
    return escape(value)


# -- CSV ---------------------------------------------------------------------------------------

CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """One CSV cell as text that a spreadsheet shows and never evaluates: a text that starts
    like a formula gets a leading apostrophe; None is the empty cell; numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(CSV_FORMULA_PREFIXES) else text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A CSV document: the header row, then each row, every cell through ``csv_cell``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([csv_cell(name) for name in header])
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return out.getvalue()


# -- charts ------------------------------------------------------------------------------------


def chart_text(value: object) -> str:
    """User text as a Plotly label, title or hover text: shown as written, never as markup."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- SQL and JSON paths ------------------------------------------------------------------------


def sql_identifier(name: str) -> str:
    """A table or column name as a quoted SQL identifier, whatever characters it holds."""
    if "\x00" in name:
        raise ValueError(f"{name!r}: a name cannot hold a NUL character")
    return '"' + name.replace('"', '""') + '"'


def sql_string(text: str) -> str:
    """A text as a SQL string literal (for SQL that cannot take a bound parameter)."""
    if "\x00" in text:
        raise ValueError(f"{text!r}: a SQL string cannot hold a NUL character")
    return "'" + text.replace("'", "''") + "'"


def json_path(name: str) -> str:
    """The JSON pointer of the member ``name`` of an object: exactly that member, whatever
    characters it holds (``"``, ``.``, ``*``, ``/``); for ``json_extract_string`` and kin."""
    return "/" + name.replace("~", "~0").replace("/", "~1")
