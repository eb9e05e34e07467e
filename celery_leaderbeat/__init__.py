"""celery-leaderbeat: several ``celery beat`` replicas, one leader, fenced dispatch.

Run ``celery -A proj beat -S celery_leaderbeat.LeaderScheduler`` on as many
hosts as you like: on every tick each replica asks its elector, and only the
leader publishes.
"""

from .elector import CallableElector, Elector, NotLeader, StaticElector
from .lease import (
    ClaimRejected,
    FencedOut,
    LeadershipLost,
    LeaseElector,
    LeaseHeld,
    LeaseRecord,
    LeaseStore,
    LeaseTiming,
    Renewal,
    StoreMisconfigured,
    StoreUnavailable,
)
from .scheduler import LeaderScheduler, LeaderSchedulerMixin

__version__ = "0.1.0"

__all__ = [
    "CallableElector",
    "ClaimRejected",
    "Elector",
    "FencedOut",
    "LeaderScheduler",
    "LeaderSchedulerMixin",
    "LeadershipLost",
    "LeaseElector",
    "LeaseHeld",
    "LeaseRecord",
    "LeaseStore",
    "LeaseTiming",
    "NotLeader",
    "Renewal",
    "StaticElector",
    "StoreMisconfigured",
    "StoreUnavailable",
    "__version__",
]
