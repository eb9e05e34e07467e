"""Takeover with a large schedule: lease acquired to first dispatch, 10,000 entries.

A standby LeaderScheduler with N hourly entries ticks (shadowing the
schedule) while an old leader holds the lease on a private redis-server and
has claimed a run of every entry into the shared run history. The old
leader releases; the standby's next tick acquires the lease, loads and
applies the whole history, rebuilds its heap and publishes the one entry
whose run the history says is due. Measured: from the moment the lease was
acquired (the leadership_gained signal) to the first publish (Celery's
after_task_publish signal), in this process, as ``celery beat`` runs it.

For comparison, plain ``PersistentScheduler`` with the same entries: from
the start of its first tick to its first publish (it has no history to
load, but builds its heap from every entry). Target: leader under 200 ms.

    python benchmarks/takeover_large.py                  # 10,000 entries, 5 takeovers
    python benchmarks/takeover_large.py --entries 50000 --repeat 3
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.beat import PersistentScheduler
from celery.signals import after_task_publish

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    celery_app,
    describe_run,
    milliseconds,
    parser,
    print_table,
    private_redis,
    unique,
)
from celery_leaderbeat import LeaderScheduler, LeaseElector, signals
from celery_leaderbeat.history import RunRecord
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.testing import redis_store

TASK = "bench.takeover"
TARGET = 0.200
DUE = "entry-0"  # the one entry the history leaves due


class Moments:
    """When leadership was gained and when the first publish left, on perf_counter."""

    def __init__(self) -> None:
        self.gained: float | None = None
        self.published: float | None = None
        signals.leadership_gained.connect(self._gained, weak=False)
        after_task_publish.connect(self._published, weak=False)

    def reset(self) -> None:
        self.gained = self.published = None

    def _gained(self, sender: Any = None, **_: Any) -> None:
        self.gained = time.perf_counter()

    def _published(self, sender: Any = None, **_: Any) -> None:
        if sender == TASK and self.published is None:
            self.published = time.perf_counter()


class TimedLeaderScheduler(LeaderScheduler):
    """LeaderScheduler noting how long adopting the shared history took (the breakdown)."""

    adopt_seconds = 0.0

    def adopt_shared_history(self) -> None:
        started = time.perf_counter()
        super().adopt_shared_history()
        self.adopt_seconds = time.perf_counter() - started


def schedule(entries: int) -> dict[str, Any]:
    return {f"entry-{i}": {"task": TASK, "schedule": 3600.0} for i in range(entries)}


def old_leader_history(store: RedisLeaseStore, entries: int) -> LeaseElector:
    """An old leader that claimed a run of every entry: 10 minutes ago, DUE's 2 hours ago."""
    old = LeaseElector(store, identity="old-leader")
    old.is_leader()
    now = datetime.now(timezone.utc)
    runs = {}
    for i in range(entries):
        ran = now - (timedelta(hours=2) if f"entry-{i}" == DUE else timedelta(minutes=10))
        runs[f"entry-{i}"] = RunRecord(ran, 7, old.term or 0).encode()
    old.claim(runs)
    return old


def tick_until_published(scheduler: Any, moments: Moments, timeout: float = 60.0) -> None:
    """The beat loop (as celery.beat.Service.start), until the first publish."""
    deadline = time.monotonic() + timeout
    while moments.published is None:
        interval = scheduler.tick()
        if moments.published is None and interval and interval > 0:
            time.sleep(min(interval, 0.05))
        if time.monotonic() > deadline:
            raise TimeoutError("no publish")


def leader_takeover(redis_url: str, entries: int, directory: str, moments: Moments
                    ) -> tuple[float, float, float]:
    """One takeover, in seconds: (acquired -> first publish, HGETALL alone, adopting)."""
    name = unique("takeover")
    store = redis_store(redis_url, name)
    old = old_leader_history(store, entries)
    app = celery_app(name, redis_url, beat_schedule=schedule(entries),
                     leaderbeat_elector=redis_url, leaderbeat_lease_name=name,
                     leaderbeat_identity="standby")
    standby = TimedLeaderScheduler(app, schedule_filename=os.path.join(directory, name))
    try:
        for _ in range(3):  # a standby that has been running a while: shadow warm
            standby.tick()
        assert not standby.is_leader
        started = time.perf_counter()
        store.load_history()
        load = time.perf_counter() - started
        moments.reset()
        old.release()
        tick_until_published(standby, moments)
        assert moments.gained is not None and moments.published is not None
        return moments.published - moments.gained, load, standby.adopt_seconds
    finally:
        standby.close()
        app.close()
        store.client.delete(store.history_key, store.meta_key)
        store.close()


def plain_start(redis_url: str, entries: int, directory: str, moments: Moments) -> float:
    """Plain beat: first tick to first publish, DUE made due the same way."""
    name = unique("plain")
    app = celery_app(name, redis_url, beat_schedule=schedule(entries))
    scheduler = PersistentScheduler(app, schedule_filename=os.path.join(directory, name))
    try:
        scheduler.schedule[DUE].last_run_at = app.now() - timedelta(hours=2)
        moments.reset()
        started = time.perf_counter()
        tick_until_published(scheduler, moments)
        assert moments.published is not None
        return moments.published - started
    finally:
        scheduler.close()
        app.close()


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--entries", type=int, default=10_000)
    args.add_argument("--repeat", type=int, default=5)
    options = args.parse_args()

    moments = Moments()
    with private_redis() as redis, tempfile.TemporaryDirectory() as directory:
        describe_run("Takeover with a large schedule", redis)
        leader, loads, adopts, plain = [], [], [], []
        for _ in range(options.repeat):
            took, load, adopt = leader_takeover(redis.url, options.entries, directory, moments)
            leader.append(took)
            loads.append(load)
            adopts.append(adopt)
            plain.append(plain_start(redis.url, options.entries, directory, moments))

    def row(label: str, values: list[float], target: bool) -> list[str]:
        verdict = ("met" if max(values) < TARGET else "MISSED") if target else "-"
        return [label, milliseconds(statistics.median(values)), milliseconds(min(values)),
                milliseconds(max(values)), verdict]

    print(f"{options.entries:,} entries, {options.repeat} takeovers; milliseconds.\n")
    print_table(["measured", "median", "min", "max", f"target < {TARGET * 1000:.0f} ms"], [
        row("leader: lease acquired -> first publish", leader, True),
        row("  of which: adopting the history (load, decode, apply)", adopts, False),
        row("  the history's HGETALL alone (before the takeover)", loads, False),
        row("plain: first tick -> first publish", plain, False),
    ])


if __name__ == "__main__":
    main()
