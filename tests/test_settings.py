"""Settings are validated when the scheduler is built, before beat prints its banner.

Every mistake must raise Celery's ImproperlyConfigured naming the setting in
both spellings, so an operator can find it in app.conf or in Django settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat import LeaderScheduler, LeaseElector, StaticElector
from celery_leaderbeat.backends import default_file_path
from celery_leaderbeat.stores.file import FileLeaseStore
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.testing import RedisServer, free_port


class Unbuildable:
    """An elector class whose constructor fails, to check that it is reported."""

    def __init__(self) -> None:
        raise RuntimeError("needs arguments")

    def is_leader(self) -> bool:  # pragma: no cover - never built
        return True


@pytest.fixture
def build(tmp_path: Path, lease_name: str) -> Callable[..., LeaderScheduler]:
    """Build a scheduler from app settings, as ``celery beat`` does at start-up."""

    def make(lazy: bool = True, **conf: Any) -> LeaderScheduler:
        app = Celery(lease_name, set_as_current=False)
        app.conf.update({"broker_url": "memory://", **conf})
        return LeaderScheduler(app, lazy=lazy, schedule_filename=str(tmp_path / "schedule"))

    return make


BAD = [
    ("leaderbeat_elector", "reddis://localhost:6379/0", "Did you mean redis://?"),
    ("leaderbeat_elector", "postgressql://db/beat", "Did you mean postgresql://?"),
    ("leaderbeat_elector", "no_such_module_zz.electors:Elector", "cannot import"),
    ("leaderbeat_elector", "celery_leaderbeat.elector:NoSuchElector", "cannot import"),
    ("leaderbeat_elector", "not a path at all", "neither a URL nor a dotted path"),
    ("leaderbeat_elector", 42, "no is_leader() method"),
    ("leaderbeat_elector", f"{__name__}:Unbuildable", "could not create Unbuildable()"),
    ("leaderbeat_elector", "file://beat.lock", "needs an absolute path"),
    ("leaderbeat_elector", "file://./beat.lock", "needs an absolute path"),
    ("leaderbeat_elector", "file://var/run/beat.lock", "needs an absolute path"),
    ("leaderbeat_elector", "static://bogus", "static://leader or static://standby"),
    ("leaderbeat_lease_ttl", 0, "got 0"),
    ("leaderbeat_lease_ttl", -5, "got -5"),
    ("leaderbeat_lease_ttl", "five", "got 'five'"),
    ("leaderbeat_lease_ttl", True, "got True"),
    ("leaderbeat_lease_ttl", [5], "got [5]"),
    ("leaderbeat_lease_ttl", float("inf"), "got inf"),
    ("leaderbeat_lease_ttl", 0.5, "must be above renew_interval"),
    ("leaderbeat_lease_ttl", 0.25, "must be above renew_interval"),
    ("leaderbeat_renew_interval", 0, "got 0"),
    ("leaderbeat_renew_interval", "soon", "got 'soon'"),
    ("leaderbeat_retry_interval", -0.5, "got -0.5"),
    ("leaderbeat_retry_interval", float("nan"), "got nan"),
    ("leaderbeat_retry_interval", {}, "got {}"),
    ("leaderbeat_lease_name", "two words", "got 'two words'"),
    ("leaderbeat_lease_name", "a/b", "got 'a/b'"),
    ("leaderbeat_lease_name", 123, "got 123"),
    ("leaderbeat_identity", "   ", "got '   '"),
    ("leaderbeat_identity", 7, "got 7"),
    ("leaderbeat_catch_up", "always", "got 'always'"),
    ("leaderbeat_catch_up", True, "got True"),
    ("leaderbeat_redis_options", "socket_timeout=1", "got 'socket_timeout=1'"),
    ("leaderbeat_redis_options", [("socket_timeout", 1)], "got [("),
    ("leaderbeat_redis_min_replicas", -1, "got -1"),
    ("leaderbeat_redis_min_replicas", "1", "got '1'"),
    ("leaderbeat_redis_min_replicas", True, "got True"),
    ("leaderbeat_redis_transport_options", "mymaster", "got 'mymaster'"),
]

#: A sentinel:// or cluster URL the store cannot honour: (setting, elector, options, problem).
BAD_HA = [
    ("leaderbeat_redis_transport_options", "sentinel://127.0.0.1:26379", None,
     "needs the master's name"),
    ("leaderbeat_redis_transport_options", "sentinel://127.0.0.1:26379", {"master_name": ""},
     "needs the master's name"),
    ("leaderbeat_redis_transport_options", "sentinel://127.0.0.1:26379",
     {"master_name": "m", "sentinel_kwargs": "pw"}, "sentinel_kwargs: got 'pw'"),
    ("leaderbeat_redis_transport_options", "sentinel://127.0.0.1:26379",
     {"master_name": "m", "min_other_sentinels": -1}, "min_other_sentinels: got -1"),
    ("leaderbeat_elector", "sentinel://127.0.0.1:26379;redis://127.0.0.1:6379",
     {"master_name": "m"}, "is not a sentinel://host[:port][/db] URL"),
    ("leaderbeat_elector", "sentinel://127.0.0.1:26379/1;sentinel://127.0.0.1:26380/2",
     {"master_name": "m"}, "disagree on the db"),
    ("leaderbeat_elector", "sentinel://127.0.0.1:26379/zero", {"master_name": "m"},
     "is not a number"),
    ("leaderbeat_elector", "redis+cluster://127.0.0.1", None, "is not host:port"),
    ("leaderbeat_elector", "redis+cluster://127.0.0.1:7000/3", None, "database 0 only"),
]


@pytest.mark.parametrize(("key", "elector", "options", "problem"), BAD_HA)
def test_a_sentinel_or_cluster_url_it_cannot_honour_names_the_setting(
        build: Callable[..., LeaderScheduler], key: str, elector: str, options: Any,
        problem: str) -> None:
    conf = {"leaderbeat_elector": elector}
    if options is not None:
        conf["leaderbeat_redis_transport_options"] = options
    with pytest.raises(ImproperlyConfigured) as caught:
        build(**conf)
    message = str(caught.value)
    assert message.startswith(key) and problem in message and "expected" in message


def test_a_sentinel_broker_without_master_name_names_both_places(
        build: Callable[..., LeaderScheduler]) -> None:
    with pytest.raises(ImproperlyConfigured, match="broker_transport_options"):
        build(broker_url="sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380")


def test_sentinel_and_cluster_passwords_never_reach_the_banner(
        build: Callable[..., LeaderScheduler]) -> None:
    sentinel = build(lazy=False, leaderbeat_elector=(
        "sentinel://:s3cret-pw@127.0.0.1:26379;sentinel://:s3cret-pw@127.0.0.1:26380/2"),
        leaderbeat_redis_transport_options={"master_name": "beat"})
    assert "s3cret-pw" not in sentinel.info and "127.0.0.1:26380" in sentinel.info
    assert "'beat'" in sentinel.info
    store = sentinel.elector.store  # type: ignore[attr-defined]
    assert store.client.connection_pool.connection_kwargs["password"] == "s3cret-pw"
    assert store.client.connection_pool.connection_kwargs["db"] == 2
    assert [s.connection_pool.connection_kwargs["port"] for s in store.sentinel.sentinels] == [
        26379, 26380]
    sentinel.close()
    from celery_leaderbeat.stores.redis_cluster import sanitize_cluster_url

    masked = sanitize_cluster_url("rediss+cluster://beat:s3cret-pw@h1:7000,h2:7001")
    assert masked == "rediss+cluster://beat:**@h1:7000,h2:7001"


@pytest.mark.parametrize(("key", "value", "problem"), BAD)
def test_a_bad_setting_is_improperly_configured_and_named(
        build: Callable[..., LeaderScheduler], key: str, value: Any, problem: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        build(**{key: value})
    message = str(caught.value)
    assert message.startswith(key)
    assert f"(Django: CELERY_{key.upper()})" in message
    assert problem in message
    assert "expected" in message


def test_bad_settings_in_django_spelling_are_reported(tmp_path: Path, lease_name: str) -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_LEADERBEAT_RETRY_INTERVAL = "0"

    app = Celery(lease_name, set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    with pytest.raises(ImproperlyConfigured, match="CELERY_LEADERBEAT_RETRY_INTERVAL"):
        LeaderScheduler(app, lazy=True, schedule_filename=str(tmp_path / "schedule"))


def test_a_misspelt_url_never_echoes_its_password(
        build: Callable[..., LeaderScheduler]) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        build(leaderbeat_elector="reddis://beat:hunter2@localhost:6379/0")
    assert "hunter2" not in str(caught.value)


def test_django_style_settings_are_read(tmp_path: Path, lease_name: str,
                                        redis_server: RedisServer) -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_LEADERBEAT_ELECTOR = redis_server.url
        CELERY_LEADERBEAT_LEASE_NAME = lease_name
        CELERY_LEADERBEAT_IDENTITY = "web-1"
        CELERY_LEADERBEAT_LEASE_TTL = 8
        CELERY_LEADERBEAT_RENEW_INTERVAL = "2.5"
        CELERY_LEADERBEAT_RETRY_INTERVAL = 0.25
        CELERY_LEADERBEAT_CATCH_UP = "skip"
        CELERY_LEADERBEAT_REDIS_OPTIONS = {"socket_timeout": 2.0}

    app = Celery("django_project", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    scheduler = LeaderScheduler(app, schedule_filename=str(tmp_path / "schedule"))
    s = scheduler.leader_settings
    assert (s.lease_name, s.identity, s.catch_up) == (lease_name, "web-1", "skip")
    assert (s.timing.ttl, s.timing.renew_interval, s.timing.retry_interval) == (8, 2.5, 0.25)
    elector = scheduler.elector
    assert isinstance(elector, LeaseElector) and isinstance(elector.store, RedisLeaseStore)
    assert elector.store.client.connection_pool.connection_kwargs["socket_timeout"] == 2.0
    scheduler.tick()
    assert scheduler.is_leader  # it really reached that Redis
    scheduler.close()


def test_default_elector_is_the_brokers_redis(build: Callable[..., LeaderScheduler],
                                               redis_server: RedisServer) -> None:
    scheduler = build(lazy=False, broker_url=f"redis://127.0.0.1:{redis_server.port}/3")
    elector = scheduler.elector
    assert isinstance(elector, LeaseElector)
    assert isinstance(elector.store, RedisLeaseStore)
    assert elector.store.client.connection_pool.connection_kwargs["db"] == 3
    assert "(default)" in scheduler.info
    scheduler.tick()
    assert scheduler.is_leader
    scheduler.close()


def test_default_elector_is_the_brokers_sentinels(
        build: Callable[..., LeaderScheduler], lease_name: str) -> None:
    from celery_leaderbeat.stores.redis_sentinel import RedisSentinelLeaseStore
    from celery_leaderbeat.testing import SentinelGroup

    with SentinelGroup(master_name="brokers-master") as group:
        scheduler = build(lazy=False, broker_url=group.url,
                          broker_transport_options={"master_name": "brokers-master",
                                                    "visibility_timeout": 3600})
        elector = scheduler.elector
        assert isinstance(elector, LeaseElector)
        assert isinstance(elector.store, RedisSentinelLeaseStore)  # not a file lock
        assert len(elector.store.sentinel.sentinels) == 3  # every Sentinel of the broker URL
        assert elector.store.min_replicas == 1
        assert "(default)" in scheduler.info
        scheduler.tick()
        assert scheduler.is_leader
        master = group.master()
        assert master is not None
        assert master.client().hget(f"leaderbeat:{{{lease_name}}}:lease", "term") == str(
            scheduler.term).encode()
        scheduler.close()


@pytest.mark.parametrize("broker", ["memory://", "amqp://guest:guest@127.0.0.1:5672//"])
def test_default_elector_is_a_file_lock_otherwise_with_a_warning(
        tmp_path: Path, lease_name: str, broker: str, caplog: pytest.LogCaptureFixture) -> None:
    app = Celery(lease_name, set_as_current=False)
    app.conf.broker_url = broker
    scheduler = LeaderScheduler(app, schedule_filename=str(tmp_path / "schedule"))
    elector = scheduler.elector
    assert isinstance(elector, LeaseElector)
    assert isinstance(elector.store, FileLeaseStore)
    assert elector.store.path == default_file_path(lease_name)
    with caplog.at_level(logging.WARNING):
        scheduler.tick()
        scheduler.tick()
    warnings = [r for r in caplog.records if "only protects replicas on this one host" in
                r.getMessage()]
    assert len(warnings) == 1  # once, not every tick
    assert scheduler.is_leader
    scheduler.close()


def test_explicit_electors_instances_and_callables(build: Callable[..., LeaderScheduler]) -> None:
    standby = StaticElector(leader=False)
    assert build(leaderbeat_elector=standby).elector is standby
    assert build(leaderbeat_elector="static://leader").elector.is_leader()
    wrapped = build(leaderbeat_elector=lambda: True).elector
    assert wrapped.is_leader()
    imported = build(leaderbeat_elector="celery_leaderbeat.elector:StaticElector").elector
    assert isinstance(imported, StaticElector)


def test_passwords_never_reach_the_banner_or_the_log(
        build: Callable[..., LeaderScheduler], caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://beat:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    scheduler = build(lazy=False, broker_url=url, leaderbeat_elector=url)
    banner = scheduler.info
    assert "s3cret-pw" not in banner
    assert "127.0.0.1" in banner and "leaderbeat" in banner
    with caplog.at_level(logging.DEBUG):
        assert 0 < scheduler.tick() <= scheduler.leader_settings.timing.retry_interval
    assert "store unavailable" in caplog.text
    assert "s3cret-pw" not in caplog.text
    assert "s3cret-pw" not in repr(scheduler.elector)
    scheduler.close()


def test_the_sentinels_keep_the_short_timeouts_under_sentinel_kwargs(
        build: Callable[..., LeaderScheduler]) -> None:
    scheduler = build(leaderbeat_elector="sentinel://127.0.0.1:26379",
                      leaderbeat_redis_transport_options={
                          "master_name": "beat", "sentinel_kwargs": {"password": "s-pw"}})
    store = scheduler.elector.store  # type: ignore[attr-defined]
    sentinel = store.sentinel.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel["password"], sentinel["socket_timeout"]) == ("s-pw", 1.0)
    assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 1.0
