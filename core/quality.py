"""Near-duplicate detection with MinHash and LSH banding, computed inside DuckDB.

The whole pipeline is SQL over temporary tables, so it runs at the query engine's speed and
never pulls texts into Python:

1. cut each text into shingles (character k-grams of its normalised text by default, word
   k-grams on request; a cycle passes word 3-grams it cut once, ``word_trigrams_sql``), hashed
   to 32 bits, sorted and made distinct;
2. one-permutation MinHash: each shingle hash falls into one of ``num_perm`` bins by its top
   bits and each bin keeps its minimum (one pass over the sorted hashes instead of
   ``num_perm`` passes over the shingles);
3. LSH banding anchored on filled bins: band j starts at bin j × step and takes the first
   ``rows`` filled bins from there on (circularly), its signature the hash of their minima.
   Two texts agree on a band with probability about J^rows however few bins their shingles
   fill. (Bands of fixed bins hold fewer distinct values when bins are empty, which made
   pairs that merely share a prompt candidates by the million on the benchmark log.) Texts
   sharing at least two band signatures are candidate pairs; ``bands`` and ``rows`` are chosen
   so that a pair at the threshold is a candidate with probability at least 0.98 (bands
   overlap when bins are sparse, so the planted-pair tests check the recall that results);
4. each candidate pair is verified by its exact shingle Jaccard similarity (or, with
   ``verify="estimate"``, by the share of equal MinHash bins) and kept at or above the threshold.

Pairs below the threshold are never returned; pairs well above it are found with probability
close to 1. Exact duplicates are near-duplicates with similarity 1.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import ibis
import ibis.expr.types as ir
from duckdb.func import SPECIAL

from core.escaping import json_path, sql_identifier, sql_string
from core.pipeline.stages import language_verdict

__all__ = [
    "NearDuplicatePair",
    "band_parameters",
    "candidate_probability",
    "near_duplicate_groups",
    "near_duplicate_pairs",
]

_counter = itertools.count()


@dataclass(frozen=True)
class NearDuplicatePair:
    """Two texts whose shingle sets overlap at least at the threshold (id_a < id_b)."""

    id_a: Any
    id_b: Any
    similarity: float


_MIN_BANDS = 2
"""Bands a pair must share to be a candidate. One shared band is what a pair that merely shares
a prompt or a response often has; two are rare for it and common for a near-duplicate."""


def candidate_probability(
    similarity: float, bands: int, rows: int, min_bands: int = _MIN_BANDS
) -> float:
    """Probability that LSH banding makes a pair of this Jaccard similarity a candidate: at
    least ``min_bands`` of ``bands`` bands of ``rows`` bins agree."""
    p = similarity**rows
    below = sum(math.comb(bands, i) * p**i * (1 - p) ** (bands - i) for i in range(min_bands))
    return float(max(0.0, 1.0 - below))


def band_parameters(
    threshold: float, num_perm: int, *, min_recall: float = 0.98
) -> tuple[int, int]:
    """(bands, rows) with bands × rows ≤ num_perm: the most rows per band (fewest spurious
    candidates) that still make a pair at ``threshold`` a candidate with ``min_recall``.
    """
    if not 0 < threshold <= 1:
        raise ValueError("threshold must lie in (0, 1]")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= min_recall:
            best = (bands, rows)
    return best


def normalised_text_sql(text_sql: str) -> str:
    """SQL of a text lower-cased with its whitespace collapsed and trimmed.

    The regular-expression replace only runs on texts that need it: DuckDB's
    ``regexp_replace`` is far slower than a match, and most texts have single spaces only.
    """
    return (
        f"lower(CASE WHEN regexp_matches({text_sql}, '\\s\\s|[\\t\\n\\r\\f\\v]|^\\s|\\s$')"
        f" THEN trim(regexp_replace({text_sql}, '\\s+', ' ', 'g')) ELSE {text_sql} END)"
    )


def _shingle_list_sql(
    source: str,
    *,
    id_column: str,
    text_column: str,
    shingle: Literal["char", "word"],
    k: int,
) -> str:
    """SQL of (key, s): each text's id and the 32-bit hashes of its shingles, sorted (a
    shingle that repeats is listed again): character k-grams of its normalised text, or word
    k-grams of its words (``words_sql``)."""
    column = f"CAST({sql_identifier(text_column)} AS VARCHAR)"
    texts = f"FROM {source} WHERE {sql_identifier(text_column)} IS NOT NULL"
    if shingle == "char":
        hashes = (
            f"list_transform(generate_series(1, greatest(length(t) - {k} + 1, 1)),"
            f" lambda p: (hash(substr(t, p, {k})) >> 32)::UINTEGER)"
        )
        return (
            f"SELECT key, list_sort({hashes}) AS s FROM (SELECT {sql_identifier(id_column)} AS key,"
            f" {normalised_text_sql(column)} AS t {texts})"
        )
    # Words are hashed once; a shingle hashes its k word hashes (no list slicing, which is slow).
    parts = ", ".join(f"w[p + {i}]" for i in range(k))
    hashes = (
        f"list_transform(generate_series(1, greatest(len(w) - {k} + 1, 1)),"
        f" lambda p: (hash({parts}) >> 32)::UINTEGER)"
    )
    return (
        f"SELECT key, list_sort({hashes}) AS s FROM (SELECT {sql_identifier(id_column)} AS key,"
        f" list_transform({words_sql(column)}, lambda x: hash(x)) AS w {texts})"
    )


_SEPARATORS = ".,;:!?()[]{}<>\"'`*_=+-/\\|#\t\n\r\f"
"""Characters that end a word besides the space: punctuation and RE2's other whitespace (a
vertical tab is none, as in the exact-duplicate normalisation)."""


def words_sql(text_sql: str) -> str:
    """SQL of a text's words, lower-cased: punctuation and whitespace separate them.

    Each separator is replaced by a space and empty words are dropped: no regular expression
    (DuckDB's ``regexp_replace``, and ``trim`` with characters, cost several times as much,
    and one ``translate`` of all separators two and a half times as much as these replaces)."""
    spaced = text_sql
    for mark in _SEPARATORS:
        spaced = f"replace({spaced}, '{mark.replace(chr(39), chr(39) * 2)}', ' ')"
    return f"list_filter(string_split(lower({spaced}), ' '), lambda x: x <> '')"


def word_trigrams_sql(text_sql: str) -> str:
    """SQL of the 32-bit hashes (UINTEGER) of a text's word 3-grams (``words_sql``), in text
    order, each the top half of the hash of its three words' hashes. A text of fewer than three
    words is one 3-gram (missing words are NULL). Two shingles of two texts collide with
    probability 2^-32, too rare to move a Jaccard similarity; half the width makes the
    per-text sort of the near-duplicate stage a quarter faster.

    The near-duplicate stage takes these as its shingles and decontamination builds its
    n-grams from them, so a cycle cuts each text into words once."""
    words = f"list_transform({words_sql(text_sql)}, lambda x: hash(x))"
    return (
        f"list_transform([{words}], lambda w: list_transform(generate_series(1,"
        " greatest(len(w) - 2, 1)),"
        " lambda p: (hash(w[p], w[p + 1], w[p + 2]) >> 32)::UINTEGER))[1]"
    )


def ngram_hash_sql(trigrams: str, n: int, position: str) -> str:
    """SQL of the hash of the word n-gram (n ≥ 3) starting at ``position`` of a text, from
    its 3-gram hashes (``word_trigrams_sql``): the hash of the 3-grams that tile it."""
    if n < 3:
        raise ValueError("n-grams from 3-grams need n ≥ 3")
    offsets = sorted({*range(0, n - 2, 3), n - 3})
    return f"hash({', '.join(f'{trigrams}[{position} + {o}]' for o in offsets)})"


def near_duplicate_pairs(
    con: duckdb.DuckDBPyConnection,
    source: str | duckdb.DuckDBPyRelation,
    *,
    threshold: float = 0.8,
    id_column: str = "id",
    text_column: str = "text",
    num_perm: int = 128,
    shingle: Literal["char", "word"] = "char",
    k: int = 5,
    verify: Literal["exact", "estimate"] = "exact",
    shingles_column: str | None = None,
) -> list[NearDuplicatePair]:
    """Every pair of texts in ``source`` whose Jaccard similarity is at least ``threshold``.

    ``source`` is a table or view name, or a relation of the same connection, with an id column
    and a text column (or, with ``shingles_column``, a column of each text's 32-bit shingle
    hashes, UINTEGER[], cut already, e.g. by ``word_trigrams_sql``; ``shingle`` and ``k`` are
    then unused). Ids must be comparable (the pair holds the smaller id first). Pairs come
    sorted by descending similarity, then ids. ``num_perm`` (the MinHash bins) is a power of
    two from 8 to 1024.
    """
    pairs, _ = _near_pairs(
        con,
        source,
        threshold=threshold,
        id_column=id_column,
        text_column=text_column,
        num_perm=num_perm,
        shingle=shingle,
        k=k,
        verify=verify,
        shingles_column=shingles_column,
    )
    return pairs


def _near_pairs(
    con: duckdb.DuckDBPyConnection,
    source: str | duckdb.DuckDBPyRelation,
    *,
    threshold: float,
    id_column: str = "id",
    text_column: str = "text",
    num_perm: int = 128,
    shingle: Literal["char", "word"] = "char",
    k: int = 5,
    verify: Literal["exact", "estimate"] = "exact",
    shingles_column: str | None = None,
    reference: str | None = None,
) -> tuple[list[NearDuplicatePair], list[NearDuplicatePair]]:
    """``near_duplicate_pairs``, and with ``reference`` also the pairs of a source text and a
    reference one (``near_duplicates_in_reference``), each text's sets and band signatures
    computed once for both."""
    if not 0 < threshold <= 1:
        raise ValueError("threshold must lie in (0, 1]")
    if k < 1:
        raise ValueError("k must be positive")
    if num_perm not in {2**i for i in range(3, 11)}:
        raise ValueError("num_perm must be a power of two from 8 to 1024")
    prefix = f"__nd{next(_counter)}"
    view = None
    if isinstance(source, duckdb.DuckDBPyRelation):
        view = f"{prefix}_source"
        source.create_view(view, replace=True)
        source_sql = view
    else:
        source_sql = sql_identifier(source)
    bands, rows = band_parameters(threshold, num_perm)
    shift = 32 - (num_perm.bit_length() - 1)  # a shingle hash's bin: its top bits
    sets, signatures, candidates = (f"{prefix}_{n}" for n in ("sets", "sig", "cand"))
    try:
        # Each text's distinct shingle hashes, sorted; the table's rowid numbers the texts
        # (joins and groups on numbers are cheaper than on ids, and a window to number them
        # would run on one thread).
        if shingles_column is not None:
            column = sql_identifier(shingles_column)
            shingle_lists = (
                f"SELECT {sql_identifier(id_column)} AS key, list_sort({column}) AS s"
                f" FROM {source_sql} WHERE {column} IS NOT NULL"
            )
        else:
            shingle_lists = _shingle_list_sql(
                source_sql, id_column=id_column, text_column=text_column, shingle=shingle, k=k
            )
        con.execute(
            f"CREATE TEMP TABLE {sets} AS SELECT key,"
            " list_transform([s], lambda s: list_filter(s, lambda x, i: i = 1 OR x <> s[i - 1]))[1]"
            f" AS s FROM ({shingle_lists})"
        )

        _band_signatures(con, sets, signatures, num_perm=num_perm, bands=bands, rows=rows)
        con.execute(
            f"CREATE TEMP TABLE {candidates} AS SELECT a.id AS a, b.id AS b FROM {signatures} a"
            f" JOIN {signatures} b ON a.band = b.band AND a.s = b.s AND a.id < b.id"
            f" GROUP BY ALL HAVING count(*) >= {_MIN_BANDS}"
        )
        similarity = _similarity_sql(verify, shift)
        rows_found = con.execute(
            "SELECT least(ka, kb), greatest(ka, kb), j FROM (SELECT x.key AS ka, y.key AS kb,"
            f" {similarity} AS j FROM {candidates} c JOIN {sets} x ON x.rowid = c.a"
            f" JOIN {sets} y ON y.rowid = c.b) WHERE j >= ? ORDER BY j DESC, 1, 2",
            [threshold - 1e-12],
        ).fetchall()
        outside = (
            _reference_pairs(con, sets, signatures, reference, threshold, num_perm)
            if reference is not None
            else []
        )
    finally:
        for table in (candidates, signatures, sets):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        if view is not None:
            con.execute(f"DROP VIEW IF EXISTS {view}")
    return [NearDuplicatePair(a, b, float(j)) for a, b, j in rows_found], outside


def _similarity_sql(verify: Literal["exact", "estimate"], shift: int) -> str:
    """SQL of the similarity of sets ``x`` and ``y`` (columns ``s``: sorted distinct hashes)."""
    if verify == "exact":
        # |A ∩ B| counted by lookups in the other list (faster here than DuckDB's
        # list_intersect or list_distinct, which build a hash table a pair).
        shared = "len(list_filter(x.s, lambda v: list_contains(y.s, v)))"
        return f"list_transform([{shared}], lambda k: k / (len(x.s) + len(y.s) - k))[1]"
    # The share of equal bins among those filled in either text.
    mins = "list_filter({0}.s, lambda v, i: i = 1 OR (v >> {1}) <> ({0}.s[i - 1] >> {1}))"
    both = f"list_concat({mins.format('x', shift)}, {mins.format('y', shift)})"
    filled = f"len(list_distinct(list_transform({both}, lambda v: v >> {shift})))"
    return f"(2 * {filled} - len(list_distinct({both}))) / {filled}"


def band_params(threshold: float, num_perm: int = 128) -> str:
    """What names a banding: stored band signatures count only under the same one."""
    bands, rows = band_parameters(threshold, num_perm)
    return f"minhash {num_perm} bins, {bands} bands of {rows}"


def band_signature_lists(
    con: duckdb.DuckDBPyConnection, sets: str, out: str, *, threshold: float, num_perm: int = 128
) -> None:
    """Create temp table ``out`` of (id, sig): each text of table ``sets`` (rowid, and ``s``
    its sorted distinct shingle hashes) with its LSH band signatures as a list, band j at
    index j + 1; a text without shingles has none. What a sketch stores so that a later run
    reads the signatures instead of computing them again."""
    bands, rows = band_parameters(threshold, num_perm)
    flat = f"{out}_flat"
    try:
        _band_signatures(con, sets, flat, num_perm=num_perm, bands=bands, rows=rows)
        con.execute(
            f"CREATE TEMP TABLE {out} AS SELECT id, list(s ORDER BY band) AS sig FROM {flat}"
            " GROUP BY id"
        )
    finally:
        con.execute(f"DROP TABLE IF EXISTS {flat}")


def near_duplicates_in_reference(
    con: duckdb.DuckDBPyConnection,
    source: str,
    reference: str,
    *,
    threshold: float,
    num_perm: int = 128,
) -> list[NearDuplicatePair]:
    """Every pair of a text of ``source`` and one of ``reference`` whose Jaccard similarity is
    at least ``threshold``: ``id_a`` is the source's ``key``, ``id_b`` the reference's.

    ``source`` is a table or view with columns ``key`` and ``s`` (a text's shingle hashes,
    UINTEGER[], as ``word_trigrams_sql`` cuts them). ``reference`` is a table with ``key``,
    ``s`` (sorted and distinct, as stored sketches keep them), ``sig`` and ``band_params``:
    band signatures stored with the sketch (``band_signature_lists``), read as they are when
    made under this banding and computed here otherwise. The same bands, candidates and
    verification as ``near_duplicate_pairs``, so a new text and a kept one are paired exactly
    when the two would be in one table; pairs within either side are not looked for.
    """
    if not 0 < threshold <= 1:
        raise ValueError("threshold must lie in (0, 1]")
    prefix = f"__ndr{next(_counter)}"
    bands, rows = band_parameters(threshold, num_perm)
    new_sets, new_sig = f"{prefix}_nsets", f"{prefix}_nsig"
    try:
        con.execute(
            f"CREATE TEMP TABLE {new_sets} AS SELECT key, list_transform([list_sort(s)],"
            " lambda s: list_filter(s, lambda x, i: i = 1 OR x <> s[i - 1]))[1] AS s"
            f" FROM {sql_identifier(source)} WHERE s IS NOT NULL"
        )
        _band_signatures(con, new_sets, new_sig, num_perm=num_perm, bands=bands, rows=rows)
        return _reference_pairs(con, new_sets, new_sig, reference, threshold, num_perm)
    finally:
        for table in (new_sig, new_sets):
            con.execute(f"DROP TABLE IF EXISTS {table}")


def _reference_pairs(
    con: duckdb.DuckDBPyConnection,
    new_sets: str,
    new_sig: str,
    reference: str,
    threshold: float,
    num_perm: int,
) -> list[NearDuplicatePair]:
    """The pairs of a text of ``new_sets`` (key, s; rowid numbering them, their band
    signatures in ``new_sig``) and one of ``reference`` at least ``threshold`` similar."""
    prefix = f"__ndr{next(_counter)}"
    bands, rows = band_parameters(threshold, num_perm)
    shift = 32 - (num_perm.bit_length() - 1)
    ref = sql_identifier(reference)
    rest, rest_sig, ref_sig, candidates = (
        f"{prefix}_{n}" for n in ("rest", "rsig", "refsig", "cand")
    )
    try:
        # The reference's signatures: stored ones as they are, the others computed now.
        current = sql_string(band_params(threshold, num_perm))
        con.execute(
            f"CREATE TEMP TABLE {rest} AS SELECT rowid AS ref_id, s FROM {ref}"
            f" WHERE s IS NOT NULL AND (sig IS NULL OR band_params IS DISTINCT FROM {current})"
        )
        _band_signatures(con, rest, rest_sig, num_perm=num_perm, bands=bands, rows=rows)
        con.execute(
            f"CREATE TEMP TABLE {ref_sig} AS SELECT rowid AS id, unnest(sig) AS s,"
            " generate_subscripts(sig, 1) - 1 AS band FROM"
            f" {ref} WHERE sig IS NOT NULL AND band_params = {current}"
            f" UNION ALL SELECT r.ref_id, g.s, g.band FROM {rest_sig} g"
            f" JOIN {rest} r ON r.rowid = g.id"
        )
        con.execute(
            f"CREATE TEMP TABLE {candidates} AS SELECT a.id AS a, b.id AS b FROM {new_sig} a"
            f" JOIN {ref_sig} b ON a.band = b.band AND a.s = b.s"
            f" GROUP BY ALL HAVING count(*) >= {_MIN_BANDS}"
        )
        found = con.execute(
            "SELECT ka, kb, j FROM (SELECT x.key AS ka, y.key AS kb,"
            f" {_similarity_sql('exact', shift)} AS j FROM {candidates} c"
            f" JOIN {new_sets} x ON x.rowid = c.a JOIN {ref} y ON y.rowid = c.b)"
            " WHERE j >= ? ORDER BY j DESC, 1, 2",
            [threshold - 1e-12],
        ).fetchall()
    finally:
        for table in (candidates, ref_sig, rest_sig, rest):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return [NearDuplicatePair(a, b, float(j)) for a, b, j in found]


def _band_signatures(
    con: duckdb.DuckDBPyConnection, sets: str, out: str, *, num_perm: int, bands: int, rows: int
) -> None:
    """Create temp table ``out`` of (id, band, s): the LSH band signatures of each text of
    ``sets`` (key, s: sorted distinct shingle hashes), ``id`` its rowid there."""
    shift = 32 - (num_perm.bit_length() - 1)  # a shingle hash's bin: its top bits
    step = num_perm // bands  # band j starts at bin j * step
    # One-permutation MinHash: a hash's top bits pick its bin and the whole hash is
    # minimised, so in the sorted list the first hash of each run of one bin is that bin's
    # minimum: ``m``, the filled bins in bin order. Band j takes the first ``rows`` filled
    # bins at or after its start bin (circularly), so that two texts agree on a band with
    # probability about J^rows however few bins their shingles fill: a band of fixed bins
    # would hold fewer values when bins are empty, and pairs that merely share a prompt
    # would agree on it far more often. Each filled bin is the first of the bands that
    # start after the filled bin before it, up to its own bin; the first one also of the
    # bands after the last filled bin.
    # ``q``: each filled bin's band (the last band starting at or before it; the leftover
    # bins after the last band's start count in the last band).
    firsts = (
        "list_transform(list_filter(range(1, len(q) + 1), lambda i: i = 1 OR q[i - 1] < q[i]),"
        " lambda i: {'bands': list_concat(range(CASE WHEN i = 1 THEN 0 ELSE q[i - 1] + 1 END,"
        f" q[i] + 1), CASE WHEN i = 1 THEN range(q[-1] + 1, {bands}) ELSE [] END),"
        f" 's': hash(mm[i:i + {rows - 1}])}})"
    )
    con.execute(
        f"CREATE TEMP TABLE {out} AS"
        f" WITH mt AS (SELECT rowid AS id, list_filter(s, lambda x, i: i = 1"
        f"  OR (x >> {shift}) <> (s[i - 1] >> {shift})) AS m FROM {sets}),"
        f" circular AS (SELECT id, list_transform(m, lambda x: least((x >> {shift})::BIGINT"
        f"  // {step}, {bands - 1})) AS q, list_concat(m, m[1:{rows - 1}]) AS mm FROM mt),"
        f" firsts AS (SELECT id, unnest({firsts}) AS f FROM circular)"
        f" SELECT id, unnest(f.bands) AS band, f.s AS s FROM firsts"
    )


def near_duplicate_groups(pairs: list[NearDuplicatePair]) -> dict[Any, Any]:
    """Map each id that has a near-duplicate to its group's representative (the smallest id).

    Groups are the connected components of the pairs (union-find), so A≈B and B≈C put A, B and
    C together. Ids that appear in no pair are not in the mapping.
    """
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for pair in pairs:
        ra, rb = find(pair.id_a), find(pair.id_b)
        parent.setdefault(ra, ra)
        parent.setdefault(rb, rb)
        if ra != rb:
            low, high = (ra, rb) if ra < rb else (rb, ra)
            parent[high] = low
    return {x: find(x) for x in parent}


# -- the cycle's table stages --------------------------------------------------------------------
#
# Each stage is a function from an Ibis table of the rows still in the cycle to the same rows
# with one more column, ``fw_drop``: why the stage removes the row, NULL when it keeps it. The
# cycle (core.cycles) compiles the expression, records the removed rows with their reason and
# goes on with the rest. Row rules are pure expressions; the duplicate and contamination stages
# first compute their verdicts in the engine (MinHash, n-gram joins) and return an expression
# over them, since which copy is kept depends on more than one row.

CYCLE_ROW_SCHEMA = ibis.schema(
    {
        "interaction_id": "string",
        "user_id": "string",
        "ts": "timestamp('UTC')",
        "batch_id": "string",
        "variant": "string",
        "model": "string",
        "system": "string",
        "prompt": "string",
        "response": "string",
        "feedback": "string",
        "accepted": "boolean",
        "latency_ms": "int64",
        "input_tokens": "int64",
        "output_tokens": "int64",
        "cost_usd": "float64",
        "topic": "string",
        "difficulty": "string",
        "metadata": "string",
        "cell_key": "string",
    }
)
"""The columns of a cycle's rows (an interaction plus its cell on the generation grid)."""

_DROP = "fw_drop"
LANGUAGES: dict[str, tuple[str, ...]] = {
    "en": ("the", "and", "is", "to", "of", "in", "it", "you", "that", "this", "with", "how"),
    "de": ("der", "die", "das", "und", "ist", "nicht", "ich", "mit", "sie", "wie", "ein", "zu"),
    "fr": ("le", "la", "les", "et", "est", "je", "pas", "une", "des", "avec", "pour", "que"),
    "es": ("el", "los", "las", "y", "es", "que", "una", "por", "con", "para", "como", "del"),
    "it": ("il", "gli", "che", "di", "non", "una", "per", "sono", "con", "come", "della", "ho"),
    "pt": ("os", "não", "uma", "com", "para", "como", "por", "mais", "você", "isso", "ao", "da"),
    "nl": ("de", "het", "een", "en", "niet", "ik", "je", "met", "voor", "dat", "wat", "hoe"),
}
"""Languages the ``language`` rule tells apart, by their most frequent short words."""


@ibis.udf.scalar.builtin(name="fw_exact_key")  # type: ignore[untyped-decorator]
def exact_key(prompt: str, response: str) -> str:  # type: ignore[empty-body]
    """The key two rows share exactly when their normalised prompts and responses are equal
    (the ``fw_exact_key`` macro of ``install_stage_functions``): what the exact-duplicate stage
    compares, and what a dataset row's sketch keeps for later cycles."""


@ibis.udf.scalar.builtin(name="fw_redact")  # type: ignore[untyped-decorator]
def redacted(text: str) -> str:  # type: ignore[empty-body]
    """DuckDB macro of core.privacy: the text with PII replaced by placeholders."""


@ibis.udf.scalar.builtin(name="fw_language")  # type: ignore[untyped-decorator]
def _language(text: str) -> str:  # type: ignore[empty-body]
    """DuckDB macro (install_stage_functions): the language code a text looks like, or und."""


@ibis.udf.scalar.builtin(name="fw_code_error")  # type: ignore[untyped-decorator]
def _code_error(text: str) -> str:  # type: ignore[empty-body]
    """Python function (install_stage_functions): why a fenced block does not parse, or NULL."""


@ibis.udf.scalar.builtin(name="json_extract_string")  # type: ignore[untyped-decorator]
def _json_field(json: str, path: str) -> str:  # type: ignore[empty-body]
    """DuckDB's json_extract_string."""


_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def python_code_error(text: str | None) -> str | None:
    """Why a fenced Python block of ``text`` does not parse, or None when every one does.

    Blocks tagged python/py/python3 or untagged are checked; texts without blocks pass.
    """
    if text is None:
        return None
    for number, match in enumerate(_FENCE.finditer(text), start=1):
        if match[1].lower() not in ("", "python", "py", "python3"):
            continue
        try:
            ast.parse(match[2])
        except SyntaxError as exc:
            return f"code block {number} does not parse: {exc.msg} (line {exc.lineno})"
        except ValueError as exc:  # e.g. a NUL byte in the source
            return f"code block {number} does not parse: {exc}"
    return None


def install_stage_functions(con: duckdb.DuckDBPyConnection) -> None:
    """Define on ``con`` the macros and functions the row rules call (PII macros included)."""
    from core.privacy import install_pii_macros

    install_pii_macros(con)
    counts = []
    for _code, words in LANGUAGES.items():
        listed = ", ".join(sql_string(w) for w in words)
        counts.append(f"len(list_filter(w, lambda x: x IN ({listed})))")
    codes = ", ".join(sql_string(code) for code in LANGUAGES)
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_exact_key(p, r) AS"
        f" md5({normalised_text_sql('p')}) || md5({normalised_text_sql('r')})"
    )
    con.execute(
        "CREATE OR REPLACE TEMP MACRO fw_language(t) AS (SELECT CASE WHEN list_max(c) < 2 "
        f"THEN 'und' ELSE [{codes}][list_position(c, list_max(c))] END FROM (SELECT "
        f"[{', '.join(counts)}] AS c FROM (SELECT string_split_regex(lower(t), "
        "'[^[:alpha:]]+') AS w)))"
    )
    with contextlib.suppress(duckdb.InvalidInputException):
        con.remove_function("fw_code_error")
    con.create_function(
        "fw_code_error",
        python_code_error,
        ["VARCHAR"],
        "VARCHAR",
        null_handling=SPECIAL,
    )


def keep_order(rows: ir.Table, keep: Literal["earliest", "best_rated"]) -> list[Any]:
    """Sort keys that put the copy to keep first: the earliest, or the best rated
    (thumbs-up, then accepted, then not thumbs-down; ties by time)."""
    earliest = [rows.ts.asc(), rows.interaction_id.asc()]
    if keep == "earliest":
        return earliest
    rating = (
        (rows.feedback == "up").fill_null(False).cast("int8") * 4
        + rows.accepted.fill_null(False).cast("int8") * 2
        - (rows.feedback == "down").fill_null(False).cast("int8")
    )
    return [rating.desc(), *earliest]


def normalised_text(value: ir.StringValue) -> ir.StringValue:
    """A text lower-cased with its whitespace collapsed and trimmed, as an Ibis expression
    (``normalised_text_sql`` in SQL): what exact duplicates compare."""
    needs = value.re_search(r"\s\s|[\t\n\r\f\v]|^\s|\s$")
    collapsed = value.re_replace(r"\s+", " ").strip()
    return ibis.ifelse(needs, collapsed, value).lower()


def _verdict(rows: ir.Table, drop: Any, detail: Any) -> ir.Table:
    return rows.mutate(**{_DROP: ibis.ifelse(drop, detail, ibis.null("string"))})


def rule_stage(rows: ir.Table, rule: Any) -> ir.Table:
    """A row rule of the plan (feedback, acceptance, length, language, code, field condition)
    as an expression: ``rows`` plus ``fw_drop``. Raises ValueError for a rule that is not a
    row rule or a condition that cannot be evaluated."""
    kind = rule.rule
    feedback, accepted = rows.feedback, rows.accepted
    if kind == "positive_feedback":
        keep = (feedback == "up").fill_null(False)
        return _verdict(rows, ~keep, "not rated thumbs-up")
    if kind == "accepted":
        keep = accepted.fill_null(False)
        return _verdict(rows, ~keep, "answer not accepted")
    if kind == "positive_or_accepted":
        keep = (feedback == "up").fill_null(False) | accepted.fill_null(False)
        return _verdict(rows, ~keep, "neither rated thumbs-up nor accepted")
    if kind == "length_bounds":
        length = rows.response.length()
        outside = (length < rule.min_chars) | (length > rule.max_chars)
        detail = ibis.literal("response is ").concat(
            length.cast("string"), f" characters, outside {rule.min_chars}–{rule.max_chars}"
        )
        return _verdict(rows, outside, detail)
    if kind == "language":
        return language_verdict(rows, rule, LANGUAGES, _language)
    if kind == "code_parses":
        has_code = rows.response.contains("```")
        error = ibis.ifelse(has_code, _code_error(rows.response), ibis.null("string"))
        return rows.mutate(**{_DROP: error})
    if kind == "field_condition":
        return _field_condition(rows, rule)
    raise ValueError(f"{kind} is not a row rule")


_NUMERIC_OPS = {"<", "<=", ">", ">="}


def _field_condition(rows: ir.Table, rule: Any) -> ir.Table:
    field, op, raw = rule.field, rule.op, rule.value
    if field in rows.columns and field not in ("metadata", "cell_key"):
        value = rows[field]
        text = value.cast("string")
    else:
        text = _json_field(rows.metadata, json_path(field))
        value = text
    shown = f"{field} {op} {raw}"
    if op in _NUMERIC_OPS:
        try:
            bound = float(raw)
        except ValueError:
            raise ValueError(f"field_condition {shown}: {raw!r} is not a number") from None
        number = text.try_cast("float64")
        holds = {
            "<": number < bound,
            "<=": number <= bound,
            ">": number > bound,
            ">=": number >= bound,
        }[op]
    elif op in ("in", "not_in"):
        options = [part.strip() for part in raw.split(",") if part.strip()]
        holds = text.isin(options) if op == "in" else ~text.isin(options)
    else:
        holds = (text == raw) if op == "==" else (text != raw)
    missing = text.isnull()
    detail = ibis.cases(
        (missing, f"{field} is missing (rule {shown})"),
        else_=ibis.literal(f"{field} = ").concat(text, f" fails {shown}"),
    )
    return _verdict(rows, missing | ~holds.fill_null(False), detail)


def exact_duplicate_stage(
    rows: ir.Table,
    keep: Literal["earliest", "best_rated"] = "earliest",
    *,
    reference: ir.Table | None = None,
    reference_label: str = "",
) -> ir.Table:
    """Rows whose normalised prompt and response repeat an earlier kept row's are dropped;
    of each group the first by ``keep`` stays.

    ``reference`` (columns ``key`` and ``exact_key``: rows kept already, e.g. those a cycle
    carries from its parent version) goes first: a row repeating one of them is dropped naming
    it ("exact duplicate of <reference_label> row <key>").

    Only the rows of repeated keys are ranked: most rows are unique, and a window sorted
    within every group cost twice as much as counting the groups first."""
    base = rows.view()
    keyed = base.select(
        "interaction_id",
        "ts",
        "feedback",
        "accepted",
        fw_kp=normalised_text(base.prompt),
        fw_kr=normalised_text(base.response),
    )
    keys = ["fw_kp", "fw_kr"]
    repeated = keyed.group_by(keys).aggregate(fw_n=ibis._.count()).filter(ibis._.fw_n > 1).view()
    copies = keyed.semi_join(
        repeated, [keyed.fw_kp == repeated.fw_kp, keyed.fw_kr == repeated.fw_kr]
    )
    window = ibis.window(group_by=keys, order_by=keep_order(copies, keep))
    ranked = copies.select(
        "interaction_id",
        fw_rank=ibis.row_number().over(window),
        fw_first=copies.interaction_id.first().over(window),
    )
    drops = ranked.filter(ranked.fw_rank > 0).select(
        fw_id=ranked.interaction_id,
        fw_why=ibis.literal("exact duplicate of ").concat(ranked.fw_first),
    )
    if reference is not None:
        kept = reference.group_by(fw_ek=reference.exact_key).aggregate(fw_ref=reference.key.min())
        own = base.select(fw_id=base.interaction_id, fw_ek=exact_key(base.prompt, base.response))
        matched = own.join(kept, "fw_ek")
        label = ibis.literal(f"exact duplicate of {reference_label} row ")
        again = matched.select("fw_id", fw_why=label.concat(matched.fw_ref))
        drops = again.union(drops.anti_join(again, "fw_id"))
    joined = rows.left_join(drops, rows.interaction_id == drops.fw_id)
    return joined.mutate(**{_DROP: joined.fw_why}).drop("fw_id", "fw_why")


def _drops_table(con: duckdb.DuckDBPyConnection, name: str, drops: list[tuple[str, str]]) -> None:
    # Bound as two lists in one statement: executemany would run one statement per row.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT unnest($ids)::VARCHAR AS id,"
        " unnest($whys)::VARCHAR AS why",
        {"ids": [d[0] for d in drops], "whys": [d[1] for d in drops]},
    )


def _with_drops(rows: ir.Table, name: str) -> ir.Table:
    drops = ibis.table({"id": "string", "why": "string"}, name=name)
    joined = rows.left_join(drops, rows.interaction_id == drops.id)
    return joined.mutate(**{_DROP: joined.why}).drop("id", "why")


def sketch_sql(source: str) -> str:
    """SQL of the sketch of each row of ``source`` (a query or table with row_key, text_md5,
    interaction_id, user_id, prompt and response): those columns, its ``exact_key``, its
    ``shingles`` (word 3-gram hashes, sorted and distinct: what the near-duplicate stage
    compares) and the ``engine`` that hashed them (DuckDB's ``hash`` may differ between
    versions, so a sketch counts only under the version that made it). Needs the macros of
    ``install_stage_functions``."""
    return (
        "SELECT row_key, text_md5, interaction_id, user_id, fw_exact_key(prompt, response)"
        f" AS exact_key, list_transform([list_sort({row_trigrams_sql()})], lambda s:"
        " list_filter(s, lambda x, i: i = 1 OR x <> s[i - 1]))[1] AS shingles,"
        f" {sql_string(SKETCH_ENGINE)} AS engine FROM ({source})"
    )


SKETCH_ENGINE = f"duckdb {duckdb.__version__}"
"""What hashed a stored sketch: sketches of another engine are made again, not compared."""


def row_trigrams_sql() -> str:
    """SQL of a cycle row's word 3-gram hashes: those of its prompt and response together."""
    return word_trigrams_sql("prompt || ' ' || response")


def token_table(con: duckdb.DuckDBPyConnection, rows: ir.Table, name: str) -> str:
    """Create temp table ``name`` of (interaction_id, g): each row's word 3-gram hashes, for
    the near-duplicate and decontamination stages to share. Returns ``name``."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {sql_identifier(name)} AS SELECT interaction_id,"
        f" {row_trigrams_sql()} AS g FROM ({ibis.to_sql(rows, dialect='duckdb')})"
    )
    return name


def _row_trigrams_source(rows: ir.Table, tokens: str | None) -> str:
    """SQL of (interaction_id, g): the rows' word 3-gram hashes, read from the shared table
    ``tokens`` when given (it holds at least these rows), else cut here."""
    rows_sql = ibis.to_sql(rows, dialect="duckdb")
    if tokens is None:
        return f"SELECT interaction_id, {row_trigrams_sql()} AS g FROM ({rows_sql})"
    return (
        f"SELECT interaction_id, g FROM {sql_identifier(tokens)}"
        f" SEMI JOIN ({rows_sql}) r USING (interaction_id)"
    )


def keep_first(
    order: Iterable[str],
    neighbours: dict[str, list[tuple[float, str]]],
    kept_already: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(id, why) of each row dropped as a near-duplicate: rows are taken in ``order`` (those
    with a neighbour, best kept first) and one is dropped when a row already kept is among its
    ``neighbours`` (similarity, id), naming the most similar such twin. ``kept_already`` maps
    the ids of rows kept before any of these (a parent version's) to how a reason names them."""
    named = kept_already or {}
    drops: list[tuple[str, str]] = []
    kept: set[str] = set(named)
    for member in order:
        twins = [(s, o) for s, o in neighbours[member] if o in kept]
        if twins:
            similarity, twin = max(twins, key=lambda t: (t[0], t[1]))
            shown = named.get(twin, twin)
            drops.append((member, f"near-duplicate of {shown} (Jaccard {similarity:.2f})"))
        else:
            kept.add(member)
    return drops


def near_duplicate_stage(
    con: duckdb.DuckDBPyConnection,
    rows: ir.Table,
    *,
    threshold: float,
    keep: Literal["earliest", "best_rated"],
    tokens: str | None = None,
    reference: str | None = None,
    reference_label: str = "",
) -> ir.Table:
    """Near-duplicates (Jaccard of word 3-grams ≥ ``threshold``, MinHash + LSH in the engine).

    Rows are taken in ``keep`` order and a row is dropped when it is a near-duplicate of a row
    already kept; so every dropped row names a kept twin, and no two kept rows are near-
    duplicates of each other. ``tokens`` names a table of (interaction_id, g) from
    ``token_table`` holding at least these rows, to reuse; without it they are cut here.
    ``reference`` names a table of rows kept already (``key``, ``s``: their sorted distinct
    3-gram hashes, as stored sketches hold them): they count as kept before any of ``rows``,
    and a row near one of them is dropped naming it ("<reference_label> row <key>").
    """
    view = f"fw_nd_rows{next(_counter)}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {_row_trigrams_source(rows, tokens)}")
    try:
        # The rows' sets and band signatures serve both: pairs among them, and pairs of a
        # row and a kept (reference) one.
        pairs, outside = _near_pairs(
            con,
            view,
            threshold=threshold,
            id_column="interaction_id",
            shingles_column="g",
            reference=reference,
        )
    finally:
        con.execute(f"DROP VIEW IF EXISTS {view}")
    neighbours: dict[str, list[tuple[float, str]]] = {}
    for pair in pairs:
        neighbours.setdefault(pair.id_a, []).append((pair.similarity, pair.id_b))
        neighbours.setdefault(pair.id_b, []).append((pair.similarity, pair.id_a))
    # A reference key is marked so that it cannot equal a row's id.
    named: dict[str, str] = {}
    for pair in outside:
        marked = f"\x00{pair.id_b}"
        named[marked] = f"{reference_label} row {pair.id_b}"
        neighbours.setdefault(pair.id_a, []).append((pair.similarity, marked))
    drops: list[tuple[str, str]] = []
    if neighbours:
        _drops_table(con, "fw_nd_members", [(i, "") for i in neighbours])
        members = ibis.table({"id": "string", "why": "string"}, name="fw_nd_members")
        ranked = rows.semi_join(members, rows.interaction_id == members.id)
        order = ranked.order_by(keep_order(ranked, keep)).select("interaction_id")
        found = con.execute(ibis.to_sql(order, dialect="duckdb")).fetchall()
        drops = keep_first((str(member) for (member,) in found), neighbours, named)
    name = f"fw_nd_drops{next(_counter)}"
    _drops_table(con, name, drops)
    return _with_drops(rows, name)


def contamination_stage(
    con: duckdb.DuckDBPyConnection,
    rows: ir.Table,
    *,
    ngram: int,
    threshold: float,
    eval_sets: list[str],
    tokens: str | None = None,
) -> ir.Table:
    """Rows that overlap a stored eval item (prompt and reference) by word n-grams.

    Words are those of ``words_sql`` (punctuation separates them), as for near-duplicates.
    The overlap of a row and an item is the share of the shorter one's
    n-grams found in the other (an eval question pasted inside a longer prompt counts in full);
    a row at or above ``threshold`` for any item is dropped, naming the item. Items shorter
    than ``ngram`` words are compared on n-grams of their own length (at least 3 words).
    ``tokens`` is as for ``near_duplicate_stage``.
    """
    n = int(ngram)
    items = f"fw_dc_items{next(_counter)}"
    sets_filter = "eval_set IN (SELECT unnest($sets::VARCHAR[]))" if eval_sets else "true"
    # An item's prompt and reference are compared apart: a pasted question is contamination
    # even when the row does not hold the reference answer.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {items} AS WITH texts AS ("
        f" SELECT item_id || ' (' || eval_set || ') prompt' AS item, prompt AS t FROM eval_items"
        f"  WHERE {sets_filter}"
        f" UNION ALL SELECT item_id || ' (' || eval_set || ') reference', reference"
        f"  FROM eval_items WHERE reference IS NOT NULL AND {sets_filter}),"
        f" w AS (SELECT item, {word_trigrams_sql('t')} AS g,"
        f"  len({words_sql('t')}) AS words FROM texts),"
        f" sized AS (SELECT item, g, least({n}, words) AS n FROM w WHERE words >= 3)"
        f" SELECT DISTINCT item, n, unnest(CASE n"
        + "".join(
            f" WHEN {size} THEN list_transform(generate_series(1, len(g) - {size} + 3),"
            f" lambda p: {ngram_hash_sql('g', size, 'p')})"
            for size in range(3, n + 1)
        )
        + " END) AS h FROM sized",
        {"sets": eval_sets} if eval_sets else {},
    )
    sizes = [int(r[0]) for r in con.execute(f"SELECT DISTINCT n FROM {items}").fetchall()]
    overlaps: list[tuple[str, str, int, float]] = []
    if sizes:
        row_view = f"fw_dc_rows{next(_counter)}"
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {row_view} AS SELECT interaction_id AS id, g"
            f" FROM ({_row_trigrams_source(rows, tokens)})"
        )
        for size in sizes:
            # A row of w words has w - size + 1 n-grams (at least one); w = len(g) + 2.
            count = f"greatest(len(g) - {size} + 3, 1)"
            found = con.execute(
                f"WITH g AS (SELECT id, {count} AS total,"
                f" unnest(list_transform(generate_series(1, {count}),"
                f" lambda p: {ngram_hash_sql('g', size, 'p')})) AS h FROM {row_view}),"
                f" item_sizes AS (SELECT item, count(*) AS m FROM {items}"
                f"  WHERE n = {size} GROUP BY ALL),"
                f" shared AS (SELECT g.id, i.item, any_value(g.total) AS total,"
                f"  count(DISTINCT g.h) AS k FROM g JOIN {items} i ON i.h = g.h AND i.n = {size}"
                f"  GROUP BY ALL)"
                f" SELECT * FROM (SELECT s.id, s.item, {size}, s.k / least(s.total, z.m) AS share"
                f" FROM shared s JOIN item_sizes z USING (item)) WHERE share >= ?",
                [threshold - 1e-12],
            ).fetchall()
            overlaps.extend(
                (str(i), str(item), int(n), float(share)) for i, item, n, share in found
            )
        con.execute(f"DROP VIEW IF EXISTS {row_view}")
    con.execute(f"DROP TABLE IF EXISTS {items}")
    name = f"fw_dc_drops{next(_counter)}"
    _drops_table(con, name, contamination_drops(overlaps))
    return _with_drops(rows, name)


def contamination_drops(overlaps: Iterable[tuple[str, str, int, float]]) -> list[tuple[str, str]]:
    """Each contaminated row and why, from its overlaps (row, item, n, share) at or above the
    threshold, on every engine: the item it overlaps most, a tie going to the shorter n-grams
    and then to the item first in order ("e-1 (set) prompt" before "e-2 (set) prompt")."""
    best: dict[str, tuple[float, int, str]] = {}
    for row, item, n, share in overlaps:
        key = (-share, n, item)
        if row not in best or key < best[row]:
            best[row] = key
    return sorted(
        (row, f"overlaps eval item {item}: {-share:.0%} of {n}-grams")
        for row, (share, n, item) in best.items()
    )
