"""The Redis lease store against a real, private redis-server, Sentinel group and cluster.

Tests of the store's operations run on each of ``redis://`` (one server),
``sentinel://`` (1 master, 2 replicas, 3 Sentinels) and ``redis+cluster://``
(3 masters, 3 replicas), each started once per session: the scripts, the
replica guard and the registry are the same, the clients differ. Tests that
stop, restart or pause Redis start a server of their own, so the session's
servers (and the shared one on 6379) are never disturbed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from celery_leaderbeat.elector import NotLeader
from celery_leaderbeat.lease import (
    LeaseElector,
    LeaseHeld,
    LeaseTiming,
    Renewal,
    StoreUnavailable,
)
from celery_leaderbeat.registry import LEADER, STANDBY
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.testing import (
    RedisClusterGroup,
    RedisServer,
    SentinelGroup,
    free_port,
    redis_store,
    replica_record,
    wait_for,
)

FAST = LeaseTiming(ttl=2.0, renew_interval=0.5, retry_interval=0.2)
#: The sentinel:// options of every store here (other stores ignore them).
MASTER = {"master_name": "leaderbeat"}


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    """A Sentinel group for the session's store tests (never faulted)."""
    with SentinelGroup(master_name=MASTER["master_name"]) as group:
        yield group


@pytest.fixture(scope="session")
def cluster_group() -> Iterator[RedisClusterGroup]:
    """A Redis Cluster for the session's store tests (never faulted)."""
    with RedisClusterGroup() as group:
        yield group


@pytest.fixture(params=["redis", "sentinel", "cluster"])
def store_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    """The URL of one store of each kind: a plain server, a Sentinel group, a cluster."""
    if request.param == "redis":
        return redis_server.url
    group = request.getfixturevalue(f"{request.param}_group")
    return str(group.url)


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server this test alone may stop, restart or pause."""
    with RedisServer() as server:
        yield server


def store_on(url: str, name: str, **options: object) -> RedisLeaseStore:
    return redis_store(url, name, transport_options=MASTER, **options)


def elector_on(url: str, name: str, identity: str, timing: LeaseTiming = FAST,
               **options: object) -> LeaseElector:
    return LeaseElector(store_on(url, name, **options), identity=identity, timing=timing)


def leads(candidate: LeaseElector) -> bool:
    """One tick's answer; only NotLeader may come out of the elector."""
    try:
        return candidate.is_leader()
    except NotLeader:
        return False


def leader_and_standby(url: str, name: str) -> tuple[LeaseElector, LeaseElector]:
    """Two electors on one lease: ``a`` asks first and leads, ``b`` stands by."""
    a = elector_on(url, name, "a")
    b = elector_on(url, name, "b")
    wait_for(lambda: leads(a), 10, message="a leads")  # a first term may be unconfirmed
    assert not leads(b)
    return a, b


def test_two_electors_on_one_key_only_one_leads(store_url: str,
                                                lease_name: str) -> None:
    a = elector_on(store_url, lease_name, "a")
    b = elector_on(store_url, lease_name, "b")
    # With the replica guard (sentinel, cluster) a's first term may come back
    # unconfirmed on a loaded machine (WAIT timed out): a then asks again.
    wait_for(lambda: leads(a), 10, message="a leads")
    answers = []
    deadline = time.monotonic() + 1.5  # spans renewals and standby attempts
    while time.monotonic() < deadline:
        answers.append((leads(a), leads(b)))
        time.sleep(0.02)
    assert set(answers) == {(True, False)}
    with pytest.raises(LeaseHeld) as caught:
        b.is_leader()
    assert caught.value.holder == "a"
    assert caught.value.term == a.term


def test_release_hands_over_within_the_standby_retry(store_url: str,
                                                     lease_name: str) -> None:
    a, b = leader_and_standby(store_url, lease_name)
    first_term = a.term
    released_at = time.monotonic()
    a.release()
    wait_for(lambda: leads(b), timeout=5)
    handover = time.monotonic() - released_at
    assert handover <= FAST.retry_interval + 0.5
    assert b.term is not None and first_term is not None and b.term > first_term
    assert not leads(a)  # the releaser waits a whole TTL before trying again


def test_term_increases_with_every_acquisition_and_survives_expiry(
        store_url: str, lease_name: str) -> None:
    short = LeaseTiming(ttl=0.3, renew_interval=0.1, retry_interval=0.05)
    a = elector_on(store_url, lease_name, "a", short)
    b = elector_on(store_url, lease_name, "b", short)
    terms: list[int] = []
    for candidate in (a, b, a):
        wait_for(lambda c=candidate: leads(c), timeout=5)  # type: ignore[misc]
        terms.append(candidate.term or 0)
        # Leave the lease to expire in Redis: the key goes, the term counter stays.
        wait_for(lambda: a.store.read() is None, timeout=5)
        assert not leads(candidate)
    assert terms == sorted(terms) and len(set(terms)) == 3


def test_claims_by_a_stale_term_or_owner_are_refused_and_write_nothing(
        store_url: str, lease_name: str) -> None:
    store = store_on(store_url, lease_name)
    a = LeaseElector(store, identity="a", timing=FAST)
    assert leads(a)
    term = a.term
    assert term is not None
    assert store.claim(a.owner, term, {"every-second": "r1"})
    assert not store.claim(a.owner, term - 1, {"every-second": "stale term"})
    assert not store.claim("someone-else", term, {"every-second": "stale owner"})
    assert not store.claim(a.owner, term + 1, {"new-entry": "future term"})
    assert store.load_history() == {"every-second": "r1"}


def test_forget_drops_records_only_for_the_lease_holder(store_url: str,
                                                       lease_name: str) -> None:
    store = store_on(store_url, lease_name)
    a = LeaseElector(store, identity="a", timing=FAST)
    assert leads(a)
    term = a.term
    assert term is not None
    a.claim({"kept": "r1", "gone": "r2", "also-gone": "r3"})
    assert not store.forget("someone-else", term, ["gone"])
    assert set(store.load_history()) == {"kept", "gone", "also-gone"}
    a.forget(["gone", "also-gone"])
    assert store.load_history() == {"kept": "r1"}


@pytest.mark.parametrize("decode_responses", [False, True])
def test_read_shows_the_lease_as_plain_data(store_url: str, lease_name: str,
                                            decode_responses: bool) -> None:
    url = store_url
    a = elector_on(url, lease_name, "a", decode_responses=decode_responses)
    b = elector_on(url, lease_name, "b", decode_responses=decode_responses)
    store = store_on(url, lease_name, decode_responses=decode_responses)
    assert store.read() is None
    assert leads(a)
    first = store.read()
    assert first is not None
    assert first.holder == "a"
    assert first.term == a.term
    assert first.expires_in is not None and 0 < first.expires_in <= FAST.ttl
    assert isinstance(first.acquired_at, datetime)
    assert first.renewed_at == first.acquired_at
    assert first.transitions == 1
    a.release()
    wait_for(lambda: leads(b), timeout=5)
    second = store.read()
    assert second is not None
    assert (second.holder, second.term, second.transitions) == ("b", b.term, 2)
    b.claim({"every-second": "r1"})
    assert store.load_history() == {"every-second": "r1"}
    # A renewal moves renewed_at, not acquired_at.
    wait_for(lambda: leads(b) and (store.read() or second).renewed_at != second.renewed_at,
             timeout=5)
    third = store.read()
    assert third is not None and third.acquired_at == second.acquired_at


def test_a_stopped_redis_ends_leadership_within_the_ttl_and_nobody_raises(
        own_server: RedisServer, lease_name: str) -> None:
    a, b = leader_and_standby(own_server.url, lease_name)
    own_server.stop()
    stopped_at = time.monotonic()
    believed: list[float] = []  # when ``a`` still said it leads

    def stepped_down() -> bool:
        asked_at = time.monotonic()
        if leads(a):
            believed.append(asked_at)
            return False
        return True

    # Any exception other than NotLeader escaping is_leader() fails this test.
    # Judged by the last time ``a`` still said it leads (not by when the loop
    # noticed it no longer does, which a loaded machine delays).
    wait_for(stepped_down, timeout=FAST.ttl + 2)
    assert not believed or believed[-1] - stopped_at <= FAST.ttl
    _nobody_leads_while_down([a, b], 1.0)
    with pytest.raises(NotLeader, match="store unavailable"):
        b.is_leader()


def _nobody_leads_while_down(electors: list[LeaseElector], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for candidate in electors:
            with pytest.raises(NotLeader):
                candidate.is_leader()
        time.sleep(0.05)


def test_redis_back_makes_someone_lead_again(own_server: RedisServer, lease_name: str) -> None:
    a, b = leader_and_standby(own_server.url, lease_name)
    own_server.stop()
    wait_for(lambda: not leads(a), timeout=FAST.ttl + 2)
    own_server.start()  # same port, empty data
    leader = wait_for(lambda: next((c for c in (a, b) if leads(c)), None),
                      timeout=FAST.retry_interval + 3)
    follower = b if leader is a else a
    assert not leads(follower)


def test_a_paused_redis_never_holds_a_tick_longer_than_the_client_timeout(
        own_server: RedisServer, lease_name: str) -> None:
    a, b = leader_and_standby(own_server.url, lease_name)
    own_server.pause()
    try:
        longest = 0.0
        deadline = time.monotonic() + FAST.ttl + 1  # through the local deadline
        while time.monotonic() < deadline:
            for candidate in (a, b):
                started = time.monotonic()
                leads(candidate)
                longest = max(longest, time.monotonic() - started)
        assert not leads(a)  # its lease may have expired: it stopped leading
    finally:
        own_server.resume()
    socket_timeout = 1.0  # DEFAULT_CLIENT_OPTIONS
    assert longest <= socket_timeout + 0.5
    wait_for(lambda: leads(a) or leads(b), timeout=FAST.ttl + 3)


def test_redis_errors_in_read_and_history_surface_as_store_unavailable(
        own_server: RedisServer, lease_name: str) -> None:
    store = store_on(own_server.url, lease_name)
    own_server.stop()
    with pytest.raises(StoreUnavailable):
        store.read()
    with pytest.raises(StoreUnavailable):
        store.load_history()
    store.close()


# -- the replica registry, carried by acquire and renew ------------------------------


def _roles(store: RedisLeaseStore) -> dict[str, tuple[str, int | None]]:
    return {r.identity: (r.role, r.term) for r in store.replicas()}


def test_acquire_and_renew_write_heartbeats_in_the_role_they_leave(
        store_url: str, lease_name: str) -> None:
    store = store_on(store_url, lease_name)
    won = store.acquire("owner-a", "a", 5, beat=replica_record("a"))
    lost = store.acquire("owner-b", "b", 5, beat=replica_record("b"))
    store.acquire("owner-c", "c", 5, beat=replica_record("c", expires_in=0.5))
    assert won.acquired and not lost.acquired
    assert _roles(store) == {"a": (LEADER, won.lease.term), "b": (STANDBY, None),
                             "c": (STANDBY, None)}
    wait_for(lambda: "c" not in _roles(store), 5, message="the short-lived record expiring")
    assert store.renew("owner-a", won.lease.term, 5, beat=replica_record("a")) is Renewal.RENEWED
    assert store.renew("owner-b", won.lease.term, 5, beat=replica_record("b")) is Renewal.LOST
    assert [r.identity for r in store.replicas()] == ["a", "b"]  # leader first
    assert store.renew("owner-a", won.lease.term, 5) is Renewal.RENEWED  # no record: fine


def test_without_take_a_free_lease_is_reported_free_and_left_alone(
        store_url: str, lease_name: str) -> None:
    store = store_on(store_url, lease_name)
    free = store.acquire("owner-a", "a", 5, take=False, beat=replica_record("a"))
    assert not free.acquired and free.lease.holder is None
    assert store.read() is None and _roles(store) == {"a": (STANDBY, None)}
    taken = store.acquire("owner-b", "b", 5)
    held = store.acquire("owner-a", "a", 5, take=False)
    assert not held.acquired and (held.lease.holder, held.lease.term) == ("b", taken.lease.term)


def test_a_step_down_request_releases_at_the_renewal_of_its_term_once(
        store_url: str, lease_name: str) -> None:
    store = store_on(store_url, lease_name)
    first = store.acquire("owner-a", "a", 5, beat=replica_record("a")).lease.term
    asked = store.request_step_down()
    assert asked is not None and (asked.holder, asked.term) == ("a", first)
    assert store.renew("owner-a", first, 5, beat=replica_record("a")) is Renewal.STEPPED_DOWN
    assert store.read() is None and _roles(store) == {"a": (STANDBY, None)}
    second = store.acquire("owner-b", "b", 5)  # free at once
    assert second.acquired and second.lease.term > first
    # The request was seen once, and a request for an old term never touches a later one.
    assert store.renew("owner-b", second.lease.term, 5) is Renewal.RENEWED
    store.client.set(store.step_down_key, first)
    assert store.renew("owner-b", second.lease.term, 5) is Renewal.RENEWED
    assert store.request_step_down() is not None
    assert store.renew("owner-b", second.lease.term, 5) is Renewal.STEPPED_DOWN


@pytest.mark.parametrize("decode_responses", [False, True])
def test_names_and_identities_with_lone_surrogates_round_trip_exactly(
        store_url: str, lease_name: str, decode_responses: bool) -> None:
    """No UTF-8 text holds a lone surrogate; the store keeps it all the same, in
    entry names (claim, history, forget) and in identities (lease, registry),
    whatever the client options say of decoding."""
    store = store_on(store_url, lease_name, decode_responses=decode_responses)
    identity, other, owner = "beat-\udc80", "beat-\ud800", "owner-\udc80"
    won = store.acquire(owner, identity, 5, beat=replica_record(identity))
    assert won.acquired and won.lease.holder == identity
    term = won.lease.term
    lost = store.acquire("owner-b", other, 5, beat=replica_record(other))
    assert not lost.acquired and lost.lease.holder == identity
    held = store.read()
    assert held is not None and held.holder == identity
    assert _roles(store) == {identity: (LEADER, term), other: (STANDBY, None)}
    runs = {"nightly-\ud800": "r1", "report \ud83d\udcc8": "r2", "report \U0001f4c8": "r3",
            "plain": "r4"}
    assert store.claim(owner, term, runs)
    assert store.load_history() == runs
    assert store.forget(owner, term, ["nightly-\ud800", "report \ud83d\udcc8"])
    assert store.load_history() == {"report \U0001f4c8": "r3", "plain": "r4"}
    # A field no name of ours encodes to (not UTF-8 even with surrogates) is left out.
    store.client.hset(store.history_key, b"\xff-by-someone-else", "r5")
    assert store.load_history() == {"report \U0001f4c8": "r3", "plain": "r4"}
    assert store.renew(owner, term, 5, beat=replica_record(identity)) is Renewal.RENEWED
    store.withdraw(other)
    assert _roles(store) == {identity: (LEADER, term)}
    asked = store.request_step_down()
    assert asked is not None and (asked.holder, asked.term) == (identity, term)
    assert store.release(owner, term)
    assert store.read() is None


def test_a_cluster_store_starts_while_no_node_answers_and_connects_later(
        lease_name: str) -> None:
    """As every store connects lazily: beat starts, and leads once the cluster answers."""
    group = RedisClusterGroup()  # its ports are chosen, nothing listens yet
    try:
        store = store_on(group.url, lease_name)
        with pytest.raises(StoreUnavailable):
            store.acquire("owner-a", "a", 5)
        group.start()
        assert wait_for(lambda: store.acquire("owner-a", "a", 5).acquired, 10)
        store.close()
    finally:
        group.close()


def test_sentinels_that_refuse_connections_never_hold_a_tick(lease_name: str) -> None:
    """Every Sentinel down: each call fails within the client's timeout, without
    redis-py's own retries (with backoff, they held a call 16 s)."""
    url = f"sentinel://127.0.0.1:{free_port()};sentinel://127.0.0.1:{free_port()}/0"
    store = store_on(url, lease_name)
    try:
        for call in (store.read, store.load_history, lambda: store.acquire("o", "a", 5.0)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 1.0
    finally:
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 1.0
