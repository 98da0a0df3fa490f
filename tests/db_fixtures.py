"""Database fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``CADX_TEST_POSTGRES_URL`` (``scripts/test.sh`` starts one on loopback). Without it the
PostgreSQL variants skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from cadx.workflows import open_workspace
from db.models import Base
from db.session import create_db_engine


def _postgres_url() -> str:
    url = os.environ.get("CADX_TEST_POSTGRES_URL")
    if url:
        return url
    reason = "PostgreSQL not configured: set CADX_TEST_POSTGRES_URL (scripts/test.sh starts one as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " - under CI=true the PostgreSQL tests must run")
    pytest.skip(reason)


def _reset_postgres(url: str) -> None:
    engine = create_db_engine(url)
    with engine.begin() as connection:
        Base.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cadx.sqlite'}"
    url = _postgres_url()
    _reset_postgres(url)
    return url


@pytest.fixture
def workspace(tmp_path, database_url):
    """A fresh workspace: a data directory and an empty, migrated database."""
    ws = open_workspace(tmp_path / "data", database_url)
    yield ws
    ws.engine.dispose()
