"""Output paths a user chooses: never the store, its WAL or another file Flywheel manages.

Every writer of a user-chosen path (``plan export``, ``plan render`` and the other documents,
``dataset export``, ``pii redact``) calls ``check_output_path`` before it writes anything, so
that ``--out data/flywheel.duckdb`` is refused with one line instead of overwriting the store.

Managed files are: each store this process opened (``Store`` registers its path) and the
default store (``FLYWHEEL_DB``), with every file beside it named after it (its ``.wal``, the
erasure key file, a rewrite's temporary copy); the roles file (``FLYWHEEL_ROLES_FILE``);
Streamlit's ``.streamlit/`` folder; and Flywheel's own code, templates and git folder. A path is
compared after resolving symlinks, and a file that exists is also compared by identity, so a
link to the store is refused too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from core.errors import OutputPathError
from core.settings import PROJECT_ROOT, default_db_path, settings

__all__ = ["check_output_path", "managed_store", "managed_what"]

_stores: set[Path] = set()
_lock = threading.Lock()
_PROJECT_PARTS = (
    "core",
    "pages",
    "templates",
    "tests",
    "bench",
    "scripts",
    ".git",
    ".streamlit",
    "app.py",
    "pyproject.toml",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-spark.txt",
)


def managed_store(path: Path) -> None:
    """Remember that ``path`` is a store of this process (called by ``Store``)."""
    with _lock:
        _stores.add(_resolved(path))


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser())).resolve()


def _store_files(store: Path, candidate: Path) -> bool:
    """Whether ``candidate`` is the store or a file beside it named after it."""
    if candidate.parent != store.parent:
        return False
    name = candidate.name
    return (
        name == store.name
        or name.startswith(store.name + ".")
        or name.startswith("." + store.name + ".")
    )


def _inside(candidate: Path, folder: Path) -> bool:
    return candidate == folder or folder in candidate.parents


def managed_what(path: str | Path) -> str | None:
    """What Flywheel file ``path`` is ("the store /…/flywheel.duckdb", "Flywheel's code"), or
    None when it is free to write."""
    candidate = _resolved(Path(path))
    with _lock:
        stores = set(_stores)
    stores.add(_resolved(default_db_path()))
    for store in sorted(stores):
        if _store_files(store, candidate):
            what = "the store" if candidate == store else "a file of the store"
            return f"{what} {store}"
    roles = _resolved(Path(settings.roles_file))
    if candidate == roles:
        return "the roles file"
    for part in _PROJECT_PARTS:
        if _inside(candidate, _resolved(PROJECT_ROOT / part)):
            return f"Flywheel's own {part}"
    if _inside(candidate, _resolved(Path.cwd() / ".streamlit")):
        return "Streamlit's settings and secrets"
    if candidate.exists():
        for store in stores:
            for managed in (store, Path(f"{store}.wal")):
                try:
                    if managed.exists() and os.path.samefile(candidate, managed):
                        return f"a link to the store {store}"
                except OSError:
                    continue
    return None


def check_output_path(path: str | Path) -> Path:
    """``path`` as a Path when a user may write it; raises OutputPathError (one line) when it
    is the store, its WAL or another file Flywheel manages."""
    out = Path(path)
    what = managed_what(out)
    if what is not None:
        raise OutputPathError(f"{out} is {what}; refusing to write over it. Choose another file.")
    return out
