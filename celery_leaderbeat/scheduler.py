"""Celery integration: a mixin that puts any beat ``Scheduler`` behind an elector.

Every tick asks the elector first. A standby dispatches nothing and comes
back within the retry interval; the leader never sleeps past its next lease
renewal, and ticks its base scheduler when the base asked to be woken, as
plain beat would. No answer, exception or outage
stops the asking: each tick asks again (the lesson of gocron issue 681).

With a lease elector (every built-in store), dispatch is also fenced: a
replica that becomes leader loads the shared run history before its first
dispatch, and every run is claimed in the store under the leader's term
before it is published. The order is claim, then publish, so each scheduled
run is published at most once; a leader that dies between the two loses
that one run. When many entries are due at once, their runs are claimed in
batches (one store call each, see ``LeaderSchedulerMixin.reserve``), so a
leader that dies mid-batch loses the claimed runs it had not yet published.

A pause of dispatch (``celery leaderbeat pause``, :mod:`.pause`) is fenced
the same way: the store refuses claims while it is in effect. The leader
then holds: it keeps its lease, publishes nothing, leaves its entries where
they were and asks again at each renewal (``Renewal.PAUSED`` says it is
still paused). At the first renewal after ``resume`` it adopts the shared
history again, as at a takeover, and applies the catch-up policy the resume
chose (else ``leaderbeat_catch_up``) to the runs that fell due meanwhile.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.utils.log import get_logger

from . import signals
from .backends import choose_elector
from .elector import Elector, NotLeader
from .history import RunRecord, apply_history, decode_history
from .lease import (
    ClaimRejected,
    FencedOut,
    LeadershipLost,
    LeaseElector,
    LeaseHeld,
    StoreMisconfigured,
    StoreUnavailable,
)
from .metrics import BeatMetrics
from .pause import DispatchPause, DispatchPaused, pauses_of
from .registry import Heartbeat, registry_of
from .rejections import RejectedRuns
from .settings import LeaderSettings, improperly_configured
from .stores.file import FileLeaseStore

__all__ = ["SCHEDULED_AT_HEADER", "TERM_HEADER", "LeaderScheduler", "LeaderSchedulerMixin"]

logger = get_logger(__name__)

#: Message headers carrying the fencing token of a dispatch (see celery_leaderbeat.fencing).
TERM_HEADER = "leaderbeat_term"
LEASE_HEADER = "leaderbeat_lease"
SCHEDULED_AT_HEADER = "leaderbeat_scheduled_at"


class LeaderSchedulerMixin:
    """Leader election for any ``celery.beat.Scheduler`` subclass.

    Put it first in the bases: ``class S(LeaderSchedulerMixin, MyScheduler)``.
    """

    app: Any
    schedule: Any
    _heap: Any

    #: Standbys keep a local shadow of the schedule (see _shadow_tick). Schedulers
    #: whose own state is shared between replicas (a database) set this to False.
    shadow_standby = True
    #: Elector URL used when leaderbeat_elector is unset (None: broker's Redis, else a file lock).
    default_elector: str | None = None
    _shadowing = False
    _shadow_next = 0.0  # monotonic time of the shadow's next due run
    _busy = 0  # tick() and sync() calls in progress (see close)
    _close_deferred = False
    _base_next = 0.0  # monotonic time the leader's base scheduler asked to tick again
    #: Seconds between ERROR lines while the store refuses this replica for good
    #: (a rotated password): often enough to be seen, rarely enough not to flood.
    misconfigured_log_interval = 60.0
    _misconfigured_logged: tuple[str, float] | None = None  # (message, monotonic time)

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.leader_settings = LeaderSettings.from_app(app)
        choice = choose_elector(self.leader_settings, default=self.default_elector)
        self.elector: Elector = choice.elector
        self._elector_chosen_implicitly = choice.implicit
        self._leading = False
        self._needs_takeover = False
        self._last_refusal: str | None = None
        self._leading_term: int | None = None
        self._observed: tuple[str | None, int] | None = None
        self._announced = False
        self._closed = False
        #: Runs claimed ahead by a batch: name -> (term, last run, count); last run is
        #: None when the store refused the run's data (see celery_leaderbeat.rejections).
        self._claimed: dict[str, tuple[int, datetime | None, int]] = {}
        self._withheld: set[str] = set()  # reserved, but their claim was refused: not sent
        self._rejected_runs = RejectedRuns()
        self._held_for: DispatchPause | None = None  # the pause this leader holds dispatch for
        self._resume_catch_up: str | None = None  # a resume's choice, for the next takeover
        self._registry = registry_of(self.elector)
        if self._registry is not None and isinstance(self.elector, LeaseElector):
            timing = self.leader_settings.timing
            # A listening standby asks about once per lease (celery_leaderbeat.watch).
            self.elector.heartbeat = Heartbeat(
                self.leader_settings.identity, max(timing.renew_interval, timing.retry_interval),
                longest_gap=timing.ttl if self.leader_settings.push else 0.0)
        self.metrics: BeatMetrics | None = None
        if not kwargs.get("lazy"):  # beat builds a lazy one just for its banner
            self._probe_store()
        super().__init__(app, *args, **kwargs)  # type: ignore[call-arg]
        if not kwargs.get("lazy"):
            self.metrics = BeatMetrics.serve(self)

    def _probe_store(self) -> None:
        """Ask the store once before beat's loop: stop now if it can never accept us.

        A permanent refusal (StoreMisconfigured: wrong password, unknown
        database, failed certificate check, ...) raises ImproperlyConfigured
        naming the setting to fix; a store that is merely down lets beat start
        as a standby, which leads once the store is back.
        """
        if not isinstance(self.elector, LeaseElector):
            return
        try:
            self.elector.probe()
        except StoreMisconfigured as exc:
            self.elector.close()
            improperly_configured(
                exc.setting, f"the store {self.elector.describe()} refuses this replica: "
                f"{exc.cause.rstrip('.')}")
        except StoreUnavailable as exc:
            logger.warning("leaderbeat: the store %s is unavailable at start-up; %s starts "
                           "as a standby and leads once it is back: %s",
                           self.elector.describe(), self.leader_settings.identity, exc)

    # -- the tick ----------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Ask the elector, then dispatch as the base scheduler would, or stand by."""
        if self._closed or self._close_deferred:
            # Closed by beat's SIGTERM handler, whose SystemExit was lost in the
            # call it interrupted (an elector swallowing what that call raised).
            raise SystemExit()
        self._busy += 1
        try:
            return self._tick(*args, **kwargs)
        finally:
            self._busy -= 1

    def sync(self) -> None:
        self._busy += 1
        try:
            super().sync()  # type: ignore[misc]
        finally:
            self._busy -= 1

    def _tick(self, *args: Any, **kwargs: Any) -> float:
        self._announce()
        retry = self.leader_settings.timing.retry_interval
        leading = self._ask_timed()
        if not leading:
            return self._stand_by(
                min(self._time_until_next_attempt(), self._shadow_tick(*args, **kwargs)))
        if self._follow_pause():
            return max(self._time_until_renewal(), 0.01)  # asks again at the renewal
        wait = self._base_next - time.monotonic()
        if wait > 0:
            # Woken to renew the lease, before the base scheduler asked to be
            # ticked: plain beat would still be asleep, so the base is not asked.
            return min(wait, self._time_until_renewal())
        try:
            if self._needs_takeover:
                self.adopt_shared_history()
                self._heap = None  # rebuild the heap from the entries as they are now
                self._needs_takeover = False
            interval: float = super().tick(*args, **kwargs)  # type: ignore[misc]
            self._base_next = time.monotonic() + interval
        except DispatchPaused:
            # Paused between our last renewal and this claim: nothing was written
            # or sent, and reserve put the entry back; hold from now on.
            self._heap = None
            self._follow_pause()
            return max(self._time_until_renewal(), 0.01)
        except FencedOut as exc:
            self._stop_leading(str(exc), cause=exc.cause)
            return retry
        except StoreUnavailable as exc:
            logger.warning("leaderbeat: cannot read the run history, not dispatching: %s", exc)
            return retry
        return min(interval, self._time_until_renewal())

    def _shadow_tick(self, *args: Any, **kwargs: Any) -> float:
        """Advance the local schedule as the leader would, publishing nothing.

        The shared history is authoritative at takeover; this local shadow is
        what remains when the store lost it (a Redis restart without
        persistence): a standby that takes over then does not re-send runs the
        old leader already sent. Off for schedulers whose state is shared.

        Paced by the shadow's own next due time, not by the standby's retry
        interval: between runs a shadow tick has nothing to advance, and the
        base tick's cost (it compares the whole schedule) was most of an idle
        standby's CPU time.
        """
        if not self.shadow_standby:
            return self.leader_settings.timing.retry_interval
        wait = self._shadow_next - time.monotonic()
        if wait > 0:
            return wait
        self._shadowing = True
        try:
            interval: float = super().tick(*args, **kwargs)  # type: ignore[misc]
            self._shadow_next = time.monotonic() + interval
            return interval
        except Exception as exc:  # a shadow must never stop the standby from asking
            logger.debug("leaderbeat: shadow tick failed: %r", exc)
            return self.leader_settings.timing.retry_interval
        finally:
            self._shadowing = False

    def _stand_by(self, planned: float) -> float:
        """Spend the standby's sleep of ``planned`` seconds waiting for a pushed release.

        Beat sleeps whatever tick returns, so the wait happens here, inside
        the tick: a release pushed by the store (see celery_leaderbeat.watch)
        ends it early and the next tick, at once, tries to acquire. What is
        left of ``planned`` when the watch returns early for another reason
        is returned for beat to sleep, so the shadow keeps its timing. A
        SIGTERM meanwhile finds the tick busy: close defers, and the
        handler's SystemExit ends the wait (see close).
        """
        if planned <= 0 or not isinstance(self.elector, LeaseElector):
            return planned
        until = time.monotonic() + planned
        if self.elector.wait_for_release(planned):
            return 0.0
        return max(0.0, until - time.monotonic())

    def _ask_timed(self) -> bool:
        """Ask the elector; tell the metrics how long it took when a renewal was due."""
        if self.metrics is None or not self._leading or self._time_until_renewal() > 0:
            return self._ask_elector()
        started = time.monotonic()
        try:
            return self._ask_elector()
        finally:
            self.metrics.renewed(time.monotonic() - started)

    def _ask_elector(self) -> bool:
        """One question, every tick. Exceptions are answers too: "not now"."""
        refusal: NotLeader | None
        try:
            leader = bool(self.elector.is_leader())
            refusal = None if leader else NotLeader("the elector answered no")
        except NotLeader as exc:
            leader, refusal = False, exc
        except Exception as exc:  # a custom elector's bug must not stop beat
            leader, refusal = False, NotLeader(f"elector raised {exc!r}")
        misconfigured = self._report_misconfigured()
        if leader:
            if self._leading and self.term != self._leading_term:
                # A new term is a new leadership, even without a "no" in between:
                # the history must be adopted again before dispatching.
                self._stop_leading(f"term {self._leading_term} ended",
                                   cause=LeadershipLost.TAKEN, step_down=False)
            if not self._leading:
                self._start_leading()
            return True
        assert refusal is not None
        if self._leading:
            cause = getattr(refusal, "cause", "elector")
            self._stop_leading(str(refusal), cause=cause)
        elif misconfigured:
            self._last_refusal = str(refusal)
        elif str(refusal) != self._last_refusal:
            logger.info("leaderbeat: %s is a standby: %s",
                        self.leader_settings.identity, refusal)
            self._last_refusal = str(refusal)
        if isinstance(refusal, LeaseHeld):
            self._observe(refusal)
        return False

    def _follow_pause(self) -> bool:
        """Hold dispatch while the elector knows of a pause; True while holding.

        Logs, signals (``dispatch_paused``/``dispatch_resumed``) and counts
        each change once. A resume makes the next tick a takeover: the shared
        history is adopted again and the resume's catch-up policy applied.
        """
        pause = getattr(self.elector, "pause", None)
        held = self._held_for
        if pause is not None and held is None:
            self._held_for = pause
            logger.warning("leaderbeat: dispatch of %r is paused %s; the leader %s holds "
                           "every run until it is resumed", self.leader_settings.lease_name,
                           pause.describe(), self.leader_settings.identity)
            signals.dispatch_paused.send(sender=self, pause=pause, **self._signal_args())
        elif pause is None and held is not None:
            resume = getattr(self.elector, "resumption", None)
            chosen = resume.catch_up if resume is not None else None
            self._resume_catch_up = chosen or self.leader_settings.catch_up
            self._held_for = None
            self._needs_takeover = True
            self._base_next = 0.0
            how = f"by {resume.resumed_by}" if resume is not None else "(the pause ran out)"
            logger.warning("leaderbeat: dispatch of %r resumed %s; runs that fell due while "
                           "paused: catch-up %r", self.leader_settings.lease_name, how,
                           self._resume_catch_up)
            signals.dispatch_resumed.send(sender=self, resume=resume,
                                          catch_up=self._resume_catch_up,
                                          **self._signal_args())
        return self._held_for is not None

    @property
    def catch_up_policy(self) -> str:
        """How the next takeover treats runs missed: a resume's choice, else the setting."""
        return self._resume_catch_up or self.leader_settings.catch_up

    def _report_misconfigured(self) -> bool:
        """Log at ERROR, and again every ``misconfigured_log_interval`` seconds,
        while the store refuses this replica for good; keep the metric true.

        The replica stays a standby meanwhile (the refusal may be fixed in
        the store, as by restoring the password, without restarting beat).
        """
        error = getattr(self.elector, "misconfigured", None)
        if self.metrics is not None:
            self.metrics.store_misconfigured(error is not None)
        if error is None:
            self._misconfigured_logged = None
            return False
        now, message = time.monotonic(), str(error)
        last = self._misconfigured_logged
        if last is None or last[0] != message or now - last[1] >= self.misconfigured_log_interval:
            self._misconfigured_logged = (message, now)
            logger.error(
                "leaderbeat: %s cannot use the store %s, which refuses it for a reason "
                "that waiting will not heal: %s. It stays a standby until this is fixed "
                "(repeated every %.0f s).", self.leader_settings.identity,
                self.elector.describe(), message,  # type: ignore[attr-defined]
                self.misconfigured_log_interval)
        return True

    def _signal_args(self) -> dict[str, Any]:
        return {
            "identity": self.leader_settings.identity,
            "term": self.term,
            "lease_name": self.leader_settings.lease_name,
        }

    def _start_leading(self) -> None:
        self._leading = True
        self._needs_takeover = True
        self._base_next = 0.0
        self._last_refusal = None
        self._leading_term = self.term
        logger.info(
            "leaderbeat: %s is now the leader of %r (term %s)",
            self.leader_settings.identity, self.leader_settings.lease_name, self.term,
        )
        signals.leadership_gained.send(sender=self, **self._signal_args())

    def _stop_leading(self, reason: str, cause: str = LeadershipLost.FENCED_OUT,
                      step_down: bool = True) -> None:
        if step_down and isinstance(self.elector, LeaseElector):
            self.elector.step_down(cause, reason)
        self._leading = False
        self._held_for = None  # a later term learns of a pause again
        if self.metrics is not None:
            self.metrics.dispatch_held(False)
        self._shadow_next = 0.0  # the shadow starts from what this leader did
        self._last_refusal = reason
        logger.info(
            "leaderbeat: %s is no longer the leader of %r: %s",
            self.leader_settings.identity, self.leader_settings.lease_name, reason,
        )
        args = {**self._signal_args(), "term": self._leading_term}
        signals.leadership_lost.send(sender=self, reason=reason, cause=cause, **args)
        self._leading_term = None

    def _observe(self, held: LeaseHeld) -> None:
        """Tell once per term which other replica leads."""
        seen = (held.holder, held.term)
        if seen == self._observed:
            return
        self._observed = seen
        signals.leader_observed.send(
            sender=self, leader=held.holder, leader_term=held.term, **self._signal_args())

    def _time_until_next_attempt(self) -> float:
        """Wake exactly when the elector may try again: waking just before would
        waste the wake-up and delay the attempt by a whole retry interval."""
        if isinstance(self.elector, LeaseElector):
            return self.elector.seconds_until_next_attempt()
        return self.leader_settings.timing.retry_interval

    def _time_until_renewal(self) -> float:
        if isinstance(self.elector, LeaseElector):
            return self.elector.seconds_until_renewal()
        return self.leader_settings.timing.renew_interval

    @property
    def term(self) -> int | None:
        """The lease term this replica leads under, if it leads with a lease."""
        return getattr(self.elector, "term", None)

    @property
    def is_leader(self) -> bool:
        return self._leading

    # -- takeover: shared run history --------------------------------------------

    def adopt_shared_history(self) -> None:
        """Before the first dispatch of a term: adopt what earlier leaders dispatched.

        Schedulers that keep their own shared history (a database) override this
        to reload it; raising StoreUnavailable postpones dispatch to a later tick.
        """
        if isinstance(self.elector, LeaseElector):
            records = decode_history(self.elector.load_history())
            gone = apply_history(self.schedule, records, self.app.timezone)
            if gone:
                self.elector.forget(gone)
        if self.catch_up_policy == "skip":
            self._skip_missed_runs()
        self._resume_catch_up = None

    def _skip_missed_runs(self) -> None:
        """Advance every entry already due to now, claiming it without publishing."""
        runs = {}
        for name, entry in list(self.schedule.items()):
            if self.is_due(entry)[0]:  # type: ignore[attr-defined]
                entry.last_run_at = entry.default_now()
                self.schedule[name] = entry
                runs[name] = self._record(entry)
                logger.info("leaderbeat: skipping runs of %r missed while no replica led", name)
        if runs:
            self._claim(runs)

    # -- fenced dispatch ---------------------------------------------------------

    #: Most runs claimed in one store call when several entries are due at once.
    claim_batch = 100

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Advance the entry as the base does, with its run claimed in the store first.

        One store round trip per run would halve the dispatch rate of a burst
        (10,000 entries due at once), so the claim that reserves one entry
        also claims the runs of the other entries due now, up to
        ``claim_batch`` in all, in the same fenced call; their own reserves
        then take the run already claimed under the current term. Every run
        is still claimed before it is published, and every tick checks the
        lease's local deadline first, so no run of a batch is published once
        that deadline has passed. What a batch costs:

        - A leader that dies, or loses its lease, in the middle of a batch has
          claimed runs it never publishes. Those runs (at most
          ``claim_batch - 1``) are lost: the next leader adopts them from the
          history as done and does not repeat them, like the one run lost when
          a leader dies between claim and publish.
        - The store is asked once per batch, so a lease the store dropped
          without the leader's clock seeing time pass (data lost in the store,
          a frozen virtual machine) stops the leader at its next claim or
          renewal, not at its next run. Runs published meanwhile were claimed
          under a term that was current, so a leader that adopted the history
          does not repeat them, and ``FencedTask`` workers drop them once they
          have seen a newer term.

        A lone due entry is claimed alone, exactly as before.

        A run the store refuses for its data (:class:`ClaimRejected`) is
        advanced but not published, and reported; the lease and every other
        run are unaffected (see :mod:`celery_leaderbeat.rejections`).
        """
        new_entry: ScheduleEntry = super().reserve(entry)  # type: ignore[misc]
        if isinstance(self.elector, LeaseElector) and not self._shadowing:
            claimed = self._claimed.pop(new_entry.name, None)
            if claimed is not None and claimed[0] == self.term \
                    and claimed[2] == new_entry.total_run_count:
                if claimed[1] is None:
                    self._withheld.add(new_entry.name)
                else:
                    new_entry.last_run_at = claimed[1]  # as recorded in the store
            else:
                try:
                    self._claim_due_runs(new_entry)
                except DispatchPaused:
                    self._put_back(entry)
                    raise
        return new_entry

    def _put_back(self, entry: ScheduleEntry) -> None:
        """A run held for a pause is not run: the entry stays due, for the catch-up
        at resume (``next(entry)`` made a new entry; this one is as it was)."""
        self.schedule[entry.name] = entry

    def _claim_due_runs(self, first: ScheduleEntry) -> None:
        """Claim ``first``'s run and those of up to claim_batch - 1 others due now."""
        term = self.term or 0
        if any(claim[0] != term for claim in self._claimed.values()):
            self._claimed.clear()  # claims of an earlier term are worth nothing
        runs = {first.name: self._record(first)}
        batch: dict[str, tuple[int, datetime | None, int]] = {}
        for event in _due_events(self._heap or [], time.time()):
            if len(runs) >= self.claim_batch:
                break
            entry = event[2]
            if entry.name in runs or entry.name in self._claimed \
                    or not self.is_due(entry)[0]:  # type: ignore[attr-defined]
                continue
            count = entry.total_run_count + 1
            runs[entry.name] = RunRecord(first.last_run_at, count, term,
                                         self.leader_settings.identity).encode()
            batch[entry.name] = (term, first.last_run_at, count)
        refused = self._claim(runs)
        if first.name in refused:
            self._withheld.add(first.name)
        self._claimed.update(batch)
        self._claimed.update({name: (term, None, batch[name][2]) for name in refused
                              if name in batch})

    def _record(self, entry: ScheduleEntry) -> str:
        return RunRecord(entry.last_run_at, entry.total_run_count, self.term or 0,
                         self.leader_settings.identity).encode()

    def _claim(self, runs: dict[str, str]) -> frozenset[str]:
        """Claim ``runs``; return the entries whose runs the store refused (reported)."""
        if isinstance(self.elector, LeaseElector):
            try:
                self.elector.claim(runs)
            except ClaimRejected as rejected:
                self._rejected_runs.report(rejected, self.metrics)
                return frozenset(rejected.names)
        return frozenset()

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        if self._shadowing:
            return
        if entry.name in self._withheld:  # its claim was refused: never published
            self._withheld.discard(entry.name)
            return
        super().apply_entry(entry, producer=producer)  # type: ignore[misc]

    @property
    def producer(self) -> Any:
        """The base's producer, but none while shadowing: a standby never connects to publish."""
        if self._shadowing:
            return None
        cached = self.__dict__.get("_leaderbeat_producer")
        if cached is None:
            cached = self.Producer(self._ensure_connected(), auto_declare=False)  # type: ignore[attr-defined]
            self.__dict__["_leaderbeat_producer"] = cached
        return cached

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        """Publish with the fencing token (lease, term, scheduled time) in the headers."""
        due = _scheduled_at(entry) if self.metrics is not None else None
        with self._fencing_headers(entry):
            result = super().apply_async(  # type: ignore[misc]
                entry, producer=producer, advance=advance, **kwargs)
        if self.metrics is not None:
            self.metrics.dispatched(due)
        return result

    @contextlib.contextmanager
    def _fencing_headers(self, entry: ScheduleEntry) -> Iterator[None]:
        term = self.term
        if term is None:
            yield
            return
        original = entry.options
        headers = dict((original or {}).get("headers") or {})
        headers.update({
            LEASE_HEADER: self.leader_settings.lease_name,
            TERM_HEADER: term,
            SCHEDULED_AT_HEADER: _scheduled_at(entry),
        })
        entry.options = {**(original or {}), "headers": headers}
        try:
            yield
        finally:
            entry.options = original

    # -- lifecycle ---------------------------------------------------------------

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        if self._elector_chosen_implicitly and isinstance(
                getattr(self.elector, "store", None), FileLeaseStore):
            logger.warning(
                "leaderbeat: no leaderbeat_elector set and the broker is not Redis: using a "
                "file lock (%s), which only protects replicas on this one host. Set "
                "leaderbeat_elector (CELERY_LEADERBEAT_ELECTOR) to share leadership "
                "between hosts.", self.elector.describe())  # type: ignore[attr-defined]

    def close(self) -> None:
        """Release the lease first, so a standby takes over at once; then close.

        Beat's SIGTERM handler calls this from inside whatever the main thread
        was doing, often a tick's store or database call. That call may hold
        the very connection (and lock: psycopg's, for the Django store) that
        the release needs, and waiting for it would hang the process. So a
        close that interrupts a tick or a sync only marks itself: the
        handler's SystemExit unwinds the interrupted call, and beat's loop
        then closes the scheduler again, from the top of the stack.
        """
        if self._busy:
            self._close_deferred = True
            return
        if not self._closed:
            self._closed = True
            if self._registry is not None:
                with contextlib.suppress(StoreUnavailable):  # else it expires on its own
                    self._registry.withdraw(self.leader_settings.identity)
            for hook in ("release", "close"):
                method = getattr(self.elector, hook, None)
                if method is None:
                    continue
                try:
                    method()
                except Exception as exc:
                    logger.warning("leaderbeat: elector %s() failed: %r", hook, exc)
            if self._leading:
                self._stop_leading("released on shutdown", cause=LeadershipLost.RELEASED)
            if self.metrics is not None:
                self.metrics.close()
        super().close()  # type: ignore[misc]

    @property
    def info(self) -> str:
        """The beat banner: elector, lease, identity and timings (no secrets)."""
        s = self.leader_settings
        t = s.timing
        describe = getattr(self.elector, "describe", None)
        where = describe() if callable(describe) else repr(self.elector)
        how = " (default)" if self._elector_chosen_implicitly else ""
        lines = [
            super().info,  # type: ignore[misc]
            f"    . leaderbeat -> {where}{how}",
            f"    . lease -> {s.lease_name!r} as {s.identity!r}",
            f"    . lease timing -> ttl {t.ttl}s, renew every {t.renew_interval}s, "
            f"standby retry every {t.retry_interval}s",
            self._pause_banner(),
        ]
        return "\n".join(line for line in lines if line)

    def _pause_banner(self) -> str:
        """A banner line when dispatch is paused at start-up ('' when not, or unknown)."""
        pauses = pauses_of(getattr(self.elector, "store", None))
        if pauses is None:
            return ""
        try:
            pause = pauses.read_pause().pause
        except StoreUnavailable:
            return ""
        if pause is None:
            return ""
        return (f"    . dispatch -> PAUSED {pause.describe()}: nothing is sent until "
                "`celery leaderbeat resume`")


def _due_events(heap: list[Any], now: float) -> Iterator[Any]:
    """The heap's events timed at or before ``now``, found without scanning the heap.

    A heap's children are never earlier than their parent, so the search
    stops at every event still in the future: the cost follows the number
    of due events taken, not the size of the schedule.
    """
    pending = [0]
    while pending:
        i = pending.pop()
        if i < len(heap) and heap[i][0] <= now:
            yield heap[i]
            pending += (2 * i + 1, 2 * i + 2)


def _scheduled_at(entry: ScheduleEntry) -> str | None:
    """When this run fell due, as ISO 8601: last run plus what the schedule says."""
    try:
        remaining: timedelta = entry.schedule.remaining_estimate(entry.last_run_at)
        now: datetime = entry.default_now()
    except Exception:  # exotic schedules without an estimate
        return None
    return (now + min(remaining, timedelta(0))).isoformat()


class LeaderScheduler(LeaderSchedulerMixin, PersistentScheduler):  # type: ignore[misc]
    """Celery's ``PersistentScheduler``, dispatching only while this replica leads."""
