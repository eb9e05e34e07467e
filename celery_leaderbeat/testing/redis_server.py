"""A private, throw-away ``redis-server`` on a free loopback port (or a Sentinel),
optionally with TLS (a fresh CA, see :mod:`.certificates`) or a password."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .certificates import Certificates, make_certificates
from .ports import free_port
from .processes import death_signal_setter
from .waiting import wait_for

__all__ = ["RedisServer"]


class RedisServer:
    """A private, throw-away ``redis-server`` (no persistence) on a free port.

    ``config`` lines go into a fresh config file in the server's own
    directory (kept across restarts, removed on exit), which a Sentinel or a
    cluster node rewrites as it goes; ``sentinel=True`` runs
    ``redis-server <config> --sentinel``. With ``tls``, the port speaks only
    TLS, with a certificate for 127.0.0.1 signed by a CA made for this server
    (:attr:`certificates`; clients need no certificate of their own). With
    ``password``, clients must AUTH.
    """

    def __init__(self, port: int | None = None, executable: str | None = None, *,
                 config: Sequence[str] = (), sentinel: bool = False, tls: bool = False,
                 password: str | None = None) -> None:
        self.port = port or free_port()
        self.executable = executable or shutil.which("redis-server") or "redis-server"
        self.process: subprocess.Popen[bytes] | None = None
        self.sentinel = sentinel
        self.password = password
        self._dir = tempfile.mkdtemp(prefix="leaderbeat-redis-")
        self.certificates: Certificates | None = make_certificates(self._dir) if tls else None
        self.config_path = os.path.join(self._dir, "redis.conf")
        with open(self.config_path, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{line}\n" for line in config))

    @property
    def url(self) -> str:
        """``redis://`` (or ``rediss://``, no TLS options), with the password if any."""
        scheme = "rediss" if self.certificates else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _options(self) -> list[str]:
        options = ["--requirepass", self.password] if self.password else []
        if self.certificates is None:
            return [*options, "--port", str(self.port)]
        c = self.certificates
        return [*options, "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", c.cert,
                "--tls-key-file", c.key, "--tls-ca-cert-file", c.ca, "--tls-auth-clients", "no"]

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            return self
        mode = ["--sentinel"] if self.sentinel else ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [
                self.executable, self.config_path, *mode, *self._options(),
                "--bind", "127.0.0.1", "--dir", self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=death_signal_setter(),  # never outlive a killed test run
        )
        wait_for(self.ping, timeout, message=f"redis-server on port {self.port} answering")
        return self

    def ping(self) -> bool:
        """True once the server answers (a refusal for want of a password counts)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                sock = raw
                if self.certificates is not None:
                    context = ssl.create_default_context(cafile=self.certificates.ca)
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def client(self, **options: Any) -> Any:
        """A redis-py client that reaches this server (TLS and password included)."""
        import redis

        if self.certificates is not None:
            options = {"ssl": True, "ssl_ca_certs": self.certificates.ca, **options}
        if self.password:
            options = {"password": self.password, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def stop(self) -> None:
        """Terminate the server and wait until it is gone (its data is lost)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)  # in case a test paused it
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> float:
        """kill -9 the server; return the monotonic time the signal was sent."""
        assert self.process is not None
        sent_at = time.monotonic()
        self.process.kill()
        self.process.wait()
        self.process = None
        return sent_at

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[RedisServer]:
        with cls() as server:
            yield server
