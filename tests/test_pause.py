"""``celery leaderbeat pause`` / ``resume``: dispatch held cluster-wide, fenced in the store.

Store level on every built-in store (the claim refused while paused, the
lease kept, the renewal saying so, ``--for`` judged by the store's clock);
one scheduler paused between its renewal and its claim; real beat clusters
on Redis, PostgreSQL and etcd, run through the command line as an operator would.
The Django store's cluster test is in test_django_beat.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_leaderbeat import signals
from celery_leaderbeat.backends import build_store
from celery_leaderbeat.lease import LeaseStore, LeaseTiming, Renewal
from celery_leaderbeat.pause import (
    DispatchPause,
    DispatchPaused,
    DispatchResume,
    now,
    parse_duration,
)
from celery_leaderbeat.testing import (
    BeatCluster,
    EtcdCluster,
    RedisServer,
    duplicate_runs,
    etcd_executable,
    store_settings,
    wait_for,
)

POSTGRESQL = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL = "mysql://root@127.0.0.1:3306/test"
TIMING = LeaseTiming(ttl=4.0, renew_interval=0.3, retry_interval=0.3)


def test_durations() -> None:
    assert parse_duration("90") == 90.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("1d") == 86400.0
    assert parse_duration("250ms") == 0.25
    for bad in ("", "0", "-5s", "5 weeks", "m", "1x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- every store -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """One private etcd member for this module's etcd tests, started at first use."""
    if etcd_executable() is None:
        pytest.skip("etcd is not installed (make servers installs it)")
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture(params=["redis", "file", "sqlite", "postgresql", "mysql", "etcd"])
def store(request: pytest.FixtureRequest, redis_server: RedisServer,
          tmp_path: Path) -> Iterator[LeaseStore]:
    name = f"pause-{uuid.uuid4().hex[:10]}"
    table = f"lbpause_{uuid.uuid4().hex[:8]}"
    if request.param == "etcd":
        url = request.getfixturevalue("etcd").url
    else:
        url = {"redis": redis_server.url, "file": f"file://{tmp_path}/beat.lock",
               "sqlite": f"sqlite:///{tmp_path}/lease.db", "postgresql": POSTGRESQL,
               "mysql": MYSQL}[request.param]
    made = build_store(url.split(":")[0], url, store_settings(name, elector=url, sql_table=table))
    yield made
    made.close()
    engine = getattr(made, "engine", None)
    if engine is not None and request.param != "sqlite":
        with engine.begin() as connection:
            for suffix in ("_replicas", "_runs", ""):
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{suffix}")
        engine.dispose()


def test_a_pause_refuses_claims_keeps_the_lease_and_resume_records_the_choice(
        store: Any) -> None:
    term = store.acquire("owner-a", "a", 30).lease.term
    assert store.claim("owner-a", term, {"tick": "first"})
    assert store.read_pause().pause is None
    assert store.renew("owner-a", term, 30) is Renewal.RENEWED

    store.pause(DispatchPause("ops@host", now(), "migration"))

    with pytest.raises(DispatchPaused) as refused:
        store.claim("owner-a", term, {"tick": "second"})
    assert (refused.value.pause.paused_by, refused.value.pause.reason) == ("ops@host",
                                                                         "migration")
    assert store.load_history() == {"tick": "first"}  # nothing written
    assert store.renew("owner-a", term, 30) is Renewal.PAUSED  # still ours, and it says so
    assert store.claim("owner-b", term + 1, {"tick": "x"}) is False  # not ours: a plain no
    state = store.read_pause()
    assert state.pause is not None and state.pause.reason == "migration"
    assert state.pause.expires_in is None  # until resumed

    ended = store.resume(DispatchResume("ops@host", now(), "skip"))

    assert ended is not None and ended.same_as(state.pause)
    assert store.resume(DispatchResume("ops@host", now(), "once")) is None  # nothing to end
    assert store.renew("owner-a", term, 30) is Renewal.RENEWED
    after = store.read_pause()
    assert after.pause is None
    assert after.last_resume is not None and after.last_resume.catch_up == "skip"
    assert state.pause.same_as(after.last_resume.ended)
    assert store.claim("owner-a", term, {"tick": "third"})
    assert store.load_history() == {"tick": "third"}


def test_a_pause_for_a_duration_ends_by_itself(store: Any) -> None:
    term = store.acquire("owner-a", "a", 30).lease.term
    store.pause(DispatchPause("ops@host", now(), "short", duration=1.0))
    state = store.read_pause()
    assert state.pause is not None and 0 < (state.pause.expires_in or 0) <= 1.0
    with pytest.raises(DispatchPaused):
        store.claim("owner-a", term, {"tick": "held"})

    wait_for(lambda: store.read_pause().pause is None, 5, message="the pause running out")

    assert store.renew("owner-a", term, 30) is Renewal.RENEWED
    assert store.claim("owner-a", term, {"tick": "sent"})
    assert store.resume(DispatchResume("ops@host", now())) is None  # it ended already


def test_an_etcd_pause_lasts_whole_seconds_and_an_open_pause_replaces_a_timed_one(
        etcd: EtcdCluster, lease_name: str) -> None:
    """``--for`` is an etcd lease: whole seconds, rounded up, at least etcd's minimum
    TTL, and the record says what etcd granted. Replacing a timed pause with an open
    one detaches it from that lease, so it does not end when the lease expires."""
    store: Any = build_store("etcd", etcd.url, store_settings(lease_name, elector=etcd.url))
    try:
        term = store.acquire("owner-a", "a", 30).lease.term
        store.pause(DispatchPause("ops@host", now(), "brief", duration=0.3))
        timed = store.read_pause().pause
        assert timed is not None and timed.duration == 2.0  # etcd's minimum, not 0.3
        time.sleep(1.0)  # past the 0.3 s asked: still held, as the record says
        with pytest.raises(DispatchPaused):
            store.claim("owner-a", term, {"tick": "held"})

        store.pause(DispatchPause("ops@host", now(), "open"))
        time.sleep(1.5)  # the timed pause's etcd lease has expired
        state = store.read_pause().pause
        assert state is not None and state.reason == "open" and state.expires_in is None
        assert store.renew("owner-a", term, 30) is Renewal.PAUSED
        ended = store.resume(DispatchResume("ops@host", now()))
        assert ended is not None and ended.reason == "open"
        assert store.claim("owner-a", term, {"tick": "sent"})
    finally:
        store.close()


# -- a leader paused between its renewal and its claim ----------------------------------


def test_a_leader_paused_in_the_middle_of_a_tick_publishes_nothing_and_keeps_its_lease(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        make_tap: Any, ticker: Callable[..., Any]) -> None:
    app = make_app(beat_schedule={"tick": {"task": "t.tick", "schedule": 1.0}},
                   leaderbeat_renew_interval=60.0, leaderbeat_lease_ttl=120.0)
    tap = make_tap(app, app.conf.task_default_queue)
    leader = make_scheduler(app, "a")
    events: list[str] = []

    def on_paused(sender: Any, pause: DispatchPause, **kwargs: Any) -> None:
        events.append(f"paused {pause.reason}")

    def on_resumed(sender: Any, catch_up: str, **kwargs: Any) -> None:
        events.append(f"resumed {catch_up}")

    signals.dispatch_paused.connect(on_paused, sender=leader)
    signals.dispatch_resumed.connect(on_resumed, sender=leader)
    ticker([leader], lambda: tap.count() >= 1, timeout=10)
    term = leader.term
    store = leader.elector.store
    runs = leader.schedule["tick"].total_run_count

    # The renewal is a minute away: only the claim can tell this leader.
    store.pause(DispatchPause("ops@host", now(), "mid-tick"))
    time.sleep(1.2)  # the entry falls due
    for _ in range(5):
        leader.tick()

    assert tap.count() == 1  # nothing more published
    assert leader.is_leader and leader.term == term  # not a lost lease
    assert leader.schedule["tick"].total_run_count == runs  # held, not advanced
    assert events == ["paused mid-tick"]
    assert leader.elector.seconds_until_renewal() > 30  # it sleeps to its renewal: no hot loop
    assert leader.tick() > 30

    store.resume(DispatchResume("ops@host", now(), "once"))
    leader.elector._renew_at = 0.0  # its renewal is due now
    ticker([leader], lambda: tap.count() >= 2, timeout=5)
    time.sleep(0.5)
    assert tap.count() == 2  # one catch-up run
    assert events == ["paused mid-tick", "resumed once"]
    assert leader.term == term
    signals.dispatch_paused.disconnect(on_paused, sender=leader)
    signals.dispatch_resumed.disconnect(on_resumed, sender=leader)


# -- real clusters, through the command line -----------------------------------------------

#: One run every 4 s: a catch-up run at resume stands apart from the next regular one.
SCHEDULE = {"every-4s": {"task": "leaderbeat.tests.every_4s", "every": 4.0},
            "every-5s": {"task": "leaderbeat.tests.every_5s", "every": 5.0}}


def _pause_scenario(cluster: BeatCluster, catch_up: str) -> None:
    """Pause, let every entry fall due, kill -9 the leader, then resume with ``catch_up``."""
    store: Any = cluster.lease_store()
    leader = wait_for(cluster.leader_by_lease, 60, message="a leader")
    wait_for(lambda: len(cluster.recorder.publishes()) >= 2, 30, message="runs before the pause")

    done = cluster.leaderbeat("pause", "--reason", "db migration")
    assert done.returncode == 0, done.stderr
    paused_at = time.monotonic()
    assert "paused dispatch of lease" in done.stdout and "db migration" in done.stdout
    status = cluster.leaderbeat("status", "--json")
    assert status.returncode == 0, status.stderr  # a paused cluster is healthy
    doc = json.loads(status.stdout)
    assert doc["pause"]["reason"] == "db migration" and doc["pause"]["until"] is None
    assert "PAUSED" in doc["reason"]
    health = cluster.leaderbeat("health")
    assert health.returncode == 0 and "dispatch PAUSED by" in health.stdout, health

    wait_for(lambda: "dispatch of" in leader.log() and "is paused by" in leader.log(), 10,
             message="the leader logging the pause")
    time.sleep(4.5)  # every entry falls due at least once while paused
    # A new leader elected during the pause dispatches nothing either.
    old_term = store.read().term
    leader.kill()
    new = wait_for(lambda: (lease := store.read()) is not None and lease.term != old_term
                   and cluster.replica_named(lease.holder), 30, message="a new leader")
    wait_for(lambda: "is paused by" in new.log(), 10, message="the new leader holding")
    time.sleep(1.0)
    held = [p for p in cluster.recorder.publishes() if p.mono > paused_at]
    assert held == [], held

    asked_at = time.monotonic()
    done = cluster.leaderbeat("resume", "--catch-up", catch_up)
    resumed_at = time.monotonic()  # the command has returned (the leader may be quicker)
    assert done.returncode == 0, done.stderr
    assert f"catch-up {catch_up}" in done.stdout
    wait_for(lambda: "resumed by" in new.log(), 5, message="the leader logging the resume")
    time.sleep(6.0)  # the regular runs after the catch-up
    after = [p for p in cluster.recorder.publishes() if p.mono > asked_at]
    first = {task: min((p.mono for p in after if p.task == task), default=None)
             for task in ("leaderbeat.tests.every_4s", "leaderbeat.tests.every_5s")}
    soon = TIMING.renew_interval + 0.7  # one renewal, and the tick after it
    if catch_up == "once":
        # One catch-up run per entry within one renewal, then the next only an interval later.
        for task, at in first.items():
            assert at is not None and at - resumed_at <= soon, (task, at, resumed_at,
                                                                   cluster.logs())
            early = [p for p in after if p.task == task and p.mono - asked_at < 3.5]
            assert len(early) == 1, early
    else:
        # Skipped: each entry's next run is a whole interval after the resume, as the
        # store records it (the command may still be exiting well after it wrote it).
        resume = store.read_pause().last_resume
        assert resume is not None and resume.resumed_at is not None
        since = resume.resumed_at.timestamp()
        for task in first:
            run = min((p.wall for p in after if p.task == task), default=None)
            assert run is not None and run - since >= 3.5, (task, run, since)
    publishes = cluster.recorder.publishes()
    assert not duplicate_runs(publishes), duplicate_runs(publishes)
    assert cluster.exited_by_themselves() == []  # none but the one killed on purpose


def test_pause_and_resume_on_redis(redis_server: RedisServer) -> None:
    with BeatCluster(redis_server.url, replicas=2, elector=redis_server.url, timing=TIMING,
                     schedule=SCHEDULE) as cluster:
        _pause_scenario(cluster, "once")


#: etcd's shortest lease; an entry every 2 s stands apart from the catch-up run.
ETCD_TIMING = LeaseTiming(ttl=2.0, renew_interval=0.3, retry_interval=0.3)


def test_pause_holds_a_running_leader_on_etcd_and_resume_catches_up_once(
        redis_server: RedisServer, etcd: EtcdCluster, lease_name: str) -> None:
    schedule = {"every-2s": {"task": "leaderbeat.tests.every_2s", "every": 2.0}}
    with BeatCluster(redis_server.url, replicas=2, elector=etcd.url, timing=ETCD_TIMING,
                     lease_name=lease_name, queue=lease_name, schedule=schedule) as cluster:
        leader = wait_for(cluster.leader_by_lease, 60, message="a leader in etcd")
        wait_for(lambda: cluster.recorder.publishes(), 30, message="a run before the pause")
        done = cluster.leaderbeat("pause", "--reason", "etcd maintenance")
        paused_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "is paused by" in leader.log(), 5, message="the leader holding")
        time.sleep(2.5)  # the entry falls due while paused
        held = [p for p in cluster.recorder.publishes() if p.mono > paused_at]
        assert held == [], held
        assert "dispatch: PAUSED" in cluster.leaderbeat("status").stdout

        done = cluster.leaderbeat("resume", "--catch-up", "once")
        resumed_at = time.monotonic()
        assert done.returncode == 0 and "catch-up once" in done.stdout, done
        first = wait_for(lambda: [p for p in cluster.recorder.publishes()
                                  if p.mono > paused_at], 5, message="the catch-up run")
        assert first[0].mono - resumed_at <= ETCD_TIMING.renew_interval + 0.7
        time.sleep(1.5)  # before the next regular run, 2 s after the catch-up
        after = [p for p in cluster.recorder.publishes() if p.mono > paused_at]
        assert len(after) == 1, after  # caught up once, not once per missed run
        assert cluster.leader_by_lease() is leader  # held dispatch, kept the lease
        assert not duplicate_runs(cluster.recorder.publishes())
        assert cluster.exited_by_themselves() == []


@pytest.fixture
def pg_table() -> Iterator[str]:
    table = f"lbpause_{uuid.uuid4().hex[:8]}"
    yield table
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRESQL.replace("postgresql:", "postgresql+psycopg:"))
    with engine.begin() as connection:
        for suffix in ("_replicas", "_runs", ""):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{suffix}")
    engine.dispose()


def test_pause_and_resume_skipping_on_postgresql(redis_server: RedisServer,
                                                 pg_table: str) -> None:
    with BeatCluster(redis_server.url, replicas=2, elector=POSTGRESQL, timing=TIMING,
                     schedule=SCHEDULE, conf={"leaderbeat_sql_table": pg_table}) as cluster:
        _pause_scenario(cluster, "skip")


def test_pause_for_a_duration_ends_by_itself_and_shows_in_status(
        redis_server: RedisServer) -> None:
    with BeatCluster(redis_server.url, replicas=2, elector=redis_server.url, timing=TIMING,
                     schedule={"every-second": {"task": "leaderbeat.tests.s", "every": 1.0}}
                     ) as cluster:
        wait_for(lambda: cluster.recorder.publishes(), 60, message="a first run")
        done = cluster.leaderbeat("pause", "--for", "3s", "--reason", "short")
        paused_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        pause = cluster.lease_store().read_pause().pause
        assert pause is not None and pause.until is not None
        status = cluster.leaderbeat("status")
        assert "dispatch: PAUSED" in status.stdout and "reason:       short" in status.stdout
        assert status.returncode == 0, status
        time.sleep(2.0)
        assert [p for p in cluster.recorder.publishes() if p.mono > paused_at] == []
        wait_for(lambda: [p for p in cluster.recorder.publishes() if p.mono > paused_at], 10,
                 message="runs after the pause ran out")
        first = min((p for p in cluster.recorder.publishes() if p.mono > paused_at),
                    key=lambda p: p.mono)
        # Not before the pause ran out, by its record (the command may still be exiting
        # well after it wrote it); soon after, at the leader's next renewal.
        assert first.wall >= pause.until.timestamp() - 0.1, (first, pause)
        assert first.mono - paused_at <= 3.0 + TIMING.renew_interval + 1.0
        leader = cluster.leader_by_lease()
        assert leader is not None and "(the pause ran out)" in leader.log()
        assert "dispatch: PAUSED" not in cluster.leaderbeat("status").stdout
        assert not duplicate_runs(cluster.recorder.publishes())


def test_banner_says_paused_and_bad_durations_are_refused(redis_server: RedisServer) -> None:
    cluster = BeatCluster(redis_server.url, replicas=1, elector=redis_server.url, timing=TIMING)
    try:  # paused before the replica starts
        bad = cluster.leaderbeat("pause", "--for", "soon")
        assert bad.returncode == 2 and "positive duration" in bad.stderr
        assert cluster.leaderbeat("resume").stdout.strip().endswith("was not paused")
        assert cluster.leaderbeat("pause", "--reason", "freeze").returncode == 0
        cluster.start()
        replica = cluster.replicas[0]
        wait_for(lambda: "is paused by" in replica.log(), 30, message="the leader holding")
        log = replica.log()
        assert ". dispatch -> PAUSED by" in log and "(freeze)" in log, log
        time.sleep(1.0)
        assert cluster.recorder.publishes() == []
    finally:
        cluster.close()
