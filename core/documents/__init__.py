"""The exported documents: the rendering engine and one builder per document.

``rendering`` holds the registry of kinds, the Jinja environment with its filters, the charts
and the conversion to Markdown, HTML and PDF; it reads no store. Each builder module registers
one document with ``@document(...)`` and reads what it shows from a ``core.store.Store``:
``plan`` (the plan document), ``privacy`` (the privacy review packet), ``cycle_report``,
``datasheet`` and ``model_card``; ``sections`` holds what several of them show alike. Importing
this package registers every document, so ``DOCUMENTS`` lists them all.

A name re-exported here is bound once: code that reads it (``render_documents`` reading
``DOCUMENTS``, a builder reading a helper) reads it from its own module, so a test that patches
a name patches it there (``core.documents.rendering.X``), not here.
"""

from __future__ import annotations

# isort: off
# Each module registers its document on import: this order is the order DOCUMENTS lists them in
# (the CLI's and the pages' choices), plan documents first.
from core.documents.plan import build_plan_document
from core.documents.privacy import (
    PII_DESCRIPTIONS,
    PRIVACY_LINT_CODES,
    build_privacy_packet,
    pii_placeholders,
)
from core.documents.cycle_report import build_cycle_report
from core.documents.datasheet import build_datasheet
from core.documents.model_card import build_model_card

# isort: on
from core.documents.rendering import (
    DOCUMENTS,
    FORMATS,
    MEDIA_TYPES,
    TEMPLATES_DIR,
    DocumentContext,
    DocumentKind,
    Format,
    Subject,
    document,
    document_file_name,
    environment,
    generated_at_now,
    render_document,
    render_documents,
    write_document,
)

__all__ = [
    "DOCUMENTS",
    "FORMATS",
    "MEDIA_TYPES",
    "PII_DESCRIPTIONS",
    "PRIVACY_LINT_CODES",
    "TEMPLATES_DIR",
    "DocumentContext",
    "DocumentKind",
    "Format",
    "Subject",
    "build_cycle_report",
    "build_datasheet",
    "build_model_card",
    "build_plan_document",
    "build_privacy_packet",
    "document",
    "document_file_name",
    "environment",
    "generated_at_now",
    "pii_placeholders",
    "render_document",
    "render_documents",
    "write_document",
]
