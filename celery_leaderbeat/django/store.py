"""The ``django://[alias]`` elector: the lease in the Django database.

Same statements as the SQLAlchemy store (:mod:`celery_leaderbeat.stores.lease_tables`),
run on Django's own connection for ``alias`` (``default`` when omitted), so
a Django project needs neither Redis nor SQLAlchemy. The tables come from
this app's migration; until it has run, every attempt fails with a message
naming the command, and the replica stays a standby that keeps retrying.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.utils import Error, ProgrammingError

from ..lease import ClaimRejected, StoreMisconfigured, StoreUnavailable
from ..settings import LeaderSettings, improperly_configured
from ..stores.lease_tables import (
    DIALECTS,
    LeaseTableMissing,
    LeaseTables,
    SqlSession,
    refuses_replica,
    refuses_value,
)

if TYPE_CHECKING:
    from ..watch import ReleaseWatch

__all__ = ["DjangoLeaseStore"]

logger = logging.getLogger("celery.beat.leaderbeat")

APP = "celery_leaderbeat.django"


class _Cursor:
    """A Django cursor lent to the statements (Django takes ``%s`` on every backend)."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        self.cursor.execute(sql, list(params))
        return int(self.cursor.rowcount)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.cursor.execute(sql, list(params))
        return [tuple(row) for row in self.cursor.fetchall()]


class DjangoLeaseStore(LeaseTables):
    """A lease and its run history in this app's tables on one Django database."""

    def __init__(self, name: str, alias: str = DEFAULT_DB_ALIAS) -> None:
        from django.apps import apps

        if not apps.is_installed(APP):
            improperly_configured("leaderbeat_elector", (
                f"django:// needs {APP!r} in INSTALLED_APPS (and "
                "`python manage.py migrate celery_leaderbeat`)"))
        from .models import Lease, LeaseReplica, LeaseRun

        connection = connections[alias]
        if connection.vendor not in DIALECTS:
            improperly_configured("leaderbeat_elector", (
                f"django://{alias}: the {connection.vendor} backend is not supported; "
                "use PostgreSQL, MySQL/MariaDB or SQLite"))
        self.alias = alias
        self.dialect = connection.vendor
        super().__init__(name, Lease._meta.db_table, LeaseRun._meta.db_table,
                         LeaseReplica._meta.db_table, connection.ops.quote_name)
        self.description = f"django://{alias}"
        self._told_missing = False

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> DjangoLeaseStore:
        """``django://`` for the default database, ``django://<alias>`` for another."""
        from django.conf import settings as django_settings

        alias = urlsplit(url).netloc or DEFAULT_DB_ALIAS
        if alias not in django_settings.DATABASES:
            known = ", ".join(sorted(django_settings.DATABASES))
            improperly_configured("leaderbeat_elector",
                                  f"{url!r}: no database {alias!r} in DATABASES (has {known})")
        return cls(settings.lease_name, alias)

    @contextlib.contextmanager
    def _session(self, atomic: bool) -> Iterator[SqlSession]:
        connection = connections[self.alias]
        try:
            if atomic:
                with transaction.atomic(using=self.alias), connection.cursor() as cursor:
                    yield _Cursor(cursor)
            else:
                with connection.cursor() as cursor:
                    yield _Cursor(cursor)
        except Error as error:
            if refuses_value(error.__cause__ or error):
                raise ClaimRejected(f"{type(error).__name__}: {error}".strip()) from error
            raise self._unavailable(connection, error) from error
        except UnicodeError as error:  # a name the driver cannot encode (a lone surrogate)
            raise ClaimRejected(f"{type(error).__name__}: {error}") from error

    def _unavailable(self, connection: Any, error: Error) -> StoreUnavailable:
        if not connection.in_atomic_block:
            connection.close()  # reconnect on the next attempt
        reason = f"{type(error).__name__}: {error}".strip()
        if refuses_replica(error.__cause__ or error):
            return StoreMisconfigured(reason, f"DATABASES[{self.alias!r}]")
        if isinstance(error, ProgrammingError) or "no such table" in str(error):
            with contextlib.suppress(Error):
                existing = set(connection.introspection.table_names())
                tables = (self.lease_table, self.run_table, self.replica_table)
                missing = [t for t in tables if t not in existing]
                if missing:
                    return self._missing(missing)
        return StoreUnavailable(reason)

    def _missing(self, tables: list[str]) -> LeaseTableMissing:
        database = "" if self.alias == DEFAULT_DB_ALIAS else f" --database {self.alias}"
        problem = LeaseTableMissing(
            f"table {', '.join(tables)} missing in the Django database {self.alias!r}: "
            f"run `python manage.py migrate celery_leaderbeat{database}`",
            f"DATABASES[{self.alias!r}]")
        if not self._told_missing:  # the scheduler logs reasons at INFO; this one is an error
            self._told_missing = True
            logger.error("leaderbeat: %s", problem)
        return problem

    def release_watch(self) -> ReleaseWatch | None:
        """On PostgreSQL with psycopg 3, a ``LISTEN`` on a raw connection of its own,
        built from the alias's DATABASES settings; elsewhere None (no push)."""
        connection = connections[self.alias]
        if self.dialect != "postgresql" or connection.Database.__name__ != "psycopg":
            return None
        from ..stores.postgres_watch import PostgresReleaseWatch

        return PostgresReleaseWatch(self._listener, self.release_channel)

    def _listener(self) -> tuple[Any, Callable[[], None]]:
        """A psycopg connection Django does not manage (nor close behind our back)."""
        wrapper = connections[self.alias]
        try:
            raw = wrapper.get_new_connection(wrapper.get_connection_params())
        except Exception as error:  # Django's errors, and the driver's own (psycopg's)
            raise StoreUnavailable(f"{type(error).__name__}: {error}".strip()) from error
        return raw, raw.close

    def close(self) -> None:
        connection = connections[self.alias]
        if not connection.in_atomic_block:
            connection.close()

    def __repr__(self) -> str:
        return f"DjangoLeaseStore({self.description}, name={self.name!r})"
