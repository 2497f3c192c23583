"""Near-duplicate detection with MinHash and LSH banding, computed inside DuckDB.

The whole pipeline is SQL over temporary tables, so it runs at the query engine's speed and
never pulls texts into Python:

1. normalise each text (lower case, collapsed whitespace) and cut it into shingles (character
   k-grams by default, word k-grams on request), hashed to 64 bits;
2. one-permutation MinHash: each shingle hash falls into one of ``num_perm`` bins and each bin
   keeps its minimum (one pass over the shingles instead of ``num_perm``); two texts agree on a
   bin with probability close to their Jaccard similarity, and an empty bin is part of the
   signature, so it only matches an empty bin;
3. LSH banding: ``bands`` bands of ``rows`` bins each, a band's signature the XOR of its bins'
   hashes (order-free, one aggregate); texts sharing one band signature are candidate pairs.
   ``bands`` and ``rows`` are chosen so that a pair at the threshold is a candidate with
   probability at least 0.98;
4. each candidate pair is verified by its exact shingle Jaccard similarity (or, with
   ``verify="estimate"``, by the share of equal MinHash bins) and kept at or above the threshold.

Pairs below the threshold are never returned; pairs well above it are found with probability
close to 1. Exact duplicates are near-duplicates with similarity 1.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Literal

import duckdb

__all__ = [
    "NearDuplicatePair",
    "band_parameters",
    "candidate_probability",
    "near_duplicate_groups",
    "near_duplicate_pairs",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_counter = itertools.count()


@dataclass(frozen=True)
class NearDuplicatePair:
    """Two texts whose shingle sets overlap at least at the threshold (id_a < id_b)."""

    id_a: Any
    id_b: Any
    similarity: float


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that LSH banding makes a pair of this Jaccard similarity a candidate."""
    return float(1.0 - (1.0 - similarity**rows) ** bands)


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


def _quote(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain table or column name")
    return ".".join(f'"{part}"' for part in name.split("."))


def _minhash_tables(
    con: duckdb.DuckDBPyConnection,
    source: str,
    *,
    id_column: str,
    text_column: str,
    num_perm: int,
    shingle: Literal["char", "word"],
    k: int,
    prefix: str,
) -> tuple[str, str]:
    """Create the shingle-hash and MinHash temp tables; return their names."""
    hashes, minhash = f"{prefix}_hashes", f"{prefix}_minhash"
    normalised = (
        f"SELECT {_quote(id_column)} AS id,"
        f" lower(trim(regexp_replace(CAST({_quote(text_column)} AS VARCHAR), '\\s+', ' ', 'g')))"
        f" AS t FROM {source} WHERE {_quote(text_column)} IS NOT NULL"
    )
    if shingle == "char":
        pieces = (
            f"SELECT id, unnest(list_transform("
            f"generate_series(1, greatest(length(t) - {k} + 1, 1)),"
            f" lambda p: hash(substr(t, p, {k})))) AS h FROM ({normalised})"
        )
    else:
        pieces = (
            f"SELECT id, unnest(list_transform(generate_series(1, greatest(len(w) - {k} + 1, 1)),"
            f" lambda p: hash(array_to_string(w[p:p + {k} - 1], ' ')))) AS h"
            f" FROM (SELECT id, string_split(t, ' ') AS w FROM ({normalised}))"
        )
    con.execute(f"CREATE TEMP TABLE {hashes} AS {pieces}")
    # One-permutation MinHash: the shingle hash picks the bin, the rest of it is minimised.
    con.execute(
        f"CREATE TEMP TABLE {minhash} AS SELECT id, h % {num_perm} AS bin,"
        f" min(h // {num_perm}) AS v FROM {hashes} GROUP BY ALL"
    )
    return hashes, minhash


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
) -> list[NearDuplicatePair]:
    """Every pair of texts in ``source`` whose Jaccard similarity is at least ``threshold``.

    ``source`` is a table or view name, or a relation of the same connection, with an id column
    and a text column. Ids must be comparable (the pair holds the smaller id first). Pairs come
    sorted by descending similarity, then ids.
    """
    if not 0 < threshold <= 1:
        raise ValueError("threshold must lie in (0, 1]")
    if k < 1 or num_perm < 1:
        raise ValueError("k and num_perm must be positive")
    prefix = f"__nd{next(_counter)}"
    view = None
    if isinstance(source, duckdb.DuckDBPyRelation):
        view = f"{prefix}_source"
        source.create_view(view, replace=True)
        source_sql = view
    else:
        source_sql = _quote(source)
    bands, rows = band_parameters(threshold, num_perm)
    hashes, minhash = _minhash_tables(
        con,
        source_sql,
        id_column=id_column,
        text_column=text_column,
        num_perm=num_perm,
        shingle=shingle,
        k=k,
        prefix=prefix,
    )
    candidates = f"{prefix}_candidates"
    try:
        con.execute(
            f"CREATE TEMP TABLE {candidates} AS "
            f"WITH sig AS (SELECT id, bin // {rows} AS band, bit_xor(hash(bin, v)) AS s"
            f"  FROM {minhash} WHERE bin < {bands * rows} GROUP BY ALL)"
            f" SELECT DISTINCT a.id AS a, b.id AS b FROM sig a JOIN sig b"
            f"  ON a.band = b.band AND a.s = b.s AND a.id < b.id"
        )
        if verify == "exact":
            query = (
                f"WITH shingles AS (SELECT DISTINCT id, h FROM {hashes} WHERE id IN"
                f"  (SELECT a FROM {candidates} UNION SELECT b FROM {candidates})),"
                f" sizes AS (SELECT id, count(*) AS n FROM shingles GROUP BY id),"
                f" shared AS (SELECT c.a, c.b, count(*) AS inter FROM {candidates} c"
                f"  JOIN shingles sa ON sa.id = c.a"
                f"  JOIN shingles sb ON sb.id = c.b AND sb.h = sa.h GROUP BY ALL)"
                f" SELECT s.a, s.b, s.inter / (na.n + nb.n - s.inter) AS j FROM shared s"
                f"  JOIN sizes na ON na.id = s.a JOIN sizes nb ON nb.id = s.b"
            )
        else:
            # Bins filled in both texts agree with probability ~ Jaccard; a bin filled in
            # only one of them counts as a disagreement.
            query = (
                f"WITH x AS (SELECT c.a, c.b, m.bin, m.v FROM {candidates} c"
                f"  JOIN {minhash} m ON m.id = c.a),"
                f" y AS (SELECT c.a, c.b, m.bin, m.v FROM {candidates} c"
                f"  JOIN {minhash} m ON m.id = c.b)"
                f" SELECT coalesce(x.a, y.a) AS a, coalesce(x.b, y.b) AS b,"
                f"  count(*) FILTER (WHERE x.v = y.v) / count(*) AS j"
                f" FROM x FULL JOIN y ON x.a = y.a AND x.b = y.b AND x.bin = y.bin GROUP BY 1, 2"
            )
        rows_found = con.execute(
            f"SELECT a, b, j FROM ({query}) WHERE j >= ? ORDER BY j DESC, a, b",
            [threshold - 1e-12],
        ).fetchall()
    finally:
        for table in (candidates, minhash, hashes):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        if view is not None:
            con.execute(f"DROP VIEW IF EXISTS {view}")
    return [NearDuplicatePair(a, b, float(j)) for a, b, j in rows_found]


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
