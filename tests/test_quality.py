"""Near-duplicates with MinHash + LSH banding inside DuckDB, checked against exact Jaccard."""

from __future__ import annotations

import random

import duckdb
import pytest

from core.quality import (
    NearDuplicatePair,
    band_parameters,
    candidate_probability,
    near_duplicate_groups,
    near_duplicate_pairs,
)


def _shingles(text: str, k: int = 5) -> set[str]:
    t = " ".join(text.lower().split())
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def _corpus(n: int, planted: int, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(3000)
    ]
    texts = [" ".join(rng.choice(vocabulary) for _ in range(60)) for _ in range(n)]
    pairs = []
    for i in range(planted):
        words = texts[i].split()
        for _ in range(rng.randint(0, 2)):
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
        texts[n - 1 - i] = " ".join(words)
        pairs.append((i, n - 1 - i))
    return texts, pairs


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def test_planted_near_duplicates_are_found_and_nothing_below_threshold(
    con: duckdb.DuckDBPyConnection,
) -> None:
    texts, planted = _corpus(3000, 200, seed=11)
    con.execute("CREATE TABLE docs (id INTEGER, text VARCHAR)")
    con.executemany("INSERT INTO docs VALUES (?, ?)", list(enumerate(texts)))
    pairs = near_duplicate_pairs(con, "docs", threshold=0.8)
    found = {(p.id_a, p.id_b) for p in pairs}
    eligible = [p for p in planted if _jaccard(texts[p[0]], texts[p[1]]) >= 0.8]
    assert len(eligible) >= 150
    recall = sum(p in found for p in eligible) / len(eligible)
    assert recall >= 0.95
    for pair in pairs:
        exact = _jaccard(texts[pair.id_a], texts[pair.id_b])
        assert pair.similarity == pytest.approx(exact)
        assert exact >= 0.8


def test_exact_duplicates_relations_and_word_shingles(con: duckdb.DuckDBPyConnection) -> None:
    rel = con.sql(
        "SELECT * FROM (VALUES ('a', 'The quick brown fox jumps over the lazy dog'),"
        " ('b', 'the  quick brown fox jumps over the LAZY dog'),"
        " ('c', 'Completely different words appear in this sentence here'),"
        " ('d', NULL)) t(doc, body)"
    )
    pairs = near_duplicate_pairs(con, rel, threshold=0.9, id_column="doc", text_column="body")
    assert pairs == [NearDuplicatePair("a", "b", 1.0)]
    words = near_duplicate_pairs(
        con,
        con.sql(
            "SELECT * FROM (VALUES (1, 'one two three four five six'),"
            " (2, 'one two three four five seven')) t(id, text)"
        ),
        threshold=0.5,
        shingle="word",
        k=2,
    )
    assert words[0].similarity == pytest.approx(4 / 6)


def test_estimated_similarity_is_close_to_exact(con: duckdb.DuckDBPyConnection) -> None:
    texts, _planted = _corpus(400, 40, seed=5)
    con.execute("CREATE TABLE docs (id INTEGER, text VARCHAR)")
    con.executemany("INSERT INTO docs VALUES (?, ?)", list(enumerate(texts)))
    pairs = near_duplicate_pairs(con, "docs", threshold=0.7, verify="estimate")
    errors = [abs(p.similarity - _jaccard(texts[p.id_a], texts[p.id_b])) for p in pairs]
    assert len(pairs) >= 35 and sum(errors) / len(errors) < 0.05


def test_band_parameters_keep_pairs_at_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = band_parameters(threshold, 128)
        assert bands * rows <= 128
        assert candidate_probability(threshold, bands, rows) >= 0.98
        assert candidate_probability(threshold - 0.4, bands, rows) < 0.5


def test_groups_join_chains_under_the_smallest_id() -> None:
    pairs = [
        NearDuplicatePair(3, 5, 0.9),
        NearDuplicatePair(1, 3, 0.85),
        NearDuplicatePair(7, 8, 1),
    ]
    assert near_duplicate_groups(pairs) == {1: 1, 3: 1, 5: 1, 7: 7, 8: 7}


def test_names_are_quoted_not_run(con: duckdb.DuckDBPyConnection) -> None:
    """A table or column name is one quoted identifier (core.escaping): SQL in it is a name
    that does not exist, and a name holding a quote works."""
    con.execute("CREATE TABLE x (id INTEGER)")
    texts = ["the quick brown fox jumps over the lazy dog"] * 2 + ["something else entirely"]
    con.execute(
        "CREATE TABLE docs AS SELECT * FROM (VALUES (1, ?), (2, ?), (3, ?)) t(id, text)", texts
    )
    with pytest.raises(duckdb.CatalogException):
        near_duplicate_pairs(con, "docs; DROP TABLE x")
    with pytest.raises(duckdb.BinderException):
        near_duplicate_pairs(con, "docs", text_column='text" IS NOT NULL OR "1')
    assert con.execute("SELECT count(*) FROM x").fetchone() == (0,)
    con.execute('CREATE TABLE "we""ird" AS SELECT id AS "i""d", text FROM docs')
    pairs = near_duplicate_pairs(con, 'we"ird', id_column='i"d', threshold=0.8)
    assert [(p.id_a, p.id_b) for p in pairs] == [(1, 2)]
    assert pairs == near_duplicate_pairs(con, "docs", threshold=0.8)
