"""A private Redis Cluster: 3 masters and 3 replicas on free loopback ports.

Built from the installed ``redis-server`` (``cluster-enabled yes``, fresh
config files per cluster) and joined with ``redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes``; stopped on :meth:`RedisClusterGroup.close`.
Faults: kill -9 of the master of a key's slot (and its restart, after which
it rejoins as a replica), and ``CLUSTER FAILOVER`` run on its replica (a
coordinated switchover: the old master pauses its clients until the replica
has caught up).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

from .lifecycle import Started
from .ports import free_port
from .redis_server import RedisServer
from .sentinel import SentinelGroup, replicated_node_config
from .waiting import wait_for

#: Seconds after which Redis aborts a CLUSTER FAILOVER that has not completed
#: (CLUSTER_MF_TIMEOUT, 5 s), and a little more.
MANUAL_FAILOVER_TIMEOUT = 6.0

__all__ = ["RedisClusterGroup"]

HASH_SLOTS = 16384


def _slot(key: str) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag), computed as redis-py does."""
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


class RedisClusterGroup(Started):
    """``masters`` masters with ``replicas_each`` replicas each (node timeout in ms)."""

    def __init__(self, masters: int = 3, replicas_each: int = 1, *,
                 node_timeout_ms: int = 2000) -> None:
        self.replicas_each = replicas_each
        self.nodes = [RedisServer(config=[
            *replicated_node_config(), "cluster-enabled yes", "cluster-config-file nodes.conf",
            f"cluster-node-timeout {node_timeout_ms}", "cluster-replica-validity-factor 0",
            # The bus port, on its own free port (the default, port + 10000, may be taken
            # or above 65535).
            f"cluster-port {free_port()}",
        ]) for _ in range(masters * (1 + replicas_each))]

    def start(self, timeout: float = 30.0) -> RedisClusterGroup:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas_each), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout)

        def healthy() -> bool:
            for node in self.nodes:
                client = node.client(decode_responses=True, socket_timeout=1)
                if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
            return all(SentinelGroup.online_replicas(m) >= self.replicas_each
                       for m in self.masters())

        wait_for(healthy, timeout, message="the cluster state ok, every replica online")
        return self

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.__exit__()

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` (every node)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def masters(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None
                and SentinelGroup.role(n) == "master"]

    def master_of(self, key: str) -> RedisServer | None:
        """The node serving ``key``'s slot as master, as a live node's slot map says."""
        slot = _slot(key)
        for node in self.nodes:
            if node.process is None:
                continue
            with contextlib.suppress(Exception):
                client = node.client(decode_responses=True, socket_timeout=1)
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(master[1])
                        return next((n for n in self.nodes if n.port == port), None)
        return None

    def replica_of(self, master: RedisServer) -> RedisServer:
        info = master.client(decode_responses=True, socket_timeout=1).info("replication")
        port = int(info["slave0"]["port"])
        return next(n for n in self.nodes if n.port == port)

    # -- faults --------------------------------------------------------------------

    def kill_master_of(self, key: str) -> tuple[RedisServer, float]:
        master = self.master_of(key)
        assert master is not None
        return master, master.kill()

    def switchover(self, key: str, attempts: int = 4) -> tuple[RedisServer, float]:
        """``CLUSTER FAILOVER`` on the replica of ``key``'s master (coordinated).

        The command answers OK at once and the failover runs afterwards; Redis
        aborts it when the replica cannot catch up within its manual-failover
        timeout (5 s), as seen here on a loaded machine. So it is asked again
        (up to ``attempts`` times) until the replica is master. Returns the old
        master and the monotonic time of the first request.
        """
        master = self.master_of(key)
        assert master is not None
        replica = self.replica_of(master)
        started = time.monotonic()
        for attempt in range(attempts):
            replica.client().execute_command("CLUSTER", "FAILOVER")
            try:
                wait_for(lambda: SentinelGroup.role(replica) == "master", MANUAL_FAILOVER_TIMEOUT,
                         interval=0.02, message="the replica promoted")
                break
            except TimeoutError:
                if attempt == attempts - 1:
                    raise
        return master, started

    def wait_failover(self, key: str, old: RedisServer, since: float, timeout: float = 30.0,
                      replicas: int = 0) -> float:
        """Wait until another node serves ``key``'s slot as master with ``replicas``
        replicas online; return the seconds from ``since``."""

        def done() -> bool:
            new = self.master_of(key)
            return (new is not None and new is not old and SentinelGroup.role(new) == "master"
                    and SentinelGroup.online_replicas(new) >= replicas)

        wait_for(done, timeout, interval=0.02, message=f"a new master for {key!r}")
        return time.monotonic() - since
