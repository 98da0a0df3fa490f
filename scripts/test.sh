#!/usr/bin/env bash
# Install (first time) and run every test. As root on Debian it also installs and starts the services the tests
# use: PostgreSQL on loopback (database tests run on SQLite and PostgreSQL), Chromium (browser tests) and Orthanc
# (DICOMweb import and export tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/services.sh
  export CADX_TEST_POSTGRES_URL=${CADX_TEST_POSTGRES_URL:-postgresql+psycopg://cadx:cadx@127.0.0.1:5432/cadx_test}
  export CADX_TEST_ORTHANC_URL=${CADX_TEST_ORTHANC_URL:-http://127.0.0.1:8042}
fi
# Two test processes (pytest-xdist) on a 2-core machine: much of the suite waits on browsers, servers, spawned
# workers and heartbeats, so a second process fills that time. A file's tests stay in one process (--dist loadfile:
# module-scoped servers and models are built once). CADX_TEST_WORKERS=0 runs everything in this process.
workers=${CADX_TEST_WORKERS:-$(( $(nproc) < 4 ? 2 : 4 ))}
if [ "$workers" -gt 0 ]; then
  exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest "$@"
