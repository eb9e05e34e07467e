"""The Redis lease store behind Redis Sentinel: ``sentinel://h1:26379;sentinel://h2:26379/0``.

The URL is kombu's (``kombu.transport.redis.SentinelChannel``): one
``sentinel://[user:password@]host[:port][/db]`` per Sentinel, joined by
``;``. The user, password and database are those of the Redis master (the
first URL that gives one); the master's name and the Sentinels' own options
are transport options, as kombu takes them: ``master_name`` (required),
``sentinel_kwargs`` (password, TLS of the Sentinels) and
``min_other_sentinels``, from ``leaderbeat_redis_transport_options`` or,
unset, the broker's ``broker_transport_options``.

Every call asks the Sentinels for the master when it opens a connection
(redis-py's ``SentinelConnectionPool``); the scripts and the replica guard
are those of :class:`~celery_leaderbeat.stores.redis.RedisLeaseStore`, with
``leaderbeat_redis_min_replicas`` defaulting to 1 (see docs/redis-ha.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from kombu.utils.url import maybe_sanitize_url
from redis.sentinel import Sentinel

from ..settings import improperly_configured
from .redis import RedisLeaseStore, connection_options
from .redis_options import complete_broker_url, is_brokers_redis, setting_of

if TYPE_CHECKING:
    from ..settings import LeaderSettings

__all__ = ["RedisSentinelLeaseStore", "SentinelURL", "parse_sentinel_url",
           "sanitize_sentinel_url"]

DEFAULT_SENTINEL_PORT = 26379
OPTIONS_KEY = "leaderbeat_redis_transport_options"
#: The transport options this store reads (others, such as kombu's own, are ignored).
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")


class SentinelURL(NamedTuple):
    """What a ``sentinel://`` URL list names."""

    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str, setting: str = "leaderbeat_elector") -> SentinelURL:
    """Parse kombu's ``sentinel://h1:26379;sentinel://h2:26379/0`` form.

    Raises ImproperlyConfigured (naming ``setting``, the one the URL came from)
    for a part that is not a ``sentinel://host[:port]`` URL, or parts that
    disagree on the database or the credentials.
    """
    sentinels: list[tuple[str, int]] = []
    found: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in url.split(";"))):
        split = urlsplit(part)
        try:
            port = split.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            port = 0
        if split.scheme.lower() != "sentinel" or not split.hostname or not port:
            improperly_configured(
                setting, f"{maybe_sanitize_url(part)!r} is not a sentinel://host[:port][/db] URL")
        sentinels.append((split.hostname, port))
        path = split.path.strip("/")
        given = {"db": path or None,
                 "username": unquote(split.username) if split.username else None,
                 "password": unquote(split.password) if split.password else None}
        for key, value in given.items():
            if value is None:
                continue
            if found.setdefault(key, value) != value:
                improperly_configured(setting, f"the sentinel:// URLs disagree on the {key}")
    if not sentinels:
        improperly_configured(setting, "no sentinel:// URL given")
    db = found.get("db") or "0"
    if not str(db).isdigit():
        improperly_configured(setting, f"database {db!r} is not a number")
    return SentinelURL(sentinels, int(db), found.get("username"), found.get("password"))


def sanitize_sentinel_url(url: str) -> str:
    """The URL list with every password masked (kombu's sanitizer takes one URL at a time)."""
    return ";".join(maybe_sanitize_url(part.strip()) for part in url.split(";") if part.strip())


def sentinel_options(options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(master name, keyword arguments of redis-py's ``Sentinel``) from transport options.

    Raises ImproperlyConfigured naming ``leaderbeat_redis_transport_options``.
    """
    master_name = options.get("master_name")
    if not isinstance(master_name, str) or not master_name:
        improperly_configured(
            OPTIONS_KEY, "a sentinel:// elector needs the master's name, "
            f"got master_name={master_name!r} (set it there, or in broker_transport_options "
            "when the broker is this sentinel:// URL)")
    kwargs: dict[str, Any] = {}
    sentinel_kwargs = options.get("sentinel_kwargs")
    if sentinel_kwargs is not None:
        if not isinstance(sentinel_kwargs, Mapping):
            improperly_configured(OPTIONS_KEY, f"sentinel_kwargs: got {sentinel_kwargs!r}")
        kwargs["sentinel_kwargs"] = dict(sentinel_kwargs)
    others = options.get("min_other_sentinels")
    if others is not None:
        if isinstance(others, bool) or not isinstance(others, int) or others < 0:
            improperly_configured(OPTIONS_KEY, f"min_other_sentinels: got {others!r}")
        kwargs["min_other_sentinels"] = others
    return master_name, kwargs


class RedisSentinelLeaseStore(RedisLeaseStore):
    """The Redis lease store on the master that Redis Sentinel names."""

    default_min_replicas = 1

    def __init__(self, client: Any, name: str, *, sentinel: Sentinel,
                 description: str, min_replicas: int,
                 setting: str = "leaderbeat_elector") -> None:
        super().__init__(client, name, description=description, min_replicas=min_replicas,
                         setting=setting)
        self.sentinel = sentinel

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> RedisSentinelLeaseStore:
        """Connect lazily through the Sentinels ``url`` lists (kombu's form, module docstring).

        Client options (:func:`~celery_leaderbeat.stores.redis.connection_options`)
        apply to the master connections; the Sentinels' own are their socket
        timeouts under ``sentinel_kwargs`` (password, TLS of the Sentinels). For
        the broker's Sentinels, ``broker_user``, ``broker_password``,
        ``broker_vhost`` and ``broker_port`` fill in what the URL leaves out, as
        in kombu (:func:`.redis_options.complete_broker_url`).
        """
        brokers = is_brokers_redis(url, settings)
        setting = setting_of(url, settings)
        if brokers:
            url = complete_broker_url(url, settings).url
        parsed = parse_sentinel_url(url, setting)
        master_name, kwargs = sentinel_options(settings.redis_transport_options)
        options = connection_options(settings, brokers=brokers)
        # The Sentinels keep the short timeouts and the no-retry policy too, under
        # what sentinel_kwargs says: a Sentinel that stops answering (or refuses
        # connections: redis-py's own retries with backoff took 16 s a call) must
        # not hold a tick either.
        timeouts = {k: v for k, v in options.items()
                    if k.startswith("socket_") or k in ("retry", "health_check_interval")}
        kwargs["sentinel_kwargs"] = {**timeouts, **kwargs.get("sentinel_kwargs", {})}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parsed.sentinels, **kwargs, **options)
        credentials = {key: value for key, value in (
            ("username", parsed.username), ("password", parsed.password)) if value}
        client = sentinel.master_for(  # type: ignore[no-untyped-call]
            master_name, db=parsed.db, **credentials)
        description = f"{sanitize_sentinel_url(url)} (master {master_name!r})"
        return cls(client, settings.lease_name, sentinel=sentinel, description=description,
                   min_replicas=cls.min_replicas_of(settings), setting=setting)

    def _master_may_have_moved(self) -> None:
        # Ask the Sentinels now: redis-py asks them only when it opens a connection,
        # and keeps its pooled ones on an old master that still serves (a switchover)
        # until that master is demoted, seconds later. A changed answer drops them.
        with contextlib.suppress(Exception):
            self.client.connection_pool.get_master_address()

    def close(self) -> None:
        super().close()
        for sentinel in self.sentinel.sentinels:  # the connections that asked for the master
            with contextlib.suppress(Exception):
                sentinel.connection_pool.disconnect(inuse_connections=False)
