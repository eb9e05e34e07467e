"""Lease store in etcd v3: leases, revisions and transactions of a Raft-replicated store.

URLs: ``etcd://host:2379[,host2:2379,...]`` (plain HTTP), ``etcds://...``
(TLS, with ``ca_cert``, ``client_cert`` and ``client_key`` in
``leaderbeat_etcd_options``), and ``user:password@`` before the hosts for
etcd's own login. With several members, a call that one member cannot
answer goes to the next (:mod:`.etcd_gateway`, which also says why we speak
etcd's JSON gateway through urllib3 rather than use a client library).

Keys, all under ``leaderbeat/<lease name>/`` (so etcd's role-based access
can grant exactly that prefix):

- ``lease``: the lease. Its value names the owner token, the holder's
  identity and when it was acquired (the holder's clock); it is attached to
  an etcd lease granted for the TTL, so the key vanishes when the etcd
  lease expires, judged on the clock of etcd's Raft leader.
- ``meta``: how many times the lease changed hands, and to whom last.
- ``history/<entry name>``: one run record per schedule entry. The name is
  the key's remaining bytes, UTF-8 (lone surrogates kept), so any name
  round-trips exactly; etcd keys are bytes of any length.
- ``replicas/<identity>``: one heartbeat record per replica, attached to the
  replica's heartbeat lease (see "Heartbeats" below).
- ``step_down/<term>``: a pending request that the leader of ``term`` let
  go, attached to a lease of ``STEP_DOWN_TTL``.
- ``pause``: the pause of dispatch in effect (a
  :class:`~celery_leaderbeat.pause.DispatchPause` record); ``pause --for``
  attaches it to an etcd lease of its own, so etcd deletes it when the
  duration has passed. ``resumed``: the latest resume and the pause it ended.

The term is the lease key's *create revision*. etcd gives every write a
revision from one counter for the whole cluster, committed through Raft and
kept on disk, so the revision at which a new lease key is created is above
every revision before it: terms increase with every acquisition, across
member restarts and failures, with no counter of our own to lose. (A new
cluster, or data restored from an older snapshot, starts again from a
lower revision: treat that like a wiped Redis.)

Atomicity: every change is one transaction (``/v3/kv/txn``) whose compares
are the whole condition.

- acquire creates the lease key only if it does not exist (create revision
  0) and ``meta`` is as read, so racing replicas cannot both create it;
  the heartbeat record rides in the same transaction.
- renew, release, claim and forget compare the lease key's create revision
  with the term and its value with the one written at acquisition (which
  names the owner): so they act only while this very acquisition holds the
  lease. A claim writes its run records in that same transaction.
- renew also compares that no step-down request exists for its term; when
  one does, a second transaction under the same compares deletes the lease
  and the request together. It reads the pause key in the transaction that
  renews, and answers ``Renewal.PAUSED`` while it exists.
- claim also compares that the pause key does not exist (create revision
  0), so a pause written before the claim's transaction refuses it; the
  failure branch reads the lease and the pause key, which tells a pause
  (:class:`~celery_leaderbeat.pause.DispatchPaused`) from a lost lease in
  the same round trip.
- resume deletes the pause key and writes ``resumed`` (with the pause it
  ended) in one transaction that compares the pause key's mod revision with
  the one read just before, so the pause it keeps as ended is the one it ended.

A pause with a duration lasts whole seconds, rounded up (``--for 90s`` holds
90 s, ``--for 1.5s`` holds 2 s), and at least etcd's minimum lease TTL (see
the clock argument), counted from when the grant reaches etcd's leader: the
record keeps the seconds etcd granted, so ``status`` shows the hold as it is.

Clock argument: an etcd lease's TTL counts whole seconds, so the store
grants ``ceil(ttl)`` seconds, measured from when the grant (or keepalive)
reaches etcd's leader, which is after the elector sent its request: the
server's expiry never comes before the elector's local deadline. A new
Raft leader extends every lease (never shortens it). etcd refuses TTLs
below its minimum (1.5 election timeouts, rounded up: 2 s with the default
1 s election timeout) by granting the minimum instead, so a lease TTL below
:data:`MIN_LEASE_TTL` is refused at start-up, and a grant longer than asked
is logged once (takeover then takes longer than configured).

Push (celery_leaderbeat.watch): :meth:`EtcdLeaseStore.release_watch` is an
etcd watch on the lease key (:mod:`.etcd_watch`). etcd deletes the key at a
release, at a step-down and when the etcd lease expires, so the watch tells
a standby of all three, and the operations here need no change to push.
``acquire`` reports no ``expires_in``, on purpose: after a crash the key
stays until etcd's Raft leader expires the etcd lease (it checks every
0.5 s), so an attempt at the remaining TTL it reports (whole seconds, one
more request per attempt) could only come early; the DELETE event marks
the first moment an acquire can succeed. A standby then asks about once
per TTL (the fallback for a watch that went quiet without closing).

Heartbeats: a record must vanish by itself when its replica dies, so it is
attached to an etcd lease; granting one per record would double what a
standby sends (a transaction and a grant per TTL). Instead each replica
grants one heartbeat lease of ``HEARTBEAT_LEASE_SPAN`` record lifetimes and
attaches its records to it while it has at least one lifetime left (judged
on ``time.monotonic()`` from before the grant was sent, so never later than
etcd's own expiry): one grant per two lifetimes (30 s with the defaults).
Each record carries the seconds its etcd lease had left when it was written
(``etcd_lease_left``), so a reader takes its age as that minus what etcd
reports left now, and counts the record gone once the age reaches the
lifetime the record names: readers see the same freshness as with a lease
per record (to within a second, erring older: etcd reports whole seconds
left), while the key of a dead
replica stays in etcd for up to ``HEARTBEAT_LEASE_SPAN`` lifetimes, unlisted.
A heartbeat lease etcd no longer has (the process was suspended past its
end, or the cluster was restored from a snapshot) fails the transaction
that names it as a whole; the call is made once more with a new grant.

Retries: :class:`~.etcd_gateway.EtcdGateway` repeats a call on another
member when one did not answer, so a call may be applied twice. Each is
safe twice: a repeated acquire finds the lease already ours, a repeated
claim writes the same records, a repeated grant leaves an unused etcd
lease that expires on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

from ..lease import Acquisition, LeaseRecord, Renewal, StoreUnavailable
from ..pause import DispatchPause, DispatchPaused, DispatchResume, PauseState
from ..registry import LEADER, STEP_DOWN_TTL, ReplicaRecord, StepDownRequest, sort_replicas
from ..settings import improperly_configured
from .etcd_gateway import NOT_FOUND, EtcdError, EtcdGateway, b64, unb64
from .etcd_watch import EtcdReleaseWatch

if TYPE_CHECKING:
    from ..settings import LeaderSettings

__all__ = ["DEFAULT_PORT", "MIN_LEASE_TTL", "EtcdLeaseStore", "parse_etcd_url"]

logger = logging.getLogger("celery.beat.leaderbeat")

Answer = TypeVar("Answer")

DEFAULT_PORT = 2379

#: The shortest TTL etcd grants with its default election timeout (1 s): 1.5
#: election timeouts, rounded up to whole seconds.
MIN_LEASE_TTL = 2.0

#: Seconds one request to etcd may take across members, unless the options say otherwise.
DEFAULT_TIMEOUT = 1.0

#: etcd's default ``--max-txn-ops``: operations in one branch of a transaction.
MAX_TXN_OPS = 128

#: Keys read per page when listing history or replicas.
PAGE = 500

#: A heartbeat lease lasts this many record lifetimes; records go on it while it
#: has one lifetime left, so one grant serves ``HEARTBEAT_LEASE_SPAN - 1`` lifetimes.
HEARTBEAT_LEASE_SPAN = 3

#: The key in a heartbeat record's JSON for the seconds its etcd lease had left.
LEASE_LEFT = "etcd_lease_left"

#: Transactions tried when another replica changed the lease between our read and write.
ATTEMPTS = 3

TLS_OPTIONS = ("ca_cert", "client_cert", "client_key")
OPTIONS = ("timeout", *TLS_OPTIONS)

SCHEMES = {"etcd": False, "etcds": True}  # scheme -> TLS


class HeartbeatLease(NamedTuple):
    """This replica's heartbeat lease: its etcd ID, and when it ends at the latest
    (``time.monotonic()`` seconds, counted from before the grant was sent)."""

    lease_id: int
    ends_by: float

    def left(self) -> float:
        return self.ends_by - time.monotonic()


class EtcdUrl(NamedTuple):
    tls: bool
    endpoints: list[tuple[str, int]]
    username: str | None
    password: str | None

    @property
    def description(self) -> str:
        """The URL without its password, for banners and logs."""
        user = "" if self.username is None else f"{self.username}:**@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{'etcds' if self.tls else 'etcd'}://{user}{hosts}"


def parse_etcd_url(url: str) -> EtcdUrl:
    """Parse ``etcd[s]://[user[:password]@]host[:port][,host[:port]...]``.

    Raises ImproperlyConfigured naming ``leaderbeat_elector`` for anything else.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        _bad_url(url, "use etcd://host:2379[,host2:2379,...] or etcds:// for TLS")
    location, _, path = rest.partition("/")
    if path or "?" in location or "#" in location:
        _bad_url(url, "nothing may follow the hosts (no path, query or fragment)")
    username = password = None
    if "@" in location:
        userinfo, _, location = location.rpartition("@")
        name, has_password, secret = userinfo.partition(":")
        username, password = name, (secret if has_password else None)
        if not username:
            _bad_url(url, "the user name before '@' is empty")
    endpoints = [_endpoint(url, part.strip()) for part in location.split(",")]
    return EtcdUrl(SCHEMES[scheme.lower()], endpoints, username, password)


def _endpoint(url: str, text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else port
    else:
        host, _, port = text.partition(":")
    if not host:
        _bad_url(url, "a host is missing (hosts are separated by commas)")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        _bad_url(url, f"{port!r} is not a port number")
    return host, int(port) if port else DEFAULT_PORT


def _bad_url(url: str, problem: str) -> NoReturn:
    # kombu's maybe_sanitize_url cannot parse several hosts: mask the password here.
    head, at, hosts = url.rpartition("@")
    if at:
        scheme, _, userinfo = head.partition("://")
        url = f"{scheme}://{userinfo.partition(':')[0]}:**@{hosts}"
    improperly_configured("leaderbeat_elector", f"{url!r}: {problem}")


def _gateway_options(url: EtcdUrl, settings: LeaderSettings) -> dict[str, Any]:
    """The timeout and TLS context ``leaderbeat_etcd_options`` ask for, checked now."""
    key = "leaderbeat_etcd_options"
    options = settings.etcd_options
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        improperly_configured(key, f"unknown option(s) {', '.join(map(repr, unknown))}")
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    ttl = settings.timing.ttl
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout < ttl:
        improperly_configured(key, f"timeout must be a number of seconds above 0 and below "
                                   f"the lease TTL ({ttl} s), got {timeout!r}")
    files = {name: options[name] for name in TLS_OPTIONS if options.get(name) is not None}
    if files and not url.tls:
        improperly_configured(key, f"{', '.join(files)} need an etcds:// URL")
    if ("client_cert" in files) != ("client_key" in files):
        improperly_configured(key, "client_cert and client_key go together")
    for name, path in files.items():
        if not isinstance(path, (str, os.PathLike)) or not os.access(path, os.R_OK):
            improperly_configured(key, f"{name}: cannot read {path!r}")
    tls = None
    if url.tls:
        try:
            tls = ssl.create_default_context(cafile=files.get("ca_cert"))
            if "client_cert" in files:
                tls.load_cert_chain(files["client_cert"], files["client_key"])
        except (ssl.SSLError, OSError) as exc:
            improperly_configured(key, f"cannot load the TLS files: {exc}")
    return {"timeout": float(timeout), "tls": tls}


class Kv(NamedTuple):
    """One key as etcd returned it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Kv:
        return cls(unb64(data.get("key")), unb64(data.get("value")),
                   int(data.get("create_revision", 0)), int(data.get("mod_revision", 0)),
                   int(data.get("lease", 0)))

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.value)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


class EtcdLeaseStore:
    """A lease, its run history and the replica registry under one name in one etcd cluster."""

    def __init__(self, gateway: EtcdGateway, name: str, *, description: str = "etcd") -> None:
        self.gateway = gateway
        self.name = name
        self.description = description
        prefix = f"leaderbeat/{name}/"
        self.lease_key = prefix + "lease"
        self.meta_key = prefix + "meta"
        self.history_prefix = (prefix + "history/").encode()
        self.replicas_prefix = (prefix + "replicas/").encode()
        self.step_down_prefix = prefix + "step_down/"
        self.pause_key, self.resumed_key = prefix + "pause", prefix + "resumed"
        #: The lease key's value per (owner, term) this store acquired or checked:
        #: it never changes during a term, so fenced calls compare it as it is.
        self._values: dict[tuple[str, int], bytes] = {}
        self._warned_ttl = False
        self._lease_seen = 0
        self._heartbeat_lease: HeartbeatLease | None = None

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> EtcdLeaseStore:
        """Build the store for ``etcd://`` or ``etcds://``; nothing connects until first use.

        Raises ImproperlyConfigured for a malformed URL, bad
        ``leaderbeat_etcd_options`` or a lease TTL etcd cannot honour.
        """
        parsed = parse_etcd_url(url)
        if settings.timing.ttl < MIN_LEASE_TTL:
            improperly_configured("leaderbeat_lease_ttl", (
                f"etcd grants leases of whole seconds and at least {MIN_LEASE_TTL:g} s "
                f"(with its default election timeout), got {settings.timing.ttl} s"))
        gateway = EtcdGateway(parsed.endpoints, username=parsed.username,
                              password=parsed.password, **_gateway_options(parsed, settings))
        return cls(gateway, settings.lease_name, description=parsed.description)

    # -- the lease ----------------------------------------------------------------

    def acquire(self, owner: str, identity: str, ttl: float, *,
                beat: ReplicaRecord | None = None, take: bool = True) -> Acquisition:
        return self._with_beat_lease(
            beat, lambda beat_lease: self._acquire(owner, identity, ttl, beat, beat_lease, take))

    def _acquire(self, owner: str, identity: str, ttl: float, beat: ReplicaRecord | None,
                 beat_lease: int, take: bool) -> Acquisition:
        for _ in range(ATTEMPTS):
            # Who holds it, and the meta record an acquisition would update.
            _, (found, meta) = self._txn(
                [], [_range(self.lease_key), _range(self.meta_key),
                     *self._beat_put(beat, beat_lease, None)], [])
            holder = _one(found)
            # Where a release watch starts (.etcd_watch): right after the key as seen now.
            self._lease_seen = holder.mod_revision if holder is not None else 0
            if holder is not None and _owner(holder) == owner:
                if self._keep(owner, holder, beat, beat_lease):
                    return Acquisition(True, _record(holder))
                continue
            if holder is not None or not take:
                return Acquisition(False, _record(holder) if holder else LeaseRecord(None, 0))
            outcome = self._create(owner, identity, ttl, _one(meta), beat, beat_lease)
            if outcome is not None:
                return outcome
        raise StoreUnavailable(f"the lease changed hands {ATTEMPTS} times during one attempt")

    def _create(self, owner: str, identity: str, ttl: float, meta: Kv | None,
                beat: ReplicaRecord | None, beat_lease: int) -> Acquisition | None:
        """Create the lease key for us if still absent and ``meta`` unchanged; None to retry.

        The heartbeat record goes in the same transaction as the leader's, with
        no term: the term is the transaction's revision, which a reader finds
        as the record's own mod revision (see :meth:`replicas`).
        """
        lease_id = self._grant(ttl)
        value = json.dumps({"owner": owner, "identity": identity,
                            "acquired_at": time.time()}, separators=(",", ":")).encode()
        seen = meta.json() if meta else {}
        transitions = int(seen.get("transitions", 0))
        if seen.get("last_identity") != identity:
            transitions += 1
        new_meta = json.dumps({"transitions": transitions, "last_identity": identity})
        _, (found,) = self._txn(
            [_compare(self.lease_key, "CREATE", "EQUAL", 0),
             _compare(self.meta_key, "MOD", "EQUAL", meta.mod_revision if meta else 0)],
            [_put(self.lease_key, value, lease_id), _put(self.meta_key, new_meta),
             *self._beat_put(beat, beat_lease, None, leader=True), _range(self.lease_key)],
            [_range(self.lease_key)])
        holder = _one(found)
        if holder is not None and holder.lease == lease_id:
            # Ours: created now, or by an earlier try of this call whose answer was lost.
            self._values[(owner, holder.create_revision)] = holder.value
            return Acquisition(True, _record(holder))
        with contextlib.suppress(StoreUnavailable):
            self._revoke(lease_id)
        return None

    def _keep(self, owner: str, holder: Kv, beat: ReplicaRecord | None, beat_lease: int) -> bool:
        """The lease is already ours (an earlier answer was lost): extend it, beat as leader."""
        term = holder.create_revision
        self._values[(owner, term)] = holder.value
        if self._keepalive(holder.lease) <= 0:
            return False
        kept, _ = self._txn(self._fence(term, holder.value),
                            self._beat_put(beat, beat_lease, term), [])
        return kept

    def renew(self, owner: str, term: int, ttl: float, *,
              beat: ReplicaRecord | None = None) -> Renewal:
        """Keep the lease alive unless it is not ours or a step-down is asked for our term.

        ``ttl`` is not used: a keepalive restores the TTL granted at acquisition.
        ``Renewal.PAUSED`` when the pause key existed at the renewing transaction.
        """
        return self._with_beat_lease(
            beat, lambda beat_lease: self._renew(owner, term, beat, beat_lease))

    def _renew(self, owner: str, term: int, beat: ReplicaRecord | None,
               beat_lease: int) -> Renewal:
        value = self._value(owner, term)
        if value is None:
            return Renewal.LOST
        asked = self.step_down_prefix + str(term)
        renewed, (found, *rest) = self._txn(
            [*self._fence(term, value), _compare(asked, "CREATE", "EQUAL", 0)],
            [_range(self.lease_key), _range(self.pause_key),
             *self._beat_put(beat, beat_lease, term)],
            [_range(self.lease_key), _range(asked), *self._beat_put(beat, beat_lease, None)])
        holder = _one(found)
        if renewed and holder is not None and self._keepalive(holder.lease) > 0:
            return Renewal.RENEWED if _one(rest[0]) is None else Renewal.PAUSED
        if not renewed and holder is not None and holder.create_revision == term \
                and holder.value == value and _one(rest[0]) is not None:
            released, _ = self._txn(self._fence(term, value),
                                    [_delete(self.lease_key), _delete(asked)], [])
            if released:
                self._forget_value(owner, term)
                with contextlib.suppress(StoreUnavailable):
                    self._revoke(holder.lease)
                return Renewal.STEPPED_DOWN
        self._forget_value(owner, term)
        return Renewal.LOST

    def release(self, owner: str, term: int) -> bool:
        value = self._value(owner, term)
        if value is None:
            return False
        released, (found,) = self._txn(self._fence(term, value),
                                       [_range(self.lease_key), _delete(self.lease_key)], [])
        self._forget_value(owner, term)
        holder = _one(found)
        if released and holder is not None:
            with contextlib.suppress(StoreUnavailable):
                self._revoke(holder.lease)
        return released

    def release_watch(self) -> EtcdReleaseWatch:
        """An etcd watch on the lease key, on a connection of its own (see :mod:`.etcd_watch`).

        It starts right after the lease key as the latest acquire attempt saw
        it, so a release since that attempt is not missed.
        """
        return EtcdReleaseWatch(self.gateway, self.lease_key, lambda: self._lease_seen)

    def read(self) -> LeaseRecord | None:
        _, (found, meta) = self._txn([], [_range(self.lease_key), _range(self.meta_key)], [])
        holder = _one(found)
        if holder is None:
            return None
        answer = self._call("kv/lease/timetolive", {"ID": str(holder.lease)})
        left, granted = int(answer.get("TTL", -1)), int(answer.get("grantedTTL", 0))
        now = time.time()
        seen = _one(meta)
        return replace(
            _record(holder),
            # Whole seconds: etcd reports the time left on a lease no finer.
            renewed_at=datetime.fromtimestamp(now - max(0, granted - left), tz=timezone.utc)
            if left >= 0 else None,
            expires_in=float(max(0, left)),
            transitions=int(seen.json().get("transitions", 0)) if seen else 0,
        )

    # -- run history ----------------------------------------------------------------

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        """Write the run records in the transaction that checks our lease and no pause.

        Raises DispatchPaused, writing nothing, while the pause key exists
        and the lease is still ours. More than ``MAX_TXN_OPS`` records go in
        several transactions, each fenced and checking the pause: one refused
        (or paused) after another was accepted leaves runs claimed but never
        published, as a leader dying mid-batch does.
        """
        ops = [_put(self._history_key(name), record) for name, record in runs.items()]
        return self._fenced(owner, term, ops, unless_paused=True)

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        return self._fenced(owner, term, [_delete(self._history_key(name)) for name in names])

    def _fenced(self, owner: str, term: int, ops: list[dict[str, Any]], *,
                unless_paused: bool = False) -> bool:
        """Apply ``ops`` only while the acquisition of ``term`` holds the lease; with
        ``unless_paused``, also only while no pause exists (DispatchPaused if one does)."""
        value = self._value(owner, term)
        if value is None:
            return False
        compare, failure = self._fence(term, value), []
        if unless_paused:
            compare.append(_compare(self.pause_key, "CREATE", "EQUAL", 0))
            failure = [_range(self.lease_key), _range(self.pause_key)]
        for start in range(0, max(1, len(ops)), MAX_TXN_OPS):
            accepted, found = self._txn(compare, ops[start:start + MAX_TXN_OPS], failure)
            if accepted:
                continue
            if unless_paused:
                holder, paused = _one(found[0]), _one(found[1])
                if paused is not None and holder is not None \
                        and holder.create_revision == term and holder.value == value:
                    raise DispatchPaused(DispatchPause.decode(paused.value))
            self._forget_value(owner, term)
            return False
        return True

    def load_history(self) -> dict[str, str]:
        cut = len(self.history_prefix)
        return {kv.key[cut:].decode("utf-8", "surrogatepass"): kv.value.decode()
                for kv in self._scan(self.history_prefix)}

    def _history_key(self, name: str) -> bytes:
        return self.history_prefix + name.encode("utf-8", "surrogatepass")

    # -- the replica registry (celery_leaderbeat.registry.ReplicaRegistry) ----------

    def _with_beat_lease(self, beat: ReplicaRecord | None,
                         call: Callable[[int], Answer]) -> Answer:
        """``call`` with the heartbeat lease ``beat`` goes on (0 without a record); made
        once more with a new grant when etcd no longer has the lease it named."""
        beat_lease = self._beat_lease(beat)
        try:
            return call(beat_lease)
        except EtcdError as exc:
            if not beat_lease or not _lease_not_found(exc):
                raise
        # The whole transaction was refused, nothing written: grant anew and repeat it.
        self._heartbeat_lease = None
        return call(self._beat_lease(beat))

    def _beat_lease(self, beat: ReplicaRecord | None) -> int:
        """The heartbeat lease ``beat`` goes on: the current one while it outlives the
        record, else a new one of ``HEARTBEAT_LEASE_SPAN`` lifetimes (0 without a record)."""
        if beat is None:
            return 0
        lifetime = beat.expires_in or 1.0
        current = self._heartbeat_lease
        if current is None or current.left() < lifetime:
            sent = time.monotonic()
            lease_id, granted = self._grant_seconds(HEARTBEAT_LEASE_SPAN * lifetime)
            current = self._heartbeat_lease = HeartbeatLease(lease_id, sent + granted)
        return current.lease_id

    def _beat_put(self, beat: ReplicaRecord | None, lease_id: int, term: int | None,
                  leader: bool = False) -> list[dict[str, Any]]:
        """The put of ``beat`` as the call leaves us: leader of ``term``, or a standby
        (``leader`` with no term: the acquiring transaction's own record)."""
        if beat is None:
            return []
        record = replace(beat, role=LEADER, term=None) if leader else beat.as_left(term)
        data = record.encode()
        current = self._heartbeat_lease
        if current is not None and current.lease_id == lease_id:
            data[LEASE_LEFT] = round(current.left(), 3)
        key = self.replicas_prefix + beat.identity.encode("utf-8", "surrogatepass")
        return [_put(key, json.dumps(data), lease_id)]

    def replicas(self) -> list[ReplicaRecord]:
        found = []
        for kv in self._scan(self.replicas_prefix):
            answer = self._call("kv/lease/timetolive", {"ID": str(kv.lease)})
            left = float(answer.get("TTL", -1))
            data = kv.json()
            record = ReplicaRecord.decode(data)
            lease_left = data.get(LEASE_LEFT)
            if isinstance(lease_left, (int, float)) and record.expires_in:
                # On a heartbeat lease: aged by what the lease lost since the write.
                age = lease_left - left
                left = min(left, record.expires_in - age)
            else:  # a record on an etcd lease of its own (written by an earlier version)
                age = float(answer.get("grantedTTL", 0)) - left
            if left <= 0:
                continue  # expired; etcd deletes it shortly, or with its heartbeat lease
            if record.role == LEADER and record.term is None:
                # Written by the acquiring transaction, whose revision is the term.
                record = replace(record, term=kv.mod_revision)
            found.append(record.seen(age, left))
        return sort_replicas(found)

    def withdraw(self, identity: str) -> None:
        """Delete ``identity``'s record, and revoke this store's heartbeat lease."""
        self._txn([], [_delete(self.replicas_prefix + identity.encode("utf-8", "surrogatepass"))],
                  [])
        current, self._heartbeat_lease = self._heartbeat_lease, None
        if current is not None:
            with contextlib.suppress(StoreUnavailable):
                self._revoke(current.lease_id)

    def request_step_down(self) -> StepDownRequest | None:
        for _ in range(ATTEMPTS):
            _, (found,) = self._txn([], [_range(self.lease_key)], [])
            holder = _one(found)
            if holder is None:
                return None
            term = holder.create_revision
            lease_id = self._grant(STEP_DOWN_TTL, warn=False)
            asked, _ = self._txn([_compare(self.lease_key, "CREATE", "EQUAL", term)],
                                 [_put(self.step_down_prefix + str(term), str(term), lease_id)],
                                 [])
            if asked:
                return StepDownRequest(_record(holder).holder, term)
            with contextlib.suppress(StoreUnavailable):
                self._revoke(lease_id)
        raise StoreUnavailable(f"the lease changed hands {ATTEMPTS} times during the request")

    # -- pausing dispatch (celery_leaderbeat.pause.DispatchPauses) -------------

    def pause(self, pause: DispatchPause) -> None:
        """Hold dispatch (``pause --for``: through an etcd lease, whole seconds rounded up).

        Replaces any pause in effect (the etcd lease of a replaced timed pause
        is left to expire, with nothing attached). A pause etcd acknowledged
        is on a quorum of members: no failover loses it.
        """
        lease_id = 0
        if pause.duration is not None:
            lease_id, granted = self._grant_seconds(pause.duration)
            pause = replace(pause, duration=float(granted))
        self._txn([], [_put(self.pause_key, pause.encode(), lease_id)], [])

    def resume(self, resume: DispatchResume) -> DispatchPause | None:
        for _ in range(ATTEMPTS):
            _, (found,) = self._txn([], [_range(self.pause_key)], [])
            paused = _one(found)
            if paused is None:
                return None
            last = json.dumps({"resume": resume.encode(), "ended": paused.value.decode()})
            ended, _ = self._txn(
                [_compare(self.pause_key, "MOD", "EQUAL", paused.mod_revision)],
                [_delete(self.pause_key), _put(self.resumed_key, last)], [])
            if ended:
                if paused.lease:
                    with contextlib.suppress(StoreUnavailable):
                        self._revoke(paused.lease)
                return DispatchPause.decode(paused.value)
        raise StoreUnavailable(f"the pause changed {ATTEMPTS} times during one resume")

    def read_pause(self) -> PauseState:
        _, (found, last) = self._txn([], [_range(self.pause_key), _range(self.resumed_key)], [])
        paused, resumed = _one(found), _one(last)
        pause = None
        if paused is not None:
            expires_in = None
            if paused.lease:
                # Whole seconds: etcd reports the time left on a lease no finer.
                answer = self._call("kv/lease/timetolive", {"ID": str(paused.lease)})
                expires_in = float(max(0, int(answer.get("TTL", 0))))
            pause = DispatchPause.decode(paused.value, expires_in)
        resume = None
        if resumed is not None:
            data = resumed.json()
            resume = DispatchResume.decode(str(data.get("resume", "")), data.get("ended"))
        return PauseState(pause, resume)

    def close(self) -> None:
        self.gateway.close()

    # -- etcd calls ---------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.gateway.call(path, body)

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
             failure: list[dict[str, Any]]) -> tuple[bool, list[list[Kv]]]:
        """Run one transaction: (succeeded, the kvs of each range in the branch taken)."""
        answer = self._call("kv/txn", {"compare": compare, "success": success,
                                       "failure": failure})
        ranges = [[Kv.decode(kv) for kv in response["response_range"].get("kvs", [])]
                  for response in answer.get("responses", []) if "response_range" in response]
        return bool(answer.get("succeeded", False)), ranges

    def _fence(self, term: int, value: bytes) -> list[dict[str, Any]]:
        """Compares that hold only while the acquisition of ``term`` holds the lease."""
        return [_compare(self.lease_key, "CREATE", "EQUAL", term),
                _compare(self.lease_key, "VALUE", "EQUAL", value)]

    def _value(self, owner: str, term: int) -> bytes | None:
        """The lease key's value for ``owner``'s acquisition of ``term``; None if not theirs."""
        value = self._values.get((owner, term))
        if value is None:
            _, (found,) = self._txn([], [_range(self.lease_key)], [])
            holder = _one(found)
            if holder is not None and holder.create_revision == term \
                    and _owner(holder) == owner:
                value = self._values[(owner, term)] = holder.value
        return value

    def _forget_value(self, owner: str, term: int) -> None:
        self._values.pop((owner, term), None)

    def _grant(self, ttl: float, warn: bool = True) -> int:
        """A new etcd lease of ``ceil(ttl)`` seconds (see the clock argument above)."""
        lease_id, granted = self._grant_seconds(ttl)
        asked = max(1, math.ceil(ttl))
        if warn and granted > asked and not self._warned_ttl:
            self._warned_ttl = True
            logger.warning("leaderbeat: etcd granted a %d s lease for the %d s asked (its "
                           "minimum TTL): takeover after a crash takes that much longer",
                           granted, asked)
        return lease_id

    def _grant_seconds(self, ttl: float) -> tuple[int, int]:
        """(ID, seconds granted) of a new etcd lease asked for ``ceil(ttl)`` seconds;
        etcd grants its minimum TTL instead when that is longer."""
        asked = max(1, math.ceil(ttl))
        answer = self._call("lease/grant", {"TTL": asked})
        return int(answer["ID"]), int(answer.get("TTL", asked))

    def _keepalive(self, lease_id: int) -> int:
        """Restart the TTL of an etcd lease; the seconds it now has (<= 0 once expired)."""
        answer = self._call("lease/keepalive", {"ID": str(lease_id)})
        return int(answer.get("result", {}).get("TTL", -1))

    def _revoke(self, lease_id: int) -> None:
        self._call("kv/lease/revoke", {"ID": str(lease_id)})

    def _scan(self, prefix: bytes) -> Iterator[Kv]:
        """Every key under ``prefix``, page by page, all pages at one revision."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        start, revision = prefix, 0
        while True:
            answer = self._call("kv/range", {"key": b64(start), "range_end": b64(end),
                                             "limit": PAGE, "revision": revision})
            kvs = [Kv.decode(kv) for kv in answer.get("kvs", [])]
            yield from kvs
            if not answer.get("more") or not kvs:
                return
            revision = int(answer["header"]["revision"])
            start = kvs[-1].key + b"\0"

    def __repr__(self) -> str:
        return f"EtcdLeaseStore({self.description}, name={self.name!r})"


def _compare(key: str | bytes, target: str, result: str, expected: int | bytes) -> dict[str, Any]:
    field = {"CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value"}[target]
    wanted = b64(expected) if isinstance(expected, bytes) else str(expected)
    return {"key": b64(key), "target": target, "result": result, field: wanted}


def _put(key: str | bytes, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": str(lease)}}


def _range(key: str | bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def _delete(key: str | bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def _one(kvs: list[Kv]) -> Kv | None:
    return kvs[0] if kvs else None


def _lease_not_found(exc: EtcdError) -> bool:
    """etcd refused a request naming an etcd lease it does not have."""
    return exc.code == NOT_FOUND and "lease not found" in str(exc)


def _owner(kv: Kv) -> str | None:
    owner = kv.json().get("owner")
    return owner if isinstance(owner, str) else None


def _record(kv: Kv) -> LeaseRecord:
    data = kv.json()
    stamp = data.get("acquired_at")
    return LeaseRecord(
        holder=data.get("identity"),
        term=kv.create_revision,
        acquired_at=datetime.fromtimestamp(stamp, tz=timezone.utc)
        if isinstance(stamp, (int, float)) else None,
    )
