"""Shared fixtures: a fresh store in a temporary directory, caches cleared after each test."""

from __future__ import annotations

import gc
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import streamlit as st

from core.demo import load_demo
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent


def parquet_from_sql(query: str, path: Path) -> Path:
    """Write the rows of ``query``, run on a throwaway in-memory DuckDB, to a Parquet file."""
    with duckdb.connect() as con:
        con.sql(query).write_parquet(str(path))
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """An empty, migrated store that the dashboard and the CLI also see (FLYWHEEL_DB)."""
    path = tmp_path / "flywheel.duckdb"
    monkeypatch.setenv("FLYWHEEL_DB", str(path))
    monkeypatch.setenv("FLYWHEEL_AUTO_DEMO", "0")
    monkeypatch.setenv("FLYWHEEL_LOCK_TIMEOUT_S", "2")
    fresh = Store(path)
    fresh.schema_version()
    return fresh


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for every Spark test: starting one takes seconds."""
    from core.portable import spark_session

    session = spark_session("flywheel-test")
    session.sparkContext.setLogLevel("FATAL")
    yield session
    session.stop()
    _collect_sparks_sockets()


@pytest.fixture(autouse=True)
def _spark_sockets_collected(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each Spark test, the sockets PySpark read its results from are collected."""
    yield
    if request.node.get_closest_marker("spark") is not None:
        _collect_sparks_sockets()


def _collect_sparks_sockets() -> None:
    """PySpark leaves the local sockets it reads results through to the garbage collector
    (pyspark.util._create_local_socket drops the socket and keeps its file). Collected here,
    where they are known to be Spark's, their ResourceWarning is expected; left for later, it
    would surface in whatever test or session end happened to collect them, as CI's once did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def _demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workspace, loaded once per test session (it takes seconds) and copied per test."""
    path = tmp_path_factory.mktemp("demo-template") / "flywheel.duckdb"
    load_demo(Store(path))
    return path


@pytest.fixture
def demo_store(store: Store, _demo_template: Path) -> Store:
    """A store holding the demo workspace: a fresh copy of the session's template."""
    Path(str(store.path) + ".wal").unlink(missing_ok=True)
    shutil.copyfile(_demo_template, store.path)
    return store


class _PathWithoutPagesFolder(type(Path())):  # type: ignore[misc]
    def exists(self, *args: object, **kwargs: object) -> bool:
        return self.name != "pages" and bool(super().exists(*args, **kwargs))


@pytest.fixture(autouse=True)
def _navigation_as_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make AppTest run pages through app.py's st.navigation, as a running server does.

    AppTest resets Streamlit's process-wide "legacy pages/ folder" flag before every run, so
    without this each run after switch_page would execute the page bare, without app.py.
    """
    import streamlit.runtime.pages_manager as pages_manager

    monkeypatch.setattr(pages_manager, "Path", _PathWithoutPagesFolder)


@pytest.fixture(autouse=True)
def _clear_streamlit_caches() -> Iterator[None]:
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
