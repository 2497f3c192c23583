"""A version may be stored as its base plus what changed; every row keeps its line's digest.

A cycle carries its parent's rows forward, so a version holds mostly rows its parent held as
they were. It is stored as a *delta* over a full version (its base): the rows it holds
otherwise than the base (added, or held with another text, split or system message) are its
own members, and the base's rows it does not hold are listed in ``dataset_member_drops``. The
view ``dataset_version_members`` resolves every version's members, and ``dataset_rows`` (its
texts joined) reads it, so readers are unchanged.

Each member keeps ``line_sha``, the sha256 of its canonical JSONL line, and a version's hash
becomes the sha256 of its rows' line digests in the canonical order
(``core.datasets.version_sha256``): a cycle computes the lines of the rows it adds, not of
every row it carries. This migration fills the digests of stored rows and restates stored
versions' hashes that way (the same rows, the same order: only how the hash is taken).
"""

from __future__ import annotations

import duckdb

_MEMBER_COLUMNS = (
    "row_key, source, interaction_id, user_id, cell_key, split, system, sort_key, origin_cycle,"
    " origin_version, text_md5, line_sha"
)


def apply(con: duckdb.DuckDBPyConnection) -> None:
    from core.datasets import line_sha_sql, version_sha256

    con.execute("DROP VIEW dataset_rows")
    con.execute("ALTER TABLE dataset_members ADD COLUMN line_sha VARCHAR")
    con.execute(
        "CREATE TABLE dataset_version_bases ("
        " version_id VARCHAR PRIMARY KEY,"  # a version stored as a delta
        " base_version VARCHAR NOT NULL)"  # the full version whose members it inherits
    )
    con.execute(
        "CREATE TABLE dataset_member_drops ("
        " version_id VARCHAR NOT NULL,"
        " row_key VARCHAR NOT NULL,"  # a row of the base this version does not inherit
        " interaction_id VARCHAR)"  # production rows: erasure reaches the entry by it
    )
    con.execute(
        f"CREATE VIEW dataset_version_members AS SELECT version_id, {_MEMBER_COLUMNS}"
        " FROM dataset_members UNION ALL SELECT b.version_id, "
        + ", ".join(f"m.{c.strip()}" for c in _MEMBER_COLUMNS.split(","))
        + " FROM dataset_version_bases b JOIN dataset_members m"
        " ON m.version_id = b.base_version WHERE NOT EXISTS (SELECT 1 FROM dataset_member_drops d"
        " WHERE d.version_id = b.version_id AND d.row_key = m.row_key)"
    )
    con.execute(
        "CREATE VIEW dataset_rows AS SELECT m.version_id, m.row_key, m.source,"
        " m.interaction_id, m.user_id, m.cell_key, m.split, m.system, t.prompt, t.response,"
        " m.sort_key, m.origin_cycle, m.origin_version, m.text_md5, m.line_sha"
        " FROM dataset_version_members m JOIN dataset_texts t"
        " ON t.row_key = m.row_key AND t.text_md5 = m.text_md5"
    )
    line = line_sha_sql("dataset_members.system", "t.prompt", "t.response")
    con.execute(
        f"UPDATE dataset_members SET line_sha = {line} FROM dataset_texts t"
        " WHERE t.row_key = dataset_members.row_key AND t.text_md5 = dataset_members.text_md5"
    )
    for (version_id,) in con.execute("SELECT version_id FROM dataset_versions").fetchall():
        con.execute(
            "UPDATE dataset_versions SET sha256 = ? WHERE version_id = ?",
            [
                version_sha256(
                    con, "(SELECT * FROM dataset_members WHERE version_id = $v)", {"v": version_id}
                ),
                version_id,
            ],
        )
