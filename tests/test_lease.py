"""The lease state machine, driven by an injected clock against an in-memory store.

Pure logic: the store here is a dict with the same compare-and-act rules as
the real stores (which have their own tests against real servers), and the
clock only moves when a test moves it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import pytest

from celery_leaderbeat.elector import NotLeader
from celery_leaderbeat.lease import (
    CLOCK_DRIFT_FACTOR,
    Acquisition,
    FencedOut,
    LeadershipLost,
    LeaseElector,
    LeaseHeld,
    LeaseRecord,
    LeaseTiming,
    Renewal,
    StoreUnavailable,
)
from celery_leaderbeat.registry import LEADER, STANDBY, Heartbeat, ReplicaRecord

TIMING = LeaseTiming(ttl=5.0, renew_interval=1.5, retry_interval=0.5)


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore:
    """A lease store in a dict, with expiry judged on the shared fake clock.

    ``latency`` moves the clock while a request is "in flight", so the store
    starts its TTL later than the elector sent the request, as a real one does.
    ``failing`` makes every call raise StoreUnavailable, as an unreachable store.
    """

    description = "memory"

    def __init__(self, clock: Clock, latency: float = 0.0) -> None:
        self.clock = clock
        self.latency = latency
        self.failing = False
        self.calls: Counter[str] = Counter()
        self.owner: str | None = None
        self.identity: str | None = None
        self.term = 0
        self.expires_at = 0.0
        self.history: dict[str, str] = {}
        self.step_down_term: int | None = None
        #: (call, role asked in, record's term) of every heartbeat record received.
        self.beats: list[tuple[str, str, int | None]] = []

    def _request(self, name: str) -> None:
        self.calls[name] += 1
        if self.failing:
            raise StoreUnavailable("connection refused")
        self.clock.advance(self.latency)

    def _ours(self, owner: str, term: int) -> bool:
        alive = self.clock() < self.expires_at
        return alive and self.owner == owner and self.term == term

    def _beat(self, call: str, beat: ReplicaRecord | None) -> None:
        if beat is not None:
            self.beats.append((call, beat.role, beat.term))

    def acquire(self, owner: str, identity: str, ttl: float, *,
                beat: ReplicaRecord | None = None, take: bool = True) -> Acquisition:
        self._request("acquire")
        self._beat("acquire", beat)
        held = self.clock() < self.expires_at
        if held and self.owner != owner:
            return Acquisition(False, LeaseRecord(self.identity, self.term))
        if not take and not held:
            self.calls["declined"] += 1
            return Acquisition(False, LeaseRecord(None, self.term))
        if self.owner != owner or self.clock() >= self.expires_at:
            self.term += 1
        self.owner, self.identity = owner, identity
        self.expires_at = self.clock() + ttl
        return Acquisition(True, LeaseRecord(identity, self.term))

    def renew(self, owner: str, term: int, ttl: float, *,
              beat: ReplicaRecord | None = None) -> Renewal:
        self._request("renew")
        self._beat("renew", beat)
        if not self._ours(owner, term):
            return Renewal.LOST
        if self.step_down_term == term:
            self.step_down_term = None
            self.owner, self.expires_at = None, 0.0
            return Renewal.STEPPED_DOWN
        self.expires_at = self.clock() + ttl
        return Renewal.RENEWED

    def release(self, owner: str, term: int) -> bool:
        self._request("release")
        if not self._ours(owner, term):
            return False
        self.owner, self.expires_at = None, 0.0
        return True

    def read(self) -> LeaseRecord | None:
        if self.clock() >= self.expires_at:
            return None
        return LeaseRecord(self.identity, self.term)

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        self._request("claim")
        if not self._ours(owner, term):
            return False
        self.history.update(runs)
        return True

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        self._request("forget")
        if not self._ours(owner, term):
            return False
        for name in names:
            self.history.pop(name, None)
        return True

    def load_history(self) -> dict[str, str]:
        return dict(self.history)

    def close(self) -> None:
        pass

    def steal(self) -> None:
        """Another replica takes the lease behind our back (ours expired in the store)."""
        self.owner, self.identity = "intruder", "intruder"
        self.term += 1
        self.expires_at = self.clock() + TIMING.ttl


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock)


def elector(store: MemoryStore, clock: Clock, identity: str = "a") -> LeaseElector:
    return LeaseElector(store, identity=identity, timing=TIMING, clock=clock)


def refusal(candidate: LeaseElector) -> NotLeader:
    with pytest.raises(NotLeader) as caught:
        candidate.is_leader()
    return caught.value


def test_first_attempt_acquires_term_one(store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    assert a.term is None
    assert a.is_leader() is True
    assert a.term == 1
    assert store.identity == "a"


def test_renews_only_when_the_renew_interval_has_passed(store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    start = clock()
    a.is_leader()
    for tenths in range(1, 15):  # ticks every 0.1 s up to 1.4 s: no renewal yet
        clock.now = start + tenths / 10
        assert a.is_leader()
    assert store.calls["renew"] == 0
    clock.now = start + TIMING.renew_interval
    assert a.is_leader()
    assert store.calls["renew"] == 1
    assert a.seconds_until_renewal() == pytest.approx(TIMING.renew_interval)


def test_local_deadline_runs_from_the_send_time_not_the_store_time(clock: Clock) -> None:
    """With a slow store, the lease in the store outlives the local deadline."""
    store = MemoryStore(clock, latency=0.4)
    sent_at = clock()
    a = elector(store, clock)
    a.is_leader()
    store.failing = True  # no renewal will succeed from now on
    local_deadline = sent_at + TIMING.ttl * (1 - CLOCK_DRIFT_FACTOR)
    while clock() + 0.01 < local_deadline:
        clock.advance(0.01)
        assert a.is_leader()
    clock.now = local_deadline
    lost = refusal(a)
    assert isinstance(lost, LeadershipLost)
    assert lost.cause == LeadershipLost.EXPIRED
    assert "connection refused" in str(lost)
    assert local_deadline < store.expires_at  # we gave up before the store let anyone in
    assert store.calls["renew"] > 1  # it kept trying while it could


def test_store_outage_never_raises_anything_but_not_leader(
        store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    store.failing = True
    for _ in range(20):
        reason = refusal(a)
        assert "store unavailable" in str(reason)
        clock.advance(0.5)
    store.failing = False
    assert a.is_leader()


def test_refused_renewal_loses_the_lease(store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    a.is_leader()
    store.steal()
    clock.advance(TIMING.renew_interval)
    lost = refusal(a)
    assert isinstance(lost, LeadershipLost)
    assert lost.cause == LeadershipLost.TAKEN
    assert a.term is None


def test_after_release_the_standby_leads_and_the_releaser_waits_one_ttl(
        store: MemoryStore, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    a.is_leader()
    assert isinstance(refusal(b), LeaseHeld)
    a.release()
    lost = refusal(a)
    assert isinstance(lost, LeadershipLost)
    assert lost.cause == LeadershipLost.RELEASED
    clock.advance(TIMING.retry_interval)
    assert b.is_leader()
    assert b.term == 2
    clock.advance(TIMING.ttl - TIMING.retry_interval - 0.01)
    assert isinstance(refusal(a), LeaseHeld)


def test_while_holding_off_a_replica_asks_but_never_takes_a_free_lease(
        store: MemoryStore, clock: Clock) -> None:
    """Its attempts, at the retry pace, only report the holder (and carry heartbeats)."""
    a = elector(store, clock)
    a.is_leader()
    a.release()
    start = clock()
    while clock() < start + TIMING.ttl - 0.01:
        reason = refusal(a)
        assert "holding off" in str(reason) or isinstance(reason, LeadershipLost)
        clock.advance(0.05)
    assert store.calls["declined"] == round(TIMING.ttl / TIMING.retry_interval) - 1
    clock.now = start + TIMING.ttl + TIMING.retry_interval  # the first attempt after it
    assert a.is_leader()
    assert a.term == 2


def test_a_step_down_request_is_honoured_at_the_next_renewal(
        store: MemoryStore, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    a.is_leader()
    store.step_down_term = 1
    clock.advance(TIMING.renew_interval)
    lost = refusal(a)
    assert isinstance(lost, LeadershipLost)
    assert (lost.cause, str(lost)) == (LeadershipLost.RELEASED, "released: step-down requested")
    assert store.step_down_term is None  # seen once
    assert b.is_leader()  # the lease is free at once
    clock.advance(TIMING.ttl - 0.01)
    assert isinstance(refusal(a), LeaseHeld)  # a held off meanwhile, then finds b


def test_heartbeat_records_ride_on_attempts_and_renewals(
        store: MemoryStore, clock: Clock) -> None:
    """No store call of their own; one per heartbeat interval, and at once on a new role."""
    beat = Heartbeat("a", TIMING.renew_interval, clock=clock)
    a = LeaseElector(store, identity="a", timing=TIMING, clock=clock, heartbeat=beat)
    b = elector(store, clock, "b")
    b.is_leader()
    start = clock()
    while clock() < start + 3.0:  # a is a standby for 3 s: attempts every 0.5 s
        refusal(a)
        clock.advance(0.05)
    assert store.beats == [("acquire", STANDBY, None)] * round(3.0 / beat.interval)
    assert store.calls["heartbeat"] == 0
    beats = len(store.beats)
    while len(store.beats) == beats:  # until a's next record: the one after is a second away
        clock.advance(0.05)
        refusal(a)
    beats = len(store.beats)
    b.release()
    clock.advance(TIMING.retry_interval)
    assert a.is_leader()
    assert len(store.beats) == beats  # no record was due on the winning attempt ...
    assert a.seconds_until_renewal() == 0.0  # ... so the next call renews at once,
    assert a.is_leader()  # carrying the record in the leader's role for status and health
    assert store.beats[-1] == ("renew", LEADER, a.term)


def test_release_when_not_leading_does_nothing(store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    a.release()
    assert store.calls["release"] == 0


def test_term_increases_with_every_acquisition(store: MemoryStore, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    terms = []
    for candidate in (a, b, a, b):
        clock.advance(TIMING.ttl)  # whoever led has expired, in the store and locally
        if candidate.term is not None:  # it led before: it hears of the loss first
            assert isinstance(refusal(candidate), LeadershipLost)
        assert candidate.is_leader()
        terms.append(candidate.term)
    assert terms == [1, 2, 3, 4]


def test_a_lost_lease_is_reported_before_it_is_acquired_again(
        store: MemoryStore, clock: Clock) -> None:
    """Else a new term would start unseen, and the caller would skip its takeover."""
    a = elector(store, clock)
    a.is_leader()
    clock.advance(TIMING.ttl)  # a pause; nobody else took the lease meanwhile
    lost = refusal(a)
    assert isinstance(lost, LeadershipLost)
    assert lost.cause == LeadershipLost.EXPIRED
    assert a.is_leader()
    assert a.term == 2


def test_refused_claim_raises_fenced_out_and_steps_down(store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    a.is_leader()
    a.claim({"every-second": "r1"})
    assert store.history == {"every-second": "r1"}
    store.steal()
    with pytest.raises(FencedOut) as caught:
        a.claim({"every-second": "r2"})
    assert caught.value.cause == LeadershipLost.FENCED_OUT
    assert store.history == {"every-second": "r1"}
    assert a.term is None
    assert isinstance(refusal(a), LeaseHeld)


def test_claim_after_the_local_deadline_does_not_reach_the_store(
        store: MemoryStore, clock: Clock) -> None:
    """A leader paused past its lease learns it on waking, before writing anything."""
    a = elector(store, clock)
    a.is_leader()
    clock.advance(TIMING.ttl)  # the pause
    with pytest.raises(FencedOut) as caught:
        a.claim({"every-second": "late"})
    assert caught.value.cause == LeadershipLost.EXPIRED
    assert store.calls["claim"] == 0
    assert store.history == {}
    assert a.term is None


def test_claim_with_the_store_down_is_fenced_with_cause_store_error(
        store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    a.is_leader()
    store.failing = True
    with pytest.raises(FencedOut) as caught:
        a.claim({"every-second": "r1"})
    assert caught.value.cause == LeadershipLost.STORE_ERROR


def test_claim_when_not_leading_is_fenced(store: MemoryStore, clock: Clock) -> None:
    with pytest.raises(FencedOut):
        elector(store, clock).claim({"every-second": "r1"})
    assert store.calls["claim"] == 0


def test_standby_attempts_are_paced_at_the_retry_interval(
        store: MemoryStore, clock: Clock) -> None:
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    a.is_leader()
    for _ in range(40):  # b ticks every 0.05 s for 2 s
        refusal(b)
        clock.advance(0.05)
        a.is_leader()
    b_attempts = store.calls["acquire"] - 1  # minus a's acquisition
    assert b_attempts == 4  # at 0, 0.5, 1.0 and 1.5 s


def test_seconds_until_renewal(store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    assert a.seconds_until_renewal() == 0.0
    a.is_leader()
    clock.advance(1.0)
    assert a.seconds_until_renewal() == pytest.approx(TIMING.renew_interval - 1.0)


def test_step_down_gives_up_leadership_without_releasing(
        store: MemoryStore, clock: Clock) -> None:
    a = elector(store, clock)
    a.is_leader()
    a.step_down(LeadershipLost.FENCED_OUT, "publish refused")
    assert a.term is None
    assert store.calls["release"] == 0
    assert a.is_leader()  # the store still says the lease is ours: the same term again
    assert a.term == 1


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        (LeaseTiming(ttl=0), "ttl"),
        (LeaseTiming(ttl=-5), "ttl"),
        (LeaseTiming(renew_interval=0), "renew_interval"),
        (LeaseTiming(retry_interval=-1), "retry_interval"),
        (LeaseTiming(retry_interval="fast"), "retry_interval"),  # type: ignore[arg-type]
        (LeaseTiming(ttl=True), "ttl"),  # type: ignore[arg-type]
        (LeaseTiming(ttl=1.5, renew_interval=1.5), "ttl"),
        (LeaseTiming(ttl=1, renew_interval=2), "ttl"),
    ],
)
def test_timing_problems_name_the_field(timing: LeaseTiming, field: str) -> None:
    problems = timing.problems()
    assert [name for name, _ in problems] == [field]


def test_default_timing_is_valid_and_meets_the_takeover_targets() -> None:
    timing = LeaseTiming()
    assert timing.problems() == []
    assert timing.ttl + timing.retry_interval + 1 <= 6.5  # crash takeover target
    assert timing.retry_interval + 1 <= 1.5  # graceful takeover target
    # A step-down request is seen at the next renewal: within the retry interval.
    assert timing.renew_interval <= timing.retry_interval
