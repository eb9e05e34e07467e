"""Real ``celery beat`` replicas with their lease in a private etcd: the command line,
and etcd stopped and restarted under them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celery_leaderbeat.cli import EXIT_OK
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import (
    EVERY_SECOND,
    BeatCluster,
    EtcdCluster,
    RedisServer,
    duplicate_runs,
    etcd_executable,
    wait_for,
)

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(etcd_executable() is None,
                       reason="etcd is not installed (make servers installs it)"),
]

TIMING = LeaseTiming(ttl=3.0, renew_interval=0.3, retry_interval=0.3)


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def beats(redis_server: RedisServer, etcd: EtcdCluster, lease_name: str,
          request: pytest.FixtureRequest) -> Iterator[BeatCluster]:
    failed_before = request.session.testsfailed
    with BeatCluster(redis_server.url, replicas=2, elector=etcd.url, timing=TIMING,
                     lease_name=lease_name, queue=lease_name) as cluster:
        yield cluster
        if request.session.testsfailed > failed_before:
            print(cluster.logs())


def test_status_health_and_step_down_through_the_command_line(
        beats: BeatCluster, etcd: EtcdCluster) -> None:
    leader = wait_for(beats.leader_by_lease, 60, message="a leader in etcd")

    def both_listed() -> Any:
        status = beats.leaderbeat("status", "--json")
        doc = json.loads(status.stdout) if status.returncode == EXIT_OK else {}
        return doc if len(doc.get("replicas") or []) == 2 else None

    doc = wait_for(both_listed, 30, interval=0.5, message="both replicas listed")
    assert doc["store"] == etcd.url
    assert doc["lease"]["holder"] == leader.identity
    first = doc["replicas"][0]
    assert (first["identity"], first["role"]) == (leader.identity, "leader")
    assert doc["replicas"][0]["term"] == doc["lease"]["term"]
    assert doc["reason"].startswith(f"leader {leader.identity} (term ")
    assert "leader" in beats.leaderbeat("status").stdout

    health = beats.leaderbeat("health")
    assert health.returncode == EXIT_OK, health.stderr
    step_down = beats.leaderbeat("step-down")
    assert step_down.returncode == EXIT_OK, step_down.stderr + beats.logs()
    new_leader = beats.leader_by_lease()
    assert new_leader not in (None, leader)


def test_etcd_stopped_and_restarted_no_replica_exits_and_dispatch_resumes(
        beats: BeatCluster, etcd: EtcdCluster) -> None:
    beats.wait_for_leader(60)
    wait_for(lambda: len(beats.recorder.publishes(EVERY_SECOND)) >= 3, 15,
             message="three runs before etcd stops")
    etcd.stop(etcd.members[0])
    stopped_at = time.monotonic()
    # Nothing is published once the leader's local deadline has passed.
    wait_for(lambda: time.monotonic() - stopped_at > TIMING.ttl + 2, TIMING.ttl + 5)
    quiet_since = stopped_at + TIMING.local_validity + 0.5
    assert not beats.recorder.publishes(since=quiet_since)
    etcd.restart(etcd.members[0])
    back_at = time.monotonic()
    wait_for(lambda: len(beats.recorder.publishes(EVERY_SECOND, since=back_at)) >= 3, 30,
             message="three runs after etcd is back")
    assert not beats.exited_by_themselves(), beats.logs()
    assert not duplicate_runs(beats.recorder.publishes())
