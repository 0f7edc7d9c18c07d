"""Alembic environment: lrtune's models are the target; the URL is lrtune's configured one.

`lrtune.service.migrate` passes an open connection in `config.attributes["connection"]`; run by
hand (`alembic upgrade head`), the URL comes from LRTUNE_DATABASE_URL or the embedded SQLite.
"""

from __future__ import annotations

from alembic import context
from lrtune.service.db import is_sqlite, make_engine
from lrtune.service.models import Base
from lrtune.service.settings import Settings
from sqlalchemy.engine import Connection

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=is_sqlite(connection.engine.url),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _configure(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("lrtune migrations run online only: give a database URL")
run_migrations_online()
