"""A small client of etcd's v3 JSON gateway that moves to another member when one fails.

etcd serves its gRPC API as JSON over HTTP (``POST /v3/kv/txn``,
``/v3/lease/grant``, ...; keys and values base64) on the client port, for
every etcd from 3.4 on. This module speaks exactly the calls the etcd lease
store makes, and nothing else. Why not a library:

- ``etcd3gw`` (OpenStack, the same gateway) talks to one endpoint, has one
  timeout, no user/password login, and maps errors by HTTP status only,
  while we must tell "lease not found" from "unauthenticated" from "no
  leader" (the gRPC code in the error body). Measured on one loopback
  member (``benchmarks/etcd_calls.py``): a keepalive plus a transaction
  took 3.5 ms through etcd3gw (requests) and 2.1 ms through urllib3, which
  requests uses underneath.
- ``etcd3`` (gRPC) no longer imports with current protobuf; its forks need
  protobuf pinned, which clashes with other packages of an application;
  the async clients do not fit beat's synchronous tick.

So the only dependency is urllib3 (the ``[etcd]`` extra), and the client
keeps what a lease engine needs in its own hands:

- Endpoint failover: a request goes to the member that answered last. On a
  connection error, a timeout or an answer meaning "this member cannot
  serve now" (gRPC UNAVAILABLE or DEADLINE_EXCEEDED: no leader, leader
  changed, request timed out) it moves on to the next member, within one
  deadline for the whole request (``timeout``); the next request starts
  with a member that answered. Every request the store makes is safe to
  repeat on another member after a lost answer (see :mod:`.etcd`).
- Login: with a user name, a token from ``/v3/auth/authenticate`` is sent
  in the ``Authorization`` header. etcd's simple tokens are valid on the
  member that issued them only, so each member gets its own token, renewed
  when a member says it is invalid.
- Errors: :class:`EtcdError` carries the gRPC code and message; errors that
  cannot heal by waiting (refused login, permission denied, TLS handshake)
  go through :func:`misconfiguration`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, TypeVar

import urllib3
from urllib3.exceptions import HTTPError, SSLError

from ..lease import StoreMisconfigured, StoreUnavailable

__all__ = ["EtcdError", "EtcdGateway", "EtcdStream", "b64", "misconfiguration", "unb64"]

Answer = TypeVar("Answer")

#: gRPC status codes found in the gateway's error bodies.
NOT_FOUND = 5
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16
#: Codes by which a member says it cannot serve now: another member may.
MEMBER_UNAVAILABLE = frozenset({4, 14})  # DEADLINE_EXCEEDED, UNAVAILABLE

#: Messages (etcd 3.4/3.5) that mean the credentials or their rights are wrong.
AUTH_PROBLEMS = ("authentication failed", "permission denied", "user name is empty",
                 "user name not found", "invalid auth management")


class EtcdError(StoreUnavailable):
    """etcd answered with an error: ``code`` is the gRPC status code (0 if none)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


def misconfiguration(detail: str) -> StoreMisconfigured:
    """An error that waiting will not heal: refused login, permission, TLS.

    A :class:`StoreMisconfigured`: beat does not start on one, and a replica
    that meets one later reports it at ERROR as it stays a standby.
    """
    return StoreMisconfigured(f"etcd refuses this client: {detail}",
                              "leaderbeat_elector or leaderbeat_etcd_options")


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


class EtcdGateway:
    """JSON calls to the members of one etcd cluster, failing over between them.

    ``endpoints`` are (host, port) pairs; ``tls`` a ready SSL context for
    ``https`` (None for plain HTTP); ``timeout`` the seconds one request may
    take in all, across the members it tries. Thread-safe.
    """

    def __init__(self, endpoints: Sequence[tuple[str, int]], *, tls: ssl.SSLContext | None = None,
                 timeout: float = 1.0, username: str | None = None,
                 password: str | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._username = username
        self._password = password or ""
        self._tls = tls
        self._pools = [self._pool(index) for index in range(len(self.endpoints))]
        self._tokens: dict[int, str] = {}
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> tuple[str, int]:
        """The member calls go to first: the one that answered last."""
        return self.endpoints[self._current]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``; the decoded answer.

        Raises EtcdError for an error etcd gives as its answer, and
        StoreUnavailable when no member answered within ``timeout`` seconds.
        """
        def send(index: int, deadline: float) -> dict[str, Any]:
            return self._call_member(index, path, body, deadline)

        return self._on_members(send)

    def stream(self, path: str, body: dict[str, Any], *,
               after: tuple[str, int] | None = None) -> EtcdStream:
        """POST ``body`` to ``/v3/<path>`` and keep reading the answer: etcd's watch.

        The stream has a connection of its own (never one of the calls'),
        opened with the same endpoints, TLS and login as every call and
        failing over between members the same way, starting with the member
        after ``after`` (one whose stream was just lost) or else with the one
        that answered last. Its first message has been read, within
        ``timeout``: an error answer raises as :meth:`call` raises.
        """
        def open_stream(index: int, deadline: float) -> EtcdStream:
            for attempt in range(2):
                pool = self._pool(index)
                # Hasleader: a member cut off from etcd's Raft leader cancels the
                # stream rather than stay quiet on stale data (what etcd's own
                # client asks with WithRequireLeader); the watch then moves on.
                headers = {**self._headers(index, deadline), "Grpc-Metadata-Hasleader": "true"}
                try:
                    response = pool.urlopen(
                        "POST", "/v3/" + path, body=json.dumps(body).encode(), headers=headers,
                        retries=False, preload_content=False, timeout=self._timeout(deadline))
                    stream = EtcdStream(self.endpoints[index], pool, response)
                    status, first = response.status, stream.open()
                except BaseException as exc:
                    pool.close()
                    if isinstance(exc, (HTTPError, OSError, ValueError)):
                        raise self._failure(index, exc) from exc
                    raise
                result = first.get("result")
                if status == 200 and isinstance(result, dict) and (
                        not result.get("canceled") or int(result.get("compact_revision", 0))):
                    return stream  # a watch canceled for compaction: the watch's to handle
                stream.close()
                self._judge(index, status, _stream_error(first), attempt)
            raise AssertionError("unreachable")  # pragma: no cover

        start = None if after is None else (self.endpoints.index(after) + 1) % len(self._pools)
        return self._on_members(open_stream, start)

    def _on_members(self, send: Callable[[int, float], Answer],
                    start: int | None = None) -> Answer:
        """``send(member index, deadline)`` to one member after another until one answers:
        from ``start``, else from the member that answered last."""
        deadline = time.monotonic() + self.timeout
        with self._lock:
            first = self._current if start is None else start
        failures = []
        for step in range(len(self._pools)):
            index = (first + step) % len(self._pools)
            if deadline <= time.monotonic():
                break
            try:
                answer = send(index, deadline)
            except _MemberDown as exc:
                failures.append(f"{_where(self.endpoints[index])}: {exc}")
                continue
            except StoreUnavailable:
                self._answered(index)  # an answer all the same: this member is up
                raise
            self._answered(index)
            return answer
        with self._lock:
            if self._current == first:  # start the next call with another member
                self._current = (first + 1) % len(self._pools)
        tried = "; ".join(failures) or f"no time left within {self.timeout} s"
        raise StoreUnavailable(f"no etcd member answered within {self.timeout} s ({tried})")

    def _answered(self, index: int) -> None:
        with self._lock:
            self._current = index

    def _call_member(self, index: int, path: str, body: dict[str, Any],
                     deadline: float) -> dict[str, Any]:
        for attempt in range(2):
            status, answer = self._post(index, path, body, self._headers(index, deadline),
                                        deadline)
            if status == 200 and ("header" in answer or "result" in answer):
                return answer
            self._judge(index, status, answer, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _headers(self, index: int, deadline: float) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._username is not None:
            headers["Authorization"] = self._token(index, deadline)
        return headers

    def _judge(self, index: int, status: int, answer: dict[str, Any], attempt: int) -> None:
        """Return to try again (a login token to renew), else raise what ``answer`` means."""
        if "code" not in answer and "grpc_code" not in answer:
            # Some other server, or a proxy, answers on that port.
            raise _MemberDown(f"HTTP {status} without an etcd answer: is this an etcd "
                              "client URL?")
        code = int(answer.get("code", answer.get("grpc_code", 0)))
        message = str(answer.get("message") or answer)
        if code == UNAUTHENTICATED and "invalid auth token" in message and attempt == 0:
            self._tokens.pop(index, None)  # expired, or issued by another member
            return
        if code in MEMBER_UNAVAILABLE or status in (502, 503, 504):
            raise _MemberDown(message)
        if code in (UNAUTHENTICATED, PERMISSION_DENIED) or \
                any(problem in message for problem in AUTH_PROBLEMS):
            raise misconfiguration(message)
        raise EtcdError(code, message)

    def _token(self, index: int, deadline: float) -> str:
        token = self._tokens.get(index)
        if token is None:
            status, answer = self._post(
                index, "auth/authenticate", {"name": self._username, "password": self._password},
                {"Content-Type": "application/json"}, deadline)
            if status == 200 and "token" in answer:
                token = self._tokens[index] = str(answer["token"])
            elif "code" not in answer or int(answer["code"]) in MEMBER_UNAVAILABLE:
                raise _MemberDown(f"HTTP {status} to the login: {answer.get('message')}")
            else:
                raise misconfiguration(f"login as {self._username!r} refused: "
                                       f"{answer.get('message')}")
        return token

    def _post(self, index: int, path: str, body: dict[str, Any], headers: dict[str, str],
              deadline: float) -> tuple[int, dict[str, Any]]:
        try:
            response = self._pools[index].urlopen(
                "POST", "/v3/" + path, body=json.dumps(body).encode(), headers=headers,
                timeout=self._timeout(deadline), retries=False)
        except HTTPError as exc:
            raise self._failure(index, exc) from exc
        try:
            answer = json.loads(response.data or b"{}")
        except ValueError:
            answer = {}
        return response.status, answer if isinstance(answer, dict) else {}

    def _failure(self, index: int, exc: BaseException) -> Exception:
        """What a request that got no answer means: a TLS refusal, or a member down."""
        if isinstance(exc, SSLError):
            return misconfiguration(f"TLS with {_where(self.endpoints[index])} failed: "
                                    f"{_reason(exc)}")
        return _MemberDown(_reason(exc))

    @staticmethod
    def _timeout(deadline: float) -> urllib3.Timeout:
        left = max(0.001, deadline - time.monotonic())
        return urllib3.Timeout(connect=left, read=left)

    def _pool(self, index: int) -> urllib3.HTTPConnectionPool:
        """A pool of one connection to member ``index``, with this gateway's TLS."""
        host, port = self.endpoints[index]
        if self._tls is None:
            return urllib3.HTTPConnectionPool(host, port, maxsize=1, block=False,
                                              retries=False)
        return urllib3.HTTPSConnectionPool(host, port, maxsize=1, block=False, retries=False,
                                           ssl_context=self._tls)

    def close(self) -> None:
        for pool in self._pools:
            pool.close()


class EtcdStream:
    """One long answer of etcd's gateway (a watch): newline-separated JSON messages.

    Read by one thread; :meth:`close` may come from another and ends a read
    that is blocked waiting.
    """

    def __init__(self, member: tuple[str, int], pool: urllib3.HTTPConnectionPool,
                 response: Any) -> None:
        self.member = member
        self._pool = pool
        self._response = response
        self._buffer = b""
        self._chunks: Iterator[bytes] | None = None
        #: The first message.
        self.opening: dict[str, Any] = {}

    def open(self) -> dict[str, Any]:
        """Read the first message (:attr:`opening`) within the request's read timeout;
        then reads block without a timeout (a watch is quiet while nobody lets go)."""
        message = self.opening = self._next()
        sock = getattr(self._response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(None)
        return message

    def messages(self) -> Iterator[dict[str, Any]]:
        """Each further message's ``result``, until the stream ends.

        Raises OSError, urllib3's HTTPError or ValueError when the connection
        breaks or etcd sends something that is not a message; an ``error``
        message ends the stream with EtcdError.
        """
        while True:
            message = self._next()
            if "result" not in message:
                error = message.get("error", message)
                raise EtcdError(int(error.get("grpc_code", error.get("code", 0))),
                                str(error.get("message") or error))
            yield message["result"]

    def _next(self) -> dict[str, Any]:
        if self._chunks is None:
            self._chunks = self._response.read_chunked() if self._response.chunked \
                else self._response.stream(4096)
        while b"\n" not in self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                if self._buffer.strip():  # an error answer is one JSON body, no newline
                    line, self._buffer = self._buffer, b""
                    return _object(line)
                raise ConnectionError("the stream ended")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return _object(line)

    def close(self) -> None:
        """Drop the connection; a read blocked in another thread ends with an error."""
        sock = getattr(self._response.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):  # gone either way
            self._response.release_conn()
        self._pool.close()


#: gRPC status names, as a canceled watch gives its reason ("rpc error: code = ...").
GRPC_CODES = {"DeadlineExceeded": 4, "PermissionDenied": 7, "Unavailable": 14,
              "Unauthenticated": 16}


def _stream_error(first: dict[str, Any]) -> dict[str, Any]:
    """A refused stream's first message as a call's error answer (code, message).

    The gateway refuses with ``{"error": {...}}``; etcd itself refuses a watch
    (no login, a bad token, no permission) with a result that is created and
    canceled at once, naming the gRPC code in its ``cancel_reason``.
    """
    error = first.get("error")
    if isinstance(error, dict):
        return error
    result = first.get("result")
    if isinstance(result, dict) and result.get("canceled"):
        reason = str(result.get("cancel_reason") or "etcd canceled the stream")
        name = reason.partition("code = ")[2].partition(" ")[0]
        return {"code": GRPC_CODES.get(name, 0), "message": reason}
    return first


def _object(line: bytes) -> dict[str, Any]:
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError(f"not a message: {line[:100]!r}")
    return answer


class _MemberDown(Exception):
    """This member did not answer, or cannot serve now: try the next."""


def _where(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    """The cause in a few words ('Connection refused', 'timed out', ...), else the error."""
    text = str(exc)
    for known in ("Connection refused", "timed out", "Connection reset", "Name or service not"):
        if known in text:
            return known
    return f"{type(exc).__name__}: {text}"
