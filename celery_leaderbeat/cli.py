"""``celery -A proj leaderbeat status|step-down|health|history|pause|resume``: see and
steer the replicas.

Registered as a Celery sub-command through the ``celery.commands`` entry
point. Every command reads the app's ``leaderbeat_*`` settings and opens the
same store the replicas use; none of them joins the election.

Exit codes: 0 fine; 1 no live leader, the store cannot be read, a
step-down did not move leadership, this replica sends no heartbeat
(``health --self``), or ``history`` cannot read the history or schedule or
knows no such entry, ``pause``/``resume`` cannot reach the store; 3 the
configured elector keeps no lease in a store
(static, callable or custom electors), or keeps no replica registry where one
is needed, or a store that cannot be paused, so there is nothing to answer
with; 4 the store refuses these
settings for a reason that waiting will not heal (wrong password, missing
permission, unknown database, failed certificate check): the command
connects exactly as the replicas do, so they are refused too, and stay
standbys until the setting it names is fixed. A paused cluster with a live
leader is healthy (exit 0): ``status`` and ``health`` say it is paused.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, NoReturn

import click
from celery.bin.base import CeleryCommand
from celery.exceptions import ImproperlyConfigured
from celery.utils.imports import load_extension_class_names, symbol_by_name

from .backends import choose_elector
from .history_report import NEVER_RUN, REMOVED, configured_schedule, history_report
from .lease import LeaseElector, LeaseRecord, LeaseStore, StoreMisconfigured, StoreUnavailable
from .pause import (
    DispatchPause,
    DispatchPauses,
    DispatchResume,
    operator,
    parse_duration,
    pauses_of,
)
from .pause import now as wall_now
from .registry import LEADER, ReplicaRecord, ReplicaRegistry
from .settings import LeaderSettings

__all__ = ["EXIT_MISCONFIGURED", "EXIT_NO_STORE", "EXIT_OK", "EXIT_UNHEALTHY", "SCHEMA_VERSION",
           "NoStore", "leaderbeat", "open_store", "scheduler_class", "snapshot"]

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_NO_STORE = 3
EXIT_MISCONFIGURED = 4

#: Version of the ``status --json`` document; it grows only by new keys.
SCHEMA_VERSION = 1


class NoStore(Exception):
    """The configured elector cannot answer: it keeps no lease in a store."""


def open_store(app: Any, scheduler: Any = None) -> tuple[LeaderSettings, LeaseStore]:
    """The store the replicas of ``app`` use, chosen exactly as they choose it.

    ``scheduler`` is what the replicas run with ``-S`` (default: the app's
    ``beat_scheduler``): some schedulers bring their own default elector.
    """
    try:
        app.loader.import_default_modules()  # sets Django up: django:// needs its apps
    except Exception as exc:
        raise NoStore(f"cannot load the app's modules: {exc!r}") from exc
    try:
        settings = LeaderSettings.from_app(app)
        if settings.elector is None:
            settings = replace(settings, elector=default_elector(app, scheduler))
        elector = choose_elector(settings).elector
    except ImproperlyConfigured as exc:
        raise NoStore(f"leaderbeat is not configured correctly: {exc}") from exc
    if not isinstance(elector, LeaseElector):
        raise NoStore(
            f"the configured elector {elector!r} keeps no lease in a store, so it cannot "
            "tell who leads; status, step-down and health need a store elector "
            "(redis://, etcd://, file://, a SQL URL or django://)")
    return settings, elector.store


def default_elector(app: Any, scheduler: Any = None) -> str | None:
    """The elector URL a scheduler class falls back to (``default_elector``), if any."""
    try:
        cls = scheduler_class(app, scheduler)
    except Exception as exc:
        name = scheduler or app.conf.beat_scheduler
        raise NoStore(f"cannot import the scheduler {name!r} to learn its default elector "
                      f"({exc!r}); set leaderbeat_elector or pass --scheduler") from exc
    found: str | None = getattr(cls, "default_elector", None)
    return found


def scheduler_class(app: Any, scheduler: Any = None) -> Any:
    """The class the replicas run: ``scheduler`` (as beat's ``-S``) or ``beat_scheduler``.

    Raises whatever importing it raises.
    """
    app.loader.import_default_modules()  # sets Django up in Django projects
    aliases = dict(load_extension_class_names("celery.beat_schedulers"))
    return symbol_by_name(scheduler or app.conf.beat_scheduler, aliases=aliases)


def snapshot(settings: LeaderSettings, store: LeaseStore) -> dict[str, Any]:
    """The ``status --json`` document: lease, live replicas and the health verdict."""
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "lease_name": settings.lease_name,
        "store": store.description,
        "timing": {
            "ttl": settings.timing.ttl,
            "renew_interval": settings.timing.renew_interval,
            "retry_interval": settings.timing.retry_interval,
        },
        "lease": None,
        "replicas": None,
        "healthy": False,
        "reason": "",
        "misconfigured": None,
        "pause": None,
    }
    pauses = pauses_of(store)
    try:
        lease = store.read()
        replicas = store.replicas() if isinstance(store, ReplicaRegistry) else None
        pause = pauses.read_pause().pause if pauses is not None else None
    except StoreMisconfigured as exc:
        doc["misconfigured"] = {"setting": exc.setting, "cause": exc.cause}
        doc["reason"] = (f"store misconfigured: {store.description} refuses these settings "
                         "(a beat starting with them stops; one already running stays a "
                         f"standby): {exc}")
        return doc
    except StoreUnavailable as exc:
        doc["reason"] = f"cannot read the store {store.description}: {exc}"
        return doc
    doc["lease"] = None if lease is None else _lease_doc(lease)
    doc["replicas"] = None if replicas is None else [r.encode() for r in replicas]
    doc["healthy"], doc["reason"] = judge(settings, store, lease, replicas)
    if pause is not None:
        doc["pause"] = _pause_doc(pause)
        doc["reason"] += f"; dispatch PAUSED {pause.describe()}"
    return doc


def _pause_doc(pause: DispatchPause) -> dict[str, Any]:
    return {
        "paused_by": pause.paused_by,
        "paused_at": _iso(pause.paused_at),
        "reason": pause.reason,
        "until": _iso(pause.until),
        "expires_in": None if pause.expires_in is None else round(pause.expires_in, 3),
    }


def judge(settings: LeaderSettings, store: LeaseStore, lease: LeaseRecord | None,
          replicas: list[ReplicaRecord] | None) -> tuple[bool, str]:
    """Is there a live leader with a fresh lease? And one line saying why (not)."""
    name = settings.lease_name
    if lease is None or lease.holder is None:
        return False, f"no leader: nobody holds the lease {name!r} in {store.description}"
    who = f"{lease.holder} (term {lease.term})"
    if lease.expires_in is not None and lease.expires_in <= 0:
        return False, f"the lease of {who} has expired"
    standbys = ""
    if replicas is not None:
        # Without a heartbeat the holder may be frozen: the file store's kernel
        # lock, for one, outlives a paused process.
        if not any(r.identity == lease.holder and r.role == LEADER for r in replicas):
            return False, f"{who} holds the lease but sends no heartbeat as leader"
        live = sum(1 for r in replicas if r.role != LEADER)
        standbys = f", {live} standby{'' if live == 1 else 's'} live"
    fresh = "" if lease.expires_in is None else f", expires in {lease.expires_in:.1f} s"
    return True, f"leader {who}{fresh}{standbys}"


def _lease_doc(lease: LeaseRecord) -> dict[str, Any]:
    return {
        "holder": lease.holder,
        "term": lease.term,
        "acquired_at": _iso(lease.acquired_at),
        "renewed_at": _iso(lease.renewed_at),
        "expires_in": None if lease.expires_in is None else round(lease.expires_in, 3),
        "transitions": lease.transitions,
    }


def _iso(stamp: datetime | None) -> str | None:
    return stamp.isoformat() if stamp else None


# -- the commands ------------------------------------------------------------------


@click.group(name="leaderbeat")
@click.option("-S", "--scheduler", default=None,
              help="The scheduler the replicas run (as beat's -S), if it is not the app's "
                   "beat_scheduler: it may choose the elector.")
def leaderbeat(scheduler: str | None) -> None:
    """See who leads the beat replicas of this app, move leadership, probe health,
    read the run history."""


def _store_or_exit(ctx: click.Context) -> tuple[LeaderSettings, LeaseStore]:
    scheduler = ctx.parent.params.get("scheduler") if ctx.parent else None
    try:
        return open_store(ctx.obj.app, scheduler)
    except NoStore as exc:
        _fail(str(exc), EXIT_NO_STORE)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(printable(message), err=True)
    raise click.exceptions.Exit(code)


def _say(text: str) -> None:
    click.echo(printable(text))


def printable(text: str) -> str:
    """``text`` as any output takes it: a lone surrogate (an entry name or identity
    may hold one, and no encoding of text does) written as its escape, ``\\udXXX``.
    ``--json`` needs none of this: JSON escapes it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@leaderbeat.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The lease and the live replicas. Exit 1 without a live leader, 4 when the
    store refuses these settings for good."""
    settings, store = _store_or_exit(ctx)
    try:
        doc = snapshot(settings, store)
    finally:
        store.close()
    click.echo(json.dumps(doc, indent=2) if as_json else printable(render(doc)))
    ctx.exit(_exit_code(doc))


def _role(replica: dict[str, Any], lease: dict[str, Any] | None) -> str:
    """A replica's role as status shows it: a leader record of a term that no longer
    holds the lease (a leader that died, whose record has not yet expired) is
    shown as what it is, ``was leader``."""
    role: str = replica["role"]
    if role == LEADER and (lease is None or lease["holder"] != replica["identity"]
                           or lease["term"] != replica["term"]):
        return "was leader"
    return role


def _exit_code(doc: dict[str, Any]) -> int:
    if doc["healthy"]:
        return EXIT_OK
    return EXIT_MISCONFIGURED if doc["misconfigured"] else EXIT_UNHEALTHY


def render(doc: dict[str, Any]) -> str:
    """``status`` for people."""
    now = datetime.now(timezone.utc)
    lines = [f"lease {doc['lease_name']!r} in {doc['store']}"]
    lease = doc["lease"]
    if lease is None:
        lines.append("  no holder")
    else:
        expires = "never (held while the process lives)" if lease["expires_in"] is None \
            else f"{lease['expires_in']:.1f} s"
        lines += [
            f"  holder:       {lease['holder']} (term {lease['term']})",
            f"  acquired at:  {_when(lease['acquired_at'], now)}",
            f"  renewed at:   {_when(lease['renewed_at'], now)}",
            f"  expires in:   {expires}",
            f"  transitions:  {lease['transitions']}",
        ]
    replicas = doc["replicas"]
    if doc["misconfigured"] or (replicas is None and doc["reason"].startswith("cannot read")):
        lines.append("replicas: unknown (the store could not be read)")
    elif replicas is None:
        lines.append("replicas: this store keeps no replica registry")
    else:
        lines.append(f"replicas: {len(replicas)} live")
        width = max([len(r["identity"]) for r in replicas] + [8])
        terms = [f"term {r['term']}" if r["term"] is not None else "" for r in replicas]
        term_width = max(len(t) for t in [*terms, ""])
        roles = [_role(r, lease) for r in replicas]
        role_width = max(len(role) for role in [*roles, "standby"])
        for r, term, role in zip(replicas, terms, roles):
            lines.append(
                f"  {r['identity']:<{width}}  {role:<{role_width}}  {term:<{term_width}}"
                f"  heartbeat "
                f"{r['heartbeat_age']:.1f} s ago  pid {r['pid']} on {r['host']}, "
                f"leaderbeat {r['version']}, celery {r['celery_version']}")
    pause = doc["pause"]
    if pause is not None:
        until = "resume" if pause["until"] is None else (
            f"{pause['until']} (in {pause['expires_in'] or 0:.1f} s) or resume")
        lines += [
            "dispatch: PAUSED",
            f"  paused by:    {pause['paused_by']}",
            f"  paused at:    {_when(pause['paused_at'], now)}",
            f"  reason:       {pause['reason'] or '(none given)'}",
            f"  until:        {until}",
        ]
    lines.append(f"health: {'ok' if doc['healthy'] else 'FAILING'}: {doc['reason']}")
    return "\n".join(lines)


def _when(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "unknown"
    age = (now - datetime.fromisoformat(stamp)).total_seconds()
    return f"{stamp} ({age:.1f} s ago)"


@leaderbeat.command(cls=CeleryCommand)
@click.option("--self", "this_replica", is_flag=True,
              help="Judge this replica (leaderbeat_identity), not the cluster: exit 0 while "
                   "its heartbeat is fresh, leader or standby.")
@click.pass_context
def health(ctx: click.Context, this_replica: bool) -> None:
    """Exit 0 when a live leader holds a fresh lease (paused or not: the line says),
    else non-zero (4: the store refuses these settings for good); one line why."""
    if this_replica:
        _replica_health(ctx)
        return
    settings, store = _store_or_exit(ctx)
    try:
        doc = snapshot(settings, store)
    finally:
        store.close()
    if not doc["healthy"]:
        _fail(f"unhealthy: {doc['reason']}", _exit_code(doc))
    _say(f"healthy: {doc['reason']}")


def _replica_health(ctx: click.Context) -> None:
    """``health --self``: is this replica heartbeating, whatever its role?

    A liveness probe's question. A standby passes: it is what makes a
    takeover fast. A store that cannot be read is not judged against the
    replica (exit 0, saying so): restarting replicas cannot bring a store back.
    """
    identity = ctx.obj.app.conf.get("leaderbeat_identity")
    if not identity:
        _fail("health --self needs leaderbeat_identity set to this replica's identity "
              "(the default, host:pid, names another process)", EXIT_NO_STORE)
    settings, store = _store_or_exit(ctx)
    try:
        if not isinstance(store, ReplicaRegistry):
            _fail(f"the store {store.description} keeps no replica registry, so it cannot "
                  "tell whether a replica is alive", EXIT_NO_STORE)
        try:
            mine = [r for r in store.replicas() if r.identity == identity]
        except StoreUnavailable as exc:
            _say(f"not judged: cannot read the store {store.description}: {exc}")
            return
    finally:
        store.close()
    if not mine:
        _fail(f"not live: {identity} sends no heartbeat to {store.description} (lease "
              f"{settings.lease_name!r})", EXIT_UNHEALTHY)
    record = mine[0]
    role = f"leader (term {record.term})" if record.role == LEADER else "standby"
    _say(f"live: {identity} as {role}, heartbeat {record.heartbeat_age:.1f} s ago")


@leaderbeat.command(cls=CeleryCommand)
@click.argument("entry", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.pass_context
def history(ctx: click.Context, entry: str | None, as_json: bool) -> None:
    """Each entry's last run (time, count, term, leader) and when it is next due."""
    settings, store = _store_or_exit(ctx)
    app = ctx.obj.app
    scheduler = ctx.parent.params.get("scheduler") if ctx.parent else None
    try:
        try:
            schedule = configured_schedule(app, scheduler_class(app, scheduler))
        except Exception as exc:
            _fail(f"cannot read the schedule of the scheduler "
                  f"{scheduler or app.conf.beat_scheduler!r}: {exc!r}", EXIT_UNHEALTHY)
        try:
            doc = history_report(store, settings.lease_name, schedule, app.timezone, entry)
        except StoreUnavailable as exc:
            _fail(f"cannot read the run history in {store.description}: {exc}", EXIT_UNHEALTHY)
    finally:
        store.close()
    if entry is not None and not doc["entries"]:
        _fail(f"no entry {entry!r} in the schedule or in the run history of lease "
              f"{settings.lease_name!r}", EXIT_UNHEALTHY)
    click.echo(json.dumps(doc, indent=2) if as_json else printable(render_history(doc)))


def render_history(doc: dict[str, Any]) -> str:
    """``history`` for people: one row per entry."""
    header = ("entry", "runs", "last run at", "term", "leader", "next due")
    rows = [header]
    for e in doc["entries"]:
        run = e["last_run"]
        if e["state"] == REMOVED:
            due = "not in the schedule"
        elif e["due_in"] is None:
            due = "unknown"
        else:
            at_most = " at most" if e["state"] == NEVER_RUN else ""
            due = (f"{e['next_due_at']} (overdue by {-e['due_in']:.1f} s)" if e["due_in"] < 0
                   else f"{e['next_due_at']} (in {e['due_in']:.1f} s{at_most})")
        rows.append((
            e["name"],
            "0" if run is None else str(run["total_run_count"]),
            "never" if run is None else run["last_run_at"],
            "" if run is None else str(run["term"]),
            "" if run is None else run["leader"] or "unknown",
            due,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [f"run history of lease {doc['lease_name']!r} in {doc['store']}"]
    for row in rows:
        cells = [f"{cell:<{width}}" for cell, width in zip(row, widths)]
        lines.append("  " + "  ".join([*cells, row[-1]]))
    if len(rows) == 1:
        lines.append("  (no entry in the schedule or the run history)")
    return "\n".join(lines)


@leaderbeat.command("step-down", cls=CeleryCommand)
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until another replica has taken the lease.")
@click.option("--timeout", type=float, default=None,
              help="Seconds to wait (default: lease TTL + renew + retry interval).")
@click.option("--force", is_flag=True,
              help="Ask even when no standby is alive: dispatch then stops for one lease TTL.")
@click.pass_context
def step_down(ctx: click.Context, wait: bool, timeout: float | None, force: bool) -> None:
    """Ask the leader to release at its next renewal, so a standby takes over."""
    settings, store = _store_or_exit(ctx)
    try:
        if not isinstance(store, ReplicaRegistry):
            _fail(f"the store {store.description} keeps no replica registry, so it cannot "
                  "carry a step-down request", EXIT_NO_STORE)
        nobody = f"no leader holds the lease {settings.lease_name!r}: nothing to step down"
        try:
            if store.read() is None:
                _fail(nobody, EXIT_UNHEALTHY)
            if not force and not any(r.role != LEADER for r in store.replicas()):
                _fail("no standby is alive to take over, so a step-down would only stop "
                      "dispatch for one lease TTL; not asking (--force asks anyway)",
                      EXIT_UNHEALTHY)
            asked = store.request_step_down()
        except StoreUnavailable as exc:
            _fail(f"cannot reach the store {store.description}: {exc}", EXIT_UNHEALTHY)
        if asked is None:
            _fail(nobody, EXIT_UNHEALTHY)
        _say(f"asked {asked.holder} (term {asked.term}) to step down")
        if not wait:
            return
        t = settings.timing
        limit = timeout if timeout is not None else t.ttl + t.renew_interval + t.retry_interval
        started = time.monotonic()

        def moved() -> LeaseRecord | None:
            lease = store.read()
            return lease if lease is not None and lease.term != asked.term else None

        now_held = moved()
        while now_held is None:
            if time.monotonic() - started >= limit:
                _fail(f"leadership did not move within {limit:.1f} s", EXIT_UNHEALTHY)
            time.sleep(0.05)
            now_held = _read_or_none(moved)
        took = time.monotonic() - started
        assert now_held is not None
        if now_held.holder == asked.holder:
            _fail(f"{asked.holder} took the lease back (term {now_held.term}) after {took:.1f} s:"
                  " no other replica took over", EXIT_UNHEALTHY)
        _say(f"{now_held.holder} leads now (term {now_held.term}), after {took:.1f} s")
    finally:
        store.close()


def _pauses_or_exit(ctx: click.Context) -> tuple[LeaderSettings, LeaseStore, DispatchPauses]:
    settings, store = _store_or_exit(ctx)
    pauses = pauses_of(store)
    if pauses is None:
        store.close()
        _fail(f"the store {store.description} cannot hold a pause of dispatch", EXIT_NO_STORE)
    return settings, store, pauses


def _store_failed(store: LeaseStore, exc: StoreUnavailable) -> NoReturn:
    code = EXIT_MISCONFIGURED if isinstance(exc, StoreMisconfigured) else EXIT_UNHEALTHY
    _fail(f"cannot reach the store {store.description}: {exc}", code)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@leaderbeat.command(cls=CeleryCommand)
@click.option("--for", "duration", callback=_duration, metavar="DURATION",
              help="End the pause by itself after this long (90s, 15m, 2h, 1h30m), judged "
                   "by the store's clock; default: until resume.")
@click.option("--reason", default="", help="Why, for status, health and the logs.")
@click.pass_context
def pause(ctx: click.Context, duration: float | None, reason: str) -> None:
    """Hold every dispatch of the lease, cluster-wide, until resume (or --for).

    Fenced in the store: once this returns, no run is claimed, so none is
    sent, by the leader or by any replica that leads meanwhile. The replicas
    keep running, electing and heartbeating."""
    settings, store, pauses = _pauses_or_exit(ctx)
    record = DispatchPause(operator(), wall_now(), reason, duration)
    try:
        try:
            pauses.pause(record)
        except StoreUnavailable as exc:
            _store_failed(store, exc)
    finally:
        store.close()
    _say(f"paused dispatch of lease {settings.lease_name!r} {record.describe()}")


@leaderbeat.command(cls=CeleryCommand)
@click.option("--catch-up", "catch_up", type=click.Choice(["once", "skip"]), default=None,
              help="Runs that fell due while paused: sent once per entry, or skipped "
                   "(default: the leaderbeat_catch_up setting).")
@click.pass_context
def resume(ctx: click.Context, catch_up: str | None) -> None:
    """End the pause: the leader dispatches again at its next renewal."""
    settings, store, pauses = _pauses_or_exit(ctx)
    try:
        try:
            ended = pauses.resume(DispatchResume(operator(), wall_now(), catch_up))
        except StoreUnavailable as exc:
            _store_failed(store, exc)
    finally:
        store.close()
    if ended is None:
        _say(f"dispatch of lease {settings.lease_name!r} was not paused")
        return
    how = catch_up or f"{settings.catch_up} (leaderbeat_catch_up)"
    _say(f"resumed dispatch of lease {settings.lease_name!r}, paused {ended.describe()}; "
               f"runs that fell due while paused: catch-up {how}")


def _read_or_none(read: Callable[[], LeaseRecord | None]) -> LeaseRecord | None:
    """One poll of the store while waiting: an error there is "not yet"."""
    try:
        lease: LeaseRecord | None = read()
    except StoreUnavailable:
        return None
    return lease
