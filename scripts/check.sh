#!/usr/bin/env bash
# One command for every check: install what the tests need, then format, lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
python -m ruff format --check .
python -m ruff check .
python -m mypy core
python -m pytest "$@"
