"""Batched claims: many due entries, few store calls, and fencing kept.

When many entries fall due at once the leader claims their runs in batches
(one fenced store call each) instead of one call per run. These tests check
on a real Redis, with real messages, that every run is still claimed before
it is published, that a batch claimed by a stale term is refused whole and
publishes nothing, and that a leader whose lease may have expired in the
middle of a batch publishes nothing more of it: the runs it claimed and did
not publish are lost, never repeated by the next leader.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, Callable

import pytest
from celery import Celery
from celery.signals import after_task_publish

from celery_leaderbeat import LeaseElector, LeaseTiming
from celery_leaderbeat.history import RunRecord
from celery_leaderbeat.scheduler import TERM_HEADER
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.testing import RedisServer, redis_store

ENTRIES = 25
BATCH = 10


def due_schedule() -> dict[str, Any]:
    """ENTRIES hourly entries, each with its own task name so messages tell them apart."""
    return {f"e{i:02d}": {"task": f"tests.batch.e{i:02d}", "schedule": timedelta(hours=1)}
            for i in range(ENTRIES)}


def make_all_due(scheduler: Any) -> None:
    """Put our entries' last run two hours back and rebuild the heap: all are due now.

    Celery's own default entry (backend_cleanup) is left as it is. The base
    scheduler is ticked at once, not when it last asked to be woken (plain
    beat, asleep until then, would not see the change earlier either).
    """
    past = scheduler.app.now() - timedelta(hours=2)
    for name in due_schedule():
        scheduler.schedule[name].last_run_at = past
    scheduler._heap = None
    scheduler._base_next = 0.0


def entry_of(message: Any) -> str:
    return str(message.headers["task"]).rsplit(".", 1)[-1]


class ClaimLog(RedisLeaseStore):
    """The real Redis store, noting each claim and publish in the order they happen.

    Publishes are seen through Celery's after_task_publish signal (process
    wide), so each carries the term from its headers to tell replicas apart.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, Any]] = []
        after_task_publish.connect(self._published, weak=False)

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        accepted = super().claim(owner, term, runs)
        self.events.append(("claim" if accepted else "refused", sorted(runs)))
        return accepted

    def _published(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        if str(sender).startswith("tests.batch."):
            term = (headers or {}).get(TERM_HEADER)
            self.events.append(("publish", (str(sender).rsplit(".", 1)[-1], term)))

    def close(self) -> None:
        after_task_publish.disconnect(self._published)
        super().close()


class SteppableClock:
    """time.monotonic, plus a jump the test makes to stand for a long pause."""

    def __init__(self) -> None:
        self.paused_for = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.paused_for


@pytest.fixture
def leader_a(make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
             redis_server: RedisServer, lease_name: str
             ) -> Iterator[tuple[Any, ClaimLog, SteppableClock]]:
    """Replica a with a long renew interval (no renewal during a test) and a steppable clock."""
    clock = SteppableClock()
    store = ClaimLog(redis_store(redis_server.url, lease_name).client, lease_name)
    elector = LeaseElector(store, identity="a", clock=clock,
                           timing=LeaseTiming(ttl=10, renew_interval=5, retry_interval=0.2))
    a = make_scheduler(make_app(beat_schedule=due_schedule(), leaderbeat_elector=elector), "a")
    a.claim_batch = BATCH
    yield a, store, clock
    a.close()


def test_due_runs_are_claimed_in_batches_each_before_it_is_published(
        leader_a: tuple[Any, ClaimLog, SteppableClock], tap: Any,
        ticker: Callable[..., Any]) -> None:
    a, store, _ = leader_a
    make_all_due(a)
    messages = ticker([a], lambda: tap.count() >= ENTRIES and tap.received, timeout=30)

    assert sorted(entry_of(m) for m in messages) == sorted(due_schedule())
    claims = [names for kind, names in store.events if kind == "claim"]
    assert [len(names) for names in claims] == [BATCH, BATCH, ENTRIES - 2 * BATCH]
    claimed_so_far: set[str] = set()
    for kind, what in store.events:
        if kind == "claim":
            claimed_so_far.update(what)
        else:
            assert what[0] in claimed_so_far, f"{what[0]} published before it was claimed"
    # The store's history and the local schedule agree on every run.
    history = {name: RunRecord.decode(text) for name, text in store.load_history().items()}
    for name in due_schedule():
        entry = a.schedule[name]
        assert history[name].total_run_count == entry.total_run_count == 1
        assert history[name].last_run_at == entry.last_run_at
        assert history[name].term == a.term


def test_a_batch_claimed_by_a_stale_term_is_refused_whole_and_publishes_nothing(
        leader_a: tuple[Any, ClaimLog, SteppableClock], tap: Any,
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str) -> None:
    a, store, _ = leader_a
    ticker([a], lambda: a.is_leader, timeout=10)  # leads; nothing is due yet
    store.client.delete(store.lease_key)  # the lease went away unseen by a's clock
    b = LeaseElector(redis_store(redis_server.url, lease_name), identity="b")
    assert b.is_leader()

    make_all_due(a)
    ticker([a], lambda: not a.is_leader, timeout=10)
    # One claim of a whole batch, refused; no publish at all (publishing is
    # synchronous, so the signal would have been seen); nothing recorded.
    assert [kind for kind, _ in store.events] == ["refused"]
    assert len(store.events[0][1]) == BATCH
    assert tap.drain() == []
    assert store.load_history() == {}
    b.release()
    b.close()


def test_a_leader_whose_lease_may_have_expired_mid_batch_publishes_no_more_of_it(
        leader_a: tuple[Any, ClaimLog, SteppableClock], tap: Any,
        ticker: Callable[..., Any], make_app: Callable[..., Celery],
        make_scheduler: Callable[..., Any]) -> None:
    a, store, clock = leader_a
    make_all_due(a)
    first = ticker([a], lambda: tap.received or tap.drain(), timeout=10)
    assert len(first) == 1 and a.is_leader
    a_term = a.term
    claimed_by_a = set(store.events[0][1])
    assert len(claimed_by_a) == BATCH

    # a freezes past its lease (its clock sees it); Redis let the lease go; b takes over.
    clock.paused_for = 10
    store.client.delete(store.lease_key)
    b = make_scheduler(make_app(beat_schedule=due_schedule()), "b")
    make_all_due(b)
    from_b = ticker([a, b], lambda: tap.count() >= 1 + ENTRIES - BATCH and tap.received,
                    timeout=30)

    assert not a.is_leader
    later = from_b[1:]
    assert all(m.headers[TERM_HEADER] == b.term != a_term for m in later)
    # b publishes exactly the runs nobody claimed: the nine that a claimed and
    # never published are lost (the documented price of a batch), not repeated.
    assert {entry_of(m) for m in later} == set(due_schedule()) - claimed_by_a

    until = time.monotonic() + 1.0  # both keep ticking a while: still nothing more
    ticker([a, b], lambda: time.monotonic() >= until, timeout=10)
    assert tap.drain() == []
    by_a = [what for kind, what in store.events if kind == "publish" and what[1] == a_term]
    assert len(by_a) == 1
    assert [kind for kind, _ in store.events if kind != "publish"] == ["claim"]
