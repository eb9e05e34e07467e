"""Graceful handover: from the leader's release to a standby's acquisition, pull against push.

Two real ``celery beat`` replicas per trial, default lease timing, the lease
in Redis, PostgreSQL, a file lock or a private one-member etcd. Once the
standby has asked the store (it logged that it stands by), the leader gets
SIGTERM: beat's handler closes the scheduler, which releases the lease. An
observer reads the lease every millisecond and notes when it was last seen
held by the old leader and first seen held by the standby; "release -> acquired" is the difference
(within the observer's 1 ms poll; a handover faster than one poll reads as
0-1 ms), "SIGTERM -> acquired" adds beat's shutdown up to the release.

``pull`` is ``leaderbeat_push = False`` (a standby asks every retry interval,
0.5 s); ``push`` the default (the store tells it). Same run, same machine.

    python benchmarks/handover.py                         # redis, postgresql, file, etcd; 5 trials
    python benchmarks/handover.py --stores etcd --trials 20
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_run, parser, print_table, private_redis
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.settings import LeaderSettings
from celery_leaderbeat.stores.sql import SqlLeaseStore
from celery_leaderbeat.testing import BeatCluster, EtcdCluster, wait_for

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def trial(broker: str, store: str, push: bool, directory: str,
          etcd: str | None) -> tuple[float, float]:
    """One handover; (SIGTERM -> acquired, release -> acquired) in seconds."""
    lease = f"handover-{uuid.uuid4().hex[:10]}"
    table = f"lbhandover_{uuid.uuid4().hex[:10]}"
    elector = {"redis": broker, "postgresql": POSTGRES, "etcd": etcd,
               "file": f"file://{directory}/{lease}.lock"}[store]
    conf = {"leaderbeat_push": push, "leaderbeat_sql_table": table}
    cluster = BeatCluster(broker, 2, lease_name=lease, elector=elector, conf=conf,
                          loglevel="info")
    if store == "postgresql":
        cluster._store = SqlLeaseStore.from_url(POSTGRES, LeaderSettings(
            elector=POSTGRES, lease_name=lease, identity="observer", timing=LeaseTiming(),
            sql_table=table))
    try:
        cluster.start()
        old = wait_for(cluster.leader_by_lease, 60, message="a leader")
        assert old is not None
        standby = next(r for r in cluster.replicas if r is not old)
        wait_for(lambda: "is a standby" in standby.log(), 30, message="the standby asked")
        time.sleep(1.0)  # settled: the standby waits (on its watch or its retry sleep)
        observer = cluster.lease_store()
        sent = old.terminate()
        last_old = sent
        while True:
            seen = observer.read()
            now = time.monotonic()
            holder = seen.holder if seen else None
            if holder == old.identity:
                last_old = now
            elif holder == standby.identity:
                return now - sent, now - last_old
            if now - sent > 10:
                raise RuntimeError(f"no handover within 10 s\n{cluster.logs()}")
            time.sleep(0.001)
    finally:
        cluster.close()
        if store == "postgresql":
            engine = SqlLeaseStore.from_url(POSTGRES, LeaderSettings(
                elector=POSTGRES, lease_name=lease, identity="drop", timing=LeaseTiming(),
                sql_table=table)).engine
            with engine.begin() as connection:
                for suffix in ("", "_runs", "_replicas"):
                    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{suffix}")
            engine.dispose()


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--stores", default="redis,postgresql,file,etcd")
    args.add_argument("--trials", type=int, default=5)
    options = args.parse_args()
    stores = options.stores.split(",")
    rows = []
    with private_redis() as broker, tempfile.TemporaryDirectory() as directory, \
            contextlib.ExitStack() as stack:
        etcd = stack.enter_context(EtcdCluster(1)).url if "etcd" in stores else None
        describe_run("Graceful handover", broker)
        for store in stores:
            for push in (False, True):
                results = [trial(broker.url, store, push, directory, etcd)
                           for _ in range(options.trials)]
                term = [r[0] * 1000 for r in results]
                free = [r[1] * 1000 for r in results]
                rows.append([store, "push" if push else "pull", len(results),
                             f"{statistics.median(free):.1f}", f"{max(free):.1f}",
                             f"{statistics.median(term):.1f}", f"{max(term):.1f}",
                             "-" if not push else ("met" if max(free) <= 50 else "MISSED")])
    t = LeaseTiming()
    print(f"Default timing: ttl {t.ttl} s, renew {t.renew_interval} s, retry "
          f"{t.retry_interval} s. Milliseconds; target with push: release -> acquired "
          "<= 50 ms.\n")
    print_table(["store", "mode", "trials", "release -> acquired, median", "max",
                 "SIGTERM -> acquired, median", "max", "target"], rows)


if __name__ == "__main__":
    main()
