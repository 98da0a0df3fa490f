"""Engines, sessions and schema upgrades.

``init_db`` brings any database (SQLite file or PostgreSQL) to the newest Alembic revision; the app and the CLI call
it on start, so a fresh data directory and an old one behave the same. Processes starting at once (the app, its
worker, a CLI command) take turns: a lock file beside a SQLite database, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["create_db_engine", "init_db", "session_factory", "alembic_config", "SchemaNewerThanCodeError"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x63616478  # "cadx": the advisory-lock id that serialises schema upgrades on PostgreSQL


class SchemaNewerThanCodeError(RuntimeError):
    """The database carries a schema revision this code does not know: a newer cadx upgraded it."""

    def __init__(self, revision: str | None, head: str | None) -> None:
        self.revision, self.head = revision, head
        super().__init__(f"the database's schema revision {revision!r} is newer than this cadx knows (its newest is "
                         f"{head!r}); use the cadx version that last opened it, or upgrade cadx")


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (other browser sessions) go on while one writer commits; busy_timeout makes a second
    # writer wait for the lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite connections get foreign keys, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic configuration pointing at cadx's migrations (and at ``engine`` when given)."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def init_db(engine: Engine) -> None:
    """Create or upgrade the schema of ``engine``'s database to the newest migration, one process at a time.

    Raises :class:`SchemaNewerThanCodeError`, touching nothing, when a newer cadx has upgraded the database.
    """
    config = alembic_config(engine)
    scripts = ScriptDirectory.from_config(config)
    with _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        current = MigrationContext.configure(connection).get_current_revision()
        if not _known(scripts, current):
            raise SchemaNewerThanCodeError(current, scripts.get_current_head())
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _known(scripts: ScriptDirectory, revision: str | None) -> bool:
    return revision is None or any(r.revision == revision for r in scripts.walk_revisions())


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive lock file beside a SQLite database file (nothing for PostgreSQL or in-memory SQLite)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with FileLock(f"{database}.migrate-lock", timeout=120, mode=0o600):
        yield


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; use one ``with factory() as session:`` per unit of work."""
    return sessionmaker(engine, expire_on_commit=False)
