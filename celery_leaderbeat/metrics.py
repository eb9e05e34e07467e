"""Prometheus metrics of one beat replica, served over HTTP.

Off unless ``leaderbeat_metrics_port`` is set; then ``prometheus_client``
(the ``[metrics]`` extra) is needed, and only then imported, so the package
itself never requires it. Each scheduler gets its own collector registry, so
several schedulers in one process never collide.

Leadership changes reach the metrics through the leadership signals; the
scheduler itself reports only what no signal carries: lease renewals,
dispatches, a store that refuses the replica for good, and runs whose claim the
store refused for their data.

==========================================  =========  =================================
name                                        type       meaning
==========================================  =========  =================================
``leaderbeat_replica_info``                 info       identity, lease, version labels
``leaderbeat_is_leader``                    gauge      1 while this replica leads
``leaderbeat_term``                         gauge      lease term: ours when leading,
                                                       the leader's seen by a standby
``leaderbeat_leadership_gained_total``      counter    times this replica became leader
``leaderbeat_leadership_lost_total``        counter    times it stopped, label ``cause``
``leaderbeat_dispatches_total``             counter    runs published
``leaderbeat_fenced_out_claims_total``      counter    claims the store refused
``leaderbeat_rejected_claims_total``        counter    runs not sent: the store refused
                                                       their claim's data, not the lease
``leaderbeat_lease_renewal_seconds``        histogram  time of a lease renewal
``leaderbeat_dispatch_lateness_seconds``    histogram  publish time minus scheduled time
``leaderbeat_store_misconfigured``          gauge      1 while the store refuses this
                                                       replica for good (password, TLS,
                                                       database, permission)
``leaderbeat_dispatch_paused``              gauge      1 while this replica leads and
                                                       holds dispatch for a pause
==========================================  =========  =================================
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from . import signals
from .lease import LeadershipLost
from .settings import improperly_configured

__all__ = ["LATENESS_BUCKETS", "RENEWAL_BUCKETS", "BeatMetrics"]

RENEWAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


class BeatMetrics:
    """The metrics of one scheduler, fed by its signals and by three direct reports."""

    def __init__(self, scheduler: Any) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            improperly_configured(
                "leaderbeat_metrics_port",
                f"metrics need prometheus_client ({exc}); install celery-leaderbeat[metrics]")
        from . import __version__

        settings = scheduler.leader_settings
        self.registry = prom.CollectorRegistry()
        r = self.registry
        prom.Info("leaderbeat_replica", "This beat replica.", registry=r).info({
            "identity": settings.identity,
            "lease": settings.lease_name,
            "version": __version__,
        })
        self.is_leader = prom.Gauge(
            "leaderbeat_is_leader", "1 while this replica leads, else 0.", registry=r)
        self.term = prom.Gauge(
            "leaderbeat_term", "Lease term: ours while leading, the leader's as a standby "
            "sees it, 0 before any is known.", registry=r)
        self.gained = prom.Counter(
            "leaderbeat_leadership_gained", "Times this replica became the leader.",
            registry=r)
        self.lost = prom.Counter(
            "leaderbeat_leadership_lost", "Times this replica stopped leading, by cause.",
            ["cause"], registry=r)
        self.dispatches = prom.Counter(
            "leaderbeat_dispatches", "Scheduled runs published by this replica.", registry=r)
        self.fenced_out = prom.Counter(
            "leaderbeat_fenced_out_claims",
            "Claims of a run the store refused because another term held the lease.",
            registry=r)
        self.rejected_claims = prom.Counter(
            "leaderbeat_rejected_claims",
            "Runs not sent because the store refused the data of their claim (a constraint, "
            "a value it cannot store), not the lease; the ERROR log names the entry.",
            registry=r)
        self.renewal = prom.Histogram(
            "leaderbeat_lease_renewal_seconds", "Time a lease renewal took (round trip).",
            buckets=RENEWAL_BUCKETS, registry=r)
        self.lateness = prom.Histogram(
            "leaderbeat_dispatch_lateness_seconds",
            "Publish time minus the time the run was scheduled for.",
            buckets=LATENESS_BUCKETS, registry=r)
        self.misconfigured = prom.Gauge(
            "leaderbeat_store_misconfigured",
            "1 while the store refuses this replica for a reason waiting will not heal "
            "(wrong password, missing permission, unknown database, failed certificate "
            "check), else 0.", registry=r)
        self.paused = prom.Gauge(
            "leaderbeat_dispatch_paused",
            "1 while this replica leads and holds dispatch because it is paused "
            "(celery leaderbeat pause), else 0.", registry=r)
        self._server: Any = None
        self._scheduler = scheduler
        signals.leadership_gained.connect(self._on_gained, sender=scheduler)
        signals.leadership_lost.connect(self._on_lost, sender=scheduler)
        signals.leader_observed.connect(self._on_observed, sender=scheduler)
        signals.dispatch_paused.connect(self._on_paused, sender=scheduler)
        signals.dispatch_resumed.connect(self._on_resumed, sender=scheduler)

    @classmethod
    def serve(cls, scheduler: Any) -> BeatMetrics | None:
        """Metrics on the configured port, or None when metrics are off."""
        address = scheduler.leader_settings.metrics_address
        if address is None:
            return None
        metrics = cls(scheduler)
        metrics.start(*address)
        return metrics

    def start(self, address: str, port: int) -> None:
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, addr=address or "0.0.0.0",
                                            registry=self.registry)

    # -- reports -----------------------------------------------------------------

    def _on_gained(self, sender: Any, term: int | None = None, **kwargs: Any) -> None:
        self.is_leader.set(1)
        self.term.set(term or 0)
        self.gained.inc()

    def _on_lost(self, sender: Any, cause: str = "", **kwargs: Any) -> None:
        self.is_leader.set(0)
        self.lost.labels(cause=cause).inc()
        if cause == LeadershipLost.FENCED_OUT:
            self.fenced_out.inc()

    def _on_observed(self, sender: Any, leader_term: int | None = None, **kwargs: Any) -> None:
        self.term.set(leader_term or 0)

    def _on_paused(self, sender: Any, **kwargs: Any) -> None:
        self.dispatch_held(True)

    def _on_resumed(self, sender: Any, **kwargs: Any) -> None:
        self.dispatch_held(False)

    def dispatch_held(self, held: bool) -> None:
        """Whether this replica holds dispatch for a pause (0 too when it stops leading)."""
        self.paused.set(1 if held else 0)

    def store_misconfigured(self, refused: bool) -> None:
        """Whether the store's latest answer was a permanent refusal."""
        self.misconfigured.set(1 if refused else 0)

    def renewed(self, seconds: float) -> None:
        self.renewal.observe(seconds)

    def claim_rejected(self) -> None:
        """One run not sent: the store refused its claim's data (see .rejections)."""
        self.rejected_claims.inc()

    def dispatched(self, scheduled_at: str | None) -> None:
        """One run published; ``scheduled_at`` is the ISO time it fell due, if known."""
        self.dispatches.inc()
        if scheduled_at:
            due = datetime.fromisoformat(scheduled_at)
            if due.tzinfo is None:  # Celery's naive datetimes are UTC
                due = due.replace(tzinfo=timezone.utc)
            self.lateness.observe(max(0.0, time.time() - due.timestamp()))

    def close(self) -> None:
        signals.leadership_gained.disconnect(self._on_gained, sender=self._scheduler)
        signals.leadership_lost.disconnect(self._on_lost, sender=self._scheduler)
        signals.leader_observed.disconnect(self._on_observed, sender=self._scheduler)
        signals.dispatch_paused.disconnect(self._on_paused, sender=self._scheduler)
        signals.dispatch_resumed.disconnect(self._on_resumed, sender=self._scheduler)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
