"""Every column of every table a page shows on the demo has a human header: its key is in the
labels table (core.labels), or the page names it in words itself; a plan's own axis names
(user text) are shown as written."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.labels import LABELS, label
from core.plan_versions import load_plan
from core.store import Store

PAGES = sorted(
    f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py") if not p.name.startswith("_")
)
_CODE_NAME = re.compile(r"^[a-z0-9_]+$")


def _headers(element: object) -> dict[str, str]:
    """Each column's key and the header the page gives it (its config label, else its key)."""
    proto = element.proto  # type: ignore[attr-defined]
    config = json.loads(proto.columns) if proto.columns else {}
    frame = element.value  # type: ignore[attr-defined]
    frame = getattr(frame, "data", frame)  # a Styler holds its frame as .data
    return {
        str(key): str(config.get(str(key), {}).get("label") or key)
        for key in frame.columns
        if not config.get(str(key), {}).get("hidden")
    }


def unlabelled_columns(headers: dict[str, str], user_names: set[str]) -> list[str]:
    """Keys a person would read as code: shown as a raw code name (``rows_in``, ``cycle``),
    or labelled only by the fallback words of a key the labels table lacks. A name the user
    chose (a grid axis) is shown as written."""
    return sorted(
        key
        for key, header in headers.items()
        if key not in user_names
        and (
            _CODE_NAME.match(header) is not None
            or (key not in LABELS and _CODE_NAME.match(key) and header == label(key))
        )
    )


def test_the_check_finds_raw_and_fallback_headers() -> None:
    headers = {
        "rows_in": "Rows in",  # labelled from the table
        "cycle": "cycle",  # a raw code name on screen
        "shortfall_rows": "Shortfall rows",  # words made up for a key the table lacks
        "teacher $/1k": "teacher $/1k",  # written as words by the page
        "topic": "topic",  # the user's own axis name
    }
    assert unlabelled_columns(headers, {"topic"}) == ["cycle", "shortfall_rows"]


@pytest.mark.parametrize("page", PAGES)
def test_every_table_column_on_the_page_has_a_human_header(demo_store: Store, page: str) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    if page != "pages/overview.py":
        at.switch_page(page)
        at.run()
    assert not at.exception, at.exception
    plan, _ = load_plan(demo_store, "python-coding-assistant", None)
    axes = {axis.name for axis in plan.generation.axes}
    found = {key for element in at.dataframe for key in unlabelled_columns(_headers(element), axes)}
    assert sorted(found) == [], f"{page}: give {sorted(found)} a label in core.labels"
