"""A lease and its run history as rows of two SQL tables: the statements every SQL store runs.

The SQLAlchemy store (:mod:`.sql`) and the Django store differ only in how
they connect; what they say to the database lives here, once.

- The lease table has one row per lease. The row is created once and
  never deleted, so every change of the lease is an UPDATE of that row and
  racing replicas never race on an INSERT.
- The run table holds one row per (lease, schedule entry): the encoded
  run record.
- The replica table holds one heartbeat row per (lease, replica), and
  the lease row's ``step_down_term`` a pending step-down request: the
  optional replica registry (:mod:`celery_leaderbeat.registry`). Heartbeat
  rows ride on acquire and renew: written on the same connection right
  after the lease statement, with the role and term that statement left,
  and a renewal is where the leader finds a step-down request.

Names: a lease name, an entry name and a replica identity are keyed by
:func:`name_key`, the SHA-256 of the exact name (64 hex digits), and kept
whole in a TEXT column that is only ever read back, never compared. So any
name Celery accepts round-trips exactly: any length, any Unicode, and names
that differ only in case, accents or trailing spaces stay distinct rows.
Comparing the names themselves would not hold: MySQL/MariaDB's default
collations fold case and accents and ignore trailing spaces (PAD SPACE),
their binary collations are PAD SPACE too or have other names per server,
and a key column has a length limit (VARCHAR(255), an index's 3072 bytes).
Digits of a hex digest compare the same under every collation of
PostgreSQL, MySQL/MariaDB and SQLite, and Django's CharField holds them on
every backend. The one string compared as text is ``owner``, a token that
ends with 32 random hex digits, so no collation can make two owners equal.
The one name no TEXT column takes is one containing NUL on PostgreSQL: its
claim is refused as :class:`ClaimRejected`, which costs that entry its runs
and nothing else. :func:`name_key` must never change: stored keys are its
results.

Clock: every time is epoch seconds read from the database's own clock
(``{now}`` below) in the same statement that compares or stores it, so the
replicas' clocks never judge expiry.

Atomicity:

- Every change of the lease (acquire, renew, release, a step-down) is one
  UPDATE whose WHERE clause is the whole condition. The row lock serializes
  racing replicas, and the loser's condition is judged against the
  winner's committed row (PostgreSQL re-checks the updated row, InnoDB
  updates read the latest committed version, SQLite admits one writer at a
  time). So two replicas can never both hold the lease. An acquire with
  ``take=False`` only reads.
- A step-down request names one term. Renew refuses to extend the lease of
  that term; only when it refused does a second UPDATE release the lease
  and clear the request together, on the same condition (ours, not expired,
  the request naming our term). So the request is seen once, never by a
  later term, and a renewal nobody asked to step down stays one statement.
- A heartbeat statement that fails fails the whole call, as a lost reply
  would: the caller then does not know the lease's outcome, which its local
  deadline and fenced claims already allow for.
- claim and forget are one short transaction that starts with a fencing
  UPDATE of the lease row (owner, term, not expired). It takes the row's
  write lock (on SQLite the database's) before anything else is read, so no
  takeover can commit between the check and the writes, and SQLite's
  deferred BEGIN never has to upgrade a read lock (which could deadlock).
- A pause of dispatch (:mod:`celery_leaderbeat.pause`) is four nullable
  columns of the lease row: ``pause`` (the record), ``pause_expires_at``
  (the database's clock; NULL until resumed), ``resume`` and
  ``resumed_pause`` (the latest resume and the pause it ended). A claim's
  fencing UPDATE also requires no pause in effect, so the pause is judged
  under the same row lock as owner and term; when it matches no row, one
  SELECT tells a pause (DispatchPaused) from a lost lease. A renewal that
  extended the lease reads the pause in one more statement. Resume is one
  UPDATE that moves ``pause`` to ``resumed_pause`` (MySQL assigns left to
  right, so the move comes first). Tables made before these columns get
  them in place (:meth:`.sql.SqlLeaseStore.create_tables`, Django's
  migration 0004).
- Nothing else holds a lock across a round trip, so a paused standby blocks
  nobody.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from ..lease import (
    Acquisition,
    ClaimRejected,
    LeaseRecord,
    Renewal,
    StoreMisconfigured,
)
from ..pause import DispatchPause, DispatchPaused, DispatchResume, PauseState
from ..registry import ReplicaRecord, StepDownRequest, sort_replicas

__all__ = ["DIALECTS", "LeaseTableMissing", "LeaseTables", "SqlSession", "name_key",
           "refuses_replica",
           "refuses_value"]

#: The database's clock, in epoch seconds, per dialect.
DATABASE_NOW = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)",
    # UTC_TIMESTAMP is free of the session time zone; the difference is plain arithmetic.
    "mysql": "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) * 0.000001)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}

DIALECTS = tuple(DATABASE_NOW)

#: Insert the lease row unless it exists already, per dialect.
_CREATE_ROW = ("INTO {lease} (lease_key, lease_name, term, transitions) "
               "VALUES (:lease, :lease_name, 0, 0)")
CREATE_ROW = {
    "postgresql": "INSERT " + _CREATE_ROW + " ON CONFLICT (lease_key) DO NOTHING",
    "mysql": "INSERT IGNORE " + _CREATE_ROW,
    "sqlite": "INSERT OR IGNORE " + _CREATE_ROW,
}

# Take the lease if it is free, expired or still ours. Every new acquisition
# gets the next term (also ours after it expired); a lease still ours keeps
# its term and is extended. MySQL assigns left to right and later expressions
# see earlier assignments, so every CASE reading the old row comes before
# ``owner`` and ``expires_at`` are assigned.
STILL_OURS = "owner = :owner AND expires_at > {now}"
ACQUIRE = f"""
UPDATE {{lease}} SET
  term = CASE WHEN {STILL_OURS} THEN term ELSE term + 1 END,
  transitions = CASE WHEN ({STILL_OURS}) OR last_holder_key = :holder_key
                THEN transitions ELSE transitions + 1 END,
  acquired_at = CASE WHEN {STILL_OURS} THEN acquired_at ELSE {{now}} END,
  owner = :owner, holder = :holder, last_holder_key = :holder_key,
  renewed_at = {{now}}, expires_at = {{now}} + :ttl
WHERE lease_key = :lease AND (owner = :owner OR owner IS NULL OR expires_at <= {{now}})
"""

HOLDER = "SELECT owner, holder, term, expires_at - {now} FROM {lease} WHERE lease_key = :lease"

# Who holds the lease now, taking nothing: NULL when it is free or expired.
LIVE_HOLDER = """
SELECT CASE WHEN owner IS NOT NULL AND expires_at > {now} THEN holder END, term,
  expires_at - {now}
FROM {lease} WHERE lease_key = :lease
"""

# Our lease, not yet expired: the condition every fenced statement repeats.
OURS = "lease_key = :lease AND term = :term AND " + STILL_OURS

# Not when a step-down was requested for our term: ANSWER_STEP_DOWN then does.
RENEW = ("UPDATE {lease} SET renewed_at = {now}, expires_at = {now} + :ttl WHERE " + OURS
         + " AND (step_down_term IS NULL OR step_down_term <> :term)")

# Release and clear the request in one UPDATE, so a request is seen once.
ANSWER_STEP_DOWN = ("UPDATE {lease} SET owner = NULL, holder = NULL, expires_at = NULL, "
                    "step_down_term = NULL WHERE " + OURS + " AND step_down_term = :term")

# Term, transitions and last holder stay: terms keep increasing after a release.
RELEASE = """
UPDATE {lease} SET owner = NULL, holder = NULL, expires_at = NULL
WHERE lease_key = :lease AND owner = :owner AND term = :term
"""

# PostgreSQL: tell listening standbys the lease was let go (celery_leaderbeat.watch).
# Inside a transaction, delivered at its commit, and only if it commits.
NOTIFY_RELEASE = "SELECT pg_notify(:channel, :name)"

# A write that changes nothing, to lock our row for the rest of the transaction.
FENCE = "UPDATE {lease} SET term = term WHERE " + OURS

# -- pausing dispatch (celery_leaderbeat.pause) ---------------------------------------

#: A pause in effect: set and, when it has a duration, not run out on the database's clock.
PAUSE_IN_EFFECT = "(pause IS NOT NULL AND (pause_expires_at IS NULL OR pause_expires_at > {now}))"

# The claims' fence: ours, and no pause in effect.
FENCE_UNPAUSED = FENCE + " AND NOT " + PAUSE_IN_EFFECT

# After FENCE_UNPAUSED matched nothing: the pause, if that is why (else the lease is lost).
PAUSED_FOR_US = "SELECT pause FROM {lease} WHERE " + OURS + " AND " + PAUSE_IN_EFFECT

# After a renewal: is dispatch paused?
PAUSED = "SELECT 1 FROM {lease} WHERE lease_key = :lease AND " + PAUSE_IN_EFFECT

PAUSE = "UPDATE {lease} SET pause = :pause, pause_expires_at = NULL WHERE lease_key = :lease"
PAUSE_FOR = ("UPDATE {lease} SET pause = :pause, pause_expires_at = {now} + :duration "
             "WHERE lease_key = :lease")

RESUME = ("UPDATE {lease} SET resumed_pause = pause, resume = :resume, pause = NULL, "
          "pause_expires_at = NULL WHERE lease_key = :lease AND " + PAUSE_IN_EFFECT)

PAUSE_STATE = ("SELECT CASE WHEN " + PAUSE_IN_EFFECT + " THEN pause END, "
               "pause_expires_at - {now}, resume, resumed_pause FROM {lease} "
               "WHERE lease_key = :lease")

READ = """
SELECT holder, term, acquired_at, renewed_at, expires_at - {now}, transitions
FROM {lease} WHERE lease_key = :lease AND owner IS NOT NULL AND expires_at > {now}
"""

HISTORY = "SELECT entry_name, record FROM {runs} WHERE lease_key = :lease"

# -- the replica registry (celery_leaderbeat.registry.ReplicaRegistry) ----------------
# Every statement stands alone (autocommit): a heartbeat never holds a lock
# another replica could wait on.

#: Write one replica's heartbeat record, replacing its previous one, per dialect.
_HEARTBEAT_ROW = ("INSERT INTO {replicas} "
                  "(lease_key, replica_key, replica, record, beat_at, expires_at) "
                  "VALUES (:lease, :replica_key, :replica, :record, {now}, {now} + :ttl) ")
HEARTBEAT = {
    "postgresql": _HEARTBEAT_ROW + "ON CONFLICT (lease_key, replica_key) DO UPDATE SET "
    "record = EXCLUDED.record, beat_at = EXCLUDED.beat_at, expires_at = EXCLUDED.expires_at",
    "mysql": _HEARTBEAT_ROW + "ON DUPLICATE KEY UPDATE "
    "record = VALUES(record), beat_at = VALUES(beat_at), expires_at = VALUES(expires_at)",
    "sqlite": _HEARTBEAT_ROW + "ON CONFLICT (lease_key, replica_key) DO UPDATE SET "
    "record = excluded.record, beat_at = excluded.beat_at, expires_at = excluded.expires_at",
}

DROP_EXPIRED = "DELETE FROM {replicas} WHERE lease_key = :lease AND expires_at <= {now}"

WITHDRAW = "DELETE FROM {replicas} WHERE lease_key = :lease AND replica_key = :replica_key"

LIVE = """
SELECT record, {now} - beat_at, expires_at - {now} FROM {replicas}
WHERE lease_key = :lease AND expires_at > {now}
"""

# A request names the term of the lease held now; a later term never matches it.
ASK_STEP_DOWN = """
UPDATE {lease} SET step_down_term = term
WHERE lease_key = :lease AND owner IS NOT NULL AND expires_at > {now}
"""

ASKED = "SELECT holder, step_down_term FROM {lease} WHERE lease_key = :lease"

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def name_key(name: str) -> str:
    """The key of a lease, entry or replica name: SHA-256 of its UTF-8, 64 hex digits.

    Lone surrogates (which no UTF-8 text column can take) still get a key of
    their own; such a name is refused where it is stored whole.
    """
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


#: MySQL/MariaDB errors that refuse a value, although PyMySQL and mysqlclient raise
#: them as OperationalError: a CHECK constraint failed (MySQL 3819, MariaDB 4025).
CHECK_FAILED = frozenset({3819, 4025})


def refuses_value(driver_error: BaseException | None) -> bool:
    """Whether a DB-API error refuses a value (the data), not the database or the lease.

    DataError and IntegrityError (a value too long or not storable, a
    constraint), by DB-API class name so every driver and wrapper agrees,
    and MySQL's failed CHECK constraints.
    """
    if driver_error is None:
        return False
    names = {cls.__name__ for cls in type(driver_error).__mro__}
    if names & {"DataError", "IntegrityError"}:
        return True
    args: tuple[Any, ...] = tuple(getattr(driver_error, "args", ()))
    return bool(args) and args[0] in CHECK_FAILED


#: PostgreSQL SQLSTATEs that waiting will not heal: refused credentials
#: (28000, 28P01), an unknown database (3D000) or schema (3F000), a missing
#: privilege (42501).
PERMANENT_SQLSTATES = frozenset({"28000", "28P01", "3D000", "3F000", "42501"})
#: MySQL/MariaDB error numbers of the same kinds: access denied to the database
#: (1044) or the user (1045, 1698), unknown database (1049), a command or
#: column denied (1142, 1143), a privilege needed (1227).
PERMANENT_MYSQL_ERRORS = frozenset({1044, 1045, 1049, 1142, 1143, 1227, 1698})
#: What drivers say when a connection is refused for good before any SQLSTATE
#: exists (psycopg reports a failed login as text), and SQLite's read-only or
#: unopenable file.
PERMANENT_WORDS = re.compile(
    r'password authentication failed|no pg_hba\.conf entry|(database|role) ".*" does not exist'
    r"|readonly database|unable to open database file")


def refuses_replica(driver_error: BaseException | None) -> bool:
    """Whether a DB-API error refuses this replica for good (credentials,
    database, privileges), so that waiting will not heal it.

    By the driver's SQLSTATE (psycopg's ``sqlstate``), MySQL error number or,
    for refusals that come before a session exists, the driver's words.
    Refused or lost connections, timeouts, deadlocks and lock waits are not
    permanent.
    """
    if driver_error is None:
        return False
    if getattr(driver_error, "sqlstate", None) in PERMANENT_SQLSTATES:
        return True
    args: tuple[Any, ...] = tuple(getattr(driver_error, "args", ()))
    if args and args[0] in PERMANENT_MYSQL_ERRORS:
        return True
    return PERMANENT_WORDS.search(str(driver_error).lower()) is not None


class LeaseTableMissing(StoreMisconfigured):
    """The lease tables do not exist; the message says what to run.

    Permanent: the tables of the Django store come from its migrations, which
    beat does not run.
    """


class SqlSession(Protocol):
    """One connection, as a store lends it to the statements here."""

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement; return the number of rows it matched."""
        ...  # pragma: no cover

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one SELECT; return its rows."""
        ...  # pragma: no cover


@functools.lru_cache(maxsize=64)
def _positional(sql: str, style: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` placeholders -> the driver's positional style, and the names in order."""
    names: list[str] = []

    def mark(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return "?" if style == "qmark" else "%s"

    return _PARAM.sub(mark, sql), tuple(names)


class LeaseTables:
    """Lease store operations as SQL; subclasses supply the connection.

    A subclass sets ``dialect`` (one of :data:`DIALECTS`), ``paramstyle``
    (``format`` or ``qmark``) and implements :meth:`_session`, translating
    driver errors into :class:`StoreUnavailable`: into :class:`ClaimRejected`
    when the database refused the data (a value too long or not encodable,
    a constraint), which :meth:`claim` and :meth:`forget` then name.
    """

    dialect: str
    paramstyle = "format"
    description: str

    def __init__(self, name: str, lease_table: str, run_table: str, replica_table: str,
                 quote: Any) -> None:
        self.name = name
        self.key = name_key(name)
        self.lease_table = lease_table
        self.run_table = run_table
        self.replica_table = replica_table
        self._names = {"lease": quote(lease_table), "runs": quote(run_table),
                       "replicas": quote(replica_table)}

    def _session(self, atomic: bool) -> contextlib.AbstractContextManager[SqlSession]:
        """A connection in autocommit mode, or inside one transaction when ``atomic``."""
        raise NotImplementedError

    # -- statement plumbing ------------------------------------------------------

    def _sql(self, template: str) -> str:
        return template.format(now=DATABASE_NOW[self.dialect], **self._names)

    def _bind(self, template: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        sql, names = _positional(self._sql(template), self.paramstyle)
        return sql, [params[name] for name in names]

    def _execute(self, session: SqlSession, template: str, **params: Any) -> int:
        return session.execute(*self._bind(template, params))

    def _query(self, session: SqlSession, template: str, **params: Any) -> list[tuple[Any, ...]]:
        return session.query(*self._bind(template, params))

    # -- the lease ---------------------------------------------------------------

    def acquire(self, owner: str, identity: str, ttl: float, *,
                beat: ReplicaRecord | None = None, take: bool = True) -> Acquisition:
        with self._session(atomic=False) as session:
            if take:
                outcome = self._take(session, owner, identity, ttl)
            else:
                rows = self._query(session, LIVE_HOLDER, lease=self.key)
                holder, term, expires_in = rows[0] if rows else (None, 0, None)
                outcome = Acquisition(False, LeaseRecord(holder=holder, term=int(term),
                                                         expires_in=_seconds(expires_in)))
            self._beat(session, beat, outcome.lease.term if outcome.acquired else None)
        return outcome

    def _take(self, session: SqlSession, owner: str, identity: str, ttl: float) -> Acquisition:
        params = {"lease": self.key, "owner": owner, "holder": identity,
                  "holder_key": name_key(identity), "ttl": float(ttl)}
        taken = self._execute(session, ACQUIRE, **params)
        rows = self._query(session, HOLDER, lease=self.key)
        if not rows:  # first use of this lease name
            self._execute(session, CREATE_ROW[self.dialect], lease=self.key,
                          lease_name=self.name)
            taken = self._execute(session, ACQUIRE, **params)
            rows = self._query(session, HOLDER, lease=self.key)
        holder_owner, holder, term, expires_in = rows[0]
        # The row read after the UPDATE names its owner; only ours counts as taken.
        acquired = bool(taken) and holder_owner == owner
        return Acquisition(acquired, LeaseRecord(holder=holder, term=int(term),
                                                 expires_in=_seconds(expires_in)))

    def renew(self, owner: str, term: int, ttl: float, *,
              beat: ReplicaRecord | None = None) -> Renewal:
        params = {"lease": self.key, "owner": owner, "term": term}
        with self._session(atomic=False) as session:
            if self._execute(session, RENEW, ttl=float(ttl), **params) == 1:
                paused = self._query(session, PAUSED, lease=self.key)
                outcome = Renewal.PAUSED if paused else Renewal.RENEWED
            elif self._execute(session, ANSWER_STEP_DOWN, **params) == 1:
                outcome = Renewal.STEPPED_DOWN
                self._announce_release(session)
            else:
                outcome = Renewal.LOST
            self._beat(session, beat,
                       term if outcome in (Renewal.RENEWED, Renewal.PAUSED) else None)
        return outcome

    def release(self, owner: str, term: int) -> bool:
        with self._session(atomic=self.dialect == "postgresql") as session:
            released = self._execute(session, RELEASE, lease=self.key, owner=owner,
                                     term=term) == 1
            if released:
                self._announce_release(session)
            return released

    @property
    def release_channel(self) -> str:
        """The PostgreSQL channel of this lease's releases (at most 63 bytes, as LISTEN needs)."""
        digest = hashlib.sha256(f"{self.lease_table}\0{self.name}".encode()).hexdigest()
        return f"leaderbeat_{digest[:40]}"

    def _announce_release(self, session: SqlSession) -> None:
        if self.dialect == "postgresql":
            self._query(session, NOTIFY_RELEASE, channel=self.release_channel, name=self.name)

    def read(self) -> LeaseRecord | None:
        with self._session(atomic=False) as session:
            rows = self._query(session, READ, lease=self.key)
        if not rows:
            return None
        holder, term, acquired_at, renewed_at, expires_in, transitions = rows[0]
        return LeaseRecord(
            holder=holder,
            term=int(term),
            acquired_at=_stamp(acquired_at),
            renewed_at=_stamp(renewed_at),
            expires_in=max(0.0, float(expires_in)),
            transitions=int(transitions),
        )

    # -- run history -------------------------------------------------------------

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        return self._fenced(owner, term, list(runs), runs, unless_paused=True)

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        return self._fenced(owner, term, list(names), {})

    def _fenced(self, owner: str, term: int, drop: list[str], write: Mapping[str, str],
                unless_paused: bool = False) -> bool:
        """In one transaction: lock our lease row, drop ``drop``, then insert ``write``.

        With ``unless_paused``, raise DispatchPaused (writing nothing) while a
        pause is in effect."""
        fence = FENCE_UNPAUSED if unless_paused else FENCE
        try:
            with self._session(atomic=True) as session:
                if self._execute(session, fence, lease=self.key, owner=owner, term=term) != 1:
                    paused = unless_paused and self._query(
                        session, PAUSED_FOR_US, lease=self.key, owner=owner, term=term)
                    if paused:
                        raise DispatchPaused(DispatchPause.decode(paused[0][0]))
                    return False
                if drop:
                    marks = ", ".join(f":e{i}" for i in range(len(drop)))
                    self._execute(
                        session,
                        "DELETE FROM {runs} WHERE lease_key = :lease AND entry_key IN "
                        f"({marks})",
                        lease=self.key,
                        **{f"e{i}": name_key(entry) for i, entry in enumerate(drop)})
                if write:
                    rows = ", ".join(f"(:lease, :k{i}, :e{i}, :r{i})" for i in range(len(write)))
                    params: dict[str, Any] = {"lease": self.key}
                    for i, (entry, record) in enumerate(write.items()):
                        params[f"k{i}"], params[f"e{i}"], params[f"r{i}"] = (
                            name_key(entry), entry, record)
                    self._execute(
                        session,
                        f"INSERT INTO {{runs}} (lease_key, entry_key, entry_name, record) "
                        f"VALUES {rows}",
                        **params)
        except ClaimRejected as rejected:  # the whole transaction was rolled back
            raise rejected.naming(drop) from rejected
        return True

    def load_history(self) -> dict[str, str]:
        with self._session(atomic=False) as session:
            rows = self._query(session, HISTORY, lease=self.key)
        return {str(entry): str(record) for entry, record in rows}

    # -- the replica registry ----------------------------------------------------

    def _beat(self, session: SqlSession, beat: ReplicaRecord | None, term: int | None) -> None:
        """Write ``beat`` as the lease call left us: leader of ``term``, or a standby (None)."""
        if beat is None:
            return
        record = beat.as_left(term)
        self._execute(session, DROP_EXPIRED, lease=self.key)
        self._execute(session, HEARTBEAT[self.dialect], lease=self.key,
                      replica_key=name_key(record.identity), replica=record.identity,
                      record=json.dumps(record.encode()),
                      ttl=float(record.expires_in or 0.0))

    def replicas(self) -> list[ReplicaRecord]:
        with self._session(atomic=False) as session:
            rows = self._query(session, LIVE, lease=self.key)
        return sort_replicas([
            ReplicaRecord.decode(json.loads(record)).seen(float(age), float(expires_in))
            for record, age, expires_in in rows])

    def withdraw(self, identity: str) -> None:
        with self._session(atomic=False) as session:
            self._execute(session, WITHDRAW, lease=self.key, replica_key=name_key(identity))

    def request_step_down(self) -> StepDownRequest | None:
        with self._session(atomic=False) as session:
            if not self._execute(session, ASK_STEP_DOWN, lease=self.key):
                return None
            holder, term = self._query(session, ASKED, lease=self.key)[0]
        return StepDownRequest(holder, int(term))

    # -- pausing dispatch (celery_leaderbeat.pause.DispatchPauses) ---------------

    def pause(self, pause: DispatchPause) -> None:
        with self._session(atomic=True) as session:
            self._execute(session, CREATE_ROW[self.dialect], lease=self.key,
                          lease_name=self.name)  # a lease nobody has held yet
            if pause.duration is None:
                self._execute(session, PAUSE, lease=self.key, pause=pause.encode())
            else:
                self._execute(session, PAUSE_FOR, lease=self.key, pause=pause.encode(),
                              duration=float(pause.duration))

    def resume(self, resume: DispatchResume) -> DispatchPause | None:
        with self._session(atomic=True) as session:
            if not self._execute(session, RESUME, lease=self.key, resume=resume.encode()):
                return None
            rows = self._query(session, "SELECT resumed_pause FROM {lease} "
                                        "WHERE lease_key = :lease", lease=self.key)
        return DispatchPause.decode(rows[0][0])

    def read_pause(self) -> PauseState:
        with self._session(atomic=False) as session:
            rows = self._query(session, PAUSE_STATE, lease=self.key)
        if not rows:
            return PauseState(None)
        pause, expires_in, resume, ended = rows[0]
        return PauseState(
            None if pause is None else DispatchPause.decode(
                pause, None if expires_in is None else max(0.0, float(expires_in))),
            None if resume is None else DispatchResume.decode(resume, ended))


def _seconds(value: Any) -> float | None:
    return None if value is None else max(0.0, float(value))


def _stamp(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), tz=timezone.utc)

