"""Orphan stored files: ROI, true-outline and segmentation PNGs that no committed row uses.

A killed import or segmentation sweep can leave files it wrote but never committed (and ``.tmp-`` files it was
writing); a killed CNN extraction its ``.tmp-*`` chunk folder in the feature store; a killed restore its staging
folder and the files it had moved into place before its rows were committed. :func:`collect_garbage` (``cadx gc``)
removes them, and reports them; :func:`collect_after_crash`, called when a workspace opens, does so only when a
writer's marker shows that one was killed (one directory listing otherwise). A file that a committed row uses is
never removed, and neither is a file a running writer has not committed yet: collection takes the garbage-collection
lock exclusively, which every writer holds shared while it writes (:func:`cadx.workflows.storage.writing_files`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from cadx.workflows.storage import WRITERS_DIR, lock_writers_folder
from cadx.workflows.workspace import Workspace
from db.models import Base, Roi, Segmentation

__all__ = ["GcReport", "collect_garbage", "collect_after_crash", "GC_FOLDERS", "RESTORE_STAGING_PREFIX",
           "RESTORE_PLACED_FILE", "WORKSPACE_STATE_TABLES", "has_rows", "remove_restored_files"]

GC_FOLDERS = ("rois", "truth", "segmentations")
# Unfinished chunk folders of cadx.cnn.FeatureStore and cadx.roicache.DecodedRoiCache (written by extractions)
_TEMPORARY_FOLDERS = ("features/*/*/*/chunks/.tmp-*", "cache/decoded-rois/.tmp-*")
RESTORE_STAGING_PREFIX = ".tmp-restore-"  # in the data directory: a restore's verified copies of a backup's members
RESTORE_PLACED_FILE = "placed.json"  # in the staging folder: the stored files the restore moves into place


# Rows about the server, not the workspace's content: never backed up or restored, and not what makes a workspace
# "not empty" (a restore target may have seen a sign-in attempt).
WORKSPACE_STATE_TABLES = frozenset({"auth_sessions", "sign_in_attempts"})


def has_rows(workspace: Workspace) -> bool:
    """Whether any content table of the workspace's database (all but :data:`WORKSPACE_STATE_TABLES`) has a row."""
    with workspace.sessions() as session:
        return any(session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables
                   if t.name not in WORKSPACE_STATE_TABLES)


def remove_restored_files(data_dir: Path, staging: Path) -> int:
    """Remove the stored files a restore (staging folder ``staging``) moved into place; how many were there.

    Only for a restore whose rows were not committed: the workspace was empty when it began, so no row uses them.
    """
    try:
        placed = json.loads((staging / RESTORE_PLACED_FILE).read_text())
    except FileNotFoundError:  # it had not placed any
        return 0
    root = data_dir.resolve()
    removed = 0
    for relative in placed:
        path = (root / str(relative)).resolve()
        if path.is_relative_to(root) and path != root and path.is_file():
            path.unlink()
            removed += 1
    return removed


@dataclass
class GcReport:
    """What a collection found: ``orphans`` (and ``temporaries``) removed unless ``dry_run``; ``busy`` when a
    writer was running, so nothing was looked at."""

    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    killed_restores: list[str] = field(default_factory=list)
    in_use: int = 0
    dead_writers: int = 0
    dry_run: bool = False
    busy: bool = False

    @property
    def removed(self) -> list[str]:
        return [] if self.dry_run or self.busy else self.orphans + self.temporaries


def _dead_markers(data_dir: Path) -> list[Path]:
    """Writer markers whose writer is gone (nobody holds their lock)."""
    folder = data_dir / WRITERS_DIR
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    dead = []
    for name in names:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # alive
        finally:
            os.close(fd)
        dead.append(path)
    return dead


def collect_garbage(workspace: Workspace, *, dry_run: bool = False, user: str | None = None) -> GcReport:
    """Remove (or, with ``dry_run``, only list) stored files no committed row uses, and leftover temporaries.

    Temporaries are ``.tmp-*`` files of the stored-file folders and ``.tmp-*`` chunk folders of the feature store.
    What a killed restore left (``killed_restores``: its staging folder and, when its rows were not committed, the
    files it had placed) is removed first and not recorded in the audit trail: that restore wrote no row, and an
    audit event would make the empty workspace non-empty, refusing the restore's retry.
    Every writer holds the garbage-collection lock shared while it works, and this holds it exclusively: so every
    temporary found is a dead writer's.

    Returns immediately with ``busy=True`` when an import or sweep is writing files right now: run it again later.
    A removal is recorded in the audit trail when ``user`` is given.
    """
    report = GcReport(dry_run=dry_run)
    data_dir = workspace.data_dir
    try:
        fd = lock_writers_folder(data_dir, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        report.busy = True
        return report
    try:
        dead = _dead_markers(data_dir)
        report.dead_writers = len(dead)
        restores = sorted(data_dir.glob(f"{RESTORE_STAGING_PREFIX}*"))
        report.killed_restores = [path.name for path in restores]
        if not dry_run and restores:
            committed = has_rows(workspace)  # killed after its commit: only the staging folder is left
            for staging in restores:
                if not committed:
                    remove_restored_files(data_dir, staging)
                shutil.rmtree(staging, ignore_errors=True)
        files = [path for folder in GC_FOLDERS if (data_dir / folder).is_dir()
                 for path in sorted((data_dir / folder).rglob("*")) if path.is_file()]
        with workspace.sessions() as session:
            used = set(session.scalars(select(Roi.file)))
            used |= set(session.scalars(select(Roi.truth_mask_file).where(Roi.truth_mask_file.is_not(None))))
            used |= set(session.scalars(select(Segmentation.mask_file).where(Segmentation.mask_file.is_not(None))))
        for path in files:
            relative = path.relative_to(data_dir).as_posix()
            if path.name.startswith(".tmp-"):
                report.temporaries.append(relative)
            elif relative in used:
                report.in_use += 1
            else:
                report.orphans.append(relative)
        chunk_folders = sorted(path for pattern in _TEMPORARY_FOLDERS for path in data_dir.glob(pattern)
                               if path.is_dir())
        report.temporaries += [path.relative_to(data_dir).as_posix() for path in chunk_folders]
        if not dry_run:
            for relative in report.orphans + report.temporaries:
                path = data_dir / relative
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for marker in dead:
                marker.unlink(missing_ok=True)
            if user is not None and report.removed:
                from cadx.workflows.accounts import record_audit

                with workspace.sessions.begin() as session:
                    record_audit(session, user=user, action="gc", target="stored files",
                                 detail={"orphans": len(report.orphans), "temporaries": len(report.temporaries)})
    finally:
        os.close(fd)
    return report


def collect_after_crash(workspace: Workspace) -> GcReport | None:
    """The cheap check at start: collect only when a writer was killed (its marker is left unlocked)."""
    if not _dead_markers(workspace.data_dir):
        return None
    return collect_garbage(workspace, user="cadx (after an interrupted import or sweep)")
