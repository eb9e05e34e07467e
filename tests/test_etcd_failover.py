"""Three real ``celery beat`` replicas on a 3-member etcd cluster, one fault each.

The etcd scenarios of ``benchmarks/failover.py``, run once side by side and
judged here (a 1 s entry and an every-minute crontab entry; the fault 10 s
before a minute boundary, so the crontab run falls due during the recovery):

- ``etcd-kill``: kill -9 of the beat leader. Another replica takes over
  within TTL + retry + 1 s.
- ``etcd-member``: kill -9 of the etcd member that is Raft leader while the
  beat leader dispatches. Once etcd has elected another (measured and
  printed), dispatch resumes within TTL + retry + 1 s; the lease survives,
  so in practice the same replica goes on within about a second.

Both: no duplicate, no missed run, no replica exiting. About a minute and a
half, most of it waiting for the minute boundary: marked slow.
"""

from __future__ import annotations

import pytest
from test_failover import TIMING, Results, failover, run_scenarios

from celery_leaderbeat.testing import etcd_executable

pytestmark = [
    pytest.mark.processes,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(etcd_executable() is None,
                       reason="etcd is not installed (make servers installs it)"),
]

ETCD = [name for name, scenario in failover.SCENARIOS.items() if scenario.store == "etcd"]


@pytest.fixture(scope="module")
def results() -> Results:
    return run_scenarios(ETCD)


@pytest.mark.parametrize("scenario", ETCD)
def test_no_run_is_published_twice_or_missed(results: Results, scenario: str) -> None:
    outcome = results(scenario)
    assert outcome.minutes_judged >= 1
    assert outcome.duplicates == 0, results.logs[scenario]
    assert outcome.missed == 0, results.logs[scenario]
    assert not outcome.exited, results.logs[scenario]


@pytest.mark.parametrize("scenario", ETCD)
def test_dispatch_resumes_within_the_crash_bound(results: Results, scenario: str) -> None:
    outcome = results(scenario)
    assert outcome.takeover is not None, results.logs[scenario]
    assert outcome.takeover <= failover.crash_bound(TIMING), results.logs[scenario]


def test_the_killed_beat_leader_publishes_nothing_after(results: Results) -> None:
    assert results("etcd-kill").by_faulted == 0


def test_killing_the_raft_leader_costs_about_one_etcd_election(results: Results) -> None:
    outcome = results("etcd-member")
    assert outcome.store_back is not None
    print(f"\netcd elected a new Raft leader {outcome.store_back:.2f} s after the kill; "
          f"dispatch resumed {outcome.takeover:.2f} s after that")
    # The beat leader's lease outlives the election: dispatch resumes without waiting
    # for a lease to expire.
    assert outcome.takeover is not None and outcome.takeover < TIMING.ttl
