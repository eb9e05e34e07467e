"""LeaderScheduler in-process: gating, sleeps, shared history, fencing, catch-up, signals.

Schedulers run in this process, ticked by the test the way ``celery beat``'s
loop ticks them; what they publish goes through the private Redis broker to
a queue the test consumes, so every check is on messages that really arrived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from celery import Celery, current_app
from celery.schedules import crontab
from kombu.message import Message

from celery_leaderbeat import LeaderScheduler, LeaseElector, LeaseTiming, NotLeader, signals
from celery_leaderbeat.history import RunRecord
from celery_leaderbeat.scheduler import LEASE_HEADER, SCHEDULED_AT_HEADER, TERM_HEADER
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.testing import RedisServer, redis_store

EVERY = 0.3  # seconds between runs of the fast entry


def every(seconds: float, task: str = "tests.tick") -> dict[str, Any]:
    return {"task": task, "schedule": timedelta(seconds=seconds)}


def scheduled_at(message: Message) -> datetime:
    return datetime.fromisoformat(message.headers[SCHEDULED_AT_HEADER])


def tasks(messages: list[Message]) -> list[str]:
    return [m.headers["task"] for m in messages]


class ScriptedElector:
    """A custom elector whose answer the test sets; it counts every question."""

    def __init__(self) -> None:
        self.answer: Callable[[], bool] = lambda: True
        self.calls = 0

    def is_leader(self) -> bool:
        self.calls += 1
        return self.answer()


class CountingScheduler(LeaderScheduler):
    """Counts ticks, to compare with the questions the elector was asked."""

    ticks = 0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.ticks += 1
        return super().tick(*args, **kwargs)


def tick_for(scheduler: Any, seconds: float, ticker: Callable[..., Any]) -> None:
    """Keep the beat loop running for a while, to show that nothing happens in it."""
    until = time.monotonic() + seconds
    ticker([scheduler], lambda: time.monotonic() >= until, timeout=seconds + 30)


@pytest.fixture
def events() -> Iterator[list[tuple[Any, ...]]]:
    """Every leadership signal, in the order sent: (signal, identity, term, detail)."""
    seen: list[tuple[Any, ...]] = []

    def gained(sender: Any, identity: str, term: int | None, **_: Any) -> None:
        seen.append(("gained", identity, term, None))

    def lost(sender: Any, identity: str, term: int | None, cause: str, **_: Any) -> None:
        seen.append(("lost", identity, term, cause))

    def observed(sender: Any, identity: str, leader: str, leader_term: int, **_: Any) -> None:
        seen.append(("observed", identity, leader_term, leader))

    receivers = [(signals.leadership_gained, gained), (signals.leadership_lost, lost),
                 (signals.leader_observed, observed)]
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


# -- gating on every tick (gocron issue 681) -------------------------------------------


def test_dispatch_stops_and_resumes_and_every_tick_asks(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    elector = ScriptedElector()
    app = make_app(beat_schedule={"fast": every(EVERY)}, leaderbeat_elector=elector)
    beat = make_scheduler(app, "a", cls=CountingScheduler)

    ticker([beat], lambda: tap.count() >= 2, timeout=15)
    assert beat.is_leader

    def not_my_turn() -> bool:
        raise NotLeader("not my turn")

    def broken() -> bool:
        raise RuntimeError("elector bug")

    published = len(tap.received)
    with caplog.at_level(logging.INFO, logger="celery_leaderbeat"):
        for answer in (lambda: False, not_my_turn, broken):
            elector.answer = answer
            tick_for(beat, 3 * EVERY, ticker)
            assert not beat.is_leader
    assert tap.drain() == []
    assert len(tap.received) == published
    standby_lines = [r.getMessage() for r in caplog.records if "is a standby" in r.getMessage()]
    # One line per change of reason, not one per tick (there were dozens of ticks).
    assert len(standby_lines) <= 3
    assert any("not my turn" in line for line in standby_lines)
    assert any("elector bug" in line for line in standby_lines)

    elector.answer = lambda: True
    ticker([beat], lambda: tap.count() >= published + 2, timeout=15)
    assert beat.is_leader
    assert elector.calls == beat.ticks


# -- how long the loop sleeps ------------------------------------------------------------


def test_the_leader_never_sleeps_past_its_lease_renewal(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any]) -> None:
    app = make_app(beat_schedule={"hourly": every(3600)}, leaderbeat_lease_ttl=4,
                   leaderbeat_renew_interval=1.0)
    beat = make_scheduler(app, "a", max_interval=300)
    for _ in range(5):
        sleep = beat.tick()
        assert beat.is_leader
        assert 0 < sleep <= 1.0
        assert sleep <= beat.elector.seconds_until_renewal() + 0.01


def test_a_custom_elector_leader_sleeps_at_most_the_renew_interval(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any]) -> None:
    app = make_app(beat_schedule={"hourly": every(3600)}, leaderbeat_elector="static://leader",
                   leaderbeat_renew_interval=2.0, leaderbeat_lease_ttl=6)
    beat = make_scheduler(app, "a", max_interval=300)
    assert beat.tick() <= 2.0


def test_a_standby_comes_back_after_the_retry_interval(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any]) -> None:
    app = make_app(beat_schedule={"hourly": every(3600)}, leaderbeat_elector="static://standby",
                   leaderbeat_retry_interval=0.7)
    beat = make_scheduler(app, "a", max_interval=300)
    assert [beat.tick() for _ in range(3)] == [0.7, 0.7, 0.7]


def test_a_standby_tries_once_per_retry_interval_even_when_its_shadow_wakes_it(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        redis_server: RedisServer, lease_name: str) -> None:
    """Sleeping as tick() says, a standby attempts every retry interval, no slower.

    Its shadow wakes it between attempts (here a 0.35 s entry against a 0.5 s
    retry); a wake-up just before the next allowed attempt must not push that
    attempt back by a whole retry interval. (Push off: the pace of a store
    that cannot push; tests/test_push.py has the pace of one that can.)
    """
    holder = LeaseElector(redis_store(redis_server.url, lease_name),
                          identity="holder", timing=LeaseTiming(ttl=30, renew_interval=10))
    assert holder.is_leader()
    b = make_scheduler(make_app(beat_schedule={"fast": every(0.35)},
                                leaderbeat_retry_interval=0.5), "b")
    attempts: list[float] = []
    acquire = b.elector.store.acquire

    def counted(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        return acquire(*args, **kwargs)

    b.elector.store.acquire = counted
    end = time.monotonic() + 4.0
    while time.monotonic() < end:  # what celery.beat.Service.start does
        time.sleep(max(0.0, b.tick()))
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
    assert len(attempts) >= 7, gaps
    assert max(gaps) < 0.5 + 0.15, gaps
    holder.release()


# -- shared run history ----------------------------------------------------------------


def test_a_new_leader_continues_from_the_shared_history(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str) -> None:
    schedule_a = {"every-second": every(1.0, "tests.every_second"),
                  "retired": every(1.0, "tests.retired")}
    a = make_scheduler(make_app(beat_schedule=schedule_a), "a")
    # b starts now, so its own schedule file is stale by the time it takes over:
    # left to itself it would send at once a run that a already sent.
    b = make_scheduler(make_app(beat_schedule={"every-second": schedule_a["every-second"]}), "b")

    def sent_by_a() -> bool:
        tap.drain()
        names = tasks(tap.received)
        return names.count("tests.every_second") >= 3 and "tests.retired" in names

    ticker([a], sent_by_a, timeout=20)
    a.close()
    from_a = [m for m in tap.received if m.headers["task"] == "tests.every_second"]
    store = redis_store(redis_server.url, lease_name)
    last_of_a = RunRecord.decode(store.load_history()["every-second"])
    assert last_of_a.total_run_count == len(from_a)

    sent_by_then = len(tap.received)
    ticker([b], lambda: tap.count() > sent_by_then, timeout=10)
    first_of_b = tap.received[sent_by_then]
    assert first_of_b.headers["task"] == "tests.every_second"
    assert first_of_b.headers[TERM_HEADER] > from_a[-1].headers[TERM_HEADER]
    # Scheduled from a's last run: not a repeat, and no run left out.
    expected = last_of_a.last_run_at + timedelta(seconds=1)
    assert abs((scheduled_at(first_of_b) - expected).total_seconds()) < 0.05
    gap = (scheduled_at(first_of_b) - scheduled_at(from_a[-1])).total_seconds()
    assert 1.0 <= gap < 2.0
    history = store.load_history()
    assert RunRecord.decode(history["every-second"]).total_run_count == len(from_a) + 1
    assert "retired" not in history  # gone from the schedule, so forgotten
    store.close()


# -- fenced dispatch -------------------------------------------------------------------


class SteppableClock:
    """time.monotonic, plus a jump the test makes to stand for a long pause."""

    def __init__(self) -> None:
        self.paused_for = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.paused_for


@pytest.mark.parametrize("noticed_by", ["claim", "clock"])
def test_a_leader_whose_lease_was_taken_publishes_nothing_and_steps_down(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str,
        events: list[tuple[Any, ...]], noticed_by: str) -> None:
    """A pause past the lease: Redis let the lease go and b took it; then a wakes up.

    ``claim``: a's clock did not see the pause (its renewal is not due yet), so
    only the fenced claim in Redis stops it. ``clock``: a's monotonic clock saw
    the pause, so its local deadline stops it before it asks Redis anything.
    """
    timing = LeaseTiming(ttl=10, renew_interval=5, retry_interval=0.2)
    clock = SteppableClock()
    a_store = redis_store(redis_server.url, lease_name)
    a_elector = LeaseElector(a_store, identity="a", timing=timing, clock=clock, push=False)
    a = make_scheduler(make_app(beat_schedule={"fast": every(EVERY)},
                                leaderbeat_elector=a_elector), "a")
    ticker([a], lambda: tap.count() >= 1, timeout=10)
    a_term = a.term

    a_store.client.delete(a_store.lease_key)  # expired in Redis during the pause
    b = LeaseElector(redis_store(redis_server.url, lease_name), identity="b",
                     timing=timing)
    assert b.is_leader()
    if noticed_by == "clock":
        clock.paused_for = timing.ttl
    history_before = a_store.load_history()
    published = len(tap.received)

    ticker([a], lambda: not a.is_leader, timeout=10)
    tick_for(a, 3 * EVERY, ticker)  # and it stays a standby
    assert tap.drain() == []
    assert len(tap.received) == published
    assert a_store.load_history() == history_before  # nothing claimed either
    lost = [e for e in events if e[0] == "lost"]
    cause = "fenced out" if noticed_by == "claim" else "expired"
    assert lost == [("lost", "a", a_term, cause)]
    assert ("observed", "a", b.term, "b") in events
    assert b.is_leader()  # b was never disturbed
    b.release()


def test_messages_carry_the_fencing_token(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], lease_name: str) -> None:
    app = make_app(beat_schedule={"fast": {**every(EVERY), "options": {
        "headers": {"team": "billing"}}}})
    beat = make_scheduler(app, "a")
    ticker([beat], lambda: tap.count() >= 2, timeout=10)
    first, second = tap.received[:2]
    assert first.headers[TERM_HEADER] == beat.term
    assert first.headers[LEASE_HEADER] == lease_name
    assert first.headers["team"] == "billing"  # the entry's own headers are kept
    assert scheduled_at(first).tzinfo is not None
    step = (scheduled_at(second) - scheduled_at(first)).total_seconds()
    assert EVERY <= step < EVERY + 0.5
    assert app.conf.beat_schedule["fast"]["options"] == {"headers": {"team": "billing"}}


# -- catch-up --------------------------------------------------------------------------


def seed_history(url: str, lease_name: str, name: str, last_run_at: datetime) -> None:
    """An earlier leader ran ``name`` at ``last_run_at`` and then went away."""
    old = LeaseElector(redis_store(url, lease_name), identity="old-leader")
    assert old.is_leader()
    old.claim({name: RunRecord(last_run_at, 5, old.term or 0).encode()})
    old.release()
    old.close()


def lead_and_settle(beat: Any, ticker: Callable[..., Any]) -> None:
    """Tick until leading, then a few more: the first leader tick decides the catch-up."""
    ticker([beat], lambda: beat.is_leader, timeout=10)
    for _ in range(5):
        beat.tick()


@pytest.mark.parametrize(("policy", "expected"), [("once", 1), ("skip", 0)])
def test_runs_missed_while_nobody_led(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str,
        policy: str, expected: int) -> None:
    missed_since = datetime.now(timezone.utc) - timedelta(minutes=10)  # ten runs missed
    seed_history(redis_server.url, lease_name, "every-minute", missed_since)
    app = make_app(beat_schedule={"every-minute": every(60)}, leaderbeat_catch_up=policy)
    beat = make_scheduler(app, "new-leader")
    lead_and_settle(beat, ticker)
    tap.drain()
    assert len(tap.received) == expected
    if expected:
        late = scheduled_at(tap.received[0]) - (missed_since + timedelta(minutes=1))
        assert abs(late.total_seconds()) < 0.05  # the first missed run, once
    due, next_in = beat.schedule["every-minute"].is_due()
    assert not due and 55 < next_in <= 60  # the next regular run, from now
    record = RunRecord.decode(beat.elector.load_history()["every-minute"])
    assert record.term == beat.term
    assert record.last_run_at > missed_since + timedelta(minutes=9)


@pytest.mark.parametrize(("deadline", "expected"), [(None, 1), (60, 0)])
def test_crontab_runs_missed_past_the_starting_deadline_are_not_sent(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str,
        deadline: int | None, expected: int) -> None:
    now = datetime.now(timezone.utc)
    fell_due = now - timedelta(minutes=10)  # a daily run, missed ten minutes ago
    seed_history(redis_server.url, lease_name, "daily", now - timedelta(hours=2))
    daily = {"task": "tests.daily",
             "schedule": crontab(minute=fell_due.minute, hour=fell_due.hour)}
    app = make_app(beat_schedule={"daily": daily}, beat_cron_starting_deadline=deadline)
    # Entries unpickled from the schedule file read settings from the current app,
    # as in a real ``celery beat`` process, whose app is the current one.
    previous = current_app._get_current_object()
    app.set_current()
    try:
        beat = make_scheduler(app, "new-leader")
        lead_and_settle(beat, ticker)
    finally:
        previous.set_current()
    tap.drain()
    assert tasks(tap.received) == ["tests.daily"] * expected


# -- shutdown and signals --------------------------------------------------------------


def test_close_releases_the_lease_at_once_and_may_be_called_twice(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        redis_server: RedisServer, lease_name: str, events: list[tuple[Any, ...]]) -> None:
    a = make_scheduler(make_app(), "a")
    a.tick()
    assert a.is_leader
    term = a.term
    a.close()
    a.close()  # Celery's SIGTERM handler and the service both close
    b = LeaseElector(redis_store(redis_server.url, lease_name), identity="b")
    assert b.is_leader()  # at its first attempt, no TTL to wait out
    assert [e for e in events if e[0] == "lost"] == [("lost", "a", term, "released")]
    b.release()


def test_signals_fire_once_per_transition_in_order(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        ticker: Callable[..., Any], events: list[tuple[Any, ...]]) -> None:
    a = make_scheduler(make_app(), "a")
    b = make_scheduler(make_app(), "b")
    for _ in range(3):
        a.tick()
        b.tick()
    first = a.term
    a.close()
    ticker([b], lambda: b.is_leader, timeout=10)
    for _ in range(3):
        b.tick()
    second = b.term
    b.close()
    assert first is not None and second is not None and second > first
    assert events == [
        ("gained", "a", first, None),
        ("observed", "b", first, "a"),
        ("lost", "a", first, "released"),
        ("gained", "b", second, None),
        ("lost", "b", second, "released"),
    ]


class OneConnectionStore:
    """A store whose calls all take one non-reentrant lock, as psycopg's connection does.

    ``interrupt``, when set, runs inside the next renewal while the lock is
    held: what beat's SIGTERM handler does when the signal lands mid-call.
    """

    def __init__(self, inner: RedisLeaseStore) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.interrupt: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.lock.acquire(timeout=2):
                raise AssertionError(f"{name}() waits on the connection a call it interrupted "
                                     "holds: beat would hang here")
            try:
                interrupt, self.interrupt = self.interrupt, None
                if interrupt is not None and name == "renew":
                    interrupt()
                return attr(*args, **kwargs)
            finally:
                self.lock.release()
        return call


def test_sigterm_in_the_middle_of_a_store_call_releases_without_deadlock(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        redis_server: RedisServer, lease_name: str) -> None:
    """As celery.beat.Service.start and beat's SIGTERM handler drive the scheduler."""
    store = OneConnectionStore(redis_store(redis_server.url, lease_name))
    elector = LeaseElector(store, identity="a",  # type: ignore[arg-type]
                           timing=LeaseTiming(ttl=5, renew_interval=0.05, retry_interval=0.05))
    a = make_scheduler(make_app(leaderbeat_elector=elector), "a")

    def sigterm_handler() -> None:  # celery.apps.beat's _sync: service.sync(), then exit
        a.close()
        raise SystemExit()

    a.tick()
    assert a.is_leader
    store.interrupt = sigterm_handler
    try:
        while True:  # Service.start's loop; the handler's SystemExit ends it
            time.sleep(max(0.0, min(a.tick(), 0.05)))
    except SystemExit:
        pass
    finally:
        a.close()  # Service.start's finally: sync() closes the scheduler again
    assert store.interrupt is None  # the handler ran
    assert store.inner.read() is None  # the lease was released, not left to expire
    assert not a.is_leader
