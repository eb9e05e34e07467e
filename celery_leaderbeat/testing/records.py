"""Heartbeat records as an elector sends them, for tests of a store's replica registry."""

from __future__ import annotations

from datetime import datetime, timezone

from ..registry import STANDBY, ReplicaRecord

__all__ = ["replica_record"]


def replica_record(identity: str, expires_in: float = 30.0) -> ReplicaRecord:
    """A heartbeat record as the elector sends it: in the role it calls in (a
    standby's), which the store changes to the role the call leaves it in."""
    return ReplicaRecord(identity=identity, host="host", pid=1, version="v", celery_version="c",
                         role=STANDBY, term=None, last_tick_at=datetime.now(timezone.utc),
                         expires_in=expires_in)
