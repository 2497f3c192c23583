"""The consent ledger, the eligibility rule, and erasure (``forget``).

Eligibility (DESIGN.md): an interaction may enter a training dataset only when its user's
latest ``training`` event at or before the interaction is a grant and no withdrawal followed.
No record means no consent; a withdrawal at the same instant as a grant wins; events may
arrive in any order, since only their timestamps count. Equivalently: take the user's latest
grant at or before the interaction; it is eligible when such a grant exists and no withdrawal
has a timestamp at or after that grant. And per user: their interactions are eligible from the
first grant after their last withdrawal on (``consented_since_sql``), which counts by a plain
join on the user instead of a lookup per interaction.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir

from core.access import User, require
from core.audit import record_audit
from core.errors import ConsentError
from core.store import Store

__all__ = [
    "SCOPES",
    "ForgetResult",
    "consent_counts",
    "consent_rate_over_time",
    "consented_since_sql",
    "count_eligible",
    "eligible_interactions",
    "forget_user",
    "salted_hash",
    "user_consent",
]

SCOPES = ("training", "human_review", "analytics")

_INTERACTIONS = ibis.schema(
    {
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
)
_EVENTS = ibis.schema(
    {
        "user_id": "string",
        "ts": "timestamp('UTC')",
        "scope": "string",
        "action": "string",
        "policy_version": "string",
        "source": "string",
    }
)


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
    rows = interactions if interactions is not None else ibis.table(_INTERACTIONS, "interactions")
    ledger = events if events is not None else ibis.table(_EVENTS, "consent_events")
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


@dataclass
class ForgetResult:
    """What ``forget`` erased: rows per table, in one transaction."""

    user_id: str
    interactions_deleted: int
    dataset_rows_deleted: int
    rows_deleted: dict[str, int] = field(default_factory=dict)
    audit_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``forget --json`` keys."""
        return asdict(self)


def _salt(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT value FROM workspace WHERE key = 'erasure_salt'").fetchall()
    if row:
        return str(row[0][0])
    salt = secrets.token_hex(16)
    con.execute("INSERT INTO workspace VALUES ('erasure_salt', ?)", [salt])
    return salt


def salted_hash(salt: str, user_id: str) -> str:
    """The audit log's stand-in for a user id: sha256 of the workspace salt and the id."""
    return hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()


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


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def forget_user(store: Store, user_id: str, *, by: User) -> ForgetResult:
    """Erase a user's interactions and every copy of them, in one transaction, and audit it
    under the name of ``by``, who erases.

    Every table with a ``user_id`` or ``interaction_id`` column is covered (found through
    information_schema, so tables added later, such as dataset rows, are too), as are
    quarantined lines that mention the id. The audit entry holds a salted hash, never the id.
    Raises ConsentError when the store holds nothing of that user (unknown or already
    forgotten); nothing is changed then. AccessError, before anything is read or changed, when
    ``by`` may not erase users.
    """
    require(by, "data.erase")
    user = user_id.strip()
    if not user:
        raise ConsentError("Give the user id to forget.")
    with store.transaction() as con:
        salt = _salt(con)
        digest = salted_hash(salt, user)
        tables = _tables_referencing(con)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fw_forget_ids AS "
            "SELECT interaction_id FROM interactions WHERE user_id = ?",
            [user],
        )
        deleted: dict[str, int] = {}
        for table, columns in sorted(tables.items(), key=lambda t: t[0] == "interactions"):
            conditions = []
            params: list[Any] = []
            if "user_id" in columns:
                conditions.append("user_id = ?")
                params.append(user)
            if "interaction_id" in columns:
                conditions.append("interaction_id IN (SELECT interaction_id FROM fw_forget_ids)")
            if table == "quarantine":
                # A quarantined line may be too broken to have yielded a user_id column.
                conditions.append("contains(raw, ?)")
                params.append(f'"{user}"')
            name = _quote(table)
            count = con.execute(
                f"SELECT count(*) FROM {name} WHERE {' OR '.join(conditions)}", params
            ).fetchall()[0][0]
            if count:
                con.execute(f"DELETE FROM {name} WHERE {' OR '.join(conditions)}", params)
                deleted[table] = int(count)
        con.execute("DROP TABLE IF EXISTS fw_forget_ids")
        if not deleted:
            earlier = con.execute(
                "SELECT ts FROM audit_log WHERE action = 'forget' AND target = ? "
                "ORDER BY ts LIMIT 1",
                [f"user:{digest}"],
            ).fetchall()
            if earlier:
                raise ConsentError(
                    f"User {user!r} was already forgotten on {earlier[0][0]:%Y-%m-%d}; "
                    "nothing of theirs is left in the store."
                )
            raise ConsentError(
                f"The store holds nothing for user {user!r}; check the id (ids are "
                "case-sensitive). Nothing was changed."
            )
        dataset_rows = sum(n for t, n in deleted.items() if "dataset" in t)
        record_audit(
            con,
            actor=by.name,
            action="forget",
            target=f"user:{digest}",
            detail={"rows_deleted": deleted, "salted_hash": digest},
        )
    return ForgetResult(
        user, deleted.get("interactions", 0), dataset_rows, deleted, audit_hash=digest
    )
