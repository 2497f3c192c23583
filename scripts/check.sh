#!/usr/bin/env bash
# One command for every check: install what the tests need, then format, lint, types, tests.
# Extra arguments go to pytest (e.g. `bash scripts/check.sh -m "not browser"`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's Chromium for the browser tests (never a test tool's own browser download).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi

python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
python -m ruff format --check .
python -m ruff check .
python -m mypy core
python -m pytest "$@"
