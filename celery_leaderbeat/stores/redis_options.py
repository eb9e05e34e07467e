"""From a Redis URL in any form Celery and kombu accept to redis-py client options.

One translation for every Redis client this package builds (the lease
store, the workers' fencing register, and any other Redis store), so that
a URL which works as ``broker_url`` also works as the store's URL. redis-py
alone would refuse kombu's spellings (``ssl_cert_reqs=CERT_REQUIRED``,
``redis+socket://``, ``;`` failover lists) or miss TLS options that Celery
gives outside the URL (``broker_use_ssl``).

The forms, as kombu's Redis transport reads them (``kombu/utils/url.py``,
``kombu/transport/redis.py``):

- ``redis://`` and ``rediss://`` (TLS) with ``[user:password@]host[:port][/db]``;
  ``unix:///path`` (redis-py) and ``redis+socket:///path`` (kombu), whose
  database is ``?db=N`` or kombu's ``?virtual_host=N``.
- Query parameters: kombu's ``ssl_*`` (``ssl_cert_reqs`` spelt
  ``CERT_REQUIRED|CERT_OPTIONAL|CERT_NONE`` or ``required|optional|none``,
  ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``,
  ...), and redis-py's own (``db``, ``socket_timeout``, ...). As in kombu, any
  ``ssl_*`` parameter means TLS, even on ``redis://``.
- A failover list (``"redis://a;redis://b"``, or a list or tuple): the lease
  lives in the **first** Redis only and the others are never used. kombu
  connects to the first too and moves on when it fails; a lease cannot,
  because two replicas that disagree about which Redis is current would each
  hold a lease in its own Redis, and both would lead.
- For the broker's own Redis (the store chosen when ``leaderbeat_elector`` is
  unset), Celery's ``broker_use_ssl`` and ``broker_transport_options`` as
  kombu applies them: ``ssl_*`` parameters in the URL replace
  ``broker_use_ssl`` as a whole; a ``rediss://`` URL with no TLS options at
  all verifies no certificate (kombu's default, with its warning in beat's
  log); ``broker_use_ssl=True`` means TLS with redis-py's defaults
  (certificate verified against the system's CAs; kombu's Redis transport
  ignores ``True``). Of the transport options only those that shape the
  connection itself are taken (:data:`BROKER_TRANSPORT_OPTIONS`); the
  timeouts are not, since a broker's are tuned for a blocking ``BRPOP`` and
  the store's must stay below the lease TTL (see ``DEFAULT_CLIENT_OPTIONS``).
  Celery's ``broker_user``, ``broker_password``, ``broker_port`` and
  ``broker_vhost`` fill in what the URL leaves out, as kombu fills them in
  (:func:`complete_broker_url`).

``leaderbeat_redis_options`` is applied last and wins over all of these.
A form that cannot be honoured raises ``ImproperlyConfigured`` naming the
setting it came from; values of secrets are never echoed.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, NamedTuple
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from kombu.utils.url import maybe_sanitize_url

from ..settings import first_url, improperly_configured

if TYPE_CHECKING:
    from ..settings import LeaderSettings

__all__ = ["BROKER_TRANSPORT_OPTIONS", "CERT_REQS", "CompletedURL", "broker_connection_options",
           "client_options", "complete_broker_url", "is_brokers_redis", "setting_of"]

ELECTOR = "leaderbeat_elector"

#: kombu's and redis-py's spellings of ``ssl_cert_reqs`` (matched ignoring case).
CERT_REQS = {
    "cert_required": ssl.CERT_REQUIRED,
    "cert_optional": ssl.CERT_OPTIONAL,
    "cert_none": ssl.CERT_NONE,
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}

#: The ``broker_transport_options`` keys that shape the store's connection.
BROKER_TRANSPORT_OPTIONS = ("socket_keepalive", "socket_keepalive_options", "client_name")


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _cert_reqs(value: Any) -> Any:
    if isinstance(value, str):
        return CERT_REQS[value.strip().lower()]
    if value is None or isinstance(value, ssl.VerifyMode):
        return value
    return ssl.VerifyMode(value)


#: Query parameters understood in a URL: name -> parser of its text.
QUERY: dict[str, Callable[[str], Any]] = {
    "db": int,
    "virtual_host": int,  # kombu's name of the database in redis+socket:// URLs
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_read_size": int,
    "socket_keepalive": _flag,
    "retry_on_timeout": _flag,
    "max_connections": int,
    "health_check_interval": int,
    "client_name": str,
    "protocol": int,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_ca_data": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_ciphers": str,
    "ssl_min_version": lambda text: ssl.TLSVersion[text] if not text.isdigit()
    else ssl.TLSVersion(int(text)),
}

_TLS_KEYS = frozenset(name for name in QUERY if name.startswith("ssl_"))


def is_brokers_redis(url: Any, settings: LeaderSettings | None) -> bool:
    """True when ``url`` is the broker's, used because ``leaderbeat_elector`` is unset."""
    return (settings is not None and settings.elector is None
            and settings.broker_url is not None and first_url(url) == settings.broker_url)


def setting_of(url: Any, settings: LeaderSettings | None) -> str:
    """The settings ``url`` came from, named in errors and permanent store refusals:
    ``leaderbeat_elector``, or ``broker_url`` for the broker's Redis, followed by the
    ``broker_*`` settings that filled in its parts (``"broker_url, broker_password"``)."""
    if settings is None or not is_brokers_redis(url, settings):
        return ELECTOR
    return ", ".join(("broker_url", *complete_broker_url(str(first_url(url)), settings).settings))


class CompletedURL(NamedTuple):
    """The broker's URL with the parts Celery takes outside it written in."""

    url: str
    #: The ``broker_*`` settings that gave a part, in the order Celery lists them.
    settings: tuple[str, ...]


def complete_broker_url(url: str, settings: LeaderSettings) -> CompletedURL:
    """The broker's URL as kombu connects to it, with ``broker_user``,
    ``broker_password``, ``broker_port`` and ``broker_vhost`` written in where it
    has none of its own.

    kombu's rule (``Connection.__init__``: the URL's parts win, and only the
    ones it gives), for each form as kombu's Redis transports use the parts:

    - ``redis://``, ``rediss://``: all four; the virtual host is the database.
    - ``redis+socket://``: the virtual host only, when the query names no
      database. kombu takes a socket's user and password from its URL alone
      (``Channel._connparams``), so ``broker_user`` and ``broker_password``
      never reach it, and a store given them would fail where Celery works.
    - ``sentinel://`` (``url`` may be the ``;``-joined list): the master's user,
      password and database, into the first URL, the only one kombu reads them
      from. ``broker_port`` is a Sentinel's port only for a lone
      ``sentinel://host`` in a string (no ``;``, see
      :attr:`~celery_leaderbeat.settings.BrokerParts.single_url`): kombu dials
      it at ``host:broker_port``; in a list every Sentinel's port is its URL's,
      or 26379. The Sentinels' own password stays in ``sentinel_kwargs``.

    ``url`` is the broker's (:func:`is_brokers_redis`); other forms come back
    unchanged. Raises ImproperlyConfigured naming ``broker_port`` or
    ``broker_vhost`` for a value the URL needs that kombu could not connect
    with either; a password is never echoed.
    """
    parts = settings.broker_parts
    first, separator, rest = url.partition(";")
    split = urlsplit(first)
    scheme = split.scheme.lower()
    used: list[str] = []
    if scheme == "redis+socket":
        named = {name for name, _ in parse_qsl(split.query, keep_blank_values=True)}
        db = None if named & {"db", "virtual_host"} else _broker_db(parts.vhost)
        if db is None:
            return CompletedURL(url, ())
        query = "&".join(filter(None, (split.query, f"virtual_host={db}")))
        return CompletedURL(_unsplit(split, split.netloc, split.path, query) + separator + rest,
                            ("broker_vhost",))
    if scheme not in ("redis", "rediss", "sentinel"):
        return CompletedURL(url, ())
    userinfo, at, hostport = split.netloc.rpartition("@")
    user = unquote(split.username or "") or None
    password = unquote(split.password or "") or None
    if user is None and parts.user is not None:
        user = _text(parts.user)
        used.append("broker_user")
    if password is None and parts.password is not None:
        password = _text(parts.password)
        used.append("broker_password")
    if used:
        userinfo = quote(user or "", safe="") + (
            ":" + quote(password, safe="") if password else "")
        at = "@"
    if parts.port is not None and _lacks_port(split) and (
            scheme != "sentinel" or (parts.single_url and not separator)):
        hostport += f":{_broker_port(parts.port)}"
        used.append("broker_port")
    path = split.path
    if not unquote(path).strip("/"):
        db = _broker_db(parts.vhost)
        if db is not None:
            path = f"/{db}"
            used.append("broker_vhost")
    if not used:
        return CompletedURL(url, ())
    completed = _unsplit(split, f"{userinfo}{at}{hostport}", path, split.query)
    return CompletedURL(completed + separator + rest, tuple(used))


def _unsplit(split: SplitResult, netloc: str, path: str, query: str) -> str:
    # Not urlunsplit: it drops the "//" of an empty host (redis+socket:///path).
    return (f"{split.scheme}://{netloc}{path}" + (f"?{query}" if query else "")
            + (f"#{split.fragment}" if split.fragment else ""))


def _lacks_port(split: SplitResult) -> bool:
    try:
        return split.port is None
    except ValueError:  # not a number: left to the URL's own checks
        return False


def _text(value: Any) -> str:
    """A user or password as redis-py would send it (it takes bytes and numbers too)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _broker_port(value: Any) -> int:
    """``broker_port`` as a port number (an int, or its digits as kombu passes them on)."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not text.isdigit() \
            or not 0 < int(text) < 65536:
        improperly_configured("broker_port", f"got {value!r}; expected a port number (1-65535)")
    return int(text)


def _broker_db(value: Any) -> int | None:
    """``broker_vhost`` as the Redis database, read as kombu's Redis transport reads a
    virtual host (``Channel._prepare_virtual_host``): ``3`` or ``"3"`` or ``"/3"``;
    None when unset or ``"/"`` (database 0, the default either way)."""
    if value is None:
        return None
    number = -1
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value[1:] if value.startswith("/") else value
        if not text:
            return None
        with contextlib.suppress(ValueError):
            number = int(text)
    if number < 0:
        improperly_configured(
            "broker_vhost", f"got {value!r}; with a Redis broker the virtual host is the "
            "database number (0, 1, ...), and kombu cannot connect with this one either")
    return number


def client_options(url: Any, settings: LeaderSettings | None = None, *,
                   setting: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(redis_py_url, kwargs)`` for ``redis.Redis.from_url(redis_py_url, **kwargs)``.

    ``url`` is any form the module docstring lists; ``setting`` is the
    setting it came from, named in errors (default: :func:`setting_of`). ``settings`` adds
    ``leaderbeat_redis_options`` (applied last) and, when ``url`` is the
    broker's (:func:`is_brokers_redis`), ``broker_use_ssl`` and
    ``broker_transport_options``. The returned URL is ``redis://``,
    ``rediss://`` or ``unix://`` with no query (every option is in
    ``kwargs``), and keeps the user and password of ``url`` (for the broker's,
    with those of ``broker_user`` and ``broker_password``, as
    :func:`complete_broker_url` adds them). ``kwargs`` has
    no store defaults in it: a store merges them under ``kwargs``.

    Raises ImproperlyConfigured (naming ``setting``, ``broker_use_ssl``,
    ``broker_port`` or ``broker_vhost``) for a scheme that is not Redis, an unknown
    query parameter or value, a database that is not a number, or TLS asked
    for on a unix socket. Never contacts the server.
    """
    setting = setting or setting_of(url, settings)
    first = first_url(url)
    if first is None:
        improperly_configured(setting, f"got {maybe_sanitize_url(url)!r}")
    broker = is_brokers_redis(first, settings)
    if broker and settings is not None:
        first = complete_broker_url(first, settings).url
    shown = maybe_sanitize_url(first)
    parts = urlsplit(first)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix", "redis+socket"):
        improperly_configured(setting, f"{shown!r} is not a Redis URL")
    query = _query(parts.query, shown, setting)
    if "virtual_host" in query:
        query.setdefault("db", query.pop("virtual_host"))

    url_tls = {name: query.pop(name) for name in list(query) if name in _TLS_KEYS}
    kwargs: dict[str, Any] = dict(query)
    if broker and settings is not None:
        for key in BROKER_TRANSPORT_OPTIONS:
            if key in settings.broker_transport_options:
                kwargs[key] = settings.broker_transport_options[key]
    if scheme in ("unix", "redis+socket"):
        if url_tls:  # kombu, too, takes a socket as plain even with broker_use_ssl
            improperly_configured(setting, f"{shown!r}: TLS cannot be used over a unix socket")
        target = f"unix://{parts.netloc}{parts.path}"
    else:
        db = _database(parts.path, shown, setting)
        if db is not None:
            kwargs.setdefault("db", db)
        # kombu: ssl_* in the URL replace broker_use_ssl; rediss:// alone is TLS too.
        tls = url_tls or (_broker_tls(settings) if broker else None)
        if tls is None and scheme == "rediss":
            tls = {"ssl_cert_reqs": ssl.CERT_NONE} if broker else {}
        target = f"{'rediss' if tls is not None else 'redis'}://{parts.netloc}"
        kwargs.update(tls or {})
    if settings is not None:
        kwargs.update(settings.redis_options)
    if "ssl_cert_reqs" in kwargs:
        try:
            kwargs["ssl_cert_reqs"] = _cert_reqs(kwargs["ssl_cert_reqs"])
        except (KeyError, ValueError):
            improperly_configured(
                "leaderbeat_redis_options" if settings and "ssl_cert_reqs" in
                settings.redis_options else setting,
                f"ssl_cert_reqs={kwargs['ssl_cert_reqs']!r}: use CERT_REQUIRED, CERT_OPTIONAL "
                "or CERT_NONE (or ssl.CERT_*)")
    return target, kwargs


def broker_connection_options(settings: LeaderSettings) -> dict[str, Any]:
    """What the broker's settings say of a connection, for stores whose URL is not a
    single Redis (``sentinel://``, ``redis+cluster://``) reusing the broker's.

    TLS from ``broker_use_ssl`` (``ssl=True`` with its ``ssl_*`` options, the
    form redis-py's Sentinel-managed and cluster connections take) and the
    connection-shaping :data:`BROKER_TRANSPORT_OPTIONS`. Raises
    ImproperlyConfigured naming ``broker_use_ssl`` for a form it cannot honour.
    """
    options = {key: settings.broker_transport_options[key]
               for key in BROKER_TRANSPORT_OPTIONS if key in settings.broker_transport_options}
    tls = _broker_tls(settings)
    if tls is not None:
        options.update(ssl=True, **tls)
    return options


def _query(text: str, shown: str, setting: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        parser = QUERY.get(name)
        if parser is None:
            improperly_configured(
                setting, f"{shown!r}: unknown query parameter {name!r}; known: "
                f"{', '.join(sorted(QUERY))}")
        try:
            found[name] = parser(value)
        except (KeyError, ValueError):
            secret = name in ("ssl_password",)
            improperly_configured(setting, f"{shown!r}: query parameter {name} has an invalid "
                                  f"value{'' if secret else f' {value!r}'}")
    return found


def _database(path: str, shown: str, setting: str) -> int | None:
    """The database number in a URL path (``/0``), as kombu reads it; None if absent."""
    text = unquote(path).strip("/")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        improperly_configured(setting, f"{shown!r}: the path must be a database number, "
                              f"got {quote(text)!r}")


def _broker_tls(settings: LeaderSettings | None) -> dict[str, Any] | None:
    """TLS options from ``broker_use_ssl``: None without TLS, {} for redis-py's defaults."""
    value = None if settings is None else settings.broker_use_ssl
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        improperly_configured("broker_use_ssl", f"got {value!r}; expected a dict of ssl_* "
                              "options (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, "
                              "ssl_keyfile) or True")
    unknown = sorted(str(k) for k in value if not str(k).startswith("ssl_"))
    if unknown:
        improperly_configured(
            "broker_use_ssl", f"{', '.join(unknown)}: a Redis broker takes ssl_* keys "
            "(ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile, ...), as in "
            "kombu's Redis transport")
    options = dict(value)
    if "ssl_cert_reqs" in options:
        try:
            options["ssl_cert_reqs"] = _cert_reqs(options["ssl_cert_reqs"])
        except (KeyError, ValueError):
            improperly_configured(
                "broker_use_ssl", f"ssl_cert_reqs={options['ssl_cert_reqs']!r}: use "
                "ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL or ssl.CERT_NONE")
    return options
