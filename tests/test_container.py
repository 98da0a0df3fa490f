"""The image a lab runs: runtime requirements only (test tools in requirements-dev.txt), a CPU-only build argument,
a health check that fails when the database cannot be opened, an entrypoint that reads root-only secret files and
drops to the app's user (failing the start with the reason), the torch weights cache on the data volume, a
.dockerignore, and the smoke test of a real build where a container engine works (scripts/docker-smoke.sh)."""

from __future__ import annotations

import http.server
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cadx.workflows import import_demo

ROOT = Path(__file__).resolve().parents[1]
TEST_TOOLS = {"pytest", "pytest-xdist", "execnet", "jsonschema", "ruff", "mypy", "playwright"}
PASSWORD = "a-long-admin-password-42"


def _requirements(name: str) -> tuple[set[str], list[str]]:
    """The package names a requirements file pins, and its ``-r`` includes."""
    names, includes = set(), []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            includes.append(line[3:].strip())
        elif line:
            names.add(Requirement(line).name.lower())
    return names, includes


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ")


# ------------------------------------------------------------------------------------------------- item 12 ---
def test_the_image_installs_the_runtime_set_only():
    runtime, includes = _requirements("requirements.txt")
    assert not includes and {"torch", "streamlit", "sqlalchemy"} <= runtime
    assert not runtime & TEST_TOOLS, runtime & TEST_TOOLS
    dev, dev_includes = _requirements("requirements-dev.txt")
    assert dev_includes == ["requirements.txt"] and TEST_TOOLS <= dev
    # setup.sh (the README's test command) installs everything and its stamp changes when either file does
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-r requirements-dev.txt" in setup and "requirements.txt requirements-dev.txt" in setup
    dockerfile = _dockerfile()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and not any("requirements-dev" in line for line in installs)
    assert any("-r requirements.txt" in line for line in installs)
    assert "COPY requirements.txt pyproject.toml ./" in dockerfile


def test_the_cpu_only_build_is_a_build_argument_choosing_the_wheel_index():
    dockerfile = _dockerfile()
    assert re.search(r'^ARG TORCH_INDEX_URL=""$', dockerfile, re.M)  # default: PyPI (CUDA build)
    torch_install = next(line for line in dockerfile.splitlines() if "TORCH_INDEX_URL" in line and "pip" in line)
    assert '--index-url "$TORCH_INDEX_URL"' in torch_install and "torch|torchvision" in torch_install
    # the pins it installs from that index are requirements.txt's (a CPU wheel 2.x+cpu satisfies ==2.x)
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if re.match(r"^(torch|torchvision)==", line)]
    assert [p.split("==")[0] for p in pins] == ["torch", "torchvision"]
    readme = (ROOT / "README.md").read_text()
    assert "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in readme


def test_the_weights_cache_is_on_the_data_volume():
    dockerfile = _dockerfile()
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(line for line in dockerfile.splitlines()
                                                   if line.startswith("ENV "))))
    assert env["CADX_DATA_DIR"] == "/data" and "/data" in re.findall(r"^VOLUME (\S+)", dockerfile, re.M)
    assert env["TORCH_HOME"].startswith("/data/") and env["XDG_CACHE_HOME"].startswith("/data/")
    # cadx looks for torchvision's weights (AlexNet, ...) in torch's hub cache, i.e. under TORCH_HOME
    probe = "from cadx import cnn; print(cnn._checkpoint_dir())"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), TORCH_HOME="/data/cache/torch")).stdout
    assert out.strip() == "/data/cache/torch/hub/checkpoints"


def test_dockerignore_leaves_tests_benchmarks_and_docs_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"tests", "benchmarks", "docs", ".git", ".venv", "data", "requirements-dev.txt"} <= ignored
    # what the image runs stays in
    assert not ignored & {"cadx", "db", "pages", "app.py", "serve.py", ".streamlit", "requirements.txt"}


def test_the_healthcheck_and_the_entrypoint_are_the_python_module():
    dockerfile = _dockerfile()
    health = re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", dockerfile, re.M).group(1)
    assert '"python", "-m", "cadx.workflows.container", "health"' in health and "curl" not in health
    assert re.search(r'^ENTRYPOINT \["python", "-m", "cadx.workflows.container", "start", "--"\]$', dockerfile, re.M)
    assert "serve.py" in re.search(r"^CMD (.*)$", dockerfile, re.M).group(1)
    assert "useradd --uid 1000" in dockerfile
    # no USER line: the entrypoint starts as root to read root-only secrets, then drops to uid 1000 itself
    assert not re.search(r"^USER ", dockerfile, re.M)


def _health(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CADX_DATA_DIR=str(data_dir), CADX_APP_USER=pwd.getpwuid(
        os.geteuid()).pw_name)
    env.pop("CADX_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "cadx.workflows.container", "health", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_the_healthcheck_fails_when_the_database_cannot_be_opened(workspace_cache, tmp_path):
    data, _ = workspace_cache.data_dir(tmp_path / "good", import_demo, n_lesions=4, seed=1)
    done = _health(data)
    assert done.returncode == 0 and "healthy" in done.stdout, done.stderr

    missing = tmp_path / "empty"
    missing.mkdir()
    done = _health(missing)
    assert done.returncode == 1 and f"no database at {missing / 'cadx.sqlite'}" in done.stderr
    assert not (missing / "cadx.sqlite").exists()  # the check never creates one

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cadx.sqlite").write_bytes(b"this is not a database" * 100)
    done = _health(broken)
    assert done.returncode == 1 and "cannot open the database" in done.stderr and "not a database" in done.stderr

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _health(data, "--url", f"http://127.0.0.1:{port}/_stcore/health")
    assert done.returncode == 1 and "does not answer" in done.stderr
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _health(data, "--url", f"http://127.0.0.1:{server.server_address[1]}/_stcore/health")
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------------- item 13 ---
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root (as in the image)")
APP_USER = "nobody"  # stands in for the image's cadx (uid 1000): any unprivileged user
# what the app's command sees: its uid and groups, the secret through the variable, the copy's owner and mode,
# whether the original root-only file is readable
PROBE = ('id -u; id -G; cat "$CADX_ADMIN_PASSWORD_FILE"; stat -c "%u %a" "$CADX_ADMIN_PASSWORD_FILE"; '
         'cat "$ORIGINAL" >/dev/null 2>&1 && echo original-readable || echo original-unreadable')


@pytest.fixture
def app_data_dir():
    """A data directory the app's user owns, somewhere that user can reach (not under root's 0700 tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="cadx-entrypoint-"))
    os.chmod(path, 0o700)
    account = pwd.getpwnam(APP_USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(data_dir: Path, secret: Path | None, *command: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CADX_DATA_DIR=str(data_dir), CADX_APP_USER=APP_USER,
               **env_vars)
    env.pop("CADX_DATABASE_URL", None)
    env.pop("CADX_BACKUP_KEY_FILE", None)
    if secret is not None:
        env.update(CADX_ADMIN_PASSWORD_FILE=str(secret), ORIGINAL=str(secret))
    return subprocess.run([sys.executable, "-m", "cadx.workflows.container", "start", "--", *command], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def _root_secret(path: Path, content: str) -> Path:
    path.write_text(content)
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)
    return path


@needs_root
def test_a_root_only_secret_reaches_the_app_running_unprivileged(app_data_dir, tmp_path):
    secret = _root_secret(tmp_path / "cadx_admin", PASSWORD + "\n")
    done = _start(app_data_dir, secret, "/bin/sh", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    account = pwd.getpwnam(APP_USER)
    uid, groups, password, owner_mode, original = done.stdout.splitlines()
    assert int(uid) == account.pw_uid and "0" not in groups.split()  # no root group either
    assert password == PASSWORD
    assert owner_mode == f"{account.pw_uid} 400" and original == "original-unreadable"
    # the start opened the workspace as the app's user and created the first admin from the secret
    database = app_data_dir / "cadx.sqlite"
    assert database.stat().st_uid == account.pw_uid
    from cadx.workflows import open_workspace
    from cadx.workflows.accounts import authenticate

    workspace = open_workspace(app_data_dir)
    try:
        assert authenticate(workspace, "admin", PASSWORD).role == "admin"
    finally:
        workspace.engine.dispose()


@needs_root
def test_a_secret_the_start_cannot_use_fails_it_with_the_reason(app_data_dir, tmp_path):
    marker = tmp_path / "ran"
    command = ("/bin/sh", "-c", f"touch {marker}")
    missing = tmp_path / "no-such-secret"
    done = _start(app_data_dir, missing, *command)
    assert done.returncode == 2 and not marker.exists()
    assert (f"cadx: cannot start: CADX_ADMIN_PASSWORD_FILE={missing}: cannot read it (No such file or directory)"
            in done.stderr)

    done = _start(app_data_dir, _root_secret(tmp_path / "empty", "\n"), *command)
    assert done.returncode == 2 and "the file is empty" in done.stderr and not marker.exists()

    done = _start(app_data_dir, _root_secret(tmp_path / "short", "short\n"), *command)
    assert done.returncode == 2 and "shorter than 10" in done.stderr and not marker.exists()

    # a data volume the app's user cannot write: said at the start, not as "Permission denied" on the page
    os.chown(app_data_dir, 0, 0)
    done = _start(app_data_dir, _root_secret(tmp_path / "good", PASSWORD), *command)
    assert done.returncode == 2 and f"CADX_DATA_DIR={app_data_dir}: uid" in done.stderr and "chown" in done.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- the real image ---
def test_docker_smoke():
    """scripts/docker-smoke.sh: build, start, health, sign-in required, stop (skipped without a container engine)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "docker-smoke.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    if done.returncode == 0 and done.stdout.startswith("skipped: "):
        pytest.skip(done.stdout.strip().removeprefix("skipped: "))
    assert done.returncode == 0 and "ok: build, start, health, sign-in required, stop" in done.stdout, (
        done.stdout[-4000:] + done.stderr[-4000:])
