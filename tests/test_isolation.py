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


# ---------------------------------------------------------------- one data directory, one database (issue 26.2) ---
def _counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, func, select

    from db.models import Base

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {t.name: connection.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    finally:
        engine.dispose()


@pytest.fixture
def workspace_a(tmp_path, workspace_cache):
    """A SQLite workspace with the 2-lesion demo: its data directory and its database's URL."""
    from cadx.workflows import import_demo, open_workspace

    data, _ = workspace_cache.data_dir(tmp_path / "a", import_demo, n_lesions=2, seed=1)
    open_workspace(data).engine.dispose()  # used here once: each side notes where the other is
    return data.resolve(), f"sqlite:///{data.resolve() / 'cadx.sqlite'}"


def _cli(args: list[str], **env: str):
    from typer.testing import CliRunner

    from cadx.cli import app

    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, " ".join(result.output.split())


def test_a_new_data_dir_with_another_workspaces_database_is_refused_with_the_fix(tmp_path, workspace_a):
    # `cadx ... --data-dir D` with CADX_DATABASE_URL pointing at workspace A's database wrote A's rows for files in D
    data_a, url_a = workspace_a
    before = _counts(url_a)
    code, output = _cli(["demo", "--lesions", "2", "--seed", "3", "--data-dir", str(tmp_path / "d")],
                        CADX_DATABASE_URL=url_a)
    assert code == 2, output
    assert f"this database belongs to the workspace whose files were in {data_a}" in output
    assert f"use --data-dir {data_a}" in output and "unset CADX_DATABASE_URL" in output
    assert _counts(url_a) == before and not (tmp_path / "d").exists()  # nothing written on either side
    # the fix works: D with its own database; A with its own
    assert _cli(["demo", "--lesions", "2", "--seed", "3", "--data-dir", str(tmp_path / "d")])[0] == 0
    assert _cli(["stats", "--data-dir", str(data_a)], CADX_DATABASE_URL=url_a)[0] == 0


def test_a_data_dir_with_a_database_not_its_own_is_refused_with_the_fix(tmp_path, workspace_a):
    data_a, url_a = workspace_a
    other = tmp_path / "other.sqlite"  # a new database for A's files: they would be orphans (and `cadx gc` food)
    code, output = _cli(["stats", "--data-dir", str(data_a)], CADX_DATABASE_URL=f"sqlite:///{other}")
    assert code == 2, output
    assert "this data directory holds the files of the workspace whose database is" in output
    assert url_a in output and "set CADX_DATABASE_URL to" in output and not other.exists()
    # two recorded workspaces crossed: each name where the other's half is
    data_b, _ = _cli_workspace(tmp_path / "b")
    code, output = _cli(["stats", "--data-dir", str(data_b)], CADX_DATABASE_URL=url_a)
    assert code == 2 and "belong to different workspaces" in output and f"--data-dir {data_a}" in output, output


def _cli_workspace(data):
    assert _cli(["demo", "--lesions", "2", "--seed", "4", "--data-dir", str(data)])[0] == 0
    return data, f"sqlite:///{data / 'cadx.sqlite'}"


def test_a_database_from_before_identities_keeps_its_data_dir(tmp_path, workspace_a):
    # a database upgraded from before workspace identities holds images but no identity: a data directory cadx has
    # never used is refused for it; the directory that holds its files (with its pseudonym key) adopts it
    from sqlalchemy import create_engine, delete

    from db.models import WorkspaceIdentity

    data_a, url_a = workspace_a
    engine = create_engine(url_a)
    with engine.begin() as connection:
        connection.execute(delete(WorkspaceIdentity))
    engine.dispose()
    (data_a / "workspace.json").unlink()
    code, output = _cli(["stats", "--data-dir", str(tmp_path / "new")], CADX_DATABASE_URL=url_a)
    assert code == 2 and "this database holds" in output and "images whose files are not in" in output, output
    assert _cli(["stats", "--data-dir", str(data_a)], CADX_DATABASE_URL=url_a)[0] == 0
    assert (data_a / "workspace.json").exists() and _counts(url_a)["workspace_identity"] == 1


def test_the_app_refuses_a_data_dir_with_another_workspaces_database(tmp_path, monkeypatch, workspace_a):
    from streamlit.testing.v1 import AppTest

    from tests.apptest_support import APP, APP_TIMEOUT, point_app_at

    data_a, url_a = workspace_a
    before = _counts(url_a)
    point_app_at(tmp_path / "d", monkeypatch)
    monkeypatch.setenv("CADX_DATABASE_URL", url_a)
    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    errors = [" ".join(e.value.split()) for e in at.error]
    assert any(f"belongs to the workspace whose files were in {data_a}" in e and "Fix:" in e for e in errors), errors
    assert _counts(url_a) == before and not (tmp_path / "d").exists()  # no demo data created in A's database
