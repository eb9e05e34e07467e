"""A standby's etcd watch on one lease key (see celery_leaderbeat.watch).

etcd pushes without any help from the store's writes: a watch on the lease
key (``POST /v3/watch`` through the JSON gateway, one long answer of
newline-separated messages, :meth:`.etcd_gateway.EtcdGateway.stream`) gets
a DELETE event whenever the key goes, and the key goes in exactly three
ways, each of which frees the lease: a graceful release, a step-down (the
renewal deletes it), and the expiry of the etcd lease it is attached to
(etcd deletes the keys of an expired lease, judged on its Raft leader's
clock). So a standby wakes at a crashed leader's expiry too, at the moment
the key is gone and an acquire can succeed, with no expiry of our own to
compute. Only DELETE events are asked for (``NOPUT``): renewals do not
write the key, so a quiet lease sends nothing at all.

Nothing is missed between looks. The watch starts at the revision after
the lease key the standby last saw (the ``mod_revision`` its last acquire
attempt read; the key is written once per term): etcd replays every event
from ``start_revision`` on, so a release that happened between that
attempt and the watch's start is delivered as soon as the watch starts.
After the stream breaks (the member it was on died or lost its Raft
leader, the connection reset) the watch is re-created on the next member,
from the revision after the last event it received: again nothing is
lost, so unlike pub/sub or ``NOTIFY`` it needs no "look now" after a
reconnect. It does say "look now" when it has no revision to start from
(the last look found the lease free) or when etcd compacted that revision
away (it cancels such a watch, naming the compaction).

The stream is read by a thread of the watch's own, blocked on the socket
(etcd sends no heartbeats that a read timeout could wait for); a DELETE
it reads is kept until the next :meth:`EtcdReleaseWatch.wait`. One
connection per watch, never one of the store's calls'. A member that
stops answering without closing the connection (paused, or its host cut
off from us) is not noticed by the watch: the standby's fallback attempt,
once per lease TTL at the most, covers that push as any lost one.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from urllib3.exceptions import HTTPError

from ..lease import StoreUnavailable
from .etcd_gateway import EtcdGateway, EtcdStream, b64

__all__ = ["EtcdReleaseWatch"]


class EtcdReleaseWatch:
    """Waits for the DELETE of ``key`` (a :class:`~celery_leaderbeat.watch.ReleaseWatch`).

    ``seen()`` is the ``mod_revision`` of the lease key as the standby last
    read it (0 when it found none): the watch starts right after it.
    """

    def __init__(self, gateway: EtcdGateway, key: str, seen: Callable[[], int]) -> None:
        self.gateway = gateway
        self.key = key
        self.seen = seen
        self._changed = threading.Condition()
        self._stream: EtcdStream | None = None
        self._released = False
        self._lost: str | None = None  # why the stream ended, until it is re-created
        self._compacted = False
        #: The first revision whose events this watch has not yet received.
        self._next_revision = 0

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._stream is None and self._open():
            return True
        for reopened in (False, True):
            with self._changed:
                while not self._released and self._lost is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(remaining)
                if self._released:
                    self._released = False
                    return True
                why = self._lost
            if reopened:  # lost twice in one wait: let the standby poll until the next
                self.close()
                raise StoreUnavailable(f"the etcd watch keeps ending: {why}")
            # The stream ended: go on from where it stopped, on another member.
            if self._open():
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self) -> bool:
        """Start (or re-create) the watch; True when what happened before is unknown.

        Raises StoreUnavailable when no member accepts the watch.
        """
        lost = self._stream
        self.close()
        seen = self.seen()
        start = max(self._next_revision, seen + 1 if seen else 0)
        unknown = start == 0 or self._compacted
        if self._compacted:
            start, self._compacted = 0, False
        request = {"key": b64(self.key), "filters": ["NOPUT"]}
        if start:
            request["start_revision"] = str(start)
        stream = self.gateway.stream("watch", {"create_request": request},
                                     after=lost.member if lost is not None else None)
        opening = stream.opening.get("result", {})
        with self._changed:
            self._stream, self._lost = stream, None
            # Without a start revision etcd sends what comes after its current one.
            self._next_revision = start or int(opening.get("header", {}).get("revision", 0)) + 1
            self._note(stream, opening)
        if self._lost is None:
            threading.Thread(target=self._read, args=(stream,), daemon=True,
                             name=f"leaderbeat-etcd-watch {self.key}").start()
        return unknown

    def _read(self, stream: EtcdStream) -> None:
        """Note DELETE events until the stream ends (the watch's own thread)."""
        why = "the stream ended"
        try:
            for message in stream.messages():
                with self._changed:
                    if self._stream is not stream or self._note(stream, message):
                        return
        except (HTTPError, OSError, ValueError, StoreUnavailable) as exc:
            why = f"{type(exc).__name__}: {exc}"
        with self._changed:
            if self._stream is stream:
                self._lost = why
                self._changed.notify_all()

    def _note(self, stream: EtcdStream, message: dict[str, Any]) -> bool:
        """Take in one message of ``stream`` (holding the lock); True when it ends the watch."""
        for event in message.get("events", ()):
            revision = int(event.get("kv", {}).get("mod_revision", 0))
            self._next_revision = max(self._next_revision, revision + 1)
            if event.get("type") == "DELETE":
                self._released = True
        if int(message.get("compact_revision", 0)) > 0:
            self._compacted = True  # the events from our start revision are gone
        if message.get("canceled"):
            self._lost = str(message.get("cancel_reason") or "etcd canceled the watch")
        self._changed.notify_all()
        return self._lost is not None

    def close(self) -> None:
        with self._changed:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __repr__(self) -> str:
        return f"EtcdReleaseWatch({self.key!r})"
