"""Store calls on etcd against the same calls on Redis, and two ways to reach etcd.

A private single-member etcd and a private redis-server on loopback. Each
store operation the lease engine makes per tick (a standby's acquire
attempt, the leader's renewal, a claim of one run) is timed N times, with
and without a heartbeat record riding on it, on the etcd store and, as the
baseline, on the Redis store. A second table times the renewal's two etcd
requests (lease keepalive and a fenced transaction) through the store's
urllib3 gateway client and through ``etcd3gw`` (requests), when installed.

    python benchmarks/etcd_calls.py
    python benchmarks/etcd_calls.py --calls 2000
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_run, milliseconds, parser, percentile, print_table, unique
from celery_leaderbeat.lease import LeaseStore
from celery_leaderbeat.stores.etcd import EtcdLeaseStore
from celery_leaderbeat.stores.etcd_gateway import b64
from celery_leaderbeat.testing import (
    EtcdCluster,
    RedisServer,
    redis_store,
    replica_record,
    store_settings,
)

TTL = 5.0


def timed(call: Callable[[], Any], count: int) -> list[float]:
    call()  # connections open, scripts loaded
    spent = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        spent.append(time.perf_counter() - start)
    return spent


def store_rows(name: str, store: LeaseStore, count: int) -> list[list[str]]:
    owner, beat = "bench-owner", replica_record("bench", expires_in=3.0)
    term = store.acquire(owner, "bench", TTL).lease.term
    standby = "bench-standby"
    operations: list[tuple[str, Callable[[], Any]]] = [
        ("standby attempt", lambda: store.acquire(standby, standby, TTL)),
        ("standby attempt + heartbeat",
         lambda: store.acquire(standby, standby, TTL, beat=replica_record(standby, 3.0))),
        ("renewal", lambda: store.renew(owner, term, TTL)),
        ("renewal + heartbeat", lambda: store.renew(owner, term, TTL, beat=beat)),
        ("claim of one run", lambda: store.claim(owner, term, {"entry": "record"})),
    ]
    rows = []
    for operation, call in operations:
        spent = timed(call, count)
        rows.append([name, operation, milliseconds(percentile(spent, 50)),
                     milliseconds(percentile(spent, 99))])
    store.close()
    return rows


def client_rows(etcd: EtcdCluster, count: int) -> list[list[str]]:
    member = etcd.members[0]
    store = EtcdLeaseStore.from_url(etcd.url, store_settings(unique("gw")))
    lease = int(store.gateway.call("lease/grant", {"TTL": 5})["ID"])
    key = b64(unique("bench-key"))
    txn = {"compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                        "create_revision": "0"}],
           "success": [{"request_put": {"key": key, "value": b64("v"), "lease": str(lease)}}],
           "failure": [{"request_range": {"key": key}}]}

    def ours() -> None:
        store.gateway.call("lease/keepalive", {"ID": str(lease)})
        store.gateway.call("kv/txn", txn)

    calls: list[tuple[str, Callable[[], Any]]] = [("urllib3 (the store's gateway client)", ours)]
    try:
        import etcd3gw
    except ImportError:
        etcd3gw = None
    if etcd3gw is not None:
        client = etcd3gw.Etcd3Client(host="127.0.0.1", port=member.client_port,
                                     api_path="/v3/", timeout=1)
        granted = client.lease(5)
        calls.append(("etcd3gw 2.x (requests)",
                      lambda: (granted.refresh(), client.transaction(txn))))
    rows = []
    for name, call in calls:
        spent = timed(call, count)
        rows.append([name, milliseconds(percentile(spent, 50)),
                     milliseconds(percentile(spent, 99))])
    if etcd3gw is None:
        rows.append(["etcd3gw", "not installed", "-"])
    store.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args_parser = parser(__doc__)
    args_parser.add_argument("--calls", type=int, default=500, help="calls timed per row")
    args = args_parser.parse_args(argv)
    with EtcdCluster(1) as etcd, RedisServer() as redis:
        describe_run("Store calls: etcd next to Redis", redis, etcd=etcd)
        rows = store_rows("etcd", EtcdLeaseStore.from_url(
            etcd.url, store_settings(unique("bench"))), args.calls)
        rows += store_rows("redis", redis_store(redis.url, unique("bench")), args.calls)
        print_table(["store", "operation", "median ms", "p99 ms"], rows)
        print_table(["etcd renewal requests (keepalive + txn) via", "median ms", "p99 ms"],
                    client_rows(etcd, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
