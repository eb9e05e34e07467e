"""The cost of the replica guard: one fenced claim, with and without ``WAIT``.

Each store is built from its URL as beat builds it and claims one run at a
time under its lease, N times in a row (a leader's claim per dispatch):
a plain private redis-server (no guard, the baseline), a private Sentinel
group (1 master, 2 replicas, 3 Sentinels) and a private Redis Cluster (3
masters, 3 replicas), each without the guard (``min_replicas`` 0) and with
it (the default 1: ``WAIT`` for the replicas after every claim). Prints the
median and 99th percentile latency of a claim. Usage::

    python benchmarks/claim_cost.py [--claims 2000]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_run, milliseconds, parser, percentile, print_table
from celery_leaderbeat.testing import RedisClusterGroup, RedisServer, SentinelGroup, redis_store


def claim_latencies(url: str, min_replicas: int | None, claims: int) -> list[float]:
    store = redis_store(url, f"claim-cost-{time.monotonic_ns()}", min_replicas=min_replicas,
                        transport_options={"master_name": "leaderbeat"})
    try:
        won = store.acquire("owner", "bench", 60)
        assert won.acquired
        took = []
        for i in range(claims):
            started = time.perf_counter()
            assert store.claim("owner", won.lease.term, {"every-second": f"run {i}"})
            took.append(time.perf_counter() - started)
        return took
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args_parser = parser(__doc__)
    args_parser.add_argument("--claims", type=int, default=2000)
    args = args_parser.parse_args(argv)
    rows = []
    with RedisServer() as single, SentinelGroup() as sentinels, RedisClusterGroup() as cluster:
        describe_run("Claim cost of the replica guard", single)
        for store, url in (("redis://", single.url), ("sentinel://", sentinels.url),
                           ("redis+cluster://", cluster.url)):
            guards = [0] if store == "redis://" else [0, 1]
            for guard in guards:
                took = claim_latencies(url, guard, args.claims)
                rows.append([store, "on (WAIT)" if guard else "off",
                             milliseconds(percentile(took, 50)),
                             milliseconds(percentile(took, 99))])
    print_table(["store", "guard", "claim p50", "claim p99"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
