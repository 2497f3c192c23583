"""The rendering engine of the documents: the registry of kinds, the Jinja environment and its
filters, charts, and conversion to Markdown, HTML and PDF.

A document kind names a builder of its template context and its two templates (Markdown and
HTML, in ``templates/``); PDF is WeasyPrint's rendering of the HTML. Charts come from
``core.charts`` builders only: inline SVG in HTML, PNG images in PDF, both drawn by Kaleido with
one Chromium per document. The generation time is a parameter, so the same inputs give the same
bytes in Markdown and HTML. The builders, one module per document of ``core.documents``, read
the store; this module reads nothing but the templates.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import plotly.graph_objects as go
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape
from markupsafe import Markup

from core.errors import DocumentError
from core.escaping import markdown_code, markdown_fenced, markdown_text
from core.formatting import money, number, percent
from core.labels import label
from core.paths import check_output_path
from core.settings import PROJECT_ROOT
from core.stats import format_p_value

__all__ = [
    "DOCUMENTS",
    "FORMATS",
    "MEDIA_TYPES",
    "TEMPLATES_DIR",
    "DocumentContext",
    "DocumentKind",
    "Format",
    "Subject",
    "document",
    "document_file_name",
    "environment",
    "generated_at_now",
    "render_document",
    "render_documents",
    "write_document",
]

Format = Literal["md", "html", "pdf"]
Subject = Literal["plan", "cycle", "dataset", "model"]

FORMATS: tuple[Format, ...] = ("md", "html", "pdf")
MEDIA_TYPES: dict[str, str] = {
    "md": "text/markdown",
    "html": "text/html",
    "pdf": "application/pdf",
}
TEMPLATES_DIR = PROJECT_ROOT / "templates"

_CHART_WIDTH = 900


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentContext:
    """What one document shows: the template values and the named figures (core.charts)."""

    values: dict[str, Any]
    figures: dict[str, go.Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentKind:
    """A kind of document: its name, title, the inputs it needs, its templates and builder."""

    name: str
    title: str
    subject: Subject
    markdown_template: str
    html_template: str
    build: Callable[..., DocumentContext]


DOCUMENTS: dict[str, DocumentKind] = {}


def document(
    name: str, title: str, subject: Subject
) -> Callable[[Callable[..., DocumentContext]], Callable[..., DocumentContext]]:
    """Register a context builder as the document ``name`` with templates ``name.{md,html}.j2``."""

    def register(build: Callable[..., DocumentContext]) -> Callable[..., DocumentContext]:
        DOCUMENTS[name] = DocumentKind(
            name, title, subject, f"{name}.md.j2", f"{name}.html.j2", build
        )
        return build

    return register


# -- the Jinja environment ---------------------------------------------------------------------


def _p_value(value: float | None, name: str = "") -> str:
    """A p-value through the one formatter the pages and the CLI use ("0.021", "< 0.0001",
    never "0" or "8.13e-310"); with a ``name``, as a phrase: "p = 0.021", "Holm p < 0.0001"."""
    shown = format_p_value(value)
    if not name:
        return shown
    return f"{name} {shown}" if shown.startswith("<") else f"{name} = {shown}"


def _label(value: object) -> str:
    """A code value by its human label (core.labels): ``direct_identifier`` → "Direct
    identifier"; a missing one as "—"."""
    return "—" if value is None else label(value)


def _public_url(value: object) -> str:
    """A URL without credentials or query string: an endpoint never leaks a key into a document."""
    parts = urlsplit(str(value))
    if not parts.scheme or not parts.netloc:
        return str(value)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _when(value: date | datetime | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


_environment: Environment | None = None


def environment() -> Environment:
    """The Jinja environment over ``templates/``: HTML autoescaped, undefined values an error."""
    global _environment
    if _environment is None:
        env = Environment(
            loader=FileSystemLoader(TEMPLATES_DIR),
            autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        env.filters.update(
            md=markdown_text,
            code=markdown_code,
            fenced=markdown_fenced,
            money=money,
            percent=percent,
            number=number,
            p_value=_p_value,
            label=_label,
            when=_when,
            public_url=_public_url,
        )
        _environment = env
    return _environment


# -- charts ------------------------------------------------------------------------------------

_CHART_LOCK = threading.Lock()
_PLOTLY_UID = re.compile(r'id="defs-([0-9a-f]{6})"')


def _normalised_svg(svg: str, name: str) -> str:
    """Plotly's SVG with its random uid replaced by the chart's name, so bytes repeat."""
    found = _PLOTLY_UID.search(svg)
    if found is None:
        return svg
    return re.sub(rf"(?<=[A-Za-z-]){found.group(1)}", f"fw{name}", svg)


def _with_trace_ids(figure: go.Figure, name: str) -> dict[str, Any]:
    """The figure as data with fixed trace ids: Plotly would draw random ones into the SVG."""
    data: dict[str, Any] = figure.to_dict()
    for index, trace in enumerate(data.get("data", [])):
        trace.setdefault("uid", f"fw{name}{index}")
    return data


async def _draw(jobs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> list[bytes]:
    import kaleido

    # One Chromium for every image of the document; MathJax off (offline, and unused).
    async with kaleido.Kaleido(n=1, mathjax=False) as browser:
        return [await browser.calc_fig(fig, opts=opts) for fig, opts in jobs]


def _static_images(
    figures: Mapping[str, go.Figure], image_formats: Sequence[str]
) -> dict[tuple[str, str], bytes]:
    """Every figure in every image format (svg, png), all drawn by one Kaleido session.

    Raises DocumentError when Chromium cannot be started or a figure cannot be drawn.
    """
    keys = [(name, image_format) for image_format in image_formats for name in figures]
    if not keys:
        return {}
    jobs = [
        (
            _with_trace_ids(figures[name], name),
            {
                "format": image_format,
                "width": _CHART_WIDTH,
                "height": figures[name].layout.height or 450,
                "scale": 1,
            },
        )
        for name, image_format in keys
    ]
    result: list[bytes] = []
    failure: list[BaseException] = []

    def run() -> None:
        # A thread of its own: the caller (a Streamlit script thread) may hold an event loop.
        try:
            result.extend(asyncio.run(_draw(jobs)))
        except Exception as exc:  # Kaleido and Chromium fail in many ways; report them as one
            failure.append(exc)

    with _CHART_LOCK:
        worker = threading.Thread(target=run, name="flywheel-charts")
        worker.start()
        worker.join()
    if failure:
        raise DocumentError(
            f"Charts could not be drawn ({type(failure[0]).__name__}: {failure[0]}); install "
            "Chromium (`apt-get install chromium`) or export Markdown, which has no charts."
        ) from failure[0]
    return dict(zip(keys, result, strict=True))


def _chart_markup(images: Mapping[tuple[str, str], bytes], fmt: Format) -> dict[str, Markup]:
    """Each chart as HTML: inline SVG for the HTML document, a PNG image for the PDF."""
    charts: dict[str, Markup] = {}
    for (name, image_format), data in images.items():
        if image_format == "svg":
            # Vector in both formats: the PDF keeps every label as text a reader can select
            # and search (and a test can read), at any zoom.
            svg = _normalised_svg(data.decode("utf-8"), name)
            charts[name] = Markup('<figure class="chart">' + svg + "</figure>")
    return charts


# -- rendering ---------------------------------------------------------------------------------


def generated_at_now() -> datetime:
    """The generation time of a document: ``SOURCE_DATE_EPOCH`` when set, else now (UTC)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), UTC)
        except ValueError:
            raise DocumentError(
                f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds."
            ) from None
    return datetime.now(UTC).replace(microsecond=0)


def _kind(name: str) -> DocumentKind:
    if name not in DOCUMENTS:
        raise DocumentError(f"There is no document '{name}'; choose one of {', '.join(DOCUMENTS)}.")
    return DOCUMENTS[name]


def _check_formats(formats: Iterable[str]) -> list[Format]:
    checked: list[Format] = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise DocumentError(f"Unknown format '{fmt}'; use md, html or pdf.")
        checked.append(fmt)
    return checked


def document_file_name(name: str, fmt: str, subject: str) -> str:
    """The file name of a document about ``subject``, e.g. ``my-plan-v3-privacy.pdf``."""
    return f"{subject}-{name}.{fmt}"


def _pdf(html: str) -> bytes:
    import weasyprint

    return bytes(weasyprint.HTML(string=html, base_url=str(TEMPLATES_DIR)).write_pdf())


def render_documents(
    name: str, formats: Sequence[str], *, generated_at: datetime, **inputs: Any
) -> dict[str, bytes]:
    """Render the document ``name`` in each of ``formats`` from one build of its context.

    ``inputs`` are what the kind's builder takes (for plan documents: plan, plan_id, version).
    Raises DocumentError for an unknown document or format, or when charts cannot be drawn.
    """
    kind = _kind(name)
    wanted = _check_formats(formats)
    context = kind.build(**inputs)
    common = {
        **context.values,
        "document_title": kind.title,
        "generated_at": generated_at,
    }
    image_formats = ["svg"] if {"html", "pdf"} & set(wanted) else []
    images = _static_images(context.figures, image_formats) if image_formats else {}
    rendered: dict[str, bytes] = {}
    try:
        for fmt in wanted:
            if fmt == "md":
                text = environment().get_template(kind.markdown_template).render(common)
                rendered[fmt] = text.encode("utf-8")
                continue
            charts = _chart_markup(images, fmt)
            html = (
                environment().get_template(kind.html_template).render({**common, "charts": charts})
            )
            rendered[fmt] = html.encode("utf-8") if fmt == "html" else _pdf(html)
    except TemplateError as exc:
        # Our own templates: a missing value is a bug, not something a user can fix.
        raise RuntimeError(f"template of the document '{name}' failed: {exc}") from exc
    return rendered


def render_document(name: str, fmt: str, *, generated_at: datetime, **inputs: Any) -> bytes:
    """Render the document ``name`` in one format (md, html or pdf); see ``render_documents``."""
    return render_documents(name, [fmt], generated_at=generated_at, **inputs)[fmt]


def write_document(
    name: str, fmt: str, out: Path, *, generated_at: datetime, **inputs: Any
) -> Path:
    """Render a document and write it to ``out``; nothing is written when anything fails.

    Raises DocumentError for an unknown format, a folder that does not exist or cannot be
    written, OutputPathError when ``out`` is the store or another file Flywheel manages, and
    whatever ``render_documents`` raises.
    """
    _check_formats([fmt])
    check_output_path(out)
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise DocumentError(f"{out} is a folder; give a file name such as {out / ('doc.' + fmt)}.")
    if not folder.is_dir():
        raise DocumentError(f"{folder}: no such folder; create it first.")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise DocumentError(f"{out}: cannot be written (permission denied).")
    data = render_document(name, fmt, generated_at=generated_at, **inputs)
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(out)  # a reader never sees half a document
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DocumentError(f"{out}: cannot be written ({exc.strerror}).") from None
    return out
