"""Three real ``celery beat`` processes on one Redis: one publishes, failover is fast.

The replicas are subprocesses started by :mod:`celery_leaderbeat.testing`,
which records every message reaching the queue with its publisher's pid and
the fencing headers. The bounds follow from the default lease timing: a
crash is survived within TTL + retry + 1 s, a graceful stop within
retry + 1 s. Run with ``-s`` to see the measured takeover times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import (
    EVERY_SECOND,
    BeatCluster,
    Publish,
    RedisServer,
    duplicate_runs,
    first_publish_by_another,
    publishes_closer_than,
    wait_for,
)

pytestmark = pytest.mark.processes

TIMING = LeaseTiming()  # the defaults: 5 s lease, 1.5 s renewal, 0.5 s standby retry
CRASH_BOUND = TIMING.ttl + TIMING.retry_interval + 1.0
GRACEFUL_BOUND = TIMING.retry_interval + 1.0
#: Two publishes of a 1 s entry closer than this are one run sent twice.
TOO_CLOSE = 0.5
#: A gap this long between publishes of a 1 s entry means a run went missing.
MISSING = 1.9


@pytest.fixture
def cluster(redis_server: RedisServer, lease_name: str,
            request: pytest.FixtureRequest) -> Iterator[BeatCluster]:
    """Three LeaderScheduler replicas; the broker's Redis is also their lease store."""
    failed_before = request.session.testsfailed
    with BeatCluster(redis_server.url, 3, lease_name=lease_name, queue=lease_name) as beats:
        yield beats
        if request.session.testsfailed > failed_before:
            print(beats.logs())


def observe(cluster: BeatCluster, seconds: float) -> None:
    """Let the cluster run for a while, failing at once if a replica dies."""
    end = time.monotonic() + seconds
    wait_for(lambda: cluster.exited_by_themselves() or time.monotonic() >= end,
             seconds + 5, interval=0.1, message=f"{seconds}s of running")
    assert not cluster.exited_by_themselves(), cluster.logs()


def assert_each_run_published_once(sent: list[Publish]) -> None:
    assert not duplicate_runs(sent)
    every_second = [p for p in sent if p.task == EVERY_SECOND]
    assert not publishes_closer_than(every_second, TOO_CLOSE)


def test_one_replica_publishes_each_run_exactly_once(cluster: BeatCluster) -> None:
    leader = cluster.wait_for_leader(30)
    start = time.monotonic()
    observe(cluster, 20)

    sent = cluster.recorder.publishes(since=start)
    assert {p.pid for p in sent} == {leader.pid}
    assert cluster.leader_by_lease() is leader
    assert_each_run_published_once(sent)
    arrivals = [p.mono for p in sent if p.task == EVERY_SECOND]
    assert len(arrivals) >= 19
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert max(gaps) < MISSING, gaps
    print(f"\nsteady state: {len(arrivals)} runs in 20 s from {leader.identity}, "
          f"gaps {min(gaps):.2f}..{max(gaps):.2f}s")


@pytest.mark.parametrize(("fault", "bound"), [
    ("kill", CRASH_BOUND),
    ("terminate", GRACEFUL_BOUND),
])
def test_another_replica_takes_over_and_the_stopped_one_returns_as_standby(
        cluster: BeatCluster, fault: str, bound: float) -> None:
    leader = cluster.wait_for_leader(30)
    # A few runs first, so the next leader has shared history to adopt.
    wait_for(lambda: len(cluster.recorder.publishes(EVERY_SECOND)) >= 3, 15,
             message="three runs before the fault")
    old_pid = leader.pid
    fault_at = getattr(leader, fault)()

    def takeover() -> Publish | None:
        return first_publish_by_another(cluster.recorder.publishes(), fault_at, [old_pid])

    first = wait_for(takeover, bound + 15, message=f"a publish by another replica after {fault}")
    assert first is not None
    took = first.mono - fault_at
    new_leader = cluster.replica_for_pid(first.pid)
    assert new_leader is not None and new_leader is not leader
    print(f"\ntakeover after {fault} of {leader.identity}: {took:.2f}s "
          f"by {new_leader.identity} (bound {bound:.1f}s)")
    assert took <= bound
    assert leader.wait_exit(10) == (0 if fault == "terminate" else -9)

    leader.restart()
    wait_for(lambda: "is a standby" in leader.log(current_run=True), 30,
             message=f"{leader.identity} restarted as a standby")
    mark = time.monotonic()
    wait_for(lambda: len(cluster.recorder.publishes(EVERY_SECOND, since=mark)) >= 3, 15,
             message="three runs after the restart")

    assert {p.pid for p in cluster.recorder.publishes(since=first.mono)} == {new_leader.pid}
    assert cluster.leader_by_lease() is new_leader
    assert leader.running
    assert not cluster.exited_by_themselves()
    assert_each_run_published_once(cluster.recorder.publishes())


def test_a_sentinel_broker_is_also_the_lease_store_of_real_beats(lease_name: str) -> None:
    """No leaderbeat_elector, a sentinel:// broker with its master's name in
    broker_transport_options: the replicas lead through those Sentinels (not a file
    lock), one at a time, and a graceful stop hands over as on a plain Redis."""
    from celery_leaderbeat.stores.redis_sentinel import RedisSentinelLeaseStore
    from celery_leaderbeat.testing import SentinelGroup

    with SentinelGroup(master_name="broker") as group, BeatCluster(
            group.url, 3, lease_name=lease_name, queue=lease_name,
            transport_options=group.transport_options) as beats:
        leader = beats.wait_for_leader(timeout=30)
        assert isinstance(beats.lease_store(), RedisSentinelLeaseStore)
        assert beats.leader_by_lease() is leader
        assert "sentinel://127.0.0.1" in leader.log() and "(default)" in leader.log()
        stopped_at = leader.terminate()
        leader.wait_exit(15)
        wait_for(lambda: first_publish_by_another(beats.recorder.publishes(), stopped_at,
                                                  leader.pids), GRACEFUL_BOUND + 3)
        taker = first_publish_by_another(beats.recorder.publishes(), stopped_at, leader.pids)
        assert taker is not None and taker.mono - stopped_at <= GRACEFUL_BOUND
        observe(beats, 2)
        assert_each_run_published_once(beats.recorder.publishes())
