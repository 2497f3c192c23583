"""Eval sets and their frozen versions, eval runs against a local OpenAI-compatible server
(faults, resume, grader errors, the judge), imported results, and gates read from the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import code_items, responder, write_jsonl
from fake_openai import FakeOpenAI, Faults
from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

from core.access import User, local_operator
from core.errors import EvalError, GateError
from core.evals import (
    JudgeConfig,
    Role,
    eval_endpoint,
    eval_sets,
    freeze_set_version,
    import_eval_set,
    import_results,
    item_scores,
    judge_agreement_for_run,
    load_items,
    paired_comparison,
    record_results,
    run_eval,
    run_summary,
    set_versions,
    slice_means,
)
from core.gates import check_gates, cycle_decisions, record_decision
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store

ML = User("Omar", frozenset({"ml_lead"}))


def _import(store: Store, tmp_path: Path, rows: list[dict[str, object]], name: str) -> dict:  # type: ignore[type-arg]
    result = import_eval_set(store, write_jsonl(tmp_path / name, rows), user=ML)
    return result.sets[0]


def test_a_set_is_versioned_by_content_and_frozen_versions_never_change(
    store: Store, tmp_path: Path
) -> None:
    items = code_items()
    first = _import(store, tmp_path, items, "a.jsonl")
    assert (first["version"], first["items"], first["status"]) == (1, 12, "created")
    same = _import(store, tmp_path, [dict(i) for i in items], "a-copy.jsonl")
    assert same["status"] == "unchanged"
    items[0]["prompt"] = "TASK 0: write f_0(x) returning x + 0, carefully."
    draft = _import(store, tmp_path, items, "b.jsonl")
    assert (draft["version"], draft["status"]) == (1, "updated")  # a draft changes in place
    assert freeze_set_version(store, "py-mini", 1, reason="used by a gate", user=ML)
    items[1]["reference"] = "changed"
    newer = _import(store, tmp_path, items, "c.jsonl")
    assert (newer["version"], newer["status"]) == (2, "created")
    v1 = {i.item_id: i for i in load_items(store, "py-mini", 1)}
    assert v1["py-mini-001"].reference != "changed"
    assert [v["version"] for v in set_versions(store, "py-mini")] == [2, 1]
    assert eval_sets(store)[0]["frozen"] is False


def test_rows_that_break_the_contract_are_quarantined_not_versioned(
    store: Store, tmp_path: Path
) -> None:
    rows = code_items(2)
    rows.append({"item_id": "bad", "eval_set": "py-mini"})  # no prompt
    result = import_eval_set(store, write_jsonl(tmp_path / "bad.jsonl", rows), user=ML)
    assert (result.rows_read, result.accepted, result.rejected) == (7, 6, 1)
    assert result.sets[0]["items"] == 6
    assert store.fetch_all("SELECT reason FROM quarantine WHERE batch_id = ?", [result.batch_id])


def test_an_eval_run_against_the_local_server_with_faults_and_the_judge(
    store: Store, tmp_path: Path
) -> None:
    _import(store, tmp_path, code_items(), "a.jsonl")
    with FakeOpenAI(Faults(retry_after_s=0.01), script=["429", "500"], responder=responder) as srv:
        endpoint = eval_endpoint(srv.url, api_key="sk-eval-SECRET")
        report = run_eval(
            store,
            eval_set="py-mini",
            model="student",
            role="candidate",
            cycle=1,
            plan_id="p",
            endpoint=endpoint,
            graders=["python_parses", "python_tests", "llm_judge"],
            judge=JudgeConfig(model="judge", endpoint=endpoint),
            backoff_s=0.01,
            concurrency=4,
            user=ML,
        )
    assert (report.outputs, report.output_errors, report.graded, report.grader_errors) == (
        12,
        0,
        36,
        0,
    )
    means = {g["grader"]: g["mean"] for g in run_summary(store, report.run_id)}
    assert means == {"llm_judge": 0.75, "python_parses": 1.0, "python_tests": 1.0}
    stored = json.dumps(store.fetch_all("SELECT * FROM eval_runs"), default=str)
    assert "SECRET" not in stored
    assert store.fetch_one(
        "SELECT frozen_at IS NOT NULL FROM eval_set_versions WHERE eval_set = 'py-mini'"
    ) == (True,)


def test_cut_bodies_are_retried_and_a_judge_told_why_gives_its_score(
    store: Store, tmp_path: Path
) -> None:
    _import(store, tmp_path, code_items(), "a.jsonl")
    judge_requests: list[int] = []

    def forgetful_judge(request: dict[str, Any]) -> str | None:
        if request.get("model") != "judge":
            return responder(request)
        judge_requests.append(len(request["messages"]))
        told = "no score" in str(request["messages"][-1]["content"])
        return "Score: 4\nMostly right." if told else "Looks mostly right to me."

    script = ["truncated", "bad_body", "truncated"]
    with FakeOpenAI(Faults(), script=script, responder=forgetful_judge) as srv:
        endpoint = eval_endpoint(srv.url, api_key="sk-eval-SECRET")
        report = run_eval(
            store,
            eval_set="py-mini",
            model="student",
            role="candidate",
            cycle=1,
            plan_id="p",
            endpoint=endpoint,
            graders=["llm_judge"],
            judge=JudgeConfig(model="judge", endpoint=endpoint),
            backoff_s=0.01,
            concurrency=1,
            user=ML,
        )
    assert (report.outputs, report.output_errors, report.graded, report.grader_errors) == (
        12,
        0,
        12,
        0,
    )
    assert {g["grader"]: g["mean"] for g in run_summary(store, report.run_id)} == {
        "llm_judge": 0.75
    }
    assert sorted(set(judge_requests)) == [1, 3]  # asked, then asked again with the error


def test_a_rerun_resumes_failed_requests_and_adds_graders(store: Store, tmp_path: Path) -> None:
    _import(store, tmp_path, code_items(), "a.jsonl")
    with FakeOpenAI(script=["500"] * 3, responder=responder) as srv:
        endpoint = eval_endpoint(srv.url)
        common = {
            "eval_set": "py-mini",
            "model": "weak",
            "role": "production",
            "endpoint": endpoint,
            "max_retries": 0,
            "backoff_s": 0.0,
            "concurrency": 1,
        }
        first = run_eval(store, graders=["python_parses"], **common, user=ML)  # type: ignore[arg-type]
        assert (first.outputs, first.output_errors) == (9, 3)
        calls = srv.chat_calls
        second = run_eval(store, graders=["python_parses", "python_tests"], **common, user=ML)  # type: ignore[arg-type]
        assert srv.chat_calls - calls == 3  # only the failed requests are asked again
    assert second.run_id == first.run_id
    assert (second.outputs, second.output_errors) == (12, 0)
    assert item_scores(store, first.run_id, "python_tests") == {
        i["item_id"]: (0.0 if n % 3 == 0 and n else 1.0) for n, i in enumerate(code_items())
    }


def test_a_grader_error_is_recorded_and_the_run_goes_on(store: Store, tmp_path: Path) -> None:
    items = code_items(1)
    items[0]["labels"] = {}
    _import(store, tmp_path, items, "a.jsonl")
    with FakeOpenAI(responder=responder) as srv:
        report = run_eval(
            store,
            eval_set="py-mini",
            model="student",
            role="teacher",
            endpoint=eval_endpoint(srv.url),
            graders=["python_tests"],
            user=ML,
        )
    assert (report.graded, report.grader_errors) == (2, 1)
    error = store.fetch_one("SELECT error FROM eval_scores WHERE score IS NULL")
    assert error is not None and "no labels.tests" in str(error[0])


def test_an_unknown_model_stops_the_run_with_a_clear_error(store: Store, tmp_path: Path) -> None:
    _import(store, tmp_path, code_items(1), "a.jsonl")
    with FakeOpenAI() as srv, pytest.raises(EvalError, match="does not serve model"):
        run_eval(
            store,
            eval_set="py-mini",
            model="missing-model",
            role="other",
            endpoint=eval_endpoint(srv.url),
            graders=["python_parses"],
            user=ML,
        )


def _results(
    run_id: str, model: str, scores: dict[str, list[float]], grader: str
) -> list[tuple[int, dict[str, object]]]:
    rows: list[tuple[int, dict[str, object]]] = []
    for item_id, values in scores.items():
        for sample, score in enumerate(values):
            rows.append(
                (
                    len(rows) + 1,
                    {
                        "run_id": run_id,
                        "item_id": item_id,
                        "model": model,
                        "output": "...",
                        "score": score,
                        "grader": grader,
                        "sample": sample,
                    },
                )
            )
    return rows


def test_imported_results_average_samples_within_items_and_refuse_bad_rows(
    store: Store, tmp_path: Path
) -> None:
    _import(store, tmp_path, code_items(1), "a.jsonl")
    rows = [
        {
            "run_id": "ext-1",
            "item_id": "py-mini-000",
            "model": "m",
            "output": "a",
            "score": 1,
            "grader": "exact",
            "sample": 0,
        },
        {
            "run_id": "ext-1",
            "item_id": "py-mini-000",
            "model": "m",
            "output": "b",
            "score": 0,
            "grader": "exact",
            "sample": 1,
        },
        {
            "run_id": "ext-1",
            "item_id": "py-mini-001",
            "model": "m",
            "output": "c",
            "score": 1,
            "grader": "exact",
        },
        {
            "run_id": "ext-1",
            "item_id": "nope",
            "model": "m",
            "output": "d",
            "score": 1,
            "grader": "exact",
        },
        {
            "run_id": "ext-1",
            "item_id": "py-mini-002",
            "model": "m",
            "output": "e",
            "score": 1.5,
            "grader": "exact",
        },
        {
            "run_id": "ext-1",
            "item_id": "py-mini-002",
            "model": "other",
            "output": "f",
            "score": 1,
            "grader": "exact",
        },
    ]
    result = import_results(
        store,
        write_jsonl(tmp_path / "r.jsonl", rows),
        eval_set="py-mini",
        role="candidate",
        cycle=1,
        user=ML,
    )
    assert (result.rows_read, result.accepted) == (6, 3)
    assert [r["line"] for r in result.rejected] == [4, 5, 6]
    assert item_scores(store, "ext-1", "exact") == {"py-mini-000": 0.5, "py-mini-001": 1.0}


def test_paired_comparison_and_slice_means(store: Store, tmp_path: Path) -> None:
    items = code_items(2)
    _import(store, tmp_path, items, "a.jsonl")
    ids = [i["item_id"] for i in items]
    cand = {i: [1.0] for i in ids}
    prod = {i: [1.0 if n % 2 else 0.0] for n, i in enumerate(ids)}
    prod[ids[1]] = [1.0]
    cand[ids[1]] = [0.0]
    record_results(
        store, _results("c", "cand", cand, "exact"), eval_set="py-mini", role="candidate", user=ML
    )
    record_results(
        store, _results("p", "prod", prod, "exact"), eval_set="py-mini", role="production", user=ML
    )
    rows = paired_comparison(store, "c", "p", "exact", "topic")
    assert {r["slice"]: (r["wins"], r["losses"], r["ties"]) for r in rows} == {
        "async": (1, 0, 1),
        "lists": (1, 1, 0),
        "strings": (1, 0, 1),
    }
    means = slice_means(store, {"candidate": "c", "production": "p"}, "exact", "topic")
    assert means["candidate"]["lists"] == 0.5 and means["production"]["async"] == 0.5


def test_judge_agreement_with_human_labels(store: Store, tmp_path: Path) -> None:
    _import(store, tmp_path, code_items(4), "a.jsonl")
    ids = [i["item_id"] for i in code_items(4)]
    judge = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0]
    human = [1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0]
    rows = _results("j", "m", {i: [float(s)] for i, s in zip(ids, judge, strict=True)}, "llm_judge")
    rows += _results("j", "m", {i: [float(s)] for i, s in zip(ids, human, strict=True)}, "human")
    record_results(store, rows, eval_set="py-mini", role="candidate", user=ML)
    agreement = judge_agreement_for_run(store, "j")
    table = [[0, 0], [0, 0]]
    for a, b in zip(judge, human, strict=True):
        table[a][b] += 1
    assert agreement.n == 12 and agreement.kappa == pytest.approx(sm_kappa(table).kappa)


def _gate_workspace(
    store: Store, tmp_path: Path, *, regress_async: bool, candidate_system: str | None = None
) -> str:
    plan = starter_plan("python_coding_assistant")
    for gate in plan.gates:
        if gate.eval_set:
            gate.eval_set = "py-mini"
    plan_id, _ = save_plan_version(store, plan, note="t", user=local_operator())
    items = code_items(40)
    _import(store, tmp_path, items, "set.jsonl")
    ids = {i["item_id"]: i["topic"] for i in items}
    prod = {i: [1.0 if n % 10 else 0.0] for n, i in enumerate(ids)}
    cand = {i: [1.0] for i in ids}
    if regress_async:
        cand = {i: [0.0 if t == "async" and n % 2 else 1.0] for n, (i, t) in enumerate(ids.items())}
    teacher_j = {i: [0.9] if n % 2 else [0.8] for n, i in enumerate(ids)}
    cand_j = {i: [0.88] if n % 2 else [0.8] for n, i in enumerate(ids)}
    runs: list[tuple[str, Role, str, dict[str, list[float]], str]] = [
        ("c-tests", "candidate", "ft:student", cand, "python_tests"),
        ("p-tests", "production", "prod", prod, "python_tests"),
        ("t-judge", "teacher", "gpt-4o", teacher_j, "llm_judge"),
    ]
    for run, role, model, scores, grader in runs:
        record_results(
            store,
            _results(run, model, scores, grader),
            eval_set="py-mini",
            role=role,
            cycle=1,
            plan_id=plan_id,
            user=ML,
            system_message=candidate_system if role == "candidate" else None,
        )
    extra = _results("c-tests", "ft:student", cand_j, "llm_judge")
    extra += _results("c-tests", "ft:student", {i: [1.0] for i in ids}, "python_parses")
    record_results(
        store, extra, eval_set="py-mini", role="candidate", cycle=1, plan_id=plan_id, user=ML
    )
    return plan_id


def test_gates_read_from_the_store_and_a_decision_is_audited(store: Store, tmp_path: Path) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=True)
    report = check_gates(store, plan_id, 1)
    verdicts = {g.name: g.verdict for g in report.gates}
    assert verdicts["Code parses"] == "pass"
    assert verdicts["No regression vs production"] == "fail"
    assert verdicts["Keeps 95% of teacher quality"] == "pass"
    assert verdicts["Cost per 1k requests"] == "insufficient_data"  # no tokens measured
    assert report.verdict == "fail" and report.candidate == "ft:student"
    regression = next(g for g in report.gates if g.comparator == "no_regression")
    short = {(s.dimension, s.value) for s in regression.slices if s.short}
    assert ("topic", "async") in short  # (its losses are all "hard" items, so that slice too)
    assert ("topic", "lists") not in short
    with pytest.raises(GateError, match="cannot be approved"):
        record_decision(store, plan_id, 1, decision="approved", user=ML)
    with pytest.raises(GateError, match="written reason"):
        record_decision(store, plan_id, 1, decision="overridden", user=ML, reason="ok")
    reason = "Async slice regression is a known flaky test; fix ships in cycle 2."
    decision_id = record_decision(store, plan_id, 1, decision="overridden", user=ML, reason=reason)
    decisions = cycle_decisions(store, plan_id, 1)
    assert decisions[0]["decision_id"] == decision_id and decisions[0]["reason"] == reason
    audit = store.fetch_one("SELECT actor, detail FROM audit_log WHERE action = 'gate.overridden'")
    assert audit is not None and audit[0] == "Omar" and reason in audit[1]


def test_gates_pass_without_the_regression(store: Store, tmp_path: Path) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=False)
    report = check_gates(store, plan_id, 1)
    assert report.verdict == "pass"
    record_decision(store, plan_id, 1, decision="approved", user=ML)
    with pytest.raises(GateError, match="approve instead"):
        record_decision(store, plan_id, 1, decision="overridden", user=ML, reason="x" * 30)


def test_a_decision_rests_on_the_report_core_computes(store: Store, tmp_path: Path) -> None:
    """A caller cannot pass a report whose verdict it changed: record_decision takes no report
    and checks the gates itself."""
    import dataclasses
    import inspect

    assert "report" not in inspect.signature(record_decision).parameters
    plan_id = _gate_workspace(store, tmp_path, regress_async=True)
    computed = check_gates(store, plan_id, 1)
    assert computed.verdict == "fail"
    forged = dataclasses.replace(computed, verdict="pass")
    with pytest.raises(TypeError):
        # The old call shape, a report in place of the plan id, is refused.
        record_decision(store, forged, decision="approved", user=ML)  # type: ignore[call-arg, arg-type]
    with pytest.raises(GateError, match="cannot be approved"):
        record_decision(store, plan_id, 1, decision="approved", user=ML)
    assert store.fetch_one("SELECT count(*) FROM gate_decisions") == (0,)


# -- the student's system message --------------------------------------------------------------

EXPERT = "You are a Python expert."  # the coding-assistant starter's student system message


def test_a_candidate_run_sends_and_records_the_system_message_it_was_trained_under(
    store: Store, tmp_path: Path
) -> None:
    plan_id, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="t", user=local_operator()
    )
    _import(store, tmp_path, code_items(1), "a.jsonl")
    asked: list[tuple[str, list[dict[str, str]]]] = []

    def recording(request: dict[str, object]) -> str | None:
        asked.append((str(request["model"]), list(request["messages"])))  # type: ignore[call-overload]
        return responder(request)

    def run(role: str, **extra: object) -> str:
        report = run_eval(
            store,
            eval_set="py-mini",
            model="student",
            role=role,  # type: ignore[arg-type]
            cycle=1,
            plan_id=plan_id,
            endpoint=eval_endpoint(srv.url, api_key="k"),
            graders=["python_parses"],
            user=ML,
            **extra,  # type: ignore[arg-type]
        )
        stored = store.fetch_one(
            "SELECT system_message FROM eval_runs WHERE run_id = ?", [report.run_id]
        )
        assert stored == (report.system_message,)
        return report.system_message

    with FakeOpenAI(responder=recording) as srv:
        # A candidate is asked under the message it trained under: with no dataset built
        # yet, the plan's; every request opens with it, and the run records it.
        assert run("candidate") == EXPERT
        assert asked and all(m[0] == {"role": "system", "content": EXPERT} for _, m in asked)
        asked.clear()
        # '' sends none (another run, not a resume of the first); other roles send none.
        assert run("candidate", system_message="") == ""
        assert run("production") == ""
        assert asked and all(m[0]["role"] == "user" for _, m in asked)
    runs = store.fetch_all("SELECT DISTINCT run_id FROM eval_runs")
    assert len(runs) == 3


def test_gates_do_not_warn_when_the_candidate_was_evaluated_under_its_training_message(
    store: Store, tmp_path: Path
) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=False, candidate_system=EXPERT)
    same = check_gates(store, plan_id, 1)
    assert same.verdict == "pass" and same.warnings == []


def test_a_train_eval_system_message_skew_is_a_warning_not_a_failure(
    store: Store, tmp_path: Path
) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=False, candidate_system="")
    report = check_gates(store, plan_id, 1)
    assert report.verdict == "pass"  # the skew never changes the verdict
    (warning,) = report.warnings
    assert warning.startswith("Train/eval skew: candidate run c-tests sent no system message")
    assert f"{EXPERT!r} (6193d3b3204c), from the plan's student system message" in warning
    assert report.to_dict()["warnings"] == [warning]


def test_gates_say_when_a_candidate_run_did_not_record_its_system_message(
    store: Store, tmp_path: Path
) -> None:
    plan_id = _gate_workspace(store, tmp_path, regress_async=False)  # imported, message unknown
    (warning,) = check_gates(store, plan_id, 1).warnings
    assert "c-tests did not record the system message it sent" in warning
