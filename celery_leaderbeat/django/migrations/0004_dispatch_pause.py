"""A pause of dispatch on the lease row (``celery leaderbeat pause``/``resume``).

Four nullable columns, added in place: rows are kept, and replicas of the
previous version go on working (they do not honour a pause: upgrade every
replica before pausing).
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("celery_leaderbeat", "0003_name_keys"),
    ]

    operations = [
        migrations.AddField(
            model_name="lease", name="pause",
            field=models.TextField(
                blank=True, null=True,
                help_text="The pause of dispatch in effect (leaderbeat pause).")),
        migrations.AddField(
            model_name="lease", name="pause_expires_at",
            field=models.FloatField(blank=True, null=True,
                                    help_text="When the pause ends by itself; empty: at resume.")),
        migrations.AddField(
            model_name="lease", name="resume",
            field=models.TextField(blank=True, null=True, help_text="The latest resume.")),
        migrations.AddField(
            model_name="lease", name="resumed_pause",
            field=models.TextField(blank=True, null=True,
                                   help_text="The pause the latest resume ended.")),
    ]
