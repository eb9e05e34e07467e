"""Coordination load: store commands per second per replica, for 1, 3 and 20 replicas.

Real ``celery beat`` replicas run the default schedule (a 1 s entry and an
every-minute crontab) with default lease timing. The lease store is a
private redis-server of its own, apart from the broker's, so every command
it counts is coordination. Counting reads ``INFO commandstats`` before and
after a steady-state window (no MONITOR): each lease script is one
``evalsha`` call (the store commands the budget counts), and the commands
run inside the scripts tell them apart:

- lease renewals: one ``pexpire`` each (an acquisition also does one);
- heartbeat records of the replica registry: one ``zadd`` each, written
  inside an acquire attempt or renewal, never by a call of their own;
- claims of runs: one ``hset`` per run, besides the ``hset`` of every
  renewal and every heartbeat record;
- every acquire, renew, claim or release checks the lease with one ``hmget``,
  so standby acquire attempts are ``hmget`` minus renewals and claims.

Plain Celery beat uses no store at all: its row is zero by construction,
shown for comparison. Each size runs twice: ``pull`` (``leaderbeat_push =
False``: standbys ask every retry interval) and ``push`` (the default:
standbys are told of releases and ask about once per lease; their
subscription is one ``subscribe`` each, counted under non-script). Targets:
a standby at most one command per retry interval when pulling, 0.3 per
second when told; a leader at most one per renew interval plus one per
dispatch.

    python benchmarks/coordination_load.py                      # 1, 3, 20 replicas, 20 s each
    python benchmarks/coordination_load.py --replicas 3 --window 120
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    LEADER_SCHEDULER,
    command_counts,
    describe_run,
    parser,
    print_table,
    private_redis,
)
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import BeatCluster, wait_for

#: A standby told of releases (leaderbeat_push, the default): at most this many per second.
PUSH_STANDBY_CAP = 0.3

#: Commands the scripts run inside Redis; any other command is a top-level call.
INSIDE_SCRIPTS = {"hmget", "hget", "hset", "hdel", "hincrby", "pexpire", "time", "zadd",
                  "zrem", "zrangebyscore", "get", "set", "del", "pttl", "publish"}


def measure(replicas: int, broker_url: str, store: object, store_url: str, window: float,
            warmup: float, push: bool) -> dict[str, float]:
    """Start a cluster, wait for steady state, count the store's commands over ``window``."""
    client = store.client()  # type: ignore[attr-defined]
    cluster = BeatCluster(broker_url, replicas, scheduler=LEADER_SCHEDULER,
                          elector=store_url, loglevel="warning",
                          conf={"leaderbeat_push": push})
    try:
        cluster.start()
        registry = cluster.lease_store()

        def steady() -> bool:
            listed = registry.replicas()  # type: ignore[attr-defined]
            return len(listed) == replicas and cluster.leader_by_lease() is not None

        wait_for(steady, 60 + 5 * replicas, interval=0.2,
                 message=f"{replicas} replicas registered and a leader")
        time.sleep(warmup)
        before = Counter(command_counts(client))
        sent_before = len(cluster.recorder.publishes())
        started = time.monotonic()
        time.sleep(window)
        after = Counter(command_counts(client))
        elapsed = time.monotonic() - started
        dispatched = len(cluster.recorder.publishes()) - sent_before
        gone = cluster.exited_by_themselves()
        if gone:
            raise RuntimeError(f"replicas exited: {gone}\n{cluster.logs()}")
    finally:
        cluster.close()
        client.close()
    delta = after - before
    delta["info"] = 0  # our own counting
    heartbeats = delta["zadd"]
    renewals = delta["pexpire"]
    claims = delta["hset"] - renewals - heartbeats
    attempts = delta["hmget"] - renewals - claims
    other = sum(n for name, n in delta.items()
                if name not in INSIDE_SCRIPTS and name != "evalsha")
    return {
        "elapsed": elapsed, "evalsha": delta["evalsha"], "other": other,
        "heartbeats": heartbeats, "renewals": renewals, "claims": claims,
        "attempts": attempts, "dispatched": dispatched,
    }


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--replicas", default="1,3,20", help="comma-separated cluster sizes")
    args.add_argument("--window", type=float, default=20.0, help="seconds counted per size")
    args.add_argument("--warmup", type=float, default=3.0)
    options = args.parse_args()
    timing = LeaseTiming()

    with private_redis() as broker, private_redis() as store:
        describe_run("Coordination load", store)
        rows = []
        for size, push in [(int(n), push) for n in options.replicas.split(",")
                           for push in (False, True)]:
            m = measure(size, broker.url, store, store.url, options.window, options.warmup,
                        push)
            per_s = {k: v / m["elapsed"] for k, v in m.items() if k != "elapsed"}
            standbys = size - 1
            leader = per_s["renewals"] + per_s["claims"]
            standby = per_s["attempts"] / standbys if standbys else float("nan")
            leader_cap = 1 / timing.renew_interval + per_s["dispatched"]
            standby_cap = PUSH_STANDBY_CAP if push else 1 / timing.retry_interval
            rows.append([
                size, "push" if push else "pull", f"{per_s['evalsha'] + per_s['other']:.2f}",
                f"{leader:.2f}", f"{leader_cap:.2f}",
                "met" if leader <= leader_cap * 1.02 else "MISSED",
                "-" if not standbys else f"{standby:.2f}", f"{standby_cap:.2f}",
                "-" if not standbys else ("met" if standby <= standby_cap * 1.02 else "MISSED"),
                f"{per_s['heartbeats'] / size:.2f}", f"{per_s['dispatched']:.2f}",
                f"{per_s['other']:.2f}",
            ])
        print(f"Default timing: ttl {timing.ttl} s, renew every {timing.renew_interval} s, "
              f"standby retry every {timing.retry_interval} s; window {options.window:.0f} s "
              "per size. Store commands per second (top-level calls). Heartbeat records "
              "ride inside them and add none. Plain Celery beat: 0 store commands "
              "(it has no store).\n")
        print_table(
            ["replicas", "mode", "all replicas", "leader", "leader cap", "leader target",
             "each standby", "standby cap", "standby target", "records / replica",
             "dispatches", "non-script"],
            rows,
        )


if __name__ == "__main__":
    main()
