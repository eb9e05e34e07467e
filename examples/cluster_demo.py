"""Live demo: three ``celery beat`` replicas, one leader, a crash, a step-down, a graceful stop.

Run from the repository root after ``pip install -e .[redis] celery[redis]``::

    python examples/cluster_demo.py [--embedded]

It starts three real beat processes with ``-S celery_leaderbeat.LeaderScheduler``
and a consumer that prints every task message as it arrives (time, which
replica sent it, under which lease term). Then it kills the leader with
``kill -9`` and shows another replica taking over; asks that one to step
down with ``celery leaderbeat step-down``, as an operator would before a
deploy; stops the new leader with SIGTERM (it releases its lease, so the
handover is almost immediate); prints a summary and exits, in about a
minute.

When a Redis answers on 127.0.0.1:6379 it is the broker and the lease store
(in an empty database when there is one, under names unique to this run,
removed at the end). Otherwise everything is embedded: the default file-lock
elector and kombu's ``filesystem://`` broker in a temporary directory
(``--embedded`` picks this even when Redis answers).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kombu.utils.url import maybe_sanitize_url

from celery_leaderbeat.backends import default_file_path
from celery_leaderbeat.testing import (
    EVERY_SECOND,
    BeatCluster,
    Publish,
    Replica,
    duplicate_runs,
    first_publish_by_another,
    publishes_closer_than,
    wait_for,
)

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
LOCAL_REDIS = ("127.0.0.1", 6379)
STEADY = 5.0  # seconds of normal running shown before and after each fault

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


# -- where the broker and the lease live ---------------------------------------------


@dataclass
class Backend:
    """Broker URL and options for the replicas, and how to clean up after them."""

    broker_url: str
    description: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    directory: str | None = None

    def cleanup(self, token: str, lease_name: str) -> None:
        if self.broker_url.startswith("redis://"):
            import redis

            client = redis.Redis.from_url(self.broker_url)
            # Every key this run made carries the token: lease, history, queue, binding.
            for key in client.scan_iter(match=f"*{token}*"):
                client.delete(key)
            client.close()
        else:
            lock = default_file_path(lease_name)
            for path in (lock, lock + ".json", lock + ".step-down"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            shutil.rmtree(lock + ".replicas", ignore_errors=True)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def local_redis_answers() -> bool:
    try:
        with socket.create_connection(LOCAL_REDIS, timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def choose_backend(embedded: bool) -> Backend:
    if not embedded and local_redis_answers():
        try:
            import kombu.transport.redis  # noqa: F401 - the broker's transport
            import redis  # noqa: F401
        except ImportError as exc:
            sys.exit(f"A Redis answers on 127.0.0.1:6379 but {exc}: "
                     "pip install -e .[redis] 'celery[redis]' (or run with --embedded)")
        url = f"redis://{LOCAL_REDIS[0]}:{LOCAL_REDIS[1]}/{empty_redis_db()}"
        return Backend(url, f"Redis at {maybe_sanitize_url(url)} (broker and lease store)")
    directory = tempfile.mkdtemp(prefix="leaderbeat-demo-")
    data = os.path.join(directory, "messages")
    control = os.path.join(directory, "control")
    os.makedirs(data)
    os.makedirs(control)
    options = {"data_folder_in": data, "data_folder_out": data,
               "control_folder": control, "polling_interval": 0.1}
    return Backend("filesystem://", f"no Redis on 127.0.0.1:6379: embedded broker "
                   f"(filesystem:// in {directory}) and the default file-lock elector",
                   options, directory)


def empty_redis_db() -> int:
    """The highest-numbered empty database, so the demo keeps out of others' way."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis(*LOCAL_REDIS, db=db, socket_timeout=1)
        try:
            if client.dbsize() == 0:
                return db
        except redis.RedisError:
            break
        finally:
            client.close()
    return 15  # every name is unique to this run anyway


# -- the show ------------------------------------------------------------------------


class Demo:
    def __init__(self, cluster: BeatCluster) -> None:
        self.cluster = cluster
        self.file_lock = cluster.lease_store().description.startswith("file://")
        self.takeovers: list[tuple[str, float]] = []
        cluster.recorder.listeners.append(self.show_publish)

    def name(self, pid: int | None) -> str:
        replica = self.cluster.replica_for_pid(pid)
        return replica.identity if replica else f"pid {pid}"

    def show_publish(self, p: Publish) -> None:
        term = f"term {p.term}" if p.term is not None else "no term"
        say(f"  {clock(p.wall)}  {p.task:<34} from {self.name(p.pid):<10} {term}")

    def show_roles(self) -> Replica:
        leader = self.cluster.wait_for_leader(60)
        lease = self.cluster.lease_store().read()
        term = f" (term {lease.term})" if lease else ""

        def role(r: Replica) -> str:
            return "LEADER" + term if r is leader else "standby" if r.running else "stopped"

        roles = ", ".join(f"{r.identity}: {role(r)}" for r in self.cluster.replicas)
        say(f"\n>>> {roles}")
        return leader

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        wait_for(lambda: self.cluster.exited_by_themselves() or time.monotonic() >= end,
                 seconds + 5, interval=0.1)

    def fault(self, leader: Replica, how: str, label: str) -> Replica:
        pid = leader.pid
        say(f"\n>>> {label} {leader.identity} (the leader, pid {pid})\n")
        fault_at = leader.kill() if how == "kill" else leader.terminate()

        def takeover() -> Publish | None:
            return first_publish_by_another(self.cluster.recorder.publishes(), fault_at, [pid])

        first = wait_for(takeover, 60, message=f"a takeover after {label}")
        assert first is not None
        took = first.mono - fault_at
        self.takeovers.append((label, took))
        new = self.cluster.replica_for_pid(first.pid)
        assert new is not None
        say(f"\n>>> {new.identity} took over {took:.1f} s after the {label} "
            f"(term {first.term}); tasks keep coming, once each\n")
        return new

    def step_down(self, leader: Replica) -> Replica:
        """Move leadership on purpose, with the command an operator would type."""
        say(f"\n>>> celery -A {self.cluster.app} leaderbeat step-down   "
            f"(asks {leader.identity}, the leader, to hand over)\n")
        done = self.cluster.leaderbeat("step-down")
        for line in (done.stdout + done.stderr).splitlines():
            say(f"    {line}")
        moved = self.cluster.leader_by_lease()
        took = re.search(r"after (\d+\.\d+) s$", done.stdout.strip())
        if done.returncode != 0 or moved is None or moved is leader or took is None:
            raise RuntimeError(f"step-down failed (exit {done.returncode})")
        self.takeovers.append(("step-down", float(took.group(1))))
        say(f"\n>>> {moved.identity} leads now; {leader.identity} stays up as a standby\n")
        return moved

    def summary(self) -> None:
        sent = self.cluster.recorder.publishes()
        every_second = [p for p in sent if p.task == EVERY_SECOND]
        repeats = len(duplicate_runs(sent)) + len(publishes_closer_than(every_second, 0.5))
        senders = sorted({self.name(p.pid) for p in sent})
        dead = [r.identity for r in self.cluster.exited_by_themselves()]
        timing = self.cluster.timing
        say("\n=== summary")
        say("  (a takeover is timed from the fault to the new leader's first publish, "
            "so it includes the wait for the next run of the 1 s entry)")
        for label, took in self.takeovers:
            say(f"  takeover after {label + ':':<18} {took:4.1f} s")
        say(f"  lease timing: ttl {timing.ttl} s, renew {timing.renew_interval} s, "
            f"standby retry {timing.retry_interval} s "
            f"(bounds, that wait included: crash {timing.ttl + timing.retry_interval + 1:.1f} s, "
            f"step-down {timing.renew_interval + timing.retry_interval:.1f} s, "
            f"graceful {timing.retry_interval + 1:.1f} s)")
        if self.file_lock:
            say("  (a file lock is freed by the kernel the moment its holder dies, "
                "so a crash needs no TTL wait; it only protects one host)")
        say(f"  tasks published: {len(sent)} by {', '.join(senders)}, one leader at a time")
        say(f"  duplicates: {repeats}")
        gaps = [b.mono - a.mono for a, b in zip(every_second, every_second[1:])]
        longest = max(gaps, default=0.0)
        why = (" (while no replica led; the run that fell due meanwhile was sent once "
               "by the new leader)" if longest > 1.5 else "")
        say(f"  longest gap between runs of the 1 s entry: {longest:.1f} s{why}")
        say(f"  replicas that exited by themselves: {len(dead)} {' '.join(dead)}".rstrip())


@contextlib.contextmanager
def demo_cluster(embedded: bool) -> Iterator[BeatCluster]:
    backend = choose_backend(embedded)
    token = uuid.uuid4().hex[:8]
    lease_name = f"leaderbeat-demo-{token}"
    say("celery-leaderbeat cluster demo")
    say(f"  {backend.description}")
    cluster = BeatCluster(
        backend.broker_url, 3, lease_name=lease_name, queue=lease_name,
        transport_options=backend.transport_options, app="demo_app", pythonpath=[EXAMPLES])
    say(f"  lease {lease_name!r}, queue {cluster.queue!r}, logs in {cluster.directory}")
    try:
        cluster.start()
        pids = ", ".join(f"{r.identity} (pid {r.pid})" for r in cluster.replicas)
        say(f"  started 3 x celery beat -S celery_leaderbeat.LeaderScheduler: {pids}")
        say("  waiting for the first leader to publish...\n")
        yield cluster
    finally:
        cluster.close()
        backend.cleanup(token, lease_name)


def main(argv: list[str]) -> int:
    if any(arg not in ("--embedded",) for arg in argv):
        sys.exit(__doc__ + "\nOptions: --embedded  use the embedded broker even if Redis answers")
    with demo_cluster(embedded="--embedded" in argv) as cluster:
        demo = Demo(cluster)
        leader = demo.show_roles()
        demo.run_for(STEADY)
        leader = demo.fault(leader, "kill", "kill -9")
        demo.run_for(STEADY)
        demo.show_roles()
        leader = demo.step_down(leader)
        # The replica that stepped down holds off one lease TTL; the stop below
        # hands over to it only once that has passed.
        demo.run_for(max(STEADY, cluster.timing.ttl + 1))
        demo.show_roles()
        leader = demo.fault(leader, "terminate", "graceful stop")
        demo.run_for(STEADY)
        demo.show_roles()
        cluster.recorder.listeners.clear()
        demo.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
