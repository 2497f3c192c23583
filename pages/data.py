"""Data: load logs, see each batch's counts, the quarantine, and the PII redacted by type."""

from __future__ import annotations

import streamlit as st

from core.access import refusal
from core.charts import pii_by_type_figure
from core.ingest import KINDS, batch_rejects, ingest_bytes, list_batches, pii_samples, pii_summary
from core.labels import label, show
from core.log_contract import SAMPLE_FILES, contract_markdown, example_line, load_outcome
from core.privacy import PII_TYPES
from pages._common import current_user, get_store, guarded, page_header, table

OUTCOME_ICONS = {
    "success": ":material/check:",
    "warning": ":material/warning:",
    "info": ":material/info:",
}

page_header("Data")
user = current_user()
ingest_refused = refusal(user, "data.ingest")
raw_refused = refusal(user, "pii.view_raw")
store = get_store()

st.markdown("#### Load a file")
with st.expander("Which columns a file needs", icon=":material/table_chart:"):
    contract_kind = st.radio(
        "Contract of",
        KINDS,
        horizontal=True,
        format_func=lambda k: {"eval-items": "eval items"}.get(k, k),
        key="contract_kind",
    )
    st.markdown(contract_markdown(contract_kind))
    sample_file = SAMPLE_FILES.get(contract_kind)
    if sample_file is not None:
        st.markdown("An example line (JSONL; CSV and Parquet take the same columns):")
        st.code(example_line(contract_kind), language="json", wrap_lines=True)
        st.caption(
            f"A sample file to try: `data/{sample_file.name}` "
            f"(`python -m core data ingest data/{sample_file.name}"
            + (" --kind consent" if contract_kind == "consent" else "")
            + "`)."
        )
with st.form("upload", clear_on_submit=True):
    upload = st.file_uploader(
        "Interaction log, consent events or eval items",
        type=["jsonl", "ndjson", "json", "csv", "parquet", "gz"],
        help="JSONL, CSV or Parquet; JSONL and CSV may be gzipped (.jsonl.gz, .csv.gz).",
        disabled=ingest_refused is not None,
    )
    left, right = st.columns(2)
    kind = left.selectbox("The file holds", KINDS, key="upload_kind")
    cycle = right.number_input("Cycle (0 = none)", min_value=0, step=1, key="upload_cycle")
    if ingest_refused:
        st.caption(ingest_refused)
    submitted = st.form_submit_button(
        "Load", icon=":material/upload:", disabled=ingest_refused is not None
    )
if submitted and upload is not None:
    file_name = upload.name
    progress = st.progress(0.1, text=f"Reading {file_name}…")
    data = upload.getvalue()
    progress.progress(0.3, text="Validating, redacting PII and storing…")
    result = guarded(
        lambda: ingest_bytes(
            store,
            data,
            file_name,
            kind=kind,
            cycle=int(cycle) or None,
            user=user,
        )
    )
    progress.empty()
    if result is not None:
        outcome, message = load_outcome(result)
        {"success": st.success, "warning": st.warning, "info": st.info}[outcome](
            message, icon=OUTCOME_ICONS[outcome]
        )
elif submitted:
    st.warning("Choose a file first.")

batches = guarded(lambda: list_batches(store)) or []
if not batches:
    st.info(
        "No data loaded yet. Upload a file above, or run "
        "`python -m core data ingest FILE [--kind consent|eval-items]`.",
        icon=":material/info:",
    )
    st.stop()

st.markdown("#### Batches")
st.caption("Every load is a batch; rows read = accepted + rejected + duplicates.")
# The counts that reconcile, narrow enough for a laptop; the picked batch's file hash, read
# path and times in the caption below.
summary_columns = (
    "batch_id",
    "kind",
    "file_name",
    "cycle",
    "rows_read",
    "accepted",
    "rejected",
    "duplicates",
)
table([{k: b[k] for k in summary_columns} for b in batches], pinned=("batch_id",))
by_batch = {str(b["batch_id"]): b for b in batches}
picked_batch = by_batch[st.selectbox("Batch details", list(by_batch), key="batch_pick")]
st.caption(
    f"{label(picked_batch['kind'])} · SHA-256 `{picked_batch['sha256'][:12]}` · "
    f"{label('read_path')}: {show(picked_batch['read_path'])} · "
    f"started {show(picked_batch['started_at'])} · "
    f"finished {show(picked_batch['finished_at'])}"
)

st.markdown("#### Quarantine")
with_rejects = [b["batch_id"] for b in batches if b["rejected"]]
if not with_rejects:
    st.success("No rejected rows in any batch.", icon=":material/check:")
else:
    batch_id = st.selectbox("Batch", with_rejects, key="quarantine_batch")
    show_raw_lines = st.toggle(
        "Show the raw lines (may hold unredacted PII; each view is audited)",
        key="raw_quarantine",
        disabled=raw_refused is not None,
    )
    if raw_refused:
        st.caption(raw_refused)
    rows = guarded(lambda: batch_rejects(store, batch_id, reveal_raw=show_raw_lines, user=user))
    if rows is not None:
        table(rows)

st.markdown("#### PII redacted")
found = guarded(lambda: pii_summary(store)) or {}
if not found:
    st.info("No PII was found in the loaded interactions.", icon=":material/info:")
else:
    st.plotly_chart(pii_by_type_figure(found), width="stretch")
    types = [t for t in PII_TYPES if t in found]
    pii_type = st.selectbox("Samples of", types, key="pii_type")
    show_raw = st.toggle(
        "Show the original text (unredacted; each view is written to the audit log)",
        key="raw_pii",
        disabled=raw_refused is not None,
    )
    if raw_refused:
        st.caption(raw_refused)
    samples = guarded(lambda: pii_samples(store, pii_type, reveal_raw=show_raw, user=user))
    for sample in samples or []:
        with st.container(border=True):
            st.caption(f"{sample['interaction_id']} · batch {sample['batch_id']}")
            st.text(sample["prompt"])
            if show_raw:
                st.markdown("**Original**")
                st.text(sample["raw_prompt"])
