"""Key leases, runs and replicas by the SHA-256 of their names; keep the names whole.

0.1 keyed rows by the names themselves in VARCHAR(191)/(255) columns: a
longer entry name could not be claimed, and MySQL/MariaDB's default
collations made names differing only in case, accents or trailing spaces
one row. Rows are kept (keys computed from them); heartbeat rows are
dropped, as every replica writes its own again within a retry interval.
Not reversible.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from celery_leaderbeat.stores.lease_tables import name_key


def rekey_leases(apps: Any, schema_editor: Any) -> None:
    lease = apps.get_model("celery_leaderbeat", "Lease")
    for row in lease.objects.using(schema_editor.connection.alias).all():
        key = None if row.last_holder is None else name_key(row.last_holder)
        lease.objects.using(schema_editor.connection.alias).filter(pk=row.pk).update(
            name=name_key(row.pk), lease_name=row.pk, last_holder_key=key)


def rekey_runs(apps: Any, schema_editor: Any) -> None:
    run = apps.get_model("celery_leaderbeat", "LeaseRun")
    for row in run.objects.using(schema_editor.connection.alias).all():
        row.lease_key, row.entry_key = name_key(row.lease_name), name_key(row.entry_name)
        row.save(update_fields=["lease_key", "entry_key"])


def drop_heartbeats(apps: Any, schema_editor: Any) -> None:
    apps.get_model("celery_leaderbeat", "LeaseReplica").objects.using(
        schema_editor.connection.alias).all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("celery_leaderbeat", "0002_replica_registry"),
    ]

    operations = [
        # -- leases: the name becomes the key column, whole names move to lease_name
        migrations.AddField(
            model_name="lease", name="lease_name",
            field=models.TextField(default="", help_text="The lease name, exactly as configured."),
            preserve_default=False),
        migrations.AddField(
            model_name="lease", name="last_holder_key",
            field=models.CharField(blank=True, help_text="SHA-256 of the last holder's identity.",
                                   max_length=64, null=True)),
        migrations.RunPython(rekey_leases),
        migrations.RemoveField(model_name="lease", name="last_holder"),
        migrations.RenameField(model_name="lease", old_name="name", new_name="lease_key"),
        migrations.AlterField(
            model_name="lease", name="lease_key",
            field=models.CharField(help_text="SHA-256 of the lease name (see lease_tables).",
                                   max_length=64, primary_key=True, serialize=False)),
        migrations.AlterField(
            model_name="lease", name="owner",
            field=models.TextField(blank=True, help_text="Token of the elector holding the lease.",
                                   null=True)),
        migrations.AlterField(
            model_name="lease", name="holder",
            field=models.TextField(
                blank=True, help_text="Identity of the replica holding the lease.", null=True)),
        # -- runs: keyed by (lease_key, entry_key), the entry name whole
        migrations.RemoveConstraint(model_name="leaserun", name="celery_leaderbeat_run_unique"),
        migrations.AddField(model_name="leaserun", name="lease_key",
                            field=models.CharField(max_length=64, null=True)),
        migrations.AddField(model_name="leaserun", name="entry_key",
                            field=models.CharField(max_length=64, null=True)),
        migrations.AlterField(model_name="leaserun", name="entry_name",
                              field=models.TextField()),
        migrations.RunPython(rekey_runs),
        migrations.RemoveField(model_name="leaserun", name="lease_name"),
        migrations.AlterField(model_name="leaserun", name="lease_key",
                              field=models.CharField(max_length=64)),
        migrations.AlterField(model_name="leaserun", name="entry_key",
                              field=models.CharField(max_length=64)),
        migrations.AddConstraint(
            model_name="leaserun",
            constraint=models.UniqueConstraint(fields=("lease_key", "entry_key"),
                                               name="celery_leaderbeat_run_key_unique")),
        # -- replicas: heartbeats only, so dropped rather than converted
        migrations.RunPython(drop_heartbeats),
        migrations.RemoveConstraint(model_name="leasereplica",
                                    name="celery_leaderbeat_replica_unique"),
        migrations.RemoveField(model_name="leasereplica", name="lease_name"),
        migrations.AddField(model_name="leasereplica", name="lease_key",
                            field=models.CharField(default="", max_length=64),
                            preserve_default=False),
        migrations.AddField(model_name="leasereplica", name="replica_key",
                            field=models.CharField(default="", max_length=64),
                            preserve_default=False),
        migrations.AlterField(model_name="leasereplica", name="replica",
                              field=models.TextField(help_text="The replica's identity.")),
        migrations.AddConstraint(
            model_name="leasereplica",
            constraint=models.UniqueConstraint(fields=("lease_key", "replica_key"),
                                               name="celery_leaderbeat_replica_key_unique")),
    ]
