"""What a beat cluster published: one record per task message, and how to judge them."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from ..scheduler import SCHEDULED_AT_HEADER, TERM_HEADER
from ..stores.redis_sentinel import sanitize_sentinel_url

__all__ = ["MessageRecorder", "Publish", "duplicate_runs", "first_publish_by_another",
           "publishes_closer_than"]


# -- what the recorder saw ---------------------------------------------------------


_ORIGIN = re.compile(r"^gen(\d+)@")


@dataclass(frozen=True)
class Publish:
    """One task message as it reached the broker queue.

    ``mono`` is the recorder's monotonic clock, comparable with the fault
    times :class:`Replica` returns; ``wall`` is ``time.time()`` for display.
    ``pid`` comes from Celery's ``origin`` header (``gen<pid>@host``).
    """

    task: str
    task_id: str
    pid: int | None
    term: int | None
    scheduled_at: str | None
    wall: float
    mono: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any], wall: float, mono: float) -> Publish:
        match = _ORIGIN.match(str(headers.get("origin") or ""))
        term = headers.get(TERM_HEADER)
        return cls(
            task=str(headers.get("task")),
            task_id=str(headers.get("id")),
            pid=int(match.group(1)) if match else None,
            term=int(term) if term is not None else None,
            scheduled_at=headers.get(SCHEDULED_AT_HEADER),
            wall=wall,
            mono=mono,
        )


class MessageRecorder:
    """Consumes a queue in a background thread and records every message's arrival.

    Messages are acknowledged and not executed. The consumer reconnects by
    itself when the broker goes away, so a broker restart is a fault the
    recorder survives.
    """

    def __init__(self, broker_url: str, queue: str,
                 transport_options: Mapping[str, Any] | None = None,
                 connection: Mapping[str, Any] | None = None) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.transport_options = dict(transport_options or {})
        #: More arguments of kombu's Connection (userid, password, port,
        #: virtual_host), as Celery passes its broker_* settings.
        self.connection = dict(connection or {})
        #: Called (in the recorder thread) with each Publish as it arrives.
        self.listeners: list[Callable[[Publish], None]] = []
        #: Broker errors the consumer recovered from, for diagnostics.
        self.errors: list[str] = []
        self._publishes: list[Publish] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> MessageRecorder:
        """Start consuming; return once the queue is declared, so no message is missed."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"recorder-{self.queue}", daemon=True)
            self._thread.start()
        if not self._ready.wait(timeout):
            errors = "; ".join(self.errors[-3:]) or "no error"
            raise TimeoutError(
                f"recorder could not consume {self.queue!r} from "
                f"{sanitize_sentinel_url(self.broker_url)} within {timeout}s ({errors})")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        from kombu.connection import Connection
        from kombu.entity import Exchange, Queue

        # Celery's default routing: a direct exchange named after the queue.
        exchange = Exchange(self.queue, type="direct")  # type: ignore[no-untyped-call]
        queue = Queue(self.queue, exchange, routing_key=self.queue)  # type: ignore[no-untyped-call]
        while not self._stop.is_set():
            try:
                conn: Any = Connection(  # type: ignore[no-untyped-call]
                    self.broker_url, transport_options=self.transport_options,
                    **self.connection)
                with conn, conn.Consumer(queue, on_message=self._on_message):
                    self._ready.set()
                    while not self._stop.is_set():
                        with contextlib.suppress(socket.timeout):
                            conn.drain_events(timeout=0.2)
            except Exception as exc:  # the broker went away: note it, reconnect
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.2)

    def _on_message(self, message: Any) -> None:
        publish = Publish.from_headers(message.headers or {}, time.time(), time.monotonic())
        message.ack()
        with self._lock:
            self._publishes.append(publish)
        for listener in list(self.listeners):
            listener(publish)

    def publishes(self, task: str | None = None, since: float | None = None) -> list[Publish]:
        """What arrived so far, in arrival order; optionally one task, or after ``since``."""
        with self._lock:
            found = list(self._publishes)
        return [p for p in found
                if (task is None or p.task == task) and (since is None or p.mono >= since)]

    def __enter__(self) -> MessageRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- judging what was published ----------------------------------------------------


def duplicate_runs(publishes: Iterable[Publish]) -> dict[tuple[str, str], list[Publish]]:
    """Scheduled runs published more than once, by (task, scheduled_at header).

    Only messages carrying the scheduled-time header are judged; for
    schedulers that send none, use :func:`publishes_closer_than`.
    """
    runs: dict[tuple[str, str], list[Publish]] = {}
    for p in publishes:
        if p.scheduled_at is not None:
            runs.setdefault((p.task, p.scheduled_at), []).append(p)
    return {run: sent for run, sent in runs.items() if len(sent) > 1}


def publishes_closer_than(publishes: Iterable[Publish], gap: float
                          ) -> list[tuple[Publish, Publish]]:
    """Consecutive publishes of the same task less than ``gap`` seconds apart."""
    last: dict[str, Publish] = {}
    close = []
    for p in sorted(publishes, key=lambda p: p.mono):
        before = last.get(p.task)
        if before is not None and p.mono - before.mono < gap:
            close.append((before, p))
        last[p.task] = p
    return close


def first_publish_by_another(publishes: Iterable[Publish], since: float,
                             pids: Iterable[int | None]) -> Publish | None:
    """The first publish at or after ``since`` by a process not in ``pids``."""
    excluded = set(pids)
    later = [p for p in publishes if p.mono >= since and p.pid not in excluded]
    return min(later, key=lambda p: p.mono, default=None)
