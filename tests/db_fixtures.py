"""Database fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``CADX_TEST_POSTGRES_URL`` (``scripts/test.sh`` starts one on loopback). Without it the
PostgreSQL variants skip with the reason, except under ``CI=true``, where they fail.

``database_url`` is an empty database (no tables: for migration tests); ``workspace`` is an empty, migrated one. The
migration runs once per session and database kind: a SQLite workspace starts from a copy of a migrated template
file; on PostgreSQL, when the schema is still exactly the migrated one (tables, columns, indexes, triggers,
revision), the rows are truncated and the id sequences restarted instead of dropping and migrating again.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from sqlalchemy import create_engine, make_url, text

from cadx.workflows import open_workspace
from db.models import Base
from db.session import create_db_engine

_MIGRATED: dict[str, str] = {}  # PostgreSQL URL -> fingerprint of its freshly migrated schema


def _postgres_url() -> str:
    url = os.environ.get("CADX_TEST_POSTGRES_URL")
    if not url:
        reason = "PostgreSQL not configured: set CADX_TEST_POSTGRES_URL (scripts/test.sh starts one as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " - under CI=true the PostgreSQL tests must run")
        pytest.skip(reason)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return url if not worker else _worker_database(url, worker)


_WORKER_URLS: dict[str, str] = {}


def _worker_database(url: str, worker: str) -> str:
    """Under pytest-xdist each worker gets its own database beside the configured one (``cadx_test_gw0``, ...), made
    on first use, so workers never truncate each other's rows. The role needs CREATEDB (scripts/services.sh)."""
    if url not in _WORKER_URLS:
        base = make_url(url)
        name = f"{base.database}_{worker}"
        engine = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
                if not exists:
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        _WORKER_URLS[url] = base.set(database=name).render_as_string(hide_password=False)
    return _WORKER_URLS[url]


def _reset_postgres(url: str) -> None:
    """Drop everything in the schema: an empty database.

    Everything, not only the tables today's models know: the database outlives a checkout, and a table left by
    another revision of the code (e.g. one a later commit reverted) would otherwise fail the migration tests."""
    engine = create_db_engine(url)
    with engine.begin() as connection:
        for kind, catalogue in (("VIEW", "SELECT viewname FROM pg_views WHERE schemaname = current_schema()"),
                                ("TABLE", "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"),
                                ("SEQUENCE", "SELECT sequencename FROM pg_sequences "
                                             "WHERE schemaname = current_schema()")):
            for name in connection.execute(text(catalogue)).scalars().all():
                connection.execute(text(f'DROP {kind} IF EXISTS "{name}" CASCADE'))
        for signature in connection.execute(text(
                "SELECT p.oid::regprocedure::text FROM pg_proc p "
                "WHERE p.pronamespace = current_schema()::regnamespace")).scalars().all():
            connection.execute(text(f"DROP FUNCTION IF EXISTS {signature} CASCADE"))
    engine.dispose()
    _MIGRATED.pop(url, None)


_FINGERPRINT_SQL = """
SELECT 'c', table_name::text,
       (column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, ''))::text
  FROM information_schema.columns WHERE table_schema = current_schema()
UNION ALL SELECT 'i', tablename::text, indexdef FROM pg_indexes WHERE schemaname = current_schema()
UNION ALL SELECT 't', tgrelid::regclass::text, tgname || ' ' || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal
UNION ALL SELECT 'f', proname::text, md5(prosrc) FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
ORDER BY 1, 2, 3
"""


def _fingerprint(connection) -> str:
    rows = connection.execute(text(_FINGERPRINT_SQL)).all()
    version = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() \
        if any(r[1] == "alembic_version" for r in rows) else []
    return hashlib.sha256(repr((rows, version)).encode()).hexdigest()


def _empty_migrated_postgres(url: str) -> None:
    """Leave the PostgreSQL database at ``url`` migrated and without rows, as cheaply as is safe."""
    known = _MIGRATED.get(url)
    if known is not None:
        engine = create_db_engine(url)
        try:
            with engine.begin() as connection:
                if _fingerprint(connection) == known:
                    names = [t.name for t in Base.metadata.sorted_tables]
                    used = connection.execute(text(" UNION ALL ".join(
                        f"SELECT '{n}' WHERE EXISTS (SELECT 1 FROM {n})" for n in names))).scalars().all()
                    if used:  # TRUNCATE: the audit tables' append-only triggers forbid DELETE
                        connection.execute(text(f"TRUNCATE {', '.join(used)} CASCADE"))
                    connection.execute(text(
                        "SELECT setval(quote_ident(sequence_name), 1, false) FROM information_schema.sequences "
                        "WHERE sequence_schema = current_schema()"))
                    return
        finally:
            engine.dispose()
    _reset_postgres(url)
    engine = create_db_engine(url)
    try:
        from db.session import init_db

        init_db(engine)
        with engine.connect() as connection:
            _MIGRATED[url] = _fingerprint(connection)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_kind(request) -> str:
    """Which database a database test runs on (the test id says it: ``[sqlite]`` or ``[postgresql]``)."""
    return request.param


@pytest.fixture
def database_url(db_kind, tmp_path) -> str:
    """A fresh, empty database (no tables) of each kind."""
    if db_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'cadx.sqlite'}"
    url = _postgres_url()
    _reset_postgres(url)
    return url


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory):
    """A migrated, empty SQLite database file: copied for each ``workspace`` instead of migrating again."""
    data = tmp_path_factory.mktemp("migrated-sqlite")
    workspace = open_workspace(data, f"sqlite:///{data / 'cadx.sqlite'}")
    workspace.engine.dispose()
    return data / "cadx.sqlite"


@pytest.fixture
def workspace(request, db_kind, tmp_path):
    """A fresh workspace: a data directory and an empty, migrated database."""
    if "database_url" in request.fixturenames:  # the test opens that database itself too: keep it the same
        url = request.getfixturevalue("database_url")
    elif db_kind == "sqlite":
        from tests.workspace_cache import _copy_sqlite

        url = f"sqlite:///{tmp_path / 'cadx.sqlite'}"  # beside the data directory, as database_url puts it
        _copy_sqlite(request.getfixturevalue("_migrated_sqlite"), tmp_path / "cadx.sqlite")
    else:
        url = _postgres_url()
        _empty_migrated_postgres(url)
    ws = open_workspace(tmp_path / "data", url)
    yield ws
    ws.engine.dispose()
