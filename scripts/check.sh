#!/usr/bin/env bash
# One command for every check: install what the tests need, then format, lint, types, tests.
# Extra arguments go to pytest (e.g. `bash scripts/check.sh -m "not browser"`).
set -euo pipefail
cd "$(dirname "$0")/.."
FLYWHEEL_WITH_SPARK=1 bash scripts/install-system.sh
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -r requirements-spark.txt \
  -r requirements-train.txt
python -m ruff format --check .
python -m ruff check .
python -m mypy  # strict, on core/, pages/, tests/ and app.py (pyproject.toml [tool.mypy])
python -m pytest "$@"
