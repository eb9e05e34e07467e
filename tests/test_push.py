"""Standbys told of releases (celery_leaderbeat.watch): fast handover, cheap waiting.

Every test sets the retry interval far above the bound it checks, so a
standby that only polled at that interval (today's behaviour, and what
``leaderbeat_push = False`` keeps) fails it; the bounds themselves are loose.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import redis

from celery_leaderbeat.lease import (
    LeaseElector,
    LeaseTiming,
    StoreMisconfigured,
    StoreUnavailable,
)
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.stores.etcd import EtcdLeaseStore
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.stores.sql import SqlLeaseStore
from celery_leaderbeat.testing import (
    BeatCluster,
    EtcdCluster,
    RedisClusterGroup,
    RedisServer,
    SentinelGroup,
    etcd_executable,
    free_port,
    redis_store,
    wait_for,
)

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

needs_etcd = pytest.mark.skipif(etcd_executable() is None,
                                reason="etcd is not installed (make servers installs it)")
#: The etcd parameter of the tests every pushing store runs.
ETCD = pytest.param("etcd", marks=needs_etcd)

#: A standby that only polled would take 10 s; one that is told takes milliseconds.
LONG_RETRY = LeaseTiming(ttl=20.0, renew_interval=0.5, retry_interval=10.0)
#: Release to acquisition, SIGTERM handling of the old leader's beat included.
HANDOVER_BOUND = 2.5


class Standby:
    """An elector driven as the scheduler drives it: ask, then wait on the watch."""

    def __init__(self, elector: LeaseElector) -> None:
        self.elector = elector
        self.led_at: float | None = None
        self.told = 0
        #: Refused attempts since the last push (or reconnect): once one was made,
        #: the watch is subscribed, so a release from then on reaches it.
        self.asked_since_told = 0
        self.asked = 0  # refused attempts in all
        self._stop = threading.Event()
        #: Set: neither ask nor wait (the test rearranges the store meanwhile).
        self.hold = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Standby:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.hold.is_set():
                time.sleep(0.01)
                continue
            try:
                if self.elector.is_leader():
                    self.led_at = time.monotonic()
                    return
            except Exception:  # NotLeader: stand by
                self.asked_since_told += 1
                self.asked += 1
            wait = min(self.elector.seconds_until_next_attempt(), 1.0)
            if self.elector.wait_for_release(wait):
                self.asked_since_told = 0
                self.told += 1
            else:
                time.sleep(max(0.0, min(self.elector.seconds_until_next_attempt(), 0.05)))

    def listening(self) -> bool:
        """Told at least once (the watch subscribed) and asked since: a release
        from now on is pushed to it."""
        return self.told > 0 and self.asked_since_told > 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.elector.release()
        self.elector.close()


def _sql_settings(lease: str, table: str) -> LeaderSettings:
    return LeaderSettings(elector=POSTGRES, lease_name=lease, identity="t", timing=LONG_RETRY,
                          sql_table=table)


def _table(lease_name: str) -> str:
    return "lbpush_" + re.sub(r"[^a-z0-9]", "", lease_name.lower())[-30:]


# -- real beat processes: graceful handover ---------------------------------------


def _elector_url(store: str, redis_server: RedisServer, tmp_path: Path,
                 stack: contextlib.ExitStack) -> str:
    """Where the replicas of a test keep their lease; a private etcd when it is etcd."""
    if store == "etcd":
        return stack.enter_context(EtcdCluster(1)).url
    return {"redis": redis_server.url, "postgresql": POSTGRES,
            "file": f"file://{tmp_path}/locks/beat.lock"}[store]


@pytest.mark.processes
@pytest.mark.parametrize("store", ["redis", "postgresql", "file", ETCD])
def test_a_graceful_handover_is_pushed_faster_than_the_retry_interval(
        store: str, redis_server: RedisServer, lease_name: str, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """SIGTERM the leader: a standby leads within HANDOVER_BOUND, not the 10 s retry.

    Then SIGTERM a standby waiting on its watch (for up to one 20 s lease):
    it exits at once, as beat's handler asks.
    """
    conf = {"leaderbeat_sql_table": _table(lease_name)} if store == "postgresql" else {}
    failed_before = request.session.testsfailed
    with contextlib.ExitStack() as stack:
        elector = _elector_url(store, redis_server, tmp_path, stack)
        cluster = stack.enter_context(BeatCluster(
            redis_server.url, 3, lease_name=lease_name, queue=lease_name, elector=elector,
            timing=LONG_RETRY, conf=conf))
        if store == "postgresql":  # the observer reads our table, not the default one
            cluster._store = SqlLeaseStore.from_url(
                POSTGRES, _sql_settings(lease_name, _table(lease_name)))
        try:
            old = wait_for(cluster.leader_by_lease, 30, message="a leader")
            assert old is not None
            others = [r for r in cluster.replicas if r is not old]
            wait_for(lambda: all("is a standby" in r.log() for r in others), 30,
                     message="both standbys asked once")
            sent = old.terminate()
            wait_for(lambda: cluster.leader_by_lease() not in (None, old), 10,
                     interval=0.005, message="a new leader")
            took = time.monotonic() - sent
            new = cluster.leader_by_lease()
            print(f"{store}: SIGTERM to new leader in {took * 1000:.0f} ms")
            assert took < HANDOVER_BOUND
            assert new in others
            assert old.wait_exit(10) == 0
            waiting = next(r for r in others if r is not cluster.leader_by_lease())
            stopped = waiting.terminate()
            waiting.wait_exit(10)
            assert time.monotonic() - stopped < 3.0, "a waiting standby ignored SIGTERM"
            assert not cluster.exited_by_themselves()
        finally:
            if request.session.testsfailed > failed_before:
                print(cluster.logs())
    if store == "postgresql":
        _drop_tables(_table(lease_name))


def _drop_tables(table: str) -> None:
    engine = SqlLeaseStore.from_url(POSTGRES, _sql_settings("drop", table)).engine
    with engine.begin() as connection:
        for suffix in ("", "_runs", "_replicas"):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{suffix}")
    engine.dispose()


@pytest.mark.processes
@pytest.mark.parametrize("store", ["redis", ETCD])
def test_a_step_down_is_pushed_faster_than_the_retry_interval(
        store: str, redis_server: RedisServer, lease_name: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        elector = _elector_url(store, redis_server, tmp_path, stack)
        cluster = stack.enter_context(BeatCluster(
            redis_server.url, 2, lease_name=lease_name, queue=lease_name, elector=elector,
            timing=LONG_RETRY))
        old = wait_for(cluster.leader_by_lease, 30, message="a leader")
        other = next(r for r in cluster.replicas if r is not old)
        wait_for(lambda: "is a standby" in other.log(), 30, message="the standby asked once")
        done = cluster.leaderbeat("step-down", "--timeout", "9")
        assert done.returncode == 0, done.stdout + done.stderr
        took = float(re.search(r"after ([0-9.]+) s", done.stdout).group(1))  # type: ignore[union-attr]
        # Honoured at the next renewal (0.5 s), then pushed.
        assert took < LONG_RETRY.renew_interval + 1.0, done.stdout


# -- crash and lost pushes: the fallback at the lease's expiry ----------------------


def test_a_standby_wakes_when_the_lease_it_saw_expires(
        redis_server: RedisServer, lease_name: str) -> None:
    """A crashed leader (it never renews): takeover at its expiry, not at the next retry."""
    holder = LeaseElector(redis_store(redis_server.url, lease_name), identity="holder",
                          timing=LeaseTiming(ttl=2.0, renew_interval=1.0))
    assert holder.is_leader()
    acquired_at = time.monotonic()
    standby = Standby(LeaseElector(redis_store(redis_server.url, lease_name),
                                   identity="standby", timing=LONG_RETRY)).start()
    try:
        wait_for(lambda: standby.led_at is not None, 10, message="the standby leads")
        assert standby.led_at is not None
        took = standby.led_at - acquired_at
        assert 2.0 <= took < 2.0 + 0.5, took
    finally:
        standby.stop()
        holder.close()


def test_a_lost_push_is_covered_within_one_lease(
        redis_server: RedisServer, lease_name: str) -> None:
    """A release whose push never arrives: the standby still takes over within one TTL."""
    ttl = 2.0
    holder = LeaseElector(redis_store(redis_server.url, lease_name), identity="holder",
                          timing=LeaseTiming(ttl=ttl, renew_interval=0.2))
    assert holder.is_leader()
    renewing = threading.Event()
    renewing.set()

    def renew() -> None:
        while renewing.is_set():
            holder.is_leader()
            time.sleep(0.1)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    standby = Standby(LeaseElector(redis_store(redis_server.url, lease_name),
                                   identity="standby", timing=LONG_RETRY)).start()
    try:
        wait_for(lambda: standby.told >= 1, 10, message="the standby listening")
        time.sleep(ttl)  # several renewals seen by the standby's fallback polls
        renewing.clear()
        renewer.join()
        assert isinstance(holder.store, RedisLeaseStore)
        holder.store.release_channel = f"nobody-listens-{uuid.uuid4().hex}"
        released_at = time.monotonic()
        holder.release()
        wait_for(lambda: standby.led_at is not None, 10, message="the standby leads")
        assert standby.led_at is not None
        assert standby.led_at - released_at < ttl + 0.3
    finally:
        standby.stop()
        holder.close()


# -- reconnects ----------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test may kill connections on and restart."""
    with RedisServer() as server:
        yield server


def assert_release_is_pushed(holder: LeaseElector, standby: Standby, told: int) -> None:
    """Once the standby looked again after its reconnect, the holder's release reaches it."""
    wait_for(lambda: standby.told > told and standby.listening(), 10,
             message="the standby listening again")
    assert standby.led_at is None, "the standby led before the release: nothing was pushed"
    released_at = time.monotonic()
    holder.release()
    wait_for(lambda: standby.led_at is not None, HANDOVER_BOUND, interval=0.01,
             message="the standby leads after a pushed release")
    assert standby.led_at is not None and standby.led_at - released_at < 1.0


@contextlib.contextmanager
def renewing(holder: LeaseElector) -> Iterator[LeaseElector]:
    """``holder`` leads, renewing from a thread as its scheduler would; lets go at the end."""
    assert holder.is_leader()
    stop = threading.Event()

    def lead() -> None:
        while not stop.is_set():
            _leads(holder)
            time.sleep(0.1)

    leader = threading.Thread(target=lead, daemon=True)
    leader.start()
    try:
        yield holder
    finally:
        stop.set()
        leader.join()
        holder.release()
        holder.close()


def _holds(elector: LeaseElector) -> bool:
    """It leads, and the store agrees (the lease may be gone from a restarted Redis
    while the elector's local deadline still runs)."""
    if not _leads(elector):
        return False
    lease = elector.store.read()
    return lease is not None and lease.holder == elector.identity


def _leads(elector: LeaseElector) -> bool:
    try:
        return elector.is_leader()
    except Exception:
        return False


def test_a_subscriber_killed_by_client_kill_is_resubscribed(
        own_redis: RedisServer, lease_name: str) -> None:
    holder = LeaseElector(redis_store(own_redis.url, lease_name), identity="holder",
                          timing=LONG_RETRY)
    assert holder.is_leader()
    standby = Standby(LeaseElector(redis_store(own_redis.url, lease_name),
                                   identity="standby", timing=LONG_RETRY)).start()
    admin = own_redis.client()
    try:
        wait_for(lambda: standby.told >= 1, 10, message="the standby subscribed")
        told = standby.told
        assert admin.client_kill_filter(_type="pubsub") == 1
        assert_release_is_pushed(holder, standby, told)
    finally:
        standby.stop()
        holder.close()
        admin.close()


def test_a_subscriber_survives_a_redis_restart(own_redis: RedisServer, lease_name: str) -> None:
    standby = Standby(LeaseElector(redis_store(own_redis.url, lease_name),
                                   identity="standby", timing=LONG_RETRY))
    holder = LeaseElector(redis_store(own_redis.url, lease_name), identity="holder",
                          timing=LONG_RETRY)
    assert holder.is_leader()
    standby.start()
    try:
        wait_for(lambda: standby.told >= 1, 10, message="the standby subscribed")
        told = standby.told
        standby.hold.set()  # so that the holder, not the standby, takes the lease again
        own_redis.restart()  # no persistence: the lease is gone with the subscription
        # Its local deadline alone would say it leads: wait until the store says so.
        assert wait_for(lambda: _holds(holder), 10, message="the holder leads again")
        standby.hold.clear()
        assert_release_is_pushed(holder, standby, told)
    finally:
        standby.stop()
        holder.close()


def test_a_stray_release_message_only_wakes_the_standby(
        redis_server: RedisServer, lease_name: str) -> None:
    """A push is a hint: a release published where the lease is still held (an old
    master still serving during a switchover, a stale or forged message) wakes the
    standby into an ordinary attempt, which finds the lease held and leads nothing."""
    holder = LeaseElector(redis_store(redis_server.url, lease_name), identity="holder",
                          timing=LONG_RETRY)
    assert holder.is_leader()
    store = redis_store(redis_server.url, lease_name)
    standby = Standby(LeaseElector(store, identity="standby", timing=LONG_RETRY)).start()
    admin = redis_server.client()
    try:
        wait_for(standby.listening, 10, message="the standby subscribed and asked")
        told = standby.told
        assert admin.publish(store.release_channel, str(holder.term)) == 1
        wait_for(lambda: standby.told > told, 2, interval=0.01, message="the standby woken")
        wait_for(lambda: standby.asked_since_told > 0 or standby.led_at is not None, 5,
                 interval=0.01, message="the woken standby's attempt")
        assert standby.led_at is None
        assert holder.is_leader() and holder.store.read().holder == "holder"  # type: ignore[union-attr]
    finally:
        standby.stop()
        holder.release()
        holder.close()
        admin.close()


# -- replicated Redis: the watch follows the store's failover ------------------------


@pytest.fixture
def replicated(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """(kind, a private SentinelGroup or RedisClusterGroup): this test fails it over."""
    group: Any = SentinelGroup() if request.param == "sentinel" else RedisClusterGroup()
    with group:
        yield request.param, group


def _replicated_elector(kind: str, group: Any, lease_name: str, identity: str) -> LeaseElector:
    options = {"transport_options": group.transport_options} if kind == "sentinel" else {}
    return LeaseElector(redis_store(group.url, lease_name, **options), identity=identity,
                        timing=LONG_RETRY)


def _pushed_handover(holder: LeaseElector, standby: Standby) -> float:
    """Release once the standby waits on its watch; the seconds until it leads."""
    asked = standby.asked  # an attempt from now on: after any hold or failover
    wait_for(lambda: standby.asked > asked and standby.listening(), 10,
             message="the standby subscribed and asked")
    assert standby.led_at is None, "the standby led before the release: nothing was pushed"
    released_at = time.monotonic()
    holder.release()
    wait_for(lambda: standby.led_at is not None, HANDOVER_BOUND, interval=0.01,
             message="the standby leads after a pushed release")
    assert standby.led_at is not None
    return standby.led_at - released_at


@pytest.mark.parametrize("replicated", [
    pytest.param("sentinel", marks=pytest.mark.slow),  # Sentinel demotes the old master ~8 s late
    "cluster"], indirect=True)
def test_a_release_is_pushed_on_a_replicated_redis_before_and_after_a_failover(
        replicated: tuple[str, Any], lease_name: str) -> None:
    """Sentinel and Cluster push releases too; after SENTINEL FAILOVER / CLUSTER
    FAILOVER the watch hears them from the new master (the 10 s retry would not do)."""
    kind, group = replicated
    lease_key = f"leaderbeat:{{{lease_name}}}:lease"
    holder = _replicated_elector(kind, group, lease_name, "holder")
    # A first term on a new group may come back unconfirmed (the replica guard's WAIT).
    wait_for(lambda: _leads(holder), 10, message="the holder leads")
    standby = Standby(_replicated_elector(kind, group, lease_name, "standby")).start()
    try:
        wait_for(lambda: standby.told >= 1, 10, message="the standby subscribed")
        assert _pushed_handover(holder, standby) < 1.0
    finally:
        standby.stop()
        holder.close()

    # Again after the store failed over, with the old master demoted.
    holder = _replicated_elector(kind, group, lease_name, "holder")
    wait_for(lambda: _leads(holder), 10, message="the holder leads again")
    standby = Standby(_replicated_elector(kind, group, lease_name, "standby")).start()
    try:
        wait_for(lambda: standby.told >= 1, 10, message="the standby subscribed")
        standby.hold.set()  # so that the holder, not the standby, leads after the failover
        if kind == "sentinel":
            old, since = group.switchover()
            group.wait_failover(old, since)
            wait_for(lambda: group.role(old) == "slave", 30, message="the old master demoted")
        else:
            old, since = group.switchover(lease_key)
            group.wait_failover(lease_key, old, since)
        wait_for(holder.is_leader, 15, message="the holder leads on the new master")
        standby.hold.clear()
        took = _pushed_handover(holder, standby)
        watch: Any = standby.elector._watch
        subscribed = watch._pubsub.connection.port
        new = group.master() if kind == "sentinel" else group.master_of(lease_key)
        print(f"{kind}: pushed after failover in {took * 1000:.0f} ms; subscribed on "
              f"{subscribed} (old master {old.port}, new {new.port})")
        assert took < 1.0
        if kind == "sentinel":
            assert subscribed == new.port  # followed the master
    finally:
        standby.stop()
        holder.close()


def test_a_postgres_listener_killed_by_the_server_listens_again(lease_name: str) -> None:
    table = _table(lease_name)
    settings = _sql_settings(lease_name, table)
    holder = LeaseElector(SqlLeaseStore.from_url(POSTGRES, settings), identity="holder",
                          timing=LONG_RETRY)
    assert holder.is_leader()
    store = SqlLeaseStore.from_url(POSTGRES, settings)
    standby = Standby(LeaseElector(store, identity="standby", timing=LONG_RETRY)).start()
    admin = SqlLeaseStore.from_url(POSTGRES, settings).engine
    try:
        wait_for(lambda: standby.told >= 1, 10, message="the standby listens")
        told = standby.told
        with admin.begin() as connection:
            killed = connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE query = 'LISTEN \"{store.release_channel}\"'").fetchall()
        assert len(killed) == 1
        assert_release_is_pushed(holder, standby, told)
    finally:
        standby.stop()
        holder.close()
        admin.dispose()
        _drop_tables(table)


# -- what a standby costs, and stores that cannot push -----------------------------


def test_a_listening_standby_asks_about_once_per_lease(
        make_app: Callable[..., Any], make_scheduler: Callable[..., Any],
        redis_server: RedisServer, lease_name: str) -> None:
    """Driven as beat drives it, with a 0.35 s entry: the shadow keeps its pace,
    and the store is asked about once per 2 s lease, not every 0.5 s retry."""
    stack = contextlib.ExitStack()
    stack.enter_context(renewing(LeaseElector(
        redis_store(redis_server.url, lease_name), identity="holder",
        timing=LeaseTiming(ttl=2.0, renew_interval=0.2))))
    b = make_scheduler(make_app(beat_schedule={"fast": {"task": "x", "schedule": 0.35}},
                                leaderbeat_retry_interval=0.5, leaderbeat_lease_ttl=2.0,
                                leaderbeat_push=True), "b")
    attempts: list[float] = []
    shadows: list[float] = []
    acquire, shadow = b.elector.store.acquire, b._shadow_tick

    def counted(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        return acquire(*args, **kwargs)

    def shadowed(*args: Any, **kwargs: Any) -> Any:
        shadows.append(time.monotonic())
        return shadow(*args, **kwargs)

    b.elector.store.acquire, b._shadow_tick = counted, shadowed
    with stack:
        end = time.monotonic() + 6.0
        while time.monotonic() < end:  # what celery.beat.Service.start does
            time.sleep(max(0.0, b.tick()))
    # The first attempt, one after subscribing, then one per lease: 4 in 6 s, not 12.
    assert 3 <= len(attempts) <= 5, [round(t - attempts[0], 2) for t in attempts]
    gaps = [later - earlier for earlier, later in zip(shadows, shadows[1:])]
    assert len(shadows) >= 6.0 / 0.35 - 2 and max(gaps) < 0.35 + 0.15, gaps


def test_stores_that_cannot_push_keep_the_retry_pace(tmp_path: Path, lease_name: str) -> None:
    settings = LeaderSettings(elector=None, lease_name=lease_name, identity="t",
                              timing=LONG_RETRY, sql_table="leaderbeat_lease")
    store = SqlLeaseStore.from_url(f"sqlite:///{tmp_path}/lease.db", settings)
    elector = LeaseElector(store, identity="standby", timing=LONG_RETRY)
    assert store.release_watch() is None
    started = time.monotonic()
    assert elector.wait_for_release(0.5) is False
    assert time.monotonic() - started < 0.1  # it did not wait: the scheduler sleeps instead
    elector.close()


def test_push_can_be_turned_off(redis_server: RedisServer, lease_name: str) -> None:
    holder = LeaseElector(redis_store(redis_server.url, lease_name), identity="holder")
    assert holder.is_leader()
    off = LeaseElector(redis_store(redis_server.url, lease_name), identity="off", push=False)
    with pytest.raises(Exception, match="held"):
        off.is_leader()
    assert off.wait_for_release(0.3) is False
    assert off._watch is None  # no listening connection at all
    off.close()
    holder.release()
    holder.close()


def test_a_watch_that_cannot_listen_falls_back_to_the_retry_pace(lease_name: str) -> None:
    store = RedisLeaseStore(redis.Redis(port=1, socket_connect_timeout=0.2), lease_name)
    elector = LeaseElector(store, identity="standby",
                           timing=LeaseTiming(ttl=20.0, retry_interval=0.5))
    with pytest.raises(Exception, match="store unavailable"):
        elector.is_leader()
    assert elector.wait_for_release(5.0) is False
    assert elector.seconds_until_next_attempt() <= 0.5
    with pytest.raises(StoreUnavailable):
        RedisLeaseStore(redis.Redis(port=1), lease_name).release_watch().wait(1.0)
    elector.close()


# -- etcd: the watch sees expiries too, and moves to another member -------------------


#: A short etcd lease (whole seconds) with the long retry: without the watch a
#: crashed leader's standby would try again only 10 s after its last attempt.
ETCD_CRASH = LeaseTiming(ttl=3.0, renew_interval=0.3, retry_interval=10.0)


def _etcd_store(url: str, lease: str, timing: LeaseTiming = LONG_RETRY) -> EtcdLeaseStore:
    return EtcdLeaseStore.from_url(url, LeaderSettings(elector=url, lease_name=lease,
                                                       identity="t", timing=timing))


@contextlib.contextmanager
def holder_and_standby(
        make_store: Callable[[], EtcdLeaseStore]) -> Iterator[tuple[LeaseElector, LeaseElector]]:
    """A holder that leads and a standby that saw it lead (not yet watching)."""
    holder = LeaseElector(make_store(), identity="holder", timing=LONG_RETRY)
    standby = LeaseElector(make_store(), identity="standby", timing=LONG_RETRY)
    try:
        assert holder.is_leader()
        assert not _leads(standby)
        yield holder, standby
    finally:
        standby.close()
        holder.close()


@pytest.mark.processes
@needs_etcd
def test_a_crashed_leader_is_taken_over_at_its_etcd_lease_expiry(
        redis_server: RedisServer, lease_name: str, request: pytest.FixtureRequest) -> None:
    """kill -9 the leader right after the standby asked: the standby leads when etcd
    expires the lease (its watch sees the key deleted), not 10 s later."""
    failed_before = request.session.testsfailed
    with EtcdCluster(1) as etcd, BeatCluster(
            redis_server.url, 2, lease_name=lease_name, queue=lease_name, elector=etcd.url,
            timing=ETCD_CRASH) as cluster:
        try:
            old = wait_for(cluster.leader_by_lease, 30, message="a leader")
            standby = next(r for r in cluster.replicas if r is not old)
            wait_for(lambda: "is a standby" in standby.log(), 30,
                     message="the standby asked once")
            killed = old.kill()
            wait_for(lambda: cluster.leader_by_lease() is standby, 15, interval=0.01,
                     message="the standby leads")
            took = time.monotonic() - killed
            print(f"etcd: kill -9 to new leader in {took * 1000:.0f} ms")
            # etcd's lease: ceil(ttl) after the last keepalive, and its leader
            # checks for expired leases every 0.5 s.
            assert ETCD_CRASH.ttl - ETCD_CRASH.renew_interval - 0.1 < took \
                < ETCD_CRASH.ttl + 1.5, took
        finally:
            if request.session.testsfailed > failed_before:
                print(cluster.logs())


@needs_etcd
def test_an_etcd_watch_starts_from_the_lease_the_standby_saw(lease_name: str) -> None:
    """A release between the standby's attempt and its watch's start is delivered."""
    with EtcdCluster(1) as etcd, holder_and_standby(
            lambda: _etcd_store(etcd.url, lease_name)) as (holder, standby):
        holder.release()  # after the standby saw it, before the standby watches
        started = time.monotonic()
        assert standby.wait_for_release(5.0) is True
        assert time.monotonic() - started < 1.0
        assert standby.is_leader()


@needs_etcd
def test_an_etcd_watch_whose_start_was_compacted_away_says_look_now(lease_name: str) -> None:
    """Released and taken again, then etcd compacted its history past what the
    standby saw: the watch cannot replay, so it starts afresh and says "look now"."""
    with EtcdCluster(1) as etcd, holder_and_standby(
            lambda: _etcd_store(etcd.url, lease_name)) as (holder, standby):
        holder.release()
        other = LeaseElector(_etcd_store(etcd.url, lease_name), identity="other",
                             timing=LONG_RETRY)
        assert other.is_leader()
        revision = etcd.members[0].call("kv/range", {"key": "eA=="})["header"]["revision"]
        etcd.members[0].call("kv/compaction", {"revision": revision, "physical": True})
        started = time.monotonic()
        assert standby.wait_for_release(5.0) is True
        assert time.monotonic() - started < 1.0
        with pytest.raises(Exception, match="held by other"):
            standby.is_leader()
        other.close()


@needs_etcd
def test_an_etcd_watch_lost_while_a_release_happened_still_delivers_it(
        lease_name: str) -> None:
    """The watch's member dies and the lease is released before the standby waits
    again: the watch, re-created on another member from the revision it had
    reached, delivers the release."""
    with EtcdCluster(3) as etcd, holder_and_standby(
            lambda: _etcd_store(etcd.url, lease_name)) as (holder, standby):
        assert standby.wait_for_release(0.2) is False  # watching, nothing happened
        watch = standby._watch
        listened_on = watch._stream.member  # type: ignore[union-attr]
        etcd.kill(next(m for m in etcd.members
                       if m.endpoint == "{}:{}".format(*listened_on)))
        etcd.wait_for_leader()
        wait_for(lambda: holder.store.read() is not None, 10, message="etcd answers")
        holder.release()
        assert holder.store.read() is None
        started = time.monotonic()
        assert standby.wait_for_release(5.0) is True
        assert time.monotonic() - started < 1.0
        assert watch._stream.member != listened_on  # type: ignore[union-attr]


@needs_etcd
@pytest.mark.parametrize("secured", ["login", "tls"])
def test_an_etcd_watch_logs_in_and_speaks_tls_as_the_store_does(
        secured: str, lease_name: str) -> None:
    """The watch's own connection uses the store's login and TLS; a token the member
    no longer knows is renewed, as for every call."""
    with EtcdCluster(1, tls=secured == "tls") as etcd:
        url, options = etcd.url, etcd.tls_options
        if secured == "login":
            etcd.enable_login("s3cret-pw")
            anonymous = _etcd_store(url, lease_name).release_watch()
            with pytest.raises(StoreMisconfigured, match="user name is empty"):
                anonymous.wait(0.5)
            url = url.replace("etcd://", "etcd://root:s3cret-pw@")

        def store() -> EtcdLeaseStore:
            return EtcdLeaseStore.from_url(url, LeaderSettings(
                elector=url, lease_name=lease_name, identity="t", timing=LONG_RETRY,
                etcd_options=options))

        with holder_and_standby(store) as (holder, standby):
            if secured == "login":  # a token the member no longer knows
                standby.store.gateway._tokens[0] = "stale.1"  # type: ignore[attr-defined]
            assert standby.wait_for_release(0.2) is False
            threading.Timer(0.2, holder.release).start()
            assert standby.wait_for_release(5.0) is True
            assert standby.is_leader()


@needs_etcd
def test_an_etcd_watch_whose_member_dies_is_recreated_on_another(lease_name: str) -> None:
    """kill -9 the member the watch listens on: it starts again on another member,
    from where it stopped, and the holder's release still reaches the standby."""
    with EtcdCluster(3) as etcd:
        holder = LeaseElector(_etcd_store(etcd.url, lease_name), identity="holder",
                              timing=LONG_RETRY)
        assert holder.is_leader()
        elector = LeaseElector(_etcd_store(etcd.url, lease_name), identity="standby",
                               timing=LONG_RETRY)
        standby = Standby(elector).start()
        try:
            wait_for(lambda: elector._watch is not None
                     and getattr(elector._watch, "_stream", None) is not None, 10,
                     message="the standby watches")
            watch = elector._watch
            listened_on = watch._stream.member  # type: ignore[union-attr]
            member = next(m for m in etcd.members
                          if m.endpoint == "{}:{}".format(*listened_on))
            etcd.kill(member)
            wait_for(lambda: watch._stream is not None  # type: ignore[union-attr]
                     and watch._stream.member != listened_on, 10,  # type: ignore[union-attr]
                     message="the watch on another member")
            etcd.wait_for_leader()
            released_at = time.monotonic()
            holder.release()
            wait_for(lambda: standby.led_at is not None, HANDOVER_BOUND, interval=0.01,
                     message="the standby leads after a pushed release")
            assert standby.led_at is not None and standby.led_at - released_at < 1.0
            assert standby.told == 1  # the release, not a reconnect
        finally:
            standby.stop()
            holder.close()


@needs_etcd
def test_a_listening_etcd_standby_asks_about_once_per_lease(
        make_app: Callable[..., Any], make_scheduler: Callable[..., Any],
        lease_name: str) -> None:
    """Driven as beat drives it, with default timing and a leader renewing: besides
    its one open watch, a standby sends one acquire transaction per 5 s lease, and
    its heartbeat records share one etcd lease granted every two record lifetimes
    (30 s): about 0.23 requests a second, where a grant per record made 0.4 and
    asking every 0.5 s makes 3."""
    with EtcdCluster(1) as etcd, renewing(LeaseElector(
            _etcd_store(etcd.url, lease_name, LeaseTiming()), identity="holder")):
        b = make_scheduler(make_app(leaderbeat_elector=etcd.url, leaderbeat_push=True), "b")
        requests: list[str] = []
        gateway = b.elector.store.gateway
        call = gateway.call

        def counted(path: str, body: Any) -> Any:
            requests.append(path)
            return call(path, body)

        b.tick()  # settled: the first attempt (and grant), then the watch
        gateway.call = counted
        lifetime = b.elector.heartbeat.ttl
        window = 2 * lifetime  # one heartbeat lease's use: it ends with the next grant
        end = time.monotonic() + window
        while time.monotonic() < end:  # what celery.beat.Service.start does
            time.sleep(max(0.0, min(b.tick(), end - time.monotonic())))
        print(f"etcd standby: {len(requests)} requests in {window:.0f} s "
              f"({len(requests) / window:.2f}/s): {requests}")
        ttl = LeaseTiming().ttl
        assert requests.count("kv/txn") <= window / ttl + 1, requests
        assert requests.count("lease/grant") <= 1, requests
        assert len(requests) <= 0.3 * window, requests


@needs_etcd
def test_an_etcd_watch_on_a_member_cut_off_from_its_leader_ends(lease_name: str) -> None:
    """The other two members paused: the watch's member has no Raft leader, etcd
    cancels the watch (it asked for a leader), so the watch moves to another member."""
    with EtcdCluster(3) as etcd, holder_and_standby(
            lambda: _etcd_store(etcd.url, lease_name)) as (_, standby):
        assert standby.wait_for_release(0.2) is False
        watch = standby._watch
        listened_on = "{}:{}".format(*watch._stream.member)  # type: ignore[union-attr]
        others = [m for m in etcd.members if m.endpoint != listened_on]
        for member in others:
            etcd.pause(member)
        try:
            wait_for(lambda: watch._lost is not None, 15,  # type: ignore[union-attr]
                     message="the watch canceled")
        finally:
            for member in others:
                etcd.resume(member)


def test_a_cluster_watch_that_cannot_reach_a_node_falls_back(lease_name: str) -> None:
    """The cluster client is built at first use: no node answering is a StoreUnavailable
    from the watch (the standby then polls), not an error out of the scheduler's tick."""
    store = redis_store(f"redis+cluster://127.0.0.1:{free_port()}", lease_name,
                        socket_connect_timeout=0.2)
    with pytest.raises(StoreUnavailable):
        store.release_watch().wait(1.0)
    store.close()
