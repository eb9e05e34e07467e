"""The lease, run history and replica tables of the ``django://`` elector.

The store writes them with the SQL in :mod:`celery_leaderbeat.stores.lease_tables`
(one conditional statement per lease operation, judged by the database's
clock); the models exist for migrations and the read-only admin page.
Times are epoch seconds on the database's clock.
"""

from __future__ import annotations

from django.db import models


class Lease(models.Model):
    """One beat group's lease: who holds it, under which term, until when."""

    name = models.CharField(max_length=191, primary_key=True)
    owner = models.CharField(max_length=255, null=True, blank=True,
                             help_text="Token of the elector holding the lease.")
    holder = models.CharField(max_length=255, null=True, blank=True,
                              help_text="Identity of the replica holding the lease.")
    term = models.BigIntegerField(default=0, help_text="Fencing token: grows with each holder.")
    acquired_at = models.FloatField(null=True, blank=True)
    renewed_at = models.FloatField(null=True, blank=True)
    expires_at = models.FloatField(null=True, blank=True)
    transitions = models.BigIntegerField(default=0)
    last_holder = models.CharField(max_length=255, null=True, blank=True)
    step_down_term = models.BigIntegerField(
        null=True, blank=True, help_text="The term asked to step down, until its leader sees it.")

    class Meta:
        db_table = "celery_leaderbeat_lease"
        verbose_name = "beat lease"

    def __str__(self) -> str:
        return str(self.name)


class LeaseRun(models.Model):
    """The last run of one schedule entry, as the leader of some term claimed it."""

    lease_name = models.CharField(max_length=191)
    entry_name = models.CharField(max_length=255)
    record = models.TextField()

    class Meta:
        db_table = "celery_leaderbeat_run"
        verbose_name = "claimed run"
        constraints = [
            models.UniqueConstraint(fields=["lease_name", "entry_name"],
                                    name="celery_leaderbeat_run_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.lease_name}: {self.entry_name}"


class LeaseReplica(models.Model):
    """One replica's last heartbeat: the replica registry (``celery leaderbeat status``)."""

    lease_name = models.CharField(max_length=191)
    replica = models.CharField(max_length=255, help_text="The replica's identity.")
    record = models.TextField()
    beat_at = models.FloatField()
    expires_at = models.FloatField()

    class Meta:
        db_table = "celery_leaderbeat_replica"
        verbose_name = "beat replica"
        constraints = [
            models.UniqueConstraint(fields=["lease_name", "replica"],
                                    name="celery_leaderbeat_replica_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.lease_name}: {self.replica}"
