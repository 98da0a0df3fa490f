#!/usr/bin/env bash
# Create .venv and install cadx with its pinned dependencies: the runtime set (requirements.txt) and the test, lint
# and type-check tools (requirements-dev.txt). Fast when nothing changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cadx-requirements.sha256
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cadx: installing dependencies into .venv (first time: a few minutes; torch is large)" >&2
  log=$(mktemp)
  # pip's output minus the notes about package-index folders this machine's pip.conf names but lacks
  if ! .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    echo "cadx: installing the requirements failed (see above)" >&2
    exit 1
  fi
  grep -v "^WARNING: Location" "$log" >&2 || true
  rm -f "$log"
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
