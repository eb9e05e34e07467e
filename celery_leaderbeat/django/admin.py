"""A read-only admin page for the leases: holder, term, expiry, transitions.

Times are shown as the database's clock tells them; "expires in" is
computed by the database in the same query, never on the web server's clock.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.contrib import admin
from django.db import connections
from django.db.models import ExpressionWrapper, F, FloatField, QuerySet
from django.db.models.expressions import RawSQL
from django.http import HttpRequest

from ..stores.lease_tables import DATABASE_NOW
from .models import Lease


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ("lease_name", "holder", "term", "expires", "acquired", "renewed",
                    "transitions")
    fields = ("lease_name", "holder", "term", "expires", "acquired", "renewed", "transitions")
    readonly_fields = fields
    ordering = ("lease_name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Lease]:
        queryset = super().get_queryset(request)
        vendor = connections[queryset.db].vendor
        if vendor not in DATABASE_NOW:
            return queryset
        now = RawSQL(DATABASE_NOW[vendor], ())
        return queryset.annotate(expires_in=ExpressionWrapper(
            F("expires_at") - now, output_field=FloatField()))

    @admin.display(description="expires")
    def expires(self, lease: Any) -> str:
        remaining = getattr(lease, "expires_in", None)
        if lease.owner is None or remaining is None:
            return "free"
        if remaining <= 0:
            return f"expired {-remaining:.1f} s ago"
        return f"in {remaining:.1f} s"

    @admin.display(description="acquired (UTC)")
    def acquired(self, lease: Lease) -> str:
        return _when(lease.acquired_at)

    @admin.display(description="renewed (UTC)")
    def renewed(self, lease: Lease) -> str:
        return _when(lease.renewed_at)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
