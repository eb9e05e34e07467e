"""The etcd store on a private 3-member etcd cluster: members fail, the lease holds.

The elector is given every member; a member killed with kill -9 (the one the
store was talking to, or the Raft leader) costs a renewal or two, not the
lease: the store moves to another member, etcd elects a new Raft leader and
extends every lease, so the same term keeps leading. The beat-level scenarios
(three real ``celery beat`` replicas on the cluster) are in
``benchmarks/failover.py`` and judged in ``test_etcd_failover.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celery_leaderbeat.elector import NotLeader
from celery_leaderbeat.lease import LeaseElector, LeaseTiming, Renewal
from celery_leaderbeat.stores.etcd import EtcdLeaseStore
from celery_leaderbeat.testing import EtcdCluster, etcd_executable, store_settings, wait_for

pytestmark = pytest.mark.skipif(etcd_executable() is None,
                                reason="etcd is not installed (make servers installs it)")

TIMING = LeaseTiming()  # 5 s lease, 0.5 s renewal and retry


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as etcd:
        yield etcd


def record_renewals(store: EtcdLeaseStore) -> list[float]:
    """The times (monotonic) at which renewals of ``store`` succeeded, kept as they happen."""
    renewed: list[float] = []
    renew = store.renew

    def recording(*args: Any, **kwargs: Any) -> Renewal:
        outcome = renew(*args, **kwargs)
        if outcome is Renewal.RENEWED:
            renewed.append(time.monotonic())
        return outcome

    store.renew = recording  # type: ignore[method-assign]
    return renewed


def lead_through(elector: LeaseElector, renewed: list[float], seconds: float) -> float:
    """Call is_leader() every 50 ms for ``seconds`` (failing if leadership is lost);
    the longest stretch without a renewal."""
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        assert elector.is_leader()
        time.sleep(0.05)
    times = [start, *(t for t in renewed if t >= start), time.monotonic()]
    return max(b - a for a, b in zip(times, times[1:]))


def test_killing_members_costs_renewals_not_the_lease(cluster: EtcdCluster,
                                                     lease_name: str) -> None:
    # Followers first: the store talks to one, and the next in line answers at once
    # when it is killed (the Raft leader's death costs an election: tested next).
    raft_leader = cluster.wait_for_leader()
    members = [m for m in cluster.members if m is not raft_leader] + [raft_leader]
    url = "etcd://" + ",".join(m.endpoint for m in members)
    store = EtcdLeaseStore.from_url(url, store_settings(lease_name))
    elector = LeaseElector(store, identity="a", timing=TIMING)
    renewed = record_renewals(store)
    try:
        assert elector.is_leader()
        term = elector.term
        assert term is not None
        assert lead_through(elector, renewed, 1.0) < 1.0

        # The member this store talks to: the next call goes to another at once.
        host, port = store.gateway.current
        talking_to = members[0]
        assert talking_to.client_port == port
        cluster.kill(talking_to)
        # The very next call is answered, by another member.
        assert store.claim(elector.owner, term, {"job": "run"})
        gap = lead_through(elector, renewed, 2.0)
        assert store.gateway.current != (host, port)
        print(f"\nkill -9 of the member in use: longest gap between renewals {gap:.2f} s")

        # The Raft leader (a survivor; the cluster keeps a majority with two of three).
        cluster.restart(talking_to)
        raft_leader = cluster.wait_for_leader()
        elected: list[tuple[str, float]] = []

        def watch_election() -> None:
            elected.append((cluster.wait_for_leader(10).name, time.monotonic() - killed_at))

        killed_at = time.monotonic()
        cluster.kill(raft_leader)
        watcher = threading.Thread(target=watch_election)
        watcher.start()
        gap = lead_through(elector, renewed, 4.0)
        watcher.join()
        print(f"kill -9 of the Raft leader {raft_leader.name}: {elected[0][0]} elected after "
              f"{elected[0][1]:.2f} s; longest gap between renewals {gap:.2f} s")
        assert gap < TIMING.local_validity
        assert elector.term == term
        record = store.read()
        assert record is not None and (record.holder, record.term) == ("a", term)
    finally:
        elector.close()


def test_a_cluster_without_a_majority_ends_leadership_at_the_local_deadline(
        cluster: EtcdCluster, lease_name: str) -> None:
    """Two of three members gone: no write can commit, so the leader steps down in time."""
    timing = LeaseTiming(ttl=2.0, renew_interval=0.5, retry_interval=0.5)
    store = EtcdLeaseStore.from_url(cluster.url, store_settings(lease_name, timing=timing))
    elector = LeaseElector(store, identity="a", timing=timing)
    try:
        assert elector.is_leader()
        sent = time.monotonic()
        for member in cluster.members[:2]:
            cluster.kill(member)

        def stepped_down() -> bool:
            try:
                elector.is_leader()
            except NotLeader:
                return True
            return False

        wait_for(stepped_down, timing.ttl + 3, interval=0.05, message="stepping down")
        # No later than the local deadline of the last renewal, plus one call's timeout.
        assert time.monotonic() - sent <= timing.ttl + store.gateway.timeout + 0.5
        for member in cluster.members[:2]:
            cluster.restart(member)
        wait_for(lambda: not stepped_down(), 20, interval=0.1, message="leading again")
    finally:
        elector.close()
