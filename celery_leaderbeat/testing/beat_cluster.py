"""A beat cluster on one machine: K real ``celery beat`` replicas, faults, a recorder.

Leadership only means something across process boundaries, so tests,
benchmarks and demos need real processes. :class:`BeatCluster` starts K
``python -m celery beat`` subprocesses against one broker, each with its own
identity, schedule file and log file, and lets the caller inject faults into
any of them (kill -9, SIGTERM, SIGSTOP/SIGCONT, restart). A
:class:`MessageRecorder` consumes what the replicas publish and keeps, for
every message, when it arrived, which process sent it and the fencing
headers (term, scheduled time), so who published what, and when, can be
judged afterwards.

The scheduler is a parameter (``-S``), so Celery's plain
``PersistentScheduler`` or any other scheduler class can be measured the
same way. The replicas run a Celery app configured through environment
variables (see :func:`replica_app`): by default a two-line module generated
into the cluster's directory.

Every process is stopped on :meth:`BeatCluster.close` (the cluster is a
context manager), at interpreter exit, and, on Linux, by the kernel when the
thread that started it dies (``PR_SET_PDEATHSIG``), so a failing or killed
test leaves no beat publishing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import IO, Any, Callable

from ..lease import LeaseElector, LeaseStore, LeaseTiming
from ..stores.redis_sentinel import sanitize_sentinel_url
from .lifecycle import Started
from .processes import death_signal_setter
from .publishes import MessageRecorder
from .waiting import wait_for

__all__ = [
    "CONF_ENV",
    "DEFAULT_SCHEDULE",
    "EVERY_MINUTE",
    "EVERY_SECOND",
    "LEADER_SCHEDULER",
    "SCHEDULE_ENV",
    "BeatCluster",
    "Replica",
    "beat_schedule",
    "replica_app",
]

#: JSON object merged into the replica app's ``app.conf`` (per replica).
CONF_ENV = "LEADERBEAT_REPLICA_CONF"
#: JSON object: entry name -> {"task": name, "every": seconds} or {"task", "crontab": "m h d M w"}.
SCHEDULE_ENV = "LEADERBEAT_REPLICA_SCHEDULE"

LEADER_SCHEDULER = "celery_leaderbeat.LeaderScheduler"

EVERY_SECOND = "leaderbeat.replica.every_second"
EVERY_MINUTE = "leaderbeat.replica.every_minute"

#: A 1 s interval entry and an every-minute crontab entry.
DEFAULT_SCHEDULE: dict[str, dict[str, Any]] = {
    "every-second": {"task": EVERY_SECOND, "every": 1.0},
    "every-minute": {"task": EVERY_MINUTE, "crontab": "* * * * *"},
}

GENERATED_APP_MODULE = "leaderbeat_replica_app"

#: Written to a replica's log before each start, so each run's lines can be told apart.
START_MARK = "--- starting"


# -- the app every replica runs ----------------------------------------------------


def replica_app(main: str = "leaderbeat_replica") -> Any:
    """A Celery app configured from ``LEADERBEAT_REPLICA_CONF`` and ``..._SCHEDULE``.

    This is the contract between :class:`BeatCluster` and its subprocesses:
    broker, elector, lease name, identity and timings arrive as plain
    ``app.conf`` keys in one JSON object, the schedule as another.
    """
    from celery import Celery

    app = Celery(main)
    app.conf.update(json.loads(os.environ.get(CONF_ENV) or "{}"))
    spec = json.loads(os.environ.get(SCHEDULE_ENV) or "null") or DEFAULT_SCHEDULE
    app.conf.beat_schedule = beat_schedule(spec)
    return app


def beat_schedule(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Turn the JSON schedule spec into Celery's ``beat_schedule``."""
    from celery.schedules import crontab

    schedule: dict[str, dict[str, Any]] = {}
    for name, entry in spec.items():
        if "every" in entry:
            when: Any = float(entry["every"])
        else:
            minute, hour, day_of_month, month, day_of_week = str(entry["crontab"]).split()
            when = crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                           month_of_year=month, day_of_week=day_of_week)
        schedule[name] = {"task": entry["task"], "schedule": when}
    return schedule


# -- one replica -------------------------------------------------------------------


class Replica:
    """One ``celery beat`` subprocess, with its own identity, schedule file and log.

    Fault methods return the monotonic time the signal was sent, to compare
    with :attr:`Publish.mono`. A replica stopped by one of them is not
    counted as having exited by itself.
    """

    def __init__(self, index: int, identity: str, argv: Sequence[str],
                 env: Mapping[str, str], cwd: str, log_path: str) -> None:
        self.index = index
        self.identity = identity
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        #: Every pid this replica has had, oldest first (a restart adds one).
        self.pids: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._stopped_on_purpose = False
        self._terminated = False  # SIGTERM sent to the current process

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exited_by_itself(self) -> bool:
        """True when the process ended although no fault or stop was asked for."""
        return (self.process is not None and self.process.poll() is not None
                and not self._stopped_on_purpose)

    def start(self) -> Replica:
        if self.running:
            return self
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child)
        self._log.write(f"{START_MARK} {self.identity} ---\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=death_signal_setter(),
        )
        self.pids.append(self.process.pid)
        self._stopped_on_purpose = False
        self._terminated = False
        return self

    def _signal(self, signum: int, on_purpose: bool) -> float:
        if not self.running:
            raise RuntimeError(f"{self.identity} is not running")
        assert self.process is not None
        if on_purpose:
            self._stopped_on_purpose = True
        sent_at = time.monotonic()
        os.kill(self.process.pid, signum)
        return sent_at

    def kill(self) -> float:
        """kill -9: no shutdown code runs, the lease is left to expire."""
        sent_at = self._signal(signal.SIGKILL, on_purpose=True)
        self.wait_exit(10)
        return sent_at

    def terminate(self) -> float:
        """SIGTERM: beat shuts down gracefully (and our scheduler releases its lease)."""
        sent_at = self._signal(signal.SIGTERM, on_purpose=True)
        self._terminated = True
        return sent_at

    def pause(self) -> float:
        """SIGSTOP: the process freezes with its connections open."""
        return self._signal(signal.SIGSTOP, on_purpose=False)

    def resume(self) -> float:
        return self._signal(signal.SIGCONT, on_purpose=False)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end; return its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def begin_stop(self) -> None:
        """Ask the process to end (SIGCONT in case it is paused, then SIGTERM once); no wait.

        A second SIGTERM would interrupt beat's shutdown, lease release included.
        """
        if self.running:
            assert self.process is not None
            self._stopped_on_purpose = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
                if not self._terminated:
                    self.process.terminate()
            self._terminated = True

    def stop(self, timeout: float = 10.0) -> None:
        """End the process however it is (paused included): SIGTERM, then SIGKILL."""
        self.begin_stop()
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()

    def restart(self) -> Replica:
        """Stop if needed, then start a new process with the same identity and files."""
        self.stop()
        return self.start()

    def log(self, current_run: bool = False) -> str:
        """The log file's text; with ``current_run``, only what the latest process wrote."""
        text = ""
        with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb") as fh:
            text = fh.read().decode(errors="replace")
        return text.rsplit(START_MARK, 1)[-1] if current_run else text

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Replica {self.identity} pid={self.pid} {state}>"


# -- the cluster -------------------------------------------------------------------

_live_clusters: weakref.WeakSet[BeatCluster] = weakref.WeakSet()


@atexit.register
def _close_live_clusters() -> None:
    for cluster in list(_live_clusters):
        cluster.close()


class BeatCluster(Started):
    """K beat replicas of one app against one broker, and a recorder on its queue.

    ``elector`` unset leaves the choice to the scheduler's defaults (the
    broker's Redis, or a file lock); ``replica_conf(index)`` adds the settings
    of one replica (index from 1), such as its own route to the store.
    ``lease_name`` and ``queue`` default to fresh unique names, so clusters
    sharing a broker never see each other. ``app`` is the ``-A`` argument;
    unset, a module calling :func:`replica_app` is generated into the
    cluster's directory.
    """

    def __init__(
        self,
        broker_url: str,
        replicas: int = 3,
        *,
        scheduler: str = LEADER_SCHEDULER,
        elector: str | None = None,
        lease_name: str | None = None,
        timing: LeaseTiming | None = None,
        schedule: Mapping[str, Mapping[str, Any]] | None = None,
        queue: str | None = None,
        transport_options: Mapping[str, Any] | None = None,
        conf: Mapping[str, Any] | None = None,
        replica_conf: Callable[[int], Mapping[str, Any]] | None = None,
        app: str | None = None,
        pythonpath: Sequence[str] = (),
        directory: str | None = None,
        loglevel: str = "info",
    ) -> None:
        unique = uuid.uuid4().hex[:10]
        self.broker_url = broker_url
        self.scheduler = scheduler
        self.elector = elector
        self.lease_name = lease_name or f"replicas-{unique}"
        self.timing = timing or LeaseTiming()
        self.queue = queue or f"leaderbeat-{unique}"
        self.transport_options = dict(transport_options or {})
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="leaderbeat-cluster-")
        os.makedirs(self.directory, exist_ok=True)
        # The recorder reaches the broker as the replicas' Celery does, broker_password
        # and the like included.
        self.recorder = MessageRecorder(broker_url, self.queue, self.transport_options, {
            argument: (conf or {}).get(f"broker_{key}") for argument, key in (
                ("userid", "user"), ("password", "password"), ("port", "port"),
                ("virtual_host", "vhost"))})
        self._store: LeaseStore | None = None
        self._closed = False
        self._conf = dict(conf or {})

        shared_conf: dict[str, Any] = {
            "broker_url": broker_url,
            "broker_transport_options": self.transport_options,
            "task_default_queue": self.queue,
            "leaderbeat_lease_name": self.lease_name,
            "leaderbeat_lease_ttl": self.timing.ttl,
            "leaderbeat_renew_interval": self.timing.renew_interval,
            "leaderbeat_retry_interval": self.timing.retry_interval,
            **({"leaderbeat_elector": elector} if elector else {}),
            **(conf or {}),
        }
        self._shared_conf = shared_conf
        if app is None:
            app = GENERATED_APP_MODULE
            with open(os.path.join(self.directory, f"{app}.py"), "w", encoding="utf-8") as fh:
                fh.write("from celery_leaderbeat.testing import replica_app\n\n"
                         "app = replica_app()\n")
        self.app = app
        paths = [self.directory, *pythonpath, os.environ.get("PYTHONPATH", "")]
        base_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONUNBUFFERED": "1",
            SCHEDULE_ENV: json.dumps(schedule or DEFAULT_SCHEDULE),
        }
        self.replicas: list[Replica] = []
        for index in range(1, replicas + 1):
            identity = f"replica-{index}"
            argv = [sys.executable, "-m", "celery", "-A", app, "beat", "-S", scheduler,
                    "-s", os.path.join(self.directory, f"{identity}-schedule"), "-l", loglevel]
            own_conf = replica_conf(index) if replica_conf else {}
            env = {**base_env, CONF_ENV: json.dumps(
                {**shared_conf, **own_conf, "leaderbeat_identity": identity})}
            log_path = os.path.join(self.directory, f"{identity}.log")
            self.replicas.append(Replica(index, identity, argv, env, self.directory, log_path))
        _live_clusters.add(self)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> BeatCluster:
        """Start the recorder first (so nothing is missed), then every replica."""
        self.recorder.start()
        for replica in self.replicas:
            replica.start()
        return self

    def close(self) -> None:
        """Stop every replica (in parallel) and the recorder; remove a temporary directory."""
        if self._closed:
            return
        self._closed = True
        for replica in self.replicas:  # all at once, then wait for each
            replica.begin_stop()
        for replica in self.replicas:
            replica.stop()
        self.recorder.stop()
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        _live_clusters.discard(self)


    # -- who is who --------------------------------------------------------------

    def replica_for_pid(self, pid: int | None) -> Replica | None:
        return next((r for r in self.replicas if pid in r.pids), None)

    def replica_named(self, identity: str | None) -> Replica | None:
        return next((r for r in self.replicas if r.identity == identity), None)

    def leader_by_publishes(self, since: float | None = None) -> Replica | None:
        """The replica that sent the latest message (after ``since``), if any."""
        sent = self.recorder.publishes(since=since)
        return self.replica_for_pid(sent[-1].pid) if sent else None

    def wait_for_leader(self, timeout: float = 30.0, since: float | None = None) -> Replica:
        """Wait for a publish (after ``since``) and return the replica that sent it."""
        found = wait_for(lambda: self.leader_by_publishes(since), timeout,
                         message=f"a publish on {self.queue!r}")
        assert found is not None
        return found

    def leaderbeat(self, *args: str, conf: Mapping[str, Any] | None = None,
                   schedule: Mapping[str, Mapping[str, Any]] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A <app> leaderbeat <args>`` as an operator would, with the
        replicas' settings (``conf`` overrides some; ``schedule`` replaces the
        schedule spec, as a deploy that changed it would); capture its output."""
        env = dict(self.replicas[0].env)
        if conf is not None:
            env[CONF_ENV] = json.dumps({**json.loads(env[CONF_ENV]), **conf})
        if schedule is not None:
            env[SCHEDULE_ENV] = json.dumps(schedule)
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", self.app, "leaderbeat", *args],
            env=env, cwd=self.directory, capture_output=True, text=True, timeout=timeout)

    def lease_store(self) -> LeaseStore:
        """The store holding this cluster's lease, chosen exactly as the replicas choose it."""
        if self._store is None:
            from celery import Celery

            from ..backends import choose_elector
            from ..settings import LeaderSettings

            app = Celery("observer", set_as_current=False)
            app.conf.update(self._shared_conf)  # broker_use_ssl and the like included
            settings = LeaderSettings.from_app(app, identity=lambda: "observer")
            elector = choose_elector(settings).elector
            if not isinstance(elector, LeaseElector):
                raise TypeError(f"the elector {elector!r} keeps no lease to read")
            self._store = elector.store
        return self._store

    def leader_by_lease(self) -> Replica | None:
        """The replica named as holder in the lease store right now, if any."""
        record = self.lease_store().read()
        return self.replica_named(record.holder) if record else None

    def exited_by_themselves(self) -> list[Replica]:
        """Replicas whose process ended without a fault or stop asking for it."""
        return [r for r in self.replicas if r.exited_by_itself]

    def logs(self, tail: int = 40) -> str:
        """The last lines of every replica's log, for failure messages."""
        parts = []
        for replica in self.replicas:
            lines = replica.log().splitlines()[-tail:]
            parts.append(f"== {replica!r} ({replica.log_path})\n" + "\n".join(lines))
        return "\n".join(parts)

    def describe(self) -> str:
        """Where this cluster lives, without secrets."""
        return (f"{len(self.replicas)} x {self.scheduler} on "
                f"{sanitize_sentinel_url(self.broker_url)}, queue {self.queue!r}, "
                f"lease {self.lease_name!r}")
