"""The elector contract: the one question the scheduler asks on every tick.

A custom elector is as small as gocron's ``Elector``: one method,
``is_leader()``. Answer ``True`` to dispatch this tick; answer ``False`` or
raise :class:`NotLeader` (with a reason for the log) to skip it. Any other
exception also skips the tick and is logged. Whatever the answer, the
scheduler asks again on the next tick: no answer can stop it from asking.

Two hooks are optional: ``release()`` is called on graceful shutdown so a
standby can take over at once, and ``close()`` frees resources afterwards.

Custom electors gate dispatch only. Shared run history and fenced claims
need a lease store (see :mod:`celery_leaderbeat.lease`).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

__all__ = [
    "CallableElector",
    "Elector",
    "NotLeader",
    "StaticElector",
]


class NotLeader(Exception):
    """Raised by an elector to say "not the leader", with the reason why.

    The reason is logged once each time it changes, never on every tick.
    """

    def __init__(self, reason: str = "not the leader") -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@runtime_checkable
class Elector(Protocol):
    """Decides, on every tick, whether this replica may dispatch."""

    def is_leader(self) -> bool:
        """Return True to lead this tick; False or raise NotLeader to skip it."""
        ...  # pragma: no cover


class StaticElector:
    """Always or never the leader: for development, tests and pinned standbys."""

    def __init__(self, leader: bool = True) -> None:
        self.leader = leader

    def is_leader(self) -> bool:
        if not self.leader:
            raise NotLeader("configured as a permanent standby")
        return True

    def __repr__(self) -> str:
        return f"StaticElector(leader={self.leader})"


class CallableElector:
    """Wraps a function answering ``is_leader()``, so a lambda can be an elector."""

    def __init__(self, func: Callable[[], bool]) -> None:
        if not callable(func):
            raise TypeError(f"CallableElector needs a callable, got {func!r}")
        self.func = func

    def is_leader(self) -> bool:
        return bool(self.func())

    def __repr__(self) -> str:
        name = getattr(self.func, "__qualname__", repr(self.func))
        return f"CallableElector({name})"
