from __future__ import annotations

from django.apps import AppConfig


class LeaderbeatConfig(AppConfig):
    """The app label is ``celery_leaderbeat``: ``python manage.py migrate celery_leaderbeat``."""

    name = "celery_leaderbeat.django"
    label = "celery_leaderbeat"
    verbose_name = "Celery beat leadership"
    default_auto_field = "django.db.models.BigAutoField"
