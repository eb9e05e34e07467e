"""Coordination load: store commands per second per replica, for 1, 3 and 20 replicas.

Redis (the default): real ``celery beat`` replicas run the default schedule
(a 1 s entry and an every-minute crontab) with default lease timing. The
lease store is a
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

On etcd (``--store etcd``, a private single-member etcd as the lease store,
the private Redis only the broker), requests are
counted from the member's own ``/metrics`` (``grpc_server_msg_received_total``
by gRPC method: every transaction, lease grant, keepalive, watch request,
read), so each request the JSON gateway serves counts once. Requests carry
no role, so the leader's share is measured alone first (one replica, the
same schedule, in the same run), and each standby is the rest divided
among the standbys. The 0.3/s target is for a told standby; pull (2 attempts
a second, plus a heartbeat lease grant per two record lifetimes) is the
baseline it is measured against.

    python benchmarks/coordination_load.py                      # 1, 3, 20 replicas, 20 s each
    python benchmarks/coordination_load.py --replicas 3 --window 120
    python benchmarks/coordination_load.py --store etcd --replicas 3 --window 60
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from typing import Callable

import urllib3

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
from celery_leaderbeat.testing import BeatCluster, EtcdCluster, wait_for

#: A standby told of releases (leaderbeat_push, the default): at most this many per second.
PUSH_STANDBY_CAP = 0.3

#: One etcd metric line: requests received by one gRPC method.
REQUESTS_METRIC = re.compile(
    r'^grpc_server_msg_received_total\{grpc_method="(?P<method>\w+)".*\} (?P<count>\S+)$')

#: Commands the scripts run inside Redis; any other command is a top-level call.
INSIDE_SCRIPTS = {"hmget", "hget", "hset", "hdel", "hincrby", "pexpire", "time", "zadd",
                  "zrem", "zrangebyscore", "get", "set", "del", "pttl", "publish"}


def count_over(replicas: int, broker_url: str, store_url: str, window: float, warmup: float,
               push: bool, counts: Callable[[], Counter[str]]) -> dict[str, float]:
    """Start a cluster, wait for steady state, and take ``counts`` before and after
    ``window``: the difference by name, with the window's length and dispatches."""
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
        before = counts()
        sent_before = len(cluster.recorder.publishes())
        started = time.monotonic()
        time.sleep(window)
        after = counts()
        elapsed = time.monotonic() - started
        dispatched = len(cluster.recorder.publishes()) - sent_before
        gone = cluster.exited_by_themselves()
        if gone:
            raise RuntimeError(f"replicas exited: {gone}\n{cluster.logs()}")
    finally:
        cluster.close()
    measured: dict[str, float] = {name: float(n) for name, n in (after - before).items()}
    return {**measured, "elapsed": elapsed, "dispatched": float(dispatched)}


def measure(replicas: int, broker_url: str, store: object, store_url: str, window: float,
            warmup: float, push: bool) -> dict[str, float]:
    """Count the private Redis store's commands over ``window``, split by role."""
    client = store.client()  # type: ignore[attr-defined]
    try:
        delta = Counter(count_over(replicas, broker_url, store_url, window, warmup, push,
                                   lambda: Counter(command_counts(client))))
    finally:
        client.close()
    elapsed, dispatched = delta.pop("elapsed"), delta.pop("dispatched")
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


def etcd_requests(etcd: EtcdCluster) -> Counter[str]:
    """gRPC requests the members have received, by method, from their ``/metrics``
    (read over plain HTTP: the reading adds nothing to the counts)."""
    found: Counter[str] = Counter()
    http = urllib3.PoolManager()
    try:
        for member in etcd.members:
            text = http.request("GET", f"http://{member.endpoint}/metrics").data.decode()
            for line in text.splitlines():
                matched = REQUESTS_METRIC.match(line)
                if matched:
                    found[matched["method"]] += int(float(matched["count"]))
    finally:
        http.clear()
    return found


def etcd_main(options: argparse.Namespace, timing: LeaseTiming) -> None:
    """The etcd store: each standby's requests beside the leader's, pull against push."""
    with private_redis() as broker, EtcdCluster(1) as etcd:
        describe_run("Coordination load (etcd)", broker, redis_role="the broker", etcd=etcd)
        sizes = [int(n) for n in options.replicas.split(",") if int(n) > 1]
        rows = []
        for push in (False, True):
            alone = count_over(1, broker.url, etcd.url, options.window, options.warmup, push,
                               lambda: etcd_requests(etcd))
            leader = total_rate(alone)
            for size in sizes:
                m = count_over(size, broker.url, etcd.url, options.window, options.warmup, push,
                               lambda: etcd_requests(etcd))
                everyone = total_rate(m)
                standby = (everyone - leader) / (size - 1)
                by_method = ", ".join(f"{name} {n / m['elapsed']:.2f}" for name, n in
                                      sorted(m.items()) if name not in ("elapsed", "dispatched")
                                      and n)
                # The target is for a standby that is told (pull: the baseline).
                target = ("met" if standby <= PUSH_STANDBY_CAP * 1.02 else "MISSED") \
                    if push else "-"
                rows.append([size, "push" if push else "pull", f"{everyone:.2f}",
                             f"{leader:.2f}", f"{standby:.2f}",
                             f"{PUSH_STANDBY_CAP:.2f}" if push else "-", target, by_method])
        print(f"Default timing: ttl {timing.ttl} s, renew every {timing.renew_interval} s, "
              f"standby retry every {timing.retry_interval} s; window {options.window:.0f} s "
              "per run. etcd requests per second, counted by the member; the leader "
              "measured alone (1 replica) in the same run. The standby cap is the target "
              f"for a told standby ({PUSH_STANDBY_CAP}/s); pull is the baseline it is "
              "measured against.\n")
        print_table(["replicas", "mode", "all replicas", "leader alone", "each standby",
                     "standby cap", "standby target", "by gRPC method (all replicas)"], rows)


def total_rate(measured: dict[str, float]) -> float:
    return sum(n for name, n in measured.items()
               if name not in ("elapsed", "dispatched")) / measured["elapsed"]


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--replicas", default="1,3,20", help="comma-separated cluster sizes")
    args.add_argument("--window", type=float, default=20.0, help="seconds counted per size")
    args.add_argument("--warmup", type=float, default=3.0)
    args.add_argument("--store", choices=("redis", "etcd"), default="redis")
    options = args.parse_args()
    timing = LeaseTiming()
    if options.store == "etcd":
        etcd_main(options, timing)
        return

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
