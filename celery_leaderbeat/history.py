"""Shared run history: what the leaders have dispatched, kept in the lease store.

Each schedule entry has one run record: when it last ran, how many times,
under which term, and which leader (by identity) claimed the run. The
leader claims a record (fenced by its term) before it publishes; a replica
that becomes leader loads every record before its first dispatch, so it
neither repeats nor skips what earlier leaders did.

Records are encoded once here, so every store keeps the same format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any

__all__ = ["RunRecord", "apply_history", "decode_history"]

logger = logging.getLogger("celery.beat.leaderbeat")


@dataclass(frozen=True)
class RunRecord:
    """One entry's last dispatch, as every replica sees it.

    ``last_run_at`` is Celery's ``last_run_at`` of the run: the time the
    leader reserved it (within one tick of when it fell due), from which
    the entry's next due time is counted. ``leader`` is the
    ``leaderbeat_identity`` of the replica that claimed the run; records
    written before it was kept decode with ``leader=None``, and a replica
    of such a version reading a record with it ignores the extra key.
    """

    last_run_at: datetime
    total_run_count: int
    term: int
    leader: str | None = None

    def encode(self) -> str:
        stamp = self.last_run_at
        if stamp.tzinfo is None:  # Celery's naive datetimes are UTC
            stamp = stamp.replace(tzinfo=timezone.utc)
        data: dict[str, Any] = {
            "last_run_at": stamp.isoformat(),
            "total_run_count": self.total_run_count,
            "term": self.term,
        }
        if self.leader is not None:
            data["leader"] = self.leader
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> RunRecord:
        data = json.loads(text)
        leader = data.get("leader")
        return cls(
            last_run_at=datetime.fromisoformat(data["last_run_at"]),
            total_run_count=int(data["total_run_count"]),
            term=int(data["term"]),
            leader=None if leader is None else str(leader),
        )


def decode_history(raw: Mapping[str, str]) -> dict[str, RunRecord]:
    """Decode a store's history, skipping (and logging) unreadable records."""
    records = {}
    for name, text in raw.items():
        try:
            records[name] = RunRecord.decode(text)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("leaderbeat: ignoring unreadable run record for %r: %r", name, exc)
    return records


def apply_history(
    schedule: MutableMapping[str, Any], records: Mapping[str, RunRecord], tz: tzinfo
) -> list[str]:
    """Set each entry's last run from the shared history; return names no longer scheduled.

    The store is authoritative: a local run is only recorded after its claim
    succeeded, so the store never lags behind this replica's own runs.
    Entries without a record keep their local state.
    """
    for name, record in records.items():
        entry = schedule.get(name)
        if entry is None:
            continue
        entry.last_run_at = record.last_run_at.astimezone(tz)
        entry.total_run_count = record.total_run_count
        # Shelve-backed schedules (PersistentScheduler) persist on reassignment.
        schedule[name] = entry
    return [name for name in records if name not in schedule]
