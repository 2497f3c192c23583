"""Eval runs on OpenAI-compatible endpoints (or in-process weights), graded as they go.

An eval run asks a model for each item of a set version (``samples`` times), through the
generation client's bounded concurrency and retries; outputs are keyed by (run, item, sample), so
a rerun of the same request resumes where it stopped and only grades what is not graded yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from core import clock
from core.access import User, require
from core.audit import record_audit
from core.datasets import version_system_message
from core.errors import EvalError, PlanError
from core.evals.sets import EvalItem, freeze_used_version, load_items, resolve_version
from core.graders import (
    DEFAULT_RUBRIC,
    GRADERS,
    grade_output,
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

# The OpenAI client and the training stack load inside the functions that use them, so listing
# or freezing sets (eval sets, eval freeze, the gates' reads) never imports them.
if TYPE_CHECKING:
    import openai

    from core.training.inference import LocalModel, LocalWeights

Role = Literal["candidate", "production", "teacher", "other"]
ROLES: tuple[Role, ...] = ("candidate", "production", "teacher", "other")
_FLUSH_EVERY = 32


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
        run_id = f"eval-{clock.now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
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
                clock.now(),
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
            [status, clock.now(), runner.api_calls, message, run_id],
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
    # core.plan_versions loads pydantic and the plan model (about 0.6 s), which listing or
    # freezing sets never needs.
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
                self.outputs.append([*row, clock.now()])
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
                    clock.now(),
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
                self.outputs.append([*row, tokens_in, tokens_out, clock.now()])
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
                [self.run_id, item.item_id, sample, grader, score, error, detail, clock.now()]
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
