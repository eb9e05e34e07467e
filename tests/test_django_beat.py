"""Two real ``celery beat`` processes of the example Django project on one database.

LeaderDatabaseScheduler with the ``django://`` elector, a private Redis as
broker, a fresh PostgreSQL database or SQLite file per test. One beat
publishes; on SIGTERM and on kill -9 the other takes over; no scheduled run
is published twice; a schedule entry added meanwhile (as the admin would)
is dispatched by whichever beat leads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

from celery_leaderbeat.testing import (
    MessageRecorder,
    Publish,
    RedisServer,
    duplicate_runs,
    wait_for,
)

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "django_project"
PG = "postgresql://postgres@127.0.0.1:5432"
HEARTBEAT = "proj.tasks.heartbeat"
REPORT = "proj.tasks.report"

ADD_REPORT = """
from django_celery_beat.models import IntervalSchedule, PeriodicTask
# Two beats starting together may each have stored the settings' 1 s interval
# (django-celery-beat's own start-up race, harmless to it): take any of them.
every = (IntervalSchedule.objects.filter(every=1, period=IntervalSchedule.SECONDS).first()
         or IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS))
PeriodicTask.objects.create(name="report", task="proj.tasks.report", interval=every)
"""


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/example.sqlite3"
        return
    name = f"lbbeat_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG}/test", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{PG}/{name}"
    with psycopg.connect(f"{PG}/test", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Beat:
    """One ``celery -A proj beat`` of the example project, logging to a file."""

    def __init__(self, identity: str, env: dict[str, str], log_dir: Path) -> None:
        self.identity = identity
        self.env = {**env, "LEADERBEAT_IDENTITY": identity}
        self.log_path = log_dir / f"{identity}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Beat:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "proj", "beat", "-l", "info", "--pidfile="],
            cwd=PROJECT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _manage(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env,
                          timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr}"


def _migrated_example(database_url: str, broker_url: str, queue: str) -> dict[str, str]:
    """The example project's environment (a heartbeat every second), its database migrated."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(PROJECT)]),
        "EXAMPLE_DATABASE": database_url,
        "CELERY_BROKER_URL": broker_url,
        "EXAMPLE_QUEUE": queue,
        "EXAMPLE_EVERY": "1",
    }
    _manage(env, "migrate", "-v", "0")
    return env


def _by(publishes: list[Publish], pid: int, task: str = HEARTBEAT) -> list[Publish]:
    return [p for p in publishes if p.pid == pid and p.task == task]


def test_two_beats_one_publisher_and_handovers_repeat_nothing(
        database_url: str, tmp_path: Path) -> None:
    queue = f"lbdj-{uuid.uuid4().hex[:8]}"
    with RedisServer() as broker, MessageRecorder(broker.url, queue) as recorder:
        env = _migrated_example(database_url, broker.url, queue)
        beats: dict[str, Beat] = {}
        try:
            a = beats["a"] = Beat("beat-a", env, tmp_path).start()
            b = beats["b"] = Beat("beat-b", env, tmp_path).start()

            def count(pid: int, n: int, task: str = HEARTBEAT) -> Any:
                return lambda: len(_by(recorder.publishes(), pid, task)) >= n

            first = wait_for(lambda: next(iter(p.pid for p in recorder.publishes()), None),
                             timeout=60, message="a first heartbeat")
            leader, standby = (a, b) if first == a.pid else (b, a)
            wait_for(count(leader.pid, 4), timeout=30, message="four heartbeats")
            assert {p.pid for p in recorder.publishes()} == {leader.pid}

            # Graceful handover: the leader releases on SIGTERM.
            leader.signal(signal.SIGTERM)
            wait_for(count(standby.pid, 3), timeout=30, message="heartbeats by the standby")

            # An entry added while the other beat is down reaches the new leader.
            _manage(env, "shell", "-c", ADD_REPORT)
            wait_for(count(standby.pid, 2, REPORT), timeout=30, message="the added entry sent")

            # The old leader comes back as a standby; then the new leader dies hard.
            restarted = beats["a2"] = Beat(f"{leader.identity}-again", env, tmp_path).start()
            wait_for(lambda: "standby" in restarted.log(), timeout=60,
                     message="the restarted beat standing by")
            assert not [p for p in recorder.publishes() if p.pid == restarted.pid]
            standby.signal(signal.SIGKILL)
            wait_for(count(restarted.pid, 3), timeout=60,
                     message="heartbeats after the takeover from a killed leader")
            wait_for(count(restarted.pid, 1, REPORT), timeout=30, message="report by the third")
        finally:
            for beat in beats.values():
                beat.stop()
        logs = "\n".join(f"--- {name}\n{beat.log()[-3000:]}" for name, beat in beats.items())
        publishes = recorder.publishes()

    assert not duplicate_runs(publishes), logs
    # One publisher at a time: terms only grow, in the order messages arrived.
    terms = [p.term for p in publishes]
    assert None not in terms and terms == sorted(terms), (terms, logs)
    assert len(set(terms)) == 3, terms
    # Nothing was sent again after a handover: consecutive runs of each entry
    # are at least its interval apart by their scheduled times.
    for task in (HEARTBEAT, REPORT):
        due = sorted(p.scheduled_at for p in publishes if p.task == task and p.scheduled_at)
        stamps = [_seconds(s) for s in due]
        gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
        assert gaps and min(gaps) >= 0.9, (task, gaps, logs)
    assert "Traceback" not in logs, logs


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


RETIRE_HEARTBEAT_ADD_NIGHTLY = """
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask
PeriodicTask.objects.filter(name="heartbeat").update(enabled=False)
# Twelve hours from now: an hour DatabaseScheduler.all_as_schedule leaves out.
far = (timezone.localtime().hour + 12) % 24
nightly = CrontabSchedule.objects.create(minute="0", hour=str(far))
PeriodicTask.objects.create(name="nightly", task="proj.tasks.report", crontab=nightly)
"""


def test_history_reads_the_database_schedule_and_the_claims(
        database_url: str, tmp_path: Path) -> None:
    """``leaderbeat history`` on the Django store: runs of two leaders, a disabled
    entry shown as removed, a crontab entry far from this hour shown as never run."""
    queue = f"lbdj-{uuid.uuid4().hex[:8]}"
    with RedisServer() as broker, MessageRecorder(broker.url, queue) as recorder:
        env = _migrated_example(database_url, broker.url, queue)

        def history() -> dict[str, Any]:
            done = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "proj", "leaderbeat", "history", "--json"],
                cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return {e["name"]: e for e in json.loads(done.stdout)["entries"]}

        beats: list[Beat] = []
        try:
            a = Beat("beat-a", env, tmp_path).start()
            beats.append(a)
            wait_for(lambda: len(_by(recorder.publishes(), a.pid)) >= 2, timeout=60,
                     message="two heartbeats by beat-a")
            first = history()["heartbeat"]
            a.signal(signal.SIGTERM)
            b = Beat("beat-b", env, tmp_path).start()
            beats.append(b)
            wait_for(lambda: len(_by(recorder.publishes(), b.pid)) >= 2, timeout=60,
                     message="two heartbeats by beat-b")
            second = history()["heartbeat"]
            _manage(env, "shell", "-c", RETIRE_HEARTBEAT_ADD_NIGHTLY)
            after = history()
        finally:
            for beat in beats:
                beat.stop()

    assert first["state"] == "ran" and first["task"] == HEARTBEAT
    assert first["last_run"]["leader"] == "beat-a"
    assert second["state"] == "ran"
    assert second["last_run"]["leader"] == "beat-b"
    assert second["last_run"]["term"] > first["last_run"]["term"]
    assert second["last_run"]["total_run_count"] > first["last_run"]["total_run_count"]
    assert -2.0 <= second["due_in"] <= 1.0
    assert after["heartbeat"]["state"] == "removed"
    assert after["heartbeat"]["last_run"]["leader"] == "beat-b"
    nightly = after["nightly"]
    assert nightly["state"] == "never run" and nightly["last_run"] is None
    assert nightly["task"] == REPORT
    assert 0 < nightly["due_in"] <= 24 * 3600
    assert datetime.fromisoformat(nightly["next_due_at"]).minute == 0


def test_pause_holds_both_beats_and_resume_catches_up_once(
        database_url: str, tmp_path: Path) -> None:
    """``leaderbeat pause`` on the Django store: nothing sent while paused, also by
    the beat that takes over on SIGTERM; one catch-up run within a renewal of resume."""
    queue = f"lbdj-{uuid.uuid4().hex[:8]}"
    with RedisServer() as broker, MessageRecorder(broker.url, queue) as recorder:
        env = _migrated_example(database_url, broker.url, queue)

        def leaderbeat(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "celery", "-A", "proj", "leaderbeat",
                                   *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                                  timeout=60)

        beats: list[Beat] = []
        try:
            a = Beat("beat-a", env, tmp_path).start()
            b = Beat("beat-b", env, tmp_path).start()
            beats += [a, b]
            first = wait_for(lambda: next(iter(p.pid for p in recorder.publishes()), None),
                             timeout=60, message="a first heartbeat")
            leader, standby = (a, b) if first == a.pid else (b, a)
            wait_for(lambda: "is a standby" in standby.log(), timeout=60,
                     message="the other beat standing by")

            done = leaderbeat("pause", "--reason", "schema change")
            paused_at = time.monotonic()
            assert done.returncode == 0, done.stderr
            wait_for(lambda: "is paused by" in leader.log(), timeout=10,
                     message="the leader holding")
            health = leaderbeat("health")
            assert health.returncode == 0 and "dispatch PAUSED by" in health.stdout, health
            time.sleep(1.5)
            leader.signal(signal.SIGTERM)  # the standby takes over, paused
            wait_for(lambda: "is paused by" in standby.log(), timeout=30,
                     message="the new leader holding")
            time.sleep(1.5)
            held = [p for p in recorder.publishes() if p.mono > paused_at]
            assert held == [], held

            asked_at = time.monotonic()
            done = leaderbeat("resume", "--catch-up", "once")
            resumed_at = time.monotonic()
            assert done.returncode == 0, done.stderr
            wait_for(lambda: [p for p in recorder.publishes() if p.mono > asked_at],
                     timeout=10, message="a run after resume")
            time.sleep(2.5)
        finally:
            for beat in beats:
                beat.stop()
        logs = "\n".join(f"--- {beat.identity}\n{beat.log()[-3000:]}" for beat in beats)
        publishes = recorder.publishes()

    after = sorted(p.mono for p in publishes if p.mono > asked_at)
    assert after[0] - resumed_at <= 0.5 + 0.7, (after, resumed_at, logs)  # one renewal
    assert len([t for t in after if t - after[0] < 0.9]) == 1, (after, logs)  # one catch-up run
    assert {p.pid for p in publishes if p.mono > asked_at} == {standby.pid}
    assert not duplicate_runs(publishes), logs
    assert "resumed by" in logs and "Traceback" not in logs, logs
