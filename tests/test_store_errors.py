"""An error that can never heal is not an outage (issue 11).

A store that refuses the replica for good (wrong password, unknown database,
failed certificate check, a lock path it may not open) stops beat at
start-up with ImproperlyConfigured naming the setting, never the secret. The
same refusal appearing under a running beat (a password rotated) leaves the
replica up as a standby, logged at ERROR and again at a slow pace, shown by
``leaderbeat health`` (exit 4) and by the ``leaderbeat_store_misconfigured``
metric. A store that is merely down still lets beat start as a standby.
"""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat import LeaderScheduler, StoreMisconfigured, StoreUnavailable
from celery_leaderbeat.cli import EXIT_MISCONFIGURED
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.stores.redis import store_error
from celery_leaderbeat.testing import BeatCluster, RedisServer, free_port, wait_for

FAST = LeaseTiming(ttl=2.0, renew_interval=0.3, retry_interval=0.3)
TICK = {"tick": {"task": "t.tick", "every": 1.0}}


def _scheduler(tmp_path: Path, lazy: bool = False, **conf: Any) -> LeaderScheduler:
    app = Celery("errors", set_as_current=False)
    app.conf.update({"leaderbeat_lease_name": f"errors-{os.getpid()}", **conf})
    return LeaderScheduler(app, lazy=lazy, schedule_filename=str(tmp_path / "schedule"))


@pytest.fixture(scope="module")
def locked_redis() -> Any:
    with RedisServer(password="right-Pa55") as server:
        yield server


@pytest.mark.parametrize(("conf", "setting", "cause"), [
    ({"broker_url": "redis://:wr0ng-Pa55@127.0.0.1:{port}/0"}, "broker_url",
     "AuthenticationError: invalid username-password pair"),
    ({"broker_url": "redis://127.0.0.1:{port}/0"}, "broker_url",
     "AuthenticationError: "),
    ({"broker_url": "memory://",
      "leaderbeat_elector": "redis://:right-Pa55@127.0.0.1:{port}/99"},
     "leaderbeat_elector", "DB index is out of range"),
])
def test_a_permanent_refusal_at_start_up_stops_beat_naming_the_setting(
        locked_redis: RedisServer, tmp_path: Path, conf: dict[str, str], setting: str,
        cause: str) -> None:
    conf = {key: value.format(port=locked_redis.port) for key, value in conf.items()}
    # beat's banner instance is lazy: it asks nothing.
    _scheduler(tmp_path, lazy=True, **conf)
    with pytest.raises(ImproperlyConfigured) as raised:
        _scheduler(tmp_path, **conf)
    message = str(raised.value)
    assert message.startswith(f"{setting}"), message
    assert cause in message and "refuses this replica" in message
    assert "Pa55" not in message


def test_an_unusable_lock_path_at_start_up_stops_beat(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    url = f"file://{tmp_path}/a-file/beat.lock"
    with pytest.raises(ImproperlyConfigured, match=r"^leaderbeat_elector .*Not a directory"):
        _scheduler(tmp_path, broker_url="memory://", leaderbeat_elector=url)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0",
                                 "postgresql://postgres@127.0.0.1:{port}/test"])
def test_a_store_that_is_down_at_start_up_still_starts_a_standby(
        tmp_path: Path, url: str) -> None:
    scheduler = _scheduler(tmp_path, broker_url="memory://",
                           leaderbeat_elector=url.format(port=free_port()))
    try:
        assert scheduler.elector.misconfigured is None  # type: ignore[attr-defined]
    finally:
        scheduler.close()


@pytest.mark.parametrize(("error", "permanent"), [
    (redis.AuthenticationError("invalid username-password pair"), True),
    (redis.exceptions.NoPermissionError("this user has no permissions to run 'evalsha'"), True),
    (redis.ResponseError("ERR DB index is out of range"), True),
    (redis.ConnectionError("Error 1 connecting to h:1. [SSL: CERTIFICATE_VERIFY_FAILED] "
                           "certificate verify failed"), True),
    (redis.ConnectionError("Error 111 connecting to h:1. Connection refused."), False),
    (redis.TimeoutError("Timeout reading from socket"), False),
    (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), False),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), False),
])
def test_redis_errors_are_classified(error: redis.RedisError, permanent: bool) -> None:
    found = store_error(error, "broker_url")
    assert isinstance(found, StoreUnavailable)
    assert isinstance(found, StoreMisconfigured) is permanent
    if permanent:
        assert found.setting == "broker_url"  # type: ignore[attr-defined]


@pytest.mark.processes
def test_a_wrong_broker_password_stops_a_real_beat(locked_redis: RedisServer) -> None:
    wrong = f"redis://:wr0ng-Pa55@127.0.0.1:{locked_redis.port}/0"
    with BeatCluster(locked_redis.url, replicas=1, schedule=TICK, timing=FAST,
                     replica_conf=lambda index: {"broker_url": wrong}) as cluster:
        replica = cluster.replicas[0]
        code = replica.wait_exit(30)
        log = replica.log()
        assert code != 0, log
        assert "ImproperlyConfigured" in log and "broker_url: the store" in log, log
        assert "AuthenticationError" in log, log
        assert "wr0ng-Pa55" not in log and "right-Pa55" not in log
        assert not cluster.recorder.publishes()


QUICK_SCHEDULER = '''
from celery_leaderbeat import LeaderScheduler


class QuickRepeat(LeaderScheduler):
    misconfigured_log_interval = 1.0
'''


@pytest.mark.processes
def test_a_password_rotated_under_a_running_beat(tmp_path: Path) -> None:
    """Standby, ERROR repeated at the configured pace, health exit 4, metric 1."""
    (tmp_path / "quick_repeat.py").write_text(QUICK_SCHEDULER)
    port = free_port()
    with RedisServer(password="first-Pa55") as server, BeatCluster(
            server.url, replicas=1, schedule=TICK, timing=FAST,
            scheduler="quick_repeat:QuickRepeat", pythonpath=[str(tmp_path)],
            conf={"leaderbeat_metrics_port": f"127.0.0.1:{port}"}) as cluster:
        cluster.wait_for_leader()
        admin = server.client()
        admin.config_set("requirepass", "second-Pa55")
        admin.client_kill_filter(_type="normal", skip_me=True)  # every client reconnects

        replica = cluster.replicas[0]
        refused = re.compile(r"ERROR/MainProcess\] leaderbeat: replica-1 cannot use the store "
                             r".*AuthenticationError")
        wait_for(lambda: len(refused.findall(replica.log())) >= 3, 20,
                 message=f"three ERROR lines\n{cluster.logs()}")
        log = replica.log()
        assert replica.running, log
        assert "Pa55" not in log

        health = cluster.leaderbeat("health")
        assert health.returncode == EXIT_MISCONFIGURED, health
        assert "store misconfigured" in health.stderr and "broker_url" in health.stderr
        assert "Pa55" not in health.stdout + health.stderr

        def gauge() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        assert "leaderbeat_store_misconfigured 1.0" in gauge()

        # Restored in the store, the replica leads again without a restart.
        admin.config_set("requirepass", "first-Pa55")
        wait_for(lambda: "leaderbeat_store_misconfigured 0.0" in gauge(), 20,
                 message="the metric back to 0")
        wait_for(lambda: cluster.leader_by_lease() is replica, 20, message="leading again")


# -- SQL and Django stores: refused credentials, unknown databases, missing rights

PG = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB = "mysql://root@127.0.0.1:3306/test"


@pytest.fixture(scope="module")
def mariadb_reader() -> Any:
    """A MariaDB user that may read the test database but not create tables."""
    import sqlalchemy as sa

    user = f"lb_reader_{os.getpid()}"
    engine = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/test")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE USER IF NOT EXISTS '{user}'@'%%' "
                                   "IDENTIFIED BY 'reader-Pa55'")
        connection.exec_driver_sql(f"GRANT SELECT ON test.* TO '{user}'@'%%'")
    try:
        yield user
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
        engine.dispose()


@pytest.mark.parametrize(("url", "cause"), [
    ("postgresql://postgres@127.0.0.1:5432/leaderbeat_no_such_db",
     'database "leaderbeat_no_such_db" does not exist'),
    ("postgresql://lb_no_such_role:s3cret-Pa55@127.0.0.1:5432/test",
     'role "lb_no_such_role" does not exist'),
    ("mysql://root:wr0ng-Pa55@127.0.0.1:3306/test", "Access denied for user 'root'"),
    ("mysql://root@127.0.0.1:3306/leaderbeat_no_such_db", "Unknown database"),
])
def test_a_sql_store_that_refuses_the_replica_stops_beat(
        tmp_path: Path, url: str, cause: str) -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        _scheduler(tmp_path, broker_url="memory://", leaderbeat_elector=url,
                   leaderbeat_sql_table=f"lb_errors_{os.getpid()}")
    message = str(raised.value)
    assert message.startswith("leaderbeat_elector"), message
    assert cause in message and "refuses this replica" in message
    assert "Pa55" not in message


def test_a_sql_user_without_the_right_to_create_tables_stops_beat(
        tmp_path: Path, mariadb_reader: str) -> None:
    url = f"mysql://{mariadb_reader}:reader-Pa55@127.0.0.1:3306/test"
    with pytest.raises(ImproperlyConfigured, match="command denied") as raised:
        _scheduler(tmp_path, broker_url="memory://", leaderbeat_elector=url,
                   leaderbeat_sql_table=f"lb_noright_{os.getpid()}")
    assert "Pa55" not in str(raised.value)


def test_a_password_rotated_under_a_running_sql_leader_keeps_it_up_as_a_standby(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A MariaDB user's password changes while it leads (its connections dropped,
    as a server restart or a pool recycle would): ERROR, a standby, no exit."""
    import sqlalchemy as sa

    user, table = f"lb_rotated_{os.getpid()}", f"lb_rotated_{os.getpid()}"
    root = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/test")
    with root.begin() as connection:
        connection.exec_driver_sql(f"CREATE USER IF NOT EXISTS '{user}'@'%%' "
                                   "IDENTIFIED BY 'rotated-Pa55'")
        connection.exec_driver_sql(f"GRANT ALL ON test.* TO '{user}'@'%%'")
    scheduler = _scheduler(
        tmp_path, broker_url="memory://", leaderbeat_sql_table=table,
        leaderbeat_elector=f"mysql://{user}:rotated-Pa55@127.0.0.1:3306/test",
        leaderbeat_lease_ttl=2.0, leaderbeat_renew_interval=0.2, leaderbeat_retry_interval=0.2)
    try:
        wait_for(lambda: scheduler.tick() is not None and scheduler.is_leader, 10,
                 message="the replica leads")
        with root.begin() as connection:
            connection.exec_driver_sql(f"ALTER USER '{user}'@'%%' IDENTIFIED BY 'new-Pa55'")
            ids = connection.exec_driver_sql(
                f"SELECT id FROM information_schema.processlist WHERE user = '{user}'").all()
            for (thread,) in ids:
                connection.exec_driver_sql(f"KILL {int(thread)}")
        with caplog.at_level("ERROR", logger="celery_leaderbeat.scheduler"):
            wait_for(lambda: scheduler.tick() is not None
                     and scheduler.elector.misconfigured is not None,  # type: ignore[attr-defined]
                     10, message="the refusal is seen as permanent")
            assert not scheduler.is_leader
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert errors and "leaderbeat_elector" in errors[-1].getMessage()
        assert all("Pa55" not in r.getMessage() for r in caplog.records)
    finally:
        scheduler.close()
        with root.begin() as connection:
            connection.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
            for suffix in ("", "_runs", "_replicas"):
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{suffix}")
        root.dispose()


def test_missing_django_tables_are_permanent() -> None:
    from celery_leaderbeat.stores.lease_tables import LeaseTableMissing

    assert issubclass(LeaseTableMissing, StoreMisconfigured)
