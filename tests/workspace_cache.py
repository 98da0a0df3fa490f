"""Build a test workspace once per session, hand out copies: the ``workspace_cache`` fixture (see tests/conftest.py).

Importing the synthetic demo set (phantom rendering, PNG encoding, ROI extraction) or running a small experiment
takes seconds to tens of seconds on a loaded machine, and many tests need the same one. ``WorkspaceCache`` runs a
*build* (any ``build(workspace, **kwargs)``, e.g. :func:`cadx.workflows.import_demo`) once per (build, kwargs) into a
template SQLite workspace, then gives each test its own copy of the template, so tests stay independent (a test may
change its copy freely) and the product code that built it is the real one:

* ``cache.fill(workspace, build, **kwargs)``: copy the template's rows and files into ``workspace``, which must be
  empty (a fresh ``workspace`` fixture: SQLite or PostgreSQL). Returns a copy of what ``build`` returned (e.g. the
  ``ImportReport``). Drop-in for ``build(workspace, **kwargs)``.
* ``cache.data_dir(dest, build, **kwargs)``: a new SQLite data directory at ``dest`` holding a copy of the template
  (for AppTest and the browser tests, which open ``CADX_DATA_DIR``). Returns ``(dest, result)``.

Under pytest-xdist the workers share the templates (the cache's root is the run's common temporary folder): the first
worker that needs a template builds it under a file lock, the others wait and copy it; a build is written to a
temporary folder and renamed into place only when it succeeded, with what it returned pickled beside it.

A build must depend on nothing but its arguments (not on a test's monkeypatching); give different builds different
function names (the key is the function's module, qualified name and keyword arguments). Tests of the build itself
(``tests/test_demo.py`` for ``import_demo``) call it directly. Builds several test modules share are here
(:func:`demo_experiment`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import func, insert, select, text

from cadx.workflows import Workspace, open_workspace
from db.models import Base
from db.session import create_db_engine

__all__ = ["SMALL_SWEEP", "WorkspaceCache", "demo_experiment", "demo_with_features"]

_DB_FILE = "cadx.sqlite"
# per-installation and per-process state a copy must not take from the template (the pseudonym key is copied: the
# template's rows were made with it)
_NOT_COPIED = {_DB_FILE, f"{_DB_FILE}-wal", f"{_DB_FILE}-shm", f"{_DB_FILE}-journal", f"{_DB_FILE}.migrate-lock",
               ".import.lock", ".writers",
               "backup.key"}


class WorkspaceCache:
    """Templates of built workspaces under ``root`` (one per build and keyword arguments, built on first use; ``root``
    may be shared by several processes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._templates: dict[str, tuple[Path, Any]] = {}

    def _template(self, build: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Path, Any]:
        key = f"{build.__module__}.{build.__qualname__} {sorted(kwargs.items())!r}"
        if key not in self._templates:
            folder = self.root / f"{build.__name__}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
            with FileLock(f"{folder}.lock"):  # one process builds, the others wait for it
                if not (folder / "result.pickle").exists():
                    self._build(folder, build, kwargs)
            with open(folder / "result.pickle", "rb") as stored:
                self._templates[key] = (folder / "data", pickle.load(stored))
        return self._templates[key]

    @staticmethod
    def _build(folder: Path, build: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Build into a temporary folder; rename it to ``folder`` only when the build and its pickle succeeded."""
        partial = folder.with_name(folder.name + f".building-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        data = partial / "data"
        workspace = open_workspace(data, f"sqlite:///{data / _DB_FILE}")
        try:
            result = build(workspace, **kwargs)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finally:
            workspace.engine.dispose()
        (partial / "result.pickle").write_bytes(pickle.dumps(result))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)

    def data_dir(self, dest: str | Path, build: Callable[..., Any], **kwargs: Any) -> tuple[Path, Any]:
        """A new SQLite data directory ``dest`` (must not exist) with a copy of ``build(workspace, **kwargs)``."""
        template, result = self._template(build, kwargs)
        dest = Path(dest)
        shutil.copytree(template, dest, ignore=lambda _dir, names: [n for n in names if n in _NOT_COPIED])
        _copy_sqlite(template / _DB_FILE, dest / _DB_FILE)
        return dest, copy.deepcopy(result)

    def fill(self, workspace: Workspace, build: Callable[..., Any], **kwargs: Any) -> Any:
        """Put a copy of ``build(workspace, **kwargs)`` into the EMPTY ``workspace`` (any database); returns a copy
        of what the build returned."""
        template, result = self._template(build, kwargs)
        with workspace.engine.connect() as connection:
            used = [t.name for t in Base.metadata.sorted_tables
                    if connection.scalar(select(func.count()).select_from(t))]
        if used:
            raise ValueError(f"WorkspaceCache.fill needs an empty workspace; {workspace.data_dir} has rows in {used}: "
                             f"call {build.__name__} itself there")
        for entry in template.iterdir():
            if entry.name in _NOT_COPIED:
                continue
            if entry.is_dir():
                shutil.copytree(entry, workspace.data_dir / entry.name, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, workspace.data_dir / entry.name)
        source = create_db_engine(f"sqlite:///{template / _DB_FILE}")
        try:
            with source.connect() as reading, workspace.engine.begin() as writing:
                for table in Base.metadata.sorted_tables:
                    rows = [dict(row._mapping) for row in reading.execute(select(table))]
                    if rows:
                        writing.execute(insert(table), rows)
                if writing.dialect.name == "postgresql":  # the id sequences go on after the copied ids
                    for table in Base.metadata.sorted_tables:
                        if "id" in table.columns:
                            writing.execute(text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
        finally:
            source.dispose()
        return copy.deepcopy(result)


def _copy_sqlite(source: Path, dest: Path) -> None:
    """Copy a SQLite database with SQLite's backup API (consistent whatever its WAL holds); owner-only like the
    workspace makes it."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    src, dst = sqlite3.connect(source), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def demo_experiment(workspace: Workspace, *, n_lesions: int, seed: int, settings: dict[str, Any], name: str,
                    user: str = "tester", exclude_first: bool = False, weights_note: bool = False) -> int:
    """The synthetic demo set (``n_lesions``, ``seed``) and one experiment with AlexNet's random weights and
    ``ExperimentSettings(**settings)``; ``exclude_first`` excludes the first ROI (as a location marker) before it.
    Returns the experiment id."""
    from cadx.workflows import exclude_roi, import_demo
    from cadx.workflows.experiments import ExperimentSettings, run_experiment
    from cadx.workflows.features import resolve_backbone, roi_records

    import_demo(workspace, n_lesions=n_lesions, seed=seed)
    if exclude_first:
        exclude_roi(workspace, roi_records(workspace)[0].id, reason="location_marker", user=user)
    loaded, note = resolve_backbone("alexnet", weights="random")
    return run_experiment(workspace, loaded, ExperimentSettings(**settings), name=name, user=user,
                          weights_note=note if weights_note else "")


def demo_with_features(workspace: Workspace, *, n_lesions: int, seed: int, taps: tuple[str, ...]) -> None:
    """The synthetic demo set (``n_lesions``, ``seed``) with AlexNet's ``taps`` (random weights) and the analytic
    features already in the feature stores."""
    from cadx.workflows import import_demo
    from cadx.workflows.features import compute_analytic_features, extract_cnn_features, resolve_backbone

    import_demo(workspace, n_lesions=n_lesions, seed=seed)
    loaded, _ = resolve_backbone("alexnet", weights="random")
    extract_cnn_features(workspace, loaded, taps=list(taps))
    compute_analytic_features(workspace)


# the 12-lesion demo (seed 2) and a sweep of fc7 and fc8 with SVM1 on fc8: the AppTest experiment pages and the browser
# tests' screenshots show it (``cache.data_dir(dest, demo_experiment, **SMALL_SWEEP)``)
SMALL_SWEEP: dict[str, Any] = {
    "n_lesions": 12, "seed": 2, "name": "small sweep", "weights_note": True,
    "settings": {"taps": ("fc7", "fc8"), "ensemble_tap": "fc8", "repeats": 1, "min_lesions_per_class_per_fold": 1},
}
