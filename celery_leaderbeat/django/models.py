"""The lease, run history and replica tables of the ``django://`` elector.

The store writes them with the SQL in :mod:`celery_leaderbeat.stores.lease_tables`
(one conditional statement per lease operation, judged by the database's
clock); the models exist for migrations and the read-only admin page.
Times are epoch seconds on the database's clock. Names (lease, entry,
replica identity) are keyed by their SHA-256 and kept whole in a TextField,
so any name round-trips exactly whatever the database's collation (the
reasons are in :mod:`celery_leaderbeat.stores.lease_tables`); migration
0003 moved 0.1's tables, keyed by the names, to these keys.
"""

from __future__ import annotations

from django.db import models


class Lease(models.Model):
    """One beat group's lease: who holds it, under which term, until when."""

    lease_key = models.CharField(max_length=64, primary_key=True,
                                 help_text="SHA-256 of the lease name (see lease_tables).")
    lease_name = models.TextField(help_text="The lease name, exactly as configured.")
    owner = models.TextField(null=True, blank=True,
                             help_text="Token of the elector holding the lease.")
    holder = models.TextField(null=True, blank=True,
                              help_text="Identity of the replica holding the lease.")
    term = models.BigIntegerField(default=0, help_text="Fencing token: grows with each holder.")
    acquired_at = models.FloatField(null=True, blank=True)
    renewed_at = models.FloatField(null=True, blank=True)
    expires_at = models.FloatField(null=True, blank=True)
    transitions = models.BigIntegerField(default=0)
    last_holder_key = models.CharField(max_length=64, null=True, blank=True,
                                       help_text="SHA-256 of the last holder's identity.")
    step_down_term = models.BigIntegerField(
        null=True, blank=True, help_text="The term asked to step down, until its leader sees it.")
    pause = models.TextField(null=True, blank=True,
                             help_text="The pause of dispatch in effect (leaderbeat pause).")
    pause_expires_at = models.FloatField(null=True, blank=True,
                                         help_text="When the pause ends by itself; empty: "
                                                   "at resume.")
    resume = models.TextField(null=True, blank=True, help_text="The latest resume.")
    resumed_pause = models.TextField(null=True, blank=True,
                                     help_text="The pause the latest resume ended.")

    class Meta:
        db_table = "celery_leaderbeat_lease"
        verbose_name = "beat lease"

    def __str__(self) -> str:
        return str(self.lease_name)


class LeaseRun(models.Model):
    """The last run of one schedule entry, as the leader of some term claimed it."""

    lease_key = models.CharField(max_length=64)
    entry_key = models.CharField(max_length=64)
    entry_name = models.TextField()
    record = models.TextField()

    class Meta:
        db_table = "celery_leaderbeat_run"
        verbose_name = "claimed run"
        constraints = [
            models.UniqueConstraint(fields=["lease_key", "entry_key"],
                                    name="celery_leaderbeat_run_key_unique"),
        ]

    def __str__(self) -> str:
        return str(self.entry_name)


class LeaseReplica(models.Model):
    """One replica's last heartbeat: the replica registry (``celery leaderbeat status``)."""

    lease_key = models.CharField(max_length=64)
    replica_key = models.CharField(max_length=64)
    replica = models.TextField(help_text="The replica's identity.")
    record = models.TextField()
    beat_at = models.FloatField()
    expires_at = models.FloatField()

    class Meta:
        db_table = "celery_leaderbeat_replica"
        verbose_name = "beat replica"
        constraints = [
            models.UniqueConstraint(fields=["lease_key", "replica_key"],
                                    name="celery_leaderbeat_replica_key_unique"),
        ]

    def __str__(self) -> str:
        return str(self.replica)
