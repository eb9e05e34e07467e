"""A standby's subscription to one Redis lease's releases (see celery_leaderbeat.watch).

The release script and the renewal that answers a step-down ``PUBLISH`` on
``leaderbeat:{<lease>}:released``. A standby keeps one redis-py ``PubSub``
on a connection of its own (the pool lends it one and leaves it out of
every other call), subscribed to that channel. Pub/sub delivers nothing to
a subscriber that is not connected, so the watch reports "look now" every
time it (re)subscribes: after its first subscription, and after the
connection was lost (a killed connection, a restarted or failed-over
server), once the new subscription is confirmed.

Replicated stores (see docs/redis-ha.md): the watch subscribes through the
client its store gives for each (re)subscription, and when a subscription
fails or is lost it tells the store that the master may have moved, so the
next one goes to the master as the store then sees it:

- Sentinel: the master's client asks the Sentinels for the master when it
  connects, and the store asks them again at once. When Sentinel demotes
  an old master, that node's pub/sub clients are disconnected (observed with
  Redis 7), so the watch follows the new master; a subscription left on an
  old master that became a replica would still hear releases, which
  replication carries to replicas.
- Cluster: a plain ``PubSub`` on the node that serves the lease's slot as
  the store's slot map says, re-read after a failure. A classic ``PUBLISH``
  is broadcast over the cluster bus to every node, replicas included, so
  that node hears releases published on any master, and it keeps hearing
  them after a ``CLUSTER FAILOVER`` made it a replica.

A release published on an old master still serving during a switchover
can only wake a standby early (or reach none): every wake-up is an ordinary
acquire attempt, judged by the store, so a push never makes a replica lead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis

from ..lease import StoreUnavailable

__all__ = ["RedisReleaseWatch"]

#: Seconds to wait for Redis to confirm a subscription.
SUBSCRIBE_TIMEOUT = 1.0


class RedisReleaseWatch:
    """Waits for a release published on ``channel`` (a ``watch.ReleaseWatch``).

    ``subscriber()`` gives the redis-py client to subscribe through, at each
    (re)subscription (it may raise StoreUnavailable); ``moved()`` is called
    when a subscription failed or was lost, before the next one.
    """

    def __init__(self, subscriber: Callable[[], Any], channel: str, *,
                 moved: Callable[[], None] = lambda: None) -> None:
        self.subscriber = subscriber
        self.channel = channel
        self.moved = moved
        self._pubsub: Any = None

    def wait(self, timeout: float) -> bool:
        if self._pubsub is None:
            self._subscribe()
            return True
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                message = self._pubsub.get_message(timeout=remaining)
            except (redis.RedisError, OSError):
                # Whatever was published while the connection was down is lost:
                # subscribe again (to the master as the store now sees it), then
                # have the standby look.
                self.close()
                self.moved()
                self._subscribe()
                return True
            if message is not None and message.get("type") == "message":
                return True

    def _subscribe(self) -> None:
        """Subscribe on a fresh connection and wait until Redis confirms it."""
        pubsub = None
        try:
            pubsub = self.subscriber().pubsub()
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
            while True:
                message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message.get("type") == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    raise redis.TimeoutError("no confirmation of the subscription")
        except (redis.RedisError, OSError, StoreUnavailable) as exc:
            if pubsub is not None:
                _quietly_close(pubsub)
            self.moved()
            raise StoreUnavailable(f"cannot subscribe to releases: "
                                   f"{type(exc).__name__}: {exc}") from exc
        self._pubsub = pubsub

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            _quietly_close(pubsub)

    def __repr__(self) -> str:
        return f"RedisReleaseWatch({self.channel!r})"


def _quietly_close(pubsub: Any) -> None:
    with contextlib.suppress(redis.RedisError, OSError):  # dropped either way
        pubsub.close()
