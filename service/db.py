"""Engines for SQLite and PostgreSQL: URL normalisation, SQLite pragmas, write transactions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

# A connection opened with this execution option begins a write transaction; on SQLite that is
# BEGIN IMMEDIATE, so the write lock is taken up front and waits in the busy handler instead of
# failing with "database is locked" when a read snapshot cannot be upgraded to a write.
WRITE_OPTION = "lrtune_write"


def normalise_url(url: str) -> URL:
    """`postgresql://user@host/db` as users write it -> the installed driver (psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The file behind a SQLite URL; None for in-memory databases and other backends."""
    parsed = url if isinstance(url, URL) else make_url(url)
    if not is_sqlite(parsed) or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def make_engine(
    url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 10, echo: bool = False
) -> Engine:
    """An engine for `url`; creating it opens no connection."""
    parsed = normalise_url(url)
    if is_sqlite(parsed):
        return _sqlite_engine(parsed, busy_timeout_ms=busy_timeout_ms, echo=echo)
    return create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )


def _sqlite_engine(url: URL, *, busy_timeout_ms: int, echo: bool) -> Engine:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        # sqlite3's own timeout is the busy handler for the connect itself.
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not open transactions behind our back: we emit BEGIN ourselves (below),
        # which is the only way to choose BEGIN IMMEDIATE for writes.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if path is not None:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
