"""Helpers for testing beat clusters against real servers (used by our own suite too).

- :class:`RedisServer`: a private ``redis-server`` on a free loopback port,
  which a test may stop, restart, pause or kill without touching anyone
  else's Redis.
- :func:`wait_for`: poll a condition until it holds or a deadline passes, so
  tests wait on facts, never on hopeful sleeps.
- :class:`TcpProxy`: a loopback relay in front of a server that a test can
  cut, so the server becomes unreachable for some clients only.
- :func:`replica_record`: a heartbeat record as an elector sends it with a
  lease call, for tests of a store's replica registry.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from .registry import STANDBY, ReplicaRecord

__all__ = ["RedisServer", "TcpProxy", "death_signal_setter", "free_port", "replica_record",
           "wait_for"]

T = TypeVar("T")


def replica_record(identity: str, expires_in: float = 30.0) -> ReplicaRecord:
    """A heartbeat record as the elector sends it: in the role it calls in (a
    standby's), which the store changes to the role the call leaves it in."""
    return ReplicaRecord(identity=identity, host="host", pid=1, version="v", celery_version="c",
                         role=STANDBY, term=None, last_tick_at=datetime.now(timezone.utc),
                         expires_in=expires_in)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Return the first truthy value of ``condition()``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except Exception as exc:  # the condition may touch a server that is coming up
            value, last_error = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{message} not met within {timeout}s{detail}")
        time.sleep(interval)


def death_signal_setter() -> Callable[[], None] | None:
    """A function for the child to run before exec: SIGKILL me when my parent thread dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``). libc is loaded here, in the
    parent, so the child runs no Python import between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    return set_death_signal


class RedisServer:
    """A private, throw-away ``redis-server`` (no persistence) on a free port."""

    def __init__(self, port: int | None = None, executable: str | None = None) -> None:
        self.port = port or free_port()
        self.executable = executable or shutil.which("redis-server") or "redis-server"
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="leaderbeat-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            [
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=death_signal_setter(),  # never outlive a killed test run
        )
        wait_for(self.ping, timeout, message=f"redis-server on port {self.port} answering")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis(port=self.port, **options)

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


class TcpProxy:
    """A loopback TCP relay in front of one server, which a test can cut and restore.

    Clients connect to :attr:`port` instead of the server, so one client's
    link can be cut while others keep theirs. A cut behaves like a network
    partition, not like a stopped server: connections stay open and new ones
    are accepted, but no byte gets through in either direction, so clients
    wait for their own timeouts. :meth:`restore` resets every connection that
    lived through the cut (what was sent meanwhile is lost, never delivered
    late) and relays new ones again.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []  # accepted while cut, never connected onward
        self._is_cut = False
        self._commands: list[tuple[str, threading.Event]] = []
        self._commands_lock = threading.Lock()
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread: threading.Thread | None = None

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    def start(self) -> TcpProxy:
        if self._thread is None:
            self._listener.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_read, selectors.EVENT_READ)
            self._thread = threading.Thread(
                target=self._run, name=f"tcp-proxy-{self.port}", daemon=True)
            self._thread.start()
        return self

    def cut(self) -> None:
        """Stop every byte from getting through; returns once nothing passes any more."""
        self._command("cut")

    def restore(self) -> None:
        """Reset the connections that lived through the cut and relay again."""
        self._command("restore")

    def close(self) -> None:
        if self._thread is not None:
            self._command("close")
            self._thread.join(5)
            self._thread = None
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()

    def _command(self, name: str) -> None:
        done = threading.Event()
        with self._commands_lock:
            self._commands.append((name, done))
        self._wake_write.send(b".")
        if not done.wait(5):
            raise TimeoutError(f"proxy on port {self.port} did not {name} within 5s")

    # -- the relay thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_read:
                    if not self._obey():
                        return
                elif sock is self._listener:
                    self._accept()
                else:
                    self._relay(sock)  # type: ignore[arg-type]

    def _obey(self) -> bool:
        """Carry out queued commands; False once told to close."""
        self._wake_read.recv(1024)
        with self._commands_lock:
            commands, self._commands = self._commands, []
        running = True
        for name, done in commands:
            if name == "cut" and not self._is_cut:
                self._is_cut = True
                for sock in self._peers:
                    self._selector.unregister(sock)
            elif name == "restore" and self._is_cut:
                self._is_cut = False
                self._drop_all()
            elif name == "close":
                self._drop_all()
                self._selector.close()
                running = False
            done.set()
        return running

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._is_cut:
            self._held.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        for sock in (client, upstream):
            sock.settimeout(5)  # a peer that stops reading must not stall the relay for long
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client

    def _relay(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._peers.pop(one, None)
            if not self._is_cut:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(one)
            one.close()

    def _drop_all(self) -> None:
        for sock in list(self._peers):
            self._drop(sock)
        for sock in self._held:
            sock.close()
        self._held = []

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
