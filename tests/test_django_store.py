"""The Django app in-process: the ``django://`` store, settings, admin, LeaderDatabaseScheduler.

Django is configured once for this module with fresh databases of its own:
``default`` on PostgreSQL, ``maria`` on MariaDB, ``lite`` a SQLite file,
``unmigrated`` a SQLite file never migrated, ``down`` a closed port. They
are created before the first test and dropped after the last.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import psycopg
import pymysql
import pytest
from celery import Celery
from django.conf import settings as django_settings

from celery_leaderbeat import ClaimRejected, LeaseElector, NotLeader, StoreUnavailable
from celery_leaderbeat.backends import choose_elector
from celery_leaderbeat.history import RunRecord
from celery_leaderbeat.lease import Renewal
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.stores.lease_tables import LeaseTableMissing, name_key
from celery_leaderbeat.testing import assert_each_name_keeps_its_own_history, free_port

if django_settings.configured:  # pragma: no cover - another module configured Django first
    pytest.skip("Django is already configured in this process", allow_module_level=True)

pymysql.install_as_MySQLdb()

SUFFIX = uuid.uuid4().hex[:10]
PG_DB = MARIA_DB = f"lbdj_{SUFFIX}"
FILES = tempfile.mkdtemp(prefix="leaderbeat-django-")
MIGRATED = ("default", "maria", "lite")
#: Databases left at migration 0002 (celery-leaderbeat 0.1) for the upgrade test.
LEGACY = ("legacy_pg", "legacy_maria", "legacy_lite")

django_settings.configure(
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.messages",
        "django.contrib.sessions",
        "django_celery_beat",
        "celery_leaderbeat.django",
    ],
    DATABASES={
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": PG_DB,
                    "USER": "postgres", "HOST": "127.0.0.1", "PORT": "5432"},
        # Django 4.2 connects with utf8 (3 bytes) unless told: as its docs advise.
        "maria": {"ENGINE": "django.db.backends.mysql", "NAME": MARIA_DB,
                  "USER": "root", "HOST": "127.0.0.1", "PORT": "3306",
                  "OPTIONS": {"charset": "utf8mb4"}},
        "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{FILES}/lite.sqlite3"},
        "legacy_pg": {"ENGINE": "django.db.backends.postgresql", "NAME": f"{PG_DB}_old",
                      "USER": "postgres", "HOST": "127.0.0.1", "PORT": "5432"},
        "legacy_maria": {"ENGINE": "django.db.backends.mysql", "NAME": f"{MARIA_DB}_old",
                         "USER": "root", "HOST": "127.0.0.1", "PORT": "3306",
                         "OPTIONS": {"charset": "utf8mb4"}},
        "legacy_lite": {"ENGINE": "django.db.backends.sqlite3",
                        "NAME": f"{FILES}/legacy.sqlite3"},
        "unmigrated": {"ENGINE": "django.db.backends.sqlite3",
                       "NAME": f"{FILES}/unmigrated.sqlite3"},
        "down": {"ENGINE": "django.db.backends.postgresql", "NAME": "test",
                 "USER": "postgres", "HOST": "127.0.0.1", "PORT": str(free_port()),
                 "OPTIONS": {"connect_timeout": 2}},
    },
    USE_TZ=True,
    TIME_ZONE="UTC",
    SECRET_KEY="tests-only",
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    # Read by the settings test through namespace="CELERY".
    CELERY_LEADERBEAT_ELECTOR="django://maria",
    CELERY_LEADERBEAT_LEASE_NAME="from-django-settings",
    CELERY_LEADERBEAT_IDENTITY="replica-from-django",
    CELERY_LEADERBEAT_LEASE_TTL=7,
    CELERY_LEADERBEAT_RENEW_INTERVAL=2,
    CELERY_LEADERBEAT_CATCH_UP="skip",
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.db.models.expressions import RawSQL  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django_celery_beat.models import IntervalSchedule, PeriodicTask  # noqa: E402

from celery_leaderbeat.django.admin import LeaseAdmin  # noqa: E402
from celery_leaderbeat.django.models import Lease  # noqa: E402
from celery_leaderbeat.django.schedulers import (  # noqa: E402
    LeaderDatabaseScheduler,
    LeaderModelEntry,
)
from celery_leaderbeat.django.store import DjangoLeaseStore  # noqa: E402
from celery_leaderbeat.stores.lease_tables import DATABASE_NOW  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def databases() -> Iterator[None]:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as pg:
        pg.execute(f"CREATE DATABASE {PG_DB}")
        pg.execute(f"CREATE DATABASE {PG_DB}_old")
    maria = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with maria.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {MARIA_DB}")
        cursor.execute(f"CREATE DATABASE {MARIA_DB}_old")
    try:
        for alias in MIGRATED:
            call_command("migrate", database=alias, verbosity=0)
        yield
    finally:
        connections.close_all()
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as pg:
            pg.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            pg.execute(f"DROP DATABASE IF EXISTS {PG_DB}_old WITH (FORCE)")
        with maria.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {MARIA_DB}")
            cursor.execute(f"DROP DATABASE IF EXISTS {MARIA_DB}_old")
        maria.close()
        shutil.rmtree(FILES, ignore_errors=True)


def _lease_name() -> str:
    return f"lease-{uuid.uuid4().hex[:8]}"


def _expire_now(alias: str, name: str, seconds_from_now: float = -1.0) -> None:
    """Move a lease's expiry on the database's own clock."""
    now = RawSQL(f"{DATABASE_NOW[connections[alias].vendor]} + %s", (seconds_from_now,))
    Lease.objects.using(alias).filter(lease_key=name_key(name)).update(expires_at=now)


# -- the django:// store -------------------------------------------------------------


@pytest.mark.parametrize("alias", MIGRATED)
def test_store_terms_expiry_and_fenced_claims(alias: str) -> None:
    name = _lease_name()
    a, b = DjangoLeaseStore(name, alias), DjangoLeaseStore(name, alias)
    assert a.acquire("owner-a", "replica-a", 600).acquired
    refused = b.acquire("owner-b", "replica-b", 600)
    assert not refused.acquired and refused.lease.holder == "replica-a"
    assert a.claim("owner-a", 1, {"nightly": "run-1"})

    _expire_now(alias, name)  # by the database's clock, not ours
    assert a.renew("owner-a", 1, 600) is Renewal.LOST
    assert not a.claim("owner-a", 1, {"nightly": "run-2"})
    taken = b.acquire("owner-b", "replica-b", 600)
    assert taken.acquired and taken.lease.term == 2
    assert not a.claim("owner-a", 1, {"nightly": "run-2"})
    assert not a.release("owner-a", 1)
    assert b.load_history() == {"nightly": "run-1"}
    assert b.claim("owner-b", 2, {"nightly": "run-2"})
    assert a.load_history() == {"nightly": "run-2"}

    row = Lease.objects.using(alias).get(lease_key=name_key(name))
    assert (row.holder, row.term, row.transitions) == ("replica-b", 2, 2)
    lease = a.read()
    assert lease is not None and 590 < (lease.expires_in or 0) <= 600
    assert b.release("owner-b", 2) and a.read() is None


@pytest.mark.parametrize("alias", MIGRATED)
def test_threads_racing_on_the_django_database_never_both_hold(
        alias: str, lease_race: Callable[..., list[list[int]]]) -> None:
    name = _lease_name()
    # Each thread has its own Django connection, closed by store.close().
    terms = lease_race(lambda: DjangoLeaseStore(name, alias), replicas=6, rounds=4)
    assert terms == [[t] for t in range(1, 5)]


@pytest.mark.parametrize("alias", MIGRATED)
def test_names_round_trip_exactly_in_the_django_database(alias: str) -> None:
    """Case, accents, trailing spaces, emoji and 5,000 characters: each its own history."""
    store = DjangoLeaseStore(_lease_name(), alias)
    assert_each_name_keeps_its_own_history(store)
    # Lease names differing only in case are two leases.
    upper = DjangoLeaseStore("Beat-" + SUFFIX, alias)
    lower = DjangoLeaseStore("beat-" + SUFFIX, alias)
    assert upper.acquire("u", "one", 60).acquired and lower.acquire("l", "two", 60).acquired


@pytest.mark.parametrize("alias", MIGRATED)
def test_a_claim_refused_for_one_entry_keeps_the_lease_in_django(alias: str) -> None:
    """A check the runs of "poison..." entries break: refused alone, the lease still held."""
    connection = connections[alias]
    table = connection.ops.quote_name("celery_leaderbeat_run")
    if connection.vendor == "sqlite":  # SQLite adds no constraint to a table: a trigger
        add = (f"CREATE TRIGGER no_poison BEFORE INSERT ON {table} "
               "WHEN SUBSTR(NEW.entry_name, 1, 6) = 'poison' "
               "BEGIN SELECT RAISE(ABORT, 'no_poison'); END")
        drop = "DROP TRIGGER no_poison"
    else:
        add = (f"ALTER TABLE {table} ADD CONSTRAINT no_poison "
               "CHECK (SUBSTR(entry_name, 1, 6) <> 'poison')")
        drop = f"ALTER TABLE {table} DROP CONSTRAINT no_poison"
    with connection.cursor() as cursor:
        cursor.execute(add)
    try:
        store = DjangoLeaseStore(_lease_name(), alias)
        elector = LeaseElector(store, identity="replica")
        assert elector.is_leader()
        with pytest.raises(ClaimRejected) as refused:
            elector.claim({"short": "1", "poison-entry": "2", "other": "3"})
        assert refused.value.names == ("poison-entry",)
        assert store.load_history() == {"short": "1", "other": "3"}
        assert elector.is_leader() and elector.term == 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute(drop)


@pytest.mark.parametrize("alias", LEGACY)
def test_migration_0003_keeps_the_rows_of_0_1(alias: str) -> None:
    call_command("migrate", "celery_leaderbeat", "0002", database=alias, verbosity=0)
    with connections[alias].cursor() as cursor:  # as celery-leaderbeat 0.1 wrote them
        cursor.execute("INSERT INTO celery_leaderbeat_lease (name, term, transitions, "
                       "last_holder) VALUES ('beat', 41, 7, 'old-replica')")
        cursor.execute("INSERT INTO celery_leaderbeat_run (lease_name, entry_name, record) "
                       "VALUES ('beat', 'Report', 'r1'), ('beat', 'résumé', 'r2'), "
                       "('other', 'Report', 'other')")
        cursor.execute("INSERT INTO celery_leaderbeat_replica (lease_name, replica, record, "
                       "beat_at, expires_at) VALUES ('beat', 'old-replica', '{}', 0, 0)")
    call_command("migrate", "celery_leaderbeat", database=alias, verbosity=0)
    store = DjangoLeaseStore("beat", alias)
    assert store.load_history() == {"Report": "r1", "résumé": "r2"}
    assert DjangoLeaseStore("other", alias).load_history() == {"Report": "other"}
    taken = store.acquire("owner", "old-replica", 60)
    assert taken.acquired and taken.lease.term == 42
    assert store.read().transitions == 7  # type: ignore[union-attr]
    assert_each_name_keeps_its_own_history(DjangoLeaseStore("fresh", alias))


def test_a_missing_migration_names_the_command() -> None:
    store = DjangoLeaseStore(_lease_name(), "unmigrated")
    with pytest.raises(LeaseTableMissing,
                       match=r"python manage\.py migrate celery_leaderbeat --database unmigrated"):
        store.acquire("owner", "replica", 5)
    elector = LeaseElector(store, identity="replica")
    with pytest.raises(NotLeader, match="migrate celery_leaderbeat"):
        elector.is_leader()  # a standby that keeps asking, not a crash


def test_an_unreachable_django_database_is_unavailable_quickly() -> None:
    store = DjangoLeaseStore(_lease_name(), "down")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.acquire("owner", "replica", 5)
    assert time.monotonic() - started < 5


def test_leaderbeat_settings_come_through_the_celery_namespace() -> None:
    app = Celery("djsettings", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    settings = LeaderSettings.from_app(app)
    assert settings.lease_name == "from-django-settings"
    assert settings.identity == "replica-from-django"
    assert (settings.timing.ttl, settings.timing.renew_interval) == (7.0, 2.0)
    assert settings.catch_up == "skip"
    elector = choose_elector(settings).elector
    assert isinstance(elector, LeaseElector) and isinstance(elector.store, DjangoLeaseStore)
    assert elector.store.alias == "maria" and elector.describe() == "django://maria"
    assert elector.is_leader() and elector.term == 1
    elector.release()


def test_an_unknown_alias_is_refused_naming_the_setting() -> None:
    from celery.exceptions import ImproperlyConfigured

    app = Celery("badalias", set_as_current=False)
    app.conf.leaderbeat_elector = "django://nowhere"
    with pytest.raises(ImproperlyConfigured, match=r"CELERY_LEADERBEAT_ELECTOR.*nowhere"):
        choose_elector(LeaderSettings.from_app(app))


def test_the_admin_page_is_read_only_and_shows_the_lease() -> None:
    from django.contrib.admin.sites import AdminSite

    name = _lease_name()
    store = DjangoLeaseStore(name, "default")
    assert store.acquire("owner", "replica-x", 30).acquired
    page = LeaseAdmin(Lease, AdminSite())
    request = RequestFactory().get("/admin/celery_leaderbeat/lease/")
    lease = page.get_queryset(request).get(lease_key=name_key(name))
    assert page.expires(lease).startswith("in ")
    assert 25 < float(page.expires(lease).split()[1]) <= 30
    assert page.acquired(lease).startswith(str(datetime.now(timezone.utc).year))
    assert not page.has_add_permission(request)
    assert not page.has_change_permission(request, lease)
    assert not page.has_delete_permission(request, lease)
    store.release("owner", 1)
    assert page.expires(page.get_queryset(request).get(lease_key=name_key(name))) == "free"


# -- LeaderDatabaseScheduler in-process ------------------------------------------------


@pytest.fixture
def periodic_task(lease_name: str) -> Iterator[Callable[..., PeriodicTask]]:
    made: list[PeriodicTask] = []

    def make(every: float, last_run_at: datetime | None = None) -> PeriodicTask:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=every, period=IntervalSchedule.SECONDS)
        task = PeriodicTask.objects.create(
            name=f"{lease_name}-{len(made)}", task="tests.tick", interval=interval,
            last_run_at=last_run_at)
        made.append(task)
        return task

    yield make
    PeriodicTask.objects.filter(pk__in=[t.pk for t in made]).delete()


def _db_scheduler(make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
                  identity: str) -> Any:
    # leaderbeat_elector unset: this scheduler defaults to django:// (the default database).
    app = make_app(leaderbeat_elector=None, result_expires=None)
    return make_scheduler(app, identity, cls=LeaderDatabaseScheduler)


def _last_run(task: PeriodicTask) -> datetime:
    value = PeriodicTask.objects.get(pk=task.pk).last_run_at
    assert value is not None
    return value


def test_one_scheduler_leads_saves_each_run_at_once_and_hands_over(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        periodic_task: Callable[..., PeriodicTask], tap: Any, ticker: Callable[..., Any],
        lease_name: str) -> None:
    task = periodic_task(every=1)
    a = _db_scheduler(make_app, make_scheduler, "dj-a")
    b = _db_scheduler(make_app, make_scheduler, "dj-b")
    assert isinstance(a.elector.store, DjangoLeaseStore)

    def received(count: int) -> Callable[[], bool]:
        return lambda: bool(tap.drain() or True) and len(tap.received) >= count

    ticker([a, b], received(1), timeout=30)
    leader, standby = (a, b) if a.is_leader else (b, a)
    assert not standby.is_leader

    ticker([a, b], received(3), timeout=30)
    # Each run is saved with its claim, not at the next periodic sync (every 3 min).
    entry = leader.schedule[task.name]
    assert entry.total_run_count == 3
    assert abs((_last_run(task) - entry.last_run_at).total_seconds()) < 0.01
    assert not leader._dirty

    before = len(tap.received)
    # The leader stops (ticked no more) and its lease runs out, with no sync.
    _expire_now("default", lease_name)
    ticker([standby], received(before + 3), timeout=30)
    assert standby.is_leader

    mine = [m for m in tap.received if m.headers.get("periodic_task_name") == task.name]
    due = [datetime.fromisoformat(m.headers["leaderbeat_scheduled_at"]) for m in mine]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(due, due[1:])]
    assert min(gaps) >= 0.9, gaps  # nothing sent twice across the handover
    assert sorted({m.headers["leaderbeat_term"] for m in mine}) == [1, 2]


def test_a_new_leader_takes_a_claimed_run_the_database_missed(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        periodic_task: Callable[..., PeriodicTask], tap: Any, ticker: Callable[..., Any]) -> None:
    long_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    task = periodic_task(every=3600, last_run_at=long_ago)  # due now, by the database
    a = _db_scheduler(make_app, make_scheduler, "dj-a")
    assert a.elector.is_leader()
    # The old leader claimed a run and died before saving last_run_at.
    claimed = datetime.now(timezone.utc) - timedelta(seconds=5)
    a.elector.claim({task.name: RunRecord(claimed, 7, a.elector.term).encode()})
    a.elector.release()

    b = _db_scheduler(make_app, make_scheduler, "dj-b")
    ticker([b], lambda: b.is_leader and not b._needs_takeover, timeout=30)
    for _ in range(5):
        b.tick()
    assert not tap.drain()
    assert abs((_last_run(task) - claimed).total_seconds()) < 0.01
    assert PeriodicTask.objects.get(pk=task.pk).total_run_count == 7


def test_saves_only_move_last_run_at_forward(periodic_task: Callable[..., PeriodicTask]
                                             ) -> None:
    newer = datetime.now(timezone.utc)
    task = periodic_task(every=60, last_run_at=newer)
    stale = LeaderModelEntry(task)
    stale.last_run_at = newer - timedelta(minutes=1)
    stale.save()
    assert _last_run(task) == newer
    fresh = LeaderModelEntry(task)
    fresh.last_run_at, fresh.total_run_count = newer + timedelta(seconds=1), 3
    fresh.save()
    assert _last_run(task) == newer + timedelta(seconds=1)


def test_a_fenced_out_run_is_neither_sent_nor_saved(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        periodic_task: Callable[..., PeriodicTask], tap: Any, lease_name: str) -> None:
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    task = periodic_task(every=60, last_run_at=long_ago)
    a = _db_scheduler(make_app, make_scheduler, "dj-a")
    assert a.elector.is_leader()
    # Another replica takes over while a still believes it leads (a pause, say).
    _expire_now("default", lease_name)
    rival = DjangoLeaseStore(lease_name, "default")
    assert rival.acquire("rival", "rival", 600).acquired
    for _ in range(3):
        a.tick()
    assert not a.is_leader
    assert not tap.drain()
    assert _last_run(task) == long_ago and not a._dirty


def test_replicas_are_listed_and_a_step_down_moves_leadership(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        ticker: Callable[..., Any], lease_name: str) -> None:
    a = _db_scheduler(make_app, make_scheduler, "dj-a")
    b = _db_scheduler(make_app, make_scheduler, "dj-b")
    store = DjangoLeaseStore(lease_name)
    ticker([a, b], lambda: a.is_leader or b.is_leader, timeout=30)
    leader, standby = (a, b) if a.is_leader else (b, a)

    def roles() -> dict[str, str]:
        return {r.identity: r.role for r in store.replicas()}

    ticker([a, b], lambda: roles() == {"dj-a": roles_of(a), "dj-b": roles_of(b)}, timeout=30)
    asked = store.request_step_down()
    assert asked is not None and asked.holder == leader.leader_settings.identity
    ticker([a, b], lambda: standby.is_leader, timeout=30)
    assert not leader.is_leader
    ticker([a, b], lambda: roles() == {"dj-a": roles_of(a), "dj-b": roles_of(b)}, timeout=30)
    leader.close()  # withdraws its record
    assert list(roles()) == [standby.leader_settings.identity]


def roles_of(scheduler: Any) -> str:
    return "leader" if scheduler.is_leader else "standby"
