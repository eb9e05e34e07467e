"""Helpers for testing beat clusters against real servers (our own suite uses them too).

Nothing here is imported by the runtime; one module per helper:

- :mod:`.redis_server`: :class:`RedisServer`, a private ``redis-server`` on a
  free loopback port that a test may stop, restart, pause or kill, with TLS
  or a password if asked (:mod:`.certificates` makes its CA).
- :mod:`.etcd_server`: :class:`EtcdCluster`, a private etcd of one member or
  several on free loopback ports, whose members a test may stop, kill -9,
  pause and restart, and whose Raft leader it can find.
- :mod:`.proxy`: :class:`TcpProxy`, a loopback relay a test can cut, so a
  server becomes unreachable for some clients only.
- :mod:`.waiting`: :func:`wait_for`, wait on a condition with a deadline.
- :mod:`.ports`, :mod:`.processes`, :mod:`.records`: free ports, children
  that die with their parent, heartbeat records for registry tests.
- :mod:`.beat_cluster`: :class:`BeatCluster`, K real ``celery beat``
  replicas with fault injection; :func:`replica_app`, the app they run.
- :mod:`.names`: entry names stores have got wrong, and the round-trip check.
- :mod:`.sentinel`: :class:`SentinelGroup`, 1 master, 2 replicas and 3
  Sentinels, with kill -9, switchover and cut-off of the master.
- :mod:`.redis_cluster`: :class:`RedisClusterGroup`, 3 masters and 3
  replicas, with kill -9 and ``CLUSTER FAILOVER``.
- :mod:`.publishes`: :class:`MessageRecorder` and the judges of what a
  cluster published (duplicates, gaps, first publish by another replica).
"""

from .beat_cluster import (
    CONF_ENV,
    DEFAULT_SCHEDULE,
    EVERY_MINUTE,
    EVERY_SECOND,
    LEADER_SCHEDULER,
    SCHEDULE_ENV,
    BeatCluster,
    Replica,
    beat_schedule,
    replica_app,
)
from .certificates import Certificates, make_certificates
from .etcd_server import EtcdCluster, EtcdMember, etcd_executable
from .names import NAMES, SURROGATES, assert_each_name_keeps_its_own_history
from .ports import free_port
from .processes import death_signal_setter
from .proxy import TcpProxy
from .publishes import (
    MessageRecorder,
    Publish,
    duplicate_runs,
    first_publish_by_another,
    publishes_closer_than,
)
from .records import replica_record
from .redis_cluster import RedisClusterGroup
from .redis_server import RedisServer
from .sentinel import SentinelGroup
from .stores import redis_store, store_settings
from .waiting import wait_for

__all__ = [
    "CONF_ENV",
    "DEFAULT_SCHEDULE",
    "EVERY_MINUTE",
    "EVERY_SECOND",
    "LEADER_SCHEDULER",
    "NAMES",
    "SCHEDULE_ENV",
    "SURROGATES",
    "BeatCluster",
    "Certificates",
    "EtcdCluster",
    "EtcdMember",
    "MessageRecorder",
    "Publish",
    "RedisClusterGroup",
    "RedisServer",
    "Replica",
    "SentinelGroup",
    "TcpProxy",
    "assert_each_name_keeps_its_own_history",
    "beat_schedule",
    "death_signal_setter",
    "duplicate_runs",
    "etcd_executable",
    "first_publish_by_another",
    "free_port",
    "make_certificates",
    "publishes_closer_than",
    "redis_store",
    "replica_app",
    "replica_record",
    "store_settings",
    "wait_for",
]
