"""From the ``leaderbeat_elector`` setting to an elector: the alias table.

Like kombu's transport table, a URL scheme picks the store through a short
alias table; anything else is imported by dotted path, so users can bring
their own elector. Typos get "did you mean".
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import tempfile
from typing import Any, Callable, NamedTuple
from urllib.parse import unquote, urlsplit

from celery.utils.imports import symbol_by_name

from .elector import CallableElector, Elector, StaticElector
from .lease import LeaseElector, LeaseStore
from .settings import LeaderSettings, improperly_configured

__all__ = ["ElectorChoice", "choose_elector", "default_file_path"]

logger = logging.getLogger("celery.beat.leaderbeat")

KEY = "leaderbeat_elector"

StoreFactory = Callable[[str, LeaderSettings], LeaseStore]


class ElectorChoice(NamedTuple):
    """The elector to use, and whether the user chose it or we did."""

    elector: Elector
    implicit: bool


def _redis_store(url: str, settings: LeaderSettings) -> LeaseStore:
    try:
        from .stores.redis import RedisLeaseStore
    except ImportError as exc:
        improperly_configured(
            KEY, f"{url.split(':')[0]}:// needs redis-py ({exc}); "
            "install celery-leaderbeat[redis]")
    return RedisLeaseStore.from_url(url, settings.lease_name, settings.redis_options)


def _file_store(url: str, settings: LeaderSettings) -> LeaseStore:
    from .stores.file import FileLeaseStore

    parts = urlsplit(url)
    path = unquote(parts.path)
    # file://./beat.lock would otherwise become /beat.lock: a host part is a typo.
    if parts.netloc not in ("", "localhost") or not path or not os.path.isabs(path):
        improperly_configured(KEY, f"{url!r} needs an absolute path, as in file:///var/run/beat.lock")
    return FileLeaseStore(path)


def _imported_store(module: str, extra: str) -> StoreFactory:
    """A factory for a store whose module needs an optional extra installed."""
    qualified, _, class_name = module.rpartition(":")

    def build(url: str, settings: LeaderSettings) -> LeaseStore:
        try:
            store_class = getattr(importlib.import_module(qualified), class_name)
        except ImportError as exc:
            improperly_configured(KEY, f"{url.split(':')[0]}:// needs an optional dependency "
                                       f"({exc}); install celery-leaderbeat[{extra}]")
        store: LeaseStore = store_class.from_url(url, settings)
        return store

    return build


_sql_store = _imported_store("celery_leaderbeat.stores.sql:SqlLeaseStore", "sql")
_django_store = _imported_store("celery_leaderbeat.django.store:DjangoLeaseStore", "django")


#: URL scheme -> the store it builds. Every store here gives fenced dispatch
#: and shared run history; ``static`` is the one plain elector.
STORES: dict[str, StoreFactory] = {
    "redis": _redis_store,
    "rediss": _redis_store,
    "unix": _redis_store,
    "redis+socket": _redis_store,
    "file": _file_store,
    "postgresql": _sql_store,
    "postgres": _sql_store,
    "mysql": _sql_store,
    "mariadb": _sql_store,
    "sqlite": _sql_store,
    "django": _django_store,
}

STATIC_ROLES = {"leader": True, "standby": False}

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
        if scheme in ("redis", "rediss", "redis+socket"):
            return ElectorChoice(_lease(_redis_store(broker, settings), settings), implicit=True)
        path = default_file_path(settings.lease_name)
        store = _file_store("file://" + path, settings)
        return ElectorChoice(_lease(store, settings), implicit=True)
    return ElectorChoice(_explicit(value, settings), implicit=False)


def _explicit(value: Any, settings: LeaderSettings) -> Elector:
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
    base_scheme = scheme.split("+")[0] if scheme not in STORES else scheme
    factory = STORES.get(base_scheme)
    if factory is None:
        known = sorted([*STORES, "static"])
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f" Did you mean {close[0]}://?" if close else ""
        improperly_configured(
            KEY, f"no elector for the scheme {scheme!r}.{hint} Known: {', '.join(known)}")
    return _lease(factory(url, settings), settings)


def _lease(store: LeaseStore, settings: LeaderSettings) -> LeaseElector:
    return LeaseElector(store, identity=settings.identity, timing=settings.timing)


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
