"""Example Django project: django-celery-beat with a leader among several beats."""

from __future__ import annotations

from .celery import app as celery_app

__all__ = ["celery_app"]
