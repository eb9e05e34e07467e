"""A standby's subscription to one Redis lease's releases (see celery_leaderbeat.watch).

The release script and the renewal that answers a step-down ``PUBLISH`` on
``leaderbeat:{<lease>}:released``. A standby keeps one redis-py ``PubSub``
on a connection of its own (the pool lends it one and leaves it out of
every other call), subscribed to that channel. Pub/sub delivers nothing to
a subscriber that is not connected, so the watch reports "look now" every
time it (re)subscribes: after its first subscription, and after the
connection was lost (a killed connection, a restarted or failed-over
server), once the new subscription is confirmed. Redis Cluster delivers a
plain ``PUBLISH`` to subscribers on every node, so the same channel serves
there (through the cluster client's ``pubsub()``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis

from ..lease import StoreUnavailable

__all__ = ["RedisReleaseWatch"]

#: Seconds to wait for Redis to confirm a subscription.
SUBSCRIBE_TIMEOUT = 1.0


class RedisReleaseWatch:
    """Waits for a release published on ``channel`` (a ``watch.ReleaseWatch``)."""

    def __init__(self, client: Any, channel: str) -> None:
        self.client = client
        self.channel = channel
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
                # subscribe again, then have the standby look.
                self.close()
                self._subscribe()
                return True
            if message is not None and message.get("type") == "message":
                return True

    def _subscribe(self) -> None:
        """Subscribe on a fresh connection and wait until Redis confirms it."""
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
            while True:
                message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message.get("type") == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    raise redis.TimeoutError("no confirmation of the subscription")
        except (redis.RedisError, OSError) as exc:
            _quietly_close(pubsub)
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
