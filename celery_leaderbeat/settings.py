"""Reading and validating the ``leaderbeat_*`` settings from ``app.conf``.

Every setting is read once, when the scheduler is built (before the beat
banner is printed), and every mistake raises Celery's ``ImproperlyConfigured``
naming the setting, its Django spelling and the expected form.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn

from celery.exceptions import ImproperlyConfigured

from .lease import LeaseTiming

__all__ = ["SETTINGS", "BrokerParts", "LeaderSettings", "Setting", "first_url",
           "improperly_configured"]

CATCH_UP_POLICIES = ("once", "skip")


@dataclass(frozen=True)
class Setting:
    """One ``leaderbeat_*`` setting: its key, default and the form it expects."""

    key: str
    default: Any
    expected: str
    doc: str

    @property
    def django_name(self) -> str:
        return "CELERY_" + self.key.upper()


SETTINGS = {
    s.key: s
    for s in (
        Setting(
            "leaderbeat_elector",
            None,
            "a URL (redis://, rediss://, unix://, sentinel://, redis+cluster://, etcd://, "
            "file:///path, static://leader, ...), "
            "a dotted path to an elector class or object, an elector instance, or a callable",
            "Where leadership is decided. Unset: the broker's Redis (or its Sentinels) when "
            "the broker is Redis, reached as Celery reaches it (broker_use_ssl, broker_user, "
            "broker_password, broker_port, broker_vhost), otherwise a file lock in the "
            "temporary directory (one host only).",
        ),
        Setting(
            "leaderbeat_lease_name",
            None,
            "a non-empty string of letters, digits and . _ : -",
            "Name of the lease and run history, so independent beat groups can share a "
            "store. Default: the app's main module name.",
        ),
        Setting(
            "leaderbeat_identity",
            None,
            "a non-empty string",
            "How this replica is named in the lease, logs and status. Default: host:pid.",
        ),
        Setting(
            "leaderbeat_lease_ttl",
            5.0,
            "a positive number of seconds, above leaderbeat_renew_interval",
            "How long a lease lasts without renewal: the bound on takeover after a crash.",
        ),
        Setting(
            "leaderbeat_renew_interval",
            0.5,
            "a positive number of seconds, below leaderbeat_lease_ttl",
            "How often the leader renews its lease, and so how soon it honours a "
            "step-down request.",
        ),
        Setting(
            "leaderbeat_retry_interval",
            0.5,
            "a positive number of seconds",
            "How often a standby tries to acquire the lease: the bound on takeover "
            "after a graceful stop.",
        ),
        Setting(
            "leaderbeat_redis_options",
            None,
            "a dict of redis.Redis keyword arguments",
            "Options for the Redis client (timeouts, TLS certificates, ...); for sentinel:// "
            "and redis+cluster://, of the connections to the Redis nodes.",
        ),
        Setting(
            "leaderbeat_redis_transport_options",
            None,
            "a dict with 'master_name' (a non-empty string) and optionally 'sentinel_kwargs' "
            "(a dict) and 'min_other_sentinels' (an int), as kombu's transport options",
            "sentinel:// electors: the master's name and how to reach the Sentinels "
            "(their password, TLS). Unset: the broker's broker_transport_options.",
        ),
        Setting(
            "leaderbeat_redis_min_replicas",
            None,
            "a whole number >= 0",
            "Redis electors: a term starts only while at least this many replicas are "
            "online; every claim and new term then waits until all the replicas online when "
            "the term began hold it, and a replica lost ends the term (docs/redis-ha.md). "
            "Default: 1 for sentinel:// and redis+cluster://, 0 (no waiting) for redis://.",
        ),
        Setting(
            "leaderbeat_etcd_options",
            None,
            "a dict with any of timeout (seconds per request, below the lease TTL), "
            "ca_cert, client_cert and client_key (paths to PEM files, etcds:// only)",
            "etcd electors (etcd://, etcds://): the time one request may take across "
            "members (default 1 s), and the TLS files.",
        ),
        Setting(
            "leaderbeat_catch_up",
            "once",
            "'once' or 'skip'",
            "Runs that fell due while no replica led: dispatched once by the new leader "
            "('once') or skipped ('skip').",
        ),
        Setting(
            "leaderbeat_fencing_url",
            None,
            "a Redis URL in any form broker_url takes (redis://, rediss://, unix://, "
            "redis+socket://, with kombu's query parameters)",
            "Worker side, for FencedTask: where the newest term seen is kept, shared by all "
            "workers. Unset: each worker process remembers on its own.",
        ),
        Setting(
            "leaderbeat_metrics_port",
            None,
            "a port number (1-65535) or 'address:port'",
            "Serve Prometheus metrics over HTTP on this port (all interfaces unless an "
            "address is given). Needs celery-leaderbeat[metrics]. Unset: no metrics.",
        ),
        Setting(
            "leaderbeat_sql_table",
            "leaderbeat_lease",
            "a table name of letters, digits and _ (at most 50), starting with a letter or _",
            "SQL electors (postgresql://, mysql://, sqlite://): the lease table, created on "
            "first use; run history and replica registry go in '<name>_runs' and "
            "'<name>_replicas' beside it.",
        ),
        Setting(
            "leaderbeat_sql_engine_options",
            None,
            "a dict of sqlalchemy.create_engine keyword arguments",
            "SQL electors: options for the SQLAlchemy engine (pool, connect_args, ...), "
            "merged over short connect and lock timeouts.",
        ),
        Setting(
            "leaderbeat_push",
            True,
            "True or False",
            "Standbys listen for releases the store pushes (Redis, PostgreSQL, django:// on "
            "PostgreSQL, file://) and otherwise ask about once per lease TTL. False: they ask "
            "every leaderbeat_retry_interval, as stores that cannot push always do.",
        ),
    )
}


def improperly_configured(key: str, problem: str) -> NoReturn:
    """Raise ImproperlyConfigured naming the setting in both spellings."""
    setting = SETTINGS.get(key)
    django = f" (Django: {setting.django_name})" if setting else ""
    expected = f"; expected {setting.expected}" if setting else ""
    raise ImproperlyConfigured(f"{key}{django}: {problem}{expected}.")


def _number(conf: Mapping[str, Any], key: str) -> float:
    value = conf.get(key)
    if value is None:
        value = SETTINGS[key].default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        improperly_configured(key, f"got {value!r}")
    try:
        number = float(value)
    except ValueError:
        improperly_configured(key, f"got {value!r}")
    if not number > 0 or number == float("inf"):
        improperly_configured(key, f"got {value!r}")
    return number


_NAME = re.compile(r"^[A-Za-z0-9._:\-]+$")
_SQL_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")


def default_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class BrokerParts:
    """Celery's ``broker_user``, ``broker_password``, ``broker_port`` and ``broker_vhost``.

    Parts of the broker's address kept out of ``broker_url`` (a password from a
    secret manager, say). Celery hands them to kombu's ``Connection`` beside the
    URL, and kombu uses each only where the URL gives none; the store that
    reuses the broker's Redis does the same
    (:func:`~celery_leaderbeat.stores.redis_options.complete_broker_url`, which
    also checks them: kombu ignores a value the URL overrides, so a value is
    judged only where it is used). Empty values are unset, as in Celery.
    """

    user: Any = None
    password: Any = field(default=None, repr=False)
    port: Any = None
    vhost: Any = None
    #: ``broker_url`` is one URL in a string (no ``;``, not a list): kombu then
    #: has no failover list, and dials a lone ``sentinel://host`` at ``broker_port``.
    single_url: bool = True

    @classmethod
    def from_conf(cls, conf: Any) -> BrokerParts:
        url = getattr(conf, "broker_url", None)
        given = {part: getattr(conf, f"broker_{part}", None) or None
                 for part in ("user", "password", "port", "vhost")}
        return cls(**given, single_url=isinstance(url, str) and ";" not in url)


@dataclass(frozen=True)
class LeaderSettings:
    """The validated leaderbeat settings of one app."""

    elector: Any
    lease_name: str
    identity: str
    timing: LeaseTiming
    redis_options: dict[str, Any] = field(default_factory=dict)
    catch_up: str = "once"
    broker_url: str | None = None
    metrics_address: tuple[str, int] | None = None
    sql_table: str = "leaderbeat_lease"
    sql_engine_options: dict[str, Any] = field(default_factory=dict)
    #: Celery's ``broker_use_ssl`` and ``broker_transport_options``: used only by
    #: the store that reuses the broker's Redis (``leaderbeat_elector`` unset).
    broker_use_ssl: Any = None
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    #: Celery's ``broker_user``, ``broker_password``, ``broker_port`` and
    #: ``broker_vhost``: used only by the store that reuses the broker's Redis.
    broker_parts: BrokerParts = field(default_factory=BrokerParts)
    etcd_options: dict[str, Any] = field(default_factory=dict)
    push: bool = True
    #: sentinel:// options (master_name, sentinel_kwargs, ...): leaderbeat's, or the broker's.
    redis_transport_options: dict[str, Any] = field(default_factory=dict)
    #: None: the store's default (see leaderbeat_redis_min_replicas).
    redis_min_replicas: int | None = None

    @classmethod
    def from_app(cls, app: Any, identity: Callable[[], str] | None = None) -> LeaderSettings:
        conf = app.conf
        timing = LeaseTiming(
            ttl=_number(conf, "leaderbeat_lease_ttl"),
            renew_interval=_number(conf, "leaderbeat_renew_interval"),
            retry_interval=_number(conf, "leaderbeat_retry_interval"),
        )
        for field_name, problem in timing.problems():
            key = {"ttl": "leaderbeat_lease_ttl"}.get(field_name, f"leaderbeat_{field_name}")
            improperly_configured(key, problem)

        lease_name = conf.get("leaderbeat_lease_name") or app.main or "celery"
        if not isinstance(lease_name, str) or not _NAME.match(lease_name):
            improperly_configured("leaderbeat_lease_name", f"got {lease_name!r}")

        replica = conf.get("leaderbeat_identity") or (identity or default_identity)()
        if not isinstance(replica, str) or not replica.strip():
            improperly_configured("leaderbeat_identity", f"got {replica!r}")

        redis_options = conf.get("leaderbeat_redis_options") or {}
        if not isinstance(redis_options, Mapping):
            improperly_configured("leaderbeat_redis_options", f"got {redis_options!r}")

        catch_up = conf.get("leaderbeat_catch_up") or "once"
        if catch_up not in CATCH_UP_POLICIES:
            improperly_configured("leaderbeat_catch_up", f"got {catch_up!r}")

        sql_table = conf.get("leaderbeat_sql_table") or SETTINGS["leaderbeat_sql_table"].default
        if not isinstance(sql_table, str) or not _SQL_TABLE.match(sql_table):
            improperly_configured("leaderbeat_sql_table", f"got {sql_table!r}")

        sql_engine_options = conf.get("leaderbeat_sql_engine_options") or {}
        if not isinstance(sql_engine_options, Mapping):
            improperly_configured("leaderbeat_sql_engine_options", f"got {sql_engine_options!r}")

        # Celery's connection settings, for the store that reuses the broker's Redis.
        broker_use_ssl = getattr(conf, "broker_use_ssl", None)
        if broker_use_ssl is not None and not isinstance(broker_use_ssl, (bool, Mapping)):
            improperly_configured("broker_use_ssl", f"got {broker_use_ssl!r}; expected a dict "
                                  "of ssl_* options or True")
        transport_options = getattr(conf, "broker_transport_options", None) or {}
        if not isinstance(transport_options, Mapping):
            improperly_configured("broker_transport_options", f"got {transport_options!r}; "
                                  "expected a dict")
        etcd_options = conf.get("leaderbeat_etcd_options") or {}
        if not isinstance(etcd_options, Mapping):
            improperly_configured("leaderbeat_etcd_options", f"got {etcd_options!r}")
        push = conf.get("leaderbeat_push")
        if push is None:
            push = SETTINGS["leaderbeat_push"].default
        if not isinstance(push, bool):
            improperly_configured("leaderbeat_push", f"got {push!r}")
        redis_transport_options = conf.get("leaderbeat_redis_transport_options")
        if redis_transport_options is None:
            redis_transport_options = transport_options
        if not isinstance(redis_transport_options, Mapping):
            improperly_configured("leaderbeat_redis_transport_options",
                                  f"got {redis_transport_options!r}")

        min_replicas = conf.get("leaderbeat_redis_min_replicas")
        if min_replicas is not None and (isinstance(min_replicas, bool) or not isinstance(
                min_replicas, int) or min_replicas < 0):
            improperly_configured("leaderbeat_redis_min_replicas", f"got {min_replicas!r}")

        return cls(
            elector=conf.get("leaderbeat_elector"),
            lease_name=lease_name,
            identity=replica,
            timing=timing,
            redis_options=dict(redis_options),
            catch_up=catch_up,
            broker_url=first_url(getattr(conf, "broker_url", None)),
            broker_use_ssl=broker_use_ssl,
            broker_transport_options=dict(transport_options),
            broker_parts=BrokerParts.from_conf(conf),
            metrics_address=_metrics_address(conf.get("leaderbeat_metrics_port")),
            sql_table=sql_table,
            sql_engine_options=dict(sql_engine_options),
            etcd_options=dict(etcd_options),
            push=push,
            redis_transport_options=dict(redis_transport_options),
            redis_min_replicas=min_replicas,
        )


def _metrics_address(value: Any) -> tuple[str, int] | None:
    """``9808``, ``"9808"`` or ``"127.0.0.1:9808"`` -> (address, port); "" is every interface."""
    if value is None or value == "":
        return None
    address, _, port = str(value).rpartition(":")
    if isinstance(value, bool) or not port.isdigit() or not 0 < int(port) < 65536:
        improperly_configured("leaderbeat_metrics_port", f"got {value!r}")
    return address.strip("[]"), int(port)


def first_url(value: Any) -> str | None:
    """The first URL of a Celery failover list (``"a;b"``, a list or a tuple), or None.

    A lease lives in one place: a store never moves to the list's other URLs
    (see :mod:`celery_leaderbeat.stores.redis_options`). A list of
    ``sentinel://`` URLs is one broker (kombu asks each Sentinel in turn), so
    it is kept whole, ``;``-separated.
    """
    if isinstance(value, str):
        value = value.split(";")
    if not isinstance(value, (list, tuple)):
        return None
    urls = [str(url).strip() for url in value if str(url).strip()]
    if not urls:
        return None
    if urls[0].lower().startswith("sentinel://"):
        return ";".join(url for url in urls if url.lower().startswith("sentinel://"))
    return urls[0]
