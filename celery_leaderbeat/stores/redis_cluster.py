"""The Redis lease store on Redis Cluster: ``redis+cluster://[user:password@]h1:7000,h2:7001``.

``rediss+cluster://`` is the same over TLS (certificates through
``leaderbeat_redis_options``). The listed nodes are where redis-py's
``RedisCluster`` first asks for the slot map; any reachable one will do.

All keys of a lease share the ``{name}`` hash tag, so they live in one slot
and every script runs on one master: no command here spans slots, and none
needs a MULTI (which older redis-py clusters lack). The scripts and the
replica guard are those of
:class:`~celery_leaderbeat.stores.redis.RedisLeaseStore`, with
``leaderbeat_redis_min_replicas`` defaulting to 1; ``WAIT`` goes to the
master of the lease's slot on the connection that ran the script, and a
call that failed (the master went away, or the slot ``MOVED``) makes the
next call re-read the slot map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import MovedError, RedisClusterException

from ..lease import StoreUnavailable
from ..settings import improperly_configured
from .redis import RedisLeaseStore, connection_options
from .redis_options import is_brokers_redis, setting_of

if TYPE_CHECKING:
    from ..settings import LeaderSettings

__all__ = ["LazyCluster", "RedisClusterLeaseStore", "parse_cluster_url",
           "sanitize_cluster_url"]

SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
_REDIS_PY = tuple(int(part) for part in redis.__version__.split(".")[:2] if part.isdigit())


def sanitize_cluster_url(url: str) -> str:
    """The URL with its password masked (kombu's sanitizer takes one host only)."""
    split = urlsplit(url)
    credentials, at, hosts = split.netloc.rpartition("@")
    user, colon, _ = credentials.partition(":")
    masked = f"{user}:**" if colon else user
    return split._replace(netloc=f"{masked}{at}{hosts}").geturl()


def parse_cluster_url(url: str) -> tuple[list[ClusterNode], dict[str, Any]]:
    """(startup nodes, credentials and TLS flag) from a ``redis+cluster://`` URL.

    Raises ImproperlyConfigured naming ``leaderbeat_elector`` for another
    scheme, a missing host or port, or a database other than 0 (a cluster has one).
    """
    split = urlsplit(url)
    scheme = split.scheme.lower()
    if scheme not in SCHEMES:
        improperly_configured("leaderbeat_elector", f"{scheme}:// is not a cluster URL")
    credentials, _, hosts = split.netloc.rpartition("@")
    nodes = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            improperly_configured(
                "leaderbeat_elector",
                f"{sanitize_cluster_url(url)!r}: {host!r} is not host:port "
                "(redis+cluster://h1:7000,h2:7001)")
        nodes.append(ClusterNode(name.strip("[]"), int(port)))  # type: ignore[no-untyped-call]
    if not nodes:
        improperly_configured("leaderbeat_elector", f"{sanitize_cluster_url(url)!r} names no node")
    if split.path.strip("/") not in ("", "0"):
        improperly_configured("leaderbeat_elector", "a Redis Cluster has database 0 only")
    options: dict[str, Any] = {"ssl": True} if SCHEMES[scheme] else {}
    if credentials:
        user, _, password = credentials.partition(":")
        options.update({key: unquote(value) for key, value in
                        (("username", user), ("password", password)) if value})
    return nodes, options


class LazyCluster:
    """A ``RedisCluster`` built at its first use: every attribute but
    ``register_script`` is the cluster's. When no node answers, the call
    raises ``redis.ConnectionError`` and the next one tries again."""

    def __init__(self, nodes: list[ClusterNode], options: dict[str, Any]) -> None:
        self._nodes, self._options = nodes, options
        self.built: RedisCluster | None = None

    def register_script(self, script: str) -> Script:
        # As bytes, so that its SHA1 needs no encoder of a client not built yet.
        return Script(self, script.encode())  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if self.built is None:
            try:
                self.built = RedisCluster(startup_nodes=self._nodes, **self._options)
            except (redis.RedisError, RedisClusterException) as exc:
                raise redis.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        return getattr(self.built, name)


class RedisClusterLeaseStore(RedisLeaseStore):
    """The Redis lease store on the master of the lease's slot in a Redis Cluster."""

    default_min_replicas = 1

    def __init__(self, client: Any, name: str, *, description: str,
                 min_replicas: int, setting: str = "leaderbeat_elector") -> None:
        super().__init__(client, name, description=description, min_replicas=min_replicas,
                         setting=setting)
        self._stale_slots = False

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> RedisClusterLeaseStore:
        """Connect lazily to the cluster ``url`` lists; client options apply to every node.

        The slot map is first read at the first call (redis-py reads it when it
        builds a ``RedisCluster``), so beat starts while no node answers, and
        keeps asking, as with the other stores.
        """
        nodes, url_options = parse_cluster_url(url)
        brokers = is_brokers_redis(url, settings)
        options = {**connection_options(settings, brokers=brokers), **url_options}
        if _REDIS_PY < (6,):
            # These retry cluster errors on their own (3 times) unless told not to:
            # a call must never hold a tick longer than one socket timeout. Later
            # ones take DEFAULT_CLIENT_OPTIONS' ``retry`` for that.
            options.setdefault("cluster_error_retry_attempts", 0)
        client = LazyCluster(nodes, options)
        return cls(client, settings.lease_name, description=sanitize_cluster_url(url),
                   min_replicas=cls.min_replicas_of(settings), setting=setting_of(url, settings))

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return _once_more_if_moved(super()._call, script, keys, args)

    def _confirmed(self, script: Any, keys: list[str], args: list[Any],
                   replicas_of: Any) -> Any:
        if self.min_replicas <= 0:
            return super()._confirmed(script, keys, args, replicas_of)  # through _call
        return _once_more_if_moved(super()._confirmed, script, keys, args, replicas_of)

    def _master_for(self, key: str) -> Any:
        cluster: RedisCluster = self.client
        try:
            if self._stale_slots:
                cluster.nodes_manager.initialize()
                self._stale_slots = False
            node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
            return cluster.get_redis_connection(node)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _master_may_have_moved(self) -> None:
        self._stale_slots = True  # re-read the slot map at the next call

    def _subscriber(self) -> Any:
        # A plain PubSub on the node serving the lease's slot, found through the slot
        # map re-read after a failure (a ClusterPubSub would keep dialling a dead
        # node from a stale map). The release's PUBLISH reaches it from any master.
        return self._master_for(self.lease_key)

    def close(self) -> None:
        # RedisCluster keeps one pool per node (and none of its own): free each,
        # leaving a connection in use alone (see RedisLeaseStore.close).
        cluster = self.client.built if isinstance(self.client, LazyCluster) else self.client
        if cluster is None:
            return
        for node in cluster.get_nodes():
            if node.redis_connection is not None:
                with contextlib.suppress(Exception):
                    node.redis_connection.connection_pool.disconnect(inuse_connections=False)


def _once_more_if_moved(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, once more if the node answered ``MOVED``: after a failover
    the first call goes to the old master, which refuses it without running it,
    and the failure has the slot map re-read (``_master_may_have_moved``), so the
    second goes to the slot's new master. Without it, a standby woken by a pushed
    release would spend that wake-up on the refusal and wait a retry interval."""
    try:
        return call(*args)
    except StoreUnavailable as exc:
        if not isinstance(exc.__cause__, MovedError):
            raise
    return call(*args)
