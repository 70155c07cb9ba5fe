"""Database connection and migrations for the registry.

``Registry`` owns one SQLAlchemy engine and hands out short transactions. ``open_registry`` runs the
Alembic migrations to head first (under a file lock, so two processes starting together on one
SQLite file do not race), then checks the schema is reachable; a wrong URL becomes a ConfigError
that names the URL and the driver's own message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import ConfigError
from shared.settings import SharedSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers wait instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own BEGIN handling defers locks; "BEGIN IMMEDIATE" makes compare-and-set
        # transactions take the write lock up front so two writers serialise cleanly. Readers
        # (the server's reconcile poll) use a deferred BEGIN so they never queue behind writers.
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, lock_dir: Path, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``; safe to call from several processes at once."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / ".registry-migrate.lock"), timeout=300):
        command.upgrade(alembic_config(url), revision)


class Registry:
    """The registry database: one engine, short transactions via :meth:`session`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = make_engine(url, read_only=True) if self.is_sqlite else self.engine
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction for reads only: on SQLite it takes no write lock. Never write in it."""
        # Closing the session rolls the (autobegun) transaction back: nothing can be written.
        with self._read_sessions() as session:
            yield session

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()


def open_registry(settings: SharedSettings, *, migrate_schema: bool = True) -> Registry:
    url = settings.database_url
    safe_url = make_url(url).render_as_string(hide_password=True)
    try:
        if migrate_schema:
            migrate(url, settings.data_dir)
        registry = Registry(url)
        with registry.engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM alembic_version"))
    except (OperationalError, SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(
            f"cannot open the registry database at {safe_url}: {reason}",
            param="database_url",
            details=["check LORAPLEX_DATABASE_URL (host, port, database name, credentials)"],
        ) from exc
    return registry
