"""Django integration: a lease model on the Django database and django-celery-beat support.

Add ``"celery_leaderbeat.django"`` to ``INSTALLED_APPS``, run
``python manage.py migrate celery_leaderbeat``, then use

- ``CELERY_LEADERBEAT_ELECTOR = "django://"`` (or ``"django://<alias>"``) to
  keep the lease in the Django database, and
- ``CELERY_BEAT_SCHEDULER = "celery_leaderbeat.django.LeaderDatabaseScheduler"``
  to run several django-celery-beat schedulers with one leader.

Nothing is imported here eagerly: Django imports this package while it loads
its apps, before models may be touched.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LeaderDatabaseScheduler"]


def __getattr__(name: str) -> Any:
    if name == "LeaderDatabaseScheduler":
        from .schedulers import LeaderDatabaseScheduler

        return LeaderDatabaseScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
