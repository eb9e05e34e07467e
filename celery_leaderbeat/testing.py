"""Helpers for testing beat clusters against real servers (used by our own suite too).

- :class:`RedisServer`: a private ``redis-server`` on a free loopback port,
  which a test may stop, restart, pause or kill without touching anyone
  else's Redis.
- :func:`wait_for`: poll a condition until it holds or a deadline passes, so
  tests wait on facts, never on hopeful sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

__all__ = ["RedisServer", "death_signal_setter", "free_port", "wait_for"]

T = TypeVar("T")


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
