"""The replica guard of the Redis stores (leaderbeat_redis_min_replicas), on private servers.

A master with one replica, reached as ``redis://`` with the guard on (as the
Sentinel and Cluster stores have it by default): a term starts only while
enough replicas are online, a claim counts only once the replicas hold it,
and a replica that goes away ends the term, which is left to expire.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_leaderbeat.lease import FencedOut, LeaseElector, LeaseTiming, Renewal, StoreUnavailable
from celery_leaderbeat.stores.redis import REPLICA_WAIT
from celery_leaderbeat.testing import RedisServer, redis_store, wait_for
from celery_leaderbeat.testing.sentinel import SentinelGroup, replicated_node_config

FAST = LeaseTiming(ttl=1.0, renew_interval=0.3, retry_interval=0.1)


@pytest.fixture
def master_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer(config=replicated_node_config()) as master, \
            RedisServer(config=[*replicated_node_config(),
                                f"replicaof 127.0.0.1 {master.port}"]) as replica:
        wait_for(lambda: SentinelGroup.replicas_acking(master, 1), 10,
                 message="the replica online")
        yield master, replica


def test_no_term_starts_with_fewer_replicas_online_than_required(
        redis_server: RedisServer, lease_name: str) -> None:
    store = redis_store(redis_server.url, lease_name, min_replicas=1)
    with pytest.raises(StoreUnavailable, match="0 replicas online, 1 needed"):
        store.acquire("owner-a", "a", 5)
    assert store.read() is None
    # Without the guard (the default for redis://) the same server leads at once.
    assert redis_store(redis_server.url, lease_name).acquire("owner-a", "a", 5).acquired


def test_a_claim_counts_only_once_the_replica_holds_it(
        master_and_replica: tuple[RedisServer, RedisServer], lease_name: str) -> None:
    master, replica = master_and_replica
    store = redis_store(master.url, lease_name, min_replicas=1)
    leader = LeaseElector(store, identity="a", timing=LeaseTiming(ttl=10, renew_interval=5))
    assert leader.is_leader()
    leader.claim({"every-second": "r1"})
    assert replica.client().hget(store.history_key, "every-second") == b"r1"
    replica.pause()  # online for the master, but acknowledging nothing
    try:
        with pytest.raises(FencedOut, match="not confirmed: 0 of the 1 replicas") as caught:
            leader.claim({"every-second": "r2"})
    finally:
        replica.resume()
    assert caught.value.cause == "store error"  # the scheduler steps down, publishing nothing


def test_a_term_the_replicas_do_not_confirm_is_never_used(
        master_and_replica: tuple[RedisServer, RedisServer], lease_name: str) -> None:
    """So a failover to a replica that missed the term's increment cannot hand the
    same term to a second holder that the first has already used."""
    master, replica = master_and_replica
    store = redis_store(master.url, lease_name, min_replicas=1)
    replica.pause()
    try:
        with pytest.raises(StoreUnavailable, match="not confirmed"):
            store.acquire("owner-a", "a", 5)
    finally:
        replica.resume()
    wait_for(lambda: SentinelGroup.replicas_acking(master, 1), 10, message="replica acking")
    again = store.acquire("owner-a", "a", 5)  # confirmed now: this term may be used
    assert again.acquired


def test_a_replica_gone_ends_the_term_which_is_left_to_expire(
        master_and_replica: tuple[RedisServer, RedisServer], lease_name: str) -> None:
    master, replica = master_and_replica
    store = redis_store(master.url, lease_name, min_replicas=1)
    won = store.acquire("owner-a", "a", FAST.ttl)
    assert won.acquired
    term = won.lease.term
    replica.kill()  # it could as well have been promoted by Sentinel
    wait_for(lambda: SentinelGroup.online_replicas(master) == 0, 5, message="replica gone")
    assert store.renew("owner-a", term, FAST.ttl) is Renewal.LOST
    assert not store.claim("owner-a", term, {"every-second": "r"})
    with pytest.raises(StoreUnavailable, match="began with more replicas"):
        store.acquire("owner-a", "a", FAST.ttl)  # not even its holder extends it
    assert not store.release("owner-a", term)  # nor frees it for a new term at once
    assert "every-second" not in store.load_history()
    wait_for(lambda: store.read() is None, FAST.ttl + 2, message="the lease expiring")
    with pytest.raises(StoreUnavailable, match="0 replicas online"):
        store.acquire("owner-b", "b", FAST.ttl)
    replica.start()
    wait_for(lambda: SentinelGroup.replicas_acking(master, 1), 10, message="replica back")
    assert store.acquire("owner-b", "b", FAST.ttl).lease.term > term


def test_a_replica_added_raises_what_the_term_waits_for(
        master_and_replica: tuple[RedisServer, RedisServer], lease_name: str) -> None:
    master, _ = master_and_replica
    store = redis_store(master.url, lease_name, min_replicas=1)
    term = store.acquire("owner-a", "a", 5).lease.term
    with RedisServer(config=[*replicated_node_config(), f"replicaof 127.0.0.1 {master.port}"]):
        wait_for(lambda: SentinelGroup.replicas_acking(master, 2), 10, message="2 online")
        assert store.renew("owner-a", term, 5) is Renewal.RENEWED
        assert master.client().hget(store.lease_key, "replicas") == b"2"
    wait_for(lambda: SentinelGroup.online_replicas(master) == 1, 10, message="1 online")
    assert store.renew("owner-a", term, 5) is Renewal.LOST


def test_the_guard_defaults_on_for_sentinel_and_cluster_and_off_for_redis(
        lease_name: str) -> None:
    from celery_leaderbeat.stores.redis import RedisLeaseStore
    from celery_leaderbeat.stores.redis_cluster import RedisClusterLeaseStore
    from celery_leaderbeat.stores.redis_sentinel import RedisSentinelLeaseStore
    from celery_leaderbeat.testing import store_settings

    unset, zero = store_settings(lease_name), store_settings(lease_name, redis_min_replicas=0)
    assert [c.min_replicas_of(unset) for c in (
        RedisLeaseStore, RedisSentinelLeaseStore, RedisClusterLeaseStore)] == [0, 1, 1]
    assert RedisSentinelLeaseStore.min_replicas_of(zero) == 0
    assert 0 < REPLICA_WAIT < 1.0  # under the client's socket timeout
