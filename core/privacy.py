"""PII detection and redaction, vectorised inside DuckDB.

Each detector is a regular expression (RE2, run by DuckDB's ``regexp_*`` functions); where a
regular expression cannot tell a real value from a look-alike, a validator written as a DuckDB
SQL macro (Luhn for cards, mod-97 for IBANs, digit counts for phones, group structure for IPv6)
filters the candidates, still vectorised and inside the engine. A row whose text matches no
detector's pattern is passed through untouched after one combined scan, which keeps the
common case cheap.

Found values are replaced by typed placeholders (``<EMAIL>``, ``<PHONE>``, …); the types found
in a text are read back from its placeholders. An optional Presidio pass for person names is
off by default (see ``redact_names``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from core.errors import FlywheelError, IngestError
from core.escaping import sql_string
from core.paths import check_output_path

__all__ = [
    "DETECTORS",
    "DETECTORS_FINGERPRINT",
    "PII_TYPES",
    "REDACTION_STEPS",
    "Detector",
    "PiiRedaction",
    "install_pii_macros",
    "pii_types_sql",
    "placeholder",
    "redact_file",
    "redact_names",
    "redact_sql",
    "redact_texts",
]


@dataclass(frozen=True)
class Detector:
    """One kind of PII: its type, the RE2 pattern of candidates and an optional validator.

    ``validator`` names a SQL macro taking one candidate and returning a boolean; candidates it
    rejects stay in the text. ``group`` is the capture group holding the value (0 = the match).
    ``hints`` are literals of which every match holds one: a text without any skips the step
    at memchr speed instead of a regular-expression scan.
    """

    pii_type: str
    pattern: str
    validator: str | None = None
    group: int = 0
    keep_prefix: bool = False
    hints: tuple[str, ...] = ()


_HEX = "[0-9A-Fa-f]"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Order matters: a URL with credentials holds an email-like part, a secret may hold digits that
# look like a phone, an IBAN holds digit runs that look like a card.
DETECTORS: tuple[Detector, ...] = (
    Detector(
        "URL_CREDENTIALS",
        r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:[^\s/@]*@[^\s/?#\"'<>]+",
        hints=("://",),
    ),
    Detector(
        "SECRET",
        r"\bsk-[A-Za-z0-9_-]{20,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36}\b",
        hints=("sk-", "AKIA", "ASIA", "p_", "o_", "u_", "s_", "r_"),
    ),
    Detector(
        "SECRET",
        r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/-]{16,}=*",
        keep_prefix=True,
        hints=("earer", "EARER"),
    ),
    Detector(
        "EMAIL",
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        hints=("@",),
    ),
    Detector(
        "IBAN",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        validator="fw_iban_ok",
    ),
    Detector(
        "CARD",
        r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}(?:[ -]?\d{3})?\b"
        r"|\b\d{4}[ -]?\d{6}[ -]?\d{4,5}\b|\b\d{13,19}\b",
        validator="fw_luhn_ok",
    ),
    Detector(
        "SSN",
        r"\b(?:00[1-9]|0[1-9]\d|[1-5]\d\d|6[0-5]\d|66[0-57-9]|6[7-9]\d|[78]\d\d)"
        r"[- ](?:0[1-9]|[1-9]\d)[- ](?:000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d{3})\b",
    ),
    Detector(
        "IP",
        r"(?:^|[^0-9A-Za-z_:.])(" + f"(?:{_HEX}{{0,4}}:){{2,7}}{_HEX}{{0,4}})",
        validator="fw_ipv6_ok",
        group=1,
    ),
    Detector("IP", rf"\b(?:{_OCTET}\.){{3}}{_OCTET}\b"),
    Detector(
        "PHONE",
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}\b"
        r"|(?:\b1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}\b"
        r"|\b(?:1[ .-])?\d{3}[.-]\d{3}[.-]\d{4}\b"
        r"|\b\d{3} \d{3} \d{4}\b"
        r"|\(0\d{1,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}\b"
        # National numbers keep one separator throughout, so "07 2024-10-07" is not one.
        r"|\b0\d{1,4}(?: \d{2,4}){2,4}\b|\b0\d{1,4}(?:\.\d{2,4}){2,4}\b"
        r"|\b0\d{1,4}(?:-\d{2,4}){2,4}\b",
        validator="fw_phone_ok",
    ),
)

PII_TYPES: tuple[str, ...] = tuple(dict.fromkeys(d.pii_type for d in DETECTORS))


def placeholder(pii_type: str) -> str:
    """The text that replaces a value of ``pii_type``, e.g. ``<EMAIL>``."""
    return f"<{pii_type}>"


_ANY_PII = "|".join(f"(?:{d.pattern})" for d in DETECTORS)

# Macros of one detector's step each, in order, for a plain text column; a text that
# ``fw_pii_candidate`` rejects needs none of them (``fw_redact`` = the candidate test + steps).
REDACTION_STEPS: tuple[str, ...] = tuple(f"fw_pii_apply{i}" for i in range(len(DETECTORS)))

_MACROS = [
    "CREATE OR REPLACE TEMP MACRO fw_digits(s) AS regexp_replace(s, '[^0-9]', '', 'g')",
    # Luhn over the candidate's digits, from the right: every second digit doubled.
    """CREATE OR REPLACE TEMP MACRO fw_luhn_ok(s) AS (
        length(fw_digits(s)) BETWEEN 13 AND 19
        AND list_sum(list_transform(split(reverse(fw_digits(s)), ''), lambda c, i:
            CASE WHEN i % 2 = 0
                 THEN CAST(c AS INTEGER) * 2 - CASE WHEN CAST(c AS INTEGER) >= 5 THEN 9 ELSE 0 END
                 ELSE CAST(c AS INTEGER) END)) % 10 = 0)""",
    # ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 = 1.
    """CREATE OR REPLACE TEMP MACRO fw_iban_ok(s) AS (
        length(replace(s, ' ', '')) BETWEEN 15 AND 34
        AND list_reduce(list_transform(split(list_aggregate(list_transform(split(upper(
                substr(replace(s, ' ', ''), 5) || substr(replace(s, ' ', ''), 1, 4)), ''),
                lambda c: CASE WHEN c BETWEEN '0' AND '9' THEN c
                               ELSE CAST(ascii(c) - 55 AS VARCHAR) END), 'string_agg', ''), ''),
            lambda d: CAST(d AS INTEGER)), lambda acc, d: (acc * 10 + d) % 97, 0) = 1)""",
    # A phone number holds 9 to 15 digits (E.164 allows 15); fewer is a date or a quantity.
    "CREATE OR REPLACE TEMP MACRO fw_phone_ok(s) AS length(fw_digits(s)) BETWEEN 9 AND 15",
    # IPv6: eight full groups, or one '::' with some digits; short forms like a[1::2] are code.
    """CREATE OR REPLACE TEMP MACRO fw_ipv6_ok(s) AS (
        regexp_matches(s, '[0-9]')
        AND ((regexp_full_match(s, '(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}'))
          OR (length(s) >= 7 AND NOT contains(s, ':::')
              AND length(s) - length(replace(s, '::', '')) = 2
              AND len(list_filter(split(s, ':'), lambda g: g <> '')) BETWEEN 2 AND 7
              AND NOT regexp_matches(s, '^:[^:]|[^:]:$'))))""",
]


DETECTORS_FINGERPRINT = hashlib.sha256((repr(DETECTORS) + "\n".join(_MACROS)).encode()).hexdigest()[
    :16
]
"""The detectors and validators as they stand: ingest records it on each batch, and a cycle
re-checks only rows redacted by other ones (redacting again with the same detectors changes
nothing)."""


def _step_sql(detector: Detector, text: str) -> str:
    """SQL redacting one detector's values in the SQL expression ``text``."""
    mark = sql_string(placeholder(detector.pii_type))
    pattern = sql_string(detector.pattern)
    if detector.validator is None:
        replacement = (
            sql_string("\\1" + placeholder(detector.pii_type)) if detector.keep_prefix else mark
        )
        return f"regexp_replace({text}, {pattern}, {replacement}, 'g')"
    found = (
        f"list_filter(regexp_extract_all({text}, {pattern}, {detector.group}),"
        f" lambda m: {detector.validator}(m))"
    )
    return f"list_reduce({found}, lambda acc, m: replace(acc, m, {mark}), {text})"


def _install(con: duckdb.DuckDBPyConnection) -> None:
    for statement in _MACROS:
        con.execute(statement)
    # One macro per detector. The one-element list binds the input once: a macro argument used
    # n times is expanded n times, and ten nested steps would otherwise grow exponentially.
    previous = "t"
    for index, detector in enumerate(DETECTORS):
        guards = [f"contains(x, {sql_string(h)})" for h in detector.hints]
        guard = f"({' OR '.join(guards)})" if guards else "true"
        if detector.validator is not None:
            # Skip the candidate lists where the pattern does not occur at all.
            guard += f" AND regexp_matches(x, {sql_string(detector.pattern)})"
        body = (
            f"list_transform([t], lambda x: CASE WHEN {guard} THEN {_step_sql(detector, 'x')} "
            "ELSE x END)[1]"
        )
        name = f"fw_pii_step{index}"
        con.execute(f"CREATE OR REPLACE TEMP MACRO {name}(t) AS {body}")
        # The same step for a plain column (no list to bind its input once): a query that
        # applies the steps one projection after another skips the list's cost per row.
        con.execute(
            f"CREATE OR REPLACE TEMP MACRO {REDACTION_STEPS[index]}(x) AS "
            f"CASE WHEN {guard} THEN {_step_sql(detector, 'x')} ELSE x END"
        )
        previous = f"{name}({previous})"
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_pii_candidate(t) AS "
        f"t IS NOT NULL AND regexp_matches(t, {sql_string(_ANY_PII)})"
    )
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_redact(t) AS "
        f"CASE WHEN t IS NULL OR NOT regexp_matches(t, {sql_string(_ANY_PII)}) THEN t "
        f"ELSE {previous} END"
    )
    types = "[" + ", ".join(sql_string(t) for t in PII_TYPES) + "]"
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_pii_types(t) AS "
        f"CASE WHEN t IS NULL OR NOT contains(t, '<') THEN []::VARCHAR[] "
        f"ELSE list_filter({types}, lambda ty: contains(t, '<' || ty || '>')) END"
    )
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_pii_found(a, b, c) AS "
        "list_sort(list_distinct(flatten([fw_pii_types(a), fw_pii_types(b), fw_pii_types(c)])))"
    )
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_pii_count(t, ty) AS "
        "CASE WHEN t IS NULL THEN 0 ELSE "
        "(length(t) - length(replace(t, '<' || ty || '>', ''))) // (length(ty) + 2) END"
    )


def install_pii_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Define the PII macros (``fw_redact``, ``fw_pii_types``, validators) on ``con``."""
    _install(con)


def redact_sql(text_sql: str) -> str:
    """SQL of ``text_sql`` with every PII value replaced by its placeholder (macros installed)."""
    return f"fw_redact({text_sql})"


def pii_types_sql(text_sql: str) -> str:
    """SQL of the PII types whose placeholders occur in a redacted text (macros installed)."""
    return f"fw_pii_types({text_sql})"


@dataclass(frozen=True)
class PiiRedaction:
    """Redacted texts with the types found in each, and the count of values per type."""

    texts: list[str | None]
    types: list[list[str]]
    found: dict[str, int]


def redact_texts(
    texts: Sequence[str | None], con: duckdb.DuckDBPyConnection | None = None
) -> PiiRedaction:
    """Redact a list of texts in one vectorised query; returns texts, types and counts."""
    import pyarrow as pa

    own = con is None
    connection = duckdb.connect() if con is None else con
    try:
        install_pii_macros(connection)
        source = pa.table(
            {
                "i": pa.array(range(len(texts)), type=pa.int64()),
                "t": pa.array(texts, type=pa.string()),
            }
        )
        connection.register("fw_texts_in", source)
        try:
            rows = connection.execute(
                "SELECT r, fw_pii_types(r) FROM "
                "(SELECT i, fw_redact(t) AS r FROM fw_texts_in) ORDER BY i"
            ).fetchall()
            counts = connection.execute(
                "SELECT "
                + ", ".join(
                    f"coalesce(sum(fw_pii_count(r, {sql_string(t)})), 0)" for t in PII_TYPES
                )
                + " FROM (SELECT fw_redact(t) AS r FROM fw_texts_in)"
            ).fetchall()[0]
        finally:
            connection.unregister("fw_texts_in")
    finally:
        if own:
            connection.close()
    found = {t: int(n) for t, n in zip(PII_TYPES, counts or (), strict=True) if n}
    return PiiRedaction([r[0] for r in rows], [list(r[1]) for r in rows], found)


def redact_file(in_path: str | Path, out_path: str | Path) -> tuple[int, dict[str, int]]:
    """Redact the ``text`` field of each JSONL line of ``in_path`` into ``out_path``.

    Each output line is the input object with ``text`` redacted and ``pii``, the list of types
    found. Returns the row count and the count of values per type. Raises IngestError when the
    input cannot be read or a line is not a JSON object; nothing is written then;
    OutputPathError when ``out_path`` is the store or another file Flywheel manages.
    """
    source, target = Path(in_path), check_output_path(out_path)
    if not source.is_file():
        raise IngestError(f"{source}: no such file; give the path of a JSONL file with --in.")
    if source.resolve() == target.resolve():
        raise IngestError("--out must differ from --in; the input is never overwritten.")
    records: list[dict[str, Any]] = []
    opener = _open_text(source)
    with opener as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(
                    f"{source}: line {number} is not valid JSON ({exc.msg})."
                ) from None
            if not isinstance(record, dict):
                raise IngestError(f"{source}: line {number} is not a JSON object.")
            records.append(record)
    texts = [r.get("text") if isinstance(r.get("text"), str) else None for r in records]
    result = redact_texts(texts)
    found: Counter[str] = Counter(result.found)
    try:
        with target.open("w", encoding="utf-8") as out:
            for record, text, types in zip(records, result.texts, result.types, strict=True):
                if text is not None:
                    record["text"] = text
                record["pii"] = types
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise IngestError(f"{target}: cannot be written ({exc.strerror}).") from None
    return len(records), dict(found)


def _open_text(path: Path) -> Any:
    import gzip

    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace")
        return path.open("r", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror}).") from None


def redact_names(texts: list[str], *, language: str = "en") -> list[str]:
    """Optional extra pass: replace person names with ``<PERSON>`` using Presidio.

    Off by default. Needs ``presidio-analyzer``, ``presidio-anonymizer`` and a spaCy model
    (e.g. ``en_core_web_lg``) installed by the team; raises FlywheelError saying so otherwise.
    Presidio runs row by row in Python (about 1–1.5k texts/s), so it suits reviews of samples
    rather than the whole log.
    """
    try:
        from presidio_analyzer import AnalyzerEngine  # type: ignore[import-not-found]
        from presidio_anonymizer import AnonymizerEngine  # type: ignore[import-not-found]
        from presidio_anonymizer.entities import OperatorConfig  # type: ignore[import-not-found]
    except ImportError:
        raise FlywheelError(
            "The name pass needs Presidio: pip install presidio-analyzer presidio-anonymizer "
            "and a spaCy model (python -m spacy download en_core_web_lg), then try again."
        ) from None
    try:
        analyzer, anonymizer = AnalyzerEngine(), AnonymizerEngine()
    except Exception as exc:  # Presidio raises plain exceptions when its spaCy model is absent.
        raise FlywheelError(
            f"Presidio could not start ({exc}); install a spaCy model such as en_core_web_lg."
        ) from None
    operators = {"PERSON": OperatorConfig("replace", {"new_value": "<PERSON>"})}
    redacted: list[str] = []
    for text in texts:
        results = analyzer.analyze(text=text, entities=["PERSON"], language=language)
        redacted.append(anonymizer.anonymize(text, results, operators).text)
    return redacted
