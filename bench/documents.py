"""How long the plan's documents take, against drawing each chart with its own Chromium.

Run: ``python bench/documents.py``. The baseline is Plotly's ``fig.to_image`` (one Chromium per
image: what a naive renderer does); the measured path draws every image of a document (SVG for
HTML, PNG for PDF) in one Kaleido session. Prints seconds and the ratio.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plotly.io as pio

from core.charts import timeline_figure
from core.documents import render_documents
from core.plan import plan_timeline
from core.starters import starter_plan

AT = datetime(2027, 1, 4, tzinfo=UTC)


def _seconds(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    plan = starter_plan("python_coding_assistant")
    inputs = {"plan": plan, "plan_id": "bench", "version": 1}
    figure = timeline_figure(plan_timeline(plan))
    pio.defaults.mathjax = None

    baseline = _seconds(lambda: [figure.to_image(format=f, width=900) for f in ("svg", "png")])
    print(f"baseline  fig.to_image, svg + png (a Chromium each):   {baseline:6.2f} s")
    both = _seconds(lambda: render_documents("plan", ["html", "pdf"], generated_at=AT, **inputs))
    print(f"plan document, html + pdf (one Chromium, WeasyPrint):  {both:6.2f} s")
    print(f"ratio against the baseline: {both / baseline:.2f}")
    for fmt in ("md", "html", "pdf"):
        took = _seconds(lambda fmt=fmt: render_documents("plan", [fmt], generated_at=AT, **inputs))
        print(f"plan document, {fmt:<4} alone: {took:6.2f} s")
    took = _seconds(
        lambda: render_documents("privacy", ["md", "html", "pdf"], generated_at=AT, **inputs)
    )
    print(f"privacy packet, md + html + pdf (no chart): {took:6.2f} s")


if __name__ == "__main__":
    main()
