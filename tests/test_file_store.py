"""The file lease store: an flock on a path, for replicas on one host.

flock belongs to an open file description, so two stores in one process
exclude each other just as two processes do; the crash test still uses a
real child process, because "the kernel frees the lock of a dead process"
is the property that makes takeover after kill -9 immediate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from celery_leaderbeat.elector import NotLeader
from celery_leaderbeat.history import RunRecord
from celery_leaderbeat.lease import LeaseElector, LeaseHeld, LeaseTiming
from celery_leaderbeat.stores.file import FileLeaseStore
from celery_leaderbeat.testing import wait_for

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


def test_the_lock_of_a_killed_process_is_taken_at_the_next_attempt(lock_path: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, lock_path],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child_term = int(child.stdout.readline())
        parent = elector(lock_path, "parent")
        assert not leads(parent)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = time.monotonic()
        wait_for(lambda: leads(parent), timeout=5)
        takeover = time.monotonic() - killed_at
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
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
