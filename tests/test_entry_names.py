"""Any name round-trips exactly in every store; a claim refused for its data is no lost lease.

Real PostgreSQL, MariaDB and SQLite (SQL store), the private Redis and the
file store. Every SQL test has its own tables (a random
``leaderbeat_sql_table``), dropped at the end. The Django store is tested
with the same names in ``test_django_store.py``. Redis keeps names with
lone surrogates too (``SURROGATES``), here and through a scheduler's
ticks; ``test_redis_store.py`` checks them on Sentinel and Cluster, and in
identities.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_leaderbeat import ClaimRejected, LeaseElector, NotLeader
from celery_leaderbeat.backends import choose_elector
from celery_leaderbeat.lease import LeaseStore
from celery_leaderbeat.scheduler import TERM_HEADER
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.stores.file import FileLeaseStore
from celery_leaderbeat.stores.sql import SqlLeaseStore, engine_url
from celery_leaderbeat.testing import (
    SURROGATES,
    RedisServer,
    assert_each_name_keeps_its_own_history,
    redis_store,
    replica_record,
)

SERVERS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql://root@127.0.0.1:3306/test",
}
SQL = [*SERVERS, "sqlite"]

def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(engine_url(url))
    with engine.begin() as connection:
        for name in (f"{table}_replicas", f"{table}_runs", table, f"{table}_runs__new",
                     f"{table}__new"):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    engine.dispose()


@pytest.fixture(params=SQL)
def sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database URL and a table name used by this test alone."""
    url = SERVERS.get(request.param) or f"sqlite:///{tmp_path}/leases.db"
    table = f"lbn_{uuid.uuid4().hex[:12]}"
    yield {"url": url, "table": table, "engine": request.param}
    _drop(url, table)


def _settings(url: str, lease: str, **conf: Any) -> LeaderSettings:
    app = Celery("names", set_as_current=False)
    app.conf.update(leaderbeat_elector=url, leaderbeat_lease_name=lease, **conf)
    return LeaderSettings.from_app(app)


def _sql_store(sql: dict[str, str], lease: str = "names") -> SqlLeaseStore:
    url = sql["url"]
    return SqlLeaseStore.from_url(url, _settings(url, lease, leaderbeat_sql_table=sql["table"]))


@pytest.fixture
def stores(sql: dict[str, str]) -> Iterator[Callable[..., SqlLeaseStore]]:
    made: list[SqlLeaseStore] = []

    def make(lease: str = "names") -> SqlLeaseStore:
        store = _sql_store(sql, lease)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _leader(store: LeaseStore, identity: str = "replica") -> LeaseElector:
    elector = LeaseElector(store, identity=identity)
    assert elector.is_leader()
    return elector


def test_sql_names_round_trip_exactly(stores: Callable[..., SqlLeaseStore]) -> None:
    assert_each_name_keeps_its_own_history(stores())


def test_redis_names_round_trip_exactly(redis_server: RedisServer, lease_name: str) -> None:
    store = choose_elector(_settings(redis_server.url, lease_name)).elector.store
    try:
        assert_each_name_keeps_its_own_history(store, SURROGATES)
    finally:
        store.close()


def test_a_redis_leader_sends_an_entry_named_with_a_lone_surrogate_on_every_tick(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any], tap: Any,
        ticker: Callable[..., Any], redis_server: RedisServer, lease_name: str) -> None:
    """Its runs are claimed and sent like any other; the leader keeps its one term."""
    odd = "nightly-\ud800"
    every = {"schedule": timedelta(seconds=0.3)}
    app = make_app(beat_schedule={odd: {"task": "tests.odd", **every},
                                  "plain": {"task": "tests.plain", **every}})
    beat = make_scheduler(app, "a")

    def each_sent_three_times() -> bool:
        tap.drain()
        tasks = [m.headers["task"] for m in tap.received]
        return tasks.count("tests.odd") >= 3 and tasks.count("tests.plain") >= 3

    ticker([beat], each_sent_three_times, timeout=20)
    assert beat.is_leader
    assert {m.headers[TERM_HEADER] for m in tap.received} == {beat.term}
    store = redis_store(redis_server.url, lease_name)
    try:
        assert store.load_history().keys() == {odd, "plain"}
    finally:
        store.close()


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[FileLeaseStore]:
    url = f"file://{tmp_path}/leases"
    store = FileLeaseStore.from_url(url, _settings(url, "names"))
    yield store
    store.close()


def test_file_names_round_trip_exactly(file_store: FileLeaseStore) -> None:
    """Lone surrogates too, and two that pair into an emoji stay apart from it
    (JSON escapes would have made them one name)."""
    assert_each_name_keeps_its_own_history(file_store, SURROGATES)


def test_file_store_identities_with_lone_surrogates_are_listed_exactly(
        file_store: FileLeaseStore) -> None:
    for identity in SURROGATES:
        file_store.acquire(f"owner-{identity}", identity, 5, beat=replica_record(identity))
    assert sorted(r.identity for r in file_store.replicas()) == sorted(SURROGATES)
    file_store.withdraw(SURROGATES[0])
    assert SURROGATES[0] not in {r.identity for r in file_store.replicas()}


def test_the_file_store_reads_history_written_with_json_escapes(
        file_store: FileLeaseStore) -> None:
    """A state file from before names were written as they are reads as before."""
    Path(file_store.state_path).write_text(json.dumps(
        {"term": 1, "history": {"r\u00e9sum\u00e9": "a", "report \U0001f4c8": "b"}}))
    assert file_store.load_history() == {"r\u00e9sum\u00e9": "a", "report \U0001f4c8": "b"}


def test_lease_names_differing_in_case_are_two_leases(
        stores: Callable[..., SqlLeaseStore]) -> None:
    """Two beat groups named "Beat" and "beat" each have their own leader and history."""
    upper, lower = stores("Beat"), stores("beat")
    first, second = _leader(upper, "one"), _leader(lower, "two")
    first.claim({"entry": "upper"})
    second.claim({"entry": "lower"})
    assert (upper.load_history(), lower.load_history()) == ({"entry": "upper"},
                                                            {"entry": "lower"})
    assert upper.read().holder == "one" and lower.read().holder == "two"  # type: ignore[union-attr]
    long = stores("lease-" + "n" * 300)
    assert _leader(long, "three").term == 1


def test_replica_identities_differing_in_case_or_spaces_are_distinct(
        stores: Callable[..., SqlLeaseStore]) -> None:
    store = stores()
    identities = ["node", "Node", "node ", "nöde", "node-" + "z" * 300, "🖥️"]
    for identity in identities:
        store.acquire(f"{identity}/token", identity, 5.0,
                      beat=replica_record(identity, expires_in=30.0), take=False)
    assert sorted(r.identity for r in store.replicas()) == sorted(identities)
    # The one holding the lease is told apart too.
    assert store.acquire("x" * 400 + "/owner", "node ", 5.0).acquired
    assert store.read().holder == "node "  # type: ignore[union-attr]


def _add_check(store: SqlLeaseStore, engine: str) -> None:
    """A CHECK constraint the runs of entries named "poison..." break, as a DBA might add."""
    store.create_tables()
    table = store.engine.dialect.identifier_preparer.quote(store.run_table)
    constraint = "ADD CONSTRAINT no_poison CHECK (SUBSTR(entry_name, 1, 6) <> 'poison')"
    with store.engine.begin() as connection:
        if engine == "sqlite":  # SQLite adds no constraint to a table: rebuild it with one
            connection.exec_driver_sql(f"ALTER TABLE {table} RENAME TO old_runs")
            ddl = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'old_runs'").scalar()
            ddl = ddl.replace('"old_runs"', table).replace("old_runs", table)
            connection.exec_driver_sql(
                ddl.rstrip().rstrip(")") + ", CHECK (SUBSTR(entry_name, 1, 6) <> 'poison'))")
            connection.exec_driver_sql("DROP TABLE old_runs")
        else:
            connection.exec_driver_sql(f"ALTER TABLE {table} {constraint}")


def test_a_claim_refused_for_one_entry_claims_the_others_and_keeps_the_lease(
        stores: Callable[..., SqlLeaseStore], sql: dict[str, str]) -> None:
    store = stores()
    _add_check(store, sql["engine"])
    elector = _leader(store)
    term = elector.term
    runs = {"short": "1", "poison-entry": "2", "other": "3"}
    with pytest.raises(ClaimRejected) as refused:
        elector.claim(runs)
    assert refused.value.names == ("poison-entry",)
    assert store.load_history() == {"short": "1", "other": "3"}
    assert elector.is_leader() and elector.term == term
    # Alone, it is named too, and the lease is still ours.
    with pytest.raises(ClaimRejected, match=r"no_poison|CHECK|constraint") as alone:
        elector.claim({"poison-entry": "4"})
    assert alone.value.names == ("poison-entry",)
    assert elector.is_leader() and elector.term == term
    # A lost lease is still a lost lease.
    rival = stores()
    store.release(elector.owner, term)  # type: ignore[arg-type]
    assert _leader(rival, "rival").term == term + 1  # type: ignore[operator]
    with pytest.raises(Exception, match="term") as fenced:
        elector.claim({"short": "5"})
    assert type(fenced.value).__name__ == "FencedOut"
    with pytest.raises(NotLeader):
        elector.is_leader()


@pytest.mark.parametrize("name", ["nul\x00byte", "lone \ud800 surrogate"])
def test_a_name_the_database_cannot_take_is_refused_alone(
        stores: Callable[..., SqlLeaseStore], sql: dict[str, str], name: str) -> None:
    """PostgreSQL text cannot hold NUL; no UTF-8 text holds a lone surrogate."""
    store = stores()
    elector = _leader(store)
    try:
        elector.claim({"short": "1", name: "2"})
    except ClaimRejected as refused:
        assert refused.names == (name,)
        assert store.load_history() == {"short": "1"}
    else:  # the database took it: then it must round-trip exactly
        assert "\x00" in name and sql["engine"] != "postgresql"
        assert store.load_history() == {"short": "1", name: "2"}
    assert elector.is_leader() and elector.term == 1


# -- tables made by celery-leaderbeat 0.1 ----------------------------------------------


def _v01_metadata(table: str) -> sa.MetaData:
    """The tables exactly as celery-leaderbeat 0.1 created them (stores/sql.py, 0.1)."""
    metadata = sa.MetaData()
    sa.Table(
        table, metadata,
        sa.Column("name", sa.String(191), primary_key=True),
        sa.Column("owner", sa.String(255)),
        sa.Column("holder", sa.String(255)),
        sa.Column("term", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("acquired_at", sa.Float(53)),
        sa.Column("renewed_at", sa.Float(53)),
        sa.Column("expires_at", sa.Float(53)),
        sa.Column("transitions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_holder", sa.String(255)),
        sa.Column("step_down_term", sa.BigInteger),
    )
    sa.Table(
        f"{table}_runs", metadata,
        sa.Column("lease_name", sa.String(191), primary_key=True),
        sa.Column("entry_name", sa.String(255), primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
    )
    sa.Table(
        f"{table}_replicas", metadata,
        sa.Column("lease_name", sa.String(191), primary_key=True),
        sa.Column("replica", sa.String(255), primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("beat_at", sa.Float(53), nullable=False),
        sa.Column("expires_at", sa.Float(53), nullable=False),
    )
    return metadata


def _make_v01_tables(sql: dict[str, str]) -> None:
    engine = sa.create_engine(engine_url(sql["url"]))
    metadata = _v01_metadata(sql["table"])
    metadata.create_all(engine)
    lease, runs, replicas = (metadata.tables[n] for n in (
        sql["table"], f"{sql['table']}_runs", f"{sql['table']}_replicas"))
    with engine.begin() as connection:
        connection.execute(lease.insert(), [
            {"name": "names", "owner": None, "holder": None, "term": 41, "transitions": 7,
             "last_holder": "old-replica"},
            {"name": "other-group", "owner": None, "holder": None, "term": 3, "transitions": 1,
             "last_holder": "x"}])
        connection.execute(runs.insert(), [
            {"lease_name": "names", "entry_name": "Report", "record": "r1"},
            {"lease_name": "names", "entry_name": "résumé", "record": "r2"},
            {"lease_name": "other-group", "entry_name": "Report", "record": "other"}])
        connection.execute(replicas.insert(), [
            {"lease_name": "names", "replica": "old-replica", "record": "{}", "beat_at": 0.0,
             "expires_at": 0.0}])
    engine.dispose()


def test_tables_of_0_1_are_rebuilt_in_place_and_keep_their_rows(
        sql: dict[str, str], stores: Callable[..., SqlLeaseStore]) -> None:
    _make_v01_tables(sql)
    replicas = [stores() for _ in range(4)]
    errors: list[BaseException] = []

    def start(store: SqlLeaseStore) -> None:
        try:
            store.create_tables()
        except BaseException as exc:
            errors.append(exc)

    # Several replicas start at once: one rebuilds, the others find the new layout.
    threads = [threading.Thread(target=start, args=(s,)) for s in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    store = replicas[0]
    assert store.load_history() == {"Report": "r1", "résumé": "r2"}
    assert stores("other-group").load_history() == {"Report": "other"}
    elector = _leader(store, "old-replica")  # the same holder as before: no new transition
    assert elector.term == 42
    assert store.read().transitions == 7  # type: ignore[union-attr]
    # And the rebuilt tables take what 0.1's could not.
    assert_each_name_keeps_its_own_history(stores("fresh"))
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns(store.run_table)}
    assert columns == {"lease_key", "entry_key", "entry_name", "record"}


def test_refused_runs_are_logged_at_error_once_per_minute_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    from celery_leaderbeat.rejections import RejectedRuns

    now = [0.0]
    counted: list[None] = []

    class Metrics:
        def claim_rejected(self) -> None:
            counted.append(None)

    report = RejectedRuns(clock=lambda: now[0])
    refusal = ClaimRejected("CHECK constraint failed", ["poison-entry"])
    with caplog.at_level("ERROR", logger="celery.beat.leaderbeat"):
        for second in range(0, 125, 2):  # every 2 s for two minutes
            now[0] = float(second)
            report.report(refusal, Metrics())
    lines = [r.getMessage() for r in caplog.records if "poison-entry" in r.getMessage()]
    assert len(lines) == 3 and len(counted) == 63
    assert "CHECK constraint failed" in lines[0] and "29 more refused" in lines[1]
