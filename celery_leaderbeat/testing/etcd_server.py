"""A private, throw-away etcd: one member or a cluster of several on free loopback ports.

Each member gets its own data directory under one temporary directory,
removed on exit (a member preallocates a 64 MB write-ahead log). A test can
stop, kill -9, pause and restart members and ask which one is the Raft
leader. Members run with etcd's default timing (100 ms heartbeat, 1 s
election timeout) on 127.0.0.1; clients talk plain HTTP, or with
``tls=True`` HTTPS with client certificates from a throw-away CA (made with
the ``openssl`` command).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from .certificates import make_certificates
from .lifecycle import Started
from .ports import free_port
from .processes import death_signal_setter
from .waiting import wait_for

__all__ = ["EtcdCluster", "EtcdMember", "etcd_executable"]


def etcd_executable() -> str | None:
    """The etcd binary on PATH (``make servers`` installs it), or None."""
    return shutil.which("etcd")


@dataclass
class EtcdMember:
    """One etcd process: its name, ports, data directory and (while it runs) process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: For HTTPS members: how the harness itself connects (CA and client certificate).
    tls: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def call(self, path: str, body: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
        """POST to this member's JSON gateway (``/v3/<path>``)."""
        request = urllib.request.Request(
            f"{self.client_url}/v3/{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout, context=self.tls) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def member_id(self) -> str | None:
        """This member's id, while it answers."""
        try:
            return str(self.call("maintenance/status", {})["header"]["member_id"])
        except (OSError, ValueError, KeyError):
            return None


class EtcdCluster(Started):
    """``size`` etcd members forming one cluster on free loopback ports.

    ``url`` is the ``etcd://`` URL naming every member (``etcds://`` with
    ``tls``; then ``tls_options`` is the matching ``leaderbeat_etcd_options``).
    Use as a context manager: ``with EtcdCluster(3) as cluster: ...``.
    """

    def __init__(self, size: int = 1, executable: str | None = None,
                 tls: bool = False) -> None:
        self.executable = executable or etcd_executable() or "etcd"
        self._dir = tempfile.mkdtemp(prefix="leaderbeat-etcd-")
        self.token = f"leaderbeat-{uuid.uuid4().hex[:8]}"
        self.tls_options: dict[str, str] = {}
        context = None
        if tls:
            self.tls_options = _make_certificates(os.path.join(self._dir, "pki"))
            context = ssl.create_default_context(cafile=self.tls_options["ca_cert"])
            context.load_cert_chain(self.tls_options["client_cert"],
                                    self.tls_options["client_key"])
        self.members = [
            EtcdMember(f"m{i}", free_port(), free_port(), os.path.join(self._dir, f"m{i}"),
                       tls=context)
            for i in range(size)]

    @property
    def url(self) -> str:
        scheme = "etcds" if self.tls_options else "etcd"
        return f"{scheme}://" + ",".join(m.endpoint for m in self.members)

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        """Start every member that is not running; wait until the cluster has a leader."""
        for member in self.members:
            self._spawn(member)
        self.wait_for_leader(timeout)
        return self

    def _spawn(self, member: EtcdMember) -> None:
        if member.running:
            return
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        client = member.client_url
        tls = []
        if self.tls_options:
            pki = os.path.dirname(self.tls_options["ca_cert"])
            tls = ["--cert-file", os.path.join(pki, "server.pem"),
                   "--key-file", os.path.join(pki, "server.key"),
                   "--trusted-ca-file", self.tls_options["ca_cert"], "--client-cert-auth"]
        member.process = subprocess.Popen(
            [
                self.executable, "--name", member.name, "--data-dir", member.data_dir,
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", member.peer_url,
                "--initial-advertise-peer-urls", member.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new", "--log-level", "error", *tls,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=death_signal_setter(),  # never outlive a killed test run
        )

    def leader(self) -> EtcdMember | None:
        """The member that is Raft leader now, as the running members report it."""
        for member in self.members:
            if not member.running:
                continue
            try:
                status = member.call("maintenance/status", {}, timeout=0.5)
            except (OSError, ValueError):
                continue
            leader = str(status.get("leader", "0"))
            if leader == "0":
                continue
            for candidate in self.members:
                if candidate.running and candidate.member_id() == leader:
                    return candidate
        return None

    def wait_for_leader(self, timeout: float = 20.0) -> EtcdMember:
        """Wait until a running member leads and accepts writes; return it."""
        def ready() -> EtcdMember | None:
            leader = self.leader()
            if leader is None:
                return None
            # An error is an answer all the same (with login on: "user name is empty").
            with contextlib.suppress(urllib.error.HTTPError):
                leader.call("kv/put", {"key": "bGVhZGVyYmVhdC1wcm9iZQ==", "value": ""})
            return leader

        leader = wait_for(ready, timeout, interval=0.05, message="an etcd leader")
        assert leader is not None
        return leader

    def enable_login(self, password: str) -> None:
        """Turn on etcd's authentication with a ``root`` user of this password.

        From then on every request needs a login (``etcd://root:<password>@...``).
        """
        member = self.wait_for_leader()
        member.call("auth/role/add", {"name": "root"})
        member.call("auth/user/add", {"name": "root", "password": password})
        member.call("auth/user/grant", {"user": "root", "role": "root"})
        member.call("auth/enable", {})

    def kill(self, member: EtcdMember) -> None:
        """kill -9 the member: no goodbye to its peers or clients."""
        self._end(member, signal.SIGKILL)

    def stop(self, member: EtcdMember) -> None:
        """Stop the member gracefully (SIGTERM)."""
        self._end(member, signal.SIGTERM)

    def restart(self, member: EtcdMember, timeout: float = 20.0) -> None:
        """Start a stopped or killed member again on its data; wait for a cluster leader."""
        self._spawn(member)
        wait_for(lambda: member.member_id(), timeout, message=f"etcd {member.name} answering")
        self.wait_for_leader(timeout)

    def pause(self, member: EtcdMember) -> None:
        """SIGSTOP the member: connections stay open but nothing answers."""
        assert member.process is not None
        os.kill(member.process.pid, signal.SIGSTOP)

    def resume(self, member: EtcdMember) -> None:
        assert member.process is not None
        os.kill(member.process.pid, signal.SIGCONT)

    def _end(self, member: EtcdMember, how: signal.Signals) -> None:
        process = member.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # in case a test paused it
                os.kill(process.pid, how)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        member.process = None

    def close(self) -> None:
        """Kill every member and remove all data directories."""
        for member in self.members:
            self._end(member, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)



def _make_certificates(directory: str) -> dict[str, str]:
    """A throw-away CA with server and client certificates; the client side as
    ``leaderbeat_etcd_options`` names it."""
    made = make_certificates(directory)
    return {"ca_cert": made.ca, "client_cert": made.client_cert, "client_key": made.client_key}
