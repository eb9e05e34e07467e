"""Release watches: a standby is told when the lease is let go, instead of asking.

A store that can push implements :class:`PushingStore` beside the
:class:`~celery_leaderbeat.lease.LeaseStore` protocol: ``release_watch()``
opens a :class:`ReleaseWatch` on one dedicated connection of its own (a
Redis subscription, a PostgreSQL ``LISTEN``, a blocking wait on the file
lock, an etcd watch). The store pushes from the very operations that free
the lease: the graceful release and the step-down answered at a renewal
(etcd reports the key's deletion itself, an expiry included). A store without
it (MySQL/MariaDB, SQLite, a third-party store) works exactly as before:
its standbys try every ``retry_interval``.

With a watch, a standby (see :meth:`LeaseElector.wait_for_release
<celery_leaderbeat.lease.LeaseElector.wait_for_release>`) blocks on it
instead of sleeping, and asks the store again when:

- a release is pushed: at once, so a graceful handover takes one push and
  one acquire round trip;
- the lease the store last reported expires (a crashed leader): the acquire
  attempt returns the lease's remaining time (``LeaseRecord.expires_in``),
  and the standby wakes :data:`EXPIRY_MARGIN` after it, counted from when
  the answer arrived, so the attempt lands after the store's expiry and
  takeover takes at most the remaining lease plus one round trip. While a
  leader renews, that is also the pace of the fallback poll: about one
  attempt per TTL (0.2 a second with the defaults), never more than one
  TTL apart (:func:`next_attempt`). A push that is lost (the subscriber was
  disconnected, PgBouncer dropped the ``NOTIFY``) therefore delays a
  handover by one lease at the most;
- the watch was (re)opened: nothing pushed while it was not listening is
  known, so the standby looks once right after, with the watch already in
  place (no window in which a release is missed by both). A watch that
  can replay what it missed (etcd's, from a revision) need not say so.

Pushes are hints, never trusted: every wake-up is an ordinary acquire
attempt, judged atomically by the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .lease import LeaseTiming

__all__ = ["EXPIRY_MARGIN", "PushingStore", "ReleaseWatch", "next_attempt"]

#: Seconds a standby waits past the expiry the store reported before it
#: tries. The remaining time is counted from the arrival of the answer that
#: reported it, which is already after the store measured it, so the wait
#: covers the store's own rounding of expiry to whole milliseconds (Redis
#: ``PTTL``) and the scheduling jitter of a sleeping process. A wake-up
#: that still comes early costs one more round trip, never a takeover: the
#: store reports the few milliseconds left and the standby waits those.
EXPIRY_MARGIN = 0.002


@runtime_checkable
class ReleaseWatch(Protocol):
    """One replica's listening connection to a store that pushes releases."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as the lease may have been let go.

        True when a release or step-down was pushed, or when the watch has
        just (re)opened its connection and what was pushed before is unknown;
        False when the time ran out. Raises ``StoreUnavailable`` when it
        cannot listen (then it waited less than ``timeout``, often not at
        all): it tries to reopen at the next call.
        """
        ...  # pragma: no cover

    def close(self) -> None:
        """Drop the listening connection. Safe to call twice."""
        ...  # pragma: no cover


@runtime_checkable
class PushingStore(Protocol):
    """A lease store that tells standbys when the lease is let go (optional)."""

    def release_watch(self) -> ReleaseWatch | None:
        """A new watch on its own connection, or None when this store cannot push
        (a SQL store on MySQL or SQLite). Connects lazily, at the first wait."""
        ...  # pragma: no cover


def next_attempt(received_at: float, expires_in: float | None, timing: LeaseTiming) -> float:
    """When a listening standby tries again after seeing the lease held (monotonic time).

    At the expiry the store reported, plus :data:`EXPIRY_MARGIN`; never
    later than one TTL after the answer (the bound on a lost push), and one
    TTL when the store reports no expiry (the file lock: held while its
    process lives, and the watch blocks on the lock itself).
    """
    if expires_in is None:
        return received_at + timing.ttl
    return received_at + min(max(0.0, expires_in) + EXPIRY_MARGIN, timing.ttl)
