#!/usr/bin/env bash
# Install (when missing) and start the services the tests need, on loopback only: PostgreSQL with a cadx role and
# a cadx_test database, Debian's Chromium for the browser tests and dicom3tools (dciodvfy) for the DICOM export.
# Needs root on Debian.
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "cadx: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# dciodvfy (Debian dicom3tools) checks the exported SR and SEG files (tests/test_export_dicom.py); optional: where
# the package does not exist the test skips that check (under CI=true it fails, so CI must have it).
if ! command -v dciodvfy >/dev/null; then
  if apt-cache show dicom3tools >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-cache show dicom3tools >/dev/null 2>&1; }; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null || echo "cadx: dicom3tools did not install" >&2
  else
    echo "cadx: no dicom3tools package here; the DICOM export test skips its dciodvfy check" >&2
  fi
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null
fi
# Listen on loopback only.
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$version/main/postgresql.conf"
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true  # already running is fine
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='cadx'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE cadx LOGIN CREATEDB PASSWORD 'cadx'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='cadx_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O cadx cadx_test"
