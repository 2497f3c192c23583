"""The dashboard in a real browser: Debian's Chromium driven by Playwright against
``streamlit run`` on a free port, for what AppTest cannot see (layout, real widgets, downloads)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from core.plan_versions import list_versions
from core.store import Store

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The first page visited is opened by its URL before any other: it must still get app.py's
# navigation and sidebar.
PAGES = {
    "plan": "Plan",
    "": "Overview",
    "generation": "Synthetic data",
    "data": "Data",
    "consent": "Consent",
    "cycles": "Cycles",
    "evals": "Evals & gates",
    "abtest": "A/B test",
    "audit": "Audit",
}

playwright_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run `bash scripts/check.sh`, which installs it.")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dashboard(
    tmp_path_factory: pytest.TempPathFactory, _demo_template: Path, browser: object
) -> Iterator[tuple[str, Path]]:
    """A running dashboard on 127.0.0.1 over a fresh copy of the demo workspace, warmed up:
    every page has run once, so no test's wait pays for the server's first imports."""
    db = tmp_path_factory.mktemp("browser") / "flywheel.duckdb"
    shutil.copyfile(_demo_template, db)
    port = _free_port()
    env = {
        **os.environ,
        "FLYWHEEL_DB": str(db),
        "FLYWHEEL_AUTO_DEMO": "1",
        "FLYWHEEL_LOCK_TIMEOUT_S": "120",  # sessions wait out a CLI job holding the store
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            # Others edit the working tree while this runs: a watched source that changes puts
            # a lasting "Source file changed" prompt on every open page.
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        _warm_up(browser, url)
        yield url, db
    finally:
        server.terminate()
        server.wait(timeout=20)


def _warm_up(browser: object, url: str) -> None:
    """Run every page once in one session, with a wait sized for a loaded machine: the first
    runs import the app's libraries and fill its caches, once per server."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    for path, title in PAGES.items():
        page.goto(f"{url}/{path}")
        page.get_by_role("heading", name=title, exact=True).wait_for(timeout=300_000)
        _settle(page, timeout_ms=300_000)
        if path == next(iter(PAGES)):  # the server's first page, opened by its URL
            picker = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Plan")
            assert picker.input_value() == "Python coding assistant (demo)"
    page.close()


# The app root's own record of its script run: "running", then "notRunning" once it is done.
_SCRIPT_DONE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return !!app && app.getAttribute('data-test-script-state') === 'notRunning';
}"""

# Every element drawn: no lazy-loading placeholder left, and each visible dataframe (not in a
# closed tab or expander) has laid out its grid, its scrolling area, so that a probe of the
# layout measures the real widths.
_DRAWN = """() => !document.querySelector('[data-testid="stSkeleton"]')
  && [...document.querySelectorAll('[data-testid="stDataFrame"]')].every(
    (el) => !el.checkVisibility() || el.querySelector('.dvn-scroller'))"""


def _settle(page: object, timeout_ms: int = 60_000) -> None:
    """Wait until the app has finished rerunning after the last interaction."""
    page.wait_for_timeout(300)  # type: ignore[attr-defined]
    page.wait_for_function(_SCRIPT_DONE, timeout=timeout_ms)  # type: ignore[attr-defined]


def _type(page: object, label: str, text: str) -> None:
    """Fill a text input and submit it, then wait for the rerun it starts."""
    field = page.get_by_label(label, exact=True)  # type: ignore[attr-defined]
    field.fill(text)
    field.press("Enter")
    _settle(page)


def _open(browser: object, url: str) -> object:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page.goto(url)
    page.get_by_test_id("stMainBlockContainer").wait_for(timeout=30_000)
    _settle(page, timeout_ms=30_000)
    return page


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_loads_without_an_exception(
    dashboard: tuple[str, Path], browser: object, path: str
) -> None:
    url, _ = dashboard
    page = _open(browser, f"{url}/{path}")
    page.get_by_role("heading", name=PAGES[path], exact=True).wait_for(timeout=30_000)  # type: ignore[attr-defined]
    assert page.get_by_test_id("stException").count() == 0  # type: ignore[attr-defined]
    picker = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Plan")  # type: ignore[attr-defined]
    assert picker.input_value() == "Python coding assistant (demo)"
    page.close()  # type: ignore[attr-defined]


# What a reader sees at the two common laptop and desktop widths.
WIDTHS = (1366, 1920)

# In the page: every text (the dataframes' accessible copies included), and each element that
# may be cut: metric tiles, tab rows and the dataframes' scrolling areas.
_LAYOUT_PROBE = """() => {
  const cut = (el) => el.scrollWidth > el.clientWidth + 1;
  const name = (el) => (el.innerText || el.getAttribute('aria-label') || '').slice(0, 60);
  const tiles = [...document.querySelectorAll(
      '[data-testid="stMetricValue"], [data-testid="stMetricLabel"]')]
    .flatMap((el) => [el, ...el.querySelectorAll('div, p, span')]).filter(cut).map(name);
  const tabs = [...document.querySelectorAll('[data-baseweb="tab-list"]')].filter(cut)
    .map((el) => 'tabs: ' + name(el));
  const tables = [...document.querySelectorAll('[data-testid="stDataFrame"]')]
    .filter((el) => {
      const scroller = el.querySelector('.dvn-scroller');
      const parent = el.parentElement.getBoundingClientRect();
      return (scroller && cut(scroller)) || el.getBoundingClientRect().right > parent.right + 1;
    })
    .map((el) => 'table: ' + [...el.querySelectorAll('th, [role="columnheader"]')]
      .map((h) => h.textContent).slice(0, 6).join(' | '));
  return {text: document.body.textContent, cut: [...tiles, ...tabs, ...tables]};
}"""

_COVERED: dict[str, bool] = {}


def _has_a_font(char: str) -> bool:
    """Whether an installed font draws ``char`` (fontconfig's answer, as Chromium reads it)."""
    if char not in _COVERED:
        found = subprocess.run(
            ["fc-list", f":charset={ord(char):x}", "family"],
            capture_output=True,
            text=True,
            check=False,
        )
        _COVERED[char] = bool(found.stdout.strip())
    return _COVERED[char]


def _box_glyphs(text: str) -> list[str]:
    """Characters that would be drawn as an empty box: U+FFFD, or no installed font has them.
    Streamlit's own fonts cover Latin; Material icons are ligatures of ASCII names."""
    odd = {c for c in text if ord(c) > 0x2000 or c == "\ufffd"}
    return sorted(f"U+{ord(c):04X} {c}" for c in odd if c == "\ufffd" or not _has_a_font(c))


@pytest.mark.parametrize(
    ("path", "width"),
    [pytest.param(path, width, id=f"{path}-{width}") for path in PAGES for width in WIDTHS],
)
def test_every_page_reads_whole_at_laptop_and_desktop_widths(
    dashboard: tuple[str, Path], browser: object, path: str, width: int
) -> None:
    """No exception box, no glyph drawn as an empty box, no metric tile, tab row or table cut
    off (a table whose columns run past its container hides them behind a scroll)."""
    url, _ = dashboard
    page = browser.new_page(viewport={"width": width, "height": 1000})  # type: ignore[attr-defined]
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=PAGES[path], exact=True).wait_for(timeout=60_000)
    _settle(page)
    page.wait_for_function(_DRAWN, timeout=60_000)
    page.wait_for_timeout(500)  # the grids size their columns to the text they measured
    assert page.get_by_test_id("stException").count() == 0, page.get_by_test_id(
        "stException"
    ).all_inner_texts()
    found = page.evaluate(_LAYOUT_PROBE)
    page.close()
    assert _box_glyphs(found["text"]) == []
    assert found["cut"] == [], f"cut off at {width} px on /{path}: {found['cut']}"


def test_edit_and_save_a_plan(dashboard: tuple[str, Path], browser: object) -> None:
    url, db = dashboard
    page = _open(browser, f"{url}/plan")
    _type(page, "Owner", "Sam Rivera")
    _type(page, "Change note", "New owner")
    page.get_by_role("button", name="Save as new version").click()  # type: ignore[attr-defined]
    page.get_by_text(re.compile(r"^Saved v4 \(")).wait_for(timeout=60_000)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    latest = list_versions(Store(db), "python-coding-assistant")[0]
    assert (latest.version, latest.note) == (4, "New owner")


def test_download_the_plan_as_yaml(dashboard: tuple[str, Path], browser: object) -> None:
    url, _ = dashboard
    page = _open(browser, f"{url}/plan")
    page.get_by_role("tab", name="Import / export").click()  # type: ignore[attr-defined]
    with page.expect_download() as info:  # type: ignore[attr-defined]
        page.get_by_role("button", name="YAML").click()  # type: ignore[attr-defined]
    path = info.value.path()
    text = Path(path).read_text(encoding="utf-8")
    assert "feature: Python coding assistant" in text
    page.close()  # type: ignore[attr-defined]


def _upload(page: object, name: str, text: str, *, target: str | None = None) -> None:
    page.get_by_role("tab", name="Import / export").click()  # type: ignore[attr-defined]
    page.locator("input[type=file]").set_input_files(  # type: ignore[attr-defined]
        {"name": name, "mimeType": "application/yaml", "buffer": text.encode()}
    )
    page.get_by_text(name).first.wait_for(timeout=30_000)  # type: ignore[attr-defined]
    _settle(page)
    if target is not None:
        page.get_by_text(target).click()  # type: ignore[attr-defined]
        _settle(page)
    page.get_by_role("button", name="Store uploaded plan").click()  # type: ignore[attr-defined]


def test_malformed_upload_shows_the_field_and_stores_nothing(
    dashboard: tuple[str, Path], browser: object
) -> None:
    url, db = dashboard
    before = len(list_versions(Store(db), "python-coding-assistant"))
    page = _open(browser, f"{url}/plan")
    _upload(page, "broken.yaml", "goal:\n  feature: X\n  horizon_months: six\n")
    alert = page.get_by_text("goal.horizon_months")  # type: ignore[attr-defined]
    alert.wait_for(timeout=30_000)
    assert "Nothing was stored" in page.get_by_test_id("stAlert").all_inner_texts()[-1]  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    assert len(list_versions(Store(db), "python-coding-assistant")) == before


def test_upload_a_jsonl_on_the_data_page(dashboard: tuple[str, Path], browser: object) -> None:
    url, db = dashboard
    page = _open(browser, f"{url}/data")
    lines = [
        '{"interaction_id": "br-1", "ts": "2027-01-03T10:00:00Z", "user_id": "u-br", '
        '"variant": "control", "model": "gpt-4o", "prompt": "Mail ana@example.com", '
        '"response": "Done."}',
        '{"interaction_id": "br-2", "ts": "not a time"}',
    ]
    page.locator("input[type=file]").set_input_files(  # type: ignore[attr-defined]
        {
            "name": "browser.jsonl",
            "mimeType": "application/jsonl",
            "buffer": ("\n".join(lines) + "\n").encode(),
        }
    )
    page.get_by_text("browser.jsonl").first.wait_for(timeout=30_000)  # type: ignore[attr-defined]
    page.get_by_test_id("stBaseButton-secondaryFormSubmit").click()  # type: ignore[attr-defined]
    page.get_by_text("1 accepted").first.wait_for(timeout=60_000)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    stored = Store(db).fetch_one("SELECT prompt FROM interactions WHERE interaction_id = 'br-1'")
    assert stored == ("Mail <EMAIL>",)
    batch = Store(db).fetch_one(
        "SELECT rows_read, accepted, rejected FROM ingest_batches WHERE file_name = 'browser.jsonl'"
    )
    assert batch == (2, 1, 1)


def test_run_a_cycle_on_the_cycles_page(dashboard: tuple[str, Path], browser: object) -> None:
    url, db = dashboard
    before = Store(db).fetch_one("SELECT count(*) FROM cycle_runs")
    page = _open(browser, f"{url}/cycles")
    page.get_by_role("button", name="Run cycle").click()  # type: ignore[attr-defined]
    page.get_by_text("Cycle 1 of plan").first.wait_for(timeout=120_000)  # type: ignore[attr-defined]
    assert page.get_by_test_id("stException").count() == 0  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    after = Store(db).fetch_one("SELECT count(*) FROM cycle_runs")
    assert before is not None and after == (before[0] + 1,)


def test_download_the_plan_document(dashboard: tuple[str, Path], browser: object) -> None:
    url, _ = dashboard
    page = _open(browser, f"{url}/plan")
    page.get_by_role("tab", name="Documents").click()  # type: ignore[attr-defined]
    with page.expect_download() as info:  # type: ignore[attr-defined]
        page.get_by_role("button", name="Markdown").first.click()  # type: ignore[attr-defined]
    text = Path(info.value.path()).read_text(encoding="utf-8")
    assert "Python coding assistant" in text and "## " in text
    page.close()  # type: ignore[attr-defined]


def test_two_sessions_and_a_cli_cycle_run_at_once(
    dashboard: tuple[str, Path], browser: object
) -> None:
    url, db = dashboard
    versions_before = len(list_versions(Store(db), "python-coding-assistant"))
    runs_before = Store(db).fetch_one("SELECT count(*) FROM cycle_runs")
    pages = [_open(browser, f"{url}/plan") for _ in range(2)]
    for n, page in enumerate(pages):
        _type(page, "Owner", f"Owner {n}")
        _type(page, "Change note", f"session {n}")
    env = {**os.environ, "FLYWHEEL_DB": str(db), "FLYWHEEL_LOCK_TIMEOUT_S": "120"}
    job = subprocess.Popen(
        [sys.executable, "-m", "core", "cycle", "run", "--cycle", "1", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for page in pages:
        page.get_by_role("button", name="Save as new version").click()  # type: ignore[attr-defined]
    for page in pages:
        saved = page.get_by_text(re.compile(r"^Saved v\d+ \("))  # type: ignore[attr-defined]
        failed = page.get_by_test_id("stAlertContentError")  # type: ignore[attr-defined]
        saved.or_(failed).first.wait_for(timeout=240_000)
        assert failed.count() == 0, failed.all_inner_texts()
        assert page.get_by_test_id("stException").count() == 0  # type: ignore[attr-defined]
        page.close()  # type: ignore[attr-defined]
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    store = Store(db)
    notes = [v.note for v in list_versions(store, "python-coding-assistant")]
    assert len(notes) == versions_before + 2
    assert {"session 0", "session 1"} <= set(notes)
    assert runs_before is not None
    assert store.fetch_one("SELECT count(*) FROM cycle_runs") == (runs_before[0] + 1,)


# Last: it adds a second plan, which then becomes the default one for new sessions.
def test_upload_a_plan_as_a_new_plan(dashboard: tuple[str, Path], browser: object) -> None:
    from core.plan_files import dump_plan
    from core.plan_versions import list_plans
    from core.starters import starter_plan

    url, db = dashboard
    page = _open(browser, f"{url}/plan")
    text = dump_plan(starter_plan("customer_support_assistant"), "yaml")
    _upload(page, "support.yaml", text, target="a new plan")
    page.get_by_role("heading", name="Plan", exact=True).wait_for(timeout=30_000)  # type: ignore[attr-defined]
    picker = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Plan")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while picker.input_value() != "Customer-support reply assistant":
        assert time.monotonic() < deadline, picker.input_value()
        time.sleep(0.2)
    page.close()  # type: ignore[attr-defined]
    assert "customer-support-reply-assistant" in {p.plan_id for p in list_plans(Store(db))}
