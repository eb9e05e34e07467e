"""The run history as an operator reads it: the store's records beside the app's schedule.

What ``celery -A proj leaderbeat history`` prints. For each entry: its last
run as the lease store recorded it (the time, run count, term and identity
of the leader that claimed it), and when it is next due, computed as the
leader computes it: the entry's schedule counted from that last run. Both
sides come from outside any replica: the records from the store's
``load_history()``, the schedule from the app's configuration
(``beat_schedule``, or the scheduler class's own source, see
:func:`configured_schedule`). So the report is read-only and needs no live
replica.

An entry can be on one side only: scheduled but never run (no record in
the store yet), or recorded but no longer in the schedule (removed from
the configuration; the next leader forgets its record at takeover).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.beat import ScheduleEntry, Scheduler

from .history import RunRecord, decode_history
from .lease import LeaseStore

__all__ = ["HISTORY_SCHEMA_VERSION", "NEVER_RUN", "RAN", "REMOVED", "configured_schedule",
           "history_report"]

#: Version of the ``history --json`` document; it grows only by new keys.
HISTORY_SCHEMA_VERSION = 1

#: ``state`` of an entry: scheduled and run, scheduled and never run, run and no
#: longer scheduled.
RAN, NEVER_RUN, REMOVED = "ran", "never run", "removed"


def configured_schedule(app: Any, scheduler_class: Any = None) -> dict[str, ScheduleEntry]:
    """The entries the replicas' scheduler dispatches, read from where it reads them.

    A scheduler class that keeps its schedule elsewhere than ``beat_schedule``
    (django-celery-beat's tables) says so with a ``configured_schedule(app)``
    class method; every other one gets what Celery's own ``Scheduler`` loads:
    ``beat_schedule`` plus Celery's default entries (``celery.backend_cleanup``
    where the result backend needs it). Nothing is written anywhere.
    Errors of the source (an import, a database) propagate.
    """
    own = getattr(scheduler_class, "configured_schedule", None)
    if own is not None:
        entries: dict[str, ScheduleEntry] = own(app)
        return entries
    base = Scheduler(app, lazy=True)  # in memory only: no schedule file, no elector
    Scheduler.setup_schedule(base)
    return dict(base.schedule)


def history_report(store: LeaseStore, lease_name: str, schedule: Mapping[str, ScheduleEntry],
                   tz: Any, entry: str | None = None) -> dict[str, Any]:
    """The ``history --json`` document (see docs/operations.md for its schema).

    ``tz`` is the app's timezone, in which Celery's schedules count.
    ``entry`` limits the report to one name (an empty ``entries`` list when
    neither the schedule nor the store knows it). Raises ``StoreUnavailable``
    when the store cannot be read.
    """
    records = decode_history(store.load_history())
    now = datetime.now(timezone.utc)
    names = sorted(set(schedule) | set(records))
    if entry is not None:
        names = [name for name in names if name == entry]
    return {
        "schema": HISTORY_SCHEMA_VERSION,
        "lease_name": lease_name,
        "store": store.description,
        "now": now.isoformat(),
        "entries": [_entry_doc(name, schedule.get(name), records.get(name), now, tz)
                    for name in names],
    }


def _entry_doc(name: str, scheduled: ScheduleEntry | None, record: RunRecord | None,
               now: datetime, tz: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "state": REMOVED if scheduled is None else NEVER_RUN if record is None else RAN,
        "task": None if scheduled is None else scheduled.task,
        "schedule": None if scheduled is None else str(scheduled.schedule),
        "last_run": None if record is None else {
            "last_run_at": _utc(record.last_run_at),
            "total_run_count": record.total_run_count,
            "term": record.term,
            "leader": record.leader,
        },
        "next_due_at": None,
        "due_in": None,
    }
    if scheduled is not None:
        # As the leader counts: from the recorded run (apply_history gives the
        # entry exactly this last_run_at), else from the entry as loaded now.
        since = scheduled.last_run_at if record is None else record.last_run_at.astimezone(tz)
        remaining = _remaining(scheduled, since, now.astimezone(tz))
        if remaining is not None:
            doc["next_due_at"] = _utc(now + remaining)
            doc["due_in"] = round(remaining.total_seconds(), 3)
    return doc


def _remaining(entry: ScheduleEntry, since: datetime, now: datetime) -> timedelta | None:
    """Time from ``now`` until the entry falls due after ``since``; negative when overdue."""
    # The schedule's own clock, set to our "now": next_due_at = now + remaining
    # is then exactly the due time, not off by the microseconds between two reads.
    # The entry is this report's own copy, built for it.
    entry.schedule.nowfun = lambda: now
    try:
        remaining: timedelta = entry.schedule.remaining_estimate(since)
    except Exception:  # schedules without an estimate (custom schedule classes)
        return None
    return remaining


def _utc(stamp: datetime) -> str:
    if stamp.tzinfo is None:  # Celery's naive datetimes are UTC
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc).isoformat()
