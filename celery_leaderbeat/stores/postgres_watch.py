"""A standby's ``LISTEN`` for one PostgreSQL lease's releases (see celery_leaderbeat.watch).

The SQL stores on PostgreSQL (``postgresql://`` and ``django://`` on a
PostgreSQL database) ``NOTIFY`` the lease's channel when they let it go: in
the releasing transaction for a graceful release, right after the renewal
that answers a step-down. A standby listens on one psycopg 3 connection of
its own, in autocommit (a notification reaches a listener only between its
transactions). Notifications sent while it is not connected are lost, so
the watch reports "look now" every time it (re)starts listening.

``NOTIFY`` does not pass PgBouncer in transaction (or statement) pooling:
the ``LISTEN`` lands on a server connection that is handed to someone else
after it. Standbys behind such a pooler are never told and take over at
the fallback pace, once per lease TTL at the most; point them at the
database directly (or a session-pooled port), or set ``leaderbeat_push``
to False to keep the retry pace.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import psycopg
from psycopg import sql

from ..lease import StoreUnavailable

__all__ = ["Listener", "PostgresReleaseWatch"]

#: A new connection of the watch's own, and how to close it (raises StoreUnavailable).
Listener = Callable[[], "tuple[psycopg.Connection[Any], Callable[[], None]]"]


class PostgresReleaseWatch:
    """Waits for a ``NOTIFY`` on ``channel`` (a :class:`~celery_leaderbeat.watch.ReleaseWatch`)."""

    def __init__(self, connect: Listener, channel: str) -> None:
        self.connect = connect
        self.channel = channel
        self._connection: psycopg.Connection[Any] | None = None
        self._close: Callable[[], None] | None = None

    def wait(self, timeout: float) -> bool:
        if self._connection is None:
            self._listen()
            return True
        try:
            for _ in self._connection.notifies(timeout=timeout, stop_after=1):
                return True
        except (psycopg.Error, OSError):
            # Whatever was notified while the connection was down is lost:
            # listen again, then have the standby look.
            self.close()
            self._listen()
            return True
        return False

    def _listen(self) -> None:
        connection, close = self.connect()
        try:
            connection.autocommit = True
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except (psycopg.Error, OSError) as exc:
            close()
            raise StoreUnavailable(f"cannot LISTEN for releases: {type(exc).__name__}: "
                                   f"{str(exc).strip()}") from exc
        self._connection, self._close = connection, close

    def close(self) -> None:
        close, self._connection, self._close = self._close, None, None
        if close is not None:
            with contextlib.suppress(psycopg.Error, OSError):  # gone either way
                close()

    def __repr__(self) -> str:
        return f"PostgresReleaseWatch({self.channel!r})"
