"""A cluster-wide pause of dispatch: ``celery leaderbeat pause`` and ``resume``.

A pause lives in the lease store beside the lease and is fenced like the
lease: the store's claim operation refuses to record runs while a pause is
in effect, in the same atomic step that checks owner and term. So once
``pause`` has returned, no run is claimed, hence none is published, by the
leader that has not yet heard of the pause nor by a leader elected during
it. A claim refused for a pause is not a lost lease: the store raises
:class:`DispatchPaused`, the leader keeps its lease, holds dispatch
(entries are not advanced) and learns of the resume at its next renewal.

What a store adds for it (every built-in store does; a custom store that
does not simply cannot be paused):

- ``claim`` raises :class:`DispatchPaused` (writing nothing) while a pause is
  in effect, judged inside the same atomic operation as the owner and term;
- ``renew`` answers :attr:`~celery_leaderbeat.lease.Renewal.PAUSED` instead of
  ``RENEWED`` when it renewed the lease and a pause is in effect, so the
  leader learns of a pause and of the resume within one renew interval;
- the :class:`DispatchPauses` methods below, for the command line and for
  the leader to read who paused and how to catch up.

Records are encoded here, once, so every store keeps the same format. A
pause with a duration expires on the store's clock where it has one (Redis
``PX``, the database's clock in SQL, an etcd lease of whole seconds), on the
host's clock for the file store.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DispatchPause",
    "DispatchPaused",
    "DispatchPauses",
    "DispatchResume",
    "PauseState",
    "now",
    "operator",
    "parse_duration",
    "pauses_of",
]


@dataclass(frozen=True)
class DispatchPause:
    """A hold on every dispatch of one lease, as ``leaderbeat pause`` wrote it.

    ``paused_at`` is the pausing host's wall clock, for people and to tell
    one pause from the next. ``duration`` is the ``--for`` asked (seconds),
    None until ``resume``. ``expires_in`` is filled in by the store when read:
    seconds left on the store's clock, None without a duration.
    """

    paused_by: str
    paused_at: datetime | None
    reason: str = ""
    duration: float | None = None
    expires_in: float | None = None

    @property
    def until(self) -> datetime | None:
        """When a pause with a duration ends, on the pausing host's clock."""
        if self.paused_at is None or self.duration is None:
            return None
        return self.paused_at + timedelta(seconds=self.duration)

    def encode(self) -> str:
        return json.dumps({
            "paused_by": self.paused_by,
            "paused_at": None if self.paused_at is None else self.paused_at.isoformat(),
            "reason": self.reason,
            "duration": self.duration,
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes, expires_in: float | None = None) -> DispatchPause:
        """The record ``encode`` wrote; an unreadable one still counts as a pause."""
        try:
            data: dict[str, Any] = json.loads(text)
            stamp = data.get("paused_at")
            duration = data.get("duration")
            return cls(str(data.get("paused_by") or "unknown"),
                       None if stamp is None else datetime.fromisoformat(stamp),
                       str(data.get("reason") or ""),
                       None if duration is None else float(duration), expires_in)
        except (ValueError, TypeError, AttributeError):
            return cls("unknown", None, "unreadable pause record", None, expires_in)

    def same_as(self, other: DispatchPause | None) -> bool:
        """Whether ``other`` is this pause (read at another time), not a later one."""
        return other is not None and replace(other, expires_in=None) == replace(
            self, expires_in=None)

    def describe(self) -> str:
        """One line for logs, banners and ``status``."""
        since = "" if self.paused_at is None else f" since {self.paused_at.isoformat()}"
        why = f" ({self.reason})" if self.reason else ""
        if self.expires_in is not None:
            until = f", for {self.expires_in:.0f} s more"
        elif self.until is not None:
            until = f", until {self.until.isoformat()}"
        else:
            until = ", until resumed"
        return f"by {self.paused_by}{since}{why}{until}"


@dataclass(frozen=True)
class DispatchResume:
    """The latest ``leaderbeat resume``: who, when, and how the leader catches up.

    ``catch_up`` is ``once`` or ``skip`` as given with ``--catch-up``, None
    for the ``leaderbeat_catch_up`` setting. ``ended`` is the pause it ended,
    kept by the store in the same atomic step, so the leader applies the
    choice only to the pause it saw (not to one that expired by itself).
    """

    resumed_by: str
    resumed_at: datetime | None
    catch_up: str | None = None
    ended: DispatchPause | None = None

    def encode(self) -> str:
        """The resume without ``ended``, which the store keeps beside it."""
        return json.dumps({
            "resumed_by": self.resumed_by,
            "resumed_at": None if self.resumed_at is None else self.resumed_at.isoformat(),
            "catch_up": self.catch_up,
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes, ended: str | bytes | None) -> DispatchResume:
        try:
            data: dict[str, Any] = json.loads(text)
            stamp = data.get("resumed_at")
            catch_up = data.get("catch_up")
            resume = cls(str(data.get("resumed_by") or "unknown"),
                         None if stamp is None else datetime.fromisoformat(stamp),
                         catch_up if catch_up in ("once", "skip") else None)
        except (ValueError, TypeError, AttributeError):
            resume = cls("unknown", None)
        return replace(resume, ended=None if ended is None else DispatchPause.decode(ended))


@dataclass(frozen=True)
class PauseState:
    """The pause in effect (None when dispatch runs) and the latest resume."""

    pause: DispatchPause | None
    last_resume: DispatchResume | None = None


class DispatchPaused(Exception):
    """The store refused a claim because dispatch is paused: nothing was written.

    Not a lost lease: the leader keeps it and holds dispatch. ``pause`` is the
    pause in effect as the store read it.
    """

    def __init__(self, pause: DispatchPause) -> None:
        super().__init__(f"dispatch paused {pause.describe()}")
        self.pause = pause


@runtime_checkable
class DispatchPauses(Protocol):
    """What a store offers to pause and resume dispatch (beside the claim and
    renewal answers described in this module's docstring)."""

    def pause(self, pause: DispatchPause) -> None:
        """Hold dispatch from now on, replacing any pause in effect; for
        ``pause.duration`` seconds (on the store's clock) when given."""
        ...  # pragma: no cover

    def resume(self, resume: DispatchResume) -> DispatchPause | None:
        """End the pause in effect and keep ``resume`` (with the pause it ended)
        as the latest resume, atomically; return that pause. None, writing
        nothing, when no pause is in effect."""
        ...  # pragma: no cover

    def read_pause(self) -> PauseState:
        """The pause in effect (with ``expires_in``) and the latest resume."""
        ...  # pragma: no cover


def pauses_of(store: Any) -> DispatchPauses | None:
    """The store as a :class:`DispatchPauses`, or None when it cannot be paused."""
    return store if isinstance(store, DispatchPauses) else None


def operator() -> str:
    """Who runs the command, for the record: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now() -> datetime:
    """The wall clock in UTC, for the records' stamps (never for expiry)."""
    return datetime.now(timezone.utc)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)?", re.I)
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1d`` or sums like ``1h30m``.

    Raises ValueError for anything else, or for a duration that is not positive.
    """
    compact = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(compact):
        match = _DURATION.match(compact, pos)
        if match is None or match.end() == pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2) or "s"]
        pos = match.end()
    if not compact or pos != len(compact) or total <= 0:
        raise ValueError(f"{text!r} is not a positive duration such as 90s, 15m, 2h or 1h30m")
    return total
