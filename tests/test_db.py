"""The schema, its migrations and review events, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from cadx import io as cadx_io
from cadx.errors import CadxInputError
from cadx.workflows import dataset_stats, exclude_roi, include_roi, run_import
from cadx.workflows.importing import Finding
from db.models import Base, ReviewEvent, Roi
from db.session import init_db
from tests.spawned import open_and_count_tables


def test_migrations_build_exactly_the_models(workspace):
    with workspace.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert {"patients", "lesions", "images", "rois", "review_events", "import_runs", "alembic_version"} <= set(
        inspect(workspace.engine).get_table_names())
    init_db(workspace.engine)  # upgrading an up-to-date database is a no-op


def _one_roi(workspace) -> int:
    pixels = np.zeros((600, 600), np.float32)
    pixels[280:320, 280:320] = 1.0
    image = cadx_io.Mammogram(
        pixels=pixels, value_range=(0.0, 1.0), pixel_spacing_mm=(0.1, 0.1), pixel_spacing_source="user",
        source_sha256="a" * 64, source_format="png", modality=None, view="CC", laterality="L",
        photometric="MONOCHROME2", header={}, burned_in_annotation=False, patient_key=None)
    finding = Finding(name="one", image_key="one", load_image=lambda: image, image_name="one.png",
                      patient_source="local", patient_key="P1", lesion_key="L1", label="benign",
                      pathology_source="test", centre_source="test", centre_rc=(300.0, 300.0))
    report = run_import(workspace, [finding], kind="test", source="test", user="tester")
    assert report.committed, report.to_dict()
    return report.items[0].roi_id


def test_exclusion_is_a_review_event_not_a_deletion(workspace):
    roi_id = _one_roi(workspace)
    exclude_roi(workspace, roi_id, reason="compression_paddle", user="alice")
    stats = dataset_stats(workspace)
    assert (stats["rois"], stats["rois_included"], stats["rois_excluded"]) == (1, 0, 1)
    assert stats["excluded_by_reason"] == {"compression_paddle": 1}
    include_roi(workspace, roi_id, user="bob", note="paddle edge is outside the lesion")
    with workspace.sessions() as session:
        roi = session.get(Roi, roi_id)
        assert roi.included and roi.exclusion_reason is None
        events = session.scalars(select(ReviewEvent).where(ReviewEvent.roi_id == roi_id).order_by(ReviewEvent.id)).all()
        assert [(e.user, e.action, e.reason) for e in events] == [
            ("alice", "exclude", "compression_paddle"), ("bob", "include", None)]
        assert events[0].at <= events[1].at


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reason": "blurry"}, "unknown exclusion reason"),
    ({"reason": "other"}, "needs a note"),
    ({"reason": "location_marker", "user": " "}, "no reviewer"),
])
def test_bad_review_input_is_refused_and_records_nothing(workspace, kwargs, message):
    roi_id = _one_roi(workspace)
    kwargs.setdefault("user", "alice")
    with pytest.raises(CadxInputError, match=message):
        exclude_roi(workspace, roi_id, **kwargs)
    with workspace.sessions() as session:
        assert session.scalars(select(ReviewEvent)).all() == []
        assert session.get(Roi, roi_id).included


def test_unknown_roi_is_a_clear_error(workspace):
    with pytest.raises(CadxInputError, match="no such ROI"):
        exclude_roi(workspace, 12345, reason="location_marker", user="alice")


def test_upgrade_from_the_first_revision_keeps_the_data(database_url):
    from alembic import command
    from sqlalchemy import text

    from db.session import alembic_config, create_db_engine

    engine = create_db_engine(database_url)
    config = alembic_config(engine)
    command.upgrade(config, "0001")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO patients (source, key, is_synthetic, created_at) "
                                "VALUES ('local', 'P-old', false, CURRENT_TIMESTAMP)"))
    init_db(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT key FROM patients")).scalars().all() == ["P-old"]
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    command.downgrade(config, "0001")  # every migration can be undone
    assert "experiments" not in inspect(engine).get_table_names()
    engine.dispose()


@pytest.mark.slow
def test_processes_opening_a_new_database_at_once_all_succeed(database_url, tmp_path):
    """The app, its worker and a CLI command may all start on a new database at the same moment: the schema is
    created once, by one of them, and none fails (before the migration lock, 3 of 30 such opens failed)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from alembic.script import ScriptDirectory

    from db.session import alembic_config, create_db_engine

    with ProcessPoolExecutor(max_workers=6, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = list(pool.map(open_and_count_tables, [(str(tmp_path / "data"), database_url)] * 6))
    assert len(set(counts)) == 1 and counts[0] >= len(Base.metadata.tables)
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert current == ScriptDirectory.from_config(alembic_config()).get_current_head() and diff == []


def test_a_database_from_a_newer_cadx_is_refused_untouched(workspace):
    from sqlalchemy import text
    from typer.testing import CliRunner

    from cadx.cli import app
    from cadx.workflows import open_workspace

    with workspace.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    url = workspace.engine.url.render_as_string(hide_password=False)
    with pytest.raises(CadxInputError, match=r"schema revision '0099_from_the_future' is newer than this cadx knows "
                                             r"\(newest '00\d\d[^']*'\); nothing was changed\. Fix: open it with"):
        open_workspace(workspace.data_dir, url)
    result = CliRunner().invoke(app, ["stats", "--data-dir", str(workspace.data_dir)],
                                env={"CADX_DATABASE_URL": url, "CADX_DATA_DIR": str(workspace.data_dir)})
    assert result.exit_code == 2 and "newer than this cadx knows" in result.output and "Traceback" not in result.output
    with workspace.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            "0099_from_the_future"]
        assert "patients" in inspect(connection).get_table_names()
