"""The cycle's engine-specific stages as Ibis expressions that run on DuckDB and on Spark.

core.quality and core.privacy write PII redaction, the language guess, MinHash near-duplicates
and decontamination in DuckDB's own SQL (macros, list lambdas, ``hash()``), which is what
``cycle run`` uses on the store. Here the same stages are Ibis expressions built for a
dialect, ``"duckdb"`` or ``"pyspark"``, so that one definition compiles to both and gives the
same rows with the same reasons. What the two engines spell differently is chosen here:

- hashes: DuckDB's 64-bit ``hash()`` and Spark's 64-bit ``xxhash64()`` (Ibis' ``.hash()`` is
  Spark's 32-bit murmur3). The values differ, so the MinHash candidates of a borderline pair
  may differ between engines; every candidate is checked by its exact shingle Jaccard, and a
  pair at the threshold is a candidate with probability ≥ 0.98 (near-certain well above it),
  so the verdicts agree;
- regular expressions: DuckDB runs RE2, Spark Java's ``java.util.regex``. core.privacy's
  patterns are translated (``java_regex``): ``\\b`` and ``\\s`` keep RE2's ASCII meaning,
  ``$`` and ``.`` too, and ``(?i)`` folds case as RE2 does; group references in replacements
  are ``\\1`` in RE2 and ``$1`` in Java;
- functions with other names (``json_extract_string`` is ``get_json_object`` on Spark), and
  what Ibis 12 itself gets wrong or lacks: its ``strip()`` reaches Spark as a trim of the
  letters ``v`` and ``f``, it compiles ``bit_xor`` for DuckDB only, and it writes DuckDB
  lambdas in the arrow syntax DuckDB 2.0 takes only when asked (``DuckDBEngine`` asks, and
  puts the setting back). ``respelled`` carries core.quality's own expressions (exact
  duplicates, row rules) over to Spark;
- macros of the store: exact duplicates of rows kept already (a parent version's, which
  ``cycle run`` reads as stored ``fw_exact_key`` sketches) are matched on their normalised
  texts (``exact_text_key``), and their MinHash signatures are computed here as the new rows'
  are (``near_duplicates_in_reference``).

Validators (Luhn, ISO 13616 mod 97, phone digit counts, IPv6 groups) are array and string
expressions, no Python: mod 97 of a number of up to 72 digits is folded nine digits at a time.
A text's values are found with ``regexp_extract_all`` and those a validator accepts are
replaced everywhere in one ``regexp_replace`` of their ``\\Q…\\E`` alternation, as core.privacy
replaces each accepted value in turn.

Near-duplicates and decontamination compute their candidate pairs and overlaps in the engine;
the few verdicts come back to Python (which copy of a near-duplicate group is kept is a walk
over the pairs in keep order, as in core.quality) and return to the engine as a small table.
"""

from __future__ import annotations

import abc
import functools
import itertools
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import duckdb
import ibis
import ibis.expr.datatypes as dt
import ibis.expr.operations as ops
import ibis.expr.types as ir
import pyarrow as pa

from core import quality
from core.escaping import sql_identifier
from core.pipeline.stages import language_verdict
from core.privacy import DETECTORS, Detector, placeholder

__all__ = [
    "Dialect",
    "DuckDBEngine",
    "Engine",
    "SparkEngine",
    "contamination_stage",
    "exact_duplicate_stage",
    "exact_text_key",
    "java_regex",
    "language_of",
    "near_duplicate_pairs",
    "near_duplicate_stage",
    "near_duplicates_in_reference",
    "pii_stage",
    "redacted",
    "respelled",
    "row_rule_stage",
    "shingle_sets",
]

Dialect = Literal["duckdb", "pyspark"]

_DROP = "fw_drop"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_counter = itertools.count()


# -- what the engines spell differently -----------------------------------------------------------


@ibis.udf.scalar.builtin(name="hash", signature=((None,), dt.uint64))  # type: ignore[untyped-decorator]
def _duckdb_hash(value: Any) -> int:  # type: ignore[empty-body]
    """DuckDB's 64-bit hash of any value."""


@ibis.udf.scalar.builtin(name="hash", signature=((dt.int64, dt.int64), dt.uint64))  # type: ignore[untyped-decorator]
def _duckdb_hash2(a: int, b: int) -> int:  # type: ignore[empty-body]
    """DuckDB's 64-bit hash of two values."""


@ibis.udf.scalar.builtin(name="xxhash64", signature=((None,), dt.int64))  # type: ignore[untyped-decorator]
def _spark_hash(value: Any) -> int:  # type: ignore[empty-body]
    """Spark's 64-bit xxHash of any value."""


@ibis.udf.scalar.builtin(name="xxhash64", signature=((dt.int64, dt.int64), dt.int64))  # type: ignore[untyped-decorator]
def _spark_hash2(a: int, b: int) -> int:  # type: ignore[empty-body]
    """Spark's 64-bit xxHash of two values."""


@ibis.udf.scalar.builtin(  # type: ignore[untyped-decorator]
    name="regexp_extract_all", signature=((dt.string, dt.string, dt.int64), dt.Array(dt.string))
)
def _extract_all(text: str, pattern: str, group: int) -> list[str]:  # type: ignore[empty-body]
    """Every match of ``pattern`` (its ``group``), left to right: the same name and arguments
    in DuckDB and Spark."""


@ibis.udf.scalar.builtin(  # type: ignore[untyped-decorator]
    name="get_json_object", signature=((dt.string, dt.string), dt.string)
)
def _spark_json_field(json: str, path: str) -> str:  # type: ignore[empty-body]
    """Spark's get_json_object, DuckDB's json_extract_string."""


@ibis.udf.agg.builtin(name="bit_xor", signature=((None,), dt.int64))  # type: ignore[untyped-decorator]
def _bit_xor(value: Any) -> int:  # type: ignore[empty-body]
    """The XOR of a group's values (Ibis 12 compiles its own bit_xor only for DuckDB)."""


def _hash(dialect: Dialect, value: ir.Value) -> ir.IntegerValue:
    return _spark_hash(value) if dialect == "pyspark" else _duckdb_hash(value)


def _hash2(dialect: Dialect, a: ir.Value, b: ir.Value) -> ir.IntegerValue:
    return _spark_hash2(a, b) if dialect == "pyspark" else _duckdb_hash2(a, b)


_WORD = "[A-Za-z0-9_]"
_JAVA_BOUNDARY = f"(?:(?<={_WORD})(?!{_WORD})|(?<!{_WORD})(?={_WORD}))"
_RE2_SPACE = "\\t\\n\\f\\r "  # RE2's \s; Java's also holds \x0B


def java_regex(pattern: str, *, ascii_subject: bool = False) -> str:
    """An RE2 pattern as Java regex with the same matches (for the constructs core.privacy and
    core.quality use).

    RE2's ``\\b``, ``\\s`` and ``\\S`` are ASCII (Java 17's ``\\b`` counts Unicode letters)
    and its ``\\v`` is the vertical tab alone; its ``$`` is the end of the text (Java's also
    matches before a final line break) and its ``.`` stops only at ``\\n``; its ``(?i)``
    folds Unicode case (Java needs ``u``). With ``ascii_subject`` (the pattern only ever
    meets ASCII text) ``\\b`` stays Java's own, which agrees there and is five times faster
    than its emulation. Raises ValueError for constructs Java reads differently that this
    does not translate (POSIX classes, ``&&`` in a class).
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            if escaped == "s":
                out.append(_RE2_SPACE if in_class else f"[{_RE2_SPACE}]")
            elif escaped == "v":  # RE2's vertical tab; Java's \v is every vertical space
                out.append("\\x0B")
            elif escaped == "S" and not in_class:
                out.append(f"[^{_RE2_SPACE}]")
            elif escaped == "b" and not in_class:
                out.append("\\b" if ascii_subject else _JAVA_BOUNDARY)
            elif escaped in "Sb":
                raise ValueError(f"\\{escaped} inside a character class: {pattern!r}")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "[" and pattern.startswith("[:", i):
                raise ValueError(f"POSIX classes read differently in Java: {pattern!r}")
            if char == "&" and pattern.startswith("&&", i):
                raise ValueError(f"'&&' intersects classes in Java: {pattern!r}")
            if char == "[":  # a literal in RE2, a nested class in Java
                out.append("\\[")
                i += 1
                continue
            if char == "]" and out and out[-1] not in ("[", "[^"):
                in_class = False
            out.append(char)
        elif char == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
                continue
            out.append(char)
        elif char == "$":
            out.append("\\z")
        elif char == ".":
            out.append("[^\\n]")
        elif char == "(" and pattern.startswith("(?i)", i):
            out.append("(?iu)")
            i += 4
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _regex(dialect: Dialect, pattern: str, *, ascii_subject: bool = False) -> str:
    return java_regex(pattern, ascii_subject=ascii_subject) if dialect == "pyspark" else pattern


def _group_reference(dialect: Dialect, group: int) -> str:
    return f"${group}" if dialect == "pyspark" else f"\\{group}"


def _bind(value: ir.Value, body: Callable[[Any], ir.Value]) -> Any:
    """``body(value)`` with ``value`` evaluated once.

    Ibis inlines a column's expression wherever it is used, so a step that reads its input
    four times, nested ten deep, would grow as 4^10; a one-element array mapped by a lambda
    names the value once (core.privacy's macros use the same device).
    """
    return ibis.array([value]).map(body)[0]


# -- PII ------------------------------------------------------------------------------------------


def _digits(value: ir.StringValue) -> ir.StringValue:
    return value.re_replace("[^0-9]", "")


def _luhn_ok(candidate: ir.StringValue) -> ir.BooleanValue:
    def check(digits: Any) -> ir.BooleanValue:
        # From the right, every second digit doubled (index 1, 3, … of the reversed digits).
        doubled = (
            digits.reverse()
            .split("")
            .map(
                lambda c, i: ibis.ifelse(
                    i % 2 == 1,
                    c.cast("int64") * 2 - ibis.ifelse(c.cast("int64") >= 5, 9, 0),
                    c.cast("int64"),
                )
            )
        )
        return digits.length().between(13, 19) & (doubled.sums() % 10 == 0)

    return _bind(_digits(candidate), lambda digits: check(digits))


_MOD97_CHUNK = 9
_MOD97_DIGITS = 72  # 34 characters, two digits per letter, rounded up to whole chunks


def _iban_ok(candidate: ir.StringValue) -> ir.BooleanValue:
    def as_number(iban: Any) -> ir.StringValue:
        moved = iban.substr(4).concat(iban.substr(0, 4)).upper()
        letters = moved.split("").map(
            lambda ch: ibis.ifelse(
                (ch >= "0") & (ch <= "9"), ch, (ch.ascii_str() - 55).cast("string")
            )
        )
        return letters.join("")

    def mod97_is_one(digits: Any) -> ir.BooleanValue:
        # ISO 13616 mod 97 of the whole number, folded nine digits at a time (no reduce).
        remainder: ir.IntegerValue = ibis.literal(0, type="int64")
        for start in range(0, _MOD97_DIGITS, _MOD97_CHUNK):
            chunk = digits.substr(start, _MOD97_CHUNK).cast("int64")
            remainder = (remainder * 10**_MOD97_CHUNK + chunk) % 97
        return remainder == 1

    def check(iban: Any) -> ir.BooleanValue:
        number_ok = _bind(
            as_number(iban),
            lambda number: _bind(
                number.lpad(_MOD97_DIGITS, "0"), lambda digits: mod97_is_one(digits)
            ),
        )
        return iban.length().between(15, 34) & number_ok

    return _bind(candidate.replace(" ", ""), lambda iban: check(iban))


def _phone_ok(candidate: ir.StringValue) -> ir.BooleanValue:
    return _digits(candidate).length().between(9, 15)


def _ipv6_ok(dialect: Dialect) -> Callable[[ir.StringValue], ir.BooleanValue]:
    full = _regex(dialect, "^(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}$")
    dangling = _regex(dialect, "^:[^:]|[^:]:$")

    def ok(s: ir.StringValue) -> ir.BooleanValue:
        groups = s.split(":").filter(lambda g: g != "").length()
        compressed = (
            (s.length() >= 7)
            & ~s.contains(":::")
            & (s.length() - s.replace("::", "").length() == 2)
            & groups.between(2, 7)
            & ~s.re_search(dangling)
        )
        return s.re_search("[0-9]") & (s.re_search(full) | compressed)

    return ok


def _validator(dialect: Dialect, name: str) -> Callable[[ir.StringValue], ir.BooleanValue]:
    validators: dict[str, Callable[[ir.StringValue], ir.BooleanValue]] = {
        "fw_luhn_ok": _luhn_ok,
        "fw_iban_ok": _iban_ok,
        "fw_phone_ok": _phone_ok,
        "fw_ipv6_ok": _ipv6_ok(dialect),
    }
    if name not in validators:
        raise ValueError(f"no portable version of the validator {name}")
    return validators[name]


def _redaction_step(
    dialect: Dialect, detector: Detector, *, ascii_subject: bool
) -> Callable[[ir.StringValue], ir.StringValue]:
    """One detector's step, as core.privacy's ``fw_pii_apply`` macros do it."""
    pattern = _regex(dialect, detector.pattern, ascii_subject=ascii_subject)
    mark = placeholder(detector.pii_type)

    def step(x: ir.StringValue) -> ir.StringValue:
        guards = [x.contains(hint) for hint in detector.hints]
        guard: ir.BooleanValue = ibis.or_(*guards) if guards else ibis.literal(True)
        if detector.validator is None:
            replacement = _group_reference(dialect, 1) + mark if detector.keep_prefix else mark
            return ibis.ifelse(guard, x.re_replace(pattern, replacement), x)
        validate = _validator(dialect, detector.validator)
        found = _extract_all(x, pattern, detector.group).filter(lambda m: validate(m))

        def replace_accepted(accepted: Any) -> ir.StringValue:
            # Every accepted value, everywhere in the text: one pass over their alternation
            # (values of these detectors hold no backslash, so \Q…\E quotes them whole).
            alternation = ibis.literal("\\Q").concat(accepted.join("\\E|\\Q"), "\\E")
            return ibis.ifelse(accepted.length() > 0, x.re_replace(alternation, mark), x)

        replaced = _bind(found, lambda accepted: replace_accepted(accepted))
        return ibis.ifelse(guard & x.re_search(pattern), replaced, x)

    return step


def redacted(text: ir.StringValue, dialect: Dialect) -> ir.StringValue:
    """``text`` with every PII value replaced by its placeholder (core.privacy's detectors, in
    their order), as core.privacy's ``fw_redact`` does it on DuckDB."""

    def every_step(x: Any, ascii_subject: bool) -> ir.StringValue:
        any_pii = "|".join(
            f"(?:{_regex(dialect, d.pattern, ascii_subject=ascii_subject)})" for d in DETECTORS
        )
        value = x
        for detector in DETECTORS:
            value = _bind(value, _redaction_step(dialect, detector, ascii_subject=ascii_subject))
        return ibis.ifelse(x.re_search(any_pii).fill_null(False), value, x)

    def all_steps(x: Any) -> ir.StringValue:
        if dialect == "duckdb":
            return every_step(x, False)
        # Java's \b takes non-ASCII letters for word characters and RE2's does not; on ASCII
        # text they agree, and Java's own is much faster than the emulation.
        non_ascii = x.re_search("[^\\x00-\\x7F]").fill_null(False)
        return ibis.ifelse(non_ascii, every_step(x, False), every_step(x, True))

    # Ibis names a lambda's parameter after the Python one: the steps' ``x`` sit inside this
    # ``t``, and the validators' lambdas (m, c, i, ch, g) inside the steps.
    return _bind(text, lambda t: all_steps(t))


def pii_stage(rows: ir.Table, dialect: Dialect) -> ir.Table:
    """``rows`` plus ``fw_prompt``, ``fw_response``, ``fw_system``: the texts redacted again
    with today's detectors (nothing is removed)."""
    return rows.mutate(
        fw_prompt=redacted(rows.prompt, dialect),
        fw_response=redacted(rows.response, dialect),
        fw_system=redacted(rows.system, dialect),
    )


# -- row rules ------------------------------------------------------------------------------------


def language_of(text: ir.StringValue, dialect: Dialect) -> ir.StringValue:
    """The language code a text looks like (most of a language's frequent words, at least
    two), or ``und``: core.quality's ``fw_language`` as an expression."""
    # RE2's [[:alpha:]] is ASCII letters; Java reads "[:alpha:]" as a set of characters.
    words = text.lower().re_split("[^A-Za-z]+")
    codes = list(quality.LANGUAGES)

    def among(w: Any, frequent: list[str]) -> ir.IntegerValue:
        return w.filter(lambda word: word.isin(frequent)).length()

    def pick(w: Any) -> ir.StringValue:
        counts = [among(w, list(quality.LANGUAGES[code])) for code in codes]
        top = ibis.greatest(*counts)
        cases = [(top < 2, "und")] + [
            (c == top, code) for c, code in zip(counts, codes, strict=True)
        ]
        return ibis.cases(*cases)

    return _bind(words, pick)


_REGEX_OPS = (ops.RegexSearch, ops.RegexReplace, ops.RegexExtract, ops.RegexSplit)
_TRIMMED = "[ \\t\\n\\r\\x0B\\f]"  # what Ibis' strip() trims on DuckDB


def respelled(expr: ir.Table, dialect: Dialect) -> ir.Table:
    """An expression written for DuckDB (core.quality's stages) in the dialect's spelling:
    RE2 patterns as Java regex with the same matches, ``\\1`` group references as ``$1``,
    ``json_extract_string`` as Spark's ``get_json_object``, and ``strip()`` as a regular
    expression (Ibis 12 writes its characters as SQL escapes that Spark reads as the letters
    ``v`` and ``f``, so "cost of " would lose its "f")."""
    if dialect == "duckdb":
        return expr

    def respell(node: Any, children: dict[str, Any] | None) -> Any:
        current = node.copy(**children) if children else node
        if isinstance(current, _REGEX_OPS) and isinstance(current.pattern, ops.Literal):
            current = current.copy(
                pattern=ops.Literal(java_regex(current.pattern.value), dt.string)
            )
            if isinstance(current, ops.RegexReplace) and isinstance(
                current.replacement, ops.Literal
            ):
                replacement = re.sub(
                    r"\\(\d)", r"$\1", current.replacement.value.replace("$", "\\$")
                )
                current = current.copy(replacement=ops.Literal(replacement, dt.string))
        elif isinstance(current, ops.Strip):
            current = ops.RegexReplace(
                current.arg,
                ops.Literal(f"^{_TRIMMED}+|{_TRIMMED}+\\z", dt.string),
                ops.Literal("", dt.string),
            )
        elif isinstance(current, ops.ScalarUDF) and current.__func_name__ == "json_extract_string":
            document, path = current.args
            if isinstance(path, ops.Literal) and str(path.value).startswith("/"):
                path = ops.Literal(_spark_json_path(str(path.value)), dt.string)
            current = _spark_json_field(document, path).op()
        return current

    return expr.op().replace(respell).to_expr()


def _spark_json_path(pointer: str) -> str:
    """A JSON pointer of one member (core.escaping.json_path) as Spark's ``$['name']``.

    Raises ValueError for a name Spark's paths cannot spell (one holding ``'`` or ``]``).
    """
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    for name in parts:
        if "'" in name or "]" in name:
            raise ValueError(f"{name!r}: Spark's JSON paths cannot name a field holding ' or ]")
    return "$" + "".join(f"['{name}']" for name in parts)


def row_rule_stage(rows: ir.Table, rule: Any, dialect: Dialect) -> ir.Table:
    """A row rule of the plan as core.quality's ``rule_stage``, in expressions the dialect
    runs: ``rows`` plus ``fw_drop``. Code parsing calls ``fw_code_error``, which the engine
    must provide (core.portable registers it on each). Raises ValueError as rule_stage does."""
    if rule.rule != "language":
        return respelled(quality.rule_stage(rows, rule), dialect)
    return language_verdict(rows, rule, quality.LANGUAGES, lambda text: language_of(text, dialect))


def exact_duplicate_stage(
    rows: ir.Table,
    keep: Literal["earliest", "best_rated"],
    dialect: Dialect,
    *,
    reference: ir.Table | None = None,
    reference_label: str = "",
) -> ir.Table:
    """core.quality's exact_duplicate_stage in expressions the dialect runs: the same groups,
    tie-breaks and reasons. ``reference`` (``key``, ``prompt``, ``response``: rows kept
    already, e.g. those a cycle carries from its parent version) goes first, as there; rows
    are matched to it on their normalised texts (``exact_text_key``), since the store's
    ``fw_exact_key`` macro is DuckDB's alone."""
    keyed = None
    if reference is not None:
        keyed = reference.select(
            "key", exact_key=quality.exact_key(reference.prompt, reference.response)
        )
    verdict = quality.exact_duplicate_stage(
        rows, keep, reference=keyed, reference_label=reference_label
    )

    def text_keys(node: Any, children: dict[str, Any] | None) -> Any:
        current = node.copy(**children) if children else node
        if isinstance(current, ops.ScalarUDF) and current.__func_name__ == "fw_exact_key":
            prompt, response = current.args
            return exact_text_key(prompt.to_expr(), response.to_expr()).op()
        return current

    return respelled(verdict.op().replace(text_keys).to_expr(), dialect)


def exact_text_key(prompt: ir.StringValue, response: ir.StringValue) -> ir.StringValue:
    """The key two rows share exactly when their normalised prompts and responses are equal
    (core.quality's ``exact_key`` without the macro): the normalised prompt's length, then
    both texts, so that no two pairs of texts run together into one key."""
    normal_prompt = quality.normalised_text(prompt)
    return (
        normal_prompt.length()
        .cast("string")
        .concat(":", normal_prompt, quality.normalised_text(response))
    )


# -- running on an engine -------------------------------------------------------------------------


class Engine(abc.ABC):
    """Where the stages run: the dialect their expressions are built for, how to read a table,
    fetch a result, keep an intermediate table until ``release``, and hand the engine a small
    Python table (verdicts). An engine provides ``fw_code_error`` (core.quality's
    python_code_error), which the code-parsing rule calls."""

    dialect: Dialect

    @abc.abstractmethod
    def table(self, name: str) -> ir.Table:
        """The engine's table or view ``name``; raises the engine's own error when missing."""

    @abc.abstractmethod
    def fetch(self, expr: ir.Table) -> pa.Table:
        """The rows of ``expr``, in Python."""

    @abc.abstractmethod
    def count(self, expr: ir.Table) -> int:
        """How many rows ``expr`` has."""

    @abc.abstractmethod
    def keep(self, expr: ir.Table) -> ir.Table:
        """``expr`` computed once and kept in the engine; later stages read the kept rows."""

    @abc.abstractmethod
    def small_table(self, table: pa.Table) -> ir.Table:
        """A small Python table as a table of the engine."""

    @abc.abstractmethod
    def release(self) -> None:
        """Drop what ``keep`` and ``small_table`` made."""

    def _name(self) -> str:
        return f"fw_portable_{next(_counter)}"


class DuckDBEngine(Engine):
    """A DuckDB connection: expressions compiled to its SQL and run on it, as ``cycle run``
    runs its stages; intermediate tables are temporary tables."""

    dialect: Dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        quality.install_stage_functions(con)  # fw_code_error, as ``cycle run`` has it
        self._tables: list[str] = []
        self._views: list[str] = []
        # Ibis writes lambdas as ``x -> …``, which DuckDB 2.0 takes only when asked to.
        self._lambda_syntax = str(
            con.execute("SELECT current_setting('lambda_syntax')").fetchall()[0][0]
        )
        con.execute("SET SESSION lambda_syntax = 'ENABLE_SINGLE_ARROW'")

    def _sql(self, expr: ir.Table) -> str:
        return str(ibis.to_sql(expr, dialect="duckdb"))

    def table(self, name: str) -> ir.Table:
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain table or view name")
        arrow = self.con.sql(f"SELECT * FROM {sql_identifier(name)} LIMIT 0").to_arrow_table()
        return ibis.table(ibis.Schema.from_pyarrow(arrow.schema), name=name)

    def fetch(self, expr: ir.Table) -> pa.Table:
        return self.con.sql(self._sql(expr)).to_arrow_table()

    def count(self, expr: ir.Table) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM ({self._sql(expr)})").fetchall()[0][0])

    def keep(self, expr: ir.Table) -> ir.Table:
        name = self._name()
        self.con.execute(f"CREATE TEMP TABLE {name} AS {self._sql(expr)}")
        self._tables.append(name)
        return ibis.table(expr.schema(), name=name)

    def small_table(self, table: pa.Table) -> ir.Table:
        name = self._name()
        self.con.register(name, table)
        self._views.append(name)
        return ibis.table(ibis.Schema.from_pyarrow(table.schema), name=name)

    def release(self) -> None:
        while self._tables:
            self.con.execute(f"DROP TABLE IF EXISTS {self._tables.pop()}")
        while self._views:
            self.con.unregister(self._views.pop())
        self.con.execute(f"SET SESSION lambda_syntax = '{self._lambda_syntax}'")


class SparkEngine(Engine):
    """A Spark session through Ibis' PySpark backend; an intermediate table is computed at
    once and checkpointed (its lineage cut), so that a later stage neither recomputes it nor
    re-plans its expressions (Spark's cache does not recognise plans with lambdas)."""

    dialect: Dialect = "pyspark"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.backend = ibis.pyspark.connect(session)
        # Python's own parser in a UDF: the workers must import ``core`` (see spark_session).
        session.udf.register("fw_code_error", quality.python_code_error, "string")
        self._views: list[str] = []

    def table(self, name: str) -> ir.Table:
        return self.backend.table(name)

    def fetch(self, expr: ir.Table) -> pa.Table:
        return self.backend.to_pyarrow(expr)

    def count(self, expr: ir.Table) -> int:
        return int(self.backend.execute(expr.count()))

    def keep(self, expr: ir.Table) -> ir.Table:
        frame = self.session.sql(self.backend.compile(expr)).localCheckpoint(eager=True)
        return self._view(frame)

    def small_table(self, table: pa.Table) -> ir.Table:
        return self._view(self.session.createDataFrame(table))

    def _view(self, frame: Any) -> ir.Table:
        name = self._name()
        frame.createOrReplaceTempView(name)
        self._views.append(name)
        return self.backend.table(name)

    def release(self) -> None:
        while self._views:
            self.session.catalog.dropTempView(self._views.pop())


def _with_drops(engine: Engine, rows: ir.Table, drops: Sequence[tuple[str, str]]) -> ir.Table:
    """``rows`` plus ``fw_drop``: the reason given for its id in ``drops``, else NULL."""
    table = pa.table(
        {"fw_id": [d[0] for d in drops], "fw_why": [d[1] for d in drops]},
        schema=pa.schema([("fw_id", pa.string()), ("fw_why", pa.string())]),
    )
    verdicts = engine.small_table(table)
    joined = rows.left_join(verdicts, rows.interaction_id == verdicts.fw_id)
    return joined.mutate(**{_DROP: joined.fw_why}).drop("fw_id", "fw_why")


# -- near-duplicates ------------------------------------------------------------------------------


_NUM_PERM = 128
_BIN_BITS = 7  # 2 ** 7 == _NUM_PERM: the low bits of a shingle hash pick its bin


def shingle_sets(rows: ir.Table, dialect: Dialect, *, k: int = 3) -> ir.Table:
    """(id, s): the distinct hashes of each row's word k-grams (``_words``) of its
    ``prompt || ' ' || response``; a text of fewer than k words is one shingle."""
    text = rows.prompt.concat(" ", rows.response)
    base = rows.select(id=rows.interaction_id, fw_t=text).filter(ibis._.fw_t.notnull())
    words = _words(base.fw_t)
    positions = ibis.range(0, ibis.greatest(words.length() - k + 1, 1))
    hashes = positions.map(lambda p: _hash(dialect, words[p : p + k]))
    return base.select("id", s=hashes.unique())


def near_duplicate_pairs(
    sets: ir.Table, dialect: Dialect, *, threshold: float, num_perm: int = _NUM_PERM
) -> ir.Table:
    """(a, b, j): the pairs of ``sets`` (id, s: a set of 64-bit hashes) whose exact Jaccard
    similarity is at least ``threshold``, found as core.quality's near_duplicate_pairs finds
    them: one-permutation MinHash, LSH bands anchored on filled bins (a candidate shares at
    least two), then the exact check."""
    bands, rows = _band_shape(threshold, num_perm)
    signatures = _band_signatures(sets, dialect, bands=bands, rows=rows, num_perm=num_perm)
    left, right = signatures, signatures.view()
    shared = left.join(
        right, [left.band == right.band, left.s == right.s, left.id < right.id]
    ).select(a=left.id, b=right.id)
    return _verified(shared, sets, sets.view(), threshold)


def near_duplicates_in_reference(
    sets: ir.Table,
    reference: ir.Table,
    dialect: Dialect,
    *,
    threshold: float,
    num_perm: int = _NUM_PERM,
) -> ir.Table:
    """(a, b, j): each pair of a set of ``sets`` (``a``) and one of ``reference`` (``b``, sets
    of rows kept already) whose exact Jaccard similarity is at least ``threshold``, with the
    bands, candidates and check of ``near_duplicate_pairs`` (core.quality's
    near_duplicates_in_reference): a new row and a kept one are paired exactly when the two
    would be in one table. Pairs within either side are not looked for."""
    bands, rows = _band_shape(threshold, num_perm)
    new = _band_signatures(sets, dialect, bands=bands, rows=rows, num_perm=num_perm)
    kept = _band_signatures(reference, dialect, bands=bands, rows=rows, num_perm=num_perm)
    shared = new.join(kept, [new.band == kept.band, new.s == kept.s]).select(a=new.id, b=kept.id)
    return _verified(shared, sets, reference, threshold)


def _band_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    if num_perm != _NUM_PERM:
        raise ValueError(f"the portable MinHash uses {_NUM_PERM} bins")
    return quality.band_parameters(threshold, num_perm)


def _band_signatures(
    sets: ir.Table, dialect: Dialect, *, bands: int, rows: int, num_perm: int
) -> ir.Table:
    """(id, band, s): the LSH band signatures of each set of ``sets``."""
    flat = sets.select("id", h=sets.s.unnest())
    minhash = flat.group_by(["id", (flat.h & (num_perm - 1)).cast("int64").name("bin")]).aggregate(
        v=(flat.h >> _BIN_BITS).min()
    )

    # Bands anchored on filled bins, as core.quality builds them: band j starts at bin
    # j × step and takes the first ``rows`` filled bins from there on, circularly (the first
    # rows - 1 filled bins again after the last one). A filled bin is the first of the bands
    # starting after the filled bin before it, up to its own bin; the first filled bin also of
    # the bands after the last one.
    step = num_perm // bands
    by_bin = ibis.window(group_by=minhash.id, order_by=minhash.bin)
    keyed = minhash.mutate(
        k=_hash2(dialect, minhash.bin, minhash.v),
        rank=ibis.row_number().over(by_bin),
        band=ibis.least(minhash.bin // step, bands - 1).cast("int64"),
    )
    again = keyed.filter(keyed.rank < rows - 1).mutate(bin=keyed.bin + num_perm)
    extended = keyed.union(again)
    following = ibis.window(group_by=extended.id, order_by=extended.bin)
    runs = extended.mutate(
        prev=extended.band.lag().over(following),
        top=extended.band.max().over(ibis.window(group_by=extended.id)),
        s=functools.reduce(
            operator.xor,
            [extended.k.lead(n).over(following).fill_null(0) for n in range(1, rows)],
            extended.k,
        ),
    ).filter(ibis._.bin < num_perm)
    own = runs.select(
        "id",
        "s",
        band=ibis.range(runs.prev.fill_null(-1) + 1, runs.band + 1).unnest().cast("int64"),
    )
    firsts = runs.filter(runs.prev.isnull())
    circular = firsts.select(
        "id", "s", band=ibis.range(firsts.top + 1, bands).unnest().cast("int64")
    )
    return own.union(circular)


def _verified(shared: ir.Table, x: ir.Table, y: ir.Table, threshold: float) -> ir.Table:
    """(a, b, j): the pairs of ``shared`` (a of sets ``x``, b of ``y``; a row per band they
    agree on) that agree on at least two bands and whose exact Jaccard similarity is at least
    ``threshold``."""
    candidates = shared.group_by(["a", "b"]).aggregate(n=ibis._.count()).filter(ibis._.n >= 2)
    sized = (
        candidates.join(x, candidates.a == x.id)
        .join(y, candidates.b == y.id)
        .select(
            "a",
            "b",
            inter=x.s.intersect(y.s).length(),
            na=x.s.length(),
            nb=y.s.length(),
        )
    )
    # Sets whose sizes differ by more than the threshold allows cannot reach it.
    bound = threshold - 1e-12
    close = sized.filter(
        ibis.least(sized.na, sized.nb) >= bound * ibis.greatest(sized.na, sized.nb)
    )
    scored = close.select("a", "b", j=close.inter / (close.na + close.nb - close.inter))
    return scored.filter(scored.j >= bound)


def near_duplicate_stage(
    engine: Engine,
    rows: ir.Table,
    *,
    threshold: float,
    keep: Literal["earliest", "best_rated"],
    k: int = 3,
    reference: ir.Table | None = None,
    reference_label: str = "",
) -> ir.Table:
    """core.quality's near_duplicate_stage on any engine: ``rows`` plus ``fw_drop`` naming the
    kept twin of each near-duplicate (word k-gram Jaccard ≥ ``threshold``). Rows are taken in
    ``keep`` order and a row is dropped when it is a near-duplicate of one already kept.

    ``reference`` holds rows kept already (``key``, ``prompt``, ``response``: those a cycle
    carries from its parent version), whose MinHash signatures are computed here as the rows'
    are: they count as kept before any of ``rows``, and a row near one of them is dropped
    naming it ("near-duplicate of <reference_label> row <key> (Jaccard 0.87)")."""
    sets = engine.keep(shingle_sets(rows, engine.dialect, k=k))
    pairs = engine.fetch(near_duplicate_pairs(sets, engine.dialect, threshold=threshold))
    neighbours: dict[str, list[tuple[float, str]]] = {}
    for a, b, j in _pair_rows(pairs):
        neighbours.setdefault(a, []).append((j, b))
        neighbours.setdefault(b, []).append((j, a))
    named: dict[str, str] = {}
    if reference is not None:
        kept = reference.select(
            interaction_id=reference.key, prompt=reference.prompt, response=reference.response
        )
        kept_sets = engine.keep(shingle_sets(kept, engine.dialect, k=k))
        outside = engine.fetch(
            near_duplicates_in_reference(sets, kept_sets, engine.dialect, threshold=threshold)
        )
        # A reference key is marked so that it cannot equal a row's id (as in core.quality).
        for a, b, j in _pair_rows(outside):
            marked = f"\x00{b}"
            named[marked] = f"{reference_label} row {b}"
            neighbours.setdefault(a, []).append((j, marked))
    drops: list[tuple[str, str]] = []
    if neighbours:
        members = engine.small_table(pa.table({"fw_id": pa.array(sorted(neighbours), pa.string())}))
        ranked = rows.semi_join(members, rows.interaction_id == members.fw_id)
        order = ranked.select(
            "interaction_id",
            fw_rank=ibis.row_number().over(ibis.window(order_by=quality.keep_order(ranked, keep))),
        )
        fetched = engine.fetch(order)
        by_rank = sorted(
            zip(
                fetched.column("fw_rank").to_pylist(),
                fetched.column("interaction_id").to_pylist(),
                strict=True,
            )
        )
        drops = quality.keep_first((member for _, member in by_rank), neighbours, named)
    return _with_drops(engine, rows, drops)


def _pair_rows(pairs: pa.Table) -> list[tuple[str, str, float]]:
    """(a, b, j) of each fetched pair."""
    return [
        (str(a), str(b), float(j))
        for a, b, j in zip(*(pairs.column(c).to_pylist() for c in ("a", "b", "j")), strict=True)
    ]


# -- decontamination ------------------------------------------------------------------------------


_PUNCTUATION = ".,;:!?()[]{}<>\"'`*_=+-/\\|#"
_SPACES = "[\\t\\n\\f\\r ]+"  # RE2's \s+, spelled so that Java reads it the same


def _words(text: ir.StringValue) -> ir.ArrayValue:
    """A text's words, lower-cased, punctuation and whitespace separating them (core.quality's
    ``words_sql``). Whitespace goes through a regular expression: a control character in a
    Spark SQL string literal would be read as an escape."""
    spaced = text.translate(_PUNCTUATION, " " * len(_PUNCTUATION)).re_replace(_SPACES, " ")
    return spaced.lower().split(" ").filter(lambda w: w != "")


def _word_hashes(text: ir.StringValue, dialect: Dialect) -> ir.ArrayValue:
    """The hashes of a text's words (``_words``)."""
    return _words(text).map(lambda w: _hash(dialect, w))


def contamination_stage(
    engine: Engine,
    rows: ir.Table,
    items: ir.Table,
    *,
    ngram: int,
    threshold: float,
    eval_sets: list[str],
) -> ir.Table:
    """core.quality's contamination_stage on any engine: rows whose word n-grams overlap an
    eval item's prompt or reference (the share of the shorter one's n-grams found in the
    other) at ``threshold`` or more are dropped, naming the item.

    ``items`` holds item_id, eval_set, prompt and reference; items shorter than ``ngram`` words
    are compared on n-grams of their own length (at least 3 words). A row overlapping several
    items is charged to the largest share (then the shortest n, then the item's name).
    """
    dialect = engine.dialect
    chosen = items.filter(items.eval_set.isin(eval_sets)) if eval_sets else items
    label = chosen.item_id.concat(" (", chosen.eval_set, ") ")
    prompts = chosen.select(item=label.concat("prompt"), fw_t=chosen.prompt)
    with_reference = chosen.filter(chosen.reference.notnull())
    references = with_reference.select(
        item=with_reference.item_id.concat(" (", with_reference.eval_set, ") reference"),
        fw_t=with_reference.reference,
    )
    texts = prompts.union(references)
    worded = texts.select("item", w=_word_hashes(texts.fw_t, dialect))
    sized = worded.filter(worded.w.length() >= 3).mutate(
        n=ibis.least(int(ngram), worded.w.length())
    )
    grams = engine.keep(
        sized.select(
            "item",
            "n",
            h=ibis.range(0, sized.w.length() - sized.n + 1)
            .map(lambda p: _hash(dialect, sized.w[p : p + sized.n]))
            .unnest(),
        ).distinct()
    )
    sizes = sorted(int(n) for n in engine.fetch(grams.select("n").distinct()).column(0).to_pylist())
    if not sizes:
        return _with_drops(engine, rows, [])
    item_sizes = grams.group_by(["item", "n"]).aggregate(m=ibis._.count())

    row_words = rows.select(
        id=rows.interaction_id, w=_word_hashes(rows.prompt.concat(" ", rows.response), dialect)
    )

    def row_grams_of(size: int) -> ir.Table:
        positions = ibis.range(0, row_words.w.length() - size + 1)
        return row_words.select(
            "id",
            n=ibis.literal(size, type="int64"),
            total=ibis.greatest(row_words.w.length() - size + 1, 1),
            h=positions.map(lambda p: _hash(dialect, row_words.w[p : p + size])).unnest(),
        )

    row_grams = ibis.union(*(row_grams_of(size) for size in sizes))
    matched = row_grams.join(grams, [row_grams.h == grams.h, row_grams.n == grams.n])
    shared = matched.group_by(
        [row_grams.id.name("id"), grams.item.name("item"), row_grams.n.name("n")]
    ).aggregate(total=row_grams.total.max(), k=row_grams.h.nunique())
    scored = shared.join(item_sizes, ["item", "n"]).select(
        "id", "item", "n", share=shared.k / ibis.least(shared.total, item_sizes.m)
    )
    hits = scored.filter(scored.share >= threshold - 1e-12)
    found = engine.fetch(hits.select("id", "item", "n", "share"))
    overlaps = zip(
        *(found.column(c).to_pylist() for c in ("id", "item", "n", "share")), strict=True
    )
    return _with_drops(engine, rows, quality.contamination_drops(overlaps))
