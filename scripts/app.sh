#!/usr/bin/env bash
# Install (first time) and start the cadx app. On an empty database the app creates the synthetic demo data.
# It listens on localhost only (CADX_ADDRESS): with no account yet, the local user works without signing in. On any
# other address, the app asks for accounts (a first-run setup with a one-time token printed here).
set -euo pipefail
cd "$(dirname "$0")/.."
# A database URL pairs only with the data directory named beside it (cadx/config.py): do not pair it with ./data.
if [ -n "${CADX_DATABASE_URL:-}" ] && [ -z "${CADX_DATA_DIR:-}" ]; then
  echo "cadx: CADX_DATABASE_URL is set but CADX_DATA_DIR is not: the database's files would go into ./data, maybe" \
       "not where that database's files are. Fix: export CADX_DATA_DIR with that database's data directory, or" \
       "unset CADX_DATABASE_URL to use ./data with its own SQLite database. Nothing was started." >&2
  exit 2
fi
bash scripts/setup.sh
export CADX_DATA_DIR=${CADX_DATA_DIR:-$PWD/data}
exec .venv/bin/streamlit run serve.py --server.headless true --server.address "${CADX_ADDRESS:-localhost}" \
  --server.port "${CADX_PORT:-8501}" --browser.gatherUsageStats false "$@"
