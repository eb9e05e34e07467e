from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("celery_leaderbeat", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="lease",
            name="step_down_term",
            field=models.BigIntegerField(
                blank=True, null=True,
                help_text="The term asked to step down, until its leader sees it."),
        ),
        migrations.CreateModel(
            name="LeaseReplica",
            fields=[
                ("id", models.BigAutoField(
                    auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("lease_name", models.CharField(max_length=191)),
                ("replica", models.CharField(help_text="The replica's identity.",
                                             max_length=255)),
                ("record", models.TextField()),
                ("beat_at", models.FloatField()),
                ("expires_at", models.FloatField()),
            ],
            options={
                "verbose_name": "beat replica",
                "db_table": "celery_leaderbeat_replica",
                "constraints": [models.UniqueConstraint(
                    fields=("lease_name", "replica"), name="celery_leaderbeat_replica_unique")],
            },
        ),
    ]
