"""The base scheduler is ticked when runs fall due, not on every retry or renewal.

The last test checks the same for the leader: it renews its lease as often
as a standby tries, but ticks its base scheduler only when the base asked
to be woken, as plain beat would.

The shadow keeps a standby's local schedule close to the leader's (what is
left when the store loses its history). Ticking it on every retry interval
compared the whole schedule twice a second for nothing; these tests check
that it now follows the schedule's own due times and still advances the
entries, publishing nothing.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Callable

from celery import Celery

from celery_leaderbeat import LeaderScheduler

EVERY = 1.0


class CountingShadow(LeaderScheduler):
    """Counts base-scheduler ticks made while no run was within 0.1 s of falling due.

    Each base tick compares the whole schedule once. Ticks close to a due
    time are Celery's own: its 10 ms drift allowance makes beat tick
    without sleeping just before a run, leader, standby or plain.
    """

    idle_base_ticks = 0

    def schedules_equal(self, *args: Any, **kwargs: Any) -> bool:
        heap = self._heap
        if heap and heap[0][0] - time.time() > 0.1:
            self.idle_base_ticks += 1
        result: bool = super().schedules_equal(*args, **kwargs)
        return result


def test_the_shadow_advances_at_due_times_only_and_publishes_nothing(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any]) -> None:
    schedule = {"every-second": {"task": "tests.shadow", "schedule": timedelta(seconds=EVERY)}}
    conf = {"beat_schedule": schedule, "leaderbeat_retry_interval": 0.05}
    a = make_scheduler(make_app(**conf), "a")
    b = make_scheduler(make_app(**conf), "b", cls=CountingShadow)
    ticker([a], lambda: a.is_leader, timeout=10)

    # Tick b as fast as its retry interval asks for 3.5 intervals of the entry.
    start_count = b.schedule["every-second"].total_run_count
    standby_ticks = 0
    until = time.monotonic() + 3.5 * EVERY

    def ticked_long_enough() -> bool:
        nonlocal standby_ticks
        standby_ticks += 1
        return time.monotonic() >= until

    ticker([b], ticked_long_enough, timeout=30)

    assert not b.is_leader
    shadow_runs = b.schedule["every-second"].total_run_count - start_count
    assert 3 <= shadow_runs <= 4  # the shadow kept up with the schedule
    # The standby ticked every 50 ms (the ticker's nap), some 60 times; the
    # shadow ticked the base scheduler only when a run fell due (each run
    # leaves at most one tick with the next run still a second away).
    assert standby_ticks >= 40
    assert b.idle_base_ticks <= shadow_runs + 1
    assert tap.drain() == []  # the shadow's runs were not published (a was not ticked)


def test_the_leader_renews_often_but_ticks_its_base_at_due_times_only(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any]) -> None:
    """Renewals wake the leader between runs; plain beat would sleep then, and so does the base."""
    schedule = {"every-second": {"task": "tests.lead", "schedule": timedelta(seconds=EVERY)}}
    conf = {"beat_schedule": schedule, "leaderbeat_renew_interval": 0.1,
            "leaderbeat_lease_ttl": 2.0}
    a = make_scheduler(make_app(**conf), "a", cls=CountingShadow)
    ticker([a], lambda: a.is_leader, timeout=10)
    renewals = 0
    renew = a.elector.store.renew

    def counting_renew(*args: Any, **kwargs: Any) -> Any:
        nonlocal renewals
        renewals += 1
        return renew(*args, **kwargs)

    a.elector.store.renew = counting_renew
    start_count = a.schedule["every-second"].total_run_count
    until = time.monotonic() + 3.5 * EVERY
    ticker([a], lambda: time.monotonic() >= until, timeout=30)

    assert a.is_leader
    runs = a.schedule["every-second"].total_run_count - start_count
    assert 3 <= runs <= 4
    assert renewals >= 25  # every 0.1 s for 3.5 s, give or take the ticker's naps
    assert a.idle_base_ticks <= runs + 1  # not one base tick per renewal
    published = [m for m in tap.drain() if m.headers["task"] == "tests.lead"]
    assert len(published) >= runs
