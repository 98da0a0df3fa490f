"""The shared test set-ups (tests/workspace_cache.py, tests/db_fixtures.py): a cached copy holds what the build
itself writes, copies are independent, and every ``workspace`` starts empty with ids from 1, on SQLite and
PostgreSQL."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cadx.workflows import exclude_roi, import_demo, open_workspace
from cadx.workflows.accounts import add_user
from db.models import Base, Lesion, ReviewEvent, Roi, User
from tests.workspace_cache import WorkspaceCache


def _content(workspace) -> list[tuple]:
    with workspace.sessions() as session:
        rows = session.execute(select(Lesion.key, Lesion.label, Roi.sha256, Roi.file, Roi.included)
                               .join(Roi, Roi.lesion_id == Lesion.id).order_by(Roi.sha256)).all()
    return [tuple(r) for r in rows]


def test_a_copy_equals_the_build_and_copies_are_independent(workspace_cache, workspace, tmp_path):
    report = workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=7)
    direct = open_workspace(tmp_path / "direct", f"sqlite:///{tmp_path / 'direct.sqlite'}")
    expected = import_demo(direct, n_lesions=2, seed=7)
    assert report.n_imported == expected.n_imported > 0
    assert _content(workspace) == _content(direct)  # same lesions, labels, ROI pixels and files
    assert all(workspace.path(file).read_bytes() == direct.path(file).read_bytes()
               for _key, _label, _sha, file, _included in _content(direct))
    direct.engine.dispose()

    # this copy is changed (the id sequences go on after the copied rows) ...
    roi_id = workspace.sessions().scalars(select(Roi.id).order_by(Roi.id)).first()
    exclude_roi(workspace, roi_id, reason="location_marker", user="tester")
    add_user(workspace, "ana", "a long enough secret", role="admin", by="setup")
    # ... and the next copy is not
    other, again = workspace_cache.data_dir(tmp_path / "other", import_demo, n_lesions=2, seed=7)
    assert again.n_imported == report.n_imported
    copy = open_workspace(other)
    try:
        assert all(included for *_rest, included in _content(copy))
        assert copy.sessions().scalar(select(func.count()).select_from(ReviewEvent)) == 0
    finally:
        copy.engine.dispose()
    with pytest.raises(ValueError, match="needs an empty workspace"):
        workspace_cache.fill(workspace, import_demo, n_lesions=2, seed=7)


def test_every_workspace_starts_empty_with_ids_from_one(workspace):
    # (after the test above left rows in the same PostgreSQL database: they were truncated, the sequences restarted)
    with workspace.engine.connect() as connection:
        assert {t.name: connection.scalar(select(func.count()).select_from(t))
                for t in Base.metadata.sorted_tables} == dict.fromkeys([t.name for t in Base.metadata.sorted_tables], 0)
    add_user(workspace, "ben", "a long enough secret", role="admin", by="setup")
    assert workspace.sessions().scalar(select(User.id)) == 1


def _counted_build(workspace, *, log: str) -> str:
    """A build that says each time it runs (one line appended to ``log``) and returns a value to share."""
    with open(log, "a") as out:
        out.write("built\n")
    return f"made in {workspace.data_dir.name}"


def _template_in_another_process(root: str, log: str) -> tuple[str, str]:
    data, result = WorkspaceCache(Path(root))._template(_counted_build, {"log": log})
    return str(data), result


def test_processes_sharing_a_cache_build_each_template_once(tmp_path):
    """The pytest-xdist workers share one cache root: of four processes asking for the same template at once, one
    builds it (under the file lock) and all get the same folder and result; no half-built folder is left."""
    log = tmp_path / "builds.log"
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = list(pool.map(_template_in_another_process, [str(tmp_path / "cache")] * 4, [str(log)] * 4))
    assert log.read_text().splitlines() == ["built"]
    assert len(set(got)) == 1 and got[0][1] == "made in data"
    assert not [p.name for p in (tmp_path / "cache").iterdir() if ".building-" in p.name]
