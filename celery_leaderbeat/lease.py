"""The lease engine: who leads, for how long, and when to renew.

The engine is store-agnostic (as client-go keeps ``LeaderElector`` apart from
``resourcelock.Interface``): a :class:`LeaseStore` does the atomic
compare-and-act operations, and :class:`LeaseElector` decides when to call
them and how long this replica may believe it leads.

Clock argument: the local deadline is measured on the monotonic clock from
the moment the acquire or renew request was *sent*. The store starts its
own TTL later than that, so the local deadline always falls before the
store's expiry, less a small allowance for clock-rate drift. The leader
therefore stops dispatching before any other replica can acquire the lease,
even when the store is unreachable. A pause (GC, SIGSTOP) between the local
check and a write is covered by fencing: every claim is checked against the
lease's owner and term inside the store (see :meth:`LeaseElector.claim`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Callable, Protocol

from .elector import NotLeader
from .pause import DispatchPause, DispatchPaused, DispatchResume
from .registry import LEADER, STANDBY, Heartbeat, ReplicaRecord
from .watch import PushingStore, ReleaseWatch, next_attempt

__all__ = [
    "Acquisition",
    "ClaimRejected",
    "FencedOut",
    "LeadershipLost",
    "LeaseElector",
    "LeaseHeld",
    "LeaseRecord",
    "LeaseStore",
    "LeaseTiming",
    "Renewal",
    "StoreMisconfigured",
    "StoreUnavailable",
]

#: Share of the TTL kept back for clock-rate drift between replica and store.
CLOCK_DRIFT_FACTOR = 0.01

Clock = Callable[[], float]


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts, how often the leader renews, how often standbys try.

    Takeover after a crash takes at most ``ttl + retry_interval``; after a
    graceful release, at most ``retry_interval``; after a step-down request,
    at most ``renew_interval + retry_interval``. On a store that pushes
    releases (celery_leaderbeat.watch), standbys are told instead: a release
    or step-down is taken over within milliseconds, a crash within the
    remaining lease plus one round trip, and a lost push within one ``ttl``.
    A longer ``ttl`` tolerates longer stalls of the leader (or the store) before leadership moves.

    The leader renews as often as a standby tries (as client-go's leader
    renews every retry period): each renewal is where it finds a step-down
    request, so a request is honoured within the retry interval, and it
    costs the leader no more store commands than a standby.
    """

    ttl: float = 5.0
    renew_interval: float = 0.5
    retry_interval: float = 0.5

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for each rule the timing breaks; empty when valid."""
        found = []
        for field in ("ttl", "renew_interval", "retry_interval"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                found.append((field, f"must be a positive number of seconds, got {value!r}"))
        if not found and self.ttl <= self.renew_interval:
            found.append((
                "ttl",
                f"must be above renew_interval ({self.renew_interval}s) so the leader renews "
                f"before its lease expires, got {self.ttl}s",
            ))
        return found

    @property
    def local_validity(self) -> float:
        """Seconds after sending a request for which the lease is surely ours."""
        return self.ttl * (1.0 - CLOCK_DRIFT_FACTOR)


@dataclass(frozen=True)
class LeaseRecord:
    """The lease as the store holds it: plain data that anyone debugging can read."""

    holder: str | None
    term: int
    acquired_at: datetime | None = None
    renewed_at: datetime | None = None
    expires_in: float | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Acquisition:
    """Outcome of an acquire attempt and the lease as it stands after it.

    ``lease.holder`` is None when nobody holds the lease (only possible when
    the attempt was made with ``take=False``).
    """

    acquired: bool
    lease: LeaseRecord


class Renewal(Enum):
    """Outcome of a renewal."""

    RENEWED = "renewed"
    #: The lease is no longer ours: expired, released or taken in the store.
    LOST = "lost"
    #: A step-down was requested for our term: the store released the lease.
    STEPPED_DOWN = "stepped down"
    #: Renewed, and dispatch is paused cluster-wide (see :mod:`celery_leaderbeat.pause`).
    PAUSED = "renewed, dispatch paused"


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error."""


class StoreMisconfigured(StoreUnavailable):
    """The store refused this replica for a reason that waiting will not heal.

    A wrong password (``WRONGPASS``/``NOAUTH``), a missing permission
    (``NOPERM``), an unknown database, a certificate that fails verification,
    a lock file the process may not open. Still a StoreUnavailable, so code
    that only knows "not now" keeps working; the scheduler refuses to start on
    one and reports one seen later at ERROR (see ``LeaderSchedulerMixin``).

    ``setting`` names the setting to fix; ``cause`` says what the store
    answered and never contains a secret.
    """

    def __init__(self, cause: str, setting: str = "leaderbeat_elector") -> None:
        super().__init__(f"{cause} (check {setting})")
        self.cause = cause
        self.setting = setting



class ClaimRejected(StoreUnavailable):
    """The store refused the data of a write (too long, a constraint, an encoding), not the lease.

    Nothing of the write was stored; the lease is as it was. ``names`` are the
    schedule entries whose runs were refused: every entry of the write when
    the store cannot tell which one it could not take. A subclass of
    :class:`StoreUnavailable`, so code that knows only outages treats it as one.
    """

    def __init__(self, reason: str, names: Iterable[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.names = tuple(names)

    def naming(self, names: Iterable[str]) -> ClaimRejected:
        """The same refusal, naming the entries of the write it refused."""
        return ClaimRejected(self.reason, names)


class LeaseHeld(NotLeader):
    """Another replica holds the lease."""

    def __init__(self, holder: str | None, term: int) -> None:
        super().__init__(f"lease held by {holder} (term {term})")
        self.holder = holder
        self.term = term


class LeadershipLost(NotLeader):
    """This replica led and no longer does. ``cause`` says why, in one word."""

    RELEASED = "released"
    EXPIRED = "expired"
    TAKEN = "taken"
    FENCED_OUT = "fenced out"
    STORE_ERROR = "store error"

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause


class FencedOut(Exception):
    """A claim was refused or could not be confirmed; nothing may be published.

    ``cause`` is the LeadershipLost cause the scheduler steps down with.
    """

    def __init__(self, detail: str, cause: str = "fenced out") -> None:
        super().__init__(detail)
        self.cause = cause


class LeaseStore(Protocol):
    """Where a lease and its run history live. Every mutation is atomic in the store.

    ``owner`` is a random token unique to one elector; ``term`` is the number
    the store gave at acquisition, increasing with every acquisition.
    Mutations check both inside the store and refuse when either differs.

    ``beat``, when given, is this replica's heartbeat record for the replica
    registry (:mod:`celery_leaderbeat.registry`), written in the same call
    for ``beat.expires_in`` seconds, with role and term as the call leaves
    them. A store without a registry ignores it.

    A store that can hold dispatch (:mod:`celery_leaderbeat.pause`) adds two
    answers: ``claim`` raises :class:`~celery_leaderbeat.pause.DispatchPaused`,
    writing nothing, while a pause is in effect, judged in the same atomic
    operation as owner and term; ``renew`` answers ``Renewal.PAUSED`` instead
    of ``RENEWED`` while one is. It also implements
    :class:`~celery_leaderbeat.pause.DispatchPauses` (pause, resume, read_pause).
    """

    #: Where the lease lives, for banners and logs. Never contains secrets.
    description: str

    def acquire(self, owner: str, identity: str, ttl: float, *,
                beat: ReplicaRecord | None = None, take: bool = True) -> Acquisition:
        """Take the lease if free or already ours; a new acquisition gets a new term.

        With ``take=False`` only report who holds it (and write ``beat``).
        """
        ...  # pragma: no cover

    def renew(self, owner: str, term: int, ttl: float, *,
              beat: ReplicaRecord | None = None) -> Renewal:
        """Extend our lease by ``ttl``, unless it is no longer ours or a step-down
        was requested for ``term``: then release it and clear the request.

        ``Renewal.PAUSED`` when renewed while dispatch is paused (a store that
        cannot be paused never answers it)."""
        ...  # pragma: no cover

    def release(self, owner: str, term: int) -> bool:
        """Give the lease up if it is still ours."""
        ...  # pragma: no cover

    def read(self) -> LeaseRecord | None:
        """The current lease, or None when nobody holds it."""
        ...  # pragma: no cover

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        """Record runs (entry name -> encoded run record) only if the lease is ours.

        All or nothing. Raises :class:`ClaimRejected` when the store refuses
        the runs' data rather than the lease, ``DispatchPaused`` while dispatch
        is paused (the lease is still ours), StoreUnavailable on any other error.
        """
        ...  # pragma: no cover

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        """Drop run records of entries gone from the schedule, if the lease is ours."""
        ...  # pragma: no cover

    def load_history(self) -> dict[str, str]:
        """All run records: entry name -> encoded run record."""
        ...  # pragma: no cover

    def close(self) -> None:
        """Free connections and handles."""
        ...  # pragma: no cover


class LeaseElector:
    """An elector backed by a lease in a store, with a local monotonic deadline.

    Besides ``is_leader()`` it offers what fenced dispatch needs: the current
    ``term``, atomic ``claim`` of runs, and the shared run history.
    """

    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str,
        timing: LeaseTiming | None = None,
        clock: Clock = time.monotonic,
        heartbeat: Heartbeat | None = None,
        push: bool = True,
    ) -> None:
        self.store = store
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.owner = f"{identity}/{uuid.uuid4().hex}"
        #: Paces the heartbeat records that ride on acquire attempts and renewals.
        self.heartbeat = heartbeat
        self._clock = clock
        self._term: int | None = None
        self._deadline = 0.0
        self._renew_at = 0.0
        self._next_attempt = 0.0
        self._hold_until = 0.0
        self._refusal: NotLeader = NotLeader("no acquire attempt yet")
        self._renew_error: StoreUnavailable | None = None
        self._misconfigured: StoreMisconfigured | None = None
        #: Standbys wait on the store's release watch (celery_leaderbeat.watch), if any.
        self.push = push
        self._watch: ReleaseWatch | None = None
        self._listening = False  # the watch answered its last wait
        self._pause: DispatchPause | None = None
        self._resumption: DispatchResume | None = None

    # -- what the scheduler asks -------------------------------------------------

    @property
    def term(self) -> int | None:
        """The term of the lease we hold, or None when we do not lead."""
        return self._term

    def is_leader(self) -> bool:
        """Renew or acquire as the timing says; raise NotLeader with the reason if not."""
        now = self._clock()
        if self._term is not None:
            self._keep(now)
            if self._term is None:
                # Report the loss before trying again: a lease re-acquired in the
                # same call would be a new term the caller never saw start, so it
                # would skip the takeover (history reload) that a new term needs.
                raise self._refusal
        if self._term is None and now >= self._next_attempt:
            self._try_acquire(now)
        if self._term is None:
            raise self._refusal
        return True

    @property
    def misconfigured(self) -> StoreMisconfigured | None:
        """The store's answer to the latest acquire or renew, if it was a permanent
        refusal (cleared by the next answer that is not)."""
        return self._misconfigured

    def probe(self) -> None:
        """Read the lease once, to learn at start-up whether the store accepts us.

        Raises StoreMisconfigured (permanent) or StoreUnavailable (maybe
        transient); takes nothing and writes nothing.
        """
        self.store.read()

    @property
    def pause(self) -> DispatchPause | None:
        """The pause of dispatch this leader knows of (None: dispatch runs).

        Learnt from a renewal answered ``PAUSED`` or a claim refused with
        DispatchPaused, and forgotten at the first renewal answered
        ``RENEWED``: within one renew interval of the store's change.
        """
        return self._pause

    @property
    def resumption(self) -> DispatchResume | None:
        """The resume that ended the last pause this leader knew of; None when
        that pause ran out by itself or its resume could not be read."""
        return self._resumption

    def seconds_until_renewal(self) -> float:
        """How long the leader may sleep before it must renew (0 when not leading)."""
        if self._term is None:
            return 0.0
        return max(0.0, min(self._renew_at, self._deadline) - self._clock())

    def seconds_until_next_attempt(self) -> float:
        """How long a standby may sleep before its next acquire attempt is allowed."""
        return max(0.0, self._next_attempt - self._clock())

    def wait_for_release(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds on the store's release watch, as a standby.

        True when the watch says the lease may have been let go: the next
        acquire attempt is then due at once. False at once when this replica
        leads, holds off after letting go, has push off, or its store cannot
        push; and when the watch cannot listen (the standby then tries every
        ``retry_interval`` until it can). See :mod:`celery_leaderbeat.watch`.
        """
        if self._term is not None or timeout <= 0 or self._clock() < self._hold_until:
            return False
        watch = self._open_watch()
        if watch is None:
            return False
        try:
            released = watch.wait(timeout)
        except StoreUnavailable:
            # Not listening: ask at the retry pace until the watch can listen again.
            self._listening = False
            self._next_attempt = min(self._next_attempt,
                                     self._clock() + self.timing.retry_interval)
            return False
        self._listening = True
        if released:
            self._next_attempt = self._clock()
        return released

    def _open_watch(self) -> ReleaseWatch | None:
        if self._watch is None and self.push and isinstance(self.store, PushingStore):
            self._watch = self.store.release_watch()
            if self._watch is None:
                self.push = False  # this store cannot push: never ask again
        return self._watch

    def claim(self, runs: Mapping[str, str]) -> None:
        """Record runs in the store, fenced by our term; raise FencedOut if refused.

        Checks the local deadline first, so a leader that was paused past its
        lease steps down without writing even before the store is asked.

        A run the store refuses for its data (:class:`ClaimRejected`) is not a
        lost lease: the runs of a refused batch are claimed again one by one,
        and ClaimRejected is raised at the end naming only the entries the
        store refused alone. Every other run of ``runs`` is then claimed; the
        lease is still held.
        """
        try:
            self._claim(runs)
        except ClaimRejected as rejected:
            if len(runs) < 2:
                raise rejected.naming(runs) from rejected
            refused: list[str] = []
            reasons: list[str] = []
            for name, record in runs.items():
                try:
                    self._claim({name: record})
                except ClaimRejected as alone:
                    refused.append(name)
                    reasons.append(alone.reason)
            if refused:
                raise ClaimRejected(reasons[0], refused) from rejected

    def _claim(self, runs: Mapping[str, str]) -> None:
        term = self._term
        if term is None:
            raise FencedOut("not the leader")
        if self._clock() >= self._deadline:
            self._lose(LeadershipLost.EXPIRED, "local lease deadline passed before a claim")
            raise FencedOut("lease expired locally", LeadershipLost.EXPIRED)
        try:
            accepted = self.store.claim(self.owner, term, runs)
        except DispatchPaused as paused:  # not a lost lease: hold dispatch
            self._pause = paused.pause
            raise
        except ClaimRejected:
            raise
        except StoreUnavailable as exc:
            # The claim may or may not have been written; either way no publish
            # follows, which keeps the at-most-once promise.
            raise FencedOut(f"store error during claim: {exc}", "store error") from exc
        if not accepted:
            self._lose(LeadershipLost.FENCED_OUT, f"store refused a claim for term {term}")
            raise FencedOut(f"term {term} is no longer the lease's term")

    def load_history(self) -> dict[str, str]:
        return self.store.load_history()

    def forget(self, names: Iterable[str]) -> None:
        term = self._term
        if term is not None:
            self.store.forget(self.owner, term, list(names))

    def step_down(self, cause: str, detail: str) -> None:
        """Stop leading now (without releasing): used when dispatch was fenced out."""
        if self._term is not None:
            self._lose(cause, detail)

    def release(self, detail: str = "released on shutdown") -> None:
        """Give up the lease so a standby takes over within its retry interval.

        This replica then holds off one TTL (still heartbeating as a standby),
        so that a standby, not the replica that just let go, takes the lease.
        """
        term = self._term
        if term is None:
            return
        self._lose(LeadershipLost.RELEASED, detail, hold_off=self.timing.ttl)
        with contextlib.suppress(StoreUnavailable):  # else it expires within the TTL
            self.store.release(self.owner, term)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.store.close()

    def describe(self) -> str:
        return self.store.description

    # -- the state machine -------------------------------------------------------

    def _keep(self, now: float) -> None:
        """Renew when due; lose leadership at the local deadline or on refusal."""
        term = self._term
        assert term is not None
        if now >= self._deadline:
            why = f" ({self._renew_error})" if self._renew_error else ""
            self._lose(LeadershipLost.EXPIRED, f"lease not renewed before its local deadline{why}")
            return
        if now < self._renew_at:
            return
        sent_at = self._clock()
        try:
            renewed = self.store.renew(self.owner, term, self.timing.ttl,
                                       beat=self._beat(LEADER, term))
        except StoreUnavailable as exc:
            # Keep leading until the local deadline; try again soon.
            self._renew_at = min(now + self.timing.retry_interval, self._deadline)
            self._renew_error = exc
            self._misconfigured = _permanent(exc)
            return
        self._renew_error = self._misconfigured = None
        if renewed in (Renewal.RENEWED, Renewal.PAUSED):
            self._deadline = sent_at + self.timing.local_validity
            self._renew_at = sent_at + self.timing.renew_interval
            self._follow_pause(renewed is Renewal.PAUSED)
        elif renewed is Renewal.STEPPED_DOWN:
            self._lose(LeadershipLost.RELEASED, "step-down requested", hold_off=self.timing.ttl)
        else:
            self._lose(LeadershipLost.TAKEN, f"store refused to renew term {term}")

    def _follow_pause(self, paused: bool) -> None:
        """Learn who paused (on a pause's first renewal) or how to catch up (on
        the first renewal after it): one store read per change, none otherwise."""
        if paused == (self._pause is not None):
            return
        pauses = getattr(self.store, "read_pause", None)
        try:
            state = pauses() if pauses is not None else None
        except StoreUnavailable:
            state = None
        if paused:
            self._pause = (state.pause if state is not None else None) or DispatchPause(
                "unknown", None, "the store said paused; reading who paused failed")
            return
        resume = state.last_resume if state is not None else None
        ended = self._pause
        self._pause = None
        self._resumption = resume if resume is not None and ended is not None \
            and ended.same_as(resume.ended) else None

    def _try_acquire(self, now: float) -> None:
        sent_at = self._clock()
        self._next_attempt = now + self.timing.retry_interval
        take = now >= self._hold_until
        beat = self._beat(STANDBY)
        try:
            outcome = self.store.acquire(self.owner, self.identity, self.timing.ttl,
                                         beat=beat, take=take)
        except StoreUnavailable as exc:
            self._misconfigured = _permanent(exc)
            kind = "store misconfigured" if self._misconfigured else "store unavailable"
            self._refusal = NotLeader(f"{kind}: {exc}")
            return
        self._misconfigured = None
        if outcome.acquired:
            self._term = outcome.lease.term
            self._deadline = sent_at + self.timing.local_validity
            self._renew_at = sent_at + self.timing.renew_interval
            if beat is None and self.heartbeat is not None:
                # No record rode on this attempt (none was due): renew at the next
                # call, whose record shows the new leader to status and health.
                self._renew_at = sent_at
        elif outcome.lease.holder is not None:
            self._refusal = LeaseHeld(outcome.lease.holder, outcome.lease.term)
            if self._listening:  # told of a release: try when this lease expires
                self._next_attempt = next_attempt(self._clock(), outcome.lease.expires_in,
                                                  self.timing)
        else:
            self._refusal = NotLeader(
                "lease free, but holding off one TTL after letting go, so that a standby "
                "takes it")

    def _beat(self, role: str, term: int | None = None) -> ReplicaRecord | None:
        return None if self.heartbeat is None else self.heartbeat.due(role, term)

    def _lose(self, cause: str, detail: str, hold_off: float = 0.0) -> None:
        """Stop leading. Try again at once (the store decides whether we may lead),
        or, after letting go, hold off: attempts then only heartbeat until then."""
        self._term = None
        self._renew_error = None
        self._pause = None  # a later term learns it again, from its claims or renewals
        self._refusal = LeadershipLost(cause, detail)
        now = self._clock()
        self._hold_until = now + hold_off
        self._next_attempt = now + (self.timing.retry_interval if hold_off else 0.0)

    def __repr__(self) -> str:
        return f"LeaseElector({self.store.description}, identity={self.identity!r})"


def _permanent(error: StoreUnavailable) -> StoreMisconfigured | None:
    return error if isinstance(error, StoreMisconfigured) else None
