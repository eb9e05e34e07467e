"""Lease store in Redis: one hash per lease, compare-and-act in Lua.

Keys, all in one Redis Cluster slot thanks to the ``{name}`` hash tag:

- ``leaderbeat:{name}:lease``: hash (owner, identity, term, acquired_at,
  renewed_at) with a PEXPIRE of the TTL, judged by the Redis clock.
- ``leaderbeat:{name}:meta``: hash (term, transitions, last_identity) with no
  expiry, so terms keep increasing after a lease expires.
- ``leaderbeat:{name}:history``: hash entry name -> encoded run record.

Every mutation checks owner token and term inside one script. Limits: a
Redis that loses data (restart without persistence, failover to a replica
that missed the last writes) loses the lease and history with it. Terms
survive that: a missing counter is seeded from the Redis clock in seconds,
which is above any earlier term unless leadership changed hands more than
once a second on average since the counter was first seeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..lease import Acquisition, LeaseRecord, StoreUnavailable

__all__ = ["RedisLeaseStore"]

#: Client options unless the user's ``leaderbeat_redis_options`` say otherwise.
#: Short timeouts and no hidden retries: a stalled call must never hold a
#: tick longer than the lease engine can afford.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    "retry": Retry(NoBackoff(), 0),
    "health_check_interval": 0,
}

# KEYS: lease, meta. ARGV: owner, identity, ttl_ms.
# Returns {acquired (1|0), term, identity of the holder}.
ACQUIRE = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'term', 'identity')
if held[1] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, held[2], held[3]}
end
if held[1] then
  return {0, held[2], held[3]}
end
local term = redis.call('HINCRBY', KEYS[2], 'term', 1)
if term == 1 then
  -- A new or wiped Redis: seed terms from the Redis clock (seconds), so they
  -- keep increasing across a restart that lost the counter.
  term = tonumber(redis.call('TIME')[1])
  redis.call('HSET', KEYS[2], 'term', term)
end
if redis.call('HGET', KEYS[2], 'last_identity') ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[2], 'transitions', 1)
  redis.call('HSET', KEYS[2], 'last_identity', ARGV[2])
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'identity', ARGV[2], 'term', term,
           'acquired_at', now, 'renewed_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, tostring(term), ARGV[2]}
"""

# The guard every fenced script starts with. KEYS[1]: lease. ARGV[1]: owner, ARGV[2]: term.
OWNS = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'term')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then return 0 end
"""

# KEYS: lease. ARGV: owner, term, ttl_ms. Returns 1 if renewed, 0 if not ours.
RENEW = OWNS + """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'renewed_at', t[1] .. '.' .. string.format('%06d', t[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: lease. ARGV: owner, term. Returns 1 if released, 0 if not ours.
RELEASE = OWNS + """
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: lease, history. ARGV: owner, term, then name/record pairs.
# Returns 1 if every record was written, 0 (writing nothing) if not ours.
CLAIM = OWNS + """
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

# KEYS: lease, history. ARGV: owner, term, then names. Returns 1, or 0 if not ours.
FORGET = OWNS + """
for i = 3, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
"""


def _stamp(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    return datetime.fromtimestamp(float(raw), tz=timezone.utc)


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisLeaseStore:
    """A lease and its run history under one name in one Redis."""

    def __init__(self, client: redis.Redis, name: str, *, description: str = "redis") -> None:
        self.client = client
        self.name = name
        self.description = description
        prefix = f"leaderbeat:{{{name}}}"
        self.lease_key = f"{prefix}:lease"
        self.meta_key = f"{prefix}:meta"
        self.history_key = f"{prefix}:history"
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._claim = client.register_script(CLAIM)
        self._forget = client.register_script(FORGET)

    @classmethod
    def from_url(cls, url: str, name: str, options: Mapping[str, Any] | None = None
                 ) -> RedisLeaseStore:
        """Connect lazily to ``redis://``, ``rediss://`` or ``unix://`` URLs."""
        if url.startswith("redis+socket://"):  # kombu's spelling of a unix socket
            url = "unix://" + url[len("redis+socket://"):]
        client_options = {**DEFAULT_CLIENT_OPTIONS, **(options or {})}
        client = redis.Redis.from_url(url, **client_options)
        return cls(client, name, description=maybe_sanitize_url(url))

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def acquire(self, owner: str, identity: str, ttl: float) -> Acquisition:
        acquired, term, holder = self._call(
            self._acquire, [self.lease_key, self.meta_key], [owner, identity, _ms(ttl)]
        )
        record = LeaseRecord(holder=_text(holder), term=int(term))
        return Acquisition(acquired=bool(acquired), lease=record)

    def renew(self, owner: str, term: int, ttl: float) -> bool:
        return bool(self._call(self._renew, [self.lease_key], [owner, term, _ms(ttl)]))

    def release(self, owner: str, term: int) -> bool:
        return bool(self._call(self._release, [self.lease_key], [owner, term]))

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        args: list[Any] = [owner, term]
        for name, record in runs.items():
            args += [name, record]
        return bool(self._call(self._claim, [self.lease_key, self.history_key], args))

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        args: list[Any] = [owner, term, *names]
        return bool(self._call(self._forget, [self.lease_key, self.history_key], args))

    def load_history(self) -> dict[str, str]:
        try:
            raw = self.client.hgetall(self.history_key)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}

    def read(self) -> LeaseRecord | None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.lease_key)
                pipe.pttl(self.lease_key)
                pipe.hget(self.meta_key, "transitions")
                lease, pttl, transitions = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if not lease:
            return None
        lease = {_text(k): v for k, v in lease.items()}  # bytes unless decode_responses
        return LeaseRecord(
            holder=_text(lease.get("identity")),
            term=int(lease.get("term", 0)),
            acquired_at=_stamp(lease.get("acquired_at")),
            renewed_at=_stamp(lease.get("renewed_at")),
            expires_in=pttl / 1000.0 if pttl and pttl > 0 else None,
            transitions=int(transitions or 0),
        )

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisLeaseStore({self.description}, name={self.name!r})"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
