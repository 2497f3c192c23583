"""Synthetic data: the plan's generation grid, its cost, a live run, failures, examples, top-up."""

from __future__ import annotations

import json
import time
from typing import Any

import streamlit as st

from core.access import refusal
from core.charts import grid_heatmap_figure
from core.errors import FlywheelError
from core.generation import (
    GenerationProgress,
    GenerationSpec,
    cell_diversity,
    cell_key,
    dry_run,
    list_examples,
    list_failures,
    messages_for,
    production_vs_training,
    run_batch,
    run_generation,
    runs,
    stored_counts,
)
from core.labels import label, show
from core.llm import Endpoint, resolve_endpoint
from pages._common import (
    cached_read,
    current_user,
    get_store,
    guarded,
    or_stop,
    page_header,
    plan_id_or_stop,
    table,
)

page_header("Synthetic data")
user = current_user()
refused = refusal(user, "generation.run")

plan_id = plan_id_or_stop()

store = get_store()
spec = or_stop(guarded(lambda: cached_read(GenerationSpec.load, plan_id)))
gen = spec.plan.generation
axes = [(a.name, list(a.values)) for a in gen.axes]


def _secret(name: str) -> str | None:
    """A value from .streamlit/secrets.toml, if that file exists and holds it."""
    try:
        value = st.secrets.get(name)
    except Exception:  # no secrets file at all
        return None
    return str(value) if value else None


def _endpoint() -> Endpoint:
    return resolve_endpoint(
        gen.endpoint, base_url=_secret("openai_base_url"), api_key=_secret("openai_api_key")
    )


def _heatmap_counts(per_cell: dict[str, int]) -> dict[tuple[str, ...], int]:
    return {
        tuple(cell[name] for name, _ in axes): per_cell.get(cell_key(cell), 0)
        for cell in spec.cells
    }


def _stored_valid() -> dict[str, int]:
    return {key: c.get("valid", 0) for key, c in cached_read(stored_counts, spec).items()}


st.caption(
    f"Teacher **{spec.teacher_model}** · temperature {gen.temperature:g} · schema "
    f"`{gen.output_schema}` · spec `{spec.spec_hash}` · template `{spec.template_hash}`"
)

# -- grid and prompt preview -------------------------------------------------------------------

st.markdown("#### Grid")
valid_now = _stored_valid()
cols = st.columns(4)
cols[0].metric("Cells", len(spec.cells), help=" × ".join(f"{n} ({len(v)})" for n, v in axes))
cols[1].metric("Examples per cell", gen.examples_per_cell)
cols[2].metric("Items", len(spec.cells) * gen.examples_per_cell)
cols[3].metric("Stored valid", sum(valid_now.values()))
heatmap = st.empty()
heatmap.plotly_chart(
    grid_heatmap_figure(axes, _heatmap_counts(valid_now), gen.examples_per_cell),
    width="stretch",
    key="heatmap_stored",
)

with st.expander("Rendered prompt for a cell", icon=":material/description:"):
    chosen = {name: st.selectbox(name, values, key=f"preview_{name}") for name, values in axes}
    index = st.number_input("Example index", 0, gen.examples_per_cell - 1, 0, key="preview_i")
    messages = guarded(lambda: messages_for(spec, chosen, int(index)))
    if messages:
        for message in messages:
            st.markdown(f"**{message['role']}**")
            st.code(message["content"], language=None, wrap_lines=True)

# -- estimate and run --------------------------------------------------------------------------

st.markdown("#### Estimate and run")
batch = st.toggle("Batch mode (OpenAI batch API: half price, results within 24 h)", key="gen_batch")
estimate = guarded(lambda: cached_read(dry_run, plan_id, batch=batch))
if estimate is not None:
    cols = st.columns(4)
    cols[0].metric("Calls", f"{estimate.calls:,}")
    cols[1].metric(
        "Estimated tokens",
        f"{estimate.estimated_input_tokens + estimate.estimated_output_tokens:,}",
        help=f"{estimate.estimated_input_tokens:,} in + {estimate.estimated_output_tokens:,} "
        f"out, counted with {estimate.tokenizer}",
    )
    cols[2].metric("Estimated cost", f"${estimate.estimated_cost_usd:,.4f}")
    cols[3].metric("Budget cap", f"${estimate.budget_usd:,.2f}")
    if estimate.over_budget:
        st.error(
            "The estimate exceeds the budget cap, so a run will not start: raise "
            "`generation.budget_usd` on the Plan page or generate fewer examples per cell.",
            icon=":material/block:",
        )

endpoint = _endpoint()
st.caption(f"Endpoint: `{endpoint.display_url}` (from {endpoint.source})")


def _run(top_up: bool) -> None:
    bar = st.progress(0.0, text="Starting…")
    last = [0.0]

    def show(progress: GenerationProgress) -> None:
        now = time.monotonic()
        if now - last[0] < 0.25 and progress.done < progress.total:
            return
        last[0] = now
        bar.progress(
            progress.fraction,
            text=f"{progress.done}/{progress.total} · {progress.generated} valid · "
            f"{progress.failed} failed · {progress.api_calls} calls · "
            f"${progress.cost_usd:,.4f}",
        )
        live = dict(valid_now)
        for key, n in progress.valid_per_cell.items():
            live[key] = live.get(key, 0) + n
        heatmap.plotly_chart(
            grid_heatmap_figure(axes, _heatmap_counts(live), gen.examples_per_cell),
            width="stretch",
            key=f"heatmap_live_{progress.done}",
        )

    try:
        if batch:
            report = run_batch(
                store, plan_id, user=user, top_up=top_up, endpoint=endpoint, on_progress=show
            )
        else:
            report = run_generation(
                store, plan_id, user=user, top_up=top_up, endpoint=endpoint, on_progress=show
            )
    except FlywheelError as exc:
        bar.empty()
        st.error(str(exc), icon=":material/error:")
        return
    bar.progress(1.0, text="Finished")
    summary = (
        f"{report.new_valid} new valid, {report.new_failed} failed; {report.api_calls} API "
        f"calls; ${report.cost_usd:,.4f} spent. {report.message}"
    )
    if report.status == "budget_stop":
        st.warning(summary, icon=":material/savings:")
    else:
        st.success(summary, icon=":material/check:")
    st.session_state["gen_last_report"] = report.to_dict()


if endpoint.is_openai and not endpoint.has_key:
    st.info(
        "No API key is configured, so generation cannot run yet. Set `OPENAI_API_KEY` in the "
        'environment, or add `openai_api_key = "sk-…"` to `.streamlit/secrets.toml`. For a '
        "local OpenAI-compatible server (vLLM, Ollama, llama.cpp) set `OPENAI_BASE_URL` (or "
        "`openai_base_url` in the secrets, or the plan's generation endpoint) instead. The "
        "estimate above needs no key.",
        icon=":material/key:",
    )
else:
    if refused:
        st.caption(refused)
    if st.button(
        "Generate",
        type="primary",
        icon=":material/play_arrow:",
        disabled=bool(refused or estimate is None or estimate.over_budget or estimate.calls == 0),
        key="gen_run",
    ):
        _run(top_up=False)

# -- diversity, top-up, failures, examples -----------------------------------------------------

st.markdown("#### Diversity per cell")
diversity = guarded(lambda: cached_read(cell_diversity, spec))
if diversity is not None:
    rows: list[dict[str, Any]] = [
        {
            **d.cell,
            "valid": d.valid,
            "failed": d.failed,
            "exact_unique_rate": f"{d.exact_unique_rate:.0%}",
            "unique_rate": f"{d.unique_rate:.0%}",
            "answer_length": f"{d.length_mean:.0f} ± {d.length_std:.0f}",
            "shortfall": d.shortfall if d.under_target else None,
        }
        for d in diversity
    ]
    table(rows)
    thin = [d for d in diversity if d.under_target]
    if not any(d.valid for d in diversity):
        st.info("No examples yet: run the generation above.", icon=":material/info:")
    elif thin:
        missing = sum(d.shortfall for d in thin)
        st.warning(
            f"{len(thin)} cell(s) hold fewer unique valid examples than the target "
            f"({missing} missing).",
            icon=":material/warning:",
        )
        if not (endpoint.is_openai and not endpoint.has_key) and st.button(
            f"Top up {len(thin)} thin cell(s)",
            icon=":material/add:",
            key="gen_top_up",
            disabled=refused is not None,
            help=refused,
        ):
            _run(top_up=True)
    else:
        st.success("Every cell reached its target with unique examples.")

failures = guarded(lambda: cached_read(list_failures, spec))
st.markdown("#### Failures")
if failures:
    table(
        [
            {
                **json.loads(f["cell_key"]),
                "item_index": f["item_index"],
                "failure_reason": f["failure_reason"],
                "attempts": f["attempts"],
            }
            for f in failures
        ]
    )
else:
    st.caption("No failed items.")

st.markdown("#### Examples")
chosen_cell = {name: st.selectbox(name, values, key=f"examples_{name}") for name, values in axes}
examples = guarded(lambda: list_examples(store, spec, cell=chosen_cell, limit=50))
if not examples:
    st.info("This cell holds no valid example yet.", icon=":material/info:")
for example in examples or []:
    with st.expander(f"#{example['item_index']} · {example['question'][:90]}"):
        st.markdown(f"**Question.** {example['question']}")
        st.markdown(example["answer"])
        st.caption(
            f"{example['teacher_model']} at `{example['endpoint']}` · template "
            f"`{example['template_hash']}` · temperature {example['temperature']:g} · "
            f"{example['generated_at']:%Y-%m-%d %H:%M} UTC · {example['input_tokens']} in / "
            f"{example['output_tokens']} out tokens · ${example['cost_usd']:.5f} · "
            f"{example['attempts']} attempt(s)"
        )

# -- closing the loop --------------------------------------------------------------------------

st.markdown("#### Where production says the next round should go")
loop = guarded(lambda: cached_read(production_vs_training, spec))
if loop is not None:
    if not loop.has_production_data:
        st.info(loop.message, icon=":material/info:")
    else:
        st.caption(loop.message)
        table(
            [
                {
                    **c.cell,
                    "production_share": f"{c.production_share:.1%}",
                    "training_share": f"{c.training_share:.1%}",
                    "suggested": c.suggested,
                }
                for c in loop.cells
            ]
        )

history = guarded(lambda: cached_read(runs, plan_id))
if history:
    st.markdown("#### Runs")
    # A summary narrow enough for a laptop; the rest of the picked run in the caption below.
    summary_columns = ("run_id", "status", "started_at", "requested", "generated", "failed")
    table(
        [{**{k: r[k] for k in summary_columns}, "cost_usd": r["cost_usd"]} for r in history],
        codes=("status",),
        pinned=("run_id",),
        column_config={"cost_usd": st.column_config.NumberColumn(label("cost_usd"), format="%.4f")},
    )
    by_run = {str(r["run_id"]): r for r in history}
    picked_run = by_run[st.selectbox("Run", list(by_run), key="gen_run_pick")]
    estimated = picked_run["estimated_cost_usd"]
    st.caption(
        f"{label(picked_run['mode'])} · finished {show(picked_run['finished_at'])} · "
        f"{show(picked_run['api_calls'])} API calls · estimated "
        f"{show(None if estimated is None else f'${estimated:,.4f}')} · "
        f"{show(picked_run['message'])}"
    )
