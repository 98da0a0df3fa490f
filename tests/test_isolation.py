"""The suite and the commands stay inside their own workspace (issue 26): the test suite never touches the user's
database or data directory, whatever the shell that runs it has set."""

from __future__ import annotations

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
