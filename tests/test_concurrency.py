"""Several writers at once — dashboard sessions (threads) and a scheduled CLI job (another
process) — lose no write and corrupt nothing; lock conflicts are waited out."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ROOT

from core.access import User, local_operator
from core.plan_files import dump_plan
from core.plan_versions import list_versions, load_plan, save_plan_version
from core.starters import starter_plan
from core.store import Store


def test_sessions_and_a_cli_job_lose_no_write(store: Store, tmp_path: Path) -> None:
    plan_id, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="0", user=local_operator()
    )
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(dump_plan(starter_plan("python_coding_assistant"), "yaml"))
    env = {**os.environ, "FLYWHEEL_DB": str(store.path), "FLYWHEEL_LOCK_TIMEOUT_S": "60"}
    job = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from core.cli import main\n"
            "for i in range(6):\n"
            f"    assert main(['plan', 'import', {str(plan_file)!r}, '--plan', {plan_id!r},"
            " '--note', f'cli {i}']) == 0\n",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[BaseException] = []
    busy_store = Store(store.path, lock_timeout_s=60)

    def session(name: str) -> None:
        try:
            for i in range(8):
                plan, _ = load_plan(busy_store, plan_id)
                plan.cadence.min_new_examples = 500 + i
                save_plan_version(
                    busy_store,
                    plan,
                    note=f"{name} {i}",
                    user=User(name, frozenset({"pm"})),
                    plan_id=plan_id,
                )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    sessions = [threading.Thread(target=session, args=(f"s{n}",)) for n in range(2)]
    for thread in sessions:
        thread.start()
    for thread in sessions:
        thread.join(timeout=240)
    _, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr
    assert errors == []

    versions = list_versions(store, plan_id)
    assert sorted(v.version for v in versions) == list(range(1, 1 + 1 + 16 + 6))
    notes = {v.note for v in versions}
    assert {f"s{n} {i}" for n in range(2) for i in range(8)} <= notes
    assert {f"cli {i}" for i in range(6)} <= notes
    audit = store.fetch_one("SELECT count(*) FROM audit_log WHERE action = 'plan.save'")
    assert audit == (23,)
