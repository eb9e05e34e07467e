"""Lease store in an SQL database through SQLAlchemy: PostgreSQL, MySQL/MariaDB, SQLite.

For teams that run a database but no Redis. The statements, and the
arguments why racing replicas can never both hold the lease, are in
:mod:`.lease_tables`; this module connects, maps URLs to drivers and creates
the tables (``leaderbeat_sql_table``, ``<that>_runs`` and ``<that>_replicas``)
on first use.

Tables made by celery-leaderbeat 0.1 keyed rows by the names themselves
(VARCHAR(191)/(255) primary keys, compared by collation). The first replica
that starts finds them and rebuilds each one in place, under a lock only
one replica holds at a time (PostgreSQL: an advisory lock in the one
transaction that rebuilds; MySQL/MariaDB: a named lock; SQLite: the
database's write lock): create the new layout under a temporary name, copy
every row with its keys, swap the names, drop the old table. The others
wait for the lock, find the new layout and go on. PostgreSQL and SQLite
rebuild in one transaction; MySQL swaps both names in one atomic ``RENAME
TABLE``, so a crash leaves either the old table (rebuilt again at the next
start) or the new one. Run records and leases are kept; heartbeat rows are
not copied (every replica writes its own again within a retry interval).
Replicas of the old version still running then fail every statement and
stay standbys: upgrade all replicas together.

URLs: ``postgresql://`` and ``postgres://`` use psycopg 3, ``mysql://`` and
``mariadb://`` use PyMySQL, ``sqlite:///relative.db`` or
``sqlite:////absolute/path.db`` the standard library; an explicit
``+driver`` is kept as given. SQLite is for replicas on one host without a
server: every replica must open the same file.

Short connect and lock timeouts are the default, so a tick never waits long
on an unreachable or stuck database; ``leaderbeat_sql_engine_options``
overrides them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

import sqlalchemy as sa
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import event, exc
from sqlalchemy.dialects import mysql

from ..lease import ClaimRejected, StoreMisconfigured, StoreUnavailable
from ..settings import LeaderSettings, improperly_configured
from .lease_tables import (
    DIALECTS,
    LeaseTables,
    SqlSession,
    name_key,
    refuses_replica,
    refuses_value,
)

if TYPE_CHECKING:
    from ..watch import ReleaseWatch

__all__ = ["SqlLeaseStore", "engine_url", "lease_metadata"]

logger = logging.getLogger("celery.beat.leaderbeat")

#: Scheme as users write it -> SQLAlchemy's, with the driver we install.
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "sqlite": "sqlite",
}

#: SQLAlchemy dialect name -> the dialect of our statements.
STATEMENT_DIALECTS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql",
                      "sqlite": "sqlite"}


def engine_url(url: str) -> str:
    """Give driverless URLs the driver we install, so users need not know its name."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        improperly_configured("leaderbeat_elector", f"{maybe_sanitize_url(url)!r} is not a URL")
    if "+" in scheme:
        return url
    driver = DRIVERS.get(scheme.lower())
    if driver is None:
        improperly_configured("leaderbeat_elector",
                              f"no SQL driver for {scheme}://; use one of {', '.join(DRIVERS)}")
    return f"{driver}://{rest}"


#: The key of a name (lease_tables.name_key): 64 hex digits, equal under every collation.
KEY = sa.String(64)
#: A name kept whole and exactly: unbounded text (LONGTEXT on MySQL, whose TEXT stops at 64 KiB).
NAME = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
#: MySQL/MariaDB: 4-byte UTF-8 (emoji) in every text column, whatever the server's default.
TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def lease_metadata(lease_table: str, run_table: str, replica_table: str) -> sa.MetaData:
    """The three tables, as the statements in :mod:`.lease_tables` expect them."""
    metadata = sa.MetaData()
    sa.Table(
        lease_table, metadata,
        sa.Column("lease_key", KEY, primary_key=True),
        sa.Column("lease_name", NAME, nullable=False),
        sa.Column("owner", NAME),
        sa.Column("holder", NAME),
        sa.Column("term", sa.BigInteger, nullable=False, server_default="0"),
        # Epoch seconds on the database's clock.
        sa.Column("acquired_at", sa.Float(53)),
        sa.Column("renewed_at", sa.Float(53)),
        sa.Column("expires_at", sa.Float(53)),
        sa.Column("transitions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_holder_key", KEY),
        sa.Column("step_down_term", sa.BigInteger),
        # A pause of dispatch and the latest resume (celery_leaderbeat.pause).
        sa.Column("pause", sa.Text),
        sa.Column("pause_expires_at", sa.Float(53)),
        sa.Column("resume", sa.Text),
        sa.Column("resumed_pause", sa.Text),
        **TABLE_OPTIONS,
    )
    sa.Table(
        run_table, metadata,
        sa.Column("lease_key", KEY, primary_key=True),
        sa.Column("entry_key", KEY, primary_key=True),
        sa.Column("entry_name", NAME, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        **TABLE_OPTIONS,
    )
    sa.Table(
        replica_table, metadata,
        sa.Column("lease_key", KEY, primary_key=True),
        sa.Column("replica_key", KEY, primary_key=True),
        sa.Column("replica", NAME, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("beat_at", sa.Float(53), nullable=False),
        sa.Column("expires_at", sa.Float(53), nullable=False),
        **TABLE_OPTIONS,
    )
    return metadata


def _old_lease_row(row: dict[str, Any]) -> dict[str, Any]:
    holder = row.pop("last_holder", None)
    row["lease_key"], row["lease_name"] = name_key(row["name"]), row.pop("name")
    row["last_holder_key"] = None if holder is None else name_key(holder)
    return row


def _old_run_row(row: dict[str, Any]) -> dict[str, Any]:
    row["lease_key"] = name_key(row.pop("lease_name"))
    row["entry_key"] = name_key(row["entry_name"])
    return row


#: The rows of a 0.1 table (keyed by the names) in the current layout, per table:
#: (its key column, which 0.1 lacked; the row converter, None to copy no rows).
_REKEYED = {"lease": ("lease_key", _old_lease_row), "runs": ("entry_key", _old_run_row),
            "replicas": ("replica_key", None)}


def _default_connect_args(dialect: str, ttl: float) -> dict[str, Any]:
    """Fail fast: connect within 2 s, give up lock waits well inside one TTL."""
    wait_ms = max(100, int(ttl * 500))
    if dialect == "postgresql":
        # A replica paused inside a transaction is cut off by the server after one
        # TTL, so its row lock cannot hold the lease hostage.
        return {"connect_timeout": 2, "options": (
            f"-c lock_timeout={wait_ms} "
            f"-c idle_in_transaction_session_timeout={max(1000, int(ttl * 1000))}")}
    if dialect == "mysql":
        return {"connect_timeout": 2, "read_timeout": max(1.0, ttl),
                "write_timeout": max(1.0, ttl),
                "init_command": "SET SESSION innodb_lock_wait_timeout = "
                                f"{max(1, math.ceil(ttl / 2))}"}
    return {"timeout": max(0.1, ttl / 2)}  # SQLite's busy timeout


class _Connection:
    """An SQLAlchemy connection lent to the statements (DB-API positional parameters)."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        return int(self.connection.exec_driver_sql(sql, tuple(params)).rowcount)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.connection.exec_driver_sql(sql, tuple(params))]


#: create_all attempts when racing other replicas that create the same tables.
CREATE_ATTEMPTS = 5


class SqlLeaseStore(LeaseTables):
    """A lease and its run history in two tables of one SQL database."""

    def __init__(self, engine: sa.Engine, name: str, table: str = "leaderbeat_lease",
                 *, description: str | None = None) -> None:
        dialect = STATEMENT_DIALECTS.get(engine.dialect.name)
        if dialect is None:
            improperly_configured("leaderbeat_elector", (
                f"the {engine.dialect.name} database is not supported; "
                f"use PostgreSQL, MySQL/MariaDB or SQLite ({', '.join(DIALECTS)})"))
        self.dialect = dialect
        self.engine = engine
        self.paramstyle = "qmark" if engine.dialect.paramstyle == "qmark" else "format"
        preparer = engine.dialect.identifier_preparer
        super().__init__(name, table, f"{table}_runs", f"{table}_replicas", preparer.quote)
        self.metadata = lease_metadata(self.lease_table, self.run_table, self.replica_table)
        self.description = description or maybe_sanitize_url(str(engine.url))
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._tables_ready = False

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> SqlLeaseStore:
        """Build the store lazily: nothing connects until the first operation."""
        target = engine_url(url)
        options = dict(settings.sql_engine_options)
        backend = target.split("://")[0].split("+")[0].lower()
        dialect = STATEMENT_DIALECTS.get(backend, backend)
        options["connect_args"] = {**_default_connect_args(dialect, settings.timing.ttl),
                                   **options.get("connect_args", {})}
        try:
            engine = sa.create_engine(target, **options)
        except ImportError as error:
            improperly_configured("leaderbeat_elector", (
                f"{url.split(':')[0]}:// needs its database driver ({error}); install "
                "celery-leaderbeat[postgresql] or celery-leaderbeat[mysql]"))
        except (exc.ArgumentError, TypeError, ValueError) as error:
            improperly_configured("leaderbeat_elector",
                                  f"cannot use {maybe_sanitize_url(url)!r}: {error}")
        if engine.dialect.name == "sqlite":
            event.listen(engine, "begin", _begin_immediate)
        safe = maybe_sanitize_url(url)
        return cls(engine, settings.lease_name, settings.sql_table,
                   description=f"{safe} (table {settings.sql_table})")

    @contextlib.contextmanager
    def _session(self, atomic: bool) -> Iterator[SqlSession]:
        try:
            if not self._tables_ready:
                self.create_tables()
            if atomic:
                with self.engine.begin() as connection:
                    yield _Connection(connection)
            else:
                with self._autocommit.connect() as connection:
                    yield _Connection(connection)
        except exc.SQLAlchemyError as error:
            if refuses_value(getattr(error, "orig", None)):
                raise ClaimRejected(_reason(error)) from error
            # Maybe the tables went away: check again (cheaply, once) next time.
            self._tables_ready = False
            if refuses_replica(getattr(error, "orig", None)):
                raise StoreMisconfigured(_reason(error), "leaderbeat_elector") from error
            raise StoreUnavailable(_reason(error)) from error
        except UnicodeError as error:  # a name the driver cannot encode (a lone surrogate)
            raise ClaimRejected(f"{type(error).__name__}: {error}") from error

    def create_tables(self) -> None:
        """Create the lease, run and replica tables unless they exist (safe to race).

        Tables made by 0.1 are rebuilt with name keys (see the module's
        docstring); tables made since get the nullable columns added since.
        """
        for attempt in range(CREATE_ATTEMPTS):
            try:
                self.metadata.create_all(self.engine, checkfirst=True)
                break
            except exc.DBAPIError:
                # Another replica created one of them between our check and our
                # CREATE; each attempt skips the tables that exist by now.
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
        roles = dict(zip((self.lease_table, self.run_table, self.replica_table), _REKEYED))
        for table in self.metadata.sorted_tables:
            key, _ = _REKEYED[roles[table.name]]
            columns = sa.inspect(self.engine).get_columns(table.name)
            if key not in {c["name"] for c in columns}:
                self._rekey(table, roles[table.name])
        self._add_missing_columns()
        self._tables_ready = True

    def _rekey(self, table: sa.Table, role: str) -> None:
        """Rebuild a 0.1 table keyed by names as the current one, under the migration lock."""
        key, convert = _REKEYED[role]
        quote = self.engine.dialect.identifier_preparer.quote
        new, old = f"{table.name}__new", f"{table.name}__old"
        with self._migration_lock() as connection:
            columns = sa.inspect(connection).get_columns(table.name)
            if key in {c["name"] for c in columns}:
                return  # another replica rebuilt it while we waited for the lock
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(new)}")  # a crash's
            rebuilt = table.to_metadata(sa.MetaData(), name=new)
            rebuilt.create(connection)
            if convert is not None:
                rows = connection.exec_driver_sql(f"SELECT * FROM {quote(table.name)}")
                converted = [convert(dict(row)) for row in rows.mappings()]
                if converted:
                    connection.execute(rebuilt.insert(), converted)
            if self.dialect == "mysql":  # DDL commits anyway: swap both names atomically
                connection.commit()
                connection.exec_driver_sql(f"RENAME TABLE {quote(table.name)} TO {quote(old)}, "
                                           f"{quote(new)} TO {quote(table.name)}")
            else:  # inside the transaction
                connection.exec_driver_sql(
                    f"ALTER TABLE {quote(table.name)} RENAME TO {quote(old)}")
                connection.exec_driver_sql(
                    f"ALTER TABLE {quote(new)} RENAME TO {quote(table.name)}")
            connection.exec_driver_sql(f"DROP TABLE {quote(old)}")
            logger.warning("leaderbeat: rebuilt table %s with name keys (celery-leaderbeat 0.1 "
                           "keyed it by names)", table.name)

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[sa.Connection]:
        """A connection holding the lock that only one migrating replica holds at a time."""
        if self.dialect == "mysql":
            lock = f"leaderbeat:{name_key(self.lease_table)[:40]}"
            with self.engine.connect() as connection:
                got = connection.exec_driver_sql("SELECT GET_LOCK(%s, 10)", (lock,)).scalar()
                if got != 1:
                    raise StoreUnavailable(
                        f"another replica is rebuilding the tables of {self.lease_table}")
                try:
                    yield connection
                    connection.commit()
                finally:
                    connection.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (lock,))
            return
        with self.engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE, the write lock
            if self.dialect == "postgresql":
                lock_id = int(name_key(self.lease_table)[:15], 16)
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
            yield connection

    def _add_missing_columns(self) -> None:
        inspector = sa.inspect(self.engine)
        quote = self.engine.dialect.identifier_preparer.quote
        for table in self.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                ddl = (f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
                       f"{column.type.compile(self.engine.dialect)}")
                try:
                    with self.engine.begin() as connection:
                        connection.exec_driver_sql(ddl)
                except exc.DBAPIError:
                    # Another replica added it first.
                    columns = sa.inspect(self.engine).get_columns(table.name)
                    if column.name not in {c["name"] for c in columns}:
                        raise

    def release_watch(self) -> ReleaseWatch | None:
        """On PostgreSQL, a ``LISTEN`` on a connection of its own; elsewhere None (no push)."""
        if self.dialect != "postgresql" or self.engine.dialect.driver != "psycopg":
            return None
        from .postgres_watch import PostgresReleaseWatch

        return PostgresReleaseWatch(self._listener, self.release_channel)

    def _listener(self) -> tuple[Any, Callable[[], None]]:
        """A connection taken out of the pool for good: closing it discards it."""
        try:
            pooled = self.engine.raw_connection()
        except exc.SQLAlchemyError as error:
            raise StoreUnavailable(_reason(error)) from error
        return pooled.driver_connection, pooled.invalidate

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlLeaseStore({self.description}, name={self.name!r})"


def _begin_immediate(connection: sa.Connection) -> None:
    """SQLite: take the write lock when a transaction starts (never autocommit reads)."""
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _reason(error: exc.SQLAlchemyError) -> str:
    """The driver's own message: SQLAlchemy's adds the SQL text and a link."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {text}"
