"""Failover: K real beat replicas, one fault at a time, against plain Celery beat.

Every trial is one scheduler under one scenario, on its own private
redis-server (broker and lease store) with K ``celery beat`` replicas running
a 1 s interval entry and an every-minute crontab entry. Each replica reaches
the store through its own TcpProxy, so one replica's link can be cut while
the others keep theirs; the broker is reached directly. A recorder notes every
published message with its arrival time and headers. The ``etcd-*``
scenarios keep the lease in a private 3-member etcd cluster instead (the
broker stays Redis); each replica is given every member, starting with a
different one.

The fault is injected --lead seconds (default 10) before a minute boundary,
so the crontab run falls due while the cluster is recovering, and the trial is
judged over a window from PRE_FAULT seconds before the fault to --duration
seconds after it:

- duplicates: a scheduled run published more than once. 1 s entry: the same
  ``leaderbeat_scheduled_at`` header twice, or a publish less than 3/4 of an
  interval after the last run counted (this also catches schedulers that send
  no header). Crontab entry: more than one publish for one minute.
- missed: scheduled runs never published. A stretch of n intervals without a
  publish of the 1 s entry misses n - 1 runs; a minute boundary in the
  window without its crontab publish misses one. A stretch that ends with
  the takeover publish is the takeover window: its runs were caught up.
- takeover: seconds from the fault to the first publish by another replica
  (for faults of the store itself: from the store's return to the next publish,
  and how long the store took to return, e.g. etcd electing a new Raft leader;
  for a failover of a replicated Redis, see below).
- publishers/s: the most replicas that published within any one second.
- exited: replicas whose process ended without being told to.

Store failovers (``sentinel-*``, ``cluster-*``): the lease lives in a
private Sentinel group (1 master, 2 replicas, 3 Sentinels) or Redis Cluster
(3 masters, 3 replicas) and the broker in a plain private redis-server. The
fault is the store's: kill -9 of the master (on a cluster the node is then
restarted and rejoins as a replica), a manual switchover with the old master
still serving, or (``sentinel-cut``) the master cut off from the Sentinels,
its replicas and the other beats while the leader keeps reaching it
directly. Takeover is then the end of the longest silence of the 1 s entry
after the fault, against a bound of the store's failover time (measured in
the trial: until a new master has a replica online) + TTL + retry + 1 s;
"store s" is that failover time. ``--min-replicas 0`` turns the replica
guard off (docs/redis-ha.md), to show what it prevents.

Scenarios of the same batch run side by side (--parallel), each scheduler's
trial of a scenario at the same moment. Usage::

    python benchmarks/failover.py                          # every scenario, 3 replicas
    python benchmarks/failover.py --scenarios kill,pause --replicas 5 --duration 30
    python benchmarks/failover.py --scheduler mypkg.MyScheduler --baseline none
    python benchmarks/failover.py --scenarios sentinel-kill,sentinel-switchover,sentinel-cut,\
        cluster-kill,cluster-switchover --min-replicas 0      # without the replica guard

The exit status is 1 when the measured scheduler (not the baseline) misses a target.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import PLAIN_SCHEDULER, describe_run, parser, print_table
from celery_leaderbeat.lease import LeaseTiming
from celery_leaderbeat.testing import (
    EVERY_MINUTE,
    EVERY_SECOND,
    LEADER_SCHEDULER,
    BeatCluster,
    EtcdCluster,
    Publish,
    RedisClusterGroup,
    RedisServer,
    Replica,
    SentinelGroup,
    TcpProxy,
    duplicate_runs,
    first_publish_by_another,
    wait_for,
)

INTERVAL = 1.0
#: Seconds between the fault and the next minute boundary.
FAULT_LEAD = 10.0
#: Seconds of normal running judged before the fault.
PRE_FAULT = 10.0
#: A crontab minute is only judged when the window goes on this long after it.
CRON_GRACE = 3.0
#: Jitter allowed before a stretch without publishes counts as a missed run.
JITTER = 0.1
#: A publish of the 1 s entry this many intervals after the last run counted repeats it.
REPEAT_GAP = 0.75


# -- faults --------------------------------------------------------------------------


@dataclass
class Fault:
    """What was done and when (monotonic). ``target`` is None for faults of the store."""

    at: float
    target: Replica | None = None
    store_back_at: float | None = None
    #: Seconds the replicated store took to fail over (a new master with a replica online).
    store_failover: float | None = None


class Trial:
    """One scheduler under one scenario: a private Redis, K proxies to it, K replicas."""

    def __init__(self, scenario: Scenario, scheduler: str, replicas: int,
                 timing: LeaseTiming, logs: str | None = None,
                 min_replicas: int | None = None) -> None:
        self.scenario = scenario
        self.scheduler = scheduler
        self.timing = timing
        self.min_replicas = min_replicas
        self.sentinels: SentinelGroup | None = None
        self.redis_cluster: RedisClusterGroup | None = None
        with contextlib.ExitStack() as stack:  # undone unless every part started
            self.redis = stack.enter_context(RedisServer())
            self.etcd: EtcdCluster | None = None
            self.proxies: list[TcpProxy] = []
            if scenario.store == "etcd":
                self.etcd = stack.enter_context(EtcdCluster(3))
            else:
                self.proxies = [stack.enter_context(TcpProxy(self.redis.port))
                                for _ in range(replicas)]
            directory = None
            if logs:
                short = scheduler.replace(":", ".").rsplit(".", 1)[-1]
                os.makedirs(logs, exist_ok=True)
                directory = tempfile.mkdtemp(prefix=f"{scenario.name}-{short}-", dir=logs)
            elector, conf, route = self.redis.url, {}, self._store_route
            if min_replicas is not None:
                conf["leaderbeat_redis_min_replicas"] = min_replicas
            if scenario.store == "sentinel":
                self.sentinels = stack.enter_context(
                    SentinelGroup(proxied_master=scenario.name == "sentinel-cut"))
                elector, route = self.sentinels.url, self._old_leader_route
                conf["leaderbeat_redis_transport_options"] = self.sentinels.transport_options
            elif scenario.store == "cluster":
                self.redis_cluster = stack.enter_context(RedisClusterGroup())
                elector, route = self.redis_cluster.url, None
            self.cluster = BeatCluster(
                self.redis.url, replicas, scheduler=scheduler,
                elector=self.etcd.url if self.etcd else elector,
                timing=timing, directory=directory, replica_conf=route, conf=conf)
            stack.callback(self.cluster.close)
            self._stack = stack.pop_all()
        self.fault: Fault | None = None
        self.window = (0.0, 0.0)
        self.error: BaseException | None = None

    def _store_route(self, index: int) -> dict[str, str]:
        if self.etcd is not None:  # every member, starting with a different one
            members = [m.endpoint for m in self.etcd.members]
            first = (index - 1) % len(members)
            return {"leaderbeat_elector": "etcd://" + ",".join(members[first:] + members[:first])}
        return {"leaderbeat_elector": f"redis://127.0.0.1:{self.proxies[index - 1].port}/0"}

    def _old_leader_route(self, index: int) -> dict[str, Any]:
        """sentinel-cut: replica 1, the first leader, dials the first master directly
        (with the replica guard of a Sentinel store), so the cut leaves it that master."""
        if index != 1 or self.scenario.name != "sentinel-cut":
            return {}
        assert self.sentinels is not None
        guard = 1 if self.min_replicas is None else self.min_replicas  # Sentinel's default
        return {"leaderbeat_elector": self.sentinels.master_direct_url,
                "leaderbeat_redis_min_replicas": guard}

    @property
    def lease_key(self) -> str:
        return f"leaderbeat:{{{self.cluster.lease_name}}}:lease"

    @property
    def outage(self) -> float:
        """How long a pause or a cut lasts: longer than the lease."""
        return self.timing.ttl + 3.0

    def start(self) -> Trial:
        if self.scenario.name != "sentinel-cut":
            self.cluster.start()
            return self
        # Replica 1 first, so that the leader is the one that keeps the old master.
        self.cluster.recorder.start()
        first, *others = self.cluster.replicas
        first.start()
        wait_for(lambda: self.cluster.leader_by_publishes() is first, 60,
                 message="replica 1 leading")
        for replica in others:
            replica.start()
        return self

    def warm_up(self, timeout: float) -> None:
        """Wait until the cluster publishes, three runs of the 1 s entry."""
        wait_for(lambda: len(self.cluster.recorder.publishes(EVERY_SECOND)) >= 3, timeout,
                 message=f"three runs of {self.scheduler} ({self.scenario.name})")

    def run(self, fault_wall: float, duration: float) -> None:
        """At ``fault_wall`` (time.time()), inject the fault; observe for ``duration`` s."""
        try:
            time.sleep(max(0.0, fault_wall - time.time()))
            leader = self.cluster.leader_by_publishes()
            assert leader is not None
            begin = time.monotonic()
            self.fault = self.scenario.inject(self, leader)
            end = self.fault.at + duration
            self.window = (begin - PRE_FAULT, end)
            time.sleep(max(0.0, end - time.monotonic()))
        except BaseException as exc:  # reported with the trial's row
            self.error = exc

    def close(self) -> None:
        self._stack.close()


def no_fault(trial: Trial, leader: Replica) -> Fault:
    return Fault(time.monotonic())


def kill_leader(trial: Trial, leader: Replica) -> Fault:
    return Fault(leader.kill(), leader)


def terminate_leader(trial: Trial, leader: Replica) -> Fault:
    return Fault(leader.terminate(), leader)


def step_down_leader(trial: Trial, leader: Replica) -> Fault:
    """What ``celery leaderbeat step-down`` does: a request in the store (plain beat has none)."""
    store = trial.cluster.lease_store()
    at = time.monotonic()
    store.request_step_down()  # type: ignore[attr-defined]
    return Fault(at, leader)


def pause_leader(trial: Trial, leader: Replica) -> Fault:
    at = leader.pause()
    time.sleep(trial.outage)
    leader.resume()
    return Fault(at, leader)


def cut_leader(trial: Trial, leader: Replica) -> Fault:
    proxy = trial.proxies[leader.index - 1]
    at = time.monotonic()
    proxy.cut()
    time.sleep(trial.outage)
    proxy.restore()
    return Fault(at, leader)


def restart_redis(trial: Trial, leader: Replica) -> Fault:
    at = time.monotonic()
    trial.redis.restart()  # no persistence: lease, history and queues are gone
    return Fault(at, store_back_at=time.monotonic())


def cut_everyone(trial: Trial, leader: Replica) -> Fault:
    at = time.monotonic()
    for proxy in trial.proxies:
        proxy.cut()
    time.sleep(trial.outage)
    back_at = time.monotonic()
    for proxy in trial.proxies:
        proxy.restore()
    return Fault(at, store_back_at=back_at)


def kill_etcd_leader(trial: Trial, leader: Replica) -> Fault:
    """kill -9 of the etcd member that is Raft leader; the store is back once another leads."""
    assert trial.etcd is not None
    raft_leader = trial.etcd.leader()
    assert raft_leader is not None
    at = time.monotonic()
    trial.etcd.kill(raft_leader)
    trial.etcd.wait_for_leader(30)
    return Fault(at, store_back_at=time.monotonic())


def kill_sentinel_master(trial: Trial, leader: Replica) -> Fault:
    assert trial.sentinels is not None
    old, at = trial.sentinels.kill_master()
    return Fault(at, store_failover=trial.sentinels.wait_failover(old, at))


def sentinel_switchover(trial: Trial, leader: Replica) -> Fault:
    assert trial.sentinels is not None
    old, at = trial.sentinels.switchover()
    return Fault(at, store_failover=trial.sentinels.wait_failover(old, at))


def cut_sentinel_master(trial: Trial, leader: Replica) -> Fault:
    """The first master and replica 1 (the leader) cut off from everything else."""
    assert trial.sentinels is not None
    old = trial.sentinels.master()
    at = trial.sentinels.cut_master()
    assert old is not None
    failover = trial.sentinels.wait_failover(old, at)
    time.sleep(max(0.0, at + trial.outage - time.monotonic()))
    trial.sentinels.restore_master()  # the Sentinels then demote it
    return Fault(at, store_failover=failover)


def kill_cluster_master(trial: Trial, leader: Replica) -> Fault:
    """kill -9 of the lease's master; restarted once its replica has taken over, so
    that the shard has a replica again (as an orchestrator would restart it)."""
    assert trial.redis_cluster is not None
    old, at = trial.redis_cluster.kill_master_of(trial.lease_key)
    trial.redis_cluster.wait_failover(trial.lease_key, old, at)
    old.start()
    failover = trial.redis_cluster.wait_failover(trial.lease_key, old, at, replicas=1)
    return Fault(at, store_failover=failover)


def cluster_switchover(trial: Trial, leader: Replica) -> Fault:
    assert trial.redis_cluster is not None
    old, at = trial.redis_cluster.switchover(trial.lease_key)
    failover = trial.redis_cluster.wait_failover(trial.lease_key, old, at, replicas=1)
    return Fault(at, store_failover=failover)


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    inject: Callable[[Trial, Replica], Fault]
    #: The takeover target for the given timing, if the issue sets one.
    bound: Callable[[LeaseTiming], float | None] = lambda timing: None
    #: Where the lease lives: "redis" (the broker's redis-server), "etcd" (3 members),
    #: "sentinel" or "cluster".
    store: str = "redis"


def crash_bound(timing: LeaseTiming) -> float:
    return timing.ttl + timing.retry_interval + 1.0


def graceful_bound(timing: LeaseTiming) -> float:
    return timing.retry_interval + 1.0


def step_down_bound(timing: LeaseTiming) -> float:
    return timing.renew_interval + timing.retry_interval + 1.0


SCENARIOS = {s.name: s for s in [
    Scenario("steady", "no fault", no_fault),
    Scenario("kill", "kill -9 of the leader", kill_leader, crash_bound),
    Scenario("term", "SIGTERM of the leader", terminate_leader, graceful_bound),
    Scenario("step-down", "a step-down requested in the store", step_down_leader,
             step_down_bound),
    Scenario("pause", "SIGSTOP of the leader for TTL + 3 s, then SIGCONT", pause_leader,
             crash_bound),
    Scenario("cut", "the leader's link to the store cut for TTL + 3 s", cut_leader,
             crash_bound),
    Scenario("restart", "redis-server restarted, all data lost", restart_redis),
    Scenario("cut-all", "the store unreachable from every replica for TTL + 3 s",
             cut_everyone),
    Scenario("etcd-kill", "kill -9 of the leader, lease in a 3-member etcd", kill_leader,
             crash_bound, store="etcd"),
    Scenario("etcd-member", "kill -9 of etcd's Raft leader member while dispatching",
             kill_etcd_leader, crash_bound, store="etcd"),
]}

#: Failovers of a replicated store (takeover bound: the store's failover time + crash_bound).
STORE_SCENARIOS = {s.name: s for s in [
    Scenario("sentinel-kill", "Sentinel: kill -9 of the master", kill_sentinel_master,
             crash_bound, "sentinel"),
    Scenario("sentinel-switchover", "Sentinel: SENTINEL FAILOVER, old master serving",
             sentinel_switchover, crash_bound, "sentinel"),
    Scenario("sentinel-cut", "Sentinel: master and leader cut off from the rest for TTL + 3 s",
             cut_sentinel_master, crash_bound, "sentinel"),
    Scenario("cluster-kill", "Cluster: kill -9 of the lease's master, then restarted",
             kill_cluster_master, crash_bound, "cluster"),
    Scenario("cluster-switchover", "Cluster: CLUSTER FAILOVER on its replica",
             cluster_switchover, crash_bound, "cluster"),
]}
ALL_SCENARIOS = {**SCENARIOS, **STORE_SCENARIOS}


# -- judging what was published -------------------------------------------------------


@dataclass
class Outcome:
    """The numbers of one trial, and the targets it missed."""

    scenario: str
    scheduler: str
    published: int
    duplicates: int
    missed: int
    takeover: float | None
    bound: float | None
    most_publishers: int
    exited: list[str]
    #: Publishes by the faulted replica after the fault (kill, pause, cut: must be none).
    by_faulted: int = 0
    #: Minute boundaries in the window, at which the crontab entry was judged.
    minutes_judged: int = 0
    error: str | None = None
    #: Faults of the store: seconds from the fault until the store was back.
    store_back: float | None = None
    #: Store failovers: seconds until a new master had a replica online.
    store_failover: float | None = None
    #: Terms whose publishes came from more than one process (fencing tokens reused).
    shared_terms: int = 0

    def misses(self) -> list[str]:
        """The targets this trial missed, in words; empty when it met all of them."""
        found = []
        if self.error:
            found.append(f"trial failed: {self.error}")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate(s)")
        if self.missed:
            found.append(f"{self.missed} missed run(s)")
        if self.bound is not None and (self.takeover is None or self.takeover > self.bound):
            took = "none" if self.takeover is None else f"{self.takeover:.2f}s"
            found.append(f"takeover {took} over {self.bound:.1f}s")
        if self.exited:
            found.append(f"exited by itself: {', '.join(self.exited)}")
        if self.shared_terms:
            found.append(f"{self.shared_terms} term(s) published by two processes")
        return found


def interval_repeats(publishes: Sequence[Publish], interval: float) -> set[str]:
    """Task ids of runs of one interval entry published again.

    A repeat has the scheduled time of an earlier publish, or arrives less
    than REPEAT_GAP intervals after the last run counted. One scheduler never
    sends an interval entry sooner than an interval after its last send, so
    anything closer is another replica sending the same run.
    """
    repeats = {p.task_id for sent in duplicate_runs(publishes).values() for p in sent[1:]}
    counted: float | None = None
    for p in sorted(publishes, key=lambda p: p.mono):
        if p.task_id in repeats:
            continue
        if counted is not None and p.mono - counted < REPEAT_GAP * interval:
            repeats.add(p.task_id)
        else:
            counted = p.mono
    return repeats


def minute_of(p: Publish) -> int:
    """The crontab minute a publish is for: its scheduled time, else its arrival."""
    if p.scheduled_at is not None:
        return round(datetime.fromisoformat(p.scheduled_at).timestamp() / 60)
    return math.floor(p.wall / 60)


def crontab_duplicates(publishes: Iterable[Publish]) -> int:
    minutes: dict[int, int] = {}
    for p in publishes:
        minutes[minute_of(p)] = minutes.get(minute_of(p), 0) + 1
    return sum(count - 1 for count in minutes.values())


def interval_missed(publishes: Sequence[Publish], window: tuple[float, float],
                    excused: tuple[float, float] | None, interval: float) -> int:
    """Runs missed in the window, from the stretches without a publish.

    A stretch overlapping ``excused`` (fault to takeover) that ends with a
    publish by the end of it is the takeover: its runs were caught up.
    """
    repeats = interval_repeats(publishes, interval)
    kept = [p for p in publishes if p.task_id not in repeats]
    times = [window[0], *sorted(p.mono for p in kept), window[1]]
    missed = 0
    for start, end in zip(times, times[1:]):
        if excused and start <= excused[1] and end >= excused[0] and end <= excused[1] + 1e-6:
            continue
        missed += max(0, math.floor((end - start) / interval - JITTER) - 1)
    return missed


def judged_minutes(window_wall: tuple[float, float]) -> range:
    """The minute boundaries in the window with time to spare after them (minutes since 1970)."""
    return range(math.floor(window_wall[0] / 60) + 1,
                 math.floor((window_wall[1] - CRON_GRACE) / 60) + 1)


def crontab_missed(publishes: Iterable[Publish], window_wall: tuple[float, float]) -> int:
    """Judged minute boundaries without a publish for their minute."""
    seen = {minute_of(p) for p in publishes}
    return sum(1 for minute in judged_minutes(window_wall) if minute not in seen)


def most_publishers(publishes: Sequence[Publish]) -> int:
    """The most distinct processes that published within any one second."""
    ordered = sorted(publishes, key=lambda p: p.mono)
    most = 0
    for i, p in enumerate(ordered):
        pids = {q.pid for q in ordered[i:] if q.mono < p.mono + 1.0}
        most = max(most, len(pids))
    return most


def end_of_longest_silence(publishes: Sequence[Publish], since: float) -> Publish | None:
    """The publish ending the longest stretch without one after ``since`` (the first
    publish after it when no stretch is longer than an interval: nothing stopped)."""
    later = [p for p in publishes if p.mono >= since]
    best = later[0] if later else None
    longest, last = INTERVAL * (1 + JITTER), since
    for p in later:
        if p.mono - last > longest:
            best, longest = p, p.mono - last
        last = p.mono
    return best


def judge(trial: Trial) -> Outcome:
    """Turn what the recorder saw during the trial's window into an Outcome."""
    name = trial.scenario.name
    bound = trial.scenario.bound(trial.timing)
    exited = [r.identity for r in trial.cluster.exited_by_themselves()]
    fault = trial.fault
    if fault is None:
        return Outcome(name, trial.scheduler, 0, 0, 0, None, bound, 0, exited,
                       error=repr(trial.error))
    begin, end = trial.window
    sent = [p for p in trial.cluster.recorder.publishes() if begin <= p.mono <= end]
    every_second = [p for p in sent if p.task == EVERY_SECOND]
    every_minute = [p for p in sent if p.task == EVERY_MINUTE]

    takeover_publish, took_from = None, fault.at
    if fault.store_failover is not None:
        bound = fault.store_failover + (bound or 0.0)
        takeover_publish = end_of_longest_silence(every_second, fault.at)
    elif fault.target is not None:
        takeover_publish = first_publish_by_another(sent, fault.at, fault.target.pids)
    elif fault.store_back_at is not None:
        took_from = fault.store_back_at
        takeover_publish = first_publish_by_another(sent, took_from, [])
    takeover = takeover_publish.mono - took_from if takeover_publish else None
    excused = (fault.at, takeover_publish.mono) if takeover_publish else None

    offset = time.time() - time.monotonic()  # monotonic -> wall, for the crontab minutes
    window_wall = (begin + offset, end + offset)
    by_faulted = 0
    if fault.target is not None and fault.target.pid is not None:
        by_faulted = sum(1 for p in sent if p.mono > fault.at and p.pid in fault.target.pids)
    return Outcome(
        scenario=name,
        scheduler=trial.scheduler,
        published=len(sent),
        duplicates=(len(interval_repeats(every_second, INTERVAL))
                    + crontab_duplicates(every_minute)),
        missed=(interval_missed(every_second, (begin, end), excused, INTERVAL)
                + crontab_missed(every_minute, window_wall)),
        takeover=takeover,
        bound=bound,
        most_publishers=most_publishers(sent),
        exited=exited,
        by_faulted=by_faulted,
        minutes_judged=len(judged_minutes(window_wall)),
        error=repr(trial.error) if trial.error else None,
        store_back=None if fault.store_back_at is None else fault.store_back_at - fault.at,
        store_failover=fault.store_failover,
        shared_terms=shared_terms(sent),
    )


def shared_terms(publishes: Iterable[Publish]) -> int:
    """Terms (fencing tokens) that more than one process published under."""
    pids: dict[int, set[int | None]] = {}
    for p in publishes:
        if p.term is not None:
            pids.setdefault(p.term, set()).add(p.pid)
    return sum(1 for sent_by in pids.values() if len(sent_by) > 1)


# -- running batches of trials ---------------------------------------------------------


def next_fault_time(earliest: float, lead: float = FAULT_LEAD) -> float:
    """The first moment ``lead`` seconds before a minute boundary, at or after ``earliest``."""
    return (math.floor((earliest + lead) / 60) + 1) * 60 - lead


def run_batch(scenarios: Sequence[Scenario], schedulers: Sequence[str], replicas: int,
              timing: LeaseTiming, duration: float, logs: str | None = None,
              on_trial: Callable[[Trial], None] | None = None,
              lead: float = FAULT_LEAD, min_replicas: int | None = None) -> list[Outcome]:
    """Run every scheduler under every scenario at once, faults at one shared moment."""
    trials: list[Trial] = []
    try:
        for scenario in scenarios:
            for scheduler in schedulers:
                trials.append(Trial(scenario, scheduler, replicas, timing, logs,
                                    min_replicas).start())
        for trial in trials:
            trial.warm_up(90)
        fault_wall = next_fault_time(time.time() + PRE_FAULT + 1.0, lead)
        threads = [threading.Thread(target=t.run, args=(fault_wall, duration), daemon=True)
                   for t in trials]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcomes = [judge(trial) for trial in trials]
        if on_trial is not None:
            for trial in trials:
                on_trial(trial)
        return outcomes
    finally:
        for trial in trials:  # ask every replica to stop at once, then wait
            for replica in trial.cluster.replicas:
                replica.begin_stop()
        for trial in trials:
            trial.close()


def row(outcome: Outcome) -> list[str]:
    takeover = "-" if outcome.takeover is None else f"{outcome.takeover:.2f}"
    if outcome.bound is not None:
        takeover += f" (<= {outcome.bound:.1f})"
    if outcome.store_back is not None and outcome.store_back >= 0.1:
        takeover += f", store back after {outcome.store_back:.2f}"
    return [
        outcome.scenario,
        outcome.scheduler,
        str(outcome.published),
        str(outcome.duplicates),
        str(outcome.missed),
        takeover,
        str(outcome.most_publishers),
        ", ".join(outcome.exited) or "no",
        "-" if outcome.store_failover is None else f"{outcome.store_failover:.2f}",
        str(outcome.shared_terms),
    ]


HEADERS = ["scenario", "scheduler", "published", "duplicates", "missed", "takeover s",
           "publishers/s", "exited by itself", "store s", "shared terms"]


def main(argv: Sequence[str] | None = None) -> int:
    args_parser = parser(__doc__)
    args_parser.add_argument("--scheduler", default=LEADER_SCHEDULER,
                             help="dotted path of the scheduler measured against the targets")
    args_parser.add_argument("--baseline", default=PLAIN_SCHEDULER,
                             help="scheduler run alongside for comparison, or 'none'")
    args_parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                             help=f"comma-separated, from: {', '.join(ALL_SCENARIOS)}")
    args_parser.add_argument("--min-replicas", type=int, default=None,
                             help="leaderbeat_redis_min_replicas of every replica (default: "
                             "the store's; 0 turns the replica guard off)")
    args_parser.add_argument("--replicas", type=int, default=3)
    args_parser.add_argument("--duration", type=float, default=20.0,
                             help="seconds judged after each fault (default 20)")
    args_parser.add_argument("--parallel", type=int, default=4,
                             help="scenarios run side by side (default 4)")
    args_parser.add_argument("--lead", type=float, default=FAULT_LEAD,
                             help="seconds from each fault to the next minute boundary "
                             f"(default {FAULT_LEAD:.0f})")
    args_parser.add_argument("--logs", help="keep every replica's log under this directory")
    args = args_parser.parse_args(argv)

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_SCENARIOS]
    if unknown:
        args_parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(ALL_SCENARIOS)}")
    if args.duration < args.lead + CRON_GRACE:
        args_parser.error(f"--duration must be at least {args.lead + CRON_GRACE:.0f}s, "
                          "so the minute boundary after the fault is judged")
    schedulers = [args.scheduler]
    if args.baseline.lower() != "none":
        schedulers.append(args.baseline)
    timing = LeaseTiming()

    with RedisServer() as probe:
        describe_run("Failover", probe)
    print(f"{args.replicas} replicas per trial; lease ttl {timing.ttl}s, renew "
          f"{timing.renew_interval}s, retry {timing.retry_interval}s; judged from "
          f"{PRE_FAULT:.0f}s before each fault to {args.duration:.0f}s after; faults "
          f"{args.lead:g}s before a minute boundary.\n", flush=True)

    scenarios = [ALL_SCENARIOS[n] for n in names]
    outcomes: list[Outcome] = []
    for i in range(0, len(scenarios), max(1, args.parallel)):
        batch = scenarios[i:i + max(1, args.parallel)]
        print(f"(running {', '.join(s.name for s in batch)})", file=sys.stderr, flush=True)
        outcomes += run_batch(batch, schedulers, args.replicas, timing, args.duration,
                              args.logs, lead=args.lead, min_replicas=args.min_replicas)

    print_table(HEADERS, [row(o) for o in outcomes])
    failed = False
    for outcome in outcomes:
        if outcome.scheduler != args.scheduler:
            continue
        misses = outcome.misses()
        if misses:
            failed = True
            print(f"- {outcome.scenario}: MISSED TARGET: {'; '.join(misses)}")
    if not failed:
        print(f"{args.scheduler}: every target met.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
