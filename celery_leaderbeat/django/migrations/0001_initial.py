from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Lease",
            fields=[
                ("name", models.CharField(max_length=191, primary_key=True, serialize=False)),
                ("owner", models.CharField(
                    blank=True, help_text="Token of the elector holding the lease.",
                    max_length=255, null=True)),
                ("holder", models.CharField(
                    blank=True, help_text="Identity of the replica holding the lease.",
                    max_length=255, null=True)),
                ("term", models.BigIntegerField(
                    default=0, help_text="Fencing token: grows with each holder.")),
                ("acquired_at", models.FloatField(blank=True, null=True)),
                ("renewed_at", models.FloatField(blank=True, null=True)),
                ("expires_at", models.FloatField(blank=True, null=True)),
                ("transitions", models.BigIntegerField(default=0)),
                ("last_holder", models.CharField(blank=True, max_length=255, null=True)),
            ],
            options={
                "verbose_name": "beat lease",
                "db_table": "celery_leaderbeat_lease",
            },
        ),
        migrations.CreateModel(
            name="LeaseRun",
            fields=[
                ("id", models.BigAutoField(
                    auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("lease_name", models.CharField(max_length=191)),
                ("entry_name", models.CharField(max_length=255)),
                ("record", models.TextField()),
            ],
            options={
                "verbose_name": "claimed run",
                "db_table": "celery_leaderbeat_run",
                "constraints": [models.UniqueConstraint(
                    fields=("lease_name", "entry_name"), name="celery_leaderbeat_run_unique")],
            },
        ),
    ]
