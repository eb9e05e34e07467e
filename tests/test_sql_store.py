"""The SQLAlchemy lease store on the real PostgreSQL and MariaDB of this machine, and SQLite files.

Every test has its own tables (a random ``leaderbeat_sql_table``), dropped at
the end, so runs by other people on the same servers never meet ours.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat import LeaseElector, NotLeader, StoreUnavailable
from celery_leaderbeat.backends import choose_elector
from celery_leaderbeat.lease import Renewal
from celery_leaderbeat.registry import (
    LEADER,
    STANDBY,
    ReplicaRegistry,
    StepDownRequest,
)
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.stores.sql import SqlLeaseStore, engine_url
from celery_leaderbeat.testing import free_port, replica_record, wait_for

SERVERS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql://root@127.0.0.1:3306/test",
}
BACKENDS = [*SERVERS, "sqlite"]


def _settings(url: str, table: str, lease: str, **conf: Any) -> LeaderSettings:
    app = Celery("sqltest", set_as_current=False)
    app.conf.update(leaderbeat_elector=url, leaderbeat_sql_table=table,
                    leaderbeat_lease_name=lease, **conf)
    return LeaderSettings.from_app(app)


def _store(url: str, table: str, lease: str) -> SqlLeaseStore:
    return SqlLeaseStore.from_url(url, _settings(url, table, lease))


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database URL and table and lease names used by this test alone."""
    url = SERVERS.get(request.param) or f"sqlite:///{tmp_path}/leases.db"
    table = f"lbt_{uuid.uuid4().hex[:12]}"
    yield {"url": url, "table": table, "lease": f"lease-{uuid.uuid4().hex[:8]}"}
    engine = sa.create_engine(engine_url(url))
    with engine.begin() as connection:
        for name in (f"{table}_replicas", f"{table}_runs", table):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    engine.dispose()


@pytest.fixture
def make_store(database: dict[str, str]) -> Iterator[Callable[[], SqlLeaseStore]]:
    stores: list[SqlLeaseStore] = []

    def make() -> SqlLeaseStore:
        store = _store(database["url"], database["table"], database["lease"])
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _set_expiry(store: SqlLeaseStore, seconds_from_now: float) -> None:
    """Move the lease's expiry, on the database's own clock."""
    with store.engine.begin() as connection:
        now = store._sql("{now}")
        connection.exec_driver_sql(
            f"UPDATE {store.lease_table} SET expires_at = {now} + {seconds_from_now:f}")


def test_acquire_renew_release_with_increasing_terms(make_store: Callable[[], SqlLeaseStore]
                                                     ) -> None:
    a, b = make_store(), make_store()
    first = a.acquire("owner-a", "replica-a", 30)
    assert first.acquired and first.lease.term == 1
    refused = b.acquire("owner-b", "replica-b", 30)
    assert not refused.acquired
    assert (refused.lease.holder, refused.lease.term) == ("replica-a", 1)

    again = a.acquire("owner-a", "replica-a", 30)  # already ours: same term, extended
    assert again.acquired and again.lease.term == 1
    assert a.renew("owner-a", 1, 30) is Renewal.RENEWED
    assert b.renew("owner-b", 1, 30) is Renewal.LOST
    assert not b.release("owner-b", 1)

    lease = b.read()
    assert lease is not None and lease.holder == "replica-a" and lease.term == 1
    assert lease.transitions == 1 and 25 < (lease.expires_in or 0) <= 30
    assert lease.acquired_at is not None and lease.renewed_at is not None

    assert a.release("owner-a", 1)
    assert b.read() is None
    taken = b.acquire("owner-b", "replica-b", 30)
    assert taken.acquired and taken.lease.term == 2
    assert a.renew("owner-a", 1, 30) is Renewal.LOST
    lease = a.read()
    assert lease is not None and lease.transitions == 2


def test_expiry_is_judged_by_the_database_clock(make_store: Callable[[], SqlLeaseStore]) -> None:
    a, b = make_store(), make_store()
    assert a.acquire("owner-a", "replica-a", 600).acquired
    assert not b.acquire("owner-b", "replica-b", 600).acquired
    # The lease says it expired a second ago by the database's clock: b takes it
    # at once, although a asked for ten minutes a moment ago.
    _set_expiry(a, -1.0)
    taken = b.acquire("owner-b", "replica-b", 600)
    assert taken.acquired and taken.lease.term == 2
    assert a.renew("owner-a", 1, 600) is Renewal.LOST


def test_lease_expires_after_its_ttl(make_store: Callable[[], SqlLeaseStore]) -> None:
    a, b = make_store(), make_store()
    started = time.monotonic()
    assert a.acquire("owner-a", "replica-a", 0.6).acquired
    wait_for(lambda: b.acquire("owner-b", "replica-b", 5).acquired, timeout=10,
             message="the expired lease taken over")
    # The database cannot have let go before the TTL passed on its clock.
    assert time.monotonic() - started >= 0.55
    lease = a.read()
    assert lease is not None and (lease.holder, lease.term) == ("replica-b", 2)


def test_a_stale_term_cannot_claim(make_store: Callable[[], SqlLeaseStore]) -> None:
    a, b = make_store(), make_store()
    assert a.acquire("owner-a", "replica-a", 600).acquired
    assert a.claim("owner-a", 1, {"every-minute": "run-1"})
    _set_expiry(a, -1.0)
    # Expired, even before anyone took over: no claim.
    assert not a.claim("owner-a", 1, {"every-minute": "run-2"})
    assert b.acquire("owner-b", "replica-b", 600).acquired
    assert not a.claim("owner-a", 1, {"every-minute": "run-2"})
    assert not a.forget("owner-a", 1, ["every-minute"])
    assert not b.claim("owner-b", 1, {"every-minute": "run-2"})  # right owner, wrong term
    assert b.load_history() == {"every-minute": "run-1"}
    assert b.claim("owner-b", 2, {"every-minute": "run-2", "hourly": "run-9"})
    assert a.load_history() == {"every-minute": "run-2", "hourly": "run-9"}
    assert b.forget("owner-b", 2, ["hourly", "never-existed"])
    assert a.load_history() == {"every-minute": "run-2"}


def test_tables_are_created_on_first_use_under_the_configured_name(
        make_store: Callable[[], SqlLeaseStore], database: dict[str, str]) -> None:
    store = make_store()
    inspector = sa.inspect(store.engine)
    assert not inspector.has_table(database["table"])
    assert store.read() is None
    inspector = sa.inspect(store.engine)
    assert inspector.has_table(database["table"])
    assert inspector.has_table(database["table"] + "_runs")
    assert database["table"] in store.description


def test_threads_racing_never_both_hold(make_store: Callable[[], SqlLeaseStore],
                                        lease_race: Callable[..., list[list[int]]]) -> None:
    """Eight replicas race for a free (released or expired) lease, round after round."""
    assert lease_race(make_store, replicas=8, rounds=6) == [[t] for t in range(1, 7)]


@pytest.mark.processes
def test_processes_racing_never_both_hold(database: dict[str, str],
                                          lease_race: Callable[..., list[list[int]]]) -> None:
    _store(database["url"], database["table"], database["lease"]).create_tables()
    terms = lease_race(lambda: _store(database["url"], database["table"], database["lease"]),
                       replicas=4, rounds=6, processes=True)
    assert terms == [[t] for t in range(1, 7)]


@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:{port}/test",
    "mysql://root@127.0.0.1:{port}/test",
])
def test_an_unreachable_database_is_unavailable_quickly(url: str) -> None:
    url = url.format(port=free_port())  # nothing listens there
    settings = _settings(url, "leaderbeat_lease", "unreachable")
    elector = choose_elector(settings).elector
    assert isinstance(elector, LeaseElector)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        elector.store.acquire("owner", "replica", 5)
    with pytest.raises(NotLeader, match="store unavailable"):
        elector.is_leader()
    assert time.monotonic() - started < 5
    elector.close()


def test_urls_get_our_drivers_and_never_show_passwords() -> None:
    assert engine_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("mysql://u@h/db") == "mysql+pymysql://u@h/db"
    assert engine_url("mariadb://u@h/db") == "mariadb+pymysql://u@h/db"
    assert engine_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    url = "postgresql://beat:s3cret-pw@127.0.0.1:5432/test"
    store = SqlLeaseStore.from_url(url, _settings(url, "leaderbeat_lease", "pw"))
    assert "s3cret-pw" not in store.description and "s3cret-pw" not in repr(store)
    assert store.engine.dialect.driver == "psycopg"
    store.close()


def test_a_bad_table_name_is_refused_naming_the_setting() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"leaderbeat_sql_table.*CELERY_LEADERBEAT_SQL"):
        _settings("sqlite:///x.db", "lease; DROP TABLE x", "bad")


def test_the_elector_setting_builds_a_sql_lease_elector(database: dict[str, str]) -> None:
    elector = choose_elector(_settings(database["url"], database["table"],
                                       database["lease"])).elector
    assert isinstance(elector, LeaseElector) and isinstance(elector.store, SqlLeaseStore)
    try:
        assert elector.is_leader() and elector.term == 1
        elector.claim({"entry": "record"})
        assert elector.load_history() == {"entry": "record"}
        elector.release()
        assert elector.store.read() is None
    finally:
        elector.close()


def _roles(store: SqlLeaseStore) -> dict[str, tuple[str, int | None]]:
    return {r.identity: (r.role, r.term) for r in store.replicas()}


def _column(store: SqlLeaseStore, sql: str) -> list[Any]:
    with store.engine.connect() as connection:
        return [row[0] for row in connection.exec_driver_sql(sql)]


def test_heartbeat_records_ride_on_acquire_and_renew(make_store: Callable[[], SqlLeaseStore]
                                                     ) -> None:
    a, b = make_store(), make_store()
    assert isinstance(a, ReplicaRegistry) and not hasattr(a, "heartbeat")
    # take=False never takes a free lease, but says nobody holds it and writes the record.
    free = a.acquire("owner-a", "replica-a", 30, beat=replica_record("replica-a"), take=False)
    assert not free.acquired and (free.lease.holder, free.lease.term) == (None, 0)
    assert a.read() is None and _roles(a) == {"replica-a": (STANDBY, None)}

    assert a.acquire("owner-a", "replica-a", 30, beat=replica_record("replica-a")).acquired
    assert not b.acquire("owner-b", "replica-b", 30, beat=replica_record("replica-b")).acquired
    b.acquire("owner-gone", "replica-gone", 30, beat=replica_record("replica-gone", 0.3),
              take=False)
    listed = b.replicas()
    assert [(r.identity, r.role, r.term) for r in listed][:2] == [
        ("replica-a", LEADER, 1), ("replica-b", STANDBY, None)]
    assert all(0 <= (r.heartbeat_age or 0) < 5 for r in listed)
    assert 25 < (listed[0].expires_in or 0) <= 30
    wait_for(lambda: len(b.replicas()) == 2, timeout=10, message="a silent replica gone")

    # take=False on a held lease reports the holder (even to the holder itself).
    held = a.acquire("owner-a", "replica-a", 30, beat=replica_record("replica-a"), take=False)
    assert not held.acquired and (held.lease.holder, held.lease.term) == ("replica-a", 1)
    assert _roles(a)["replica-a"] == (STANDBY, None)
    assert a.renew("owner-a", 1, 30, beat=replica_record("replica-a")) is Renewal.RENEWED
    assert b.renew("owner-b", 1, 30, beat=replica_record("replica-b")) is Renewal.LOST
    assert _roles(a) == {"replica-a": (LEADER, 1), "replica-b": (STANDBY, None)}
    # Writing a record drops the expired ones from the table.
    assert sorted(_column(a, f"SELECT replica FROM {a.replica_table}")) == [
        "replica-a", "replica-b"]

    a.withdraw("replica-b")
    assert _roles(b) == {"replica-a": (LEADER, 1)}


def test_a_step_down_request_is_answered_by_the_renewal_of_its_term(
        make_store: Callable[[], SqlLeaseStore]) -> None:
    a, b = make_store(), make_store()
    assert a.request_step_down() is None  # nobody holds the lease
    assert a.acquire("owner-a", "replica-a", 30).acquired
    assert b.request_step_down() == StepDownRequest("replica-a", 1)
    assert a.renew("owner-a", 2, 30) is Renewal.LOST  # another term: not asked

    stepped = a.renew("owner-a", 1, 30, beat=replica_record("replica-a"))
    assert stepped is Renewal.STEPPED_DOWN
    assert a.read() is None and _roles(a) == {"replica-a": (STANDBY, None)}
    assert _column(a, f"SELECT step_down_term FROM {a.lease_table}") == [None]  # seen once
    taken = b.acquire("owner-b", "replica-b", 30)  # at once, without waiting for the TTL
    assert taken.acquired and taken.lease.term == 2
    assert b.renew("owner-b", 2, 30) is Renewal.RENEWED
    assert a.renew("owner-a", 1, 30) is Renewal.LOST

    # A request left unanswered (its leader's lease expired) never touches a later term,
    # even of the same owner.
    assert a.request_step_down() == StepDownRequest("replica-b", 2)
    _set_expiry(a, -1.0)
    assert b.acquire("owner-b", "replica-b", 30).lease.term == 3
    assert b.renew("owner-b", 3, 30) is Renewal.RENEWED
    assert b.renew("owner-b", 2, 30) is Renewal.LOST
    lease = a.read()
    assert lease is not None and (lease.holder, lease.term) == ("replica-b", 3)


def test_a_lease_table_from_before_the_registry_gets_its_new_column(
        make_store: Callable[[], SqlLeaseStore], database: dict[str, str]) -> None:
    store = make_store()
    with store.engine.begin() as connection:  # the lease table as the first version made it
        connection.exec_driver_sql(
            f"CREATE TABLE {database['table']} (name VARCHAR(191) PRIMARY KEY, "
            "owner VARCHAR(255), holder VARCHAR(255), term BIGINT NOT NULL DEFAULT 0, "
            "acquired_at DOUBLE PRECISION, renewed_at DOUBLE PRECISION, "
            "expires_at DOUBLE PRECISION, "
            "transitions BIGINT NOT NULL DEFAULT 0, last_holder VARCHAR(255))")
    assert store.acquire("owner", "replica", 30).acquired
    asked = store.request_step_down()
    assert asked is not None and asked.term == 1
