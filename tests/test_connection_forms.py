"""The ways users name the scheduler and reach Redis all work, end to end.

- ``-S leader`` (the ``celery.beat_schedulers`` entry point) and
  ``beat_scheduler`` in ``app.conf`` give the LeaderScheduler, as beat builds it.
- ``unix://`` sockets and ``rediss://`` (TLS, with certificate options passed
  through ``leaderbeat_redis_options``) lead against real private servers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.beat import Service

from celery_leaderbeat import LeaderScheduler
from celery_leaderbeat.backends import choose_elector
from celery_leaderbeat.lease import LeaseElector
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.testing import death_signal_setter, free_port, wait_for


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


def _app(url: str, **conf: Any) -> Celery:
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
        with pytest.raises(Exception, match="store misconfigured: .*CERTIFICATE_VERIFY_FAILED"):
            refused.is_leader()
        refused.close()
    finally:
        server.terminate()
        server.wait(10)
