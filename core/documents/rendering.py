"""The exported documents: a registry of kinds, the Jinja environment, Markdown, HTML and PDF.

A document kind names a builder of its template context and its two templates (Markdown and
HTML, in ``templates/``); PDF is WeasyPrint's rendering of the HTML. Charts come from
``core.charts`` builders only: inline SVG in HTML, PNG images in PDF, both drawn by Kaleido with
one Chromium per document. The generation time is a parameter, so the same inputs give the same
bytes in Markdown and HTML. A later document (cycle report, datasheet, model card) is one
``@document(...)`` builder and two templates.
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

from core.charts import timeline_figure
from core.errors import DocumentError
from core.escaping import markdown_code, markdown_fenced, markdown_text
from core.formatting import money, number, percent
from core.labels import label
from core.lint import Finding, ab_requirement, generation_estimate_usd, lint_plan
from core.paths import check_output_path
from core.plan import TRAINING_BACKEND_LABELS, Plan, QualityFilter, plan_timeline
from core.privacy import PII_TYPES, placeholder
from core.settings import PROJECT_ROOT
from core.stats import format_p_value

__all__ = [
    "DOCUMENTS",
    "FORMATS",
    "MEDIA_TYPES",
    "PII_DESCRIPTIONS",
    "PRIVACY_LINT_CODES",
    "TEMPLATES_DIR",
    "DocumentContext",
    "DocumentKind",
    "document",
    "document_file_name",
    "environment",
    "generated_at_now",
    "pii_placeholders",
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

# What each PII type the redaction detects (core.privacy.DETECTORS) is, in words.
PII_DESCRIPTIONS: dict[str, str] = {
    "EMAIL": "email addresses",
    "PHONE": "phone numbers",
    "CARD": "payment card numbers, confirmed by the Luhn checksum",
    "IBAN": "IBANs, confirmed by their check digits",
    "IP": "IPv4 and IPv6 addresses",
    "SSN": "US social security numbers",
    "SECRET": "secrets: API keys, access tokens, private keys",
    "URL_CREDENTIALS": "URLs with credentials (user:password@host)",
}


def pii_placeholders() -> list[tuple[str, str]]:
    """Each placeholder the redaction writes (core.privacy.placeholder, e.g. ``<EMAIL>``)
    with what it stands for, in the order the detectors run: the packet shows what is used."""
    return [
        (placeholder(pii_type), PII_DESCRIPTIONS.get(pii_type, pii_type.lower()))
        for pii_type in PII_TYPES
    ]


# Lint codes that concern personal data, consent and the privacy review.
PRIVACY_LINT_CODES: frozenset[str] = frozenset(
    {
        "RETENTION_EXCEEDS_CONSENT",
        "FREE_TEXT_UNREDACTED",
        "REDACTION_NOT_FIRST",
        "NO_TRAINING_CONSENT",
        "OPT_IN_DEFAULT_GRANTED",
        "NO_CONSENT_FLOW",
        "PRIVACY_REVIEW_LATE",
        "APPROVERS_MISSING",
    }
)

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


# -- plan documents ----------------------------------------------------------------------------


def _filter_parameters(rule: QualityFilter) -> str:
    data = rule.model_dump(mode="json", exclude={"rule", "expected_pass_rate"})
    parts = []
    for key, value in data.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key.replace('_', ' ')} {shown or 'all'}")
    return "; ".join(parts)


def _filters(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "position": index,
            "rule": rule.rule,
            "what": (type(rule).__doc__ or "").strip(),
            "parameters": _filter_parameters(rule),
            "expected_pass_rate": rule.expected_pass_rate,
        }
        for index, rule in enumerate(plan.quality_filters, start=1)
    ]


def _gate_criterion(gate: Any) -> str:
    if gate.comparator == "absolute":
        return f"≥ {gate.threshold:g}" if gate.threshold is not None else "threshold missing"
    if gate.comparator == "no_regression":
        return (
            f"not below production by more than {gate.margin:g}"
            if gate.margin is not None
            else "margin missing"
        )
    if gate.comparator == "non_inferiority":
        return f"≥ {gate.ratio:g} × teacher" if gate.ratio is not None else "ratio missing"
    if gate.threshold is None:
        return "threshold missing"
    return f"student ≤ {gate.threshold:g} × teacher"


def _ab_summary(plan: Plan) -> dict[str, Any]:
    timeline = plan_timeline(plan)
    available = min((c.ab_days for c in timeline), default=0)
    try:
        users_per_arm, days = ab_requirement(plan)
    except (ValueError, ZeroDivisionError):
        return {"defined": False, "available_days": available}
    return {
        "defined": True,
        "users_per_arm": users_per_arm,
        "days": days,
        "available_days": available,
        "fits": days <= available,
    }


def _findings(findings: Iterable[Finding]) -> list[dict[str, str]]:
    return [f.to_dict() for f in findings]


def _retention_status(pii_class: str, retention_days: int, limit: int) -> str:
    if pii_class == "none":
        return "not personal data"
    return "within the limit" if retention_days <= limit else "over the limit"


def _plan_values(plan: Plan, plan_id: str, version: int) -> dict[str, Any]:
    report = lint_plan(plan)
    timeline = plan_timeline(plan)
    production = [c for c in timeline if c.uses_production_data]
    pass_rate = 1.0
    for rule in plan.quality_filters:
        pass_rate *= rule.expected_pass_rate
    return {
        "plan": plan,
        "plan_id": plan_id,
        "version": version,
        "fingerprint": plan.fingerprint()[:12],
        "report": {
            "ready": report.ready,
            "errors": _findings(report.errors),
            "warnings": _findings(report.warnings),
        },
        "timeline": timeline,
        "first_production_cycle": production[0] if production else None,
        "filters": _filters(plan),
        "filters_pass_rate": pass_rate,
        "gates": [{"gate": g, "criterion": _gate_criterion(g)} for g in plan.gates],
        "ab": _ab_summary(plan),
        "generation_examples": plan.generation.grid_size * plan.generation.examples_per_cell,
        "generation_estimate_usd": generation_estimate_usd(plan),
        "cost_reduction": plan.economics.cost_reduction,
        "logged_fields": [
            {
                "field": f,
                "status": _retention_status(
                    f.pii_class, f.retention_days, plan.consent.retention_limit_days
                ),
            }
            for f in plan.logging.fields
        ],
    }


def _signoff_values(store: Any, plan: Plan, plan_id: str, version: int) -> dict[str, Any]:
    """The sign-offs recorded for this exact version (who, role, decision, when) and the
    privacy review's real state; without a store, ``signoffs`` is None and the document says
    that no record was read rather than leave blank cells that look unsigned."""
    review = plan.consent.privacy_review
    if store is None:
        privacy = {"read": False, "recorded": None, "row": None, "disagrees": False}
        return {"signoffs": None, "privacy": privacy}
    from core.signoffs import approval_status

    status = approval_status(store, plan_id, version)
    names = {a.role: a.name for a in plan.sign_offs.approvers}
    rows = [{**row, "named": names.get(row["role"])} for row in _approvals(status)]
    privacy_row = next((r for r in rows if r["role"] == "privacy_reviewer"), None)
    recorded = privacy_row["decision"] if privacy_row else None
    return {
        "signoffs": {
            "rows": rows,
            "approved": status.approved,
            "missing": list(status.missing),
            "rejected": list(status.rejected),
        },
        "privacy": {
            "read": True,
            "recorded": recorded,
            "row": privacy_row,
            # The plan's own field is what the PM wrote; only a recorded sign-off approves.
            "disagrees": (review.status == "approved") != (recorded == "approve"),
        },
    }


@document("plan", "Six-month flywheel plan", "plan")
def build_plan_document(
    *, plan: Plan, plan_id: str, version: int, store: Any = None
) -> DocumentContext:
    """Every section of the plan, its readiness, timeline, economics, A/B sizing and the
    sign-offs recorded for this version (read from ``store`` when given)."""
    timeline = plan_timeline(plan)
    figures = {"timeline": timeline_figure(timeline)} if timeline else {}
    values = _plan_values(plan, plan_id, version)
    values.update(_signoff_values(store, plan, plan_id, version))
    return DocumentContext(values, figures)


@document("privacy", "Privacy review packet", "plan")
def build_privacy_packet(
    *, plan: Plan, plan_id: str, version: int, store: Any = None
) -> DocumentContext:
    """What is logged, consent flows, redaction (the placeholders it writes), erasure, the
    review with the sign-offs recorded for this version, open risks, privacy lint."""
    values = _plan_values(plan, plan_id, version)
    values.update(_signoff_values(store, plan, plan_id, version))
    rules = [f.rule for f in plan.quality_filters]
    position = rules.index("pii_redacted") + 1 if "pii_redacted" in rules else None
    privacy = [f for f in lint_plan(plan).findings if f.code in PRIVACY_LINT_CODES]
    values.update(
        pii_types=pii_placeholders(),
        example_placeholder=placeholder("EMAIL"),
        redaction_position=position,
        filters_before_redaction=rules[: position - 1] if position else [],
        free_text_fields=[f.name for f in plan.logging.fields if f.pii_class == "free_text"],
        privacy_findings=_findings(privacy),
    )
    return DocumentContext(values)


# -- cycle documents ---------------------------------------------------------------------------


def _cycle_run(store: Any, plan_id: str, cycle: int) -> dict[str, Any]:
    """The newest run of a plan's cycle; DocumentError when the cycle has not run."""
    from core.cycle_reads import cycle_runs

    runs = [r for r in cycle_runs(store, plan_id) if int(r["cycle"]) == cycle]
    if not runs:
        raise DocumentError(
            f"Cycle {cycle} of plan '{plan_id}' has not run yet; run it with "
            f"`python -m core cycle run --cycle {cycle} --plan {plan_id}` or on the Cycles page."
        )
    return runs[0]


def _gate_values(report: Mapping[str, Any]) -> dict[str, Any]:
    """A gate report (GateReport.to_dict(), live or stored with a decision) for the templates;
    each gate's ``explanation`` is its verdict in one plain sentence (core.gates.explain_gate)."""
    from core.gates import explain_gate

    return {
        "verdict": str(report["verdict"]),
        "candidate": report.get("candidate"),
        "plan_version": report.get("plan_version"),
        "gates": [
            {
                "name": g["name"],
                "comparator": g["comparator"],
                "metric": g["metric"],
                "eval_set": g["eval_set"] or "—",
                "blocking": bool(g["blocking"]),
                "verdict": g["verdict"],
                "value": g["value"],
                "threshold": g["threshold"],
                "explanation": explain_gate(g),
                "evidence": list(g["evidence"]),
                "slices": [
                    {
                        "dimension": s["dimension"],
                        "value": s["value"],
                        "n": s["items"],
                        "candidate": s["candidate"],
                        "reference": s["reference"],
                        "p_holm": s["p_holm"],
                        "short": bool(s["short"]),
                    }
                    for s in g.get("slices", [])
                ],
            }
            for g in report["gates"]
        ],
    }


def _gate_report(
    store: Any, plan_id: str, cycle: int, decisions: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, str]:
    """The gate report (GateReport.to_dict()) as recorded with the newest of ``decisions``,
    else checked now, and where it comes from; None with the reason when it cannot be had."""
    import json

    from core.errors import GateError
    from core.gates import check_gates

    if decisions:
        row = store.fetch_one(
            "SELECT report FROM gate_decisions WHERE decision_id = ?",
            [decisions[0]["decision_id"]],
        )
        if row is not None:
            source = (
                f"as recorded with the {decisions[0]['decision']} decision of "
                f"{_when(decisions[0]['decided_at'])}"
            )
            return json.loads(row[0]), source
    try:
        report = check_gates(store, plan_id, cycle)
    except GateError as exc:
        return None, str(exc)
    return report.to_dict(), "checked when this document was generated; no decision is recorded yet"


def _cycle_gates(store: Any, plan_id: str, cycle: int, decisions: list[dict[str, Any]]) -> Any:
    """The gate evidence: as recorded with the newest decision, else checked now."""
    report, source = _gate_report(store, plan_id, cycle, decisions)
    if report is None:
        return {"source": source, "verdict": None, "candidate": None, "gates": []}
    values = _gate_values(report)
    values["source"] = source
    return values


def _ab_values(analysis: Any) -> dict[str, Any]:
    primary = analysis.primary
    return {
        "window": analysis.window,
        "control": analysis.control,
        "treatment": analysis.treatment,
        "metric": analysis.primary_metric,
        "method": primary.method,
        "relative": primary.effect == "relative",
        "lift": primary.estimate,
        "ci": primary.ci,
        "p_value": primary.p_value,
        "decision": analysis.decision.verdict,
        "reasons": list(analysis.decision.reasons),
        "arms": [
            {"arm": a.arm, "users": a.users, "interactions": a.interactions} for a in analysis.arms
        ],
        "srm_p": analysis.srm.p_value,
        "guardrails": [
            {
                "metric": g.metric,
                "lift": g.lift,
                "bound": g.bound,
                "breached": g.breached,
                "harmful_direction": g.harmful_direction,
            }
            for g in analysis.guardrails
        ],
        "warnings": list(analysis.warnings),
    }


def _version_values(version: Any) -> dict[str, Any]:
    return {
        "version_id": version.version_id,
        "plan_version": version.plan_version,
        "cycle": version.cycle,
        "parent": version.parent_version,
        "sha256": version.sha256,
        "rows": version.rows,
        "rows_now": version.rows_now,
        "train": version.train_rows,
        "validation": version.validation_rows,
        "production": version.production_rows,
        "synthetic": version.synthetic_rows,
        "created_by": version.created_by,
        "created_at": version.created_at,
    }


@document("cycle", "Cycle report", "cycle")
def build_cycle_report(*, store: Any, plan_id: str, cycle: int) -> DocumentContext:
    """A cycle: its funnel, dataset version, gates with evidence, A/B result and decisions."""
    from core.abtest import analyse_cycle
    from core.charts import ab_lift_figure, dataset_sizes_figure, funnel_figure
    from core.cycle_reads import run_stages
    from core.datasets import get_version
    from core.gates import cycle_decisions
    from core.monitoring import CycleRecord, cycle_datasets
    from core.plan import plan_timeline
    from core.plan_versions import load_plan

    run = _cycle_run(store, plan_id, cycle)
    plan, version = load_plan(store, plan_id, int(run["plan_version"]))
    records = run_stages(store, str(run["run_id"]))
    by_name = {s.name: s for s in records}
    carried, mix = by_name.get("carried"), by_name.get("mix")
    growth = {
        "parent": carried.params.get("parent_version") if carried else None,
        "parent_rows": carried.rows_in if carried else 0,
        "carried": carried.rows_out if carried else 0,
        "rechecked": carried.removed if carried else 0,
        "new": int(mix.params.get("new_production_rows", 0)) if mix else 0,
        "synthetic_added": mix.added if mix else 0,
        "retired": int(mix.params.get("retired", mix.removed)) if mix else 0,
        "retirement": mix.params.get("retirement") if mix else None,
    }
    milestones = {m.cycle: m for m in plan_timeline(plan)}
    built = [
        CycleRecord(c, milestones[c].start, milestones[c].end, dataset=figures_of)
        for c, figures_of in sorted(cycle_datasets(store, plan_id).items())
        if c <= cycle and c in milestones
    ]
    stages = [
        {
            "position": s.position,
            "name": s.name,
            "rule": s.rule,
            "origin": s.origin,
            "rows_in": s.rows_in,
            "rows_out": s.rows_out,
            "removed": s.removed,
            "added": s.added,
        }
        for s in records
    ]
    decisions = cycle_decisions(store, plan_id, cycle)
    analysis = analyse_cycle(store, plan, cycle, plan_id=plan_id)
    figures: dict[str, go.Figure] = {}
    if stages:
        figures["funnel"] = funnel_figure(stages, title=f"Cycle {cycle} funnel")
    if built:
        figures["growth"] = dataset_sizes_figure(built)
    if analysis is not None and analysis.lift_over_time:
        figures["ab_lift"] = ab_lift_figure(
            analysis.lift_over_time,
            metric=analysis.primary_metric,
            planned_total=analysis.design.total,
        )
    values = {
        "plan": plan,
        "plan_id": plan_id,
        "version": version,
        "cycle": cycle,
        "run": {
            "run_id": run["run_id"],
            "window_start": run["window_start"],
            "window_end": run["window_end"],
            "actor": run["actor"],
            "finished_at": run["finished_at"],
            "warnings": run["warnings"],
        },
        "stages": stages,
        "growth": growth,
        "dataset": _version_values(get_version(store, str(run["dataset_version"]))),
        "gates": _cycle_gates(store, plan_id, cycle, decisions),
        "ab": _ab_values(analysis) if analysis is not None else None,
        "decisions": decisions,
        "approvers": plan.sign_offs.approvers,
        "training": _cycle_training(store, plan_id, cycle),
    }
    return DocumentContext(values, figures)


def _cycle_training(store: Any, plan_id: str, cycle: int) -> list[dict[str, Any]]:
    """The cycle's training jobs as the report lists them: backend, status and cost."""
    from core.training import training_jobs

    return [
        {
            "job_id": job["job_id"],
            "backend": TRAINING_BACKEND_LABELS.get(str(job["backend"]), str(job["backend"])),
            "status": job["status"],
            "cost_usd": job["cost_usd"],
            "basis": (
                f"{number(job['gpu_hours'])} GPU-hours"
                if job["backend"] == "local" and job["gpu_hours"] is not None
                else f"{number(job['trained_tokens'])} trained tokens"
                if job["trained_tokens"] is not None
                else None
            ),
        }
        for job in training_jobs(store, plan_id, cycle)
    ]


def _system_values(lineage: Mapping[str, Any], production: int) -> dict[str, Any] | None:
    """What the datasheet says of the version's system message and its production rows' logged
    ones; None for a version built before versions recorded it."""
    recorded = lineage.get("system_message")
    if recorded is None:
        return None
    policy_name = str(recorded["production_rows"])
    different, other, none = (
        int(recorded["logged_different"]),
        int(recorded["logged_other"]),
        int(recorded["logged_none"]),
    )
    if recorded["text"]:
        differ = (
            f"{different:,} of {production:,} logged a different one "
            f"({other:,} another text, {none:,} none)"
        )
    else:
        differ = f"{different:,} of {production:,} logged one"
    if not production:
        policy = f"The version holds no production rows (production_system {policy_name})."
    elif policy_name == "plan":
        policy = (
            f"Production rows train {'under it' if recorded['text'] else 'without one'} too, "
            f"whatever they logged (production_system plan): {differ}, replaced here."
        )
    else:
        policy = (
            "Production rows keep the system text they logged (production_system logged): "
            f"{differ}, and train under it."
        )
    return {
        "text": recorded["text"],
        "hash": recorded["hash"],
        "policy": policy,
        "messages": len(recorded.get("carried", [])),
    }


@document("datasheet", "Datasheet", "dataset")
def build_datasheet(*, store: Any, version_id: str) -> DocumentContext:
    """A dataset version: lineage, composition per cell, filters with parameters, known limits."""
    from core.charts import composition_heatmap_figure
    from core.cycle_reads import cycle_runs
    from core.datasets import get_version

    version = get_version(store, version_id)
    lineage = version.lineage
    cells = list(version.composition.get("cells", []))
    axes = sorted({axis for cell in cells for axis in cell["cell"]})
    run = next((r for r in cycle_runs(store, version.plan_id) if r["run_id"] == version.run_id), {})
    limits = list(run.get("warnings", []))
    thin = [c for c in cells if int(c["production"]) + int(c["synthetic"]) < 3]
    if thin:
        limits.append(f"{len(thin)} cell(s) hold fewer than 3 rows; scores on them are noisy.")
    if version.rows_now != version.rows:
        limits.append(f"{version.rows - version.rows_now} row(s) were erased since the build.")
    if version.synthetic_rows:
        limits.append(
            f"{version.synthetic_rows} row(s) are synthetic: written by the teacher, not by users."
        )
    system = _system_values(lineage, version.production_rows)
    if system is not None and system["messages"] > 1:
        limits.append(
            f"The rows carry {system['messages']} different system messages (or none): the "
            "student learns under more than the one prompt it is served with."
        )
    values = {
        "dataset": _version_values(version),
        "system": system,
        "plan_id": version.plan_id,
        "window": lineage.get("window"),
        "batches": list(lineage.get("batches", [])),
        "synthetic_specs": list(lineage.get("synthetic_specs", [])),
        "filters": [
            {
                "name": f["name"],
                "rule": f["rule"],
                "origin": f["origin"],
                "parameters": "; ".join(f"{k} {v}" for k, v in sorted(f["params"].items())),
            }
            for f in lineage.get("filters", [])
        ],
        "axes": axes,
        "cells": [
            {
                "cell": " · ".join(str(c["cell"].get(a, "(unlabelled)")) for a in axes),
                "production": c["production"],
                "synthetic": c["synthetic"],
            }
            for c in cells
        ],
        "limits": limits,
    }
    figures = {"composition": composition_heatmap_figure(cells, axes)} if cells and axes else {}
    return DocumentContext(values, figures)


# -- the model card ----------------------------------------------------------------------------

# What a gate's value and threshold measure, by comparator.
_GATE_MEASURES: dict[str, str] = {
    "absolute": "mean score",
    "no_regression": "difference from production",
    "non_inferiority": "ratio to the teacher",
    "cost": "cost ratio to the teacher",
    "latency": "p95 latency ratio to the reference",
}
_SCORE_GATES = ("absolute", "no_regression", "non_inferiority")
_SMALL_EVAL_SET = 300  # under this many items, a score's interval is wide (see core.evals)


def _slice_threshold(
    comparator: str, threshold: float | None, reference: float | None
) -> float | None:
    """The score a slice must reach, in the score's own units: the gate's threshold for an
    absolute gate, production's score less the margin, or the ratio times the teacher's."""
    if comparator == "absolute":
        return threshold
    if threshold is None or reference is None:
        return None
    if comparator == "no_regression":
        return reference + threshold  # the report's threshold is −margin
    if comparator == "non_inferiority":
        return threshold * reference
    return None


def _slice_status(candidate: float, threshold: float | None, short: bool) -> str:
    """fail: the gate found the slice short (significant after Holm); below: under its
    threshold but not significantly; pass otherwise."""
    if short:
        return "fail"
    if threshold is not None and candidate < threshold - 1e-12:
        return "below"
    return "pass"


def _mean(values: Iterable[float]) -> float | None:
    listed = list(values)
    return sum(listed) / len(listed) if listed else None


def _overall_row(
    store: Any, gate: Mapping[str, Any], runs: Mapping[str, str]
) -> dict[str, Any] | None:
    """A score gate on all its items: the candidate's and the reference's mean over the items
    both scored, read from the runs the gate report names; None when nothing was scored."""
    from core.evals import item_scores
    from core.graders import grader_for_metric

    grader = grader_for_metric(str(gate["metric"]))
    comparator = str(gate["comparator"])
    role = {"no_regression": "production", "non_inferiority": "teacher"}.get(comparator)
    if role is None:  # absolute: show production's score, else the teacher's, when stored
        role = next((r for r in ("production", "teacher") if r in runs), None)
    candidate = item_scores(store, runs["candidate"], grader)
    reference = item_scores(store, runs[role], grader) if role and role in runs else None
    ids = sorted(candidate.keys() & reference.keys()) if reference is not None else []
    paired = comparator != "absolute" and reference is not None
    shown = ids if paired else sorted(candidate)
    reference_mean = _mean(reference[i] for i in ids) if reference is not None else None
    candidate_mean = _mean(candidate[i] for i in shown)
    if candidate_mean is None:
        return None
    return {
        "gate": gate["name"],
        "dimension": None,
        "slice": "all items",
        "n": len(shown),
        "candidate": candidate_mean,
        "threshold": _slice_threshold(comparator, gate["threshold"], reference_mean),
        "reference": reference_mean,
        "reference_role": role if reference_mean is not None else None,
        # Over all items: a gate that fails only on a slice clears its threshold here (its
        # slices' rows show where it fails), so the bar is not drawn red past its tick.
        "status": (
            "pass"
            if gate["verdict"] == "fail"
            and any(s["short"] for s in gate.get("slices", []))
            and gate.get("interval") is not None
            and float(gate["interval"][0]) > float(gate["threshold"] or 0.0)
            else str(gate["verdict"])
        ),
        "p_holm": None,
    }


def _slice_rows(store: Any, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per score gate: one row on all items, then one per slice the gate tested."""
    rows: list[dict[str, Any]] = []
    runs: Mapping[str, Mapping[str, str]] = report.get("runs", {})
    for gate in report["gates"]:
        comparator = str(gate["comparator"])
        if comparator not in _SCORE_GATES:
            continue
        gate_runs = runs.get(gate["name"], {})
        overall = _overall_row(store, gate, gate_runs) if "candidate" in gate_runs else None
        if overall is not None:
            rows.append(overall)
        role = {"no_regression": "production", "non_inferiority": "teacher"}.get(comparator)
        for s in gate.get("slices", []):
            threshold = _slice_threshold(comparator, gate["threshold"], s["reference"])
            rows.append(
                {
                    "gate": gate["name"],
                    "dimension": s["dimension"],
                    "slice": f"{s['dimension']} = {s['value']}",
                    "n": int(s["items"]),
                    "candidate": float(s["candidate"]),
                    "threshold": threshold,
                    "reference": s["reference"],
                    "reference_role": role if s["reference"] is not None else None,
                    "status": _slice_status(float(s["candidate"]), threshold, bool(s["short"])),
                    "p_holm": s["p_holm"],
                }
            )
    return rows


def _eval_sets_read(store: Any, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The eval set versions the candidate's runs were scored on, with their item counts."""
    run_ids = sorted(
        {roles["candidate"] for roles in report.get("runs", {}).values() if "candidate" in roles}
    )
    sets: dict[tuple[str, int], dict[str, Any]] = {}
    for run_id in run_ids:
        row = store.fetch_one(
            "SELECT r.eval_set, r.set_version, v.items, v.frozen_at IS NOT NULL"
            " FROM eval_runs r JOIN eval_set_versions v"
            " ON v.eval_set = r.eval_set AND v.version = r.set_version WHERE r.run_id = ?",
            [run_id],
        )
        if row is not None:
            key = (str(row[0]), int(row[1]))
            entry = sets.setdefault(
                key,
                {"eval_set": key[0], "version": key[1], "size": int(row[2]), "runs": []},
            )
            entry["frozen"] = bool(row[3])
            entry["runs"].append(run_id)
    return [sets[k] for k in sorted(sets)]


def _training_job(store: Any, job_id: str | None) -> dict[str, Any] | None:
    import json

    if job_id is None:
        return None
    rows = store.fetch_dicts(
        "SELECT job_id, base_model, status, hyperparameters, export_rows, export_sha256,"
        " trained_tokens, cost_usd, created_at, finished_at, actor,"
        " coalesce(backend, 'openai') AS backend, gpu_hours, device, weights_sha256"
        " FROM training_jobs WHERE job_id = ?",
        [job_id],
    )
    if not rows:
        return None
    job: dict[str, Any] = rows[0]
    job["hyperparameters"] = {
        name: _setting_text(value)
        for name, value in json.loads(job["hyperparameters"] or "{}").items()
        if value is not None and name != "base_model"
    }
    return job


def _setting_text(value: Any) -> str:
    """A training setting as a reader sees it: numbers formatted, lists joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _intended_use(plan: Plan) -> dict[str, Any]:
    """What the plan says the student is for, and what follows as out of scope."""
    languages = sorted(
        {
            code
            for rule in plan.quality_filters
            if rule.rule == "language"
            for code in rule.languages
        }
    )
    axes = [{"name": a.name, "choices": list(a.values)} for a in plan.generation.axes if a.values]
    out_of_scope: list[str] = []
    for axis in axes:
        out_of_scope.append(
            f"Requests whose {axis['name']} is not one of: {', '.join(axis['choices'])}. The "
            "student was neither trained on synthetic data for them nor evaluated on them."
        )
    if languages:
        out_of_scope.append(
            f"Languages other than {', '.join(languages)}: the language filter removed them "
            "from the training data."
        )
    if plan.consent.flows:
        segments = ", ".join(flow.segment for flow in plan.consent.flows)
        out_of_scope.append(
            f"Users outside the segments whose consent flow the plan describes ({segments})."
        )
    out_of_scope.append(
        f"Any feature other than {plan.goal.feature}: another use needs its own eval set and gates."
    )
    out_of_scope.append(
        f"Writing training data for later cycles: the teacher ({plan.goal.teacher_model}) "
        "does that, so a student never learns from its own answers."
    )
    return {
        "feature": plan.goal.feature,
        "business_goal": plan.goal.business_goal,
        "owner": plan.goal.owner,
        "teacher": plan.goal.teacher_model,
        "quality_retention": plan.goal.target_quality_retention,
        "cost_reduction": plan.goal.target_cost_reduction,
        "segments": [{"segment": f.segment, "mechanism": f.mechanism} for f in plan.consent.flows],
        "axes": axes,
        "output_schema": plan.generation.output_schema,
        "languages": languages,
        "arms": [
            {"name": a.name, "model": a.model, "share": a.traffic_share} for a in plan.ab_test.arms
        ],
        "out_of_scope": out_of_scope,
    }


def _coverage_gaps(plan: Plan, cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cells of the plan's generation grid with no row in the training dataset."""
    from core.plan import grid_cells

    held = {
        tuple(sorted((str(k), str(v)) for k, v in c["cell"].items()))
        for c in cells
        if int(c["production"]) + int(c["synthetic"]) > 0
    }
    return [
        " · ".join(cell.values())
        for cell in grid_cells(plan.generation)
        if tuple(sorted(cell.items())) not in held
    ]


def _card_limitations(
    *,
    plan: Plan,
    dataset: Any,
    gates: Mapping[str, Any],
    slices: Sequence[Mapping[str, Any]],
    eval_sets: Sequence[Mapping[str, Any]],
    ab: Mapping[str, Any] | None,
    ab_error: str | None,
) -> list[str]:
    """What a reviewer should know before relying on the student, in the order of the card."""
    from core.promotion import ab_verdict_words
    from core.settings import settings

    limits: list[str] = []
    if dataset is None:
        limits.append("The dataset version the candidate was trained on is not recorded.")
    else:
        cells = list(dataset.composition.get("cells", []))
        gaps = _coverage_gaps(plan, cells)
        if gaps:
            shown = ", ".join(gaps[:8]) + (f" and {len(gaps) - 8} more" if len(gaps) > 8 else "")
            limits.append(
                f"Coverage gaps: {len(gaps)} cell(s) of the generation grid hold no training "
                f"row ({shown})."
            )
        thin = [c for c in cells if 0 < int(c["production"]) + int(c["synthetic"]) < 3]
        if thin:
            limits.append(f"{len(thin)} cell(s) of the training data hold fewer than 3 rows.")
        if dataset.rows and dataset.synthetic_rows:
            limits.append(
                f"{dataset.synthetic_rows / dataset.rows:.0%} of the training rows are synthetic "
                f"(written by the teacher), {dataset.production_rows} come from production."
            )
        if dataset.rows_now != dataset.rows:
            limits.append(
                f"{dataset.rows - dataset.rows_now} training row(s) were erased since the "
                "build; the model was trained before the erasure."
            )
    minimum = settings.gate_min_items
    for row in slices:
        if row["dimension"] is not None and int(row["n"]) < minimum:
            limits.append(
                f"Slice {row['slice']} of “{row['gate']}” has {row['n']} items, fewer than "
                f"the {minimum} a gate needs: its score is noisy."
            )
    for row in slices:
        if row["dimension"] is None:
            continue  # a gate on all its items: its verdict is listed below
        if row["status"] == "fail":
            limits.append(
                f"Slice {row['slice']} of “{row['gate']}” falls short of its threshold "
                "significantly."
            )
        elif row["status"] == "below":
            limits.append(
                f"Slice {row['slice']} of “{row['gate']}” scores below its threshold, though "
                "not significantly."
            )
    checked = {g["name"] for g in gates["gates"] if g["verdict"] != "insufficient_data"}
    for gate in plan.gates:
        if gate.name not in checked:
            continue
        tested = {row["dimension"] for row in slices if row["gate"] == gate.name}
        for dimension in gate.slices:
            if dimension not in tested:
                limits.append(
                    f"“{gate.name}” should check each {dimension}, but no slice by {dimension} "
                    "was tested (no eval item carries that label)."
                )
    for g in gates["gates"]:
        if g["verdict"] != "pass":
            kind = "blocking" if g["blocking"] else "non-blocking"
            outcome = "failed" if g["verdict"] == "fail" else "had too little data to decide"
            limits.append(f"The {kind} gate “{g['name']}” {outcome}.")
    for s in eval_sets:
        if int(s["size"]) < _SMALL_EVAL_SET:
            limits.append(
                f"The eval set {s['eval_set']} v{s['version']} holds {s['size']} items; under "
                f"{_SMALL_EVAL_SET} items a score's interval is wide."
            )
    if ab_error:
        limits.append(f"The A/B test could not be analysed: {ab_error}")
    elif ab is not None and ab["decision"] != "ship":
        limits.append(f"The A/B test's verdict is {ab_verdict_words(ab['decision'])}.")
    if ab is not None:
        for g in ab["guardrails"]:
            if g["breached"]:
                limits.append(f"The A/B guardrail {g['metric']} was breached.")
    return limits


def _approvals(status: Any) -> list[dict[str, Any]]:
    """Each role the plan version needs, with its recorded decision (None when missing)."""
    rows = []
    for role in status.required:
        decided = status.decisions.get(role)
        rows.append(
            {
                "role": role,
                "approver": decided.approver if decided else None,
                "decision": decided.decision if decided else None,
                "note": decided.note if decided else "",
                "decided_at": decided.decided_at if decided else None,
            }
        )
    return rows


@document("model-card", "Model card", "model")
def build_model_card(*, store: Any, plan_id: str, cycle: int) -> DocumentContext:
    """A cycle's candidate: what it is and was trained on, eval results by slice against their
    thresholds, the decision and A/B result, intended use, limits, cost and sign-offs.

    Raises DocumentError when the cycle has no candidate model.
    """
    from core.abtest import analyse_cycle
    from core.charts import slice_scores_figure
    from core.cycle_reads import cycle_runs
    from core.datasets import get_version
    from core.errors import AnalysisError, DatasetError
    from core.gates import cycle_decisions
    from core.plan_versions import load_plan
    from core.promotion import promotion_of, require_candidate
    from core.signoffs import approval_status

    candidate = require_candidate(store, plan_id, cycle)
    model = str(candidate["model"])
    decisions = [d for d in cycle_decisions(store, plan_id, cycle) if d["candidate_model"] == model]
    dataset = None
    if candidate["dataset_version"]:
        try:
            dataset = get_version(store, str(candidate["dataset_version"]))
        except DatasetError:
            dataset = None
    cycle_built = next(
        (str(r["dataset_version"]) for r in cycle_runs(store, plan_id) if r["cycle"] == cycle),
        None,
    )
    plan_version = (
        dataset.plan_version
        if dataset is not None
        else (int(decisions[0]["plan_version"]) if decisions else None)
    )
    plan, version = load_plan(store, plan_id, plan_version)
    job = _training_job(store, candidate["job_id"])

    report, source = _gate_report(store, plan_id, cycle, decisions)
    gates: dict[str, Any] = {"source": source, "verdict": None, "candidate": None, "gates": []}
    slices: list[dict[str, Any]] = []
    eval_sets: list[dict[str, Any]] = []
    if report is not None:
        gates = {**_gate_values(report), "source": source}
        for g in gates["gates"]:
            g["measure"] = _GATE_MEASURES.get(g["comparator"], g["comparator"])
        slices = _slice_rows(store, report)
        eval_sets = _eval_sets_read(store, report)

    ab: dict[str, Any] | None = None
    ab_error: str | None = None
    try:
        analysis = analyse_cycle(store, plan, cycle, plan_id=plan_id)
    except AnalysisError as exc:
        analysis, ab_error = None, str(exc)
    if analysis is not None:
        ab = _ab_values(analysis)
    promotion = promotion_of(model, decisions, ab["decision"] if ab else None)

    findings = lint_plan(plan).findings
    values = {
        "plan": plan,
        "plan_id": plan_id,
        "version": version,
        "cycle": cycle,
        "model": model,
        "candidate": {
            "source": candidate["source"],
            "endpoint": candidate["endpoint"],
            "registered_at": candidate["registered_at"],
            "registered_by": candidate["registered_by"],
            "job_id": candidate["job_id"],
        },
        "base_model": job["base_model"]
        if job
        else candidate.get("base_model") or plan.training.base_model(plan.goal.student_model),
        "base_model_recorded": job is not None,
        "job": job,
        "dataset": _version_values(dataset) if dataset is not None else None,
        "dataset_named": candidate["dataset_version"],
        "cycle_built": cycle_built,
        "gates": gates,
        "slices": slices,
        "eval_sets": eval_sets,
        "promotion": promotion.to_dict(),
        "decisions": decisions,
        "ab": ab,
        "ab_error": ab_error,
        "use": _intended_use(plan),
        "limitations": _card_limitations(
            plan=plan,
            dataset=dataset,
            gates=gates,
            slices=slices,
            eval_sets=eval_sets,
            ab=ab,
            ab_error=ab_error,
        ),
        "findings": _findings(findings),
        "privacy_codes": sorted(PRIVACY_LINT_CODES),
        "risks": plan.sign_offs.risks,
        "training_price": (
            plan.training.together.price_per_1m_training_tokens
            if job and job["backend"] == "together"
            else plan.training.openai.price_per_1m_training_tokens
        ),
        "backend_label": TRAINING_BACKEND_LABELS.get(
            str(job["backend"]) if job else "", "elsewhere"
        ),
        "weights_sha256": candidate.get("weights_sha256"),
        "economics": plan.economics,
        "approvals": _approvals(approval_status(store, plan_id, version)),
        "approvers": plan.sign_offs.approvers,
    }
    figures = {"slices": slice_scores_figure(slices)} if slices else {}
    if report is not None and report["gates"]:
        from core.charts import gate_thresholds_figure
        from core.monitoring import gate_figure

        figures["gates"] = gate_thresholds_figure([gate_figure(g) for g in report["gates"]])
    return DocumentContext(values, figures)
