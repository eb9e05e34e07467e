"""The failover benchmark's scenarios, short, asserting its targets for LeaderScheduler.

Every scenario of ``benchmarks/failover.py`` runs once, side by side: its own
private redis-server, three real ``celery beat`` replicas each reaching the
store through their own proxy, and the fault injected at one shared moment
10 s before a minute boundary, so the crontab entry falls due during the
recovery. The whole batch takes one to two minutes (most of it waiting for
the minute boundary); the tests below only judge what it recorded.

Targets with the default lease timing (5 s TTL, 0.5 s renewal and retry):
no duplicate and no missed run in any scenario, takeover within TTL + retry
+ 1 s after a crash (kill -9, pause, cut link), within retry + 1 s after
SIGTERM and within renew + retry + 1 s after a step-down request, the
faulted leader publishing nothing after the fault (after a step-down
request: nothing after its next renewal), no replica exiting.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.stores.redis import DEFAULT_CLIENT_OPTIONS
from celery_leaderbeat.testing import LEADER_SCHEDULER, RedisServer, TcpProxy, redis_store

pytestmark = [pytest.mark.processes, pytest.mark.timeout(420)]

TIMING = LeaseTiming()
#: Seconds judged after each fault: the minute boundary (10 s after it) plus a margin.
DURATION = 15.0


def _load_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "failover.py"
    spec = importlib.util.spec_from_file_location("failover_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


failover = _load_benchmark()
#: The Redis scenarios; the etcd ones are judged in test_etcd_failover.py.
ALL = [name for name, scenario in failover.SCENARIOS.items() if scenario.store == "redis"]
#: Faults where the lease must expire before anyone else leads: one publisher per second.
EXPIRY = ["kill", "pause", "cut"]


class Results:
    """Each scenario's outcome, and the replicas' logs for failure messages."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Any] = {}
        self.logs: dict[str, str] = {}

    def __call__(self, scenario: str) -> Any:
        outcome = self.outcomes[scenario]
        assert outcome.error is None, f"{outcome.error}\n{self.logs[scenario]}"
        assert outcome.published > 0, self.logs[scenario]
        return outcome


def run_scenarios(names: list[str]) -> Results:
    """Run these scenarios of the benchmark once, side by side, for LeaderScheduler."""
    found = Results()

    def keep_logs(trial: Any) -> None:
        found.logs[trial.scenario.name] = trial.cluster.logs(tail=60)

    outcomes = failover.run_batch(
        [failover.SCENARIOS[name] for name in names], [LEADER_SCHEDULER], 3, TIMING, DURATION,
        on_trial=keep_logs)
    for outcome in outcomes:
        found.outcomes[outcome.scenario] = outcome
        print(f"\n{outcome.scenario}: {outcome}")
    return found


@pytest.fixture(scope="module")
def results() -> Results:
    return run_scenarios(ALL)


@pytest.mark.parametrize("scenario", ALL)
def test_no_scheduled_run_is_published_twice(results: Results, scenario: str) -> None:
    outcome = results(scenario)
    assert outcome.minutes_judged >= 1  # the crontab entry fell due inside the window
    assert outcome.duplicates == 0, results.logs[scenario]


@pytest.mark.parametrize("scenario", ALL)
def test_no_run_is_missed_outside_the_takeover_window(results: Results, scenario: str) -> None:
    assert results(scenario).missed == 0, results.logs[scenario]


@pytest.mark.parametrize("scenario", ["kill", "term", "step-down", "pause", "cut"])
def test_another_replica_takes_over_within_the_bound(results: Results, scenario: str) -> None:
    outcome = results(scenario)
    assert outcome.bound is not None
    assert outcome.takeover is not None, results.logs[scenario]
    assert outcome.takeover <= outcome.bound, results.logs[scenario]


@pytest.mark.parametrize("scenario", ["restart", "cut-all"])
def test_dispatch_resumes_once_the_store_is_back(results: Results, scenario: str) -> None:
    outcome = results(scenario)
    # The issue sets no target here; no slower than a crash. Measured: 0.01 to 1.2 s
    # (the old leader notices at its next claim, up to one interval later, then retries).
    assert outcome.takeover is not None, results.logs[scenario]
    assert outcome.takeover <= failover.crash_bound(TIMING), results.logs[scenario]


@pytest.mark.parametrize("scenario", ["kill", "term", "pause", "cut"])
def test_the_faulted_leader_publishes_nothing_after_the_fault(
        results: Results, scenario: str) -> None:
    assert results(scenario).by_faulted == 0, results.logs[scenario]


def test_a_leader_asked_to_step_down_publishes_only_until_its_next_renewal(
        results: Results) -> None:
    """It leads until its renewal finds the request (within 0.5 s), so a run of
    the 1 s entry may still fall due in between: at most one, and not twice."""
    outcome = results("step-down")
    assert outcome.by_faulted <= 1, results.logs["step-down"]


@pytest.mark.parametrize("scenario", ["steady", *EXPIRY, "cut-all"])
def test_one_publisher_at_a_time(results: Results, scenario: str) -> None:
    assert results(scenario).most_publishers == 1, results.logs[scenario]


@pytest.mark.parametrize("scenario", ALL)
def test_no_replica_exits_by_itself(results: Results, scenario: str) -> None:
    assert results(scenario).exited == [], results.logs[scenario]


def test_a_cut_proxy_passes_nothing_and_delivers_nothing_late(
        redis_server: RedisServer, lease_name: str) -> None:
    import redis

    direct = redis_server.client()
    with TcpProxy(redis_server.port) as proxy:
        client = redis.Redis(port=proxy.port, **DEFAULT_CLIENT_OPTIONS)
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.TimeoutError):
            client.set(lease_name, "sent during the cut")
        late = redis.Redis(port=proxy.port, **DEFAULT_CLIENT_OPTIONS)
        with pytest.raises(redis.TimeoutError):  # new connections are cut off too
            late.ping()
        proxy.restore()
        assert client.ping() and late.ping()
        assert direct.get(lease_name) is None  # what was sent meanwhile is lost


# -- SIGTERM while a store call hangs ---------------------------------------------------
# Celery beat's SIGTERM handler closes the scheduler (which releases the lease
# and closes the store) and raises SystemExit in the main thread, wherever it
# was: often inside a store call when the store is slow or cut off.


def test_closing_the_store_under_an_interrupted_call_lets_systemexit_through(
        redis_server: RedisServer, lease_name: str) -> None:
    with TcpProxy(redis_server.port) as proxy:
        store = redis_store(
            f"redis://127.0.0.1:{proxy.port}/0", lease_name, socket_timeout=10)
        assert store.read() is None  # connected
        proxy.cut()

        def like_beat_on_sigterm(signum: int, frame: Any) -> None:
            store.close()
            raise SystemExit()

        previous = signal.signal(signal.SIGUSR1, like_beat_on_sigterm)
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()  # fires while read() waits for an answer that cannot come
        try:
            with pytest.raises(SystemExit):  # not a ValueError from a torn-down buffer
                store.read()
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)


def test_a_closed_scheduler_never_ticks_again(
        make_app: Callable[..., Any], make_scheduler: Callable[..., Any]) -> None:
    # If the handler's SystemExit is lost anyway (a custom elector swallowing what
    # the interrupted call raised), the next tick ends beat instead of ticking on.
    beat = make_scheduler(make_app(), "closed-replica")
    beat.tick()
    beat.close()
    with pytest.raises(SystemExit):
        beat.tick()

# -- failovers of a replicated store: Redis Sentinel and Redis Cluster ----------------
# Every store scenario of the benchmark once, side by side (about two minutes): the
# lease in a private Sentinel group (1 master, 2 replicas, 3 Sentinels) or Redis
# Cluster (3 masters, 3 replicas), a plain private redis-server as broker, and the
# store's fault 10 s before a minute boundary: kill -9 of the master, a switchover
# with the old master still serving (SENTINEL FAILOVER, CLUSTER FAILOVER), and the
# Sentinel master cut off together with the leader, which keeps reaching it. Without
# the replica guard (benchmarks/failover.py --min-replicas 0) the switchover and the
# cut-off publish runs twice (docs/redis-ha.md).

STORE = list(failover.STORE_SCENARIOS)
slow_store = pytest.mark.parametrize(
    "scenario", [pytest.param(name, marks=pytest.mark.slow) for name in STORE])


@pytest.fixture(scope="module")
def store_results() -> Results:
    found = Results()

    def keep_logs(trial: Any) -> None:
        found.logs[trial.scenario.name] = trial.cluster.logs(tail=60)

    outcomes = failover.run_batch(
        list(failover.STORE_SCENARIOS.values()), [LEADER_SCHEDULER], 3, TIMING, DURATION,
        on_trial=keep_logs)
    for outcome in outcomes:
        found.outcomes[outcome.scenario] = outcome
        print(f"\n{outcome.scenario}: {outcome}")
    return found


@slow_store
def test_store_failover_publishes_no_run_twice(
        store_results: Results, scenario: str) -> None:
    outcome = store_results(scenario)
    assert outcome.minutes_judged >= 1
    assert outcome.duplicates == 0, store_results.logs[scenario]


@slow_store
def test_store_failover_misses_no_run_outside_the_takeover_window(
        store_results: Results, scenario: str) -> None:
    assert store_results(scenario).missed == 0, store_results.logs[scenario]


@slow_store
def test_store_failover_hands_no_term_to_two_holders(
        store_results: Results, scenario: str) -> None:
    assert store_results(scenario).shared_terms == 0, store_results.logs[scenario]


@slow_store
def test_dispatch_resumes_within_the_store_failover_plus_a_crash_bound(
        store_results: Results, scenario: str) -> None:
    outcome = store_results(scenario)
    assert outcome.store_failover is not None and outcome.bound is not None
    assert outcome.takeover is not None, store_results.logs[scenario]
    assert outcome.takeover <= outcome.bound, store_results.logs[scenario]


@slow_store
def test_store_failover_one_publisher_at_a_time_and_no_replica_exits(
        store_results: Results, scenario: str) -> None:
    outcome = store_results(scenario)
    assert outcome.most_publishers == 1, store_results.logs[scenario]
    assert outcome.exited == [], store_results.logs[scenario]
