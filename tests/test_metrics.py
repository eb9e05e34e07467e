"""Prometheus metrics: scraped over HTTP from real beat processes during a handover.

Also: the package works without prometheus_client, the port setting is
validated, and a claim refused by the store is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from prometheus_client.parser import text_string_to_metric_families

from celery_leaderbeat import LeaseElector, LeaseTiming
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.testing import (
    CONF_ENV,
    BeatCluster,
    RedisServer,
    free_port,
    redis_store,
    wait_for,
)

TIMING = LeaseTiming(ttl=4.0, renew_interval=0.8, retry_interval=0.3)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample the replica serves on ``port``, over HTTP as Prometheus would read it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- real processes ------------------------------------------------------------------


@pytest.mark.processes
def test_scraped_gauges_change_on_handover(redis_server: RedisServer) -> None:
    cluster = BeatCluster(redis_server.url, replicas=2, elector=redis_server.url, timing=TIMING)
    ports = {}
    for replica in cluster.replicas:  # each replica its own port
        ports[replica.identity] = free_port()
        conf = json.loads(replica.env[CONF_ENV])
        conf["leaderbeat_metrics_port"] = f"127.0.0.1:{ports[replica.identity]}"
        replica.env[CONF_ENV] = json.dumps(conf)

    with cluster:
        def roles() -> tuple[str, str, Samples, Samples] | None:
            seen = {identity: scrape(port) for identity, port in ports.items()}
            leaders = [i for i, s in seen.items() if value(s, "leaderbeat_is_leader") == 1]
            if len(leaders) != 1:
                return None
            (standby,) = set(seen) - set(leaders)
            return leaders[0], standby, seen[leaders[0]], seen[standby]

        def settled() -> tuple[str, str, Samples, Samples] | None:
            found = roles()
            if found is None:
                return None
            _, _, led, stood = found
            ready = (value(led, "leaderbeat_dispatches_total") or 0) >= 2 \
                and (value(led, "leaderbeat_lease_renewal_seconds_count") or 0) >= 1 \
                and value(stood, "leaderbeat_term") == value(led, "leaderbeat_term")
            return found if ready else None

        leader, standby, led, stood = wait_for(settled, 60, interval=0.2,
                                               message="a leader that dispatched and renewed")
        term = value(led, "leaderbeat_term")
        assert term is not None and term > 0
        assert value(led, "leaderbeat_replica_info", identity=leader,
                     lease=cluster.lease_name, version="0.1.0") == 1
        assert value(led, "leaderbeat_leadership_gained_total") == 1
        assert value(stood, "leaderbeat_is_leader") == 0
        assert value(stood, "leaderbeat_leadership_gained_total") == 0
        assert value(stood, "leaderbeat_dispatches_total") == 0
        dispatched = value(led, "leaderbeat_dispatch_lateness_seconds_count")
        assert dispatched is not None and dispatched >= 2
        lateness = value(led, "leaderbeat_dispatch_lateness_seconds_sum")
        assert lateness is not None and 0 <= lateness / dispatched < 1.0

        cluster.lease_store().request_step_down()  # type: ignore[attr-defined]

        def handed_over() -> tuple[Samples, Samples] | None:
            found = roles()
            if found is None or found[0] != standby:
                return None
            old = found[3]
            return (found[2], old) if value(old, "leaderbeat_term") == \
                value(found[2], "leaderbeat_term") else None

        new, old = wait_for(handed_over, 30, interval=0.1, message="the scraped handover")
        assert value(new, "leaderbeat_is_leader") == 1
        assert value(new, "leaderbeat_leadership_gained_total") == 1
        assert (value(new, "leaderbeat_term") or 0) > term
        assert value(old, "leaderbeat_is_leader") == 0
        assert value(old, "leaderbeat_leadership_lost_total", cause="released") == 1
        assert value(old, "leaderbeat_fenced_out_claims_total") == 0
        wait_for(lambda: (value(scrape(ports[standby]), "leaderbeat_dispatches_total") or 0) >= 1,
                 10, message="the new leader's dispatches counted")


# -- in this process -----------------------------------------------------------------


def test_the_package_works_without_prometheus_client(tmp_path: Path) -> None:
    """Metrics off: building a scheduler never imports prometheus_client."""
    code = (
        "import sys\n"
        "from celery import Celery\n"
        "from celery_leaderbeat import LeaderScheduler\n"
        "import celery_leaderbeat.cli, celery_leaderbeat.metrics\n"
        "app = Celery('x')\n"
        "app.conf.leaderbeat_elector = 'static://leader'\n"
        f"s = LeaderScheduler(app, schedule_filename={str(tmp_path / 's')!r})\n"
        "s.tick()\n"
        "assert s.metrics is None\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
        "s.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("port", [0, 70000, "http", "127.0.0.1:", True, 9.5])
def test_a_bad_metrics_port_is_refused(port: Any) -> None:
    app = Celery("x", set_as_current=False)
    app.conf.leaderbeat_metrics_port = port
    with pytest.raises(ImproperlyConfigured, match=r"leaderbeat_metrics_port \(Django: "
                                                   r"CELERY_LEADERBEAT_METRICS_PORT\)"):
        LeaderSettings.from_app(app)


@pytest.mark.parametrize(("port", "address"), [
    (9808, ("", 9808)), ("9808", ("", 9808)), ("127.0.0.1:9808", ("127.0.0.1", 9808)),
    (None, None),
])
def test_metrics_port_forms(port: Any, address: Any) -> None:
    app = Celery("x", set_as_current=False)
    app.conf.leaderbeat_metrics_port = port
    assert LeaderSettings.from_app(app).metrics_address == address


def test_a_claim_refused_by_the_store_is_counted(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str) -> None:
    """The leader's lease is lost in the store and taken by b; its next claim is refused."""
    timing = LeaseTiming(ttl=10, renew_interval=5, retry_interval=0.2)
    store = redis_store(redis_server.url, lease_name)
    port = free_port()
    a = make_scheduler(make_app(
        beat_schedule={"fast": {"task": "tests.tick", "schedule": timedelta(seconds=0.3)}},
        leaderbeat_elector=LeaseElector(store, identity="a", timing=timing),
        leaderbeat_metrics_port=f"127.0.0.1:{port}"), "a")

    def dispatches() -> float:
        return value(scrape(port), "leaderbeat_dispatches_total") or 0

    ticker([a], lambda: dispatches() >= 1, timeout=10)
    store.client.delete(store.lease_key)
    b = LeaseElector(redis_store(redis_server.url, lease_name), identity="b",
                     timing=timing)
    assert b.is_leader()
    ticker([a], lambda: not a.is_leader, timeout=10)

    samples = scrape(port)
    assert value(samples, "leaderbeat_fenced_out_claims_total") == 1
    assert value(samples, "leaderbeat_leadership_lost_total", cause="fenced out") == 1
    assert value(samples, "leaderbeat_is_leader") == 0
    b.release()
    b.close()
