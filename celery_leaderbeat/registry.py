"""The replica registry: who is alive, in which role, and step-down requests.

Every replica, leader or standby, keeps a small heartbeat record with an
expiry in the elector's store, so other replicas and the command line can
list who is alive. The same store carries step-down requests: an operator
asks the leader of one term to let go.

Neither costs a store command of its own. A heartbeat record rides on the
acquire attempt or lease renewal the replica makes anyway
(``LeaseStore.acquire(..., beat=record)`` and ``renew(..., beat=record)``),
and the leader's renewal is also where it finds a step-down request: the
store releases the lease in that same call, and the elector holds off one
TTL so a standby takes over. A request is therefore honoured within one
renew interval, and leadership moves within ``renew_interval +
retry_interval`` (1 s with the defaults).

This protocol is optional beside :class:`~celery_leaderbeat.lease.LeaseStore`:
a store without it still elects a leader; it just cannot be listed or asked
to step down. Every built-in store implements it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, runtime_checkable

__all__ = [
    "LEADER",
    "STANDBY",
    "Heartbeat",
    "ReplicaRecord",
    "ReplicaRegistry",
    "StepDownRequest",
    "registry_of",
]

LEADER = "leader"
STANDBY = "standby"

#: A record outlives this many heartbeat intervals before the replica counts as gone.
MISSED_HEARTBEATS = 3

#: Seconds between two heartbeat records of one replica, at the least.
MIN_HEARTBEAT_INTERVAL = 1.0

#: Seconds a step-down request waits in the store. Requests name one term, so
#: a late one can never touch a later leader; this only keeps the store tidy.
STEP_DOWN_TTL = 600.0


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as it last reported itself.

    ``heartbeat_age`` and ``expires_in`` are filled in by the store when read
    (on the store's clock where it has one). In a record being written,
    ``expires_in`` is how long it lives and ``heartbeat_age`` is None.
    """

    identity: str
    host: str
    pid: int
    version: str
    celery_version: str
    role: str
    term: int | None
    last_tick_at: datetime
    heartbeat_age: float | None = None
    expires_in: float | None = None

    def encode(self) -> dict[str, Any]:
        """Plain JSON-ready data; the same keys as the ``replicas`` of ``status --json``."""
        data = asdict(self)
        data["last_tick_at"] = self.last_tick_at.isoformat()
        return data

    @classmethod
    def decode(cls, data: dict[str, Any]) -> ReplicaRecord:
        fields: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        fields["last_tick_at"] = datetime.fromisoformat(data["last_tick_at"])
        fields["pid"] = int(data["pid"])
        return cls(**fields)

    def as_left(self, term: int | None) -> ReplicaRecord:
        """This record as a lease call left its replica: leader of ``term``, or a standby."""
        return replace(self, role=STANDBY if term is None else LEADER, term=term)

    def seen(self, heartbeat_age: float, expires_in: float) -> ReplicaRecord:
        return replace(self, heartbeat_age=round(max(0.0, heartbeat_age), 3),
                       expires_in=round(max(0.0, expires_in), 3))


@dataclass(frozen=True)
class StepDownRequest:
    """A request that the leader of ``term`` let go, as the store recorded it."""

    holder: str | None
    term: int


@runtime_checkable
class ReplicaRegistry(Protocol):
    """Heartbeat records and step-down requests, kept beside a lease in its store.

    Records are written by the lease calls themselves (see the module
    docstring); this is how others read them and ask for a step-down.
    """

    def replicas(self) -> list[ReplicaRecord]:
        """Every record not yet expired, with its heartbeat age, leader first."""
        ...  # pragma: no cover

    def withdraw(self, identity: str) -> None:
        """Remove a replica's record: it is shutting down."""
        ...  # pragma: no cover

    def request_step_down(self) -> StepDownRequest | None:
        """Ask the current lease holder to step down; None when nobody holds the lease.

        The request names the holder's term: the leader of that term releases
        at its next renewal, and a request can never touch a later term.
        """
        ...  # pragma: no cover


def registry_of(elector: Any) -> ReplicaRegistry | None:
    """The registry behind an elector, if its store keeps one."""
    store = getattr(elector, "store", None)
    return store if isinstance(store, ReplicaRegistry) else None


def sort_replicas(records: list[ReplicaRecord]) -> list[ReplicaRecord]:
    """Leader first, then standbys by identity: the order every store returns."""
    return sorted(records, key=lambda r: (r.role != LEADER, r.identity))


def _versions() -> tuple[str, str]:
    import celery

    from . import __version__

    return __version__, celery.__version__


class Heartbeat:
    """Paces one replica's heartbeat records; the elector's store calls carry them.

    A record rides on the acquire attempt or renewal the replica makes
    anyway, so heartbeats cost no store command of their own. It is sent at
    most once per ``interval`` (so SQL stores, where it is a statement of its
    own on the same connection, write at most once a second per replica),
    and at once when the role changes.
    """

    def __init__(
        self,
        identity: str,
        call_interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        longest_gap: float = 0.0,
    ) -> None:
        self.identity = identity
        self.interval = max(MIN_HEARTBEAT_INTERVAL, call_interval)
        # A record is written at the first store call after it is due, and calls
        # come at most ``call_interval`` apart (``longest_gap`` when longer: a
        # standby told of releases asks about once per lease, celery_leaderbeat.watch):
        # MISSED_HEARTBEATS such gaps after the last write, the replica has surely
        # missed more than one.
        self.ttl = MISSED_HEARTBEATS * max(self.interval, longest_gap)
        self._clock = clock
        self._next_at = 0.0
        self._last_role: str | None = None
        version, celery_version = _versions()
        self._base: dict[str, Any] = {
            "identity": identity,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": version,
            "celery_version": celery_version,
        }

    def due(self, role: str, term: int | None = None) -> ReplicaRecord | None:
        """The record to send with the next store call, or None when none is due.

        ``role`` is the role the call is made in (a standby acquires, the
        leader renews); a store that grants the lease in that very call
        writes the record as the leader's.
        """
        now = self._clock()
        if role == self._last_role and now < self._next_at:
            return None
        self._next_at = now + self.interval
        self._last_role = role
        return ReplicaRecord(**self._base, role=role, term=term,
                             last_tick_at=datetime.now(timezone.utc), expires_in=self.ttl)
