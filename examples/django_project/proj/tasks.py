"""Two small tasks for the schedule."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task
def heartbeat() -> str:
    logger.info("heartbeat")
    return "ok"


@shared_task
def report(name: str = "daily") -> str:
    logger.info("report %s", name)
    return name
