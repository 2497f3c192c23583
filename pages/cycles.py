"""Cycles: run a cycle, see its funnel and removed rows, browse dataset versions, download them."""

from __future__ import annotations

import streamlit as st

from core.access import refusal
from core.charts import composition_heatmap_figure, funnel_figure
from core.cycles import (
    cycle_runs,
    removal_summary,
    removed_rows,
    run_cycle,
    run_stages,
    run_summary,
    why_dropped,
)
from core.datasets import (
    EXPORT_FORMATS,
    SPLITS,
    compare_versions,
    export_bytes,
    export_file_name,
    list_versions,
)
from core.gates import cycle_decisions
from core.labels import label
from core.plan import plan_timeline
from pages._common import (
    cached_read,
    current_user,
    get_store,
    guarded,
    key_values,
    page_header,
    plan_or_stop,
    table,
)
from pages._documents import document_downloads

page_header("Cycles")
user = current_user()
store = get_store()

plan_id, plan, version = plan_or_stop()
timeline = plan_timeline(plan)

# -- run ------------------------------------------------------------------------------------------
st.markdown("#### Run a cycle")
review = plan.consent.privacy_review.status
if review != "approved":
    st.warning(
        f"The plan's privacy review is **{review}**: cycles refuse to run until it is approved "
        "(Plan page, section 3).",
        icon=":material/gpp_maybe:",
    )
if not timeline:
    st.info("The plan's horizon holds no full cycle; adjust the cadence on the Plan page.")
    st.stop()
labels = {
    c.cycle: f"Cycle {c.cycle} · {c.start:%d %b} – {c.end:%d %b %Y}"
    + (" · production data" if c.uses_production_data else " · synthetic only")
    for c in timeline
}
left, right = st.columns([3, 1])
cycle = left.selectbox("Cycle", list(labels), format_func=labels.__getitem__, key="cycle_pick")
right.write("")
run_refused = refusal(user, "cycle.run")
if run_refused:
    st.caption(run_refused)
force = right.checkbox(
    "Build anyway",
    key="cycle_force",
    help=(
        "Build a dataset version even when the cycle has fewer new production rows than the "
        f"plan's minimum ({plan.cadence.min_new_examples}, Plan page: Retraining cadence)."
    ),
)
if right.button(
    "Run cycle",
    icon=":material/play_arrow:",
    type="primary",
    key="cycle_run",
    disabled=run_refused is not None,
):
    bar = st.progress(0.0, text="Starting…")

    def show_progress(fraction: float, message: str) -> None:
        bar.progress(min(1.0, fraction), text=message)

    result = guarded(
        lambda: run_cycle(
            store,
            plan_id,
            int(cycle),
            user=user,
            progress=show_progress,
            force=force,
        )
    )
    if result is not None:
        st.success(run_summary(result).split("\nwarning:")[0], icon=":material/check:")
        for warning in result.warnings:
            st.warning(warning, icon=":material/warning:")
        st.session_state["cycle_run_pick"] = result.run_id

runs = guarded(lambda: cached_read(cycle_runs, plan_id)) or []
if not runs:
    st.info(
        "No cycle has run for this plan yet. Pick a cycle and press **Run cycle**, or run "
        "`python -m core cycle run --cycle N`.",
        icon=":material/info:",
    )
    st.stop()

# -- funnel ---------------------------------------------------------------------------------------
st.markdown("#### Funnel")
run_labels = {
    r["run_id"]: f"Cycle {r['cycle']} · {r['started_at']:%Y-%m-%d %H:%M} · {r['dataset_version']}"
    for r in runs
}
if st.session_state.get("cycle_run_pick") not in run_labels:
    st.session_state["cycle_run_pick"] = runs[0]["run_id"]
run_id = st.selectbox(
    "Run", list(run_labels), format_func=run_labels.__getitem__, key="cycle_run_pick"
)
stages = cached_read(run_stages, run_id)
st.plotly_chart(funnel_figure([s.to_dict() for s in stages]), width="stretch")
table(
    [
        {
            "stage": s.name,
            "rule": s.rule,
            "origin": s.origin,
            "rows_in": s.rows_in,
            "removed": s.removed,
            "added": s.added,
            "rows_out": s.rows_out,
            "seconds": round(s.seconds, 3),
        }
        for s in stages
    ],
    codes=("stage", "rule"),
    pinned=("stage",),
    column_config={
        key: st.column_config.NumberColumn(label(key), width="small")
        for key in ("rows_in", "removed", "added", "rows_out", "seconds")
    },
)

picked_cycle = next(int(r["cycle"]) for r in runs if r["run_id"] == run_id)
st.caption(f"The report of cycle {picked_cycle} reads its newest run.")
document_downloads(
    "cycle",
    f"{plan_id}-cycle{picked_cycle}",
    {"store": store, "plan_id": plan_id, "cycle": picked_cycle},
    key=f"{run_id}:{len(cached_read(cycle_decisions, plan_id, picked_cycle))}",
)

# -- removed rows ---------------------------------------------------------------------------------
st.markdown("#### Removed rows")
summary = cached_read(removal_summary, run_id)
if not summary:
    st.success("This run removed no row.", icon=":material/check:")
else:
    options = {f"{s['stage']} · {s['rule']}": s["stage"] for s in summary}
    counts = {f"{s['stage']} · {s['rule']}": s["rows"] for s in summary}
    picked = st.selectbox(
        "Stage and rule",
        list(options),
        format_func=lambda o: f"{o} ({counts[o]:,} rows)",
        key="removed_pick",
    )
    # Why each row left, and its prompt; the whole row is one search away (below).
    removed = cached_read(removed_rows, run_id, stage=options[picked])
    table(
        [
            {k: r[k] for k in ("interaction_id", "stage", "rule", "detail", "prompt")}
            for r in removed
        ],
        codes=("stage", "rule"),
    )
asked = st.text_input("Why was this interaction dropped?", key="why_id", placeholder="demo-00042")
if asked.strip():
    answers = guarded(lambda: why_dropped(store, asked.strip(), plan_id=plan_id))
    for answer in answers or []:
        st.markdown(f"- **Cycle {answer['cycle']}** ({answer['run_id']}): {answer['why']}")

# -- dataset versions ----------------------------------------------------------------------------
st.markdown("#### Dataset versions")
versions = cached_read(list_versions, plan_id)
table(
    [
        {
            "version_id": v.version_id,
            "cycle": v.cycle,
            "rows": v.rows_now,
            "production_rows": v.production_rows,
            "synthetic_rows": v.synthetic_rows,
            "created_at": v.created_at,
        }
        for v in versions
    ],
    pinned=("version_id",),
)
by_id = {v.version_id: v for v in versions}
chosen = st.selectbox("Version", list(by_id), key="version_pick")
current = by_id[chosen]
# The rest of the chosen version's figures, below the narrow summary that fits a laptop.
st.caption(
    f"Built on `{current.parent_version or 'nothing (the first version)'}` · "
    f"{current.train_rows:,} training and {current.validation_rows:,} validation rows · "
    f"SHA-256 `{current.sha256[:12]}` · {current.erased_rows:,} rows erased since · created by "
    f"{current.created_by}"
)
document_downloads(
    "datasheet",
    current.version_id,
    {"store": store, "version_id": current.version_id},
    key=str(current.rows_now),
)
# One above the other: the lineage's field and value columns need about 600 px, more than a
# side column leaves at 1366 px, and the heatmap reads better at the page's width too.
st.markdown("**Lineage**")
key_values(current.lineage)
st.markdown("**Composition**")
source = st.radio(
    "Rows", ["total", "production", "synthetic"], horizontal=True, key="composition_source"
)
axes = [axis.name for axis in plan.generation.axes]
st.plotly_chart(
    composition_heatmap_figure(current.composition["cells"], sorted(axes), source=source),
    width="stretch",
)
if current.parent_version and current.parent_version in by_id:
    diff = cached_read(compare_versions, current.parent_version, current.version_id)
    st.markdown(
        f"**Against its parent {diff.old}:** {diff.kept:,} rows carried, +{diff.added:,} added, "
        f"−{diff.removed:,} removed ({diff.retired:,} retired under the size cap, "
        f"{diff.rechecked:,} failed the check of carried rows)."
    )
    table([c.to_row() for c in diff.cells])

st.markdown("**Download**")
fmt_col, split_col, button_col = st.columns(3)
fmt = fmt_col.selectbox("Format", EXPORT_FORMATS, key="export_format")
split = split_col.selectbox("Split", SPLITS, key="export_split")
rows_in_split = {
    "train": current.train_rows,
    "validation": current.validation_rows,
    "all": current.rows_now,
}[split]
button_col.write("")
if not rows_in_split:
    button_col.info(f"{current.version_id} has no {split} rows.", icon=":material/info:")
else:
    # Built when clicked (checked as OpenAI checks an upload), not on every run of the page.
    def _export(version: str = current.version_id, fmt: str = fmt, split: str = split) -> bytes:
        return export_bytes(store, version, fmt=fmt, split=split)[0]

    button_col.download_button(
        f"Download {export_file_name(current.version_id, fmt=fmt, split=split)}",
        _export,
        file_name=export_file_name(current.version_id, fmt=fmt, split=split),
        mime="application/jsonl" if fmt == "openai-jsonl" else "application/vnd.apache.parquet",
        icon=":material/download:",
        key="export_download",
        help="The file is built and checked when you click; a version that fails the "
        "fine-tuning format check is refused (`python -m core dataset export` says why).",
    )
