"""Runs the store refused to claim for their data: skipped, reported, never a lost lease.

A claim can fail for one entry's data rather than for the lease: a CHECK
constraint, a value the database cannot store (PostgreSQL text cannot hold
NUL), an encoding (see :class:`~celery_leaderbeat.lease.ClaimRejected`).
Such a run is not published (nothing was claimed for it) and the entry
runs again at its next scheduled time, so a bad entry costs one store call
per run and never a tick loop. The leader keeps its lease and every other
entry keeps its timing.

The refusal is logged at ERROR, naming the entry: the first time, and then
at most once per :attr:`RejectedRuns.repeat_after` seconds per entry, with
the number of runs refused in between, so a frequent entry neither floods
the log nor goes quiet. Metrics count every refused run
(``leaderbeat_rejected_claims_total``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .lease import ClaimRejected

__all__ = ["RejectedRuns"]

logger = logging.getLogger("celery.beat.leaderbeat")


class RejectedRuns:
    """Reports refused claims of one scheduler, paced per entry on the monotonic clock."""

    #: Seconds between two ERROR reports about the same entry.
    repeat_after = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: entry name -> (monotonic time of its last report, runs refused since).
        self._reported: dict[str, tuple[float, int]] = {}

    def report(self, rejected: ClaimRejected, metrics: Any = None) -> None:
        """Log (paced) and count each run ``rejected`` names."""
        now = self._clock()
        for name in rejected.names:
            if metrics is not None:
                metrics.claim_rejected()
            last = self._reported.get(name)
            if last is not None and now - last[0] < self.repeat_after:
                self._reported[name] = (last[0], last[1] + 1)
                continue
            since = f"; {last[1]} more refused since the last report" if last and last[1] else ""
            logger.error(
                "leaderbeat: run of %r not sent: the store refused its claim (%s); the entry "
                "runs again at its next time, other entries are not affected%s",
                name, rejected.reason, since)
            self._reported[name] = (now, 0)
