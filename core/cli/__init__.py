"""The command line, ``python -m core``: flags in, core calls, one JSON object or text out.

One click group per noun (``plan``, ``data``, ``cycle``, ``dataset``, ``eval``, ``gate``,
``train``, ``ab``, ``report``, ``store``, ``stats``; ``demo`` and ``generate`` are single
commands), each in its own module, imported only when that noun runs. ``--db`` and ``--json`` are
accepted before or after the command. The previous release's spellings (``_base.RENAMED``) still
run, after one deprecation line on stderr.

Exit status: 0 done; 1 a check failed (lint errors, a failed gate); 2 bad input or usage, with
one line on stderr and nothing written; 3 an unexpected error (one line naming a log file).

Each command imports the core modules it calls inside its body: between them they load DuckDB,
pandas, Ibis, Plotly, scipy, openai and the training stack, seconds of imports that ``--help``
and ``stats sample-size`` do not need (tests/test_cli_startup.py, bench/cli.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.cli._base import NOUNS, RENAMED, Outcome, Root, default_plan_id, walk

__all__ = ["NOUNS", "RENAMED", "Outcome", "cli", "default_plan_id", "main", "walk"]

cli = Root(
    "python -m core",
    help="Flywheel: plan, check and run LLM data flywheels.",
    context_settings={"max_content_width": 100},
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line; return its exit status (0, 1, 2 or 3: see the module's doc)."""
    return cli.main(argv, standalone_mode=False)
