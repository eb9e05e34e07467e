"""``celery -A app leaderbeat status|step-down|health`` against real beat replicas.

Every command runs as an operator would run it: a ``python -m celery``
subprocess, which finds the sub-command through the ``celery.commands``
entry point, with the same configuration as the replicas.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_leaderbeat import LeaderScheduler
from celery_leaderbeat.cli import (
    EXIT_NO_STORE,
    EXIT_OK,
    EXIT_UNHEALTHY,
    SCHEMA_VERSION,
    NoStore,
    open_store,
    render,
)
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.registry import Heartbeat
from celery_leaderbeat.testing import BeatCluster, RedisServer, wait_for

pytestmark = pytest.mark.processes

#: Faster than the defaults, with the leader renewing as often as a standby tries.
TIMING = LeaseTiming(ttl=4.0, renew_interval=0.3, retry_interval=0.3)
POSTGRESQL = "postgresql://postgres@127.0.0.1:5432/test"


def leaderbeat(cluster: BeatCluster, *args: str, conf: dict[str, Any] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A <the replicas' app> leaderbeat <args>`` with the replicas' settings."""
    return cluster.leaderbeat(*args, conf=conf)


def leader_and_standby(cluster: BeatCluster) -> tuple[Any, Any]:
    """Wait until the lease has a holder and every replica heartbeats; return (leader, other)."""
    store = cluster.lease_store()

    def settled() -> Any:
        held = cluster.leader_by_lease()
        live = {r.identity for r in store.replicas()}  # type: ignore[attr-defined]
        return held if held and live == {r.identity for r in cluster.replicas} else None

    leader = wait_for(settled, 60, message="a leader and every replica in the registry")
    return leader, next(r for r in cluster.replicas if r is not leader)


@pytest.fixture
def redis_cluster(redis_server: RedisServer) -> Iterator[BeatCluster]:
    with BeatCluster(redis_server.url, replicas=2, elector=redis_server.url,
                     timing=TIMING) as cluster:
        yield cluster


@pytest.fixture
def file_cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[BeatCluster]:
    """Two replicas on one host sharing a file lock; Redis is only the broker."""
    lock = tmp_path / "beat.lock"
    with BeatCluster(redis_server.url, replicas=2, elector=f"file://{lock}",
                     timing=TIMING) as cluster:
        yield cluster


# -- Redis ---------------------------------------------------------------------------


def test_status_names_the_leader_and_the_live_replicas(redis_cluster: BeatCluster) -> None:
    leader, standby = leader_and_standby(redis_cluster)
    term = redis_cluster.lease_store().read().term  # type: ignore[union-attr]

    done = leaderbeat(redis_cluster, "status")

    assert done.returncode == EXIT_OK, done.stderr
    out = done.stdout
    assert f"lease '{redis_cluster.lease_name}' in redis://127.0.0.1:" in out
    assert f"holder:       {leader.identity} (term {term})" in out
    assert re.search(r"expires in:\s+\d+\.\d s", out), out
    assert re.search(rf"^  {leader.identity}\s+leader\s+term {term}\s+heartbeat \d+\.\d s ago",
                     out, re.M), out
    assert re.search(rf"^  {standby.identity}\s+standby\s+heartbeat \d+\.\d s ago", out,
                     re.M), out
    assert "replicas: 2 live" in out
    assert f"health: ok: leader {leader.identity} (term {term})" in out


def test_status_json_follows_the_documented_schema(redis_cluster: BeatCluster) -> None:
    leader, standby = leader_and_standby(redis_cluster)

    done = leaderbeat(redis_cluster, "status", "--json")

    assert done.returncode == EXIT_OK, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {"schema", "lease_name", "store", "timing", "lease", "replicas",
                        "healthy", "reason", "misconfigured", "pause"}
    assert doc["schema"] == SCHEMA_VERSION
    assert doc["lease_name"] == redis_cluster.lease_name
    assert doc["timing"] == {"ttl": 4.0, "renew_interval": 0.3, "retry_interval": 0.3}
    lease = doc["lease"]
    assert set(lease) == {"holder", "term", "acquired_at", "renewed_at", "expires_in",
                          "transitions"}
    assert lease["holder"] == leader.identity
    assert isinstance(lease["term"], int) and lease["term"] > 0
    assert 0 < lease["expires_in"] <= TIMING.ttl
    assert lease["transitions"] >= 1
    assert lease["acquired_at"] <= lease["renewed_at"]  # ISO 8601, same zone: comparable
    replicas = {r["identity"]: r for r in doc["replicas"]}
    assert doc["replicas"][0]["identity"] == leader.identity  # leader first
    assert set(replicas) == {leader.identity, standby.identity}
    for record in doc["replicas"]:
        assert set(record) == {"identity", "host", "pid", "version", "celery_version", "role",
                               "term", "last_tick_at", "heartbeat_age", "expires_in"}
        assert 0 <= record["heartbeat_age"] < Heartbeat("x", TIMING.renew_interval).ttl
        assert record["version"] == "0.1.0"
    assert replicas[leader.identity]["role"] == "leader"
    assert replicas[leader.identity]["term"] == lease["term"]
    assert replicas[standby.identity]["role"] == "standby"
    assert replicas[standby.identity]["term"] is None
    assert replicas[standby.identity]["pid"] == standby.pid
    assert doc["healthy"] is True
    assert doc["reason"].startswith(f"leader {leader.identity} (term {lease['term']})")


def test_health_is_0_with_a_leader_and_1_without(redis_cluster: BeatCluster) -> None:
    leader, _ = leader_and_standby(redis_cluster)

    healthy = leaderbeat(redis_cluster, "health")
    assert healthy.returncode == EXIT_OK, healthy.stderr
    assert healthy.stdout.startswith(f"healthy: leader {leader.identity} (term ")
    assert healthy.stdout.count("\n") == 1

    for replica in redis_cluster.replicas:
        replica.terminate()
    for replica in redis_cluster.replicas:
        replica.wait_exit(30)
    unhealthy = leaderbeat(redis_cluster, "health")
    assert unhealthy.returncode == EXIT_UNHEALTHY
    assert unhealthy.stdout == ""
    assert unhealthy.stderr == (f"unhealthy: no leader: nobody holds the lease "
                                f"'{redis_cluster.lease_name}' in {redis_cluster.broker_url}\n")
    status = leaderbeat(redis_cluster, "status", "--json")
    assert status.returncode == EXIT_UNHEALTHY
    doc = json.loads(status.stdout)
    assert doc["lease"] is None and doc["replicas"] == [] and doc["healthy"] is False
    step_down = leaderbeat(redis_cluster, "step-down")
    assert step_down.returncode == EXIT_UNHEALTHY
    assert "nothing to step down" in step_down.stderr


def test_step_down_moves_leadership_to_a_standby(redis_cluster: BeatCluster) -> None:
    leader, standby = leader_and_standby(redis_cluster)
    term = redis_cluster.lease_store().read().term  # type: ignore[union-attr]

    done = leaderbeat(redis_cluster, "step-down")

    assert done.returncode == EXIT_OK, done.stderr + redis_cluster.logs()
    first, second = done.stdout.splitlines()
    assert first == f"asked {leader.identity} (term {term}) to step down"
    moved = re.fullmatch(rf"{standby.identity} leads now \(term (\d+)\), after (\d+\.\d) s",
                         second)
    assert moved, second
    assert int(moved.group(1)) > term
    assert float(moved.group(2)) <= TIMING.retry_interval + 1.0
    assert redis_cluster.leader_by_lease() is standby
    # The old leader stays up as a standby and says why it let go.
    assert leader.running
    wait_for(lambda: "released: step-down requested" in leader.log(), 10,
             message="the old leader logging its step-down")
    # The new leader publishes.
    since = time.monotonic()
    assert redis_cluster.wait_for_leader(timeout=10, since=since) is standby


def test_step_down_moves_leadership_within_retry_interval_plus_1_s(
        redis_server: RedisServer) -> None:
    """Measured from the request in the store to the new holder, twice, with the defaults.

    Three replicas: the replica that let go holds off for a lease TTL, so a
    second step-down right after the first needs a third replica to move to.
    The leader finds the request at its next renewal (within the retry
    interval, as it renews as often as a standby tries), so leadership moves
    within renew + retry: 1 s.
    """
    timing = LeaseTiming()
    with BeatCluster(redis_server.url, replicas=3, elector=redis_server.url,
                     timing=timing) as cluster:
        took = step_down_twice(cluster)
    assert max(took) <= timing.renew_interval + timing.retry_interval + 0.2, took
    assert max(took) <= timing.retry_interval + 1.0, took


def step_down_twice(cluster: BeatCluster) -> list[float]:
    store: Any = cluster.lease_store()
    took = []
    for _ in range(2):
        leader, _standby = leader_and_standby(cluster)
        asked = store.request_step_down()
        started = time.monotonic()
        moved = wait_for(lambda: (store.read() or asked).term != asked.term, 10,  # noqa: B023
                         interval=0.02, message="leadership moving")
        took.append(time.monotonic() - started)
        print(f"step-down moved leadership in {took[-1]:.3f} s")  # shown with -s
        assert moved and store.read().holder != leader.identity
    return took


def test_commands_say_when_the_elector_keeps_no_store(redis_cluster: BeatCluster) -> None:
    for command in ("status", "step-down", "health"):
        done = leaderbeat(redis_cluster, command, conf={"leaderbeat_elector": "static://leader"})
        assert done.returncode == EXIT_NO_STORE, (command, done.stdout, done.stderr)
        assert done.stderr.startswith(
            "the configured elector StaticElector(leader=True) keeps no lease in a store"), \
            done.stderr
    bad = leaderbeat(redis_cluster, "status", conf={"leaderbeat_elector": "redsi://x"})
    assert bad.returncode == EXIT_NO_STORE
    assert "Did you mean redis://?" in bad.stderr


# -- the file store ------------------------------------------------------------------


def test_file_store_status_health_and_step_down(file_cluster: BeatCluster) -> None:
    leader, standby = leader_and_standby(file_cluster)

    status = leaderbeat(file_cluster, "status")
    assert status.returncode == EXIT_OK, status.stderr
    assert f"lease '{file_cluster.lease_name}' in file://" in status.stdout
    assert f"holder:       {leader.identity} (term " in status.stdout
    assert "expires in:   never (held while the process lives)" in status.stdout
    assert "replicas: 2 live" in status.stdout
    doc = json.loads(leaderbeat(file_cluster, "status", "--json").stdout)
    assert doc["lease"]["expires_in"] is None
    assert [r["role"] for r in doc["replicas"]] == ["leader", "standby"]

    health = leaderbeat(file_cluster, "health")
    assert health.returncode == EXIT_OK, health.stderr
    assert health.stdout == f"healthy: leader {leader.identity} (term {doc['lease']['term']})" \
        ", 1 standby live\n"

    # A frozen leader keeps its kernel lock, but its heartbeat stops: unhealthy.
    leader.pause()
    try:
        def failing() -> subprocess.CompletedProcess[str] | None:
            done = leaderbeat(file_cluster, "health")
            return done if done.returncode == EXIT_UNHEALTHY else None

        frozen = wait_for(failing, 30, interval=0.5, message="health noticing the frozen leader")
        assert frozen is not None
        assert frozen.stderr == (f"unhealthy: {leader.identity} (term {doc['lease']['term']}) "
                                 "holds the lease but sends no heartbeat as leader\n")
    finally:
        leader.resume()

    wait_for(lambda: leaderbeat(file_cluster, "health").returncode == EXIT_OK, 30,
             interval=0.5, message="health after the leader resumed")
    step_down = leaderbeat(file_cluster, "step-down")
    assert step_down.returncode == EXIT_OK, step_down.stderr + file_cluster.logs()
    assert step_down.stdout.splitlines()[-1].startswith(f"{standby.identity} leads now")
    assert file_cluster.leader_by_lease() is standby


# -- SQL (the replica registry in the database) -----------------------------------------


def test_sql_store_status_health_and_step_down(redis_server: RedisServer) -> None:
    """The SQL store keeps the registry in its tables: replicas listed, step-down works."""
    pytest.importorskip("psycopg")
    with BeatCluster(redis_server.url, replicas=2, elector=POSTGRESQL, timing=TIMING) as cluster:
        leader = wait_for(cluster.leader_by_lease, 60, message="a leader in PostgreSQL")

        def both_listed() -> Any:
            status = leaderbeat(cluster, "status", "--json")
            doc = json.loads(status.stdout) if status.returncode == EXIT_OK else {}
            return doc if len(doc.get("replicas") or []) == 2 else None

        doc = wait_for(both_listed, 30, interval=0.5, message="both replicas listed")
        assert doc["store"].startswith(POSTGRESQL)
        assert doc["lease"]["holder"] == leader.identity
        assert doc["replicas"][0]["identity"] == leader.identity
        assert doc["replicas"][0]["role"] == "leader"
        assert doc["reason"].startswith(f"leader {leader.identity} (term ")

        health = leaderbeat(cluster, "health")
        assert health.returncode == EXIT_OK, health.stderr
        step_down = leaderbeat(cluster, "step-down")
        assert step_down.returncode == EXIT_OK, step_down.stderr + cluster.logs()
        assert cluster.leader_by_lease() not in (None, leader)


# -- which store the command opens ---------------------------------------------------


class FileLockScheduler(LeaderScheduler):
    """A scheduler bringing its own default elector, as the Django one brings django://."""

    default_elector = "file:///tmp/leaderbeat-cli-test/default.lock"


def test_the_command_opens_the_store_the_scheduler_defaults_to() -> None:
    app = Celery("cli-default", set_as_current=False, broker="memory://")
    for scheduler, conf in ((FileLockScheduler, None), (None, FileLockScheduler)):
        app.conf.beat_scheduler = conf or "celery.beat:PersistentScheduler"
        _, store = open_store(app, scheduler)
        assert store.description == FileLockScheduler.default_elector
        store.close()
    app.conf.beat_scheduler = "celery.beat:PersistentScheduler"  # no default of its own
    _, store = open_store(app)
    assert store.description.startswith("file://") and store.description.endswith(
        "/celery-leaderbeat/cli-default.lock")  # the broker is not Redis: the file default
    store.close()
    with pytest.raises(NoStore, match=r"cannot import the scheduler 'no.such:Scheduler'"):
        open_store(app, "no.such:Scheduler")


def test_step_down_with_no_standby_alive_is_refused_unless_forced(
        redis_server: RedisServer) -> None:
    """Alone, the leader would hold off one TTL and dispatch nothing meanwhile."""
    with BeatCluster(redis_server.url, replicas=1, elector=redis_server.url,
                     timing=TIMING) as cluster:
        (only,) = cluster.replicas
        wait_for(lambda: cluster.leader_by_lease() is only, 60, message="a leader")
        term = cluster.lease_store().read().term  # type: ignore[union-attr]

        refused = leaderbeat(cluster, "step-down")
        assert refused.returncode == EXIT_UNHEALTHY
        assert refused.stderr.startswith("no standby is alive to take over"), refused.stderr
        assert cluster.lease_store().read().term == term  # type: ignore[union-attr]

        forced = leaderbeat(cluster, "step-down", "--force")
        assert forced.returncode == EXIT_UNHEALTHY, forced.stdout + forced.stderr
        assert f"{only.identity} took the lease back" in forced.stderr
        assert "released: step-down requested" in only.log()


def _row(identity: str, role: str, term: int | None) -> dict[str, Any]:
    return {"identity": identity, "role": role, "term": term, "heartbeat_age": 0.4, "pid": 1,
            "host": "h", "version": "v", "celery_version": "c"}


def test_status_shows_a_dead_leaders_record_as_was_leader() -> None:
    """After kill -9, the dead leader's record lives on until it expires: status
    must not show two leaders."""
    lease = {"holder": "new:2", "term": 8, "acquired_at": None, "renewed_at": None,
             "expires_in": 4.0, "transitions": 2}
    doc = {"lease_name": "p", "store": "redis://h", "lease": lease, "healthy": True,
           "reason": "leader new:2 (term 8)", "misconfigured": None, "pause": None,
           "replicas": [_row("old:1", "leader", 7), _row("new:2", "leader", 8),
                        _row("third:3", "standby", None)]}
    text = render(doc)
    assert re.search(r"old:1\s+was leader\s+term 7", text), text
    assert re.search(r"new:2\s+leader\s+term 8", text), text
    assert len(re.findall(r"(?<!was) leader\s+term", text)) == 1, text


def test_status_of_a_store_that_refuses_the_settings_does_not_deny_its_registry() -> None:
    doc = {"lease_name": "p", "store": "redis://:**@h", "lease": None, "replicas": None,
           "healthy": False, "reason": "store misconfigured: ...", "pause": None,
           "misconfigured": {"setting": "broker_url", "cause": "AuthenticationError"}}
    text = render(doc)
    assert "keeps no replica registry" not in text
    assert "replicas: unknown" in text
