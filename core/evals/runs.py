"""Eval sets with frozen versions, eval runs on OpenAI-compatible endpoints, imported results.

An eval set is versioned by content: importing a file stores its items as the set's newest
version when their content hash differs. A version is frozen as soon as results are recorded
against it (an eval run or imported results) or a gate reads it; a frozen version never changes,
so a changed file makes a new version and every result stays pinned to the items it was scored on.

An eval run asks a model for each item (``samples`` times), through the generation client's
bounded concurrency and retries; outputs are keyed by (run, item, sample), so a rerun of the same
request resumes where it stopped and only grades what is not graded yet. Results produced
elsewhere are imported with DESIGN.md's contract: run_id, item_id, model, output, score, grader.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core import clock
from core.access import User, require
from core.audit import record_audit
from core.errors import EvalError, PlanError
from core.graders import (
    DEFAULT_RUBRIC,
    GRADERS,
    JudgeAgreement,
    grade_output,
    judge_agreement,
    judge_messages,
    parse_judge_score,
)
from core.llm import (
    Endpoint,
    RequestAborted,
    RequestGaveUp,
    build_async_client,
    request_with_retries,
    resolve_endpoint,
    run_bounded,
)
from core.secrets import remove_key_values, scrub_secrets
from core.settings import settings
from core.store import Store, insert_rows

# numpy, the OpenAI client and the ingest (Ibis) load inside the functions that use them, so
# listing or freezing sets (eval sets, eval freeze, the gates' reads) never imports them.
if TYPE_CHECKING:
    import openai

    from core.training.inference import LocalModel, LocalWeights

__all__ = [
    "ROLES",
    "EvalItem",
    "EvalRunReport",
    "EvalSetImport",
    "JudgeConfig",
    "ResultsImport",
    "candidate_system_message",
    "eval_endpoint",
    "eval_sets",
    "freeze_set_version",
    "freeze_used_version",
    "import_eval_set",
    "import_results",
    "item_scores",
    "judge_agreement_for_run",
    "list_runs",
    "load_items",
    "paired_comparison",
    "resolve_version",
    "run_eval",
    "run_summary",
    "run_usage",
    "set_versions",
    "slice_dimensions",
    "slice_means",
]

Role = Literal["candidate", "production", "teacher", "other"]
ROLES: tuple[Role, ...] = ("candidate", "production", "teacher", "other")
_FLUSH_EVERY = 32


def _now() -> datetime:
    return clock.now()


# -- items and sets ----------------------------------------------------------------------------


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
    files;
    AccessError, before anything is written, when ``user`` may not ingest data (loading eval
    items here is the Data page's ingest of eval items, plus versioning).
    """
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
            [eval_set, version, digest, len(content), _now(), actor, source],
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
            [_now(), who, reason, eval_set, version],
        )
        record_audit(
            con,
            actor=who,
            action="eval_set.freeze",
            target=f"{eval_set}@v{version}",
            detail={"reason": reason},
        )
    return True


# -- eval runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeConfig:
    """The judge of ``llm_judge``: its model, endpoint and rubric template with its scale."""

    model: str
    endpoint: Endpoint
    rubric: str = DEFAULT_RUBRIC
    scale: tuple[int, int] = (1, 5)


def eval_endpoint(base_url: str | None = None, *, api_key: str | None = None) -> Endpoint:
    """The endpoint of an evaluated model: explicit URL, else OPENAI_BASE_URL, else OpenAI."""
    key = api_key or settings.eval_api_key or None
    return resolve_endpoint("", base_url=base_url, api_key=key)


def judge_endpoint(base_url: str | None = None, *, api_key: str | None = None) -> Endpoint:
    """The judge's endpoint: explicit URL, else the judge_base_url setting, else as eval's."""
    return eval_endpoint(base_url or settings.judge_base_url or None, api_key=api_key)


@dataclass(frozen=True)
class EvalRunReport:
    """What one eval run did."""

    run_id: str
    eval_set: str
    set_version: int
    model: str
    role: str
    cycle: int | None
    status: str
    items: int
    samples: int
    requested: int
    outputs: int
    output_errors: int
    graded: int
    grader_errors: int
    api_calls: int
    message: str
    system_message: str = ""
    """The system message the run sent ('' = none)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


ProgressCallback = Callable[[int, int], None]


def _run_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_graders(graders: Sequence[str]) -> list[str]:
    unknown = [g for g in graders if g not in GRADERS]
    if unknown:
        raise EvalError(f"Unknown grader(s) {', '.join(unknown)}; use any of {', '.join(GRADERS)}.")
    if not graders:
        raise EvalError("Name at least one grader (e.g. python_parses,python_tests).")
    return list(dict.fromkeys(graders))


def _write_outputs(store: Store, rows: list[list[Any]]) -> None:
    if rows:
        with store.transaction() as con:
            insert_rows(con, "eval_outputs", rows, replace=True)


def _write_scores(store: Store, rows: list[list[Any]]) -> None:
    if rows:
        with store.transaction() as con:
            insert_rows(con, "eval_scores", rows, replace=True)


def run_eval(
    store: Store,
    *,
    eval_set: str,
    model: str,
    role: Role,
    graders: Sequence[str],
    cycle: int | None = None,
    plan_id: str | None = None,
    version: int | None = None,
    endpoint: Endpoint | None = None,
    samples: int = 1,
    temperature: float = 0.0,
    judge: JudgeConfig | None = None,
    client: openai.AsyncOpenAI | None = None,
    judge_client: openai.AsyncOpenAI | None = None,
    concurrency: int | None = None,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    backoff_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    local_weights: LocalWeights | None = None,
    system_message: str | None = None,
    user: User,
) -> EvalRunReport:
    """Run ``model`` on an eval set version and grade its outputs (the llm_judge grader calls
    the judge model); resume a run of the same request (same set version, model, endpoint,
    role, cycle, samples, temperature, weights).

    With ``local_weights`` the model answers in-process (``transformers``, batched greedy
    generation) instead of through an endpoint. Every run records the weights it evaluated:
    those, or for a candidate served by an endpoint the weights registered with it.

    Every request opens with ``system_message`` ('' = none; an item's own ``system`` label
    then applies). Left at None, a candidate of a plan's cycle gets the system message it was
    trained under (``candidate_system_message``) and other roles none. The run records the
    message it sent, and a run with another message is another run.

    Raises EvalError when the set is missing, a grader is unknown, the judge is missing for
    llm_judge, or the server refuses the key or does not serve the model; AccessError, before
    any call or write, when ``user`` may not run evals.
    """
    require(user, "eval.run")
    if role not in ROLES:
        raise EvalError(f"Unknown role '{role}'; use one of {', '.join(ROLES)}.")
    if samples < 1:
        raise EvalError("samples must be at least 1.")
    chosen = _check_graders(graders)
    if "llm_judge" in chosen and judge is None:
        raise EvalError("The llm_judge grader needs a judge model (--judge-model).")
    number = resolve_version(store, eval_set, version)
    items = load_items(store, eval_set, number)
    if not items:
        raise EvalError(f"Eval set '{eval_set}' v{number} has no items.")
    endpoint = endpoint or eval_endpoint()
    shown_endpoint = IN_PROCESS if local_weights else endpoint.display_url
    weights_sha = local_weights.sha256 if local_weights else None
    if weights_sha is None and role == "candidate" and plan_id and cycle is not None:
        weights_sha = _registered_weights(store, plan_id, cycle, model)
    who = user.name
    if system_message is None and role == "candidate" and plan_id and cycle is not None:
        system_message = candidate_system_message(store, plan_id, cycle)[0]
    sent = (system_message or "").strip()
    key = _run_key(
        eval_set=eval_set,
        version=number,
        model=model,
        endpoint=shown_endpoint,
        role=role,
        cycle=cycle,
        plan_id=plan_id,
        samples=samples,
        temperature=temperature,
        **({"weights": local_weights.sha256} if local_weights else {}),
        **({"system": sent} if sent else {}),
    )
    existing = store.fetch_one("SELECT run_id FROM eval_runs WHERE run_key = ?", [key])
    if existing is not None:
        run_id = str(existing[0])
        store.execute(
            "UPDATE eval_runs SET status = 'running', finished_at = NULL WHERE run_id = ?",
            [run_id],
        )
    else:
        run_id = f"eval-{_now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
        store.execute(
            "INSERT INTO eval_runs (run_id, run_key, plan_id, cycle, role, model, endpoint,"
            " eval_set, set_version, source, samples, temperature, status, started_at, actor,"
            " weights_sha256, system_message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'run', ?, ?, 'running', ?, ?, ?, ?)",
            [
                run_id,
                key,
                plan_id,
                cycle,
                role,
                model,
                shown_endpoint,
                eval_set,
                number,
                samples,
                temperature,
                _now(),
                who,
                weights_sha,
                sent,
            ],
        )
    freeze_used_version(store, eval_set, number, actor=who, reason=f"results of run {run_id}")
    done = {
        (str(r[0]), int(r[1]))
        for r in store.fetch_all(
            "SELECT item_id, sample FROM eval_outputs WHERE run_id = ? AND error IS NULL",
            [run_id],
        )
    }
    pending = [(i, s) for i in items for s in range(samples) if (i.item_id, s) not in done]
    runner = _EvalRunner(
        store=store,
        run_id=run_id,
        model=model,
        endpoint=endpoint,
        temperature=temperature,
        timeout_s=settings.request_timeout_s if timeout_s is None else timeout_s,
        max_retries=settings.max_retries if max_retries is None else max_retries,
        backoff_s=settings.retry_backoff_s if backoff_s is None else backoff_s,
        judge=judge,
        on_progress=on_progress,
        system_message=sent,
    )
    width = settings.eval_concurrency if concurrency is None else concurrency
    active = client
    active_judge = judge_client

    async def main() -> None:
        nonlocal active, active_judge
        owned: list[openai.AsyncOpenAI] = []
        try:
            if pending and local_weights is not None:
                from core.training.inference import LocalModel

                runner.ask_local(LocalModel(local_weights), pending, batch_size=width)
            elif pending:
                if active is None:
                    active = build_async_client(endpoint, timeout_s=runner.timeout_s)
                    owned.append(active)
                await runner.ask_all(active, pending, width)
            if not runner.stop_reason:
                work = _grading_work(store, run_id, items, chosen)
                needs_judge = any(g == "llm_judge" for *_, g in work)
                if judge is not None and needs_judge and active_judge is None:
                    active_judge = build_async_client(judge.endpoint, timeout_s=runner.timeout_s)
                    owned.append(active_judge)
                await runner.grade_all(active_judge, work, width)
        finally:
            for owned_client in owned:
                await owned_client.close()

    try:
        asyncio.run(main())
    except Exception as exc:  # it failed (no key, server gone): say so, with why
        reason = scrub_secrets(str(exc)) or type(exc).__name__
        _finish(store, run_id, "failed", runner, f"Failed: {reason}", who)
        raise
    except BaseException:  # stopped from outside (Ctrl-C, a closed session): resumable
        _finish(store, run_id, "interrupted", runner, "Interrupted; run again to resume.", who)
        raise
    if runner.stop_reason:
        _finish(store, run_id, "failed", runner, f"Failed: {runner.stop_reason}", who)
        raise EvalError(runner.stop_reason)
    counts = store.fetch_one(
        "SELECT count(*) FILTER (WHERE error IS NULL), count(*) FILTER (WHERE error IS NOT NULL)"
        " FROM eval_outputs WHERE run_id = ?",
        [run_id],
    ) or (0, 0)
    graded = store.fetch_one(
        "SELECT count(*) FILTER (WHERE error IS NULL), count(*) FILTER (WHERE error IS NOT NULL)"
        " FROM eval_scores WHERE run_id = ?",
        [run_id],
    ) or (0, 0)
    message = (
        f"{counts[0]} outputs ({counts[1]} failed requests), {graded[0]} scores "
        f"({graded[1]} grader errors)."
    )
    _finish(store, run_id, "done", runner, message, who)
    return EvalRunReport(
        run_id=run_id,
        eval_set=eval_set,
        set_version=number,
        model=model,
        role=role,
        cycle=cycle,
        status="done",
        items=len(items),
        samples=samples,
        requested=len(pending),
        outputs=int(counts[0]),
        output_errors=int(counts[1]),
        graded=int(graded[0]),
        grader_errors=int(graded[1]),
        api_calls=runner.api_calls,
        message=message,
        system_message=sent,
    )


def _finish(
    store: Store, run_id: str, status: str, runner: _EvalRunner, message: str, actor: str
) -> None:
    runner.flush()
    with store.transaction() as con:
        con.execute(
            "UPDATE eval_runs SET status = ?, finished_at = ?, api_calls = api_calls + ?,"
            " message = ? WHERE run_id = ?",
            [status, _now(), runner.api_calls, message, run_id],
        )
        record_audit(
            con,
            actor=actor,
            action="eval.run",
            target=run_id,
            detail={"status": status, "api_calls": runner.api_calls},
        )


def _grading_work(
    store: Store, run_id: str, items: Sequence[EvalItem], graders: Sequence[str]
) -> list[tuple[EvalItem, int, str, str]]:
    """(item, sample, output, grader) for every output lacking a score from a grader."""
    by_id = {i.item_id: i for i in items}
    outputs = store.fetch_all(
        "SELECT item_id, sample, output FROM eval_outputs WHERE run_id = ? AND error IS NULL",
        [run_id],
    )
    scored = {
        (str(r[0]), int(r[1]), str(r[2]))
        for r in store.fetch_all(
            "SELECT item_id, sample, grader FROM eval_scores WHERE run_id = ?", [run_id]
        )
    }
    return [
        (by_id[str(item_id)], int(sample), str(output or ""), grader)
        for item_id, sample, output in outputs
        if str(item_id) in by_id
        for grader in graders
        if (str(item_id), int(sample), grader) not in scored
    ]


IN_PROCESS = "in-process (transformers)"


def _item_messages(item: EvalItem, system_message: str = "") -> list[dict[str, str]]:
    """The chat an eval item asks: the run's system message (else the item's own ``system``
    label, when it has one) and its prompt."""
    messages = [{"role": "user", "content": item.prompt}]
    label = item.labels.get("system")
    system = system_message or (label if isinstance(label, str) else "")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def candidate_system_message(store: Store, plan_id: str, cycle: int) -> tuple[str | None, str]:
    """The system message a cycle's candidate was trained under, and where that comes from:
    its dataset version (the one registered with the candidate, else the cycle's newest),
    else the plan's ``goal.student_system_message`` when the cycle has built no dataset (none
    when the plan is not stored either)."""
    from core.datasets import version_system_message
    from core.plan_versions import load_plan

    row = store.fetch_one(
        "SELECT dataset_version FROM cycle_candidates WHERE plan_id = ? AND cycle = ?"
        " AND dataset_version IN (SELECT version_id FROM dataset_versions)",
        [plan_id, cycle],
    ) or store.fetch_one(
        "SELECT version_id FROM dataset_versions WHERE plan_id = ? AND cycle = ?"
        " ORDER BY number DESC LIMIT 1",
        [plan_id, cycle],
    )
    if row is not None:
        version_id = str(row[0])
        return version_system_message(store, version_id), f"its training data ({version_id})"
    try:
        plan, number = load_plan(store, plan_id)
    except PlanError:
        return None, f"nothing: plan '{plan_id}' is not stored and cycle {cycle} built no dataset"
    return plan.goal.system_message, f"the plan's student system message (v{number})"


def _registered_weights(store: Store, plan_id: str, cycle: int, model: str) -> str | None:
    """The sha256 of the weights registered with the cycle's candidate, when ``model`` is it."""
    row = store.fetch_one(
        "SELECT weights_sha256 FROM cycle_candidates WHERE plan_id = ? AND cycle = ? AND model = ?",
        [plan_id, cycle, model],
    )
    return str(row[0]) if row and row[0] else None


@dataclass
class _EvalRunner:
    store: Store
    run_id: str
    model: str
    endpoint: Endpoint
    temperature: float
    timeout_s: float
    max_retries: int
    backoff_s: float
    judge: JudgeConfig | None
    on_progress: ProgressCallback | None
    system_message: str = ""
    rng: random.Random = field(default_factory=random.Random)
    outputs: list[list[Any]] = field(default_factory=list)
    scores: list[list[Any]] = field(default_factory=list)
    api_calls: int = 0
    stop_reason: str = ""
    done: int = 0
    total: int = 0

    def flush(self) -> None:
        rows, self.outputs = self.outputs, []
        _write_outputs(self.store, rows)
        rows, self.scores = self.scores, []
        _write_scores(self.store, rows)

    def _tick(self) -> None:
        self.done += 1
        if len(self.outputs) + len(self.scores) >= _FLUSH_EVERY:
            self.flush()
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def _count(self) -> None:
        self.api_calls += 1

    async def ask_all(
        self, client: openai.AsyncOpenAI, pending: Sequence[tuple[EvalItem, int]], width: int
    ) -> None:
        self.total += len(pending)

        async def handle(work: tuple[EvalItem, int]) -> None:
            item, sample = work
            messages = _item_messages(item, self.system_message)
            started = time.perf_counter()
            try:
                reply = await request_with_retries(
                    lambda: client.chat.completions.create(
                        model=self.model,
                        messages=messages,  # type: ignore[arg-type]
                        temperature=self.temperature,
                        timeout=self.timeout_s,
                    ),
                    model=self.model,
                    endpoint_display=self.endpoint.display_url,
                    max_retries=self.max_retries,
                    backoff_s=self.backoff_s,
                    rng=self.rng,
                    before_attempt=self._count,
                    server_name="model's server",
                )
            except RequestGaveUp as exc:
                row = [self.run_id, item.item_id, sample, None, str(exc), None, None, None]
                self.outputs.append([*row, _now()])
                self._tick()
                return
            except RequestAborted as exc:
                self.stop_reason = str(exc)
                return
            latency = (time.perf_counter() - started) * 1000
            usage = getattr(reply, "usage", None)
            content: str | None = None
            error: str | None = None
            try:
                # A server may echo the request's key into its reply: never store it.
                content = remove_key_values(reply.choices[0].message.content or "")
            except (AttributeError, IndexError, TypeError):
                error = "the reply is not a chat completion"
            self.outputs.append(
                [
                    self.run_id,
                    item.item_id,
                    sample,
                    content,
                    error,
                    latency,
                    int(getattr(usage, "prompt_tokens", 0) or 0),
                    int(getattr(usage, "completion_tokens", 0) or 0),
                    _now(),
                ]
            )
            self._tick()

        await run_bounded(
            pending, handle, concurrency=width, stopped=lambda: bool(self.stop_reason)
        )
        self.flush()

    def ask_local(
        self, model: LocalModel, pending: Sequence[tuple[EvalItem, int]], *, batch_size: int
    ) -> None:
        """Answer the pending items with in-process weights, a batch at a time."""
        self.total += len(pending)
        for start in range(0, len(pending), max(1, batch_size)):
            chunk = pending[start : start + max(1, batch_size)]
            started = time.perf_counter()
            answers = model.answer([_item_messages(item, self.system_message) for item, _ in chunk])
            latency = (time.perf_counter() - started) * 1000 / len(chunk)
            for (item, sample), (text, tokens_in, tokens_out) in zip(chunk, answers, strict=True):
                row = [self.run_id, item.item_id, sample, text, None, latency]
                self.outputs.append([*row, tokens_in, tokens_out, _now()])
                self._tick()
        self.flush()

    async def grade_all(
        self,
        judge_client: openai.AsyncOpenAI | None,
        work: Sequence[tuple[EvalItem, int, str, str]],
        width: int,
    ) -> None:
        self.total += len(work)

        async def handle(entry: tuple[EvalItem, int, str, str]) -> None:
            item, sample, output, grader = entry
            if grader == "llm_judge":
                score, error, detail = await self._judge(judge_client, item, output)
            else:
                grade = await asyncio.to_thread(grade_output, grader, output, item.as_mapping())
                score, error, detail = grade.score, grade.error, grade.detail
            self.scores.append(
                [self.run_id, item.item_id, sample, grader, score, error, detail, _now()]
            )
            self._tick()

        await run_bounded(work, handle, concurrency=width, stopped=lambda: bool(self.stop_reason))
        self.flush()

    async def _judge(
        self, client: openai.AsyncOpenAI | None, item: EvalItem, output: str
    ) -> tuple[float | None, str | None, str]:
        judge = self.judge
        if judge is None or client is None:
            return None, "no judge model configured", ""
        messages = judge_messages(judge.rubric, item.as_mapping(), output, scale=judge.scale)
        low, high = judge.scale
        error = ""
        text = ""
        # A reply without a score is asked again with the error appended, so the judge can
        # correct it (bounded like generation's invalid replies).
        for _ in range(settings.generation_invalid_retries + 1):
            try:
                reply = await request_with_retries(
                    partial(
                        client.chat.completions.create,
                        model=judge.model,
                        messages=messages,
                        temperature=0.0,
                        timeout=self.timeout_s,
                    ),
                    model=judge.model,
                    endpoint_display=judge.endpoint.display_url,
                    max_retries=self.max_retries,
                    backoff_s=self.backoff_s,
                    rng=self.rng,
                    before_attempt=self._count,
                    server_name="judge's server",
                )
            except (RequestGaveUp, RequestAborted) as exc:
                return None, f"judge request failed: {exc}", ""
            try:
                text = remove_key_values(reply.choices[0].message.content or "")
            except (AttributeError, IndexError, TypeError):
                return None, "the judge's reply is not a chat completion", ""
            score = parse_judge_score(text, scale=judge.scale)
            if score is not None:
                return score, None, text[:500]
            error = f"no score on {low}..{high} in the judge's reply: {text[:120]!r}"
            messages = [
                *messages,
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That reply was refused: it gives no score on {low}..{high}. "
                    "Answer again, ending with the score.",
                },
            ]
        return None, error, text


# -- imported results --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultsImport:
    """What a results import did: the runs it stored and the rows it refused, with reasons."""

    eval_set: str
    set_version: int
    rows_read: int
    accepted: int
    rejected: list[dict[str, Any]]
    runs: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


def import_results(
    store: Store,
    path: str | Path,
    *,
    eval_set: str,
    role: Role,
    version: int | None = None,
    cycle: int | None = None,
    plan_id: str | None = None,
    user: User,
    source: str = "import",
    system_message: str | None = None,
) -> ResultsImport:
    """Store results produced elsewhere: one row per (run_id, item_id, model, output, score,
    grader), optionally ``sample``, ``latency_ms``, ``input_tokens``, ``output_tokens``.
    ``system_message`` is the one the runs were asked under ('' = none; None = not known, which
    the gates point out for a candidate).

    A row with an unknown item, a score outside 0..1, or a model that differs from its run's is
    refused with its line and reason; the others are stored and the set version is frozen.
    Raises EvalError when the file cannot be read or holds no valid row; AccessError, before
    anything is read or written, when ``user`` may not run evals (results decide the gates).
    """
    require(user, "eval.run")
    source_path = Path(path)
    if not source_path.is_file():
        raise EvalError(f"{source_path}: no such file; give a JSONL or CSV file of results.")
    records = list(_records(source_path))
    return record_results(
        store,
        records,
        eval_set=eval_set,
        role=role,
        version=version,
        cycle=cycle,
        plan_id=plan_id,
        user=user,
        source=source,
        system_message=system_message,
    )


def record_results(
    store: Store,
    records: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    eval_set: str,
    role: Role,
    version: int | None = None,
    cycle: int | None = None,
    plan_id: str | None = None,
    user: User,
    source: str = "import",
    system_message: str | None = None,
) -> ResultsImport:
    """Store (line, record) results as ``import_results`` does (the demo uses it directly).

    Raises AccessError, before anything is written, when ``user`` may not run evals.
    """
    require(user, "eval.run")
    if role not in ROLES:
        raise EvalError(f"Unknown role '{role}'; use one of {', '.join(ROLES)}.")
    number = resolve_version(store, eval_set, version)
    known = {i.item_id for i in load_items(store, eval_set, number)}
    who = user.name
    rejected: list[dict[str, Any]] = []
    models: dict[str, str] = {}
    outputs: dict[tuple[str, str, int], list[Any]] = {}
    scores: list[list[Any]] = []
    now = _now()
    for line, record in records:
        run_id, item_id = _text(record.get("run_id")), _text(record.get("item_id"))
        model, grader = _text(record.get("model")), _text(record.get("grader"))
        missing = [
            k for k, v in (("run_id", run_id), ("item_id", item_id), ("model", model)) if not v
        ]
        if grader is None:
            missing.append("grader")
        if missing:
            rejected.append({"line": line, "reason": f"missing {', '.join(missing)}"})
            continue
        assert run_id and item_id and model and grader
        if item_id not in known:
            rejected.append(
                {"line": line, "reason": f"item {item_id} is not in {eval_set} v{number}"}
            )
            continue
        if models.setdefault(run_id, model) != model:
            rejected.append(
                {"line": line, "reason": f"run {run_id} already has model {models[run_id]}"}
            )
            continue
        raw_score, error = record.get("score"), _text(record.get("error"))
        try:
            score = None if raw_score is None else float(raw_score)
        except (TypeError, ValueError):
            rejected.append({"line": line, "reason": f"score {raw_score!r} is not a number"})
            continue
        if score is not None and not 0.0 <= score <= 1.0:
            rejected.append({"line": line, "reason": f"score {score} is outside 0..1"})
            continue
        if score is None and not error:
            rejected.append({"line": line, "reason": "no score and no error"})
            continue
        try:
            sample = int(record.get("sample") or 0)
            latency = _number(record.get("latency_ms"))
            tokens_in = _number(record.get("input_tokens"))
            tokens_out = _number(record.get("output_tokens"))
        except (TypeError, ValueError):
            rejected.append({"line": line, "reason": "sample, latency or tokens not numbers"})
            continue
        row = [
            run_id,
            item_id,
            sample,
            _text(record.get("output")),
            None,
            latency,
            None if tokens_in is None else int(tokens_in),
            None if tokens_out is None else int(tokens_out),
            now,
        ]
        # Several graders' rows carry the same output: keep what any of them gave.
        earlier = outputs.get((run_id, item_id, sample))
        if earlier is not None:
            row = [a if a is not None else b for a, b in zip(earlier, row, strict=True)]
        outputs[(run_id, item_id, sample)] = row
        scores.append([run_id, item_id, sample, grader, score, error, "", now])
    if not scores:
        reasons = "; ".join(f"line {r['line']}: {r['reason']}" for r in rejected[:3])
        raise EvalError(f"No valid result rows to import ({reasons or 'the file is empty'}).")
    existing = {
        str(r[0]): (str(r[1]), int(r[2]))
        for r in store.fetch_all(
            "SELECT run_id, eval_set, set_version FROM eval_runs WHERE run_id IN"
            " (SELECT unnest(?::VARCHAR[]))",
            [list(models)],
        )
    }
    clash = [r for r, where in existing.items() if where != (eval_set, number)]
    if clash:
        raise EvalError(
            f"Run {clash[0]} is stored for another eval set version; give the results a new run_id."
        )
    samples = defaultdict(set)
    for run_id, _, sample in outputs:
        samples[run_id].add(sample)
    with store.transaction() as con:
        for run_id, model in models.items():
            if run_id not in existing:
                con.execute(
                    "INSERT INTO eval_runs (run_id, plan_id, cycle, role, model, eval_set,"
                    " set_version, source, samples, status, started_at, finished_at, actor,"
                    " message, system_message)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?)",
                    [
                        run_id,
                        plan_id,
                        cycle,
                        role,
                        model,
                        eval_set,
                        number,
                        source,
                        len(samples[run_id]),
                        now,
                        now,
                        who,
                        "imported",
                        None if system_message is None else system_message.strip(),
                    ],
                )
        insert_rows(con, "eval_outputs", list(outputs.values()), replace=True)
        insert_rows(con, "eval_scores", scores, replace=True)
        record_audit(
            con,
            actor=who,
            action="eval.import_results",
            target=f"{eval_set}@v{number}",
            detail={"runs": sorted(models), "rows": len(scores), "rejected": len(rejected)},
        )
    freeze_used_version(
        store, eval_set, number, actor=who, reason=f"results imported ({', '.join(sorted(models))})"
    )
    return ResultsImport(eval_set, number, len(records), len(scores), rejected, sorted(models))


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


# -- reading results ---------------------------------------------------------------------------


def list_runs(
    store: Store, *, plan_id: str | None = None, cycle: int | None = None
) -> list[dict[str, Any]]:
    """Eval runs (of a plan and cycle when given), newest first."""
    sql = (
        "SELECT run_id, plan_id, cycle, role, model, endpoint, eval_set, set_version, source,"
        " samples, status, started_at, finished_at, api_calls, message, system_message"
        " FROM eval_runs WHERE 1=1"
    )
    params: list[Any] = []
    if plan_id is not None:
        sql += " AND (plan_id = ? OR plan_id IS NULL)"
        params.append(plan_id)
    if cycle is not None:
        sql += " AND (cycle = ? OR cycle IS NULL)"
        params.append(cycle)
    return store.fetch_dicts(sql + " ORDER BY started_at DESC, run_id DESC", params)


def item_scores(store: Store, run_id: str, grader: str) -> dict[str, float]:
    """One score per item of a run for one grader: the mean of its graded samples."""
    rows = store.fetch_all(
        "SELECT item_id, avg(score) FROM eval_scores WHERE run_id = ? AND grader = ?"
        " AND score IS NOT NULL GROUP BY item_id",
        [run_id, grader],
    )
    return {str(r[0]): float(r[1]) for r in rows}


def run_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Per grader of a run: items scored, mean score, Wilson interval when binary, errors."""
    import numpy as np

    out: list[dict[str, Any]] = []
    for grader, errors in store.fetch_all(
        "SELECT grader, count(*) FILTER (WHERE error IS NOT NULL) FROM eval_scores"
        " WHERE run_id = ? GROUP BY grader ORDER BY grader",
        [run_id],
    ):
        scores = item_scores(store, run_id, str(grader))
        values = np.array(list(scores.values()), dtype=float)
        row: dict[str, Any] = {
            "grader": str(grader),
            "items": int(values.size),
            "mean": float(values.mean()) if values.size else None,
            "ci_low": None,
            "ci_high": None,
            "grader_errors": int(errors),
            "small_sample": bool(values.size < 300),
        }
        if values.size and bool(np.all((values == 0) | (values == 1))):
            from core.stats import wilson_interval  # scipy: only when a summary is asked for

            interval = wilson_interval(int(values.sum()), int(values.size))
            row.update(ci_low=interval.ci[0], ci_high=interval.ci[1])
        out.append(row)
    return out


def run_usage(store: Store, run_id: str) -> dict[str, Any]:
    """Requests, mean tokens and latency percentiles of a run's outputs."""
    row = store.fetch_one(
        "SELECT count(*), avg(input_tokens), avg(output_tokens), quantile_cont(latency_ms, 0.5),"
        " quantile_cont(latency_ms, 0.95), count(latency_ms), count(input_tokens)"
        " FROM eval_outputs WHERE run_id = ? AND error IS NULL",
        [run_id],
    )
    keys = (
        "requests",
        "mean_input_tokens",
        "mean_output_tokens",
        "latency_p50_ms",
        "latency_p95_ms",
        "with_latency",
        "with_tokens",
    )
    values = row or (0, None, None, None, None, 0, 0)
    return {k: (float(v) if isinstance(v, float) else v) for k, v in zip(keys, values, strict=True)}


def _item_labels(store: Store, eval_set: str, version: int, dimension: str) -> dict[str, str]:
    return {
        i.item_id: value
        for i in load_items(store, eval_set, version)
        if (value := i.slice_value(dimension)) is not None
    }


def paired_comparison(
    store: Store, candidate_run: str, baseline_run: str, grader: str, dimension: str | None
) -> list[dict[str, Any]]:
    """Wins, losses and ties of the candidate against a baseline on the items both scored,
    per slice of ``dimension`` (one row "all" when None)."""
    where = store.fetch_one(
        "SELECT eval_set, set_version FROM eval_runs WHERE run_id = ?", [candidate_run]
    )
    if where is None:
        raise EvalError(f"There is no eval run {candidate_run}.")
    candidate = item_scores(store, candidate_run, grader)
    baseline = item_scores(store, baseline_run, grader)
    labels = _item_labels(store, str(where[0]), int(where[1]), dimension) if dimension else {}
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for item_id in sorted(candidate.keys() & baseline.keys()):
        slice_name = labels.get(item_id, "(none)") if dimension else "all"
        diff = candidate[item_id] - baseline[item_id]
        table[slice_name][0 if diff > 1e-12 else 1 if diff < -1e-12 else 2] += 1
    return [
        {"slice": name, "wins": w, "losses": lo, "ties": t, "items": w + lo + t}
        for name, (w, lo, t) in sorted(table.items())
    ]


def slice_means(
    store: Store, runs: Mapping[str, str], grader: str, dimension: str
) -> dict[str, dict[str, float]]:
    """Mean score per slice for each labelled run: {label: {slice: mean}} (heatmap input)."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for label, run_id in runs.items():
        where = store.fetch_one(
            "SELECT eval_set, set_version FROM eval_runs WHERE run_id = ?", [run_id]
        )
        if where is None:
            continue
        labels = _item_labels(store, str(where[0]), int(where[1]), dimension)
        groups: dict[str, list[float]] = defaultdict(list)
        for item_id, score in item_scores(store, run_id, grader).items():
            if item_id in labels:
                groups[labels[item_id]].append(score)
        out[label] = {name: float(np.mean(v)) for name, v in sorted(groups.items())}
    return out


def judge_agreement_for_run(store: Store, run_id: str) -> JudgeAgreement:
    """Agreement and Cohen's kappa of llm_judge against human labels (grader "human") on
    the same outputs of a run; n = 0 when no output carries both."""
    rows = store.fetch_all(
        "SELECT j.score, h.score FROM eval_scores j JOIN eval_scores h USING (run_id, item_id,"
        " sample) WHERE j.run_id = ? AND j.grader = 'llm_judge' AND h.grader = 'human'"
        " AND j.score IS NOT NULL AND h.score IS NOT NULL",
        [run_id],
    )
    return judge_agreement([float(r[0]) for r in rows], [float(r[1]) for r in rows])
