#!/usr/bin/env bash
# Smoke test of the Docker image: build it, start it with an admin secret file (root-owned, 0600, as Docker and
# Kubernetes mount secrets), wait until it is healthy, check that the app asks for a sign-in, stop it (it must exit
# within the grace time) and remove it. Without a working container engine (docker or podman) it prints
# "skipped: <reason>" and exits 0. Options: BUILD_ARGS="--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
# (the CPU-only build; the default is PyPI's CUDA build), CADX_SMOKE_PORT (default 18501).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=""
for candidate in docker podman; do
  if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
    engine=$candidate
    break
  fi
done
if [ -z "$engine" ]; then
  reasons=()
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null; then
      reasons+=("$candidate is installed but '$candidate info' fails (no daemon or no permission)")
    else
      reasons+=("$candidate is not installed")
    fi
  done
  echo "skipped: no working container engine: ${reasons[0]}; ${reasons[1]}"
  exit 0
fi
tag=cadx-smoke:$$
name=cadx-smoke-$$
port=${CADX_SMOKE_PORT:-18501}
work=$(mktemp -d)
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  "$engine" volume rm -f "$name-data" >/dev/null 2>&1 || true
  "$engine" rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "== build ($engine)"
# shellcheck disable=SC2086
"$engine" build ${BUILD_ARGS:-} -t "$tag" .
secret=$work/admin-password.txt
printf 'smoke-test-password-%s\n' "$$" >"$secret"
chmod 600 "$secret"
echo "== start"
"$engine" run -d --name "$name" -p "127.0.0.1:$port:8501" -v "$name-data:/data" \
  -v "$secret:/run/secrets/cadx_admin:ro" -e CADX_ADMIN_PASSWORD_FILE=/run/secrets/cadx_admin "$tag" >/dev/null
echo "== health"
status=starting
for _ in $(seq 1 120); do
  status=$("$engine" inspect -f '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
  [ "$status" = healthy ] && break
  if [ "$("$engine" inspect -f '{{.State.Running}}' "$name")" != true ]; then
    echo "FAIL: the container stopped:"; "$engine" logs "$name" 2>&1 | tail -40; exit 1
  fi
  sleep 2
done
if [ "$status" != healthy ]; then
  echo "FAIL: not healthy ($status):"; "$engine" logs "$name" 2>&1 | tail -40; exit 1
fi
echo "== sign-in required"
# the admin account came from the secret file and the app asks everyone to sign in (as the app's user: files
# root would create in /data could lock the app out)
"$engine" exec -u cadx "$name" python -c "
from cadx.workflows import open_workspace
from cadx.workflows.accounts import access_mode, list_users
ws = open_workspace()
users = [u.username for u in list_users(ws)]
assert users == ['admin'], users
assert access_mode(ws, server_address='0.0.0.0') == 'sign_in'
print('accounts:', users, '- sign-in required')
" || { echo "FAIL: no admin account from the secret file, or no sign-in required"; exit 1; }
python3 - "$port" <<'PY'
import sys, urllib.request
port = sys.argv[1]
assert urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10).status == 200
PY
echo "== stop"
"$engine" stop -t 60 "$name" >/dev/null
code=$("$engine" inspect -f '{{.State.ExitCode}}' "$name")
echo "stopped (exit code $code)"
echo "ok: build, start, health, sign-in required, stop"
