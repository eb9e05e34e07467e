"""A standby's shadow of the schedule is ticked when runs fall due, not on every retry.

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
