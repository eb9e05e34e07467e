"""django-celery-beat with a leader: several ``DatabaseScheduler`` replicas, one dispatching.

The schedule and its run history are the database's own ``PeriodicTask``
rows, so the replicas already share them; what the leader adds is care with
``last_run_at``:

- every run is claimed in the lease store under the leader's term (fenced),
  then its ``last_run_at`` is saved at once, not at the next periodic sync;
- saves only ever move ``last_run_at`` forward, so a late write from a
  replica that has since lost the lease cannot undo a newer run;
- a replica that becomes leader reloads the schedule from the database
  before its first dispatch (taking any newer run the lease store's history
  holds, in case the old leader claimed a run and died before saving it).

Schedule edits made in the admin reach the leader through django-celery-beat's
own change tracking, and reach a new leader through the reload. Standbys
keep no shadow of the schedule: the database is the shared state.
"""

from __future__ import annotations

import datetime
from typing import Any

from celery.utils.log import get_logger
from celery.utils.time import maybe_make_aware
from django.db import close_old_connections
from django.db.models import Q
from django.db.utils import DatabaseError, InterfaceError
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from ..history import RunRecord, decode_history
from ..lease import FencedOut, LeaseElector, StoreUnavailable
from ..pause import DispatchPaused
from ..scheduler import LeaderSchedulerMixin

__all__ = ["LeaderDatabaseScheduler", "LeaderModelEntry"]

logger = get_logger(__name__)


class LeaderModelEntry(ModelEntry):
    """A ``ModelEntry`` whose save moves ``last_run_at`` forward only.

    One UPDATE of the two run fields, so admin edits made meanwhile to other
    fields are kept, and no change signal fires (a run is not a schedule edit).
    """

    app: Any
    model: Any
    name: str
    last_run_at: datetime.datetime
    total_run_count: int

    def save(self) -> None:
        rows = type(self.model)._default_manager.filter(pk=self.model.pk)
        newer = Q(last_run_at__isnull=True) | Q(last_run_at__lt=self.last_run_at)
        rows.filter(newer).update(last_run_at=self.last_run_at,
                                  total_run_count=self.total_run_count)

    def adopt(self, record: RunRecord) -> bool:
        """Take ``record`` if it is a later run than ours; True if it was."""
        if maybe_make_aware(self.last_run_at) >= record.last_run_at:
            return False
        stamp = record.last_run_at.astimezone(self.app.timezone)
        if self.last_run_at.tzinfo is None:  # DJANGO_CELERY_BEAT_TZ_AWARE = False: naive UTC
            stamp = record.last_run_at.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        self.last_run_at = self.model.last_run_at = stamp
        self.total_run_count = self.model.total_run_count = max(
            record.total_run_count, self.total_run_count)
        return True


class LeaderDatabaseScheduler(LeaderSchedulerMixin, DatabaseScheduler):  # type: ignore[misc]
    """django-celery-beat's ``DatabaseScheduler``, dispatching only while this replica leads.

    ``CELERY_BEAT_SCHEDULER = "celery_leaderbeat.django.LeaderDatabaseScheduler"``.
    The lease lives in the Django database (``django://``) unless
    ``CELERY_LEADERBEAT_ELECTOR`` says otherwise.
    """

    Entry = LeaderModelEntry
    default_elector = "django://"
    shadow_standby = False

    _dirty: set[str]
    _schedule: dict[str, Any]

    @classmethod
    def configured_schedule(cls, app: Any) -> dict[str, LeaderModelEntry]:
        """Every enabled ``PeriodicTask``, as entries (for ``leaderbeat history``).

        All of them: ``DatabaseScheduler.all_as_schedule`` leaves out crontab
        rows far from the current hour, which would read as removed entries.
        Built without a scheduler instance, so nothing is elected or written.
        """
        from django_celery_beat.models import PeriodicTask

        schedule = {}
        for model in PeriodicTask.objects.enabled():
            try:
                schedule[model.name] = cls.Entry(model, app=app)
            except ValueError:  # as all_as_schedule: a row beat cannot load either
                continue
        return schedule

    def reserve(self, entry: LeaderModelEntry) -> LeaderModelEntry:
        """Claim the run (fenced), then save it at once."""
        try:
            new_entry: LeaderModelEntry = super().reserve(entry)
        except (FencedOut, DispatchPaused):
            # Never published: a later sync must not record it as run.
            self._dirty.discard(entry.name)
            raise
        # As celery's Scheduler.reserve does (DatabaseScheduler does not): a heap
        # rebuilt from the schedule must see this run, or it would send it again.
        if self._schedule.get(new_entry.name) is entry:
            self._schedule[new_entry.name] = new_entry
        self._save_run(new_entry)
        return new_entry

    def _save_run(self, entry: LeaderModelEntry) -> None:
        try:
            entry.save()
        except (DatabaseError, InterfaceError) as exc:
            # The claim is in the lease store; the periodic sync retries the save.
            logger.warning("leaderbeat: could not save the run of %r yet: %r", entry.name, exc)
            return
        self._dirty.discard(entry.name)

    def adopt_shared_history(self) -> None:
        """Reload the schedule from the database before the first dispatch of a term."""
        try:
            close_old_connections()
            self.sync()  # runs this replica claimed in an earlier term, if still unsaved
            self._last_timestamp = self.Changes.last_change()
            schedule = self.all_as_schedule()
        except (DatabaseError, InterfaceError) as exc:
            raise StoreUnavailable(f"cannot reload the schedule from the database: {exc!r}"
                                   ) from exc
        self._schedule = schedule
        self._heap_invalidated = False  # the mixin rebuilds the heap from this schedule
        self._initial_read = False
        self._last_full_sync = datetime.datetime.now()
        if isinstance(self.elector, LeaseElector):
            for name, record in decode_history(self.elector.load_history()).items():
                entry = schedule.get(name)
                if entry is not None and entry.adopt(record):
                    logger.info("leaderbeat: %r ran later than the database says; "
                                "taking the claimed run", name)
                    self._save_run(entry)
        if self.catch_up_policy == "skip":
            before = {name: entry.last_run_at for name, entry in schedule.items()}
            self._skip_missed_runs()
            for name, entry in schedule.items():
                if entry.last_run_at != before[name]:
                    entry.model.last_run_at = entry.last_run_at
                    self._save_run(entry)
        self._resume_catch_up = None

    def _put_back(self, entry: LeaderModelEntry) -> None:
        """Nothing to put back: the resume reloads the schedule from the database
        (``next()`` moved the run into the model, which is not saved)."""
