"""The file lease store: an flock on a path, for replicas on one host.

flock belongs to an open file description, so two stores in one process
exclude each other just as two processes do; the crash test still uses a
real child process, because "the kernel frees the lock of a dead process"
is the property that makes takeover after kill -9 immediate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_leaderbeat.elector import NotLeader
from celery_leaderbeat.history import RunRecord
from celery_leaderbeat.lease import (
    LeadershipLost,
    LeaseElector,
    LeaseHeld,
    LeaseTiming,
    Renewal,
)
from celery_leaderbeat.registry import LEADER, STANDBY
from celery_leaderbeat.stores.file import FileLeaseStore
from celery_leaderbeat.testing import replica_record, wait_for

TIMING = LeaseTiming(ttl=2.0, renew_interval=0.5, retry_interval=0.2)


@pytest.fixture
def lock_path(tmp_path: Path) -> str:
    return str(tmp_path / "locks" / "beat.lock")  # the directory does not exist yet


def elector(path: str, identity: str) -> LeaseElector:
    return LeaseElector(FileLeaseStore(path), identity=identity, timing=TIMING)


def leads(candidate: LeaseElector) -> bool:
    try:
        return candidate.is_leader()
    except LeaseHeld:
        return False


def test_two_stores_in_one_process_exclude_each_other(lock_path: str) -> None:
    a, b = elector(lock_path, "a"), elector(lock_path, "b")
    assert leads(a)
    with pytest.raises(LeaseHeld) as caught:
        b.is_leader()
    assert (caught.value.holder, caught.value.term) == ("a", a.term)
    lease = b.store.read()  # any store on the path sees the holder
    assert lease is not None and (lease.holder, lease.term) == ("a", a.term)
    a.close()
    b.close()


def test_release_hands_over_and_terms_persist_across_stores(lock_path: str) -> None:
    a, b = elector(lock_path, "a"), elector(lock_path, "b")
    assert leads(a) and not leads(b)
    first = a.term
    a.release()
    assert a.store.read() is None
    wait_for(lambda: leads(b), timeout=TIMING.retry_interval + 2)
    assert b.term == (first or 0) + 1
    b.release()
    b.close()
    a.close()
    # A store opened later (a restarted beat) continues the count.
    c = elector(lock_path, "c")
    assert leads(c)
    assert c.term == (first or 0) + 2
    lease = c.store.read()
    assert lease is not None and lease.transitions == 3
    c.close()


def test_history_is_written_only_by_the_holder(lock_path: str) -> None:
    a, b = elector(lock_path, "a"), elector(lock_path, "b")
    assert leads(a) and not leads(b)
    term = a.term
    assert term is not None
    a.claim({"kept": "r1", "gone": "r2"})
    assert not b.store.claim(a.owner, term, {"kept": "from the standby's handle"})
    assert not a.store.claim(a.owner, term - 1, {"kept": "stale term"})
    a.forget(["gone"])
    assert b.store.load_history() == {"kept": "r1"}
    a.close()
    b.close()


CHILD = textwrap.dedent("""
    import sys, time
    from celery_leaderbeat.history import RunRecord
    from celery_leaderbeat.lease import LeaseElector
    from celery_leaderbeat.stores.file import FileLeaseStore
    from datetime import datetime, timezone

    elector = LeaseElector(FileLeaseStore(sys.argv[1]), identity="child")
    assert elector.is_leader()
    run = RunRecord(datetime(2024, 1, 1, tzinfo=timezone.utc), 7, elector.term)
    elector.claim({"every-second": run.encode()})
    print(elector.term, flush=True)
    time.sleep(600)
""")


@contextlib.contextmanager
def child_leading(lock_path: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A child process that leads on ``lock_path``, and its term; killed at the end."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, lock_path],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        yield child, int(child.stdout.readline())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_the_lock_of_a_killed_process_is_taken_at_the_next_attempt(lock_path: str) -> None:
    with child_leading(lock_path) as (child, child_term):
        parent = elector(lock_path, "parent")
        assert not leads(parent)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = time.monotonic()
        wait_for(lambda: leads(parent), timeout=5)
        takeover = time.monotonic() - killed_at
    assert takeover <= TIMING.retry_interval + 0.5  # no TTL to wait out
    assert parent.term == child_term + 1
    history = parent.load_history()
    assert RunRecord.decode(history["every-second"]).total_run_count == 7
    parent.close()


def test_a_path_that_cannot_be_created_is_a_store_outage_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    candidate = elector(str(blocker / "beat.lock"), "a")
    with pytest.raises(NotLeader, match="store unavailable"):
        candidate.is_leader()


# -- the store's own calls: heartbeat records, take=False, step-down -------------


def roles(store: FileLeaseStore) -> list[tuple[str, str, int | None]]:
    return [(r.identity, r.role, r.term) for r in store.replicas()]


@pytest.fixture
def stores(lock_path: str) -> Iterator[tuple[FileLeaseStore, FileLeaseStore]]:
    """Two stores on one path: as two replicas (flock excludes them as it would processes)."""
    a, b = FileLeaseStore(lock_path), FileLeaseStore(lock_path)
    yield a, b
    a.close()
    b.close()


def test_acquire_writes_the_leader_and_standby_records(
        stores: tuple[FileLeaseStore, FileLeaseStore]) -> None:
    a, b = stores
    won = a.acquire("a/1", "a", 2.0, beat=replica_record("a"))
    assert won.acquired
    assert not b.acquire("b/1", "b", 2.0, beat=replica_record("b")).acquired
    assert roles(a) == [("a", LEADER, won.lease.term), ("b", STANDBY, None)]
    listed = b.replicas()
    assert all(0 <= (r.heartbeat_age or 0) < 5 for r in listed)
    assert all(25 < (r.expires_in or 0) <= 30 for r in listed)
    a.acquire("a/1", "a", 2.0)  # no record given: none written
    assert roles(a) == [("a", LEADER, won.lease.term), ("b", STANDBY, None)]


def test_a_silent_replica_is_dropped_and_a_withdrawn_one_is_gone(
        stores: tuple[FileLeaseStore, FileLeaseStore]) -> None:
    a, b = stores
    term = a.acquire("a/1", "a", 2.0, beat=replica_record("a")).lease.term
    b.acquire("b/1", "gone", 2.0, beat=replica_record("gone", expires_in=0.2))
    assert [identity for identity, _, _ in roles(a)] == ["a", "gone"]
    time.sleep(0.3)
    a.renew("a/1", term, 2.0, beat=replica_record("a"))  # drops the files of silent replicas
    assert os.listdir(a.replicas_dir) == ["a.json"]
    a.withdraw("a")
    assert a.replicas() == []


def test_a_record_that_cannot_be_written_does_not_cost_the_lease(lock_path: str) -> None:
    store = FileLeaseStore(lock_path)
    Path(store.replicas_dir).parent.mkdir(parents=True)
    Path(store.replicas_dir).write_text("a file where the directory should be")
    outcome = store.acquire("a/1", "a", 2.0, beat=replica_record("a"))
    assert outcome.acquired
    assert store.renew("a/1", outcome.lease.term, 2.0, beat=replica_record("a")) is Renewal.RENEWED
    store.close()


def test_take_false_leaves_a_free_lock_untaken_and_reports_the_holder(
        stores: tuple[FileLeaseStore, FileLeaseStore]) -> None:
    a, b = stores
    looked = a.acquire("a/1", "a", 2.0, beat=replica_record("a"), take=False)
    assert not looked.acquired and (looked.lease.holder, looked.lease.term) == (None, 0)
    assert roles(a) == [("a", STANDBY, None)]

    taken = b.acquire("b/1", "b", 2.0, take=True)  # the lock was left free
    assert taken.acquired and taken.lease.term == 1
    looked = a.acquire("a/1", "a", 2.0, beat=replica_record("a"), take=False)
    assert not looked.acquired and (looked.lease.holder, looked.lease.term) == ("b", 1)

    assert b.release("b/1", 1)
    looked = a.acquire("a/1", "a", 2.0, take=False)
    assert (looked.acquired, looked.lease.holder, looked.lease.term) == (False, None, 1)
    assert a.read() is None  # still free: nobody took it


def test_take_false_reports_a_holder_in_another_process(lock_path: str) -> None:
    store = FileLeaseStore(lock_path)
    with child_leading(lock_path) as (_, child_term):
        looked = store.acquire("a/1", "a", 2.0, beat=replica_record("a"), take=False)
        assert not looked.acquired
        assert (looked.lease.holder, looked.lease.term) == ("child", child_term)
    assert roles(store) == [("a", STANDBY, None)]
    store.close()


def test_renew_writes_the_record_and_refuses_a_lease_not_ours(
        stores: tuple[FileLeaseStore, FileLeaseStore]) -> None:
    a, b = stores
    term = a.acquire("a/1", "a", 2.0).lease.term
    assert a.renew("a/1", term, 2.0, beat=replica_record("a")) is Renewal.RENEWED
    assert roles(a) == [("a", LEADER, term)]
    assert a.renew("a/1", term + 1, 2.0) is Renewal.LOST
    assert a.renew("a/2", term, 2.0) is Renewal.LOST
    assert b.renew("a/1", term, 2.0, beat=replica_record("b")) is Renewal.LOST  # another handle
    assert roles(a) == [("a", LEADER, term), ("b", STANDBY, None)]


def test_a_step_down_request_releases_at_the_next_renewal_and_is_seen_once(
        stores: tuple[FileLeaseStore, FileLeaseStore]) -> None:
    a, b = stores
    term = a.acquire("a/1", "a", 2.0).lease.term
    asked = b.request_step_down()
    assert asked is not None and (asked.holder, asked.term) == ("a", term)

    assert a.renew("a/1", term, 2.0, beat=replica_record("a")) is Renewal.STEPPED_DOWN
    assert a.read() is None
    assert roles(a) == [("a", STANDBY, None)]
    taken = b.acquire("b/1", "b", 2.0)  # at once: the lock is free
    assert taken.acquired and taken.lease.term == term + 1

    assert not os.path.exists(a.step_down_path)  # seen once
    assert a.renew("a/1", term, 2.0) is Renewal.LOST
    assert b.renew("b/1", term + 1, 2.0) is Renewal.RENEWED


def test_a_request_for_an_older_term_does_not_touch_a_later_one(
        stores: tuple[FileLeaseStore, FileLeaseStore]) -> None:
    a, b = stores
    old = a.acquire("a/1", "a", 2.0).lease.term
    assert b.request_step_down() is not None
    assert a.release("a/1", old)  # let go before its next renewal: the request is stale
    new = b.acquire("b/1", "b", 2.0).lease.term
    assert new == old + 1
    for _ in range(2):
        assert b.renew("b/1", new, 2.0) is Renewal.RENEWED
    assert b.read() is not None

    asked = a.request_step_down()  # a request for the later term replaces it
    assert asked is not None and asked.term == new
    assert b.renew("b/1", new, 2.0) is Renewal.STEPPED_DOWN


def test_a_step_down_moves_leadership_between_electors(lock_path: str) -> None:
    a, b = elector(lock_path, "a"), elector(lock_path, "b")
    assert leads(a) and not leads(b)
    first = a.term
    assert isinstance(b.store, FileLeaseStore)
    b.store.request_step_down()
    time.sleep(TIMING.renew_interval)  # the next call renews, and finds the request
    with pytest.raises(LeadershipLost, match="step-down requested") as lost:
        a.is_leader()
    assert lost.value.cause == LeadershipLost.RELEASED
    wait_for(lambda: leads(b), timeout=TIMING.retry_interval + 1)
    assert b.term == (first or 0) + 1
    with pytest.raises(LeaseHeld):  # a heartbeats through its hold-off, and sees b
        wait_for(lambda: a.seconds_until_next_attempt() == 0, timeout=TIMING.retry_interval + 1)
        a.is_leader()
    a.close()
    b.close()
