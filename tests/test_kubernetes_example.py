"""examples/kubernetes/: valid manifests, and probes that answer as the README says.

The manifests are checked against the Kubernetes API schema (strict: no
unknown fields) with ``kubernetes-validate``, which bundles the schemas, so
no cluster or network is needed. The probe commands are taken from the
Deployment as written and run, in each replica's environment, against real
beat replicas of the example app: no Kubernetes needed for that either.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_leaderbeat.cli import EXIT_NO_STORE, EXIT_OK, EXIT_UNHEALTHY
from celery_leaderbeat.testing import BeatCluster, RedisServer, free_port, wait_for

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kubernetes"
MANIFESTS = sorted(EXAMPLE.glob("*.yaml"))


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def beat_container() -> dict[str, Any]:
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_the_manifests_are_valid_kubernetes_objects() -> None:
    version = kubernetes_validate.latest_version()
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "PodDisruptionBudget", "Secret"]


def test_the_deployment_keeps_a_standby_through_rolling_updates_and_drains() -> None:
    docs = {d["kind"]: d for d in documents()}
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    # Longer than the release needs (one store call) and than the lease TTL.
    assert pod["terminationGracePeriodSeconds"] >= 10
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    env = {e["name"]: e for e in beat_container()["env"]}
    assert env["CELERY_LEADERBEAT_IDENTITY"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}
    assert "limits" not in beat_container()["resources"] or \
        "cpu" not in beat_container()["resources"]["limits"]


# -- the probes, as written, against real replicas -------------------------------------


def probe(name: str) -> list[str]:
    """The probe's command, run by this interpreter's celery."""
    command: list[str] = beat_container()[name]["exec"]["command"]
    assert command[0] == "celery"
    return [sys.executable, "-m", "celery", *command[1:]]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=EXAMPLE, capture_output=True, text=True,
                          timeout=60)


def pod_env(cluster: BeatCluster, identity: str, elector: str) -> dict[str, str]:
    """The environment the Deployment gives a pod named ``identity``."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH"))
                                      if p),
        "CELERY_BROKER_URL": cluster.broker_url,
        "CELERY_LEADERBEAT_ELECTOR": elector,
        "CELERY_LEADERBEAT_IDENTITY": identity,
        "CELERY_LEADERBEAT_LEASE_NAME": cluster.lease_name,
        "CELERY_TASK_DEFAULT_QUEUE": cluster.queue,
    }


@pytest.fixture
def pods(redis_server: RedisServer, tmp_path: Path) -> Iterator[BeatCluster]:
    """Two replicas running the Deployment's command, named like pods."""
    cluster = BeatCluster(redis_server.url, replicas=2, elector=redis_server.url,
                          app="proj", pythonpath=[str(EXAMPLE)])
    command = [sys.executable, "-m", *beat_container()["command"]]
    names = ("celery-beat-7d9c5-x2k4q", "celery-beat-7d9c5-p9w7z")
    for replica, pod in zip(cluster.replicas, names):
        replica.identity = pod
        replica.env = pod_env(cluster, pod, redis_server.url)
        # Each pod has its own emptyDir; here they share a disk.
        schedule = command.index("/var/lib/celery-beat/schedule")
        replica.argv = [*command[:schedule], str(tmp_path / f"{pod}-schedule"),
                        *command[schedule + 1:]]
    with cluster:
        yield cluster


def test_liveness_passes_on_leader_and_standby_readiness_needs_a_leader(
        pods: BeatCluster, redis_server: RedisServer) -> None:
    leader = wait_for(pods.leader_by_lease, 60, message="a leader")
    standby = next(r for r in pods.replicas if r is not leader)
    live = probe("livenessProbe")
    assert probe("startupProbe") == live
    ready = probe("readinessProbe")

    def passing(replica: Any) -> subprocess.CompletedProcess[str] | None:
        done = run(live, replica.env)
        return done if done.returncode == EXIT_OK else None

    on_standby = wait_for(lambda: passing(standby), 30, interval=0.5,
                          message="the standby's liveness probe passing")
    assert on_standby is not None
    assert re.fullmatch(rf"live: {standby.identity} as standby, heartbeat \d+\.\d s ago\n",
                        on_standby.stdout), on_standby.stdout
    on_leader = run(live, leader.env)
    assert on_leader.returncode == EXIT_OK, on_leader.stderr
    assert on_leader.stdout.startswith(f"live: {leader.identity} as leader (term ")
    for replica in pods.replicas:
        done = run(ready, replica.env)
        assert done.returncode == EXIT_OK, done.stderr
        assert done.stdout.startswith(f"healthy: leader {leader.identity} (term ")

    # A hung standby fails its own liveness probe; the leader's and the
    # cluster's still pass.
    standby.pause()
    try:
        failed = wait_for(lambda: run(live, standby.env).returncode == EXIT_UNHEALTHY, 30,
                          interval=0.5, message="the hung standby failing liveness")
        assert failed
        assert run(live, leader.env).returncode == EXIT_OK
        assert run(ready, leader.env).returncode == EXIT_OK
    finally:
        standby.resume()

    # The store cannot be read: liveness does not judge (a restart would not
    # help); readiness fails, as there is no known leader.
    unreachable = {**leader.env,
                   "CELERY_LEADERBEAT_ELECTOR": f"redis://127.0.0.1:{free_port()}/0"}
    not_judged = run(live, unreachable)
    assert not_judged.returncode == EXIT_OK, not_judged.stderr
    assert not_judged.stdout.startswith("not judged: cannot read the store redis://")
    assert run(ready, unreachable).returncode == EXIT_UNHEALTHY

    # No replica left: readiness fails on every pod, and so does liveness.
    for replica in pods.replicas:
        replica.terminate()
    for replica in pods.replicas:
        replica.wait_exit(30)
    none = run(ready, leader.env)
    assert none.returncode == EXIT_UNHEALTHY
    assert none.stderr.startswith("unhealthy: no leader: nobody holds the lease")
    gone = run(live, leader.env)
    assert gone.returncode == EXIT_UNHEALTHY
    assert gone.stderr.startswith(f"not live: {leader.identity} sends no heartbeat to redis://")


def test_health_self_needs_an_identity_set(redis_server: RedisServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE), "CELERY_BROKER_URL": redis_server.url,
           "CELERY_LEADERBEAT_ELECTOR": redis_server.url}
    done = run(probe("livenessProbe"), env)
    assert done.returncode == EXIT_NO_STORE
    assert done.stderr.startswith("health --self needs leaderbeat_identity set")
