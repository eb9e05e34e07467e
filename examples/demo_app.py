"""The Celery app that every beat replica of the cluster demo runs.

All replicas import this same module. What differs between them (their
identity) and what the demo chooses at run time (broker, lease name, queue,
timings) arrives through the environment, read by
:func:`celery_leaderbeat.testing.replica_app`. The schedule is a 1 s
interval entry and an every-minute crontab entry.

The demo only records what beat publishes. To have the tasks executed as
well, start a worker on this module with the same environment.
"""

from __future__ import annotations

from celery_leaderbeat.testing import EVERY_MINUTE, EVERY_SECOND, replica_app

app = replica_app("demo_app")


@app.task(name=EVERY_SECOND)  # type: ignore[misc,untyped-decorator]
def every_second() -> str:
    return "tick"


@app.task(name=EVERY_MINUTE)  # type: ignore[misc,untyped-decorator]
def every_minute() -> str:
    return "minute"
