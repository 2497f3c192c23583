"""A cycle's status says what happened: "evaluated" needs stored eval results for its
candidate, and a run that failed is stored as failed, with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import code_items, write_jsonl

from core.access import User, local_operator
from core.errors import FlywheelError
from core.evals import eval_endpoint, import_eval_set, list_runs, record_results, run_eval
from core.monitoring import cycle_monitoring, cycle_status
from core.plan_versions import load_plan, save_plan_version
from core.starters import starter_plan
from core.store import Store
from core.training import register_candidate

ML = User("Omar", frozenset({"ml_lead"}))


@pytest.mark.parametrize(
    ("facts", "status"),
    [
        ({}, "planned"),
        ({"traffic": True}, "traffic logged"),
        ({"traffic": True, "dataset_built": True}, "dataset built"),
        ({"dataset_built": True, "evaluated": True}, "evaluated"),
        ({"evaluated": True, "decision": "approved"}, "approved"),
        ({"evaluated": True, "decision": "overridden", "ab_verdict": "ship"}, "shipped"),
        ({"evaluated": True, "decision": "rejected", "ab_verdict": "ship"}, "rejected"),
        ({"traffic": True, "ab_verdict": "roll_back"}, "rejected"),
        ({"traffic": True, "ab_verdict": "ship"}, "traffic logged"),  # nothing decided
    ],
)
def test_cycle_status_follows_what_happened(facts: dict[str, object], status: str) -> None:
    given: dict[str, object] = {
        "decision": None,
        "ab_verdict": None,
        "evaluated": False,
        "dataset_built": False,
        "traffic": False,
        **facts,
    }
    assert cycle_status(**given) == status  # type: ignore[arg-type]


def _workspace(store: Store, tmp_path: Path) -> str:
    plan = starter_plan("python_coding_assistant")
    for gate in plan.gates:
        if gate.eval_set:
            gate.eval_set = "py-mini"
    plan_id, _ = save_plan_version(store, plan, note="t", user=local_operator())
    import_eval_set(store, write_jsonl(tmp_path / "set.jsonl", code_items(10)), user=ML)
    return plan_id


def _record(store: Store, plan_id: str) -> object:
    plan, _ = load_plan(store, plan_id)
    return next(r for r in cycle_monitoring(store, plan_id, plan) if r.cycle == 1)


def test_a_registered_candidate_or_a_failed_run_is_not_an_evaluation(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = _workspace(store, tmp_path)
    register_candidate(
        store, plan_id, 1, model="ft:student", endpoint="https://api.openai.com/v1", user=ML
    )
    record = _record(store, plan_id)
    assert record.status == "planned" and record.gates is None  # type: ignore[attr-defined]

    # A run with no key fails before any request: stored as failed, with the reason.
    for name in ("OPENAI_API_KEY", "FLYWHEEL_TEACHER_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(FlywheelError, match="No API key"):
        run_eval(
            store,
            eval_set="py-mini",
            model="ft:student",
            role="candidate",
            cycle=1,
            plan_id=plan_id,
            endpoint=eval_endpoint(None),
            graders=["python_parses"],
            user=ML,
        )
    (run,) = list_runs(store, plan_id=plan_id)
    assert run["status"] == "failed"
    assert str(run["message"]).startswith("Failed: No API key for OpenAI")
    record = _record(store, plan_id)
    assert record.status == "planned" and record.gates is None  # type: ignore[attr-defined]

    # Scores of another model than the registered candidate do not evaluate it either.
    rows = [
        (
            n + 1,
            {
                "run_id": r,
                "item_id": i["item_id"],
                "model": m,
                "output": "x",
                "score": 1.0,
                "grader": "python_tests",
            },
        )
        for r, m in (("other", "someone-else"),)
        for n, i in enumerate(code_items(10))
    ]
    record_results(
        store, rows, eval_set="py-mini", role="candidate", cycle=1, plan_id=plan_id, user=ML
    )
    assert _record(store, plan_id).status == "planned"  # type: ignore[attr-defined]

    rows = [
        (
            n + 1,
            {
                "run_id": "mine",
                "item_id": i["item_id"],
                "model": "ft:student",
                "output": "x",
                "score": 1.0,
                "grader": "python_tests",
            },
        )
        for n, i in enumerate(code_items(10))
    ]
    record_results(
        store, rows, eval_set="py-mini", role="candidate", cycle=1, plan_id=plan_id, user=ML
    )
    record = _record(store, plan_id)
    assert record.status == "evaluated"  # type: ignore[attr-defined]
    assert record.gates is not None and record.gates.candidate == "ft:student"  # type: ignore[attr-defined]
