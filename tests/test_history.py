"""``celery -A app leaderbeat history`` against real beat replicas that ran and handed over.

The command reads the run records from the lease store and the schedule
from the app's configuration, so it is run as an operator runs it (a
``python -m celery`` subprocess) with a schedule that changed since the
replicas started: one entry removed, one added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery import Celery

from celery_leaderbeat.cli import EXIT_OK, EXIT_UNHEALTHY, render_history
from celery_leaderbeat.history import RunRecord, decode_history
from celery_leaderbeat.history_report import (
    HISTORY_SCHEMA_VERSION,
    configured_schedule,
    history_report,
)
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import EVERY_SECOND, BeatCluster, RedisServer, wait_for

TIMING = LeaseTiming(ttl=4.0, renew_interval=0.3, retry_interval=0.3)
POSTGRESQL = "postgresql://postgres@127.0.0.1:5432/test"
SLOW = 8.0  # seconds: long enough that the new leader has not run it yet when we look

#: What the replicas run.
REPLICAS_SCHEDULE = {
    "every-second": {"task": EVERY_SECOND, "every": 1.0},
    "slow": {"task": EVERY_SECOND, "every": SLOW},
    "retired": {"task": EVERY_SECOND, "every": 1.0},
}
#: What the app says after a deploy: "retired" removed, "added" new.
DEPLOYED_SCHEDULE = {
    "every-second": {"task": EVERY_SECOND, "every": 1.0},
    "slow": {"task": EVERY_SECOND, "every": SLOW},
    "added": {"task": EVERY_SECOND, "every": 3600.0},
}
ENTRY_KEYS = {"name", "state", "task", "schedule", "last_run", "next_due_at", "due_in"}


@pytest.fixture(params=["redis", "file", "sqlite", "postgresql"])
def elector(request: pytest.FixtureRequest, redis_server: RedisServer,
            tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        yield redis_server.url
    elif request.param == "file":
        yield f"file://{tmp_path}/beat.lock"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/lease.sqlite3"
    else:
        pytest.importorskip("psycopg")
        yield POSTGRESQL


@pytest.mark.processes
def test_history_shows_both_leaders_a_removed_and_a_never_run_entry(
        elector: str, redis_server: RedisServer) -> None:
    cluster = BeatCluster(redis_server.url, replicas=2, elector=elector, timing=TIMING,
                          schedule=REPLICAS_SCHEDULE)
    first, second = cluster.replicas
    try:
        first.start()  # alone, so that it leads first
        store = cluster.lease_store()
        wait_for(lambda: cluster.leader_by_lease() is first, 60, message="replica-1 leading")
        first_term = store.read().term  # type: ignore[union-attr]
        second.start()

        def records() -> dict[str, RunRecord]:
            return decode_history(store.load_history())

        # Look as soon as "slow" has run: the next leader must take over and
        # run "every-second" well inside the SLOW seconds before "slow" is due again.
        wait_for(lambda: "slow" in records() and "retired" in records(), 30,
                 interval=0.05, message="replica-1 running 'slow'")
        wait_for(lambda: len(store.replicas()) == 2, 30,  # type: ignore[attr-defined]
                 message="replica-2 live as a standby")
        first.terminate()  # hands over at once: the lease is released on SIGTERM
        wait_for(lambda: records()["every-second"].leader == second.identity, 10,
                 interval=0.05, message="replica-2 running 'every-second'")
        second_term = store.read().term  # type: ignore[union-attr]
        assert second_term > first_term

        done = cluster.leaderbeat("history", "--json", schedule=DEPLOYED_SCHEDULE)
        people = cluster.leaderbeat("history", schedule=DEPLOYED_SCHEDULE)
        one = cluster.leaderbeat("history", "slow", "--json", schedule=DEPLOYED_SCHEDULE)
        unknown = cluster.leaderbeat("history", "nope", schedule=DEPLOYED_SCHEDULE)
    finally:
        cluster.close()

    assert done.returncode == EXIT_OK, done.stderr + cluster.logs()
    doc = json.loads(done.stdout)
    assert set(doc) == {"schema", "lease_name", "store", "now", "entries"}
    assert doc["schema"] == HISTORY_SCHEMA_VERSION == 1
    assert doc["lease_name"] == cluster.lease_name
    assert doc["store"].split(":")[0] == elector.split(":")[0]
    entries = {e["name"]: e for e in doc["entries"]}
    assert [e["name"] for e in doc["entries"]] == sorted(entries)  # sorted by name
    assert set(entries) == {"added", "every-second", "retired", "slow"}
    for entry in doc["entries"]:
        assert set(entry) == ENTRY_KEYS, entry
        if entry["last_run"] is not None:
            assert set(entry["last_run"]) == {"last_run_at", "total_run_count", "term", "leader"}
    now = datetime.fromisoformat(doc["now"])

    # Claimed by the second leader, under its term; due again within a second.
    recent = entries["every-second"]
    assert recent["state"] == "ran"
    assert recent["task"] == EVERY_SECOND
    assert recent["schedule"] == "<freq: 1.00 second>"
    assert recent["last_run"]["leader"] == second.identity
    assert recent["last_run"]["term"] == second_term
    assert recent["last_run"]["total_run_count"] >= 2
    assert -2.0 <= recent["due_in"] <= 1.0, recent
    assert _stamp(recent["next_due_at"]) == pytest.approx(
        _stamp(recent["last_run"]["last_run_at"]) + 1.0, abs=0.01)

    # Last claimed by the first leader, under its term.
    slow = entries["slow"]
    assert slow["state"] == "ran"
    assert slow["last_run"]["leader"] == first.identity
    assert slow["last_run"]["term"] == first_term
    assert slow["last_run"]["total_run_count"] == 1
    assert 0 < slow["due_in"] <= SLOW
    ran_at = datetime.fromisoformat(slow["last_run"]["last_run_at"])
    assert ran_at.utcoffset() == timedelta(0) and ran_at <= now

    # In the store, no longer in the schedule: its run is still shown.
    retired = entries["retired"]
    assert retired["state"] == "removed"
    assert retired["task"] is None and retired["schedule"] is None
    assert retired["next_due_at"] is None and retired["due_in"] is None
    assert retired["last_run"]["leader"] in (first.identity, second.identity)

    # In the schedule, never run: due one interval from now at most.
    added = entries["added"]
    assert added["state"] == "never run" and added["last_run"] is None
    assert 3590 < added["due_in"] <= 3600

    assert people.returncode == EXIT_OK, people.stderr
    lines = people.stdout.splitlines()
    assert lines[0] == f"run history of lease {cluster.lease_name!r} in {doc['store']}"
    assert re.match(r"^  entry\s+runs\s+last run at\s+term\s+leader\s+next due$", lines[1])
    rows = {line.split()[0]: line for line in lines[2:]}
    slow_row = rf"^  slow\s+1\s+\S+\s+{first_term}\s+{first.identity}\s+\S+ \(in \d+\.\d s\)$"
    assert re.search(slow_row, rows["slow"]), rows["slow"]
    assert re.search(rf"\s{second_term}\s+{second.identity}\s", rows["every-second"])
    assert rows["retired"].endswith("not in the schedule")
    assert re.search(r"^  added\s+0\s+never\s+\S+ \(in 3\d{3}\.\d s at most\)$",
                     rows["added"]), rows["added"]

    assert one.returncode == EXIT_OK, one.stderr
    assert [e["name"] for e in json.loads(one.stdout)["entries"]] == ["slow"]
    assert unknown.returncode == EXIT_UNHEALTHY
    assert unknown.stderr == (f"no entry 'nope' in the schedule or in the run history of "
                              f"lease {cluster.lease_name!r}\n")


def _stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# -- without processes ---------------------------------------------------------------


class RecordedHistory:
    """Just what ``history_report`` reads from a store."""

    description = "memory://"

    def __init__(self, raw: dict[str, str]) -> None:
        self.raw = raw

    def load_history(self) -> dict[str, str]:
        return self.raw


def test_a_record_written_before_the_leader_was_kept_still_reads() -> None:
    """Records of earlier versions have no ``leader``: shown as unknown, not skipped."""
    old = '{"last_run_at":"2026-11-25T05:00:00+00:00","total_run_count":3,"term":7}'
    record = RunRecord.decode(old)
    assert record == RunRecord(datetime(2026, 11, 25, 5, tzinfo=timezone.utc), 3, 7, None)
    assert record.encode() == old  # and written back the same way
    new = RunRecord(record.last_run_at, 4, 8, "web-1").encode()
    assert json.loads(new)["leader"] == "web-1"
    assert RunRecord.decode(new).leader == "web-1"

    app = Celery("history-old", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"tick": {"task": "t", "schedule": 60.0}}
    schedule = configured_schedule(app)
    doc = history_report(RecordedHistory({"tick": old}), "lease", schedule,  # type: ignore[arg-type]
                         app.timezone)
    (entry,) = doc["entries"]
    assert entry["last_run"] == {"last_run_at": "2026-11-25T05:00:00+00:00",
                                 "total_run_count": 3, "term": 7, "leader": None}
    assert entry["due_in"] < 0  # long overdue: nobody has run it since
    assert "unknown" in render_history(doc)
    assert "overdue by" in render_history(doc)


def test_the_schedule_is_what_celery_loads_without_writing_a_file(tmp_path: Path) -> None:
    """beat_schedule plus Celery's default entries; no schedule file, no elector."""
    app = Celery("history-schedule", set_as_current=False, broker="memory://",
                 backend="cache+memory://")
    app.conf.beat_schedule = {"tick": {"task": "t", "schedule": 60.0}}
    app.conf.beat_schedule_filename = str(tmp_path / "schedule")
    assert set(configured_schedule(app)) >= {"tick"}
    assert list(tmp_path.iterdir()) == []


def test_history_on_an_empty_store_lists_the_schedule_as_never_run() -> None:
    app = Celery("history-empty", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"tick": {"task": "t", "schedule": 60.0}}
    doc = history_report(RecordedHistory({}), "lease", configured_schedule(app),  # type: ignore[arg-type]
                         app.timezone)
    assert [(e["name"], e["state"]) for e in doc["entries"]] == [("tick", "never run")]
    empty = history_report(RecordedHistory({}), "lease", {}, app.timezone)  # type: ignore[arg-type]
    assert "(no entry in the schedule or the run history)" in render_history(empty)


@pytest.mark.processes
def test_history_prints_names_with_lone_surrogates(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """No text encoding holds a lone surrogate, so the tables show its escape; before,
    printing one failed the command with UnicodeEncodeError. JSON escapes it anyway."""
    odd = "nightly-\ud800"
    cluster = BeatCluster(redis_server.url, replicas=1, elector=f"file://{tmp_path}/beat.lock",
                          timing=TIMING, schedule={odd: {"task": EVERY_SECOND, "every": 60.0}})
    try:
        people = cluster.leaderbeat("history")
        machines = cluster.leaderbeat("history", "--json")
    finally:
        cluster.close()
    assert people.returncode == EXIT_OK, people.stderr
    assert "  nightly-\\ud800  0     never  " in people.stdout
    assert machines.returncode == EXIT_OK, machines.stderr
    assert [e["name"] for e in json.loads(machines.stdout)["entries"]] == [odd]
