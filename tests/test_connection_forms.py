"""The ways users name the scheduler and reach Redis all work, end to end.

- ``-S leader`` (the ``celery.beat_schedulers`` entry point) and
  ``beat_scheduler`` in ``app.conf`` give the LeaderScheduler, as beat builds it.
- ``unix://`` sockets and ``rediss://`` (TLS, with certificate options passed
  through ``leaderbeat_redis_options``) lead against real private servers.
- Every form Celery accepts for a Redis broker is the store too (issue 11):
  kombu's ``ssl_cert_reqs=CERT_*``, ``redis+socket://``, failover lists and
  ``broker_use_ssl``, with real beat replicas on a private TLS redis-server.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from celery.beat import Service
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat import LeaderScheduler, NotLeader
from celery_leaderbeat.backends import choose_elector
from celery_leaderbeat.lease import LeaseElector, LeaseTiming
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.stores.redis_options import client_options
from celery_leaderbeat.testing import (
    BeatCluster,
    RedisServer,
    death_signal_setter,
    free_port,
    store_settings,
    wait_for,
)


@pytest.mark.parametrize("name", ["leader", "celery_leaderbeat.LeaderScheduler",
                                  "celery_leaderbeat.scheduler:LeaderScheduler"])
def test_beat_finds_the_scheduler_by_alias_and_by_path(name: str, tmp_path: Path) -> None:
    app = Celery("forms", broker="memory://", set_as_current=False)
    app.conf.beat_scheduler = name
    app.conf.leaderbeat_elector = "static://leader"
    service = Service(app, scheduler_cls=app.conf.beat_scheduler,
                      schedule_filename=str(tmp_path / "schedule"))
    scheduler = service.get_scheduler(lazy=True)  # what beat builds for its banner
    assert isinstance(scheduler, LeaderScheduler)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="leaderbeat-forms-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _redis_server(workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", "--save", "", "--appendonly", "no", "--dir", str(workdir), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=death_signal_setter())


def _leads(app: Celery) -> bool:
    elector = choose_elector(LeaderSettings.from_app(app)).elector
    assert isinstance(elector, LeaseElector)
    try:
        # wait_for takes NotLeader (the server still starting) as "not yet".
        return wait_for(elector.is_leader, 10, message="leading")
    finally:
        elector.release()
        elector.close()


def _app(url: Any, **conf: Any) -> Celery:
    app = Celery("forms", broker="memory://", set_as_current=False)
    app.conf.leaderbeat_elector = url
    app.conf.leaderbeat_lease_name = f"forms-{os.getpid()}"
    app.conf.update(conf)
    return app


def test_a_unix_socket_url_leads(workdir: Path) -> None:
    sock = workdir / "redis.sock"
    server = _redis_server(workdir, "--port", "0", "--unixsocket", str(sock))
    try:
        wait_for(sock.exists, 10, message="redis socket")
        assert _leads(_app(f"unix://{sock}"))
        assert redis.Redis(unix_socket_path=str(sock)).keys("leaderbeat:*")
    finally:
        server.terminate()
        server.wait(10)


def test_a_tls_url_leads_with_certificate_options(workdir: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    port = free_port()
    server = _redis_server(workdir, "--port", "0", "--tls-port", str(port),
                           "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                           "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        app = _app(url, leaderbeat_redis_options={"ssl_ca_certs": str(cert)})
        assert _leads(app)
        # Without the CA the certificate is refused: the option really reached the client.
        refused = choose_elector(LeaderSettings.from_app(_app(url))).elector
        assert isinstance(refused, LeaseElector)
        with pytest.raises(Exception, match=r"store misconfigured: .*CERTIFICATE_VERIFY_FAILED"):
            refused.is_leader()
        refused.close()
    finally:
        server.terminate()
        server.wait(10)


# -- every form Celery accepts for a Redis broker, as the store ---------------------

TICK = {"tick": {"task": "t.tick", "every": 1.0}}
FAST = LeaseTiming(ttl=2.0, renew_interval=0.3, retry_interval=0.3)


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    with RedisServer(tls=True) as server:
        yield server


def _ca(server: RedisServer) -> str:
    assert server.certificates is not None
    return server.certificates.ca


def _publishes_every_second(cluster: BeatCluster) -> None:
    """The replica leads and sends the 1 s entry every second (three in a row)."""
    wait_for(lambda: len(cluster.recorder.publishes(task="t.tick")) >= 4, 30,
             message=f"four publishes of t.tick\n{cluster.logs()}")
    sent = cluster.recorder.publishes(task="t.tick")
    gaps = [b.mono - a.mono for a, b in zip(sent, sent[1:])]
    assert all(0.5 < gap < 1.6 for gap in gaps[1:]), gaps
    assert cluster.leader_by_lease() is cluster.replicas[0]


@pytest.mark.processes
@pytest.mark.parametrize("cert_reqs", ["CERT_REQUIRED", "CERT_OPTIONAL", "CERT_NONE"])
def test_a_tls_broker_url_in_celerys_form_is_the_store(tls_redis: RedisServer,
                                                       cert_reqs: str) -> None:
    """Issue 11's input: kombu's ssl_cert_reqs spelling, leaderbeat_elector unset."""
    url = (f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs={cert_reqs}"
           f"&ssl_ca_certs={quote(_ca(tls_redis), safe='')}")
    with BeatCluster(url, replicas=1, schedule=TICK, timing=FAST) as cluster:
        _publishes_every_second(cluster)
        assert "TLS" in cluster.lease_store().description


@pytest.mark.processes
def test_tls_options_given_only_in_broker_use_ssl_reach_the_store(
        tls_redis: RedisServer) -> None:
    """The CA is only in broker_use_ssl: without it the certificate check would fail."""
    conf = {"broker_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": _ca(tls_redis)}}
    with BeatCluster(tls_redis.url, replicas=1, schedule=TICK, timing=FAST,
                     conf=conf) as cluster:
        _publishes_every_second(cluster)
        assert "verified" in cluster.lease_store().description


@pytest.mark.processes
def test_a_redis_socket_broker_url_with_kombus_database_is_the_store(workdir: Path) -> None:
    sock = workdir / "redis.sock"
    server = _redis_server(workdir, "--port", "0", "--unixsocket", str(sock))
    try:
        wait_for(sock.exists, 10, message="redis socket")
        with BeatCluster(f"redis+socket://{sock}?virtual_host=3", replicas=1, schedule=TICK,
                         timing=FAST) as cluster:
            _publishes_every_second(cluster)
            lease_keys = redis.Redis(unix_socket_path=str(sock), db=3).keys("leaderbeat:*")
            assert lease_keys, "the lease is in the broker's database 3"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def plain_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_a_failover_list_keeps_the_lease_in_its_first_redis(plain_redis: RedisServer) -> None:
    """Celery's failover forms: the store uses the first URL, never the others."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for form in (f"{plain_redis.url};{dead}", [plain_redis.url, dead], (plain_redis.url, dead)):
        assert _leads(_app(form)), form  # type: ignore[arg-type]
        implicit = Celery("forms", broker=form, set_as_current=False)
        implicit.conf.leaderbeat_lease_name = f"forms-{os.getpid()}"
        assert _leads(implicit), form
    # The dead alternate first: the store never moves on (a lease lives in one place).
    refused = choose_elector(LeaderSettings.from_app(_app(f"{dead};{plain_redis.url}"))).elector
    assert isinstance(refused, LeaseElector)
    with pytest.raises(NotLeader, match="store unavailable"):
        refused.is_leader()
    refused.close()


def test_kombus_query_parameters_work_in_leaderbeat_elector(tls_redis: RedisServer) -> None:
    ca = quote(_ca(tls_redis), safe="")
    for query in (f"ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={ca}",
                  f"ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_check_hostname=false",
                  "ssl_cert_reqs=CERT_NONE&socket_timeout=2"):
        # As in kombu, ssl_* parameters mean TLS even on a redis:// URL.
        for scheme in ("rediss", "redis"):
            assert _leads(_app(f"{scheme}://127.0.0.1:{tls_redis.port}/0?{query}")), query


CLIENT_OPTIONS = [
    ("redis://h:1/2", "redis://h:1", {"db": 2}),
    ("redis://:p%40ss@h/0", "redis://:p%40ss@h", {"db": 0}),
    ("rediss://h/0?ssl_cert_reqs=CERT_OPTIONAL", "rediss://h",
     {"db": 0, "ssl_cert_reqs": ssl.CERT_OPTIONAL}),
    ("redis://h/1?ssl_cert_reqs=none&ssl_ca_certs=%2Fca.pem", "rediss://h",
     {"db": 1, "ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}),
    ("redis+socket:///run/r.sock?virtual_host=4", "unix:///run/r.sock", {"db": 4}),
    ("unix:///run/r.sock?db=5&socket_timeout=0.5", "unix:///run/r.sock",
     {"db": 5, "socket_timeout": 0.5}),
    ("redis://a/0;redis://b/1", "redis://a", {"db": 0}),
    ("rediss://h", "rediss://h", {}),  # redis-py's secure defaults for an explicit URL
]


@pytest.mark.parametrize(("url", "target", "options"), CLIENT_OPTIONS)
def test_client_options_translate_every_form(url: str, target: str,
                                             options: dict[str, Any]) -> None:
    assert client_options(url) == (target, options)


def test_broker_options_apply_to_the_brokers_redis_only() -> None:
    settings = store_settings(
        "forms", broker_url="rediss://h/0",
        broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
        broker_transport_options={"client_name": "beat", "socket_timeout": 30,
                                  "visibility_timeout": 60})
    assert client_options("rediss://h/0", settings) == ("rediss://h", {
        "db": 0, "client_name": "beat", "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/ca.pem"})
    # ssl_* in the URL replace broker_use_ssl as a whole, as in kombu.
    url_tls = replace(settings, broker_url="rediss://h/0?ssl_cert_reqs=CERT_NONE")
    assert client_options(url_tls.broker_url, url_tls)[1]["ssl_cert_reqs"] == ssl.CERT_NONE
    assert "ssl_ca_certs" not in client_options(url_tls.broker_url, url_tls)[1]
    # rediss:// with no TLS option at all: kombu's default, no certificate check.
    bare = replace(settings, broker_use_ssl=None, broker_transport_options={})
    assert client_options("rediss://h/0", bare)[1] == {"db": 0, "ssl_cert_reqs": ssl.CERT_NONE}
    # broker_use_ssl=True: TLS with redis-py's defaults (certificate verified).
    assert client_options("redis://h/0", replace(bare, broker_use_ssl=True,
                                                 broker_url="redis://h/0")) == \
        ("rediss://h", {"db": 0})
    # An explicit leaderbeat_elector takes nothing from the broker's settings.
    explicit = replace(settings, elector="rediss://h/0")
    assert client_options("rediss://h/0", explicit) == ("rediss://h", {"db": 0})
    # leaderbeat_redis_options win over everything.
    mine = replace(settings, redis_options={"ssl_cert_reqs": "CERT_NONE", "client_name": "x"})
    assert client_options("rediss://h/0", mine)[1] == {
        "db": 0, "client_name": "x", "ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}


@pytest.mark.parametrize(("conf", "setting", "problem"), [
    ({"broker_url": "redis://:s3cret@h/zero"}, "broker_url", "must be a database number"),
    ({"broker_url": "redis://:s3cret@h/0?ssl_cert_reqs=CERT_MAYBE"}, "broker_url",
     "ssl_cert_reqs has an invalid value"),
    ({"broker_url": "redis://:s3cret@h/0?visibility_timeout=5"}, "broker_url",
     "unknown query parameter 'visibility_timeout'"),
    ({"broker_url": "redis://:s3cret@h/0", "broker_use_ssl": {"cert_reqs": 2}},
     "broker_use_ssl", "a Redis broker takes ssl_* keys"),
    ({"broker_url": "redis://:s3cret@h/0", "broker_use_ssl": {"ssl_cert_reqs": "always"}},
     "broker_use_ssl", "ssl_cert_reqs='always'"),
    ({"broker_url": "redis://:s3cret@h/0", "broker_use_ssl": "yes"}, "broker_use_ssl", "got"),
    ({"broker_url": "redis+socket:///r.sock?ssl_cert_reqs=none"}, "broker_url", "unix socket"),
    ({"leaderbeat_elector": "unix:///r.sock?ssl_cert_reqs=none"}, "leaderbeat_elector",
     "unix socket"),
    ({"leaderbeat_elector": "redis://:s3cret@h/0?ssl_password=s3cret&ssl_min_version=TLSv9"},
     "leaderbeat_elector", "ssl_min_version has an invalid value"),
])
def test_a_redis_form_the_store_cannot_honour_names_its_setting(
        conf: dict[str, Any], setting: str, problem: str) -> None:
    app = Celery("forms", set_as_current=False)
    app.conf.update(conf)
    with pytest.raises(ImproperlyConfigured) as raised:
        LeaderScheduler(app, lazy=True)
    message = str(raised.value)
    assert message.startswith(setting) or f"{setting}:" in message, message
    assert problem in message
    assert "s3cret" not in message
