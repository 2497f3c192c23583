#!/usr/bin/env bash
# One command for every check: install what the tests need, then format, lint, types, tests.
# Extra arguments go to pytest (e.g. `bash scripts/check.sh -m "not browser"`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's packages: Chromium for the browser tests and the documents' chart images (never a test
# tool's own browser download); Pango, HarfBuzz and fonts for WeasyPrint's PDF documents.
DEBIAN_PACKAGES=(chromium libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_=()
  [ "$(id -u)" = 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get update -qq
  "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
python -m ruff format --check .
python -m ruff check .
python -m mypy core
python -m pytest "$@"
