"""Idle cost: CPU time per hour of a leader, a standby and a plain beat, 100 entries.

Real ``celery beat`` processes run side by side on one private redis-server
(broker and lease store), all with the same 100 hourly entries, none of
them due during the measurement, so what is measured is the cost of ticking
alone. After a warm-up (every process started, one leader elected), the CPU
time (user + system, from ``/proc``) each process uses over a fixed window
is extrapolated to an hour.

Processes: two LeaderScheduler replicas (one leads, one stands by and
shadows the schedule, the default; the standby is told of releases), two
with ``leaderbeat_push`` off (the standby asks every 0.5 s), two more with ``shadow_standby`` off
(to show what shadowing costs), two whose leader renews and standby
retries every 1.5 s instead of 0.5 s (what the pace costs), and one plain
``PersistentScheduler``.
Targets: the leader within 10 % of plain beat; a standby below the leader.

    python benchmarks/idle_cost.py                 # 60 s window
    python benchmarks/idle_cost.py --window 600    # ten minutes
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    LEADER_SCHEDULER,
    PLAIN_SCHEDULER,
    REPO_ROOT,
    cpu_seconds,
    describe_run,
    parser,
    print_table,
    private_redis,
    resident_mib,
)
from celery_leaderbeat import LeaderScheduler
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import BeatCluster, Replica, wait_for

NO_SHADOW_SCHEDULER = "benchmarks.idle_cost:NoShadowLeaderScheduler"
#: A slower pace for both roles: graceful handover and step-down then take up to 1.5 and 3 s.
SLOW_PACE = LeaseTiming(renew_interval=1.5, retry_interval=1.5)


class NoShadowLeaderScheduler(LeaderScheduler):
    """The leader scheduler with standby shadowing off, to isolate its cost."""

    shadow_standby = False


def hourly_entries(count: int) -> dict[str, dict[str, Any]]:
    return {f"entry-{i}": {"task": "bench.idle", "every": 3600.0} for i in range(count)}


def leader_and_standby(cluster: BeatCluster, timeout: float) -> tuple[Replica, Replica]:
    leader = wait_for(cluster.leader_by_lease, timeout, message="a leader")
    assert leader is not None
    standby = next(r for r in cluster.replicas if r is not leader)
    return leader, standby


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--window", type=float, default=60.0, help="seconds measured")
    args.add_argument("--warmup", type=float, default=5.0,
                      help="seconds after the leaders are elected, before measuring")
    args.add_argument("--entries", type=int, default=100)
    options = args.parse_args()

    with private_redis() as redis:
        describe_run("Idle cost", redis)
        schedule = hourly_entries(options.entries)
        clusters = {
            "leader": BeatCluster(redis.url, 2, scheduler=LEADER_SCHEDULER, schedule=schedule),
            "pull": BeatCluster(redis.url, 2, scheduler=LEADER_SCHEDULER, schedule=schedule,
                                conf={"leaderbeat_push": False}),
            "no-shadow": BeatCluster(redis.url, 2, scheduler=NO_SHADOW_SCHEDULER,
                                     schedule=schedule, pythonpath=[REPO_ROOT]),
            "slow-pace": BeatCluster(redis.url, 2, scheduler=LEADER_SCHEDULER,
                                     schedule=schedule, timing=SLOW_PACE),
            "plain": BeatCluster(redis.url, 1, scheduler=PLAIN_SCHEDULER, schedule=schedule),
        }
        try:
            for cluster in clusters.values():
                cluster.start()
            leader, standby = leader_and_standby(clusters["leader"], 60)
            pull_leader, pull_standby = leader_and_standby(clusters["pull"], 60)
            _, quiet_standby = leader_and_standby(clusters["no-shadow"], 60)
            slow_leader, slow_standby = leader_and_standby(clusters["slow-pace"], 60)
            plain = clusters["plain"].replicas[0]
            measured = [
                ("plain beat", "PersistentScheduler", plain),
                ("leader", "LeaderScheduler", leader),
                ("standby (shadowing, default)", "LeaderScheduler", standby),
                ("leader (push off)", "LeaderScheduler", pull_leader),
                ("standby (push off: retry every 0.5 s)", "LeaderScheduler", pull_standby),
                ("standby (shadow_standby off)", "NoShadowLeaderScheduler", quiet_standby),
                ("leader (renew every 1.5 s)", "LeaderScheduler", slow_leader),
                ("standby (retry every 1.5 s)", "LeaderScheduler", slow_standby),
            ]
            time.sleep(options.warmup)  # start-up work (imports, first ticks) is not idle cost
            before = {label: cpu_seconds(r.pid or 0) for label, _, r in measured}
            started = time.monotonic()
            time.sleep(options.window)
            window = time.monotonic() - started
            used = {label: cpu_seconds(r.pid or 0) - before[label] for label, _, r in measured}
            memory = {label: resident_mib(r.pid or 0) for label, _, r in measured}
            gone = [r for c in clusters.values() for r in c.exited_by_themselves()]
            if gone:
                raise RuntimeError(f"replicas exited during the window: {gone}")
        finally:
            for cluster in clusters.values():
                cluster.close()

    per_hour = {label: seconds * 3600.0 / window for label, seconds in used.items()}
    plain_hour = per_hour["plain beat"]
    rows = [[label, scheduler, f"{used[label]:.3f}", f"{per_hour[label]:.1f}",
             f"{100 * per_hour[label] / 3600:.3f} %", f"{per_hour[label] - plain_hour:+.1f}",
             f"{memory[label][0]:.1f} ({memory[label][1]:.1f})"]
            for label, scheduler, _ in measured]
    t = LeaseTiming()
    print(f"{options.entries} hourly entries, none due; window {window:.0f} s; default lease "
          f"timing (ttl {t.ttl} s, renew {t.renew_interval} s, retry {t.retry_interval} s).\n")
    print_table(["process", "scheduler", "CPU s in window", "CPU s / hour", "of one core",
                 "vs plain, s / hour", "RSS MiB (peak)"], rows)
    leader_hour, standby_hour = per_hour["leader"], per_hour["standby (shadowing, default)"]
    within = leader_hour <= plain_hour * 1.1
    print(f"- leader within 10 % of plain beat: {'met' if within else 'MISSED'} "
          f"({leader_hour:.1f} vs {plain_hour:.1f} CPU s / hour)")
    print(f"- standby below leader: {'met' if standby_hour < leader_hour else 'MISSED'} "
          f"({standby_hour:.1f} vs {leader_hour:.1f} CPU s / hour)")
    pull_hour = per_hour["standby (push off: retry every 0.5 s)"]
    print(f"- standby told of releases at most 1/4 of one that pulls: "
          f"{'met' if standby_hour <= pull_hour / 4 else 'MISSED'} "
          f"({standby_hour:.1f} vs {pull_hour:.1f} CPU s / hour)")


if __name__ == "__main__":
    main()
