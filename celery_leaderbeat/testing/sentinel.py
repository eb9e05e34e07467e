"""A private Redis Sentinel group: 1 master, N replicas, 3 Sentinels on free loopback ports.

Built from the installed ``redis-server`` (``redis-server <conf> --sentinel``
for the Sentinels), with fresh config files per group, and stopped on
:meth:`SentinelGroup.close`. Faults: kill -9 of the master, a manual
switchover (``SENTINEL FAILOVER``, the old master still serving) and, with
``proxied_master=True``, the master cut off from the Sentinels, the replicas
and every client that found it through the Sentinels, while a client that
dials :attr:`SentinelGroup.master_direct_url` keeps reaching it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .lifecycle import Started
from .proxy import TcpProxy
from .redis_server import RedisServer
from .waiting import wait_for

__all__ = ["SentinelGroup", "replicated_node_config"]


def replicated_node_config() -> list[str]:
    """Config lines of a data node that may become a master: replicas resync at once
    (diskless, no delay), so a new master has a replica online within a second."""
    return ["repl-diskless-sync yes", "repl-diskless-sync-delay 0", "repl-timeout 5"]


class SentinelGroup(Started):
    """1 master + ``replicas`` replicas + ``sentinels`` Sentinels (quorum 2)."""

    def __init__(self, master_name: str = "leaderbeat", replicas: int = 2, sentinels: int = 3,
                 *, down_after_ms: int = 1000, failover_timeout_ms: int = 4000,
                 proxied_master: bool = False) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes = [RedisServer(config=replicated_node_config())]
        self.proxy = TcpProxy(self.nodes[0].port) if proxied_master else None
        advertised = self.proxy.port if self.proxy else self.nodes[0].port
        self._advertised = {advertised: self.nodes[0]}
        for _ in range(replicas):
            self.nodes.append(RedisServer(config=[
                *replicated_node_config(), f"replicaof 127.0.0.1 {advertised}"]))
        self.sentinels = [
            RedisServer(sentinel=True, config=[
                f"sentinel monitor {master_name} 127.0.0.1 {advertised} 2",
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {master_name} {max(1, replicas)}",
            ]) for _ in range(sentinels)]

    # -- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float = 40.0) -> SentinelGroup:
        if self.proxy is not None:
            self.proxy.start()
        for node in self.nodes:
            node.start()
        master = self.nodes[0]
        wait_for(lambda: self.replicas_acking(master, len(self.nodes) - 1), timeout,
                 message="every replica online and acknowledging")
        for sentinel in self.sentinels:
            sentinel.start()
        others = len(self.sentinels) - 1

        def settled() -> bool:
            for sentinel in self.sentinels:
                client = sentinel.client(decode_responses=True, socket_timeout=1)
                state = client.sentinel_master(self.master_name)
                if int(state["num-other-sentinels"]) < others or \
                        int(state["num-slaves"]) < len(self.nodes) - 1:
                    return False
            return True

        wait_for(settled, timeout, message="the Sentinels knowing each other and the replicas")
        return self

    def close(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            with contextlib.suppress(Exception):
                server.__exit__()
        if self.proxy is not None:
            self.proxy.close()

    # -- what it looks like --------------------------------------------------------

    @property
    def url(self) -> str:
        """kombu's form: ``sentinel://127.0.0.1:p1;sentinel://127.0.0.1:p2;...``."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def transport_options(self) -> dict[str, Any]:
        return {"master_name": self.master_name}

    @property
    def master_direct_url(self) -> str:
        """The first master itself, past the proxy (a route no Sentinel gives out)."""
        return self.nodes[0].url

    def master(self) -> RedisServer | None:
        """The node a Sentinel currently names as master (None if none answers)."""
        for sentinel in self.sentinels:
            with contextlib.suppress(Exception):
                client = sentinel.client(socket_timeout=1)
                _, port = client.sentinel_get_master_addr_by_name(self.master_name)
                port = int(port)
                return self._advertised.get(port) or next(
                    (n for n in self.nodes if n.port == port), None)
        return None

    @staticmethod
    def role(node: RedisServer) -> str | None:
        with contextlib.suppress(Exception):
            return str(node.client(decode_responses=True, socket_timeout=0.5).role()[0])
        return None

    @staticmethod
    def online_replicas(node: RedisServer) -> int:
        try:
            info = node.client(decode_responses=True, socket_timeout=0.5).info("replication")
        except Exception:
            return -1
        return sum(1 for key, value in info.items()
                   if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    @staticmethod
    def replicas_acking(node: RedisServer, count: int) -> bool:
        """True once ``count`` replicas acknowledge a write to ``node`` (a replica
        just synced is online a moment before it acknowledges, and WAIT counts acks)."""
        try:
            client = node.client(socket_timeout=1)
            client.set("leaderbeat:harness", "ack")
            return int(client.wait(count, 200)) >= count
        except Exception:
            return False

    # -- faults --------------------------------------------------------------------

    def kill_master(self) -> tuple[RedisServer, float]:
        """kill -9 the current master; return it and the monotonic time of the signal."""
        master = self.master()
        assert master is not None
        return master, master.kill()

    def switchover(self) -> tuple[RedisServer, float]:
        """``SENTINEL FAILOVER``: a replica is promoted while the old master still serves."""
        master = self.master()
        assert master is not None
        started = time.monotonic()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", self.master_name)
        return master, started

    def cut_master(self) -> float:
        """Cut the (proxied) first master off from everyone but its direct clients."""
        assert self.proxy is not None, "SentinelGroup(proxied_master=True) needed"
        cut_at = time.monotonic()
        self.proxy.cut()
        return cut_at

    def restore_master(self) -> None:
        assert self.proxy is not None
        self.proxy.restore()

    def wait_failover(self, old: RedisServer, since: float, timeout: float = 30.0,
                      replicas: int = 1) -> float:
        """Wait until a node other than ``old`` is master with ``replicas`` replicas online,
        as Sentinel names it; return the seconds from ``since`` (the store's failover time)."""

        def done() -> bool:
            new = self.master()
            return (new is not None and new is not old and self.role(new) == "master"
                    and self.online_replicas(new) >= replicas)

        wait_for(done, timeout, interval=0.02, message="a new master with a replica online")
        return time.monotonic() - since
