"""Engines, sessions and schema upgrades.

``init_db`` brings any database (SQLite file or PostgreSQL) to the newest Alembic revision; the app and the CLI call
it on start, so a fresh data directory and an old one behave the same.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["create_db_engine", "init_db", "session_factory", "alembic_config"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
    """Create or upgrade the schema of ``engine``'s database to the newest migration."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; use one ``with factory() as session:`` per unit of work."""
    return sessionmaker(engine, expire_on_commit=False)
