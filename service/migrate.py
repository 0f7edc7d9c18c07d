"""Schema migrations through Alembic: upgrade, downgrade, and the check that the schema is at head.

Alembic owns the schema; nothing here calls `create_all`. The migration scripts are found next to
the package (`migrations/`), so the CLI works from any working directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from lrtune.service.db import WRITE_OPTION, is_sqlite, make_engine
from lrtune.service.errors import SchemaOutdatedError, StorageError
from lrtune.service.models import Base
from lrtune.service.settings import Settings
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def upgrade_to_head(url: str) -> str:
    """Apply every migration not yet applied; returns the revision the database is now at."""
    with _connection(url) as connection:
        command.upgrade(alembic_config(connection), "head")
    return head_revision()


def downgrade(url: str, revision: str) -> None:
    """Undo migrations down to `revision` ("base" removes every table lrtune made)."""
    with _connection(url) as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at; None for a database Alembic has never touched."""
    with _connection(url) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_drift(url: str) -> list[object]:
    """Differences between the ORM models and the database's schema (empty: none)."""
    with _connection(url) as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def ensure_schema_current(url: str) -> None:
    """Raise SchemaOutdatedError unless the database's schema is at head."""
    check_revision(current_revision(url))


def check_revision(current: str | None) -> None:
    """Raise SchemaOutdatedError, saying what to do, unless `current` is the head revision."""
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaOutdatedError(
            f"database schema is empty, head is {head}: run `lrtune db upgrade`"
        )
    scripts = ScriptDirectory.from_config(alembic_config())
    if current not in {script.revision for script in scripts.walk_revisions()}:
        raise SchemaOutdatedError(
            f"database schema is at {current}, which this lrtune does not know (head is "
            f"{head}): the database was migrated by a newer lrtune; upgrade lrtune"
        )
    raise SchemaOutdatedError(
        f"database schema is at {current}, head is {head}: run `lrtune db upgrade`"
    )


def prepare_serving_database(settings: Settings) -> None:
    """For `lrtune api`/`serve`: create the schema of an empty database at any URL (as Optuna's
    and MLflow's servers do) and upgrade an embedded SQLite, then check the schema is at head.

    A server database (PostgreSQL) that has a schema is never migrated implicitly: an operator
    decides when its schema changes (`lrtune db upgrade`), so an older one is refused.
    """
    url = settings.resolved_database_url
    if is_sqlite(url):
        upgrade_to_head(url)
    else:
        create_schema_if_empty(url)
    ensure_schema_current(url)


# Any constant of our own: the key of the advisory lock that creates the schema.
_SCHEMA_LOCK_KEY = 0x6C7274756E65  # "lrtune"


def create_schema_if_empty(url: str) -> bool:
    """Apply every migration to a database Alembic has never touched; True if it did.

    On PostgreSQL, API replicas that start together on a new database would race to create the
    tables: a transaction-scoped advisory lock lets the first create them and the others find
    them made (the migrations run inside that same transaction).
    """
    with _connection(url) as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
        if MigrationContext.configure(connection).get_current_revision() is not None:
            return False
        command.upgrade(alembic_config(connection), "head")
    return True


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            if is_sqlite(url):
                _sqlite_foreign_keys_off(connection)
            yield connection.execution_options(**{WRITE_OPTION: True})
            if connection.in_transaction():
                connection.commit()
            if is_sqlite(url):
                _check_sqlite_foreign_keys(connection)
    except SQLAlchemyError as error:
        raise StorageError(f"cannot reach the database: {_first_line(error)}") from error
    finally:
        engine.dispose()


def _sqlite_foreign_keys_off(connection: Connection) -> None:
    """SQLite adds a foreign key by rebuilding the table (Alembic's batch mode), and dropping the
    old `jobs` would cascade into its trials: migrations run with foreign keys off, as SQLite's
    documentation prescribes. The pragma is a no-op inside a transaction, so it goes straight to
    the driver before the migration's transaction begins; the engine is thrown away afterwards."""
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute("PRAGMA foreign_keys=OFF")


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    # With the checks off during the migration, prove afterwards that no reference dangles.
    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    connection.rollback()
    if dangling:
        raise StorageError(f"the migration left dangling foreign keys: {dangling[:5]}")


def _first_line(error: BaseException) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]
