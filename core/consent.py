"""The consent ledger, the eligibility rule, and erasure (``forget``).

Eligibility (DESIGN.md): an interaction may enter a training dataset only when its user's
latest ``training`` event at or before the interaction is a grant and no withdrawal followed.
No record means no consent; a withdrawal at the same instant as a grant wins; events may
arrive in any order, since only their timestamps count. Equivalently: take the user's latest
grant at or before the interaction; it is eligible when such a grant exists and no withdrawal
has a timestamp at or after that grant. And per user: their interactions are eligible from the
first grant after their last withdrawal on (``consented_since_sql``), which counts by a plain
join on the user instead of a lookup per interaction.

Erasure (``forget_user``) deletes the user's rows and everything derived from their text, then
rewrites the store file so that no freed block still holds their bytes, and reports what lies
beyond the store's reach (exported files, backups, models trained on their rows).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from core.access import User, require
from core.audit import record_audit
from core.errors import ConsentError
from core.escaping import sql_identifier
from core.settings import settings
from core.store import Store

# Ibis takes about a second to import: only the eligibility expression uses it, so forgetting a
# user or counting consent never loads it.
if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = [
    "CONSENT_EVENT_COLUMNS",
    "SCOPES",
    "ForgetResult",
    "consent_counts",
    "consent_rate_over_time",
    "consented_since_sql",
    "count_eligible",
    "eligible_interactions",
    "erasure_hash",
    "erasure_key",
    "forget_user",
    "user_consent",
]

SCOPES = ("training", "human_review", "analytics")

# The store's tables as the eligibility rule reads them: column names and Ibis types.
_INTERACTIONS = {
    "interaction_id": "string",
    "batch_id": "string",
    "cycle": "int32",
    "ts": "timestamp('UTC')",
    "user_id": "string",
    "variant": "string",
    "model": "string",
    "prompt": "string",
    "response": "string",
    "system": "string",
    "feedback": "string",
    "accepted": "boolean",
    "topic": "string",
    "difficulty": "string",
}
CONSENT_EVENT_COLUMNS = {
    "user_id": "string",
    "ts": "timestamp('UTC')",
    "scope": "string",
    "action": "string",
    "policy_version": "string",
    "source": "string",
}
"""The consent ledger's columns (``consent_events``), as Ibis types."""


def eligible_interactions(
    interactions: ir.Table | None = None,
    events: ir.Table | None = None,
    *,
    scope: str = "training",
) -> ir.Table:
    """The interactions whose user consented to ``scope`` (an Ibis expression, any backend).

    Defaults to the store's ``interactions`` and ``consent_events`` tables by name; pass other
    tables (same columns) to run the rule elsewhere.
    """
    import ibis

    rows = interactions if interactions is not None else ibis.table(_INTERACTIONS, "interactions")
    ledger = events if events is not None else ibis.table(CONSENT_EVENT_COLUMNS, "consent_events")
    ledger = ledger.filter(ledger.scope == scope)
    grants = ledger.filter(ledger.action == "grant").select(g_user=ledger.user_id, g_ts=ledger.ts)
    withdrawals = ledger.filter(ledger.action == "withdraw").select(
        w_user=ledger.user_id, w_ts=ledger.ts
    )
    latest = (
        rows.select(i_id=rows.interaction_id, i_user=rows.user_id, i_ts=rows.ts)
        .join(grants, [ibis._.i_user == grants.g_user, grants.g_ts <= ibis._.i_ts])
        .group_by(["i_id", "i_user"])
        .aggregate(granted_at=ibis._.g_ts.max())
    )
    revoked = latest.join(
        withdrawals,
        [latest.i_user == withdrawals.w_user, withdrawals.w_ts >= latest.granted_at],
    ).select(r_id=latest.i_id)
    allowed = latest.anti_join(revoked, latest.i_id == revoked.r_id).select(e_id=latest.i_id)
    return rows.semi_join(allowed, rows.interaction_id == allowed.e_id)


def eligible_interactions_sql(scope: str = "training") -> str:
    """The eligibility rule compiled to DuckDB SQL over the store's tables."""
    import ibis

    return str(ibis.to_sql(eligible_interactions(scope=scope), dialect="duckdb"))


def consented_since_sql() -> str:
    """SQL of one row per user whose grant of the scope bound as ``$scope`` still counts:
    ``user_id`` and ``since``, the moment from which their interactions are eligible.

    The same rule as eligible_interactions, per user. An interaction at ``ts`` is eligible when
    the latest grant at or before ``ts`` is later than every withdrawal; that grant is at or
    after the first grant later than the last withdrawal exactly when ``ts`` is. So eligible
    means ``ts >= since``, with ``since`` that first grant (a user with none: never).
    """
    return """
    SELECT g.user_id, min(g.ts) AS since
    FROM consent_events g
    LEFT JOIN (
        SELECT user_id, max(ts) AS last_withdrawal FROM consent_events
        WHERE scope = $scope AND action = 'withdraw' GROUP BY user_id
    ) w USING (user_id)
    WHERE g.scope = $scope AND g.action = 'grant'
        AND (w.last_withdrawal IS NULL OR g.ts > w.last_withdrawal)
    GROUP BY g.user_id
    """


def count_eligible(store: Store, scope: str = "training") -> int:
    """How many stored interactions the rule lets into a training dataset."""
    row = store.fetch_one(
        f"SELECT count(*) FROM interactions i JOIN ({consented_since_sql()}) c"
        " ON c.user_id = i.user_id AND i.ts >= c.since",
        {"scope": scope},
    )
    return int(row[0]) if row else 0


def consent_counts(store: Store) -> list[dict[str, Any]]:
    """Events and users per scope, policy version and action."""
    return store.fetch_dicts(
        "SELECT scope, policy_version, action, count(*) AS events, "
        "count(DISTINCT user_id) AS users FROM consent_events "
        "GROUP BY ALL ORDER BY scope, policy_version, action"
    )


def consent_rate_over_time(store: Store, scope: str = "training") -> list[dict[str, Any]]:
    """Per day: users whose latest ``scope`` event by the end of that day is a grant, over all
    users with an event by then.

    A user's state changes only on days with one of their events, so each day's totals are
    accumulated from those changes (a new user, a grant turned withdrawal or back): one pass
    over the events, where joining every day to every earlier event grows with days × events.
    """
    return store.fetch_dicts(
        """
        WITH events AS (SELECT user_id, ts, action FROM consent_events WHERE scope = $scope),
        days AS (
            SELECT unnest(generate_series(min(ts)::DATE, max(ts)::DATE, INTERVAL 1 DAY))::DATE
                AS day
            FROM events
        ),
        user_days AS (
            SELECT user_id, ts::DATE AS day,
                arg_max(action = 'grant', (ts, action = 'withdraw')) AS granted
            FROM events GROUP BY user_id, day
        ),
        changes AS (
            SELECT day, sum(CASE WHEN previous_day IS NULL THEN 1 ELSE 0 END) AS new_users,
                sum(granted::INTEGER - coalesce(was_granted, false)::INTEGER) AS newly_granted
            FROM (
                SELECT day, granted,
                    lag(day) OVER w AS previous_day, lag(granted) OVER w AS was_granted
                FROM user_days WINDOW w AS (PARTITION BY user_id ORDER BY day)
            )
            GROUP BY day
        ),
        totals AS (
            SELECT d.day,
                sum(coalesce(c.new_users, 0)) OVER (ORDER BY d.day)::BIGINT AS users,
                sum(coalesce(c.newly_granted, 0)) OVER (ORDER BY d.day)::BIGINT AS granted
            FROM days d LEFT JOIN changes c USING (day)
        )
        SELECT day, users, granted, granted / users AS rate FROM totals ORDER BY day
        """,
        {"scope": scope},
    )


def user_consent(store: Store, user_id: str) -> dict[str, Any]:
    """One user's consent events, current state per scope and number of stored interactions."""
    events = store.fetch_dicts(
        "SELECT ts, scope, action, policy_version, source FROM consent_events "
        "WHERE user_id = ? ORDER BY ts, action = 'withdraw'",
        [user_id],
    )
    state: dict[str, str] = {}
    for event in events:
        state[event["scope"]] = "granted" if event["action"] == "grant" else "withdrawn"
    row = store.fetch_one("SELECT count(*) FROM interactions WHERE user_id = ?", [user_id])
    return {
        "user_id": user_id,
        "events": events,
        "state": {s: state.get(s, "no record (no consent)") for s in SCOPES},
        "interactions": int(row[0]) if row else 0,
    }


# -- erasure --------------------------------------------------------------------------------------

# Eval items whose text contains one of the user's texts of at least this length were built from
# it (shorter texts, "yes" or "thanks", would match items that merely share a word).
_MIN_CONTAINED_TEXT = 20
# Where an eval item names the interaction it was built from (its labels).
_ITEM_PROVENANCE_KEYS = ("interaction_id", "source_interaction_id")


@dataclass
class ForgetResult:
    """What ``forget`` erased (rows per table, in one transaction, then a rewrite of the file)
    and what lies beyond the store's reach: files exported and backups made before, and models
    trained on dataset versions that held the user's rows."""

    user_id: str
    interactions_deleted: int
    dataset_rows_deleted: int
    eval_items_deleted: int = 0
    rows_deleted: dict[str, int] = field(default_factory=dict)
    audit_hash: str = ""
    rewrite_seconds: float = 0.0
    dataset_versions: list[str] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    backups: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``data forget --json`` keys."""
        return asdict(self)


def erasure_key(store: Store) -> bytes:
    """The secret key of erasure hashes: the ``audit_key`` setting (FLYWHEEL_AUDIT_KEY), else
    the key file beside the store (``<store>.audit-key``), created with mode 0600 on first use.

    Never inside the store: with a key stored beside the hashes, a forgotten id is found again
    by hashing candidate ids. Raises ConsentError when the key file cannot be read or made.
    """
    configured = settings.audit_key.strip()
    if configured:
        return configured.encode()
    path = Path(f"{store.path}.audit-key")
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConsentError(
            f"Cannot create the audit key file {path} ({exc.strerror}); set FLYWHEEL_AUDIT_KEY."
        ) from None
    else:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32) + "\n")
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConsentError(
            f"Cannot read the audit key file {path} ({exc.strerror}); set FLYWHEEL_AUDIT_KEY."
        ) from None
    if not key:
        raise ConsentError(
            f"The audit key file {path} is empty; delete it or set FLYWHEEL_AUDIT_KEY."
        )
    return key


def erasure_hash(key: bytes, user_id: str) -> str:
    """The audit log's stand-in for a forgotten user id: HMAC-SHA256 of the id under ``key``,
    so that only a holder of the key can tell whether a given id was forgotten."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


_NOT_DATASET_ROWS = frozenset(
    {"dataset_members", "dataset_texts", "dataset_row_sketches", "dataset_member_drops"}
)


def _tables_referencing(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """Every base table with a ``user_id`` or ``interaction_id`` column, and which it has."""
    rows = con.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_name = c.table_name "
        "AND t.table_schema = c.table_schema AND t.table_catalog = c.table_catalog "
        "WHERE t.table_type = 'BASE TABLE' AND c.table_schema = 'main' "
        "AND c.table_catalog = current_database() "
        "AND c.column_name IN ('user_id', 'interaction_id')"
    ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(str(table), set()).add(str(column))
    return found


def _collect_user_rows(
    con: duckdb.DuckDBPyConnection, user: str, tables: dict[str, set[str]]
) -> None:
    """Temp tables of the user's interaction ids (from every table that pairs them with the
    user, so rows retention already took from ``interactions`` count too) and of their texts."""
    pairs = [t for t, columns in tables.items() if columns == {"user_id", "interaction_id"}]
    union = " UNION ".join(
        f"SELECT interaction_id FROM {sql_identifier(t)} WHERE user_id = $user"
        for t in sorted(pairs)
    )
    nothing = "SELECT NULL::VARCHAR AS interaction_id WHERE false"
    con.execute(f"CREATE OR REPLACE TEMP TABLE fw_forget_ids AS {union or nothing}", {"user": user})
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_forget_texts AS SELECT DISTINCT text FROM ("
        " SELECT unnest([prompt, response, system, raw_prompt, raw_response, raw_system]) AS text"
        " FROM interactions WHERE user_id = $user"
        " UNION ALL SELECT unnest([prompt, response, system]) FROM dataset_rows"
        " WHERE interaction_id IN (SELECT interaction_id FROM fw_forget_ids))"
        " WHERE text IS NOT NULL AND trim(text) <> ''",
        {"user": user},
    )


def _derived_item_condition() -> str:
    """SQL condition on an eval item (``prompt``, ``reference``, ``labels``) built from the
    user's text: it names one of their interactions, or holds one of their texts."""
    named = " OR ".join(
        f"json_extract_string(labels, '$.{key}') IN (SELECT interaction_id FROM fw_forget_ids)"
        for key in _ITEM_PROVENANCE_KEYS
    )
    return (
        f"({named} OR prompt IN (SELECT text FROM fw_forget_texts)"
        " OR reference IN (SELECT text FROM fw_forget_texts)"
        " OR EXISTS (SELECT 1 FROM fw_forget_texts t"
        f" WHERE length(t.text) >= {_MIN_CONTAINED_TEXT}"
        " AND (contains(prompt, t.text) OR contains(coalesce(reference, ''), t.text))))"
    )


def _erase_eval_items(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Delete eval items built from the user's text, with the outputs and scores of runs over
    them, and correct the item counts of the set versions they leave."""
    deleted: dict[str, int] = {}
    condition = _derived_item_condition()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fw_forget_items AS SELECT eval_set, version, item_id"
        f" FROM eval_set_items WHERE {condition}"
    )
    runs = (
        "(run_id, item_id) IN (SELECT r.run_id, i.item_id FROM eval_runs r JOIN fw_forget_items i"
        " ON i.eval_set = r.eval_set AND i.version = r.set_version)"
    )
    steps = [
        ("eval_scores", runs),
        ("eval_outputs", runs),
        (
            "eval_set_items",
            "(eval_set, version, item_id) IN (SELECT eval_set, version, item_id"
            " FROM fw_forget_items)",
        ),
        ("eval_items", condition),
    ]
    for table, where in steps:
        (count,) = con.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone() or (0,)
        if count:
            con.execute(f"DELETE FROM {table} WHERE {where}")
            deleted[table] = int(count)
    if deleted.get("eval_set_items"):
        con.execute(
            "UPDATE eval_set_versions v SET items = (SELECT count(*) FROM eval_set_items i"
            " WHERE i.eval_set = v.eval_set AND i.version = v.version)"
            " WHERE (eval_set, version) IN (SELECT eval_set, version FROM fw_forget_items)"
        )
    con.execute("DROP TABLE fw_forget_items")
    return deleted


def _beyond_the_store(
    con: duckdb.DuckDBPyConnection, versions: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Exported files of the versions, backups recorded, and models trained on the versions:
    copies of the user's rows that erasure cannot reach, for the team to act on."""
    exports: list[dict[str, Any]] = []
    for ts, actor, target, detail in con.execute(
        "SELECT ts, actor, target, detail FROM audit_log WHERE action = 'dataset.export'"
        " ORDER BY ts"
    ).fetchall():
        info = json.loads(detail or "{}")
        version = str(target).removeprefix("dataset:")
        if version in versions:
            exports.append(
                {
                    "path": info.get("path", ""),
                    "dataset_version": version,
                    "exported_at": str(ts),
                    "by": actor,
                    "kind": "dataset export",
                }
            )
    models: list[dict[str, Any]] = []
    if versions:
        for job_id, version, model, status, path, created in con.execute(
            "SELECT job_id, dataset_version, fine_tuned_model, status, export_path, created_at"
            " FROM training_jobs WHERE list_contains($versions, dataset_version)"
            " ORDER BY created_at",
            {"versions": versions},
        ).fetchall():
            models.append(
                {
                    "job_id": job_id,
                    "dataset_version": version,
                    "fine_tuned_model": model,
                    "status": status,
                }
            )
            exports.append(
                {
                    "path": path,
                    "dataset_version": version,
                    "exported_at": str(created),
                    "by": "",
                    "kind": f"training file of {job_id}",
                }
            )
        for model, version, job_id in con.execute(
            "SELECT model, dataset_version, job_id FROM cycle_candidates"
            " WHERE list_contains($versions, dataset_version) AND job_id IS NULL",
            {"versions": versions},
        ).fetchall():
            models.append(
                {
                    "job_id": job_id,
                    "dataset_version": version,
                    "fine_tuned_model": model,
                    "status": "registered candidate",
                }
            )
    backups = [
        {"action": action, "at": str(ts), "by": actor, "target": target}
        for ts, actor, action, target in con.execute(
            "SELECT ts, actor, action, target FROM audit_log"
            " WHERE contains(action, 'backup') ORDER BY ts"
        ).fetchall()
    ]
    return exports, backups, models


def forget_user(store: Store, user_id: str, *, by: User) -> ForgetResult:
    """Erase a user's interactions, every copy of them and everything built from their text,
    then rewrite the store file so that none of their bytes is left in it; audit it under the
    name of ``by``, who erases.

    Every table with a ``user_id`` or ``interaction_id`` column is covered (found through
    information_schema, so tables added later, such as dataset rows, are too), as are
    quarantined lines that mention the user or their interactions and eval items built from
    their text (named in the item's labels, or holding one of their texts) with the outputs and
    scores of runs over those items. The audit entry holds an HMAC of the id under a key kept
    outside the store (``erasure_key``), never the id. The result lists what the store cannot
    reach: exported files, backups and models trained on dataset versions that held their rows.

    Raises ConsentError when the store holds nothing of that user (unknown or already
    forgotten; the file is rewritten again then, in case an earlier rewrite failed);
    AccessError, before anything is read or changed, when ``by`` may not erase users;
    StoreError when the rewrite fails (the rows are deleted; run forget again).
    """
    require(by, "data.erase")
    user = user_id.strip()
    if not user:
        raise ConsentError("Give the user id to forget.")
    digest = erasure_hash(erasure_key(store), user)
    with store.transaction() as con:
        tables = _tables_referencing(con)
        _collect_user_rows(con, user, tables)
        # Rows of dataset versions, each version's counted (a version stored as a delta
        # holds its base's rows without copies of their members).
        in_versions = con.execute(
            "SELECT version_id, count(*) FROM dataset_version_members WHERE user_id = ?"
            " OR interaction_id IN (SELECT interaction_id FROM fw_forget_ids)"
            " GROUP BY version_id ORDER BY version_id",
            [user],
        ).fetchall()
        versions = [str(v) for v, _n in in_versions]
        version_rows = sum(int(n) for _v, n in in_versions)
        deleted = _erase_eval_items(con)
        for table, columns in sorted(tables.items(), key=lambda t: t[0] == "interactions"):
            conditions = []
            params: list[Any] = []
            if "user_id" in columns:
                conditions.append("user_id = ?")
                params.append(user)
            if "interaction_id" in columns:
                conditions.append("interaction_id IN (SELECT interaction_id FROM fw_forget_ids)")
            if table == "quarantine":
                # A quarantined line may be too broken to have yielded a user_id column: match
                # the id, or one of their interaction ids, as a whole token of the raw line.
                conditions.append(
                    "EXISTS (SELECT 1 FROM (SELECT ? AS token UNION ALL"
                    " SELECT interaction_id FROM fw_forget_ids) ids WHERE contains(raw, token)"
                    " AND regexp_matches(raw, '(^|[^A-Za-z0-9_.@-])'"
                    " || regexp_escape(token) || '($|[^A-Za-z0-9_.@-])'))"
                )
                params.append(user)
            name = sql_identifier(table)
            where = " OR ".join(conditions)
            (count,) = con.execute(
                f"SELECT count(*) FROM {name} WHERE {where}", params
            ).fetchone() or (0,)
            if count:
                con.execute(f"DELETE FROM {name} WHERE {where}", params)
                deleted[table] = int(count)
        con.execute("DROP TABLE IF EXISTS fw_forget_ids")
        con.execute("DROP TABLE IF EXISTS fw_forget_texts")
        if not deleted:
            earlier = con.execute(
                "SELECT ts FROM audit_log WHERE action = 'forget' AND target = ? "
                "ORDER BY ts LIMIT 1",
                [f"user:{digest}"],
            ).fetchall()
        else:
            earlier = []
            # The salt of earlier versions' hashes sat here, beside them: gone for good now.
            con.execute("DELETE FROM workspace WHERE key = 'erasure_salt'")
            exports, backups, models = _beyond_the_store(con, versions)
            # Plus any other table of dataset rows; the texts members point at, their sketches
            # (hashes kept for deduplication) and a version's drops are not rows of their own.
            dataset_rows = version_rows + sum(
                n for t, n in deleted.items() if "dataset" in t and t not in _NOT_DATASET_ROWS
            )
            eval_items = deleted.get("eval_items", 0) + deleted.get("eval_set_items", 0)
            record_audit(
                con,
                actor=by.name,
                action="forget",
                target=f"user:{digest}",
                detail={
                    "rows_deleted": deleted,
                    "hmac": digest,
                    "beyond_store": {
                        "exports": len(exports),
                        "backups": len(backups),
                        "models": len(models),
                    },
                },
            )
    if not deleted and not earlier:
        raise ConsentError(
            f"The store holds nothing for user {user!r}; check the id (ids are "
            "case-sensitive). Nothing was changed."
        )
    started = time.perf_counter()
    store.rewrite()
    seconds = round(time.perf_counter() - started, 3)
    if not deleted:
        raise ConsentError(
            f"User {user!r} was already forgotten on {earlier[0][0]:%Y-%m-%d}; "
            "nothing of theirs is left in the store."
        )
    return ForgetResult(
        user,
        deleted.get("interactions", 0),
        dataset_rows,
        eval_items,
        deleted,
        digest,
        seconds,
        versions,
        exports,
        backups,
        models,
    )
