"""The demo tells one story: everything it records is dated inside its own timeline, in the order
it happened, and its answers are Python that runs."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from core.demo import _TASK_CODE, DEMO_PRESENT
from core.store import Store

DEMO_START = datetime(2026, 12, 1, tzinfo=UTC)

RECORDED = {
    "audit_log": "ts",
    "plan_versions": "created_at",
    "plan_approvals": "decided_at",
    "ingest_batches": "started_at",
    "cycle_runs": "started_at",
    "dataset_versions": "created_at",
    "eval_runs": "started_at",
    "gate_decisions": "decided_at",
    "training_jobs": "created_at",
    "cycle_candidates": "registered_at",
}


def test_everything_the_demo_records_is_dated_inside_its_timeline(demo_store: Store) -> None:
    for table, column in RECORDED.items():
        first, last, rows = demo_store.fetch_one(
            f"SELECT min({column}), max({column}), count(*) FROM {table}"
        ) or (None, None, 0)
        assert rows, f"the demo records no {table}"
        assert first >= DEMO_START and last <= DEMO_PRESENT, (table, first, last)


def test_each_cycle_s_steps_happen_in_order(demo_store: Store) -> None:
    steps = demo_store.fetch_all(
        """
        SELECT v.cycle, v.created_at, j.created_at, c.registered_at,
               (SELECT min(r.started_at) FROM eval_runs r
                WHERE r.cycle = v.cycle AND r.role = 'candidate'),
               (SELECT min(d.decided_at) FROM gate_decisions d WHERE d.cycle = v.cycle)
        FROM dataset_versions v
        JOIN training_jobs j ON j.dataset_version = v.version_id
        JOIN cycle_candidates c ON c.job_id = j.job_id
        ORDER BY v.cycle
        """
    )
    assert [s[0] for s in steps] == [1, 2]
    for cycle, built, trained, registered, evaluated, decided in steps:
        assert built < trained < registered < evaluated, cycle
        assert decided is None or evaluated < decided, cycle
    # A run recorded a cycle only from data loaded before it.
    late = demo_store.fetch_one(
        """
        SELECT count(*) FROM cycle_runs r JOIN dataset_rows d ON d.version_id = r.dataset_version
        JOIN interactions i USING (interaction_id)
        JOIN ingest_batches b ON b.batch_id = i.batch_id
        WHERE b.started_at > r.started_at
        """
    )
    assert late == (0,)


def test_demo_answers_are_python_that_runs(tmp_path: Path) -> None:
    for task, template in _TASK_CODE.items():
        script = tmp_path / (re.sub(r"\W+", "_", task) + ".py")
        script.write_text(template.format(name="invoice", Name="Invoice", k=3), encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
        if "import pytest" not in template:
            command = [sys.executable, str(script)]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
        )
        assert done.returncode == 0, (task, done.stdout, done.stderr)


def test_demo_interactions_carry_real_answers(demo_store: Store) -> None:
    stubs = demo_store.fetch_one(
        "SELECT count(*) FROM interactions WHERE response LIKE '%# ...%'"
        " OR response NOT LIKE '%```python%'"
    )
    assert stubs == (0,)
