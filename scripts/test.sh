#!/usr/bin/env bash
# Install (first time) and run every test. As root on Debian it also installs and starts the services the tests
# use: PostgreSQL on loopback (database tests run on SQLite and PostgreSQL) and Chromium (browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/services.sh
  export CADX_TEST_POSTGRES_URL=${CADX_TEST_POSTGRES_URL:-postgresql+psycopg://cadx:cadx@127.0.0.1:5432/cadx_test}
fi
exec .venv/bin/python -m pytest "$@"
