"""Eval sets with frozen versions: items, importing a file as a set's version, listing, freezing.

An eval set is versioned by content: importing a file stores its items as the set's newest
version when their content hash differs. A version is frozen as soon as results are recorded
against it (an eval run or imported results) or a gate reads it; a frozen version never changes,
so a changed file makes a new version and every result stays pinned to the items it was scored on.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import clock
from core.access import User, require
from core.audit import record_audit
from core.errors import EvalError
from core.settings import settings
from core.store import Store, insert_rows


@dataclass(frozen=True)
class EvalItem:
    """One eval item of a set version: the prompt, an optional reference, slice labels and
    grader inputs (``labels.tests``, ``labels.regex``, ``labels.schema``)."""

    item_id: str
    prompt: str
    reference: str | None = None
    topic: str | None = None
    difficulty: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def as_mapping(self) -> dict[str, Any]:
        """The item as graders read it."""
        return asdict(self)

    def slice_value(self, dimension: str) -> str | None:
        """The item's label on a slice dimension (topic, difficulty or a key of labels)."""
        if dimension == "topic":
            return self.topic
        if dimension == "difficulty":
            return self.difficulty
        value = self.labels.get(dimension)
        return None if value is None or isinstance(value, dict | list) else str(value)


_GRADER_INPUTS = {"tests", "regex", "schema", "system"}


def slice_dimensions(items: Sequence[EvalItem]) -> list[str]:
    """The label names items can be sliced by: topic, difficulty and scalar labels."""
    names: list[str] = []
    if any(i.topic for i in items):
        names.append("topic")
    if any(i.difficulty for i in items):
        names.append("difficulty")
    extra = sorted(
        {
            k
            for i in items
            for k, v in i.labels.items()
            if k not in _GRADER_INPUTS and isinstance(v, str | int | bool)
        }
    )
    return names + extra


def _content_hash(items: Sequence[EvalItem]) -> str:
    canonical = json.dumps(
        [asdict(i) for i in sorted(items, key=lambda i: i.item_id)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of a JSONL or CSV file, numbered as ingest numbers them."""
    name = path.name.lower().removesuffix(".gz")
    with _open_text(path) as handle:
        if name.endswith(".csv"):
            for index, row in enumerate(csv.DictReader(handle)):
                yield index + 2, {k: (v if v != "" else None) for k, v in row.items() if k}
        elif name.endswith((".jsonl", ".ndjson", ".json")):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield number, record
        else:
            raise EvalError(f"{path.name}: give a .jsonl or .csv file (optionally .gz).")


def _labels(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class EvalSetImport:
    """What an eval-set import did: the ingest batch and, per set, the version it landed in."""

    batch_id: str
    rows_read: int
    accepted: int
    rejected: int
    sets: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


def import_eval_set(
    store: Store, path: str | Path, *, user: User, merge: bool = False
) -> EvalSetImport:
    """Load eval items (DESIGN.md's contract) and store each set they name as a version.

    The file holds a set's whole content (with ``merge``, its items are laid over the newest
    version's). Identical content keeps the version; a changed draft is updated in place; a
    changed frozen version makes a new one. Rows that break the contract go to the quarantine
    through the ingest (``data rejects --batch``). Raises IngestError/EvalError for unreadable
    files; AccessError, before anything is written, when ``user`` may not ingest data (loading eval
    items here is the Data page's ingest of eval items, plus versioning).
    """
    # The ingest loads Ibis: only an import of eval items needs it.
    from core.ingest import ingest_file

    require(user, "data.ingest")
    source = Path(path)
    who = user.name
    batch = ingest_file(store, source, user=user, kind="eval-items")
    rejected = {
        int(r[0])
        for r in store.fetch_all("SELECT line FROM quarantine WHERE batch_id = ?", [batch.batch_id])
    }
    by_set: dict[str, dict[str, EvalItem]] = defaultdict(dict)
    for line, record in _records(source):
        if line in rejected:
            continue
        item_id, eval_set = _text(record.get("item_id")), _text(record.get("eval_set"))
        prompt = _text(record.get("prompt"))
        if not item_id or not eval_set or prompt is None:
            continue
        by_set[eval_set].setdefault(
            item_id,
            EvalItem(
                item_id,
                prompt,
                _text(record.get("reference")),
                _text(record.get("topic")),
                _text(record.get("difficulty")),
                _labels(record.get("labels")),
            ),
        )
    outcomes = [
        _store_version(store, name, items, merge=merge, actor=who, source=source.name)
        for name, items in sorted(by_set.items())
    ]
    return EvalSetImport(batch.batch_id, batch.rows_read, batch.accepted, batch.rejected, outcomes)


def _store_version(
    store: Store,
    eval_set: str,
    items: dict[str, EvalItem],
    *,
    merge: bool,
    actor: str,
    source: str,
) -> dict[str, Any]:
    latest = store.fetch_one(
        "SELECT version, content_hash, frozen_at FROM eval_set_versions WHERE eval_set = ?"
        " ORDER BY version DESC LIMIT 1",
        [eval_set],
    )
    if merge and latest is not None:
        base = {i.item_id: i for i in load_items(store, eval_set, int(latest[0]))}
        items = base | items
    content = list(items.values())
    digest = _content_hash(content)
    if latest is not None and latest[1] == digest:
        return {
            "eval_set": eval_set,
            "version": int(latest[0]),
            "items": len(content),
            "status": "unchanged",
        }
    if latest is not None and latest[2] is None:
        version, status = int(latest[0]), "updated"
    else:
        version = int(latest[0]) + 1 if latest is not None else 1
        status = "created"
    with store.transaction() as con:
        con.execute(
            "DELETE FROM eval_set_items WHERE eval_set = ? AND version = ?", [eval_set, version]
        )
        con.execute(
            "DELETE FROM eval_set_versions WHERE eval_set = ? AND version = ?", [eval_set, version]
        )
        con.execute(
            "INSERT INTO eval_set_versions (eval_set, version, content_hash, items, created_at,"
            " created_by, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [eval_set, version, digest, len(content), clock.now(), actor, source],
        )
        insert_rows(
            con,
            "eval_set_items",
            [
                [
                    eval_set,
                    version,
                    i.item_id,
                    i.prompt,
                    i.reference,
                    i.topic,
                    i.difficulty,
                    json.dumps(i.labels),
                ]
                for i in content
            ],
            replace=True,
        )
        record_audit(
            con,
            actor=actor,
            action=f"eval_set.{status}",
            target=f"{eval_set}@v{version}",
            detail={"items": len(content), "content_hash": digest, "source": source},
        )
    return {"eval_set": eval_set, "version": version, "items": len(content), "status": status}


def eval_sets(store: Store) -> list[dict[str, Any]]:
    """Every eval set with its newest version, item count and whether it is frozen."""
    return store.fetch_dicts(
        "SELECT eval_set, version, items, content_hash, created_at, frozen_at IS NOT NULL AS"
        " frozen, (SELECT count(*) FROM eval_set_versions v2 WHERE v2.eval_set = v.eval_set)"
        " AS versions FROM eval_set_versions v WHERE version = (SELECT max(version) FROM"
        " eval_set_versions v3 WHERE v3.eval_set = v.eval_set) ORDER BY eval_set"
    )


def set_versions(store: Store, eval_set: str) -> list[dict[str, Any]]:
    """The versions of one set, newest first, with who froze them and why."""
    return store.fetch_dicts(
        "SELECT version, items, content_hash, created_at, created_by, source, frozen_at,"
        " frozen_by, frozen_reason FROM eval_set_versions WHERE eval_set = ?"
        " ORDER BY version DESC",
        [eval_set],
    )


def resolve_version(store: Store, eval_set: str, version: int | None = None) -> int:
    """The given version of a set (checked), else its newest; raises EvalError if missing."""
    if version is not None:
        row = store.fetch_one(
            "SELECT version FROM eval_set_versions WHERE eval_set = ? AND version = ?",
            [eval_set, version],
        )
    else:
        row = store.fetch_one(
            "SELECT max(version) FROM eval_set_versions WHERE eval_set = ?", [eval_set]
        )
    if row is None or row[0] is None:
        which = f"version {version} of " if version is not None else ""
        raise EvalError(
            f"There is no {which}eval set '{eval_set}'; import it first with "
            "`python -m core eval import-set FILE`."
        )
    return int(row[0])


def load_items(store: Store, eval_set: str, version: int) -> list[EvalItem]:
    """The items of one set version, by item id."""
    rows = store.fetch_all(
        "SELECT item_id, prompt, reference, topic, difficulty, labels FROM eval_set_items"
        " WHERE eval_set = ? AND version = ? ORDER BY item_id",
        [eval_set, version],
    )
    return [
        EvalItem(str(r[0]), str(r[1]), r[2], r[3], r[4], _labels(r[5]) if r[5] else {})
        for r in rows
    ]


def freeze_set_version(
    store: Store, eval_set: str, version: int, *, user: User, reason: str
) -> bool:
    """Freeze a set version on someone's word (no-op when frozen already); True when this call
    froze it. Raises AccessError when ``user`` may not run evals, EvalError when the version
    does not exist."""
    require(user, "eval.run")
    return freeze_used_version(store, eval_set, version, actor=user.name, reason=reason)


def freeze_used_version(
    store: Store, eval_set: str, version: int, *, reason: str, actor: str | None = None
) -> bool:
    """Freeze a set version because results or a gate now depend on it; True when this call
    froze it. Not a person's action, so no role is checked: whoever may record results or read
    a gate keeps what they used from changing."""
    who = actor or settings.actor
    with store.transaction() as con:
        row = con.execute(
            "SELECT frozen_at FROM eval_set_versions WHERE eval_set = ? AND version = ?",
            [eval_set, version],
        ).fetchone()
        if row is None:
            raise EvalError(f"There is no version {version} of eval set '{eval_set}'.")
        if row[0] is not None:
            return False
        con.execute(
            "UPDATE eval_set_versions SET frozen_at = ?, frozen_by = ?, frozen_reason = ?"
            " WHERE eval_set = ? AND version = ?",
            [clock.now(), who, reason, eval_set, version],
        )
        record_audit(
            con,
            actor=who,
            action="eval_set.freeze",
            target=f"{eval_set}@v{version}",
            detail={"reason": reason},
        )
    return True
