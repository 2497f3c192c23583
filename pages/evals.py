"""Evals & gates: a cycle's candidate, its scores against production and the teacher, where it
wins and loses by slice, the gate report and the release decision."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.access import refusal
from core.charts import (
    gate_thresholds_figure,
    slice_heatmap_figure,
    training_loss_figure,
    wins_losses_figure,
)
from core.datasets import list_versions
from core.evals import (
    ROLES,
    JudgeConfig,
    candidate_system_message,
    eval_endpoint,
    eval_sets,
    import_eval_set,
    import_results,
    judge_agreement_for_run,
    judge_endpoint,
    list_runs,
    load_items,
    paired_comparison,
    run_eval,
    run_summary,
    set_versions,
    slice_dimensions,
    slice_means,
)
from core.gates import (
    DECISION_PERMISSIONS,
    GateReport,
    check_gates,
    cycle_decisions,
    record_decision,
)
from core.graders import GRADERS, grader_for_metric
from core.labels import label
from core.monitoring import gate_figure
from core.plan import TRAINING_BACKEND_LABELS, plan_timeline
from core.settings import settings
from core.training import (
    TERMINAL_STATUSES,
    cancel_training,
    cycle_candidate,
    follow_training,
    job_events,
    job_metrics,
    missing_training_stack,
    register_candidate,
    resume_training,
    start_training,
    training_jobs,
    training_summary,
)
from pages._common import (
    cached_read,
    current_user,
    get_store,
    guarded,
    page_header,
    plan_or_stop,
    table,
)
from pages._documents import document_downloads

page_header("Evals & gates")
user = current_user()
train_refused = refusal(user, "model.train")
eval_refused = refusal(user, "eval.run")
ingest_refused = refusal(user, "data.ingest")

plan_id, plan, _plan_version = plan_or_stop()
store = get_store()
cycles = [c.cycle for c in plan_timeline(plan)] or [1]
with_runs = {
    int(r["cycle"]) for r in cached_read(list_runs, plan_id=plan_id) if r["cycle"] is not None
}
latest = max((c for c in cycles if c in with_runs), default=cycles[0])
cycle = st.selectbox(
    "Cycle",
    cycles,
    index=cycles.index(latest),
    key="evals_cycle",
    help="The cycle whose candidate is evaluated.",
)

# Plain words, not emoji: Debian's Chromium has no emoji font and would draw empty boxes.
VERDICT_ICON = {v: label(v) for v in ("pass", "fail", "insufficient_data")}
VERDICT_SYMBOL = {
    "pass": ":material/check_circle:",
    "fail": ":material/cancel:",
    "insufficient_data": ":material/help:",
}

# -- the candidate -----------------------------------------------------------------------------
candidate = cycle_candidate(store, plan_id, cycle)
jobs = training_jobs(store, plan_id, cycle)
cols = st.columns([2, 3])
with cols[0]:
    st.subheader("Candidate")
    if candidate:
        st.markdown(f"**{candidate['model']}**")
        st.caption(
            f"{'fine-tuned' if candidate['source'] == 'fine_tune' else 'registered'}"
            + (
                f" on dataset {candidate['dataset_version']}"
                if candidate["dataset_version"]
                else ""
            )
            + (f" · {candidate['endpoint']}" if candidate["endpoint"] else "")
            + (
                f" · weights sha256 `{str(candidate['weights_sha256'])[:16]}…`"
                if candidate["weights_sha256"]
                else ""
            )
        )
    else:
        st.info(
            "No candidate for this cycle yet: train one with `python -m core train start "
            f"--cycle {cycle} --dataset-version V`, or register a model trained elsewhere below.",
            icon=":material/info:",
        )
    with st.expander("Register a model trained elsewhere"), st.form("register_candidate"):
        model = st.text_input("Model name", placeholder="qwen2.5-7b-python-ft")
        endpoint = st.text_input("OpenAI-compatible base URL", placeholder="http://gpu-box:8000/v1")
        dataset = st.text_input("Dataset version (optional)")
        if train_refused:
            st.caption(train_refused)
        if st.form_submit_button("Register as candidate", disabled=train_refused is not None):
            done = guarded(
                lambda: register_candidate(
                    store,
                    plan_id,
                    cycle,
                    model=model,
                    endpoint=endpoint,
                    dataset_version=dataset or None,
                    user=user,
                )
            )
            if done:
                st.success(f"Cycle {cycle}'s candidate is now {done['model']}.")
                st.rerun()
with cols[1]:
    st.subheader("Training")
    backend = plan.training.backend
    st.caption(
        f"The plan trains the student **{TRAINING_BACKEND_LABELS[backend]}** "
        f"({training_summary(plan)}); change it on the Plan page, 6b."
    )
    missing = missing_training_stack() if backend == "local" else []
    if missing:
        st.info(
            f"Local training needs {', '.join(missing)} on the dashboard's machine: "
            "`pip install -r requirements-train.txt` (GPU users: install their CUDA build of "
            "torch first), then restart the dashboard.",
            icon=":material/info:",
        )
    versions = [v.version_id for v in cached_read(list_versions, plan_id)]
    with st.expander("Start training", expanded=not jobs), st.form("train_start"):
        version = st.selectbox(
            "Dataset version",
            versions or ["(none)"],
            help="The version whose training split the student learns from.",
        )
        chosen_backend = st.selectbox(
            "Where to train",
            list(TRAINING_BACKEND_LABELS),
            index=list(TRAINING_BACKEND_LABELS).index(backend),
            format_func=TRAINING_BACKEND_LABELS.__getitem__,
        )
        max_steps = st.number_input(
            "Stop after steps (local; 0 = the plan's epochs)", min_value=0, value=0, step=10
        )
        if train_refused:
            st.caption(train_refused)
        if st.form_submit_button(
            "Start training", disabled=not versions or train_refused is not None
        ):
            started = guarded(
                lambda: start_training(
                    store,
                    plan_id,
                    cycle,
                    dataset_version=version,
                    backend=chosen_backend,
                    max_steps=int(max_steps) or None,
                    wait=False,
                    user=user,
                )
            )
            if started:
                st.success(f"Started {started.job_id}; its progress shows below.")
                st.rerun()

    def training_panel() -> None:
        """The cycle's newest job (or the one picked): status, loss curve, events, actions."""
        listed = training_jobs(store, plan_id, cycle)
        if not listed:
            st.caption("No training job for this cycle yet.")
            return
        picked = st.selectbox(
            "Job",
            [str(j["job_id"]) for j in listed],
            format_func=lambda job_id: next(
                f"{j['job_id']} · {j['backend']} · {j['status']}"
                for j in listed
                if j["job_id"] == job_id
            ),
            key="training_job",
        )
        job = next(j for j in listed if j["job_id"] == picked)
        if job["status"] not in TERMINAL_STATUSES and train_refused is None:
            followed = guarded(lambda: follow_training(store, picked, max_polls=1, user=user))
            if followed is not None:
                job = next(j for j in training_jobs(store, plan_id, cycle) if j["job_id"] == picked)
        status = str(job["status"])
        if job["total_steps"]:
            done_share = min(1.0, (job["step"] or 0) / max(1, int(job["total_steps"])))
            st.progress(
                done_share, text=f"{status}: step {job['step'] or 0} of {job['total_steps']}"
            )
        else:
            st.markdown(f"Status: **{status}**")
        if job["error"]:
            st.error(str(job["error"]), icon=":material/error:")
        metrics = job_metrics(store, picked)
        if any(m["loss"] is not None for m in metrics):
            st.plotly_chart(
                training_loss_figure(metrics, title=f"Loss of {picked}"), width="stretch"
            )
        facts = {
            "Trained tokens": f"{job['trained_tokens']:,}" if job["trained_tokens"] else "—",
            "Cost": f"${job['cost_usd']:,.2f}" if job["cost_usd"] is not None else "—",
            "Model": job["fine_tuned_model"] or "—",
            "Weights sha256": job["weights_sha256"] or "—",
        }
        st.markdown("  \n".join(f"**{k}:** `{v}`" for k, v in facts.items()))
        actions = st.columns(2)
        if (
            status not in TERMINAL_STATUSES
            and actions[0].button(
                "Cancel job", disabled=train_refused is not None, key="training_cancel"
            )
            and guarded(lambda: cancel_training(store, picked, user=user)) is not None
        ):
            st.rerun()
        if (
            job["backend"] == "local"
            and status in ("failed", "cancelled")
            and actions[1].button(
                "Resume from last checkpoint",
                disabled=train_refused is not None,
                key="training_resume",
            )
            and guarded(lambda: resume_training(store, picked, wait=False, user=user))
        ):
            st.rerun()
        with st.expander("Events"):
            for event in job_events(store, picked):
                st.text(
                    f"{event['created_at']:%Y-%m-%d %H:%M:%S}  {event['level']}  {event['message']}"
                )

    active = any(j["status"] not in TERMINAL_STATUSES for j in jobs)
    # While a job runs, the panel reads it every few seconds (the rest of the page stays put).
    st.fragment(training_panel, run_every=3 if active else None)()

st.divider()
# Remembered until the store changes; the first check freezes the set versions it reads.
report: GateReport | None = guarded(lambda: cached_read(check_gates, plan_id, cycle))
report_tab, scores_tab, slices_tab, run_tab, sets_tab = st.tabs(
    ["Gate report", "Scores", "By slice", "Run or import", "Eval sets"]
)

# -- gate report and decision ------------------------------------------------------------------
DECISION_CHOICES = {
    "approved": "Approve (every blocking gate passes)",
    "overridden": "Override the gates (needs a written reason)",
    "rejected": "Reject the candidate",
}
DECISION_WORDS = {"approved": "Approve", "overridden": "Override the gates", "rejected": "Reject"}


def decision_panel(report: GateReport) -> None:
    """The current decision first, then a form whose choice is explicit and a confirmation
    step naming the cycle, candidate and verdict; the result stays on screen after rerun."""
    st.subheader("Decision")
    shown = st.session_state.pop(f"decision_message_{cycle}", None)
    if shown is not None:
        kind, text = shown
        (st.success if kind == "ok" else st.error)(text, icon=":material/gavel:")
    decided = cycle_decisions(store, plan_id, cycle)
    current = decided[0] if decided else None
    if current is None:
        st.markdown("**Current decision:** none recorded for this cycle yet.")
    else:
        st.markdown(
            f"**Current decision:** {current['decision']} of `{current['candidate_model']}` by "
            f"{current['actor']} on {current['decided_at']:%d %b %Y %H:%M} "
            f"(gates then: {VERDICT_ICON.get(str(current['verdict']), current['verdict'])})"
            + (f" — “{current['reason']}”" if current["reason"] else "")
        )
        with st.expander(f"All {len(decided)} decision(s) for cycle {cycle}"):
            table(decided, codes=("decision", "verdict"), pinned=("decided_at", "decision"))
    pending_key = f"decision_pending_{cycle}"
    decision_refusals = {
        permission: refusal(user, permission)
        for permission in sorted(set(DECISION_PERMISSIONS.values()))
    }
    may_decide = None in decision_refusals.values()
    pending = st.session_state.get(pending_key)
    if pending is None:
        with st.form("decision"):
            choice = st.radio(
                "Decision",
                list(DECISION_CHOICES),
                index=None,
                format_func=DECISION_CHOICES.__getitem__,
                horizontal=True,
            )
            st.caption(f"Recorded as **{user.name}**.")
            reason = st.text_area("Reason", help="Required for an override; kept in the audit log.")
            for refused_decision in decision_refusals.values():
                if refused_decision:
                    st.caption(refused_decision)
            if st.form_submit_button("Record decision…", disabled=not may_decide):
                if choice is None:
                    st.warning("Choose a decision first.", icon=":material/touch_app:")
                else:
                    st.session_state[pending_key] = {"decision": choice, "reason": reason}
                    st.rerun()
        return
    choice, reason = str(pending["decision"]), str(pending["reason"])
    st.warning(
        f"Record **{DECISION_WORDS[choice]}** for cycle {cycle}'s candidate "
        f"**{report.candidate or 'none'}**, whose gates' verdict is "
        f"**{VERDICT_ICON[report.verdict]}**?"
        + (f" Reason: “{reason.strip()}”." if reason.strip() else ""),
        icon=":material/help:",
    )
    confirm, cancel = st.columns(2)
    if confirm.button("Confirm", type="primary", key="decision_confirm"):
        del st.session_state[pending_key]
        decision_id = guarded(
            lambda: record_decision(
                store,
                plan_id,
                cycle,
                decision=choice,  # type: ignore[arg-type]
                user=user,
                reason=reason,
            )
        )
        if decision_id:
            st.session_state[f"decision_message_{cycle}"] = (
                "ok",
                f"Recorded {choice} of {report.candidate} for cycle {cycle} as {decision_id}.",
            )
            st.rerun()
    if cancel.button("Cancel", key="decision_cancel"):
        del st.session_state[pending_key]
        st.rerun()


with report_tab:
    if report is None:
        st.info("Add gates to the plan (7 · Eval gates) to get a report.", icon=":material/info:")
    else:
        message = (
            f"Cycle {cycle}, candidate **{report.candidate or 'none'}**: "
            f"{VERDICT_ICON[report.verdict]} (plan v{report.plan_version})"
        )
        if report.verdict == "fail":
            # Not st.error: a failing gate is a finding on the page, not a failure of it.
            st.markdown(f":material/cancel: :red-background[{message}]")
        else:
            {"pass": st.success}.get(report.verdict, st.warning)(
                message, icon=VERDICT_SYMBOL[report.verdict]
            )
        for warning in report.warnings:
            st.warning(warning, icon=":material/warning:")
        # Each verdict with its reason in one plain sentence, then the figures and evidence.
        for g in report.gates:
            st.markdown(
                f"{VERDICT_SYMBOL[g.verdict]} **{g.name}**"
                + ("" if g.blocking else " (non-blocking)")
                + f" — {g.explanation}"
            )
        st.plotly_chart(
            gate_thresholds_figure([gate_figure(g.to_dict()) for g in report.gates]),
            width="stretch",
        )
        table(
            [
                {
                    "gate": g.name,
                    "blocking": g.blocking,
                    "verdict": VERDICT_ICON[g.verdict],
                    "value": g.value,
                    "threshold": g.threshold,
                    "comparator": g.comparator,
                    "metric": g.metric,
                    "eval set": g.eval_set,
                }
                for g in report.gates
            ],
            codes=("comparator",),
            pinned=("gate",),
        )
        for g in report.gates:
            with st.expander(f"{VERDICT_ICON[g.verdict]} · {g.name} — evidence"):
                for line in g.evidence:
                    st.markdown(f"- {line}")
                if g.slices:
                    table(pd.DataFrame([vars(s) for s in g.slices]))
        decision_panel(report)

    st.subheader("Model card")
    if candidate is None:
        st.info(
            f"Cycle {cycle} has no candidate model, so it has no model card yet; register or "
            "train one first.",
            icon=":material/info:",
        )
    else:
        st.caption(
            "Evals by slice against their thresholds, the decision and A/B result, intended use, "
            "limits, cost and sign-offs. A candidate not yet promoted gets a card marked so."
        )
        # Every write to the store is audited, so its revision names the data the card shows.
        document_downloads(
            "model-card",
            f"{plan_id}-cycle{cycle}",
            {"store": store, "plan_id": plan_id, "cycle": cycle},
            key=f"{candidate['model']}:{store.stamp()}",
        )

# -- scores per model --------------------------------------------------------------------------
runs_used: dict[str, str] = {}
if report is not None:
    for roles in report.runs.values():
        for role, run_id in roles.items():
            runs_used.setdefault(role, run_id)
with scores_tab:
    if not runs_used:
        st.info(
            "No eval results for this cycle's candidate yet: run or import them in **Run or "
            "import**.",
            icon=":material/info:",
        )
    rows: list[dict[str, Any]] = []
    for role, run_id in runs_used.items():
        run = next((r for r in cached_read(list_runs) if r["run_id"] == run_id), None)
        for summary in cached_read(run_summary, run_id):
            rows.append(
                {
                    "role": role,
                    "model": run["model"] if run else "",
                    "run": run_id,
                    **summary,
                }
            )
    if rows:
        table(pd.DataFrame(rows))
        st.caption("Intervals are Wilson 95% for pass rates; under 300 items they are wide.")
    if "candidate" in runs_used:
        agreement = cached_read(judge_agreement_for_run, runs_used["candidate"])
        if agreement.n:
            st.metric(
                "Judge vs human labels",
                f"{agreement.agreement:.0%} agree",
                f"Cohen's kappa {agreement.kappa:.2f}" if agreement.kappa is not None else None,
                delta_color="off",
                help=f"On {agreement.n} outputs with both an llm_judge score and a human label.",
            )

# -- by slice ----------------------------------------------------------------------------------
with slices_tab:
    if "candidate" not in runs_used:
        st.info("Slices appear once the candidate has results.", icon=":material/info:")
    else:
        run = next(r for r in cached_read(list_runs) if r["run_id"] == runs_used["candidate"])
        items = cached_read(load_items, str(run["eval_set"]), int(run["set_version"]))
        dimensions = slice_dimensions(items) or ["topic"]
        metrics = sorted({grader_for_metric(g.metric) for g in plan.gates if g.eval_set})
        graders = sorted(
            {str(g["grader"]) for g in cached_read(run_summary, runs_used["candidate"])}
        )
        options = [g for g in metrics if g in graders] + [g for g in graders if g not in metrics]
        c1, c2, c3 = st.columns(3)
        grader = c1.selectbox("Grader", options, key="slice_grader")
        dimension = c2.selectbox("Slice by", dimensions, key="slice_dimension")
        baselines = [r for r in ("production", "teacher") if r in runs_used]
        baseline = c3.selectbox("Compare with", baselines, key="slice_baseline")
        short = [
            s.value
            for g in (report.gates if report else [])
            for s in g.slices
            if s.short and s.dimension == dimension
        ]
        means = cached_read(slice_means, runs_used, grader, dimension)
        st.plotly_chart(slice_heatmap_figure(means, short=short), width="stretch")
        if baseline:
            paired = cached_read(
                paired_comparison, runs_used["candidate"], runs_used[baseline], grader, dimension
            )
            st.plotly_chart(wins_losses_figure(paired, baseline=baseline), width="stretch")
            table(pd.DataFrame(paired))

# -- run or import -----------------------------------------------------------------------------


def _saved(upload: Any) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="flywheel-upload-"))
    path = folder / Path(upload.name).name
    path.write_bytes(upload.getvalue())
    return path


with run_tab:
    sets = [str(s["eval_set"]) for s in eval_sets(store)]
    left, right = st.columns(2)
    with left, st.form("eval_run"):
        st.markdown("**Run a model on an eval set**")
        chosen_set = st.selectbox("Eval set", sets or ["(none)"])
        run_role = st.selectbox("Role", ROLES)
        run_model = st.text_input(
            "Model",
            value=str(candidate["model"]) if candidate else "",
            help="For the candidate role, the cycle's candidate by default.",
        )
        base_url = st.text_input(
            "Base URL",
            value=str(candidate["endpoint"]) if candidate else "",
            help="OpenAI-compatible server; empty = OPENAI_BASE_URL or OpenAI. Keys come from "
            "the environment and are never stored.",
        )
        chosen_graders = st.multiselect(
            "Graders", list(GRADERS), default=["python_parses", "python_tests"]
        )
        samples = st.number_input("Samples per item", min_value=1, max_value=20, value=1)
        trained, trained_from = cached_read(candidate_system_message, plan_id, cycle)
        system_text = st.text_area(
            "System message",
            value=trained or "",
            help=f"Sent at the start of every request of this run. Prefilled with the one the "
            f"cycle's candidate was trained under ({trained_from}), so that it is evaluated as "
            "it will be served; clear it to send none.",
        )
        if eval_refused:
            st.caption(eval_refused)
        if st.form_submit_button("Run eval", disabled=not sets or eval_refused is not None):
            bar = st.progress(0.0, text="Starting…")

            def show_progress(done: int, total: int) -> None:
                bar.progress(min(1.0, done / max(1, total)), text=f"{done}/{total}")

            judge = (
                JudgeConfig(settings.judge_model, judge_endpoint())
                if "llm_judge" in chosen_graders
                else None
            )
            done_run = guarded(
                lambda: run_eval(
                    store,
                    eval_set=chosen_set,
                    model=run_model,
                    role=run_role,
                    cycle=cycle if run_role != "teacher" else None,
                    plan_id=plan_id,
                    endpoint=eval_endpoint(base_url or None),
                    graders=chosen_graders,
                    samples=int(samples),
                    judge=judge,
                    system_message=system_text,
                    user=user,
                    on_progress=show_progress,
                )
            )
            if done_run:
                st.success(f"Run {done_run.run_id}: {done_run.message}")
    with right:
        st.markdown("**Import results produced elsewhere**")
        st.caption("JSONL or CSV with run_id, item_id, model, output, score (0..1), grader.")
        upload = st.file_uploader("Results file", type=["jsonl", "csv", "gz"], key="results_up")
        import_set = st.selectbox("Eval set", sets or ["(none)"], key="import_set")
        import_role = st.selectbox("Role", ROLES, key="import_role")
        if eval_refused:
            st.caption(eval_refused)
        if st.button(
            "Import results", disabled=upload is None or not sets or eval_refused is not None
        ):
            imported = guarded(
                lambda: import_results(
                    store,
                    _saved(upload),
                    eval_set=import_set,
                    role=import_role,
                    cycle=cycle,
                    plan_id=plan_id,
                    user=user,
                )
            )
            if imported:
                st.success(
                    f"Imported {imported.accepted} rows into {', '.join(imported.runs)}; "
                    f"{len(imported.rejected)} refused."
                )
                if imported.rejected:
                    table(pd.DataFrame(imported.rejected))

with sets_tab:
    st.markdown(
        "**Import an eval set** (JSONL or CSV: item_id, eval_set, prompt, reference, "
        "topic, difficulty, labels)"
    )
    set_upload = st.file_uploader("Eval items", type=["jsonl", "csv", "gz"], key="set_up")
    if ingest_refused:
        st.caption(ingest_refused)
    if st.button("Import eval set", disabled=set_upload is None or ingest_refused is not None):
        result = guarded(lambda: import_eval_set(store, _saved(set_upload), user=user))
        if result:
            for s in result.sets:
                st.success(f"{s['eval_set']} v{s['version']}: {s['items']} items ({s['status']}).")
            if result.rejected:
                st.warning(
                    f"{result.rejected} row(s) quarantined: see the Data page, batch "
                    f"{result.batch_id}."
                )
    all_sets = eval_sets(store)
    if not all_sets:
        st.info("No eval sets yet.", icon=":material/info:")
    for s in all_sets:
        state = "frozen" if s["frozen"] else "draft"
        with st.expander(f"{s['eval_set']} · v{s['version']} · {s['items']} items · {state}"):
            table(pd.DataFrame(set_versions(store, str(s["eval_set"]))))
