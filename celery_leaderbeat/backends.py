"""From the ``leaderbeat_elector`` setting to an elector: the alias table.

Like kombu's transport table, a URL scheme picks the store through a short
alias table; anything else is imported by dotted path, so users can bring
their own elector. Typos get "did you mean". Installed packages add schemes through the
``celery_leaderbeat.stores`` entry-point group.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tempfile
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from celery.utils.imports import load_extension_class_names, symbol_by_name

from .elector import CallableElector, Elector, StaticElector
from .lease import LeaseElector, LeaseStore
from .settings import LeaderSettings, improperly_configured

__all__ = ["ENTRY_POINT_GROUP", "STORES", "ElectorChoice", "StoreFactory", "build_store",
           "choose_elector", "default_file_path", "known_stores"]

logger = logging.getLogger("celery.beat.leaderbeat")

KEY = "leaderbeat_elector"



class ElectorChoice(NamedTuple):
    """The elector to use, and whether the user chose it or we did."""

    elector: Elector
    implicit: bool


class StoreFactory(Protocol):
    """What a URL scheme names: a store class built from its URL and the settings.

    ``from_url`` connects lazily (nothing is reached before the first lease
    call) and raises ``ImproperlyConfigured`` naming ``leaderbeat_elector``
    for a URL it cannot honour.
    """

    def from_url(self, url: str, settings: LeaderSettings) -> LeaseStore: ...


#: Entry-point group through which a package adds URL schemes, as kombu's
#: transports and Celery's ``celery.beat_schedulers`` do:
#: ``[project.entry-points."celery_leaderbeat.stores"] myscheme = "pkg.mod:MyStore"``,
#: where ``MyStore.from_url(url, settings)`` builds a LeaseStore.
ENTRY_POINT_GROUP = "celery_leaderbeat.stores"

_REDIS = ("celery_leaderbeat.stores.redis:RedisLeaseStore", "redis")
_SQL = ("celery_leaderbeat.stores.sql:SqlLeaseStore", "sql")
_ETCD = ("celery_leaderbeat.stores.etcd:EtcdLeaseStore", "etcd")
_REDIS_CLUSTER = ("celery_leaderbeat.stores.redis_cluster:RedisClusterLeaseStore", "redis")

#: URL scheme -> (the store class, the pip extra its dependencies come with).
#: Every store here gives fenced dispatch and shared run history; ``static``
#: is the one plain elector. Classes are imported on first use, so a scheme's
#: optional dependencies are needed only when it is chosen.
STORES: dict[str, tuple[str, str | None]] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis+socket": _REDIS,
    "sentinel": ("celery_leaderbeat.stores.redis_sentinel:RedisSentinelLeaseStore", "redis"),
    "redis+cluster": _REDIS_CLUSTER,
    "rediss+cluster": _REDIS_CLUSTER,
    "file": ("celery_leaderbeat.stores.file:FileLeaseStore", None),
    "postgresql": _SQL,
    "postgres": _SQL,
    "mysql": _SQL,
    "mariadb": _SQL,
    "sqlite": _SQL,
    "etcd": _ETCD,
    "etcds": _ETCD,
    "django": ("celery_leaderbeat.django.store:DjangoLeaseStore", "django"),
}


def known_stores() -> dict[str, tuple[str, str | None]]:
    """The alias table with the schemes that installed packages add (entry points).

    A built-in scheme cannot be replaced by an entry point.
    """
    added = {name: (path, None) for name, path in load_extension_class_names(ENTRY_POINT_GROUP)
             if name not in STORES}
    return {**STORES, **added}


def build_store(scheme: str, url: str, settings: LeaderSettings) -> LeaseStore:
    """The store ``url`` names; ImproperlyConfigured for an unknown scheme or missing extra."""
    table = known_stores()
    found = table.get(scheme) or table.get(scheme.split("+")[0])
    if found is None:
        known = sorted([*table, "static"])
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f" Did you mean {close[0]}://?" if close else ""
        improperly_configured(
            KEY, f"no elector for the scheme {scheme!r}.{hint} Known: {', '.join(known)}")
    path, extra = found
    try:
        factory: StoreFactory = symbol_by_name(path)
    except ImportError as exc:
        install = f"; install celery-leaderbeat[{extra}]" if extra else ""
        improperly_configured(
            KEY, f"{scheme}:// needs an optional dependency ({exc}){install}")
    except AttributeError as exc:
        improperly_configured(KEY, f"{scheme}:// names {path!r}, which cannot be loaded: {exc}")
    store: LeaseStore = factory.from_url(url, settings)
    return store


STATIC_ROLES = {"leader": True, "standby": False}

#: Broker URL schemes whose server also keeps the lease when leaderbeat_elector is
#: unset (kombu's Redis transport: a single Redis, or the master its Sentinels name).
BROKER_STORES = ("redis", "rediss", "redis+socket", "sentinel")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def default_file_path(lease_name: str) -> str:
    return os.path.join(tempfile.gettempdir(), "celery-leaderbeat", f"{lease_name}.lock")


def choose_elector(settings: LeaderSettings, default: str | None = None) -> ElectorChoice:
    """Build the elector the settings ask for; raise ImproperlyConfigured if they can't.

    ``default`` (a URL), when given, is used if the setting is unset.
    """
    value = settings.elector
    if value is None and default is not None:
        return ElectorChoice(_explicit(default, settings), implicit=True)
    if value is None:
        broker = settings.broker_url or ""
        scheme = _scheme_of(broker)
        if scheme in BROKER_STORES:
            return ElectorChoice(_lease(build_store(scheme, broker, settings), settings),
                                 implicit=True)
        path = default_file_path(settings.lease_name)
        store = build_store("file", "file://" + path, settings)
        return ElectorChoice(_lease(store, settings), implicit=True)
    return ElectorChoice(_explicit(value, settings), implicit=False)


def _explicit(value: Any, settings: LeaderSettings) -> Elector:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        value = ";".join(value)  # Celery's failover list: the store uses the first URL
    if isinstance(value, str):
        scheme = _scheme_of(value)
        if scheme is not None:
            return _from_url(scheme, value, settings)
        value = _import(value)
    if isinstance(value, type):
        try:
            value = value()
        except Exception as exc:
            improperly_configured(KEY, f"could not create {value.__name__}(): {exc!r}")
    if isinstance(value, Elector):
        return value
    if callable(value):
        return CallableElector(value)
    improperly_configured(KEY, f"{value!r} has no is_leader() method and is not callable")


def _from_url(scheme: str, url: str, settings: LeaderSettings) -> Elector:
    if scheme == "static":
        role = urlsplit(url).netloc
        if role not in STATIC_ROLES:
            improperly_configured(KEY, f"{url!r}: use static://leader or static://standby")
        return StaticElector(leader=STATIC_ROLES[role])
    return _lease(build_store(scheme, url, settings), settings)


def _lease(store: LeaseStore, settings: LeaderSettings) -> LeaseElector:
    return LeaseElector(store, identity=settings.identity, timing=settings.timing,
                        push=settings.push)


def _import(path: str) -> Any:
    if not re.match(r"^[A-Za-z_][\w.]*([:.][A-Za-z_]\w*)+$", path):
        improperly_configured(KEY, f"{path!r} is neither a URL nor a dotted path")
    try:
        return symbol_by_name(path)
    except (ImportError, AttributeError, ValueError) as exc:
        improperly_configured(KEY, f"cannot import {path!r}: {exc}")


def _scheme_of(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None
