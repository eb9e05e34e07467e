"""Leadership signals across a real handover between two ``celery beat`` processes.

The receivers are the example in docs/operations.md, run as written inside
each beat process's app module: they append one JSON line per signal to an
audit file, which the test reads afterwards. So the documented example is
tested too. A step-down, ticked in this process, is signalled as a release.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
from celery import Celery

from celery_leaderbeat import signals
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import BeatCluster, RedisServer, wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
TIMING = LeaseTiming(ttl=4.0, renew_interval=0.8, retry_interval=0.3)


def documented_example() -> str:
    """The Python block that follows the signals-example marker in docs/operations.md."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- signals-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the signals example is missing from docs/operations.md"
    return match.group(1)


def write_app_module(directory: Path) -> str:
    """An app module for the replicas: the documented receivers, then the replica app."""
    name = "signals_app"
    (directory / f"{name}.py").write_text(
        documented_example()
        + "\n\nfrom celery_leaderbeat.testing import replica_app\n\napp = replica_app()\n",
        encoding="utf-8")
    return name


def audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events_of(events: list[dict[str, Any]], identity: str) -> list[tuple[Any, ...]]:
    """One replica's events, in the order it sent them: (event, term, detail)."""
    return [(e["event"], e["term"], e.get("cause") or e.get("leader"))
            for e in events if e["identity"] == identity]


@pytest.mark.processes
def test_signals_fire_once_per_transition_in_order_across_a_real_handover(
        redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_path = tmp_path / "leadership.jsonl"
    app = write_app_module(tmp_path)
    monkeypatch.setenv("BEAT_AUDIT_LOG", str(audit_path))  # inherited by the replicas
    with BeatCluster(redis_server.url, replicas=2, elector=redis_server.url, timing=TIMING,
                     app=app, pythonpath=[str(tmp_path)]) as cluster:
        first = cluster.wait_for_leader(timeout=60)
        second = next(r for r in cluster.replicas if r is not first)
        # The standby has seen the leader once it has tried and failed to acquire.
        wait_for(lambda: events_of(audit(audit_path), second.identity), 30,
                 message="the standby observing the leader")

        first.terminate()  # graceful: releases the lease, the standby takes over
        assert first.wait_exit(30) == 0
        wait_for(lambda: ("gained" in [e[0] for e in events_of(audit(audit_path),
                                                                 second.identity)]),
                 30, message="the standby gaining leadership")

        first.start()  # comes back as a standby and sees the new leader
        wait_for(lambda: len(events_of(audit(audit_path), first.identity)) >= 3, 60,
                 message="the restarted replica observing the new leader")
        events = audit(audit_path)
        by_first = events_of(events, first.identity)
        by_second = events_of(events, second.identity)
        logs = cluster.logs()
        texts = {r.identity: r.log() for r in cluster.replicas}

    term_1 = by_first[0][1]
    term_2 = next(term for event, term, _ in by_second if event == "gained")
    assert term_2 > term_1
    assert by_first == [
        ("gained", term_1, None),
        ("lost", term_1, "released"),
        ("observed", term_2, second.identity),
    ], logs
    assert by_second == [
        ("observed", term_1, first.identity),
        ("gained", term_2, None),
    ], logs
    assert {e["lease"] for e in events} == {cluster.lease_name}
    # Item 5 of the issue: banner and log lines name the replica.
    for identity, text in texts.items():
        assert f"lease -> '{cluster.lease_name}' as '{identity}'" in text
        assert f"leaderbeat: {identity} is now the leader" in text
    assert f"leaderbeat: {first.identity} is no longer the leader" in texts[first.identity]


def test_a_step_down_is_signalled_as_released_and_the_leader_holds_off(
        make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
        ticker: Callable[..., Any]) -> None:
    """In one process: the leader finds the request at its renewal, lets go and waits."""
    seen: list[tuple[str, str, str]] = []

    def lost(sender: Any, identity: str, reason: str, cause: str, **_: Any) -> None:
        seen.append((identity, cause, reason))

    signals.leadership_lost.connect(lost, weak=False)
    try:
        conf = {"leaderbeat_lease_ttl": TIMING.ttl,
                "leaderbeat_renew_interval": TIMING.renew_interval,
                "leaderbeat_retry_interval": TIMING.retry_interval}
        a = make_scheduler(make_app(**conf), "a")
        b = make_scheduler(make_app(**conf), "b")
        ticker([a], lambda: a.is_leader, timeout=10)
        ticker([b], lambda: b.term is None and b.elector.store.replicas(), timeout=10)
        term = a.term
        asked = a.elector.store.request_step_down()
        assert (asked.holder, asked.term) == ("a", term)

        def roles() -> dict[str, str]:
            return {r.identity: r.role for r in b.elector.store.replicas()}

        ticker([a, b], lambda: b.is_leader, timeout=10)
        assert not a.is_leader
        assert seen == [("a", "released", "released: step-down requested")]
        assert b.term > term
        # The new leader's record says so from its next tick on (beat ticks again at once).
        ticker([b], lambda: roles()["b"] == "leader", timeout=10)
        # The old leader holds off for a TTL, so it does not take the lease straight back.
        assert a.elector.store.request_step_down().holder == "b"
        ticker([a, b], lambda: not b.is_leader, timeout=10)
        assert a.term is None  # b let go, and a was still holding off
    finally:
        signals.leadership_lost.disconnect(lost)
