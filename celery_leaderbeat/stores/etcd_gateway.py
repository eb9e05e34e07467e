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
import json
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, SSLError

from ..lease import StoreMisconfigured, StoreUnavailable

__all__ = ["EtcdError", "EtcdGateway", "b64", "misconfiguration", "unb64"]

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
        self._pools: list[urllib3.HTTPConnectionPool] = []
        for host, port in self.endpoints:
            if tls is None:
                self._pools.append(urllib3.HTTPConnectionPool(
                    host, port, maxsize=1, block=False, retries=False))
            else:
                self._pools.append(urllib3.HTTPSConnectionPool(
                    host, port, maxsize=1, block=False, retries=False, ssl_context=tls))
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
        deadline = time.monotonic() + self.timeout
        with self._lock:
            first = self._current
        failures = []
        for step in range(len(self._pools)):
            index = (first + step) % len(self._pools)
            if deadline <= time.monotonic():
                break
            try:
                answer = self._call_member(index, path, body, deadline)
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
            headers = {"Content-Type": "application/json"}
            if self._username is not None:
                headers["Authorization"] = self._token(index, deadline)
            status, answer = self._post(index, path, body, headers, deadline)
            if status == 200 and ("header" in answer or "result" in answer):
                return answer
            if "code" not in answer:  # some other server, or a proxy, answers on that port
                raise _MemberDown(f"HTTP {status} without an etcd answer: is this an etcd "
                                  "client URL?")
            code, message = int(answer["code"]), str(answer.get("message") or answer)
            if code == UNAUTHENTICATED and "invalid auth token" in message and attempt == 0:
                self._tokens.pop(index, None)  # expired, or issued by another member
                continue
            if code in MEMBER_UNAVAILABLE or status in (502, 503, 504):
                raise _MemberDown(message)
            if code in (UNAUTHENTICATED, PERMISSION_DENIED) or \
                    any(problem in message for problem in AUTH_PROBLEMS):
                raise misconfiguration(message)
            raise EtcdError(code, message)
        raise AssertionError("unreachable")  # pragma: no cover

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
        left = max(0.001, deadline - time.monotonic())
        try:
            response = self._pools[index].urlopen(
                "POST", "/v3/" + path, body=json.dumps(body).encode(), headers=headers,
                timeout=urllib3.Timeout(connect=left, read=left), retries=False)
        except SSLError as exc:
            raise misconfiguration(f"TLS with {_where(self.endpoints[index])} failed: "
                                   f"{_reason(exc)}") from exc
        except HTTPError as exc:
            raise _MemberDown(_reason(exc)) from exc
        try:
            answer = json.loads(response.data or b"{}")
        except ValueError:
            answer = {}
        return response.status, answer if isinstance(answer, dict) else {}

    def close(self) -> None:
        for pool in self._pools:
            pool.close()


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
