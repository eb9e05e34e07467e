"""The Celery app the Kubernetes example runs (``celery -A proj``): what yours needs.

Every beat replica of the Deployment runs this module. Its settings come
from the environment the manifest sets, so each pod names itself after its
pod (``CELERY_LEADERBEAT_IDENTITY`` from the downward API) and the probes,
which run in the same container with the same environment, open the same
store and judge the same identity. In your own app, read these four
variables the same way (Django: ``CELERY_LEADERBEAT_IDENTITY =
os.environ.get(...)`` in settings.py) and keep your schedule.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("proj")
app.conf.update(
    broker_url=os.environ["CELERY_BROKER_URL"],
    leaderbeat_elector=os.environ["CELERY_LEADERBEAT_ELECTOR"],
    leaderbeat_identity=os.environ.get("CELERY_LEADERBEAT_IDENTITY"),
    leaderbeat_lease_name=os.environ.get("CELERY_LEADERBEAT_LEASE_NAME", "proj"),
    task_default_queue=os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery"),
    beat_schedule={
        "heartbeat": {"task": "proj.heartbeat", "schedule": 10.0},
    },
)


@app.task(name="proj.heartbeat")  # type: ignore[misc,untyped-decorator]
def heartbeat() -> str:
    return "beat"
