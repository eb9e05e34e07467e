"""Lease store in Redis: one hash per lease, compare-and-act in Lua.

Keys, all in one Redis Cluster slot thanks to the ``{name}`` hash tag:

- ``leaderbeat:{name}:lease``: hash (owner, identity, term, acquired_at,
  renewed_at) with a PEXPIRE of the TTL, judged by the Redis clock.
- ``leaderbeat:{name}:meta``: hash (term, transitions, last_identity) with no
  expiry, so terms keep increasing after a lease expires.
- ``leaderbeat:{name}:history``: hash entry name -> encoded run record.
- ``leaderbeat:{name}:replicas`` (hash identity -> heartbeat) and
  ``...:replicas:expiry`` (sorted set identity -> expiry, ms on the Redis
  clock): the replica registry, written by the acquire and renew scripts.
  ``...:step_down``: the term asked to let go, seen by its renewal.
- ``leaderbeat:{name}:pause``: the pause of dispatch in effect (a
  :class:`~celery_leaderbeat.pause.DispatchPause` record), with a PEXPIRE
  for ``pause --for``; the CLAIM script refuses while it exists, the RENEW
  script says so. ``...:resumed``: hash (resume, ended) of the latest resume.

Text (entry names, identities, owner tokens, records) goes to Redis as
UTF-8 with lone surrogates kept (``errors="surrogatepass"``, as the etcd
store keys names) and is read back the same way, so any Python ``str``
round-trips exactly and none makes a call fail: a name with a lone
surrogate is a history field like any other. The store decodes replies
itself, so its clients are built with ``decode_responses=False`` whatever
``leaderbeat_redis_options`` say (:data:`WIRE_OPTIONS`).

Every mutation checks owner token and term inside one script. Limits: a
Redis that loses data (restart without persistence, failover to a replica
that missed the last writes) loses the lease and history with it. Terms
survive that: a missing counter is seeded from the Redis clock in seconds,
which is above any earlier term unless leadership changed hands more than
once a second on average since the counter was first seeded.

Replicated Redis (Sentinel, Cluster, a primary with replicas): with
``min_replicas`` above 0 a term starts only while that many replicas are
online, and records how many were (``replicas`` in the lease hash, raised
when more come online). A new term and every claim then count only once
``WAIT`` says all of those replicas hold them (so a replica promoted while
the old master still serves has them); and fewer online ends the term,
whose lease is left to expire, so that the next term starts with the
replicas then online. Why and what that guarantees: ``docs/redis-ha.md``. Sentinel
and Cluster clients are built in ``redis_sentinel.py`` and ``redis_cluster.py``;
the scripts and the store are shared.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..lease import Acquisition, LeaseRecord, Renewal, StoreMisconfigured, StoreUnavailable
from ..pause import DispatchPause, DispatchPaused, DispatchResume, PauseState
from ..registry import STEP_DOWN_TTL, ReplicaRecord, StepDownRequest, sort_replicas
from .redis_options import broker_connection_options, client_options, setting_of
from .redis_watch import RedisReleaseWatch

if TYPE_CHECKING:
    from ..settings import LeaderSettings

__all__ = ["REPLICA_WAIT", "RedisLeaseStore", "connection_options", "store_error"]

logger = logging.getLogger("celery.beat.leaderbeat")

#: Seconds a new term or a claim waits for its replicas (``WAIT``) before it is
#: judged unconfirmed: well under the client's 1 s socket timeout and the TTL.
REPLICA_WAIT = 0.5

#: Client options unless the user's ``leaderbeat_redis_options`` say otherwise.
#: Short timeouts and no hidden retries: a stalled call must never hold a
#: tick longer than the lease engine can afford.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    "retry": Retry(NoBackoff(), 0),
    "health_check_interval": 0,
}

#: Client options the store needs whatever the user's say: replies as bytes, which
#: it decodes itself (a redis-py that decoded them, strictly, would fail on the
#: first name with a lone surrogate, and leave the rest of the reply unread).
WIRE_OPTIONS: dict[str, Any] = {"decode_responses": False}

# Writes a heartbeat record into the replica registry (celery_leaderbeat.registry),
# dropping expired ones: a function every script that carries a heartbeat starts
# with. A record is stored as "<now_ms> <role> <term or -> <record JSON>", so the
# script that decides the role (an acquire may or may not win) can set it.
BEAT = """
local function beat(replicas, expiry, identity, role, term, record, ttl_ms)
  if record == '' then return end
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  if #gone > 0 then
    redis.call('HDEL', replicas, unpack(gone))
    redis.call('ZREM', expiry, unpack(gone))
  end
  redis.call('HSET', replicas, identity,
             string.format('%d', now) .. ' ' .. role .. ' ' .. term .. ' ' .. record)
  redis.call('ZADD', expiry, now + tonumber(ttl_ms), identity)
end
"""

# How many replicas of this master are online (INFO replication), for the
# replica guard of replicated stores (see the module docstring).
ONLINE = """
local function online_replicas()
  local n = 0
  for _ in string.gmatch(redis.call('INFO', 'replication'), 'slave%d+:[^\\r\\n]*state=online') do
    n = n + 1
  end
  return n
end
"""

# KEYS: lease, meta, replicas, expiry. ARGV: owner, identity, ttl_ms, take (1|0),
# heartbeat record ('' for none), its ttl_ms, min_replicas.
# Returns {outcome, term, identity of the holder ('' for nobody), replicas, the
# lease's remaining ms (PTTL: negative for nobody)}: outcome 1
# acquired (a new term, or ours already) and then ``replicas`` must hold it; 0 held by
# another (or free, with take 0); -1 ours, but a replica online at the term's start is
# gone, so the lease is left to expire; -2 free, but only ``replicas`` are online, fewer
# than min_replicas, so no term starts.
ACQUIRE = BEAT + ONLINE + """
local held = redis.call('HMGET', KEYS[1], 'owner', 'term', 'identity', 'replicas')
if held[1] == ARGV[1] then
  local replicas = tonumber(held[4] or '0')
  if replicas > 0 then
    local online = online_replicas()
    if online < replicas then
      beat(KEYS[3], KEYS[4], ARGV[2], 'standby', '-', ARGV[5], ARGV[6])
      return {-1, held[2], held[3], online, redis.call('PTTL', KEYS[1])}
    end
    if online > replicas then
      replicas = online
      redis.call('HSET', KEYS[1], 'replicas', replicas)
    end
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  beat(KEYS[3], KEYS[4], ARGV[2], 'leader', held[2], ARGV[5], ARGV[6])
  return {1, held[2], held[3], replicas, tonumber(ARGV[3])}
end
if held[1] or ARGV[4] ~= '1' then
  beat(KEYS[3], KEYS[4], ARGV[2], 'standby', '-', ARGV[5], ARGV[6])
  return {0, held[2] or '0', held[3] or '', 0, redis.call('PTTL', KEYS[1])}
end
local replicas = 0
if tonumber(ARGV[7]) > 0 then
  replicas = online_replicas()
  if replicas < tonumber(ARGV[7]) then
    beat(KEYS[3], KEYS[4], ARGV[2], 'standby', '-', ARGV[5], ARGV[6])
    return {-2, '0', '', replicas, -2}
  end
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
           'acquired_at', now, 'renewed_at', now, 'replicas', replicas)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
beat(KEYS[3], KEYS[4], ARGV[2], 'leader', tostring(term), ARGV[5], ARGV[6])
return {1, tostring(term), ARGV[2], replicas, tonumber(ARGV[3])}
"""

# The guard every fenced script starts with. KEYS[1]: lease. ARGV[1]: owner, ARGV[2]: term.
# Returns 0 if the lease is not ours, -1 if fewer replicas are online than when the term
# began (one may have been promoted while this master still serves). Leaves ``replicas``:
# how many replicas must hold what the script writes (raised when more are online).
OWNS = ONLINE + """
local held = redis.call('HMGET', KEYS[1], 'owner', 'term', 'replicas')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then return 0 end
local replicas = tonumber(held[3] or '0')
if replicas > 0 then
  local online = online_replicas()
  if online < replicas then return -1 end
  if online > replicas then
    replicas = online
    redis.call('HSET', KEYS[1], 'replicas', replicas)
  end
end
"""

# KEYS: lease, step_down, replicas, expiry, pause. ARGV: owner, term, ttl_ms,
# identity, heartbeat record ('' for none), its ttl_ms, release channel. Returns
# 1 if renewed, 3 if renewed while dispatch is paused, 0 if not ours, -1 if a
# replica was lost (OWNS), 2 if a step-down was requested for this term: then
# the lease is released (and the release published) and the request cleared,
# so it is seen once.
RENEW = BEAT + OWNS + """
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[7], ARGV[2])
  beat(KEYS[3], KEYS[4], ARGV[4], 'standby', '-', ARGV[5], ARGV[6])
  return 2
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'renewed_at', t[1] .. '.' .. string.format('%06d', t[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
beat(KEYS[3], KEYS[4], ARGV[4], 'leader', ARGV[2], ARGV[5], ARGV[6])
if redis.call('EXISTS', KEYS[5]) == 1 then return 3 end
return 1
"""

# KEYS: lease. ARGV: owner, term, release channel. Returns 1 if released (and
# published: standbys listening take over at once), 0 if not ours, -1 if a
# replica was lost: then the lease is left to expire, so that no new term starts
# on a master that may have been replaced (see OWNS).
RELEASE = OWNS + """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"""

# KEYS: lease, history, pause. ARGV: owner, term, then name/record pairs. Returns
# 1 + the number of replicas that must hold the records if every record was
# written; 0 if not ours, -1 if a replica was lost (OWNS), the pause record
# while dispatch is paused, writing nothing.
CLAIM = OWNS + """
local paused = redis.call('GET', KEYS[3])
if paused then return paused end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1 + replicas
"""

# KEYS: lease, history. ARGV: owner, term, then names. Returns 1 + replicas, or 0 / -1.
FORGET = OWNS + """
for i = 3, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1 + replicas
"""

# KEYS: lease, meta. Returns {lease hash as a flat list, its PTTL, transitions}: one
# script rather than a MULTI, so it runs unchanged on a cluster.
READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[1]),
        redis.call('HGET', KEYS[2], 'transitions') or '0'}
"""

# KEYS: replicas, expiry. ARGV: identity. Drops its heartbeat record.
WITHDRAW = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: replicas, expiry. Returns {now_ms, then identity, expiry_ms, heartbeat per live replica}.
REPLICAS = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {string.format('%d', now)}
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local beat = redis.call('HGET', KEYS[1], live[i])
  if beat then
    out[#out + 1] = live[i]
    out[#out + 1] = live[i + 1]
    out[#out + 1] = beat
  end
end
return out
"""

# KEYS: pause. ARGV: pause record, its ttl_ms (0: until resumed). Returns how many
# replicas are online, for the replica guard to WAIT for (a pause lost in a
# failover would let dispatch resume unasked).
PAUSE = ONLINE + """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return online_replicas()
"""

# KEYS: pause, resumed. Returns {pause record or false, its PTTL, resume record or
# false, the pause it ended or false}: one script rather than a MULTI, so it runs
# unchanged on a cluster.
READ_PAUSE = """
local last = redis.call('HMGET', KEYS[2], 'resume', 'ended')
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), last[1], last[2]}
"""

# KEYS: pause, resumed. ARGV: resume record. Ends the pause in effect, keeping the
# resume and the pause it ended; returns that pause, or nil (writing nothing).
RESUME = """
local paused = redis.call('GET', KEYS[1])
if not paused then return nil end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'resume', ARGV[1], 'ended', paused)
return paused
"""

# KEYS: lease, step_down. ARGV: request ttl_ms. Returns {identity, term} of the
# holder asked to step down, or nil when nobody holds the lease.
STEP_DOWN = """
local held = redis.call('HMGET', KEYS[1], 'identity', 'term')
if not held[2] then return nil end
redis.call('SET', KEYS[2], held[2], 'PX', ARGV[1])
return held
"""


def _stamp(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    return datetime.fromtimestamp(float(raw), tz=timezone.utc)


def _wire(args: Iterable[Any]) -> list[Any]:
    """Script arguments as sent: text as UTF-8 with lone surrogates kept, so that
    no ``str`` fails to encode (redis-py would encode it strictly)."""
    return [arg.encode("utf-8", "surrogatepass") if isinstance(arg, str) else arg
            for arg in args]


def _name(raw: bytes | str) -> str:
    """Text :func:`_wire` sent, exactly as it was; UnicodeDecodeError for bytes
    it cannot have sent (not UTF-8 even with surrogates)."""
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else raw


def _text(raw: Any) -> str | None:
    """Text read back for display (an identity), never failing: bytes that are not
    :func:`_wire`'s show their undecodable bytes as ``\\xNN``."""
    if not isinstance(raw, bytes):
        return None if raw is None else str(raw)
    try:
        return _name(raw)
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def connection_options(settings: LeaderSettings, *, brokers: bool = False) -> dict[str, Any]:
    """The keyword arguments of every Redis connection a Sentinel or Cluster store opens.

    :data:`DEFAULT_CLIENT_OPTIONS`, under the broker's TLS (``broker_use_ssl``)
    and connection options when ``brokers`` (the store is the broker's, reused
    because ``leaderbeat_elector`` is unset), under ``leaderbeat_redis_options``,
    under :data:`WIRE_OPTIONS`.
    A plain ``redis://`` store reads its URL with
    :func:`.redis_options.client_options` instead, which adds the URL's own.
    """
    extra = broker_connection_options(settings) if brokers else {}
    return {**DEFAULT_CLIENT_OPTIONS, **extra, **settings.redis_options, **WIRE_OPTIONS}


class RedisLeaseStore:
    """A lease and its run history under one name in one Redis.

    ``min_replicas`` above 0 turns on the replica guard (module docstring): a
    new term or a claim whose replicas do not confirm it within
    :data:`REPLICA_WAIT` raises :class:`StoreUnavailable`, so the elector does
    not lead, or the claimed runs are not published.
    """

    #: ``leaderbeat_redis_min_replicas`` when unset: a single Redis has none to wait for.
    default_min_replicas = 0

    def __init__(self, client: Any, name: str, *, description: str = "redis",
                 min_replicas: int = 0, setting: str = "leaderbeat_elector") -> None:
        self.client = client
        self.name = name
        self.description = description
        self.min_replicas = min_replicas
        #: The setting a permanent refusal points at (see :func:`store_error`).
        self.setting = setting
        prefix = f"leaderbeat:{{{name}}}"
        self.lease_key = f"{prefix}:lease"
        #: Where releases are published (see :meth:`release_watch`).
        self.release_channel = f"{prefix}:released"
        self.meta_key = f"{prefix}:meta"
        self.history_key = f"{prefix}:history"
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._claim = client.register_script(CLAIM)
        self._forget = client.register_script(FORGET)
        self._read = client.register_script(READ)
        # The replica registry (celery_leaderbeat.registry).
        self.replicas_key, self.expiry_key, self.step_down_key = (
            f"{prefix}:replicas", f"{prefix}:replicas:expiry", f"{prefix}:step_down")
        self._replicas, self._step_down, self._withdraw = (
            client.register_script(script) for script in (REPLICAS, STEP_DOWN, WITHDRAW))
        # Pausing dispatch (celery_leaderbeat.pause.DispatchPauses).
        self.pause_key, self.resumed_key = f"{prefix}:pause", f"{prefix}:resumed"
        self._pause, self._resume, self._read_pause = (
            client.register_script(script) for script in (PAUSE, RESUME, READ_PAUSE))

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> RedisLeaseStore:
        """Connect lazily to ``redis://``, ``rediss://``, ``unix://`` or ``redis+socket://``.

        Every form Celery accepts as a Redis ``broker_url`` works (kombu's
        query parameters, failover lists, ``broker_use_ssl``): see
        :func:`.redis_options.client_options`, which raises
        ImproperlyConfigured for a form it cannot honour. Client options are
        :data:`DEFAULT_CLIENT_OPTIONS` under what the URL and the settings say,
        under :data:`WIRE_OPTIONS`.
        ``leaderbeat_redis_min_replicas`` (default 0) turns the replica guard
        on for a primary with replicas.
        """
        target, options = client_options(url, settings)
        client = redis.Redis.from_url(target, **{**DEFAULT_CLIENT_OPTIONS, **options,
                                                 **WIRE_OPTIONS})
        return cls(client, settings.lease_name, description=_describe(target, options),
                   min_replicas=cls.min_replicas_of(settings), setting=setting_of(url, settings))

    @classmethod
    def min_replicas_of(cls, settings: LeaderSettings) -> int:
        found = settings.redis_min_replicas
        return cls.default_min_replicas if found is None else found

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=_wire(args))
        except redis.RedisError as exc:
            self._master_may_have_moved()
            raise store_error(exc, self.setting) from exc

    def _confirmed(self, script: Any, keys: list[str], args: list[Any],
                   replicas_of: Any) -> Any:
        """Run a script; if ``replicas_of(reply)`` replicas must hold what it wrote,
        ``WAIT`` for them (on the same connection: WAIT counts that connection's
        writes). StoreUnavailable when they do not confirm within REPLICA_WAIT."""
        if self.min_replicas <= 0:
            return self._call(script, keys, args)
        try:
            master = self._master_for(keys[0])
            with type(master)(connection_pool=master.connection_pool,
                              single_connection_client=True) as connection:
                reply = script(keys=keys, args=_wire(args), client=connection)
                needed = replicas_of(reply)
                acked = connection.wait(needed, _ms(REPLICA_WAIT)) if needed > 0 else 0
        except redis.RedisError as exc:
            self._master_may_have_moved()
            raise store_error(exc, self.setting) from exc
        if acked < needed:
            raise StoreUnavailable(
                f"not confirmed: {acked} of the {needed} replicas held the write within "
                f"{REPLICA_WAIT}s, so it may not survive a failover")
        return reply

    def _master_for(self, key: str) -> Any:
        """The client of the master that holds ``key`` (a cluster picks it per slot)."""
        return self.client

    def _master_may_have_moved(self) -> None:
        """A call failed, or the replica guard refused it: the master this client
        talks to may no longer be the one. Sentinel and Cluster stores look again."""

    def acquire(self, owner: str, identity: str, ttl: float, *,
                beat: ReplicaRecord | None = None, take: bool = True) -> Acquisition:
        outcome, term, holder, replicas, pttl = self._confirmed(
            self._acquire, [self.lease_key, self.meta_key, self.replicas_key, self.expiry_key],
            [owner, identity, _ms(ttl), int(take), *_beat_args(beat), self.min_replicas],
            lambda reply: int(reply[3]) if int(reply[0]) == 1 else 0,
        )
        if int(outcome) < 0:
            self._master_may_have_moved()
        if int(outcome) == -1:
            raise StoreUnavailable(
                f"term {int(term)} began with more replicas than the {int(replicas)} online "
                "now; leaving its lease to expire before a new term")
        if int(outcome) == -2:
            raise StoreUnavailable(
                f"{int(replicas)} replicas online, {self.min_replicas} needed to start a term "
                "(leaderbeat_redis_min_replicas)")
        record = LeaseRecord(holder=_text(holder) or None, term=int(term),
                             expires_in=int(pttl) / 1000.0 if int(pttl) >= 0 else None)
        return Acquisition(acquired=int(outcome) == 1, lease=record)

    def renew(self, owner: str, term: int, ttl: float, *,
              beat: ReplicaRecord | None = None) -> Renewal:
        keys = [self.lease_key, self.step_down_key, self.replicas_key, self.expiry_key,
                self.pause_key]
        identity = "" if beat is None else beat.identity
        outcome = int(self._call(self._renew, keys,
                                 [owner, term, _ms(ttl), identity, *_beat_args(beat),
                                  self.release_channel]))
        if outcome == -1:
            self._master_may_have_moved()
            _replica_lost(term, "renewal")
        return RENEWALS[outcome]

    def release(self, owner: str, term: int) -> bool:
        return int(self._call(self._release, [self.lease_key],
                              [owner, term, self.release_channel])) == 1

    def release_watch(self) -> RedisReleaseWatch:
        """A subscription to this lease's releases, on a connection of its own,
        that follows the master after a failover (see :mod:`.redis_watch`)."""
        return RedisReleaseWatch(self._subscriber, self.release_channel,
                                 moved=self._master_may_have_moved)

    def _subscriber(self) -> Any:
        """The client a release watch subscribes through (a cluster: the slot's node)."""
        return self.client

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        args: list[Any] = [owner, term]
        for name, record in runs.items():
            args += [name, record]
        outcome = self._confirmed(
            self._claim, [self.lease_key, self.history_key, self.pause_key], args,
            lambda reply: 0 if isinstance(reply, (bytes, str)) else max(0, int(reply) - 1))
        if isinstance(outcome, (bytes, str)):
            raise DispatchPaused(DispatchPause.decode(outcome))
        if int(outcome) == -1:
            self._master_may_have_moved()
            _replica_lost(term, "claim")
        return int(outcome) > 0

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        args: list[Any] = [owner, term, *names]
        return int(self._call(self._forget, [self.lease_key, self.history_key], args)) > 0

    def load_history(self) -> dict[str, str]:
        try:
            raw = self.client.hgetall(self.history_key)
        except redis.RedisError as exc:
            self._master_may_have_moved()
            raise store_error(exc, self.setting) from exc
        history = {}
        for field, record in raw.items():
            try:
                name = _name(field)
            except UnicodeDecodeError:  # not a name: another writer's field
                logger.warning("leaderbeat: ignoring run record %r of %s: its name is not "
                               "text this store wrote", field, self.history_key)
                continue
            history[name] = _text(record) or ""
        return history

    def read(self) -> LeaseRecord | None:
        flat, pttl, transitions = self._call(self._read, [self.lease_key, self.meta_key], [])
        if not flat:
            return None
        lease = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        return LeaseRecord(
            holder=_text(lease.get("identity")),
            term=int(lease.get("term", 0)),
            acquired_at=_stamp(lease.get("acquired_at")),
            renewed_at=_stamp(lease.get("renewed_at")),
            expires_in=pttl / 1000.0 if pttl and pttl > 0 else None,
            transitions=int(transitions or 0),
        )

    # -- the replica registry (celery_leaderbeat.registry.ReplicaRegistry) ----------

    def replicas(self) -> list[ReplicaRecord]:
        now, *rows = self._call(self._replicas, [self.replicas_key, self.expiry_key], [])
        found = []
        for i in range(0, len(rows), 3):
            expiry, beat = float(rows[i + 1]), _text(rows[i + 2]) or ""
            stamp, role, term, data = beat.split(" ", 3)
            record = replace(ReplicaRecord.decode(json.loads(data)), role=role,
                             term=None if term == "-" else int(term))
            found.append(record.seen((int(now) - int(stamp)) / 1000.0,
                                     (expiry - int(now)) / 1000.0))
        return sort_replicas(found)

    def withdraw(self, identity: str) -> None:
        self._call(self._withdraw, [self.replicas_key, self.expiry_key], [identity])

    def request_step_down(self) -> StepDownRequest | None:
        held = self._call(self._step_down, [self.lease_key, self.step_down_key],
                          [_ms(STEP_DOWN_TTL)])
        return StepDownRequest(_text(held[0]), int(held[1])) if held else None

    # -- pausing dispatch (celery_leaderbeat.pause.DispatchPauses) -------------

    def pause(self, pause: DispatchPause) -> None:
        """Hold dispatch (``pause --for``: for ``pause.duration`` s on the Redis clock).

        With the replica guard on, the pause counts only once the replicas
        hold it: StoreUnavailable otherwise, and the caller asks again.
        """
        expiry = 0 if pause.duration is None else _ms(pause.duration)
        replicas_of = (lambda online: int(online)) if self.min_replicas > 0 else (lambda _: 0)
        self._confirmed(self._pause, [self.pause_key], [pause.encode(), expiry], replicas_of)

    def resume(self, resume: DispatchResume) -> DispatchPause | None:
        ended = self._call(self._resume, [self.pause_key, self.resumed_key], [resume.encode()])
        return None if ended is None else DispatchPause.decode(ended)

    def read_pause(self) -> PauseState:
        paused, pttl, resume, ended = self._call(
            self._read_pause, [self.pause_key, self.resumed_key], [])
        expires_in = pttl / 1000.0 if pttl and pttl > 0 else None
        return PauseState(
            DispatchPause.decode(paused, expires_in) if paused else None,
            DispatchResume.decode(resume, ended or None) if resume else None)

    def close(self) -> None:
        # Leave a connection in use alone: beat's SIGTERM handler closes us while
        # the call it interrupted may still be reading on it, and tearing that
        # down would turn the handler's SystemExit into a ValueError.
        self.client.connection_pool.disconnect(inuse_connections=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, name={self.name!r})"


#: Answers from Redis that no retry will change, by the words that mark them.
PERMANENT_ANSWERS = (
    "DB index is out of range",  # SELECT of a database the server does not have
    "invalid DB index",
    "unknown command",  # a command renamed or disabled in the server's config
    "CERTIFICATE_VERIFY_FAILED",  # the server's certificate fails verification
    "WRONG_VERSION_NUMBER",  # TLS spoken to a plain port
    "Invalid SSL Certificate Requirements Flag",
)


def store_error(error: redis.RedisError, setting: str) -> StoreUnavailable:
    """A redis-py error as the store reports it: permanent or (maybe) transient.

    Permanent (:class:`StoreMisconfigured`, naming ``setting``): refused
    credentials (``WRONGPASS``, ``NOAUTH``), a missing ACL permission
    (``NOPERM``), an unknown database, an unknown command, a TLS handshake
    that fails verification or meets a plain port. Everything else (refused
    or reset connections, timeouts, a loading or read-only server) may heal
    and stays a :class:`StoreUnavailable`. redis-py's messages name the
    server's address, never the password.
    """
    reason = f"{type(error).__name__}: {error}"
    chain = [error, error.__cause__, error.__context__]
    if isinstance(error, (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                          redis.exceptions.NoPermissionError)) \
            or any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) \
            or any(words in str(error) for words in PERMANENT_ANSWERS):
        return StoreMisconfigured(reason, setting)
    return StoreUnavailable(reason)


def _describe(target: str, options: Mapping[str, Any]) -> str:
    """The store for banners and logs: URL without password, database, TLS verification."""
    shown: str = maybe_sanitize_url(target).rstrip("/")
    if target.startswith("unix://"):
        return shown + (f"?db={options['db']}" if options.get("db") else "")
    shown += f"/{options.get('db', 0)}"
    if target.startswith("rediss://"):
        reqs = options.get("ssl_cert_reqs", ssl.CERT_REQUIRED)
        shown += f" (TLS, {'no certificate check' if reqs == ssl.CERT_NONE else 'verified'})"
    return shown


def _replica_lost(term: int, call: str) -> None:
    logger.warning(
        "leaderbeat: the Redis master has fewer replicas online than when term %s began "
        "(one may have been promoted); the %s was refused and the lease is left to expire",
        term, call)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


#: RENEW's answers.
RENEWALS = {1: Renewal.RENEWED, 0: Renewal.LOST, -1: Renewal.LOST, 2: Renewal.STEPPED_DOWN,
            3: Renewal.PAUSED}


def _beat_args(beat: ReplicaRecord | None) -> list[Any]:
    """The heartbeat record and its TTL as script arguments ('' for none)."""
    if beat is None:
        return ["", 0]
    return [json.dumps(beat.encode()), _ms(beat.expires_in or 0)]
