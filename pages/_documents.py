"""Download buttons of the documents about a plan: Markdown at once, HTML and PDF on request.

HTML and PDF draw their charts through Chromium and take seconds, so they are rendered when the
user asks and kept in the session for that saved version; Markdown is rendered on every run.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import streamlit as st

from core.documents import (
    DOCUMENTS,
    MEDIA_TYPES,
    document_file_name,
    generated_at_now,
    render_document,
    render_documents,
)
from core.plan import Plan
from pages._common import get_store, guarded

_PREPARED = "prepared_documents"
_KEEP = 8


def _prepared() -> dict[str, dict[str, bytes]]:
    prepared: dict[str, dict[str, bytes]] = st.session_state.setdefault(_PREPARED, {})
    return prepared


def _prepare(name: str, key: str, inputs: dict[str, Any]) -> None:
    """Render HTML and PDF of one document and keep them in the session."""
    with st.spinner(f"Rendering the {DOCUMENTS[name].title.lower()}…"):
        ready = guarded(
            lambda: render_documents(
                name, ["html", "pdf"], generated_at=generated_at_now(), **inputs
            )
        )
    if ready is not None:
        prepared = _prepared()
        prepared[key] = ready
        while len(prepared) > _KEEP:
            prepared.pop(next(iter(prepared)))
        st.rerun()


def plan_document_downloads(plan: Plan, plan_id: str, version: int) -> None:
    """One row per document about a plan: download Markdown; prepare, then download HTML/PDF."""
    st.caption(
        f"Documents of the saved v{version}. Save your edits as a new version to include them."
    )
    subject = f"{plan_id}-v{version}"
    store = get_store()
    inputs: dict[str, Any] = {"plan": plan, "plan_id": plan_id, "version": version, "store": store}
    for kind in (k for k in DOCUMENTS.values() if k.subject == "plan"):
        # The store's stamp: a sign-off recorded since makes the prepared copy stale.
        key = f"{kind.name}:{subject}:{plan.fingerprint()}:{store.stamp()}"
        with st.container(border=True):
            st.markdown(f"**{kind.title}**")
            cols = st.columns(3)
            markdown = guarded(
                partial(render_document, kind.name, "md", generated_at=generated_at_now(), **inputs)
            )
            if markdown is not None:
                cols[0].download_button(
                    "Markdown",
                    markdown,
                    file_name=document_file_name(kind.name, "md", subject),
                    mime=MEDIA_TYPES["md"],
                    icon=":material/download:",
                    key=f"doc-{kind.name}-md",
                )
            ready = _prepared().get(key)
            if ready is None:
                if cols[1].button(
                    "Prepare HTML and PDF",
                    key=f"doc-{kind.name}-prepare",
                    icon=":material/picture_as_pdf:",
                    help="Draws the charts and lays out the PDF; takes a few seconds.",
                ):
                    _prepare(kind.name, key, inputs)
                continue
            for col, fmt, label in ((cols[1], "html", "HTML"), (cols[2], "pdf", "PDF")):
                col.download_button(
                    label,
                    ready[fmt],
                    file_name=document_file_name(kind.name, fmt, subject),
                    mime=MEDIA_TYPES[fmt],
                    icon=":material/download:",
                    key=f"doc-{kind.name}-{fmt}",
                )


def document_downloads(name: str, subject: str, inputs: dict[str, Any], *, key: str) -> None:
    """One document's row: download Markdown; prepare, then download HTML and PDF.

    ``subject`` names the files (e.g. ``my-plan-cycle2``); ``key`` identifies the data the
    document shows, so a prepared HTML/PDF is offered again only for the same data. The
    Markdown is rendered when its button is clicked, so a rerun does not pay for it.
    """
    kind = DOCUMENTS[name]
    with st.container(border=True):
        st.markdown(f"**{kind.title}**")
        cols = st.columns(3)

        def markdown() -> bytes:  # rendered when clicked: a cycle report reads its A/B test
            return render_document(name, "md", generated_at=generated_at_now(), **inputs)

        cols[0].download_button(
            "Markdown",
            markdown,
            file_name=document_file_name(name, "md", subject),
            mime=MEDIA_TYPES["md"],
            icon=":material/download:",
            key=f"doc-{name}-md",
        )
        ready = _prepared().get(f"{name}:{subject}:{key}")
        if ready is None:
            if cols[1].button(
                "Prepare HTML and PDF",
                key=f"doc-{name}-prepare",
                icon=":material/picture_as_pdf:",
                help="Draws the charts and lays out the PDF; takes a few seconds.",
            ):
                _prepare(name, f"{name}:{subject}:{key}", inputs)
            return
        for col, fmt, label in ((cols[1], "html", "HTML"), (cols[2], "pdf", "PDF")):
            col.download_button(
                label,
                ready[fmt],
                file_name=document_file_name(name, fmt, subject),
                mime=MEDIA_TYPES[fmt],
                icon=":material/download:",
                key=f"doc-{name}-{fmt}",
            )
