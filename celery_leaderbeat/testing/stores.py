"""Stores built from their URL as beat builds them, for tests and benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..lease import LeaseTiming
from ..settings import LeaderSettings

if TYPE_CHECKING:
    from ..stores.redis import RedisLeaseStore

__all__ = ["redis_store", "store_settings"]


def store_settings(lease_name: str, **overrides: Any) -> LeaderSettings:
    """Validated-looking settings for ``Store.from_url(url, settings)`` in tests.

    Any :class:`LeaderSettings` field may be overridden (``redis_options``,
    ``timing``, ``sql_table``, ...).
    """
    fields: dict[str, Any] = {"elector": None, "lease_name": lease_name,
                              "identity": "test", "timing": LeaseTiming()}
    return LeaderSettings(**{**fields, **overrides})


def redis_store(url: str, lease_name: str, *, transport_options: dict[str, Any] | None = None,
                min_replicas: int | None = None, **redis_options: Any) -> RedisLeaseStore:
    """The Redis store ``url`` names (redis://, sentinel://, redis+cluster://, ...), built
    as beat builds it, with the default settings and these client options.

    ``transport_options`` are the sentinel:// options (``master_name``, ...).
    """
    from ..backends import build_store
    from ..stores.redis import RedisLeaseStore

    settings = store_settings(lease_name, redis_options=redis_options,
                              redis_transport_options=dict(transport_options or {}),
                              redis_min_replicas=min_replicas)
    store = build_store(url.split("://", 1)[0].lower(), url, settings)
    assert isinstance(store, RedisLeaseStore), store
    return store
