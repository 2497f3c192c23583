"""The one way the tests run the command line in-process: click's CliRunner on ``core.cli``.

``run_cli`` answers as ``subprocess.run`` did for the copies of a subprocess helper it replaced
(a ``CompletedProcess`` with ``returncode``, ``stdout`` and ``stderr``), in milliseconds instead
of a fresh interpreter's seconds. tests/test_cli_startup.py and a few tests in tests/test_cli.py
still start ``python -m core`` itself (``run_entry_point``), for what only the real entry point
shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner

from core.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str | Path, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m core ARGS`` in this process; ``env`` is laid over the environment for
    the run (a None value unsets a variable)."""
    argv = [str(a) for a in args]
    result = CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(
        ["python", "-m", "core", *argv], result.exit_code, result.stdout, result.stderr
    )


def run_entry_point(
    *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m core ARGS`` in a fresh interpreter, as a shell or a scheduler does."""
    return subprocess.run(
        [sys.executable, "-m", "core", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
