#!/usr/bin/env bash
# Install what the dashboard needs and start it on data/flywheel.duckdb (or $FLYWHEEL_DB); an
# empty store gets the demo workspace. Extra arguments go to `streamlit run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec python -m streamlit run app.py "$@"
