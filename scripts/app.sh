#!/usr/bin/env bash
# Install (first time) and start the cadx app. On an empty database the app creates the synthetic demo data.
# It listens on localhost only (CADX_ADDRESS): with no account yet, the local user works without signing in. On any
# other address, the app asks for accounts (a first-run setup with a one-time token printed here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CADX_DATA_DIR=${CADX_DATA_DIR:-$PWD/data}
exec .venv/bin/streamlit run serve.py --server.headless true --server.address "${CADX_ADDRESS:-localhost}" \
  --server.port "${CADX_PORT:-8501}" --browser.gatherUsageStats false "$@"
