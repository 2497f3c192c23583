#!/usr/bin/env bash
# Debian's packages Flywheel needs beyond Python: Chromium draws the documents' charts (through
# Kaleido) and runs the browser tests (never a test tool's own browser download); Pango, HarfBuzz
# and fonts let WeasyPrint render PDF documents; bubblewrap sandboxes the code that the
# python_tests grader runs; with FLYWHEEL_WITH_SPARK=1, a Java runtime for Spark.
# Installs only what is missing.
set -euo pipefail
DEBIAN_PACKAGES=(chromium libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core
  bubblewrap)
# Java runs Spark for the optional Spark stages and their test; any Java 17+ already present does.
if [ "${FLYWHEEL_WITH_SPARK:-0}" = 1 ] && ! command -v java >/dev/null 2>&1; then
  DEBIAN_PACKAGES+=(openjdk-17-jre-headless)
fi
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
