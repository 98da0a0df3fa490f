"""Backup and restore: every row and file comes back, verified; damaged backups and non-empty targets refused."""

from __future__ import annotations

import tarfile

import pytest
from sqlalchemy import select

from cadx.errors import CadxInputError
from cadx.workflows import exclude_roi, import_demo, open_workspace
from cadx.workflows.backup import backup_workspace, restore_workspace
from tests.test_import_files import _snapshot


def test_backup_restores_every_row_and_file(workspace, tmp_path):
    import_demo(workspace, n_lesions=3, seed=4)
    with workspace.sessions() as session:
        from db.models import Roi

        roi_id = session.scalars(select(Roi.id)).first()
    exclude_roi(workspace, roi_id, reason="location_marker", user="alice")
    manifest = backup_workspace(workspace, tmp_path / "b.tar")
    assert manifest["tables"]["review_events"]["rows"] == 1 and manifest["files"]

    restored = open_workspace(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.sqlite'}")
    restore_workspace(restored, tmp_path / "b.tar")
    rows_before, files_before = _snapshot(workspace)
    rows_after, files_after = _snapshot(restored)
    assert rows_after == rows_before
    assert [f for f in files_after if not f.startswith("pseudonym")] == \
        [f for f in files_before if not f.startswith("pseudonym")]
    for relative in manifest["files"]:
        assert (restored.data_dir / relative).read_bytes() == (workspace.data_dir / relative).read_bytes()
    with pytest.raises(CadxInputError, match="not empty"):
        restore_workspace(restored, tmp_path / "b.tar")
    with pytest.raises(CadxInputError, match="already exists"):
        backup_workspace(workspace, tmp_path / "b.tar")


def test_damaged_backup_is_refused_and_writes_nothing(workspace, tmp_path):
    import_demo(workspace, n_lesions=2, seed=4)
    backup_workspace(workspace, tmp_path / "b.tar")
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(tmp_path / "b.tar") as source, tarfile.open(damaged, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.startswith("files/rois/"):
                data = data[:-1] + bytes([data[-1] ^ 1])  # one flipped bit in an ROI file
            member.size = len(data)
            import io

            target.addfile(member, io.BytesIO(data))
    fresh = open_workspace(tmp_path / "fresh", f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    with pytest.raises(CadxInputError, match="fails its checksum"):
        restore_workspace(fresh, damaged)
    rows, files = _snapshot(fresh)
    assert all(not table_rows for table_rows in rows.values())
    assert not [f for f in files if f.startswith("rois/")]
