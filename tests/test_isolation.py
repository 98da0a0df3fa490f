"""The suite and the commands stay inside their own workspace (issue 26): the test suite never touches the user's
database or data directory, whatever the shell that runs it has set."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Real tests that open a workspace through the CLI's --data-dir and through the default workspace: on the code before
# issue 26.1 they created tables, rows and files in whatever CADX_DATABASE_URL / CADX_DATA_DIR the shell had set.
_SUBSET = [
    "tests/test_cli.py::test_bad_manifest_exits_nonzero_with_the_fix",
    "tests/test_cli.py::test_unknown_exclusion_reason_is_a_clear_error",
    "tests/test_isolation.py::test_the_default_workspace_inside_the_suite_is_the_suites",
]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) with the SHA-256 of its bytes, and every folder."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[str((Path(root) / name).relative_to(folder)) + "/"] = "folder"
        for name in files:
            path = Path(root) / name
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_the_default_workspace_inside_the_suite_is_the_suites(tmp_path_factory):
    from cadx.workflows import open_workspace

    workspace = open_workspace()  # the default one: in the suite's temporary folder
    try:
        assert tmp_path_factory.getbasetemp().resolve() in workspace.data_dir.parents
        assert workspace.engine.url.database == str(workspace.data_dir / "cadx.sqlite")
    finally:
        workspace.engine.dispose()
    kept = {"CADX_SHARED_DATA", "CADX_CHROMIUM", "CADX_DATA_DIR"}  # CADX_DATA_DIR: the suite's own, set above
    assert not [v for v in os.environ if v.startswith("CADX_") and not v.startswith("CADX_TEST_") and v not in kept]


@pytest.mark.slow
def test_a_sentinel_database_and_data_dir_in_the_environment_stay_untouched(tmp_path):
    # the user's own workspace, as the README has them set it: a database with a row, a data directory with a file
    user = tmp_path / "user"
    user.mkdir()
    sentinel_db = user / "mine.sqlite"
    with sqlite3.connect(sentinel_db) as connection:
        connection.execute("CREATE TABLE sentinel (note TEXT)")
        connection.execute("INSERT INTO sentinel VALUES ('the user''s own rows')")
    connection.close()
    sentinel_dir = user / "data"
    sentinel_dir.mkdir()
    (sentinel_dir / "sentinel.txt").write_text("the user's own files\n")
    before = _tree(user)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CADX_"))}
    env.update(CADX_DATABASE_URL=f"sqlite:///{sentinel_db}", CADX_DATA_DIR=str(sentinel_dir),
               CADX_AUTH="required", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             "--basetemp", str(tmp_path / "suite"), *_SUBSET],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert _tree(user) == before  # byte for byte, and nothing new beside them (no -wal, no keys, no folders)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_SUBSET)} passed" in result.stdout


# Issue 26.2: `cadx … --data-dir D` with CADX_DATABASE_URL naming another workspace's database wrote rows into that
# database and files into D. A database URL from the environment now pairs only with CADX_DATA_DIR's directory.
def _split_workspace_cases(tmp_path: Path) -> tuple[Path, Path, str]:
    home, other = tmp_path / "home", tmp_path / "other"
    from cadx.workflows import open_workspace

    workspace = open_workspace(home)  # a real workspace: its SQLite database is the one named in the environment
    workspace.engine.dispose()
    return home, other, f"sqlite:///{home / 'cadx.sqlite'}"


def _rows(database: Path) -> dict[str, int]:
    # closed here, not at garbage collection: SQLite removes its -wal/-shm files when the last connection closes,
    # and a file vanishing later would race the tree comparison
    with contextlib.closing(sqlite3.connect(database)) as connection:
        names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: connection.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


@pytest.mark.parametrize("data_dir_env", [None, "home"], ids=["CADX_DATA_DIR unset", "CADX_DATA_DIR the database's"])
def test_data_dir_of_another_workspace_than_the_database_is_refused_before_writing(tmp_path, monkeypatch,
                                                                                  data_dir_env):
    from typer.testing import CliRunner

    from cadx.cli import app
    from cadx.errors import CadxInputError
    from cadx.workflows import open_workspace

    home, other, url = _split_workspace_cases(tmp_path)
    before, files_before = _rows(home / "cadx.sqlite"), _tree(home)
    env = {"CADX_DATABASE_URL": url, "CADX_DATA_DIR": str(home) if data_dir_env else None}
    for name, value in env.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    with pytest.raises(CadxInputError, match=r"one workspace split in two; nothing was opened or written\. Fix: "
                                             r"export CADX_DATA_DIR"):
        open_workspace(other)
    result = CliRunner().invoke(app, ["stats", "--data-dir", str(other)], env=env)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "CADX_DATABASE_URL names a database while CADX_DATA_DIR" in said and "unset CADX_DATABASE_URL" in said
    assert "Traceback" not in result.output
    assert not other.exists()  # nothing written into D
    assert _rows(home / "cadx.sqlite") == before and _tree(home) == files_before  # nor into the database's workspace
    if data_dir_env:  # the pair as exported: --data-dir naming the same directory, or no --data-dir, opens it
        assert CliRunner().invoke(app, ["stats", "--data-dir", str(home)], env=env).exit_code == 0
        assert CliRunner().invoke(app, ["stats"], env=env).exit_code == 0
    else:  # without CADX_DATA_DIR the default directory is not paired with the database either
        assert CliRunner().invoke(app, ["stats"], env=env).exit_code == 2


def test_the_app_script_refuses_a_database_url_without_its_data_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADX_")}
    env["CADX_DATABASE_URL"] = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "app.sh")], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert "CADX_DATABASE_URL is set but CADX_DATA_DIR is not" in result.stderr and "Fix:" in result.stderr
    assert not (tmp_path / "elsewhere.sqlite").exists()
