#!/usr/bin/env bash
# Lint and type-check (ruff, mypy; configured in pyproject.toml). Fast: seconds, no tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
