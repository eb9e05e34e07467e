"""Settings for the example: django-celery-beat, with celery-leaderbeat choosing the leader.

Environment variables (all optional) so the same project runs anywhere:

- ``EXAMPLE_DATABASE``: ``postgresql://user:pw@host:port/name``,
  ``mysql://user:pw@host:port/name`` or ``sqlite:////absolute/path.db``
  (default: ``db.sqlite3`` beside ``manage.py``).
- ``CELERY_BROKER_URL``: default ``redis://localhost:6379/0``.
- ``EXAMPLE_QUEUE``: the queue tasks are sent to (default ``celery``).
- ``EXAMPLE_EVERY``: seconds between heartbeats (default 10).
- ``LEADERBEAT_IDENTITY``: how this beat is named in the lease (default host:pid).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "celery_leaderbeat.django",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "proj.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
STATIC_URL = "static/"
USE_TZ = True
TIME_ZONE = "UTC"


def database(url: str) -> dict[str, Any]:
    """One DATABASES entry from a URL (just enough for the example)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        # Several beat processes write one SQLite file: wait for its lock up to
        # 20 s (Django's default, 5 s, runs out on a loaded host).
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:]),
                "OPTIONS": {"timeout": 20}}
    engine = {"postgresql": "postgresql", "postgres": "postgresql",
              "mysql": "mysql", "mariadb": "mysql"}[scheme]
    return {
        "ENGINE": f"django.db.backends.{engine}",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": database(
    os.environ.get("EXAMPLE_DATABASE") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- Celery ------------------------------------------------------------------------

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("EXAMPLE_QUEUE", "celery")
CELERY_IMPORTS = ["proj.tasks"]
CELERY_RESULT_EXPIRES = None  # no backend_cleanup entry: the example has no result backend
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "proj.tasks.heartbeat",
                  "schedule": float(os.environ.get("EXAMPLE_EVERY", "10"))},
}

# -- celery-leaderbeat ---------------------------------------------------------------

# Every beat runs this scheduler; only the leader dispatches.
CELERY_BEAT_SCHEDULER = "celery_leaderbeat.django.LeaderDatabaseScheduler"
# The lease lives in the Django database (the default for this scheduler; shown
# here to be explicit). "django://other" uses another DATABASES alias.
CELERY_LEADERBEAT_ELECTOR = "django://"
CELERY_LEADERBEAT_LEASE_NAME = "example"
CELERY_LEADERBEAT_IDENTITY = os.environ.get("LEADERBEAT_IDENTITY") or None
CELERY_LEADERBEAT_LEASE_TTL = 5.0
CELERY_LEADERBEAT_RENEW_INTERVAL = 0.5
CELERY_LEADERBEAT_RETRY_INTERVAL = 0.5
