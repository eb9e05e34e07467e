"""Celery's broker_user, broker_password, broker_port and broker_vhost reach the store.

With ``leaderbeat_elector`` unset the lease lives in the broker's Redis, and
Celery lets the parts of that Redis's address stay out of ``broker_url`` (a
password from a secret manager, say). kombu takes each one only where the URL
gives none; the store must connect with exactly what Celery connects with, so
every test here checks both against real private servers: Celery's own
connection works and lands in the same database as the lease.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat import LeaderScheduler
from celery_leaderbeat.lease import LeaseElector, LeaseTiming
from celery_leaderbeat.testing import (
    BeatCluster,
    RedisServer,
    death_signal_setter,
    wait_for,
)

SECRET = "s3cret"
#: An ACL user beside the default user, whose password is SECRET.
USER, USER_PASSWORD = "beat", "be@t:p/w%rd"  # characters a URL must quote


@pytest.fixture(scope="module")
def secured() -> Iterator[RedisServer]:
    """A private Redis that refuses every client without a password."""
    with RedisServer(password=SECRET,
                     config=[f"user {USER} on >{USER_PASSWORD} ~* &* +@all"]) as server:
        yield server


def _app(tmp_path: Path, broker_url: str, **conf: Any) -> Celery:
    app = Celery("parts", broker=broker_url, set_as_current=False)
    app.conf.update({"leaderbeat_lease_name": f"parts-{os.getpid()}-{tmp_path.name}",
                     "leaderbeat_push": False, "beat_schedule": {}, **conf})
    return app


def _scheduler_leads(app: Celery, tmp_path: Path) -> LeaderScheduler:
    """A real LeaderScheduler, built as beat builds it (its start-up probe refuses a
    store that rejects it with ImproperlyConfigured), that goes on to lead."""
    scheduler = LeaderScheduler(app, schedule_filename=str(tmp_path / "schedule"))
    assert isinstance(scheduler.elector, LeaseElector)
    try:
        wait_for(scheduler.elector.is_leader, 10, message="leading")
    except BaseException:
        scheduler.close()
        raise
    return scheduler


def _celerys_database(app: Celery) -> int:
    """Connect as Celery connects to its broker (kombu, with the broker_* settings);
    the database kombu chose."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        client = connection.default_channel.client
        client.ping()
        return int(client.connection_pool.connection_kwargs.get("db", 0))


def _lease_in(server: RedisServer, db: int, app: Celery) -> bool:
    name = app.conf.leaderbeat_lease_name
    return bool(server.client(db=db).keys(f"leaderbeat:{{{name}}}:*"))


@pytest.mark.parametrize(("url_auth", "conf"), [
    ("", {"broker_password": SECRET}),
    (f"{USER}@", {"broker_password": USER_PASSWORD}),
    ("", {"broker_user": USER, "broker_password": USER_PASSWORD}),
], ids=["password", "user-in-url", "acl-user"])
def test_the_brokers_credentials_outside_broker_url_reach_the_store(
        secured: RedisServer, tmp_path: Path, url_auth: str, conf: dict[str, Any]) -> None:
    app = _app(tmp_path, f"redis://{url_auth}127.0.0.1:{secured.port}/0", **conf)
    assert _celerys_database(app) == 0
    scheduler = _scheduler_leads(app, tmp_path)
    try:
        assert _lease_in(secured, 0, app)
        assert ":**@" in scheduler.elector.describe()
        for secret in (SECRET, USER_PASSWORD):
            assert secret not in scheduler.elector.describe()
            assert secret not in repr(scheduler.leader_settings.broker_parts)
    finally:
        scheduler.close()


def test_a_failover_lists_first_url_takes_them(secured: RedisServer, tmp_path: Path) -> None:
    """kombu fills in the first URL of a failover list, the one the lease lives in."""
    first = f"redis://127.0.0.1:{secured.port}/0"
    for form in (f"{first};redis://127.0.0.1:1/0", [first, "redis://127.0.0.1:1/0"]):
        app = _app(tmp_path, form, broker_password=SECRET)  # type: ignore[arg-type]
        assert _celerys_database(app) == 0
        _scheduler_leads(app, tmp_path).close()
        assert _lease_in(secured, 0, app)


def test_a_tls_broker_takes_them_too(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    with RedisServer(tls=True, password=SECRET) as server:
        assert server.certificates is not None
        app = _app(tmp_path, "rediss://127.0.0.1/0", broker_port=server.port,
                   broker_password=SECRET,
                   broker_use_ssl={"ssl_cert_reqs": "required",
                                   "ssl_ca_certs": server.certificates.ca})
        assert _celerys_database(app) == 0
        scheduler = _scheduler_leads(app, tmp_path)
        try:
            assert _lease_in(server, 0, app)
            assert scheduler.elector.describe().endswith("(TLS, verified)")
        finally:
            scheduler.close()


def test_broker_port_fills_a_url_without_a_port(secured: RedisServer, tmp_path: Path) -> None:
    """Without broker_port the URL means port 6379, where this test's Redis is not (and
    the shared Redis there, which has no such user, refuses these credentials)."""
    app = _app(tmp_path, f"redis://{USER}:{quote(USER_PASSWORD, safe='')}@127.0.0.1/0",
               broker_port=secured.port)
    assert _celerys_database(app) == 0
    _scheduler_leads(app, tmp_path).close()
    assert _lease_in(secured, 0, app)


@pytest.mark.parametrize("vhost", ["5", "/5", 5])
def test_broker_vhost_is_the_database_of_a_url_without_one(
        secured: RedisServer, tmp_path: Path, vhost: Any) -> None:
    app = _app(tmp_path, f"redis://:{SECRET}@127.0.0.1:{secured.port}", broker_vhost=vhost)
    assert _celerys_database(app) == 5
    _scheduler_leads(app, tmp_path).close()
    assert _lease_in(secured, 5, app)
    assert not _lease_in(secured, 0, app)


def test_what_the_url_gives_wins_over_the_settings(
        secured: RedisServer, tmp_path: Path) -> None:
    """kombu never reads a broker_* setting whose part the URL gives, so neither do we,
    even one it could not use (a guard: before broker_* were read, nothing was)."""
    app = _app(tmp_path, f"redis://:{SECRET}@127.0.0.1:{secured.port}/2",
               broker_password="not-this-one", broker_port="six", broker_vhost="prod")
    assert _celerys_database(app) == 2
    scheduler = _scheduler_leads(app, tmp_path)
    try:
        assert _lease_in(secured, 2, app)
        assert scheduler.elector.describe() == f"redis://:**@127.0.0.1:{secured.port}/2"
    finally:
        scheduler.close()


def test_a_socket_broker_takes_broker_vhost_but_not_the_password(tmp_path: Path) -> None:
    """kombu reads a socket's credentials from its URL alone: broker_password never
    reaches it, and the store must not send it either (this Redis has no password, and
    would refuse an AUTH)."""
    workdir = Path(tempfile.mkdtemp(prefix="leaderbeat-parts-"))
    sock = workdir / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--port", "0", "--unixsocket", str(sock)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=death_signal_setter())
    try:
        wait_for(sock.exists, 10, message="redis socket")
        app = _app(tmp_path, f"redis+socket://{sock}", broker_vhost="4", broker_password=SECRET)
        assert _celerys_database(app) == 4
        _scheduler_leads(app, tmp_path).close()
        name = app.conf.leaderbeat_lease_name
        assert redis.Redis(unix_socket_path=str(sock), db=4).keys(f"leaderbeat:{{{name}}}:*")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_an_explicit_elector_url_takes_nothing_from_the_brokers_settings(
        secured: RedisServer, tmp_path: Path) -> None:
    """The same settings lead with the broker's Redis, and are refused once the same URL
    is written as leaderbeat_elector: that URL is the user's own, complete as written
    (as Celery's result_backend takes nothing from broker_password either)."""
    url = f"redis://127.0.0.1:{secured.port}/0"
    _scheduler_leads(_app(tmp_path, url, broker_password=SECRET), tmp_path).close()
    explicit = _app(tmp_path, url, broker_password=SECRET, leaderbeat_elector=url)
    with pytest.raises(ImproperlyConfigured) as raised:
        LeaderScheduler(explicit, schedule_filename=str(tmp_path / "explicit"))
    message = str(raised.value)
    assert message.startswith("leaderbeat_elector"), message
    assert "broker_password" not in message and SECRET not in message


@pytest.mark.parametrize(("url", "conf", "setting", "problem"), [
    ("redis://127.0.0.1:6379", {"broker_vhost": "prod"}, "broker_vhost",
     "the virtual host is the database number"),
    ("redis://127.0.0.1:6379", {"broker_vhost": -1}, "broker_vhost", "got -1"),
    ("redis+socket:///r.sock", {"broker_vhost": "prod"}, "broker_vhost", "got 'prod'"),
    ("redis://127.0.0.1/0", {"broker_port": "six"}, "broker_port", "a port number"),
])
def test_a_broker_part_kombu_could_not_use_names_its_setting(
        url: str, conf: dict[str, Any], setting: str, problem: str, tmp_path: Path) -> None:
    app = _app(tmp_path, url, broker_password=SECRET, **conf)
    with pytest.raises(ImproperlyConfigured) as raised:
        LeaderScheduler(app, lazy=True)  # what beat builds for its banner
    message = str(raised.value)
    assert message.startswith(f"{setting}:"), message
    assert problem in message and SECRET not in message


def test_a_wrong_broker_password_is_named_with_broker_url(
        secured: RedisServer, tmp_path: Path) -> None:
    app = _app(tmp_path, f"redis://127.0.0.1:{secured.port}/0", broker_password="wrong-pw")
    with pytest.raises(ImproperlyConfigured) as raised:
        LeaderScheduler(app, schedule_filename=str(tmp_path / "schedule"))
    message = str(raised.value)
    assert message.startswith("broker_url, broker_password: the store redis://:**@"), message
    assert "wrong-pw" not in message


def test_a_sentinel_broker_takes_the_masters_parts_and_a_lone_sentinels_port(
        tmp_path: Path) -> None:
    """sentinel://127.0.0.1 (no port, no password, no database), as kombu reads it: the
    Sentinel at 127.0.0.1:broker_port, the master with broker_password, database
    broker_vhost. The Sentinel itself has no password (kombu would not send this one)."""
    with RedisServer(password=SECRET) as master, RedisServer(sentinel=True, config=[
            f"sentinel monitor broker 127.0.0.1 {master.port} 1",
            f"sentinel auth-pass broker {SECRET}"]) as sentinel:
        app = _app(tmp_path, "sentinel://127.0.0.1", broker_port=sentinel.port,
                   broker_password=SECRET, broker_vhost="3",
                   broker_transport_options={"master_name": "broker"},
                   leaderbeat_redis_min_replicas=0)  # a master without replicas
        assert _celerys_database(app) == 3
        scheduler = _scheduler_leads(app, tmp_path)
        try:
            assert _lease_in(master, 3, app)
            shown = scheduler.elector.describe()
            assert f"127.0.0.1:{sentinel.port}/3" in shown and SECRET not in shown, shown
        finally:
            scheduler.close()


TICK = {"tick": {"task": "t.tick", "every": 1.0}}
FAST = LeaseTiming(ttl=2.0, renew_interval=0.3, retry_interval=0.3)


@pytest.mark.processes
def test_a_beat_process_leads_with_the_password_kept_out_of_broker_url(
        secured: RedisServer) -> None:
    """The reported case, as a real ``celery beat``: it leads and sends, and neither its
    banner nor its log shows the password."""
    url = f"redis://127.0.0.1:{secured.port}/0"
    with BeatCluster(url, replicas=1, schedule=TICK, timing=FAST,
                     conf={"broker_password": SECRET}) as cluster:
        wait_for(lambda: len(cluster.recorder.publishes(task="t.tick")) >= 3, 30,
                 message=f"three publishes of t.tick\n{cluster.logs()}")
        assert cluster.leader_by_lease() is cluster.replicas[0]
        log = cluster.replicas[0].log()
        assert "redis://:**@127.0.0.1" in log, log
        assert SECRET not in log
