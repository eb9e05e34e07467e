"""Shared fixtures: a private Redis, unique lease names, apps, schedulers, queue taps.

Everything a test touches is its own: a redis-server on a free port for the
whole session, a lease name (also used as queue name) per test, schedule
files under the test's tmp_path. The shared loopback servers are never used
here, so parallel runs by other people cannot collide with ours.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any, Callable

import pytest
from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.message import Message

from celery_leaderbeat import LeaderScheduler
from celery_leaderbeat.testing import RedisServer, wait_for

#: Set to 1 to run the long scenarios too (``make test-all`` does; ``make test`` and CI don't).
SLOW_ENV = "LEADERBEAT_TEST_SLOW"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``slow`` unless LEADERBEAT_TEST_SLOW=1 (long failover scenarios)."""
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"a long scenario: set {SLOW_ENV}=1 (make test-all) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session. Tests that stop or pause Redis start their own."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def lease_name(request: pytest.FixtureRequest) -> str:
    """A lease name no other test (or other run on this machine) uses."""
    base = re.sub(r"[^A-Za-z0-9._:-]+", "-", request.node.name)[:60]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_app(redis_server: RedisServer, lease_name: str) -> Iterator[Callable[..., Celery]]:
    """Build Celery apps on the private Redis: broker and lease store, one queue per test.

    Keyword arguments are app settings and override the defaults here.
    """
    apps: list[Celery] = []

    def make(**conf: Any) -> Celery:
        app = Celery(lease_name, set_as_current=False)
        app.conf.update({
            "broker_url": redis_server.url,
            "task_default_queue": lease_name,
            "leaderbeat_elector": redis_server.url,
            "leaderbeat_lease_name": lease_name,
            "beat_schedule": {},
            # One thread ticks several schedulers in turn here: a standby's tick
            # must return its sleep, not wait on a release watch (test_push.py).
            "leaderbeat_push": False,
            **conf,
        })
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def make_scheduler(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Build LeaderScheduler instances (or another class) with their own schedule file.

    Every scheduler still open at the end of the test is closed, which also
    releases its lease.
    """
    made: list[Any] = []

    def make(app: Celery, identity: str, cls: type = LeaderScheduler, **kwargs: Any) -> Any:
        app.conf.leaderbeat_identity = identity
        kwargs.setdefault("schedule_filename", str(tmp_path / f"{identity}-schedule"))
        scheduler = cls(app, **kwargs)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


class QueueTap:
    """Reads what was really published to one queue, as a worker would receive it."""

    def __init__(self, app: Celery, name: str) -> None:
        self.connection = app.connection_for_read()
        queue = Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
        self.queue = self.connection.SimpleQueue(queue)
        self.received: list[Message] = []

    def drain(self) -> list[Message]:
        """Take every message waiting now; return the new ones (all are kept in received)."""
        new = []
        while True:
            try:
                message = self.queue.get(block=False)
            except Empty:
                break
            message.ack()
            new.append(message)
        self.received += new
        return new

    def count(self) -> int:
        """How many messages have arrived so far."""
        self.drain()
        return len(self.received)

    def wait(self, count: int, timeout: float) -> list[Message]:
        """Wait until ``count`` messages in all have arrived; return every one received."""
        wait_for(lambda: self.count() >= count, timeout,
                 message=f"{count} messages on {self.queue.name}")
        return self.received

    def close(self) -> None:
        self.queue.close()
        self.connection.release()


@pytest.fixture
def make_tap() -> Iterator[Callable[[Celery, str], QueueTap]]:
    """Consumers of named queues on an app's broker, closed at the end of the test."""
    made: list[QueueTap] = []

    def make(app: Celery, queue: str) -> QueueTap:
        made.append(QueueTap(app, queue))
        return made[-1]

    yield make
    for queue_tap in made:
        queue_tap.close()


@pytest.fixture
def tap(make_app: Callable[..., Celery], make_tap: Callable[[Celery, str], QueueTap],
        lease_name: str) -> QueueTap:
    """A consumer of the test's queue, declared before anything is published to it."""
    return make_tap(make_app(), lease_name)


def tick_until(
    schedulers: list[Any], condition: Callable[[], Any], timeout: float, nap: float = 0.05
) -> Any:
    """Run the beat loop of several schedulers in turn until ``condition()`` holds.

    Like ``celery.beat.Service`` but with naps capped at ``nap`` seconds, so a
    test never waits on a long sleep the scheduler asked for.
    """
    deadline = time.monotonic() + timeout
    while True:
        delays = [scheduler.tick() for scheduler in schedulers]
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s of ticking")
        time.sleep(max(0.0, min([nap, *delays])))  # Celery's drift can make it < 0


@pytest.fixture
def ticker() -> Callable[..., Any]:
    """:func:`tick_until`, as a fixture so test modules need not import conftest."""
    return tick_until


def race_for_lease(make_store: Callable[[], Any], replicas: int, rounds: int,
                   processes: bool = False) -> list[list[int]]:
    """Replicas (threads, or forked processes) race for a free lease, round after round.

    In each round all replicas call ``acquire`` at once (behind a barrier);
    the winner then releases (even rounds) or lets the lease expire (odd
    rounds) before the next. Returns the terms won in each round: exactly
    one per round when the store is sound. ``make_store`` is called in each
    replica (after the fork for processes) and the store closed at the end.
    """
    import multiprocessing
    import threading

    context = multiprocessing.get_context("fork")
    barrier = (context.Barrier if processes else threading.Barrier)(replicas, timeout=60)
    results = context.Queue() if processes else None
    won: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def replica(i: int) -> None:
        store, owner = make_store(), f"owner-{i}"
        try:
            for r in range(rounds):
                barrier.wait()
                outcome = store.acquire(owner, f"replica-{i}", 0.4)
                if outcome.acquired:
                    if results is not None:
                        results.put((r, outcome.lease.term))
                    won.append((r, outcome.lease.term))
                barrier.wait()
                if outcome.acquired and r % 2 == 0:
                    assert store.release(owner, outcome.lease.term)
                wait_for(lambda: store.read() is None, timeout=10)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            raise
        finally:
            store.close()

    starts: list[Any] = [
        (context.Process if processes else threading.Thread)(target=replica, args=(i,))
        for i in range(replicas)]
    for start in starts:
        start.start()
    for start in starts:
        start.join(timeout=120)
    if results is not None:
        assert all(p.exitcode == 0 for p in starts), [p.exitcode for p in starts]
        while not results.empty():
            won.append(results.get(timeout=5))
    assert not errors, errors
    return [sorted(term for rr, term in won if rr == r) for r in range(rounds)]


@pytest.fixture
def lease_race() -> Callable[..., list[list[int]]]:
    """:func:`race_for_lease`, as a fixture."""
    return race_for_lease
