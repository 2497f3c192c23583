"""Page-speed benchmark: ``python bench/pages.py [--rows N] [--rebuild] [--page NAME ...]``.

Builds (once, in bench/out/, git-ignored) a store holding the demo workspace plus ``--rows``
(default 1M) synthetic interactions spread over the plan's six cycles, generated inside DuckDB
with seeded hashes; consent for 75% of their 100k users; every cycle run into a dataset version
after that; candidates with eval results for every cycle but the first, whose gate reports are
recorded with a decision (approved or rejected) for cycles 2 to 5, while cycle 6 awaits one.
Every cycle's A/B window holds traffic on both arms. Building takes about four minutes here.

Then, for every page in app.py's navigation, through ``streamlit.testing.v1.AppTest``:
  first   a fresh AppTest with Streamlit's caches cleared (st.cache_data is process-wide), the
          page opened directly: the first render a new visitor waits for
  rerun   ``at.run()`` again on the same AppTest: what every widget change costs
against the targets (first render ≤ 2 s, rerun ≤ 0.5 s), and two baselines measured in the same
run: the raw DuckDB scan ``SELECT count(*), sum(length(prompt)) FROM interactions`` through the
store, and an AppTest render of a page that only writes one line.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is bench/pages.py: keep its folder off the path, so that ``pages`` is the app's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

import logging  # noqa: E402
import os  # noqa: E402

import streamlit as st  # noqa: E402
import streamlit.runtime.pages_manager as pages_manager  # noqa: E402
from streamlit import logger as streamlit_logger  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from bench.make_log import WORDS  # noqa: E402
from core.access import local_operator  # noqa: E402
from core.audit import record_audit  # noqa: E402
from core.cycles import run_cycle  # noqa: E402
from core.demo import load_demo  # noqa: E402
from core.gates import check_gates, record_decision  # noqa: E402
from core.plan import Plan, plan_timeline  # noqa: E402
from core.plan_versions import load_plan  # noqa: E402
from core.store import Store  # noqa: E402

FIRST_TARGET_S = 2.0
RERUN_TARGET_S = 0.5
BULK_USERS = 100_000
ACTOR = "bench/pages.py"
OPERATOR = local_operator()


# -- the store ---------------------------------------------------------------------------------


def _pool(rng: random.Random, size: int, words: tuple[int, int]) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(size)]


def _bulk_interactions(store: Store, plan: Plan, rows: int) -> None:
    """``rows`` interactions spread evenly over the plan's cycles, made inside DuckDB.

    Each value comes from a hash of the row number (deterministic, unlike random() under
    parallel execution). Users are randomised to an arm once (by a hash of their id); the
    control arm is served by the teacher, the treatment by the student.
    """
    rng = random.Random(11)
    timeline = plan_timeline(plan)
    econ = plan.economics
    arms = {arm.name: arm.model for arm in plan.ab_test.arms}
    axes = {axis.name: list(axis.values) for axis in plan.generation.axes}
    cycles = [
        (
            c.cycle,
            datetime.combine(c.start, datetime.min.time(), UTC),
            int((c.end - c.start).total_seconds()),
        )
        for c in timeline
    ]
    prompts = _pool(rng, 5000, (18, 40))
    responses = _pool(rng, 5000, (30, 70))
    batch = "bench-bulk-interactions"
    started = datetime.now(UTC)
    with store.transaction() as con:
        con.execute("CREATE TEMP TABLE bench_prompts (k INTEGER, prompt VARCHAR)")
        con.executemany("INSERT INTO bench_prompts VALUES (?, ?)", list(enumerate(prompts)))
        con.execute("CREATE TEMP TABLE bench_responses (k INTEGER, response VARCHAR)")
        con.executemany("INSERT INTO bench_responses VALUES (?, ?)", list(enumerate(responses)))
        con.execute(
            "CREATE TEMP TABLE bench_cycles (k INTEGER, cycle INTEGER, start TIMESTAMPTZ,"
            " seconds BIGINT)"
        )
        con.executemany(
            "INSERT INTO bench_cycles VALUES (?, ?, ?, ?)",
            [(k, c, s, n) for k, (c, s, n) in enumerate(cycles)],
        )
        con.execute(
            """
            INSERT INTO interactions
            WITH base AS (
                SELECT i, i % $ncycles AS ck, hash(i, 'user') % $users AS u FROM range($rows) t(i)
            ),
            drawn AS (
                SELECT b.*, c.cycle, c.start, c.seconds,
                    'bench-u' || lpad(b.u::VARCHAR, 6, '0') AS user_id,
                    CASE WHEN hash(b.u, 'arm') % 2 = 0 THEN $control ELSE $treatment END AS arm,
                    (hash(i, 'accept') % 1000)::INTEGER AS accept_draw,
                    (hash(i, 'feedback') % 100)::INTEGER AS feedback_draw,
                    (hash(i, 'pii') % 100)::INTEGER AS pii_draw,
                    (40 + hash(i, 'in') % 860)::BIGINT AS tokens_in,
                    (80 + hash(i, 'out') % 620)::BIGINT AS tokens_out
                FROM base b JOIN bench_cycles c ON c.k = b.ck
            )
            SELECT
                'bench-' || lpad(i::VARCHAR, 8, '0'),
                $batch,
                cycle,
                NULL,
                start + to_seconds((hash(i, 'ts') % seconds)::BIGINT),
                user_id,
                arm,
                CASE WHEN arm = $control THEN $teacher ELSE $student END,
                p.prompt || CASE WHEN pii_draw = 0 THEN ' mail me at <EMAIL>' ELSE '' END,
                r.response,
                NULL,
                CASE WHEN feedback_draw < 21 THEN 'up' WHEN feedback_draw < 28 THEN 'down' END,
                accept_draw < CASE WHEN arm = $control THEN 300 ELSE 325 END,
                (300 + hash(i, 'latency') % 2200)::BIGINT,
                tokens_in,
                tokens_out,
                CASE WHEN arm = $control
                    THEN (tokens_in * $t_in + tokens_out * $t_out) / 1e6
                    ELSE (tokens_in * $s_in + tokens_out * $s_out) / 1e6 END,
                list_element($topics, (1 + hash(i, 'topic') % len($topics))::INTEGER),
                list_element($levels, (1 + hash(i, 'level') % len($levels))::INTEGER),
                NULL,
                CASE WHEN pii_draw = 0 THEN ['EMAIL'] ELSE [] END::VARCHAR[],
                CASE WHEN pii_draw = 0 THEN p.prompt || ' mail me at dev' || i || '@example.com'
                END,
                NULL,
                NULL
            FROM drawn
            JOIN bench_prompts p ON p.k = hash(i, 'prompt') % 5000
            JOIN bench_responses r ON r.k = hash(i, 'response') % 5000
            """,
            {
                "rows": rows,
                "ncycles": len(cycles),
                "users": BULK_USERS,
                "batch": batch,
                "control": "control",
                "treatment": "treatment",
                "teacher": arms.get("control", plan.goal.teacher_model),
                "student": arms.get("treatment", plan.goal.student_model),
                "t_in": econ.teacher_input_per_1m,
                "t_out": econ.teacher_output_per_1m,
                "s_in": econ.student_input_per_1m,
                "s_out": econ.student_output_per_1m,
                "topics": axes.get("topic", ["general"]),
                "levels": axes.get("difficulty", ["beginner"]),
            },
        )
        found = con.execute(
            "SELECT count(*) FROM interactions WHERE batch_id = ? AND len(pii) > 0", [batch]
        ).fetchone()
        con.execute(
            "INSERT INTO ingest_batches VALUES (?, 'interactions', 'bench bulk insert (SQL)', ?,"
            " NULL, ?, ?, 0, 0, ?, ?, ?, NULL, NULL)",
            [batch, "0" * 64, rows, rows, started, datetime.now(UTC), ACTOR],
        )
        con.execute(
            "INSERT INTO pii_counts VALUES (?, 'EMAIL', ?)", [batch, found[0] if found else 0]
        )
        record_audit(con, actor=ACTOR, action="ingest", target=batch, detail={"rows": rows})


def _bulk_consent(store: Store, plan: Plan) -> None:
    """Training consent for about 75% of the bulk users, granted before or during the plan; a
    few withdraw later."""
    first = datetime.combine(plan_timeline(plan)[0].start, datetime.min.time(), UTC)
    batch = "bench-bulk-consent"
    with store.transaction() as con:
        con.execute(
            """
            INSERT INTO consent_events
            WITH users AS (
                SELECT u, 'bench-u' || lpad(u::VARCHAR, 6, '0') AS user_id,
                    $first - INTERVAL 30 DAY + to_seconds((hash(u, 'grant') % 7776000)::BIGINT)
                        AS granted
                FROM range($users) t(u) WHERE hash(u, 'consents') % 100 < 75
            )
            SELECT $batch, row_number() OVER (ORDER BY u, action), user_id, ts, 'training',
                action, '2026-11', source
            FROM (
                SELECT u, user_id, granted AS ts, 'grant' AS action,
                    'us-onboarding-notice' AS source
                FROM users
                UNION ALL
                SELECT u, user_id, granted + INTERVAL 45 DAY, 'withdraw', 'privacy-toggle'
                FROM users WHERE hash(u, 'withdraws') % 100 < 8
            )
            """,
            {"first": first, "users": BULK_USERS, "batch": batch},
        )
        n = con.execute(
            "SELECT count(*) FROM consent_events WHERE batch_id = ?", [batch]
        ).fetchone()
        con.execute(
            "INSERT INTO ingest_batches VALUES (?, 'consent', 'bench bulk consent (SQL)', ?,"
            " NULL, ?, ?, 0, 0, ?, ?, ?, NULL, NULL)",
            [batch, "1" * 64, n[0], n[0], datetime.now(UTC), datetime.now(UTC), ACTOR],
        )
        record_audit(con, actor=ACTOR, action="ingest", target=batch, detail={"rows": n[0]})


def _copy_run(con: object, source: str, target: str, cycle: int, model: str) -> None:
    """A copy of a stored eval run, outputs and scores under another run id, cycle and model."""
    execute = con.execute  # type: ignore[attr-defined]
    execute(
        "INSERT INTO eval_runs SELECT ? AS run_id, NULL, plan_id, ?, role, ?, endpoint, eval_set,"
        " set_version, 'bench', samples, temperature, status, now(), now(), api_calls, actor,"
        " message FROM eval_runs WHERE run_id = ?",
        [target, cycle, model, source],
    )
    execute(
        "INSERT INTO eval_outputs SELECT ?, item_id, sample, output, error, latency_ms,"
        " input_tokens, output_tokens, created_at FROM eval_outputs WHERE run_id = ?",
        [target, source],
    )
    execute(
        "INSERT INTO eval_scores SELECT ?, item_id, sample, grader, score, error, detail,"
        " graded_at FROM eval_scores WHERE run_id = ?",
        [target, source],
    )


def _bulk_evals(store: Store, plan_id: str, cycles: list[int]) -> None:
    """Cycles 3+: a candidate copied from the demo's cycle 1 (passes) or 2 (fails a slice)
    and the production run it is compared with. Every cycle but the last gets its gate report
    recorded with a decision (approved or rejected); the last awaits one, as the current
    cycle of a running flywheel does, so the Overview checks its gates from the results."""
    for cycle in cycles[2:]:
        model = f"ft:gpt-4o-mini:python-assistant:c{cycle}"
        source = "demo-cand-c1" if cycle % 2 == 1 else "demo-cand-c2"
        with store.transaction() as con:
            con.execute(
                "DELETE FROM cycle_candidates WHERE plan_id = ? AND cycle = ?", [plan_id, cycle]
            )
            _copy_run(con, source, f"bench-cand-c{cycle}", cycle, model)
            _copy_run(con, "demo-prod-c1", f"bench-prod-c{cycle}", cycle, "gpt-4o-mini")
            version = con.execute(
                "SELECT version_id FROM dataset_versions WHERE plan_id = ? AND cycle = ?"
                " ORDER BY created_at DESC LIMIT 1",
                [plan_id, cycle],
            ).fetchone()
            con.execute(
                "INSERT INTO cycle_candidates VALUES (?, ?, ?, 'https://api.openai.com/v1',"
                " 'registered', NULL, ?, now(), ?)",
                [plan_id, cycle, model, version[0] if version else None, ACTOR],
            )
            record_audit(con, actor=ACTOR, action="eval.import", target=f"cycle{cycle}")
    for cycle in cycles[1:-1]:
        report = check_gates(store, plan_id, cycle)
        decision = "approved" if report.verdict == "pass" else "rejected"
        record_decision(store, plan_id, cycle, decision=decision, user=OPERATOR, reason="bench")


def build_store(rows: int, *, rebuild: bool = False) -> Path:
    """bench/out/pages_<rows>.duckdb, built once (about a minute for 1M rows)."""
    path = OUT / f"pages_{rows}.duckdb"
    if path.exists() and not rebuild:
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".building")
    for stale in (tmp, Path(str(tmp) + ".wal")):
        stale.unlink(missing_ok=True)
    store = Store(tmp)

    def step(name: str, action: Callable[[], object]) -> None:
        start = time.perf_counter()
        action()
        print(f"  {name:<44} {time.perf_counter() - start:6.1f} s", flush=True)

    print(f"Building {path.name} ({rows:,} interactions, six cycles):")
    step("demo workspace", lambda: load_demo(store))
    plan_id = "python-coding-assistant"
    plan, _ = load_plan(store, plan_id)
    cycles = [c.cycle for c in plan_timeline(plan)]
    step(f"{rows:,} interactions (SQL)", lambda: _bulk_interactions(store, plan, rows))
    step("consent for 75% of their users (SQL)", lambda: _bulk_consent(store, plan))
    for cycle in cycles:
        step(f"cycle {cycle} run", lambda c=cycle: run_cycle(store, plan_id, c, user=OPERATOR))
    step("evals, gates and decisions", lambda: _bulk_evals(store, plan_id, cycles))
    with store.connect() as con:
        con.execute("CHECKPOINT")
    shutil.move(tmp, path)
    return path


# -- measuring ---------------------------------------------------------------------------------


class _PathWithoutPagesFolder(type(Path())):  # type: ignore[misc]
    """As tests/conftest.py: AppTest runs pages through app.py's st.navigation, as served."""

    def exists(self, *args: object, **kwargs: object) -> bool:
        return self.name != "pages" and super().exists(*args, **kwargs)


def navigation_pages() -> list[str]:
    """The page files app.py registers, in its order."""
    return re.findall(r'st\.Page\("(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text())


def _cold() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def measure_page(page: str) -> tuple[float, float]:
    """Seconds of a cold first render of ``page`` and of a rerun after it."""
    _cold()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    if page != "pages/overview.py":
        at.switch_page(page)
    start = time.perf_counter()
    at.run()
    first = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"{page} raised: {at.exception[0].value}")
    start = time.perf_counter()
    at.run()
    rerun = time.perf_counter() - start
    return first, rerun


def _empty_page() -> None:
    import streamlit as st

    st.write("baseline")


def baselines(store: Store) -> tuple[float, float]:
    """The raw scan through the store, and an AppTest render of a one-line page (seconds)."""
    start = time.perf_counter()
    store.fetch_one("SELECT count(*), sum(length(prompt)) FROM interactions")
    scan = time.perf_counter() - start
    at = AppTest.from_function(_empty_page)
    start = time.perf_counter()
    at.run()
    empty = time.perf_counter() - start
    return scan, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rebuild", action="store_true", help="build the store again")
    parser.add_argument("--repeat", type=int, default=3, help="runs per page; the median is shown")
    parser.add_argument("--page", action="append", help="only these pages (e.g. overview)")
    args = parser.parse_args()
    # Bare AppTest runs make Streamlit warn ("No runtime found") on every page: keep errors only.
    streamlit_logger.set_log_level(logging.ERROR)
    logging.disable(logging.WARNING)

    path = build_store(args.rows, rebuild=args.rebuild)
    work = OUT / "pages_measured.duckdb"
    shutil.copyfile(path, work)  # pages may write (audit entries, frozen sets): keep the build
    Path(str(work) + ".wal").unlink(missing_ok=True)
    os.environ["FLYWHEEL_DB"] = str(work)
    os.environ["FLYWHEEL_AUTO_DEMO"] = "0"
    pages_manager.Path = _PathWithoutPagesFolder  # type: ignore[attr-defined,misc]
    store = Store(work)
    rows = store.fetch_one("SELECT count(*) FROM interactions")
    pages = navigation_pages()
    if args.page:
        pages = [p for p in pages if Path(p).stem in args.page]

    # Warm-up: imports and the first DuckDB open happen once per server process, not per page.
    for page in pages:
        measure_page(page)
    scan_runs, empty_runs = zip(*(baselines(store) for _ in range(args.repeat)), strict=True)
    scan, empty = statistics.median(scan_runs), statistics.median(empty_runs)

    print(
        f"\n{rows[0] if rows else 0:,} interactions; median of {args.repeat} runs per figure; "
        f"targets: first render ≤ {FIRST_TARGET_S:g} s, rerun ≤ {RERUN_TARGET_S:g} s"
    )
    print(f"baseline: raw scan count(*), sum(length(prompt)) through the store  {scan:6.3f} s")
    print(f"baseline: AppTest render of a one-line page                        {empty:6.3f} s\n")
    header = f"{'page':<12} {'first s':>8} {'ok':>3} {'rerun s':>8} {'ok':>3} {'first/scan':>11}"
    print(header)
    print("-" * len(header))
    missed = 0
    for page in pages:
        runs = [measure_page(page) for _ in range(args.repeat)]
        first = statistics.median(r[0] for r in runs)
        rerun = statistics.median(r[1] for r in runs)
        ok_first, ok_rerun = first <= FIRST_TARGET_S, rerun <= RERUN_TARGET_S
        missed += (not ok_first) + (not ok_rerun)
        print(
            f"{Path(page).stem:<12} {first:8.3f} {'yes' if ok_first else 'NO':>3} "
            f"{rerun:8.3f} {'yes' if ok_rerun else 'NO':>3} {first / scan:10.1f}x"
        )
    print(f"\n{missed} figure(s) over target." if missed else "\nEvery page within target.")


if __name__ == "__main__":
    main()
