"""Worker-side fencing: drop a scheduled message sent under a superseded term.

Every message the leader publishes carries its fencing token in headers
(``leaderbeat_lease``, ``leaderbeat_term``, ``leaderbeat_scheduled_at``).
Fenced claims already stop a stale leader from publishing after another
replica took over; this guard closes the one window left, a leader paused
*between* its claim and its publish, by letting the worker refuse what
arrives late from an old term.

Use it as the base class of the tasks beat sends::

    app = Celery("proj", task_cls="celery_leaderbeat.fencing:FencedTask")

A message is dropped (state ``IGNORED``, logged) when its term is older than
the newest term seen for that lease. "Seen" is kept per worker process by
default; with ``leaderbeat_fencing_url`` set to a Redis URL, all workers
share one register, so a term seen by any worker fences all of them.
Messages without the headers (``.delay()`` calls) always run.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from celery import Task
from celery.exceptions import Ignore
from celery.utils.log import get_logger

from .scheduler import LEASE_HEADER, SCHEDULED_AT_HEADER, TERM_HEADER
from .settings import improperly_configured

__all__ = ["FencedTask", "LocalTermRegister", "RedisTermRegister", "TermRegister", "is_stale"]

logger = get_logger(__name__)


class TermRegister(Protocol):
    """Keeps the newest term seen per lease."""

    def observe(self, lease: str, term: int) -> int:
        """Record ``term`` and return the newest term seen for ``lease`` (itself included)."""
        ...  # pragma: no cover


class LocalTermRegister:
    """The newest term per lease in this process's memory."""

    def __init__(self) -> None:
        self._newest: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, lease: str, term: int) -> int:
        with self._lock:
            newest = max(self._newest.get(lease, term), term)
            self._newest[lease] = newest
            return newest


# KEYS: the register hash. ARGV: lease, term. Returns the newest term after recording.
OBSERVE = """
local newest = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local term = tonumber(ARGV[2])
if term > newest then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return term
end
return newest
"""


class RedisTermRegister:
    """The newest term per lease in one Redis hash, shared by every worker."""

    key = "leaderbeat:fencing"

    def __init__(self, client: Any) -> None:
        self._observe = client.register_script(OBSERVE)

    @classmethod
    def from_url(cls, url: Any, **options: Any) -> RedisTermRegister:
        """Any Redis URL form a ``broker_url`` may take (see
        :mod:`celery_leaderbeat.stores.redis_options`); ImproperlyConfigured
        naming ``leaderbeat_fencing_url`` for one it cannot honour."""
        import redis

        from .stores.redis_options import client_options

        target, parsed = client_options(url, setting="leaderbeat_fencing_url")
        return cls(redis.Redis.from_url(target, **{**parsed, **options}))

    def observe(self, lease: str, term: int) -> int:
        return int(self._observe(keys=[self.key], args=[lease, term]))


def is_stale(request: Any, register: TermRegister) -> bool:
    """True when the request carries a term older than the newest seen for its lease."""
    term = getattr(request, TERM_HEADER, None)
    lease = getattr(request, LEASE_HEADER, None)
    if term is None or lease is None:
        return False
    return register.observe(str(lease), int(term)) > int(term)


_registers: dict[str, TermRegister] = {}
_registers_lock = threading.Lock()


def register_for(app: Any) -> TermRegister:
    """One register per process and configuration: shared Redis, or local memory."""
    value = app.conf.get("leaderbeat_fencing_url") or ""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = ";".join(value)
    if not isinstance(value, str):
        improperly_configured("leaderbeat_fencing_url", f"got {value!r}")
    with _registers_lock:
        if value not in _registers:
            _registers[value] = RedisTermRegister.from_url(value) if value \
                else LocalTermRegister()
        return _registers[value]


class FencedTask(Task):  # type: ignore[misc]
    """A task that refuses to run a beat message from a superseded leader term."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if is_stale(request, register_for(self.app)):
            logger.warning(
                "leaderbeat: dropping %s[%s]: sent under term %s of lease %r, scheduled at %s, "
                "but a newer term has been seen",
                self.name, request.id, getattr(request, TERM_HEADER, None),
                getattr(request, LEASE_HEADER, None), getattr(request, SCHEDULED_AT_HEADER, None),
            )
            raise Ignore()
        return super().__call__(*args, **kwargs)
