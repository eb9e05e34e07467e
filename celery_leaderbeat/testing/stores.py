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


def redis_store(url: str, lease_name: str, **redis_options: Any) -> RedisLeaseStore:
    """``RedisLeaseStore.from_url`` with the default settings and these client options."""
    from ..stores.redis import RedisLeaseStore

    return RedisLeaseStore.from_url(url, store_settings(lease_name, redis_options=redis_options))
