#!/usr/bin/env bash
# One command for every check: install what the tests need, then format, lint, types, tests.
# Extra arguments go to pytest (e.g. `bash scripts/check.sh -m "not browser"`, or `-n 0`).
set -euo pipefail
cd "$(dirname "$0")/.."
FLYWHEEL_WITH_SPARK=1 bash scripts/install-system.sh
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -r requirements-spark.txt \
  -r requirements-train.txt
python -m ruff format --check .
python -m ruff check .
python -m mypy  # strict, on core/, pages/, tests/ and app.py (pyproject.toml [tool.mypy])
# One worker per core (at most 4), each test file kept on one worker so that its module-wide
# fixtures start once; `-n 0` after the command runs it in one process.
python -m pytest -n auto --maxprocesses=4 --dist loadfile "$@"
