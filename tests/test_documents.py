"""The exported documents: every template in every format, escaping, determinism, CLI, page."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pytest
from cli_helpers import run_cli
from conftest import ROOT
from pypdf import PdfReader
from streamlit.testing.v1 import AppTest

from core.access import User, local_operator
from core.documents import DOCUMENTS, TEMPLATES_DIR, render_document, render_documents
from core.errors import DocumentError
from core.labels import label
from core.lint import ab_requirement
from core.plan import FILTER_KINDS, Plan
from core.plan_versions import load_plan, save_plan_version
from core.privacy import PII_TYPES, placeholder
from core.signoffs import approval_status
from core.starters import starter_plan
from core.store import Store

AT = datetime(2027, 1, 4, 9, 30, tzinfo=UTC)
PLAN_DOCUMENTS = sorted(name for name, kind in DOCUMENTS.items() if kind.subject == "plan")
DEMO_ID = "python-coding-assistant"


def _inputs(store: Store, version: int | None = None) -> dict[str, object]:
    plan, number = load_plan(store, DEMO_ID, version)
    return {"plan": plan, "plan_id": DEMO_ID, "version": number, "store": store}


def _pdf_text(data: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def _plain(fragment: str) -> str:
    """An HTML fragment's text: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _chart_labels(html: str) -> list[str]:
    """Every text a chart draws (titles, tick labels, legend entries), one per line."""
    found: list[str] = []
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        for text in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S):
            lines = re.findall(r"<tspan[^>]*>(.*?)</tspan>", text, re.S) or [text]
            found += [line for line in (_plain(t) for t in lines) if line]
    return found


def _table_labels(html: str) -> list[str]:
    """Every table's column headers and the first cell of each row: what names its data."""
    found = [_plain(th) for th in re.findall(r"<th[^>]*>(.*?)</th>", html, re.S)]
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        first = re.search(r"<td[^>]*>(.*?)</td>", row, re.S)
        if first:
            found.append(_plain(first.group(1)))
    return [label for label in found if label and label != "—"]


def _labels_missing_from_the_pdf(html: str, pdf_text: str) -> list[str]:
    """Labels that the PDF's text does not hold whole (cut, or broken inside a word).

    A table cell's lines are joined with a space, so a word broken across lines fails; a
    chart's text is compared without spaces, which the PDF may drop between SVG words."""
    lines = " ".join(pdf_text.split())
    squeezed = "".join(pdf_text.split())
    missing = [t for t in _table_labels(html) if t not in lines]
    missing += [c for c in _chart_labels(html) if "".join(c.split()) not in squeezed]
    return missing


def _text_past_the_page(html: str) -> list[str]:
    """Text that WeasyPrint lays out beyond the right edge of the A4 page's content box."""
    import weasyprint
    from weasyprint.formatting_structure import boxes

    document = weasyprint.HTML(string=html, base_url=str(TEMPLATES_DIR)).render()
    past: list[str] = []
    for number, page in enumerate(document.pages, start=1):
        root = page._page_box
        right = root.content_box_x() + root.width
        for box in root.descendants():
            if isinstance(box, boxes.TextBox) and box.position_x + box.width > right + 0.5:
                past.append(f"page {number}: {box.text!r}")
    return past


def _chart_labels_cut(html: str) -> list[str]:
    """Tick labels drawn right-aligned at x (Plotly's y axes) that need more than x pixels in
    DejaVu Sans, the font WeasyPrint and Debian's browsers fall back to: cut at the edge."""
    from PIL import ImageFont

    font = ImageFont.truetype("DejaVuSans.ttf", 12)
    cut: list[str] = []
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        for x, body in re.findall(r'<text text-anchor="end" x="([-\d.]+)"[^>]*>(.*?)</text>', svg):
            lines = re.findall(r"<tspan[^>]*>(.*?)</tspan>", body) or [body]
            for line in lines:
                text = _plain(line)
                if text and font.getlength(text) > float(x) + 1:
                    cut.append(f"{text!r} needs {font.getlength(text):.0f} px, has {x}")
    return cut


def test_plan_and_privacy_documents_are_registered() -> None:
    assert PLAN_DOCUMENTS == ["plan", "privacy"]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_document_has_its_templates(name: str) -> None:
    kind = DOCUMENTS[name]
    assert (TEMPLATES_DIR / kind.markdown_template).is_file()
    assert (TEMPLATES_DIR / kind.html_template).is_file()


def _cycle_inputs(store: Store, cycle: int) -> dict[str, object]:
    return {"store": store, "plan_id": DEMO_ID, "cycle": cycle}


PROMOTED_MODEL = "pyassist-lora-c1"  # the demo's approved candidate of cycle 1

# Per document: its demo inputs, a text its heading and PDF hold, and the charts it embeds.
DEMO_DOCUMENTS: dict[str, tuple[Callable[[Store], dict[str, object]], str, tuple[str, ...]]] = {
    "plan": (_inputs, "Python coding assistant", ("timeline",)),
    "privacy": (_inputs, "Python coding assistant", ()),
    "cycle": (
        lambda s: _cycle_inputs(s, 1),
        "Python coding assistant",
        ("funnel", "growth", "ab_lift"),
    ),
    "datasheet": (
        lambda s: {"store": s, "version_id": "ds-python-coding-assistant-c2-v1"},
        "ds-python-coding-assistant-c2-v1",
        ("composition",),
    ),
    "model-card": (lambda s: _cycle_inputs(s, 1), PROMOTED_MODEL, ("slices", "gates")),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_document_renders_for_the_demo_in_every_format_and_repeats(
    demo_store: Store, name: str
) -> None:
    assert name in DEMO_DOCUMENTS, f"give the document '{name}' its demo inputs above"
    build_inputs, needle, charts = DEMO_DOCUMENTS[name]
    inputs = build_inputs(demo_store)
    rendered = render_documents(name, ["md", "html", "pdf"], generated_at=AT, **inputs)

    markdown = rendered["md"].decode("utf-8")
    heading = markdown.splitlines()[0]
    assert heading.startswith(f"# {DOCUMENTS[name].title}: ") and needle in heading
    assert "generated 2027-01-04 09:30 UTC" in markdown

    html = rendered["html"].decode("utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "<style>" in html and "@page" in html
    # Self-contained: no script, no stylesheet link, no resource fetched from elsewhere.
    for outside in ("<script", "<link", 'src="http', 'href="http', "url(http"):
        assert outside not in html
    # Each chart inline, once, with its fixed id.
    assert html.count('id="defs-fw') == len(charts)
    for chart in charts:
        assert f'id="defs-fw{chart}"' in html
    if name == "plan":
        assert "Cycle 6" in html

    # The same inputs give the same bytes (charts included: Plotly's random ids are replaced).
    again = render_documents(name, ["md", "html"], generated_at=AT, **inputs)
    assert again == {"md": rendered["md"], "html": rendered["html"]}

    pages, text = _pdf_text(rendered["pdf"])
    assert rendered["pdf"].startswith(b"%PDF")
    assert pages >= 1
    assert needle in text

    # What a reviewer reads on paper is whole: every chart's and table's labels are in the
    # PDF's own text, no table runs past the A4 page, no chart label past its chart's edge.
    # (The PDF is drawn from this same HTML.)
    assert _labels_missing_from_the_pdf(html, text) == []
    assert _text_past_the_page(html) == []
    assert _chart_labels_cut(html) == []


@pytest.mark.parametrize("name", PLAN_DOCUMENTS)
def test_the_generation_time_is_the_only_moving_part(demo_store: Store, name: str) -> None:
    inputs = _inputs(demo_store)
    first = render_document(name, "md", generated_at=AT, **inputs)
    assert render_document(name, "md", generated_at=AT, **inputs) == first
    later = render_document(name, "md", generated_at=datetime(2027, 2, 1, tzinfo=UTC), **inputs)
    assert later.replace(b"2027-02-01 00:00", b"2027-01-04 09:30") == first


def _hostile_plan() -> Plan:
    plan = starter_plan("python_coding_assistant")
    plan.goal.feature = "<script>alert('x')</script> helper"
    plan.consent.privacy_review.notes = "Fine <img src=x onerror=alert(1)> | pipes"
    plan.sign_offs.risks[0].risk = "<b>bold</b> risk"
    return plan


@pytest.mark.parametrize("name", PLAN_DOCUMENTS)
def test_html_escapes_user_text(name: str) -> None:
    html = render_document(
        name, "html", generated_at=AT, plan=_hostile_plan(), plan_id="p", version=1
    ).decode("utf-8")
    assert "<script>" not in html and "<img src=x" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; helper" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_markdown_escapes_user_text_and_keeps_tables_intact() -> None:
    markdown = render_document(
        "privacy", "md", generated_at=AT, plan=_hostile_plan(), plan_id="p", version=1
    ).decode("utf-8")
    # every angle bracket escaped, but inside code spans (the placeholders), which are literal
    outside_code = re.sub(r"`[^`]*`", "", markdown)
    assert re.search(r"(?<!\\)[<>]", outside_code) is None
    assert "\\<script\\>" in markdown
    assert "Fine \\<img src=x onerror=alert(1)\\> \\| pipes" in markdown


def test_endpoint_credentials_never_reach_a_document() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.generation.endpoint = "https://me:sk-secret@llm.internal:8443/v1?api_key=abc123"
    markdown = render_document(
        "plan", "md", generated_at=AT, plan=plan, plan_id="p", version=1
    ).decode("utf-8")
    assert "`https://llm.internal:8443/v1`" in markdown
    assert "sk-secret" not in markdown and "abc123" not in markdown


def test_plan_document_holds_every_section_and_the_sign_off_table(demo_store: Store) -> None:
    inputs = _inputs(demo_store)
    plan = inputs["plan"]
    assert isinstance(plan, Plan)
    markdown = render_document("plan", "md", generated_at=AT, **inputs).decode("utf-8")
    for section in range(1, 12):
        assert f"## {section} · " in markdown
    users, days = ab_requirement(plan)
    assert f"**Sample size:** {users:,} users per arm" in markdown
    assert f"**Duration:** {days} days" in markdown
    assert "$8,085.00 a month" in markdown  # (2.5·800 + 10·350 − 0.05·800 − 0.2·350) × 1.5M / 1M
    # The sign-offs recorded for this version: who, role, decision, when.
    status = approval_status(demo_store, DEMO_ID, int(inputs["version"]))  # type: ignore[call-overload]
    assert status.decisions
    for role, decided in status.decisions.items():
        named = next(a.name for a in plan.sign_offs.approvers if a.role == role)
        when = decided.decided_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        assert f"| {label(role)} | {named} | Approved | {decided.approver} | {when} |" in markdown
    assert "**Approved** by every required role" in markdown


def test_privacy_packet_of_the_first_draft_shows_its_problems(demo_store: Store) -> None:
    draft = render_document("privacy", "md", generated_at=AT, **_inputs(demo_store, 1))
    text = draft.decode("utf-8")
    assert "| `prompt` | Training input | Free text | 365 days | **over the limit** |" in text
    assert "RETENTION_EXCEEDS_CONSENT" in text and "PRIVACY_REVIEW_LATE" in text
    assert "- **Review:** pending: no privacy reviewer has signed version 1" in text
    assert "NO_REGRESSION_GATE" not in text  # not a privacy finding

    final = render_document("privacy", "md", generated_at=AT, **_inputs(demo_store, 3))
    assert "None: the plan passes every privacy check." in final.decode("utf-8")


def test_privacy_packet_lists_the_pii_types_and_where_redaction_runs() -> None:
    plan = starter_plan("python_coding_assistant")
    plan.quality_filters = [*plan.quality_filters[1:3], plan.quality_filters[0]]
    text = render_document(
        "privacy", "md", generated_at=AT, plan=plan, plan_id="p", version=1
    ).decode("utf-8")
    assert "**filter 3 of 3**, after positive\\_or\\_accepted, length\\_bounds" in text
    # The placeholders the redaction writes, taken from its detectors, never "[EMAIL]".
    for pii_type in PII_TYPES:
        assert f"| `{placeholder(pii_type)}` |" in text
    assert "`<EMAIL>`" in text and "[EMAIL]" not in text
    assert "Luhn" in text and "IPv6" in text and "credentials" in text
    assert "keyed hash" in text and "salted" not in text

    plan.quality_filters = []
    text = render_document(
        "privacy", "md", generated_at=AT, plan=plan, plan_id="p", version=1
    ).decode("utf-8")
    assert "**No redaction step runs**, yet free text is logged (prompt, response)" in text


def test_unknown_document_or_format_is_refused() -> None:
    plan = starter_plan("python_coding_assistant")
    with pytest.raises(DocumentError, match="use md, html or pdf"):
        render_document("plan", "docx", generated_at=AT, plan=plan, plan_id="p", version=1)
    with pytest.raises(DocumentError, match="no document 'brochure'"):
        render_document("brochure", "md", generated_at=AT, plan=plan, plan_id="p", version=1)


def test_every_kind_of_quality_filter_renders_with_its_parameters() -> None:
    data = starter_plan("python_coding_assistant").to_data()
    data["quality_filters"] = [
        {
            "rule": rule,
            **({"field": "topic", "op": "in", "value": "a,b"} if rule == "field_condition" else {}),
        }
        for rule in FILTER_KINDS
    ]
    plan = Plan.model_validate(data)
    text = render_document("plan", "md", generated_at=AT, plan=plan, plan_id="p", version=1).decode(
        "utf-8"
    )
    for position, rule in enumerate(FILTER_KINDS, start=1):
        assert f"| {position} | `{rule}` |" in text
    assert "field topic; op in; value a,b" in text
    assert "languages en" in text


# -- the command line --------------------------------------------------------------------------


def test_cli_renders_the_plan_and_the_privacy_packet(demo_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "plan.md"
    done = run_cli(
        "report", "plan", "--format", "md", "--out", str(out), "--plan-version", "2", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert '"path": "' + str(out) + '"' in done.stdout
    assert "Plan `python-coding-assistant` version 2" in out.read_text(encoding="utf-8")

    packet = tmp_path / "packet.html"
    done = run_cli("report", "privacy", "--out", str(packet), "--plan", DEMO_ID)
    assert done.returncode == 0, done.stderr
    assert packet.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_honours_source_date_epoch(demo_store: Store, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SOURCE_DATE_EPOCH": "1800000000"}
    for target in ("a.md", "b.md"):
        assert (
            run_cli("report", "privacy", "--out", str(tmp_path / target), env=env).returncode == 0
        )
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()
    assert "generated 2027-01-15 08:00 UTC" in (tmp_path / "a.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "plan", "--format", "docx", "--out", "{tmp}/x.docx"], "'docx' is not one of"),
        (["report", "privacy", "--out", "{tmp}/x.txt"], "Unknown format 'txt'"),
        (["report", "plan", "--out", "{tmp}/missing/x.md"], "no such folder"),
        (["report", "plan", "--out", "{tmp}/x.md", "--plan", "nope"], "no plan 'nope'"),
        (["report", "plan", "--out", "{tmp}/x.md", "--plan-version", "9"], "no version 9"),
    ],
)
def test_cli_refuses_bad_input_with_one_line(
    demo_store: Store, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert list(tmp_path.glob("x.*")) == []


def test_cli_without_a_plan_says_what_to_do(store: Store, tmp_path: Path) -> None:
    done = run_cli("report", "privacy", "--out", str(tmp_path / "x.md"))
    assert done.returncode == 2 and "python -m core demo" in done.stderr


# -- the Plan page -----------------------------------------------------------------------------


def test_plan_page_offers_the_documents(demo_store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    assert not at.exception, at.exception
    labels = [b.label for b in at.download_button]
    assert labels.count("Markdown") == 2

    prepare = [b for b in at.button if b.label == "Prepare HTML and PDF"]
    assert len(prepare) == 2
    prepare[1].click().run()  # the privacy packet: no chart, so no Chromium
    assert not at.exception, at.exception
    assert not at.error
    labels = [b.label for b in at.download_button]
    assert labels.count("HTML") == 1 and labels.count("PDF") == 1
    assert [b.label for b in at.button].count("Prepare HTML and PDF") == 1


def test_a_saved_plan_with_hostile_text_renders_on_the_page(demo_store: Store) -> None:
    save_plan_version(
        demo_store, _hostile_plan(), note="test", user=local_operator(), plan_id=DEMO_ID
    )
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    assert not at.exception, at.exception


# -- the cycle report --------------------------------------------------------------------------


def test_cycle_report_shows_funnel_gates_ab_and_decision(demo_store: Store) -> None:
    from core.cycles import cycle_runs, run_stages

    approved = render_document("cycle", "md", generated_at=AT, **_cycle_inputs(demo_store, 1))
    text = approved.decode("utf-8")
    run = next(r for r in cycle_runs(demo_store, DEMO_ID) if r["cycle"] == 1)
    for stage in run_stages(demo_store, run["run_id"]):
        assert f"| {stage.position} | {label(stage.name)} |" in text
        assert f"| {stage.rows_in:,} | {stage.rows_out:,} | {stage.removed:,} |" in text
    assert "`ds-python-coding-assistant-c1-v1`" in text
    assert "Overall verdict: **Pass** for `pyassist-lora-c1`" in text
    assert "as recorded with the approved decision" in text
    assert "| Code parses | `parse_rate` | python-core | yes | **Pass** | 0.9905 | 0.95 |" in text
    assert "- **Decision:** **Ship the treatment**" in text
    assert "| **Approved** | Pass | `pyassist-lora-c1` | Omar Haddad" in text
    assert "| ML lead | Omar Haddad | | |" in text

    failing = render_document("cycle", "md", generated_at=AT, **_cycle_inputs(demo_store, 2))
    text = failing.decode("utf-8")
    assert "Overall verdict: **Fail**" in text and "no decision is recorded yet" in text
    assert "topic = async and concurrency: 30 items" in text and "**(falls short)**" in text
    assert "No decision is recorded for this cycle yet." in text


def test_cycle_report_escapes_user_text_in_html(demo_store: Store) -> None:
    from core.gates import record_decision

    record_decision(
        demo_store,
        DEMO_ID,
        2,
        decision="rejected",
        user=User("<b>Eve</b>", frozenset({"ml_lead"})),
        reason="Async slice <script>alert(1)</script> | regresses",
    )
    inputs = _cycle_inputs(demo_store, 2)
    html = render_document("cycle", "html", generated_at=AT, **inputs).decode("utf-8")
    assert "<script>alert" not in html and "<b>Eve" not in html
    assert "Async slice &lt;script&gt;alert(1)&lt;/script&gt; | regresses" in html
    markdown = render_document("cycle", "md", generated_at=AT, **inputs).decode("utf-8")
    assert "Async slice \\<script\\>alert(1)\\</script\\> \\| regresses" in markdown


def test_cli_renders_a_cycle_report_and_refuses_a_cycle_not_run(
    demo_store: Store, tmp_path: Path
) -> None:
    out = tmp_path / "cycle.md"
    done = run_cli(
        "report", "cycle", "--cycle", "2", "--out", str(out), "--plan", DEMO_ID, "--json"
    )
    assert done.returncode == 0, done.stderr
    assert '"cycle": 2' in done.stdout
    assert "cycle 2" in out.read_text(encoding="utf-8")
    done = run_cli("report", "cycle", "--cycle", "5", "--out", str(tmp_path / "x.md"))
    assert done.returncode == 2 and "has not run yet" in done.stderr
    assert not (tmp_path / "x.md").exists()


def test_cycles_page_offers_the_cycle_report(demo_store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/cycles.py")
    at.run()
    assert not at.exception, at.exception
    assert "Markdown" in [b.label for b in at.download_button]
    assert "Prepare HTML and PDF" in [b.label for b in at.button]


def test_datasheet_shows_lineage_composition_and_limits_and_cli_writes_it(
    demo_store: Store, tmp_path: Path
) -> None:
    inputs = {"store": demo_store, "version_id": "ds-python-coding-assistant-c2-v1"}
    text = render_document("datasheet", "md", generated_at=AT, **inputs).decode("utf-8")
    assert "- **Parent version:** `ds-python-coding-assistant-c1-v1`" in text
    # Cycle 2 carries cycle 1's synthetic rows forward and adds its window's production rows.
    assert "348 rows (312 train, 36 validation): 143 production, 205 synthetic." in text
    # Every row trains under the plan's system message; the demo's logs carry none.
    assert (
        "**System message:** You are a Python expert. (sha256 `6193d3b3204c`…). Production rows "
        "train under it too, whatever they logged (production\\_system plan): 143 of 143 logged "
        "a different one (0 another text, 143 none), replaced here."
    ) in text
    assert "| `near_dedup` | near\\_dedup(threshold=0.8, keep=best\\_rated) | plan |" in text
    assert "205 row(s) are synthetic: written by the teacher, not by users." in text  # a limit
    out = tmp_path / "sheet.md"
    done = run_cli("report", "datasheet", "ds-python-coding-assistant-c1-v1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").startswith("# Datasheet")


# -- the model card ----------------------------------------------------------------------------


def test_model_card_slice_table_holds_the_stored_scores_and_thresholds(demo_store: Store) -> None:
    from core.graders import grader_for_metric

    plan, _ = load_plan(demo_store, DEMO_ID, 3)
    gate = next(g for g in plan.gates if g.slices)  # "No regression vs production"
    assert gate.comparator == "no_regression" and gate.margin is not None
    run_of = {
        role: demo_store.fetch_all(
            "SELECT run_id FROM eval_runs WHERE role = ? AND cycle = 1 AND eval_set = ?",
            [role, gate.eval_set],
        )[0][0]
        for role in ("candidate", "production")
    }
    # Each item's score is the mean of its samples; a slice's score the mean over its items.
    by_topic = demo_store.fetch_all(
        "WITH item AS (SELECT run_id, item_id, avg(score) AS score FROM eval_scores"
        " WHERE grader = ? AND score IS NOT NULL GROUP BY run_id, item_id)"
        " SELECT i.topic, count(*), avg(c.score), avg(p.score) FROM eval_set_items i"
        " JOIN item c ON c.item_id = i.item_id AND c.run_id = ?"
        " JOIN item p ON p.item_id = i.item_id AND p.run_id = ?"
        " WHERE i.eval_set = ? AND i.version = 1 GROUP BY i.topic ORDER BY i.topic",
        [grader_for_metric(gate.metric), run_of["candidate"], run_of["production"], gate.eval_set],
    )
    assert len(by_topic) == 7

    text = render_document("model-card", "md", generated_at=AT, **_cycle_inputs(demo_store, 1))
    markdown = text.decode("utf-8")
    for topic, items, candidate, production in by_topic:
        threshold = production - gate.margin
        assert candidate >= threshold  # the approved candidate passes every topic
        row = (
            f"| {gate.name} | topic = {topic} | {items} | {candidate:,.4g} | {threshold:,.4g} "
            f"| {production:,.4g} (production) | pass |"
        )
        assert row in markdown, row
    assert f"- **Model:** `{PROMOTED_MODEL}`" in markdown
    assert "- **Base model:** `Qwen/Qwen2.5-Coder-1.5B-Instruct`" in markdown
    assert "- **SHA-256:** `" in markdown and "`ds-python-coding-assistant-c1-v1`" in markdown
    assert "$4.75 for 1.9 GPU-hours at $2.50 per GPU-hour, 1,930,000 tokens trained" in markdown


def test_model_card_says_whether_the_candidate_was_promoted(demo_store: Store) -> None:
    from core.gates import record_decision

    approved = render_document("model-card", "md", generated_at=AT, **_cycle_inputs(demo_store, 1))
    assert "> **Status: promoted.** Approved by Omar Haddad (demo)" in approved.decode("utf-8")

    pending = render_document("model-card", "md", generated_at=AT, **_cycle_inputs(demo_store, 2))
    text = pending.decode("utf-8")
    assert "> **Status: not promoted.** No gate decision is recorded about this candidate" in text
    assert "the A/B test's verdict is roll back" in text
    assert "| No regression vs production | topic = async and concurrency | 30 |" in text
    assert "| **Fail** |" in text and "| **Below** |" in text
    assert "Slice topic = async and concurrency of “No regression vs production” falls short" in (
        text
    )

    record_decision(
        demo_store,
        DEMO_ID,
        2,
        decision="overridden",
        user=User("Omar Haddad", frozenset({"ml_lead"})),
        reason="The async tests are flaky upstream; a hotfix is queued.",
    )
    overridden = render_document(
        "model-card", "md", generated_at=AT, **_cycle_inputs(demo_store, 2)
    ).decode("utf-8")
    assert "> **Status: promoted.** Promoted by Omar Haddad on " in overridden
    assert "overriding the gates: The async tests are flaky upstream" in overridden


def test_model_card_escapes_user_text(demo_store: Store) -> None:
    from core.gates import record_decision
    from core.training import register_candidate

    register_candidate(
        demo_store,
        DEMO_ID,
        2,
        model="<script>alert('m')</script>",
        endpoint="https://me:sk-secret@gpu.internal:8000/v1",
        dataset_version="ds-python-coding-assistant-c2-v1",
        user=User("Omar Haddad", frozenset({"ml_lead"})),
    )
    record_decision(
        demo_store,
        DEMO_ID,
        2,
        decision="rejected",
        user=User("<b>Eve</b>", frozenset({"ml_lead"})),
        reason="Broken <img src=x onerror=alert(1)> | output",
    )
    inputs = _cycle_inputs(demo_store, 2)
    rendered = render_documents("model-card", ["md", "html"], generated_at=AT, **inputs)
    html = rendered["html"].decode("utf-8")
    assert "<script" not in html and "<img src=x" not in html and "<b>Eve" not in html
    assert "&lt;script&gt;alert(&#39;m&#39;)&lt;/script&gt;" in html
    assert "Rejected by &lt;b&gt;Eve&lt;/b&gt;" in html
    assert "Broken &lt;img src=x onerror=alert(1)&gt; | output" in html
    markdown = rendered["md"].decode("utf-8")
    assert "# Model card: `<script>alert('m')</script>`" in markdown  # a code span shows it as is
    assert "Broken \\<img src=x onerror=alert(1)\\> \\| output" in markdown
    for document in (html, markdown):
        assert "sk-secret" not in document
        assert "https://gpu.internal:8000/v1" in document


def test_cli_writes_a_model_card_and_refuses_a_cycle_without_candidate(
    demo_store: Store, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "card.md"
    done = run_cli(
        "report", "model-card", "--cycle", "1", "--out", str(out), "--plan", DEMO_ID, "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "path": str(out),
        "plan_id": DEMO_ID,
        "cycle": 1,
        "model": PROMOTED_MODEL,
        "format": "md",
    }
    assert out.read_text(encoding="utf-8").startswith(f"# Model card: `{PROMOTED_MODEL}`")

    done = run_cli("report", "model-card", "--cycle", "3", "--out", str(tmp_path / "x.md"))
    assert done.returncode == 2
    assert "cycle 3 has no candidate model; register or train one first" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "x.md").exists()


def test_cycle_report_prints_p_values_through_the_one_formatter(demo_store: Store) -> None:
    texts = {
        cycle: render_document(
            "cycle", "md", generated_at=AT, store=demo_store, plan_id=DEMO_ID, cycle=cycle
        ).decode("utf-8")
        for cycle in (1, 3)
    }
    # Cycle 3's logs lost treatment users: a sample ratio far below 1e-4 reads "< 0.0001".
    assert "(sample ratio: p < 0.0001)" in texts[3]
    # ~1e-36 in the gate's evidence (Markdown escapes its "<")
    assert re.search(r"one-sided paired t p = \\?< 0\.0001", texts[1])
    for text in texts.values():
        assert not re.search(r"\bp = [0-9.]+e-", text), "a p-value in scientific notation"
        assert "p = 0." in text or "p < 0.0001" in text
