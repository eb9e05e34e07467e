"""What every benchmark script shares: the run's context, private servers, tables.

Each script compares the leader scheduler with Celery's plain scheduler in
the same run, on real servers it starts itself (a private ``redis-server``)
or finds on loopback (RabbitMQ), and prints markdown tables that can be
pasted into ``docs/benchmarks.md`` as they are. Nothing here knows about one
benchmark in particular.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from kombu.utils.url import maybe_sanitize_url

from celery_leaderbeat.testing import EtcdCluster, RedisServer

__all__ = [
    "LEADER_SCHEDULER",
    "PLAIN_SCHEDULER",
    "RABBITMQ_URL",
    "REPO_ROOT",
    "RedisServer",
    "broker_reachable",
    "celery_app",
    "command_counts",
    "cpu_seconds",
    "describe_run",
    "milliseconds",
    "parser",
    "percentile",
    "print_table",
    "private_redis",
    "unique",
]

#: The repository's root: on a replica's PYTHONPATH, so ``benchmarks.*`` schedulers import.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The shared RabbitMQ on loopback (guest/guest is its default account).
RABBITMQ_URL = os.environ.get("LEADERBEAT_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

LEADER_SCHEDULER = "celery_leaderbeat.LeaderScheduler"
PLAIN_SCHEDULER = "celery.beat.PersistentScheduler"


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring, kept verbatim."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def unique(prefix: str) -> str:
    """A name (lease, queue, identity) no other run on this machine uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- the context every result needs ------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> dict[str, str]:
    import celery
    import kombu
    import redis

    from celery_leaderbeat import __version__

    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis-py": redis.__version__,
        "celery-leaderbeat": __version__,
    }


def describe_run(title: str, redis: RedisServer | None = None, *,
                 redis_role: str = "", etcd: EtcdCluster | None = None) -> None:
    """Print what a reader needs to judge the numbers: when, where, which versions, how
    (``redis_role`` says what the private Redis is for, when that is not obvious)."""
    cores = os.cpu_count() or 0
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"## {title}\n")
    print(f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"- machine: {cores} cores, {_cpu_model()}, {platform.system()} "
          f"{platform.release()}, load average {load}")
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    if redis is not None:
        info = redis.client().info("server")
        role = f": {redis_role}" if redis_role else ""
        print(f"- redis-server {info.get('redis_version')} (private, port {redis.port}){role}")
    if etcd is not None:
        version = subprocess.run([etcd.executable, "--version"], capture_output=True,
                                 text=True, check=False).stdout.splitlines()[:1]
        print(f"- {' '.join(version) or 'etcd'} (private, {len(etcd.members)} member(s), "
              f"{etcd.url})")
    print(f"- command: {' '.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])}\n",
          flush=True)


# -- servers -----------------------------------------------------------------------


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A throw-away redis-server on a free port, stopped (and its data gone) afterwards."""
    with RedisServer() as server:
        yield server


def broker_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a broker answers at ``url``; the reason is printed (without secrets) if not."""
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1)
        return True
    except Exception as exc:
        print(f"(skipping {maybe_sanitize_url(url)}: {type(exc).__name__}: {exc})")
        return False


def celery_app(name: str, broker_url: str, **conf: Any) -> Any:
    """A Celery app that is nobody's current app, with the default queue named ``name``."""
    from celery import Celery

    app = Celery(name, set_as_current=False)
    app.conf.update({"broker_url": broker_url, "task_default_queue": name, **conf})
    return app


def command_counts(client: Any) -> dict[str, int]:
    """Commands the Redis server has run, by name, since its stats were last reset.

    Read from ``INFO commandstats``, so counting costs one command and needs
    no MONITOR. Scripts count as ``evalsha``; the commands they run inside
    count separately under their own names.
    """
    stats = client.info("commandstats")
    return {name.split("cmdstat_", 1)[-1]: int(row["calls"]) for name, row in stats.items()}


def cpu_seconds(pid: int) -> float:
    """CPU time a live process has used so far, all its threads (Linux ``/proc``).

    Read from each thread's ``schedstat`` (nanoseconds on the CPU), far finer
    than the 10 ms ticks of ``stat``, which a mostly idle process needs;
    ``stat``'s user + system time is the fallback.
    """
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[0])
        return total / 1e9
    except (OSError, ValueError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_mib(pid: int) -> tuple[float, float]:
    """Resident memory of a live process in MiB: (now, peak), from ``/proc/<pid>/status``."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024  # kB
    return found["VmRSS"], found["VmHWM"]


# -- numbers and tables ------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A markdown table, columns padded so it also reads well in a terminal."""
    text = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in text) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(text[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in text[1:]:
        print(line(row))
    print(flush=True)
