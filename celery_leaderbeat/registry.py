"""The replica registry: who is alive, in which role, and step-down requests.

Every replica, leader or standby, writes a small heartbeat record with an
expiry into the elector's store, so other replicas and the command line can
list who is alive. The same store carries step-down requests: an operator
asks the leader of one term to let go, and that leader sees the request in
its next heartbeat, releases its lease and holds off, so a standby takes over.

This is an optional protocol beside :class:`~celery_leaderbeat.lease.LeaseStore`:
a store that does not implement it still elects a leader; it just cannot be
listed or asked to step down. The Redis and file stores implement it.

Cost: one store call per heartbeat, and heartbeats come once per renew
interval (not once per tick), so a standby adds a third of a command per
default renew interval on top of its acquire attempts. The leader's check
for a step-down request rides in the same call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, runtime_checkable

from .lease import StoreUnavailable

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

#: A record outlives this many missed heartbeats before the replica counts as gone.
MISSED_HEARTBEATS = 3

#: Seconds a step-down request waits in the store. Requests name one term, so
#: a late one can never touch a later leader; this only keeps the store tidy.
STEP_DOWN_TTL = 600.0


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as it last reported itself.

    ``heartbeat_age`` and ``expires_in`` are filled in by the store when read
    (on the store's clock where it has one); they are None in a record being
    written.
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
    """Heartbeat records and step-down requests, kept beside a lease in its store."""

    def heartbeat(self, record: ReplicaRecord, ttl: float) -> bool:
        """Write ``record`` to live ``ttl`` seconds, replacing this identity's previous one.

        When ``record`` is the leader's (``role`` leader, ``term`` set) and a
        step-down was requested for that term, clear the request and return
        True; otherwise return False. Atomic: a request is seen once.
        """
        ...  # pragma: no cover

    def replicas(self) -> list[ReplicaRecord]:
        """Every record not yet expired, with its heartbeat age, leader first."""
        ...  # pragma: no cover

    def withdraw(self, identity: str) -> None:
        """Remove a replica's record: it is shutting down."""
        ...  # pragma: no cover

    def request_step_down(self) -> StepDownRequest | None:
        """Ask the current lease holder to step down; None when nobody holds the lease."""
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
    """Paces one replica's heartbeats and relays step-down requests to it.

    A heartbeat is written once per ``interval``, and at once when the role
    or term changes, so the registry shows a new leader without delay.
    """

    def __init__(
        self,
        registry: ReplicaRegistry,
        identity: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.identity = identity
        self.interval = interval
        self.ttl = interval * MISSED_HEARTBEATS
        self._clock = clock
        self._next_at = 0.0
        self._last: tuple[str, int | None] | None = None
        version, celery_version = _versions()
        self._base: dict[str, Any] = {
            "identity": identity,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": version,
            "celery_version": celery_version,
        }

    def beat(self, leading: bool, term: int | None) -> bool:
        """Heartbeat if due; True when the leader of ``term`` is asked to step down.

        A store error costs nothing more: the record ages, and the next
        heartbeat, one interval later, tries again.
        """
        role = LEADER if leading else STANDBY
        now = self._clock()
        if (role, term) == self._last and now < self._next_at:
            return False
        record = ReplicaRecord(**self._base, role=role, term=term if leading else None,
                               last_tick_at=datetime.now(timezone.utc))
        # A tenth early: the leader's ticks come at its renewals, one interval
        # apart but with jitter, and each of them should carry a heartbeat.
        self._next_at = now + self.interval * 0.9
        self._last = (role, term)
        try:
            asked = self.registry.heartbeat(record, self.ttl)
        except StoreUnavailable:
            return False
        return asked and leading

    def withdraw(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # else the record expires on its own
            self.registry.withdraw(self.identity)
