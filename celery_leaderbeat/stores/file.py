"""Lease store on one host: an fcntl lock on a path, state in a JSON file beside it.

The kernel holds the lock for the leader's process and frees it the moment
that process dies, so takeover after a crash needs no TTL at all: the next
standby attempt wins. The flip side: a *paused* leader (SIGSTOP, frozen VM)
keeps its lock and nobody takes over until it resumes. Only processes on one
host (one kernel) are protected; never put the path on NFS.

``<path>.json`` holds the term counter, the current holder (for status) and
the run history. Only the lock holder writes it, always by atomic rename.
The replica registry lives beside it: ``<path>.replicas/`` holds one
heartbeat file per replica, written by the acquire attempt or renewal that
carries it, and ``<path>.step-down`` the term asked to let go. The leader
looks for that file at every renewal: a renewal is otherwise free here (the
kernel keeps the lock), so one local file read costs nothing that matters.

A pause of dispatch (:mod:`celery_leaderbeat.pause`) is ``<path>.pause``,
written by atomic rename (not in the state file: only the lock holder
writes that, and ``pause`` runs in another process). Every claim reads it
before writing, under the leader's lock, and every renewal reads it; a
pause with a duration ends on this host's clock. ``<path>.resumed`` keeps
the latest resume and the pause it ended; ``resume`` unlinks the pause file
first, so of two resumes only one ends the pause.

Text in these files is UTF-8 written as it is (not JSON escapes) with lone
surrogates kept (:data:`TEXT`): JSON's escapes cannot tell two lone
surrogates from the one character they pair into, so an entry name of
either kind round-trips exactly only this way. Files written with escapes
(by earlier versions) read as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from ..lease import Acquisition, LeaseRecord, Renewal, StoreMisconfigured, StoreUnavailable
from ..pause import DispatchPause, DispatchPaused, DispatchResume, PauseState
from ..registry import ReplicaRecord, StepDownRequest, sort_replicas
from ..settings import improperly_configured

if TYPE_CHECKING:
    from ..settings import LeaderSettings

__all__ = ["FileLeaseStore"]

#: How every file here is read and written (see the module docstring).
TEXT: dict[str, Any] = {"encoding": "utf-8", "errors": "surrogatepass"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class FileLeaseStore:
    """A lease held as an exclusive ``flock`` on ``path``."""

    @classmethod
    def from_url(cls, url: str, settings: LeaderSettings) -> FileLeaseStore:
        """``file:///absolute/path``; raise ImproperlyConfigured for any other form."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        # file://./beat.lock would otherwise become /beat.lock: a host part is a typo.
        if parts.netloc not in ("", "localhost") or not path or not os.path.isabs(path):
            improperly_configured("leaderbeat_elector",
                                  f"{url!r} needs an absolute path, as in file:///var/run/beat.lock")
        return cls(path)

    def __init__(self, path: str) -> None:
        self.path = path
        self.state_path = path + ".json"
        self.replicas_dir = path + ".replicas"
        self.step_down_path = path + ".step-down"
        self.pause_path, self.resumed_path = path + ".pause", path + ".resumed"
        self.description = f"file://{path}"
        self._fd: int | None = None
        self._owner: str | None = None
        self._term: int | None = None
        self._watch: FileLockWatch | None = None

    # -- state file --------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self.state_path, **TEXT) as fh:
                state: dict[str, Any] = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise _os_error(f"cannot read {self.state_path}", exc) from exc
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        _replace(self.state_path, state)

    def _ours(self, owner: str, term: int) -> bool:
        return self._fd is not None and self._owner == owner and self._term == term

    # -- the lease ---------------------------------------------------------------

    def acquire(self, owner: str, identity: str, ttl: float, *,
                beat: ReplicaRecord | None = None, take: bool = True) -> Acquisition:
        if self._fd is not None and self._owner == owner and self._term is not None:
            outcome = Acquisition(True, LeaseRecord(holder=identity, term=self._term))
        elif take:
            outcome = self._lock(owner, identity)
        else:
            outcome = self._look()
        self._beat(beat, outcome.lease.term if outcome.acquired else None)
        return outcome

    def _look(self) -> Acquisition:
        """Who holds the lock, without trying to take it (``acquire(take=False)``)."""
        lease = self.read()
        if lease is None:
            return Acquisition(False, LeaseRecord(None, int(self._read_state().get("term", 0))))
        return Acquisition(False, lease)

    def _lock(self, owner: str, identity: str) -> Acquisition:
        """Try the flock; on success start a new term in the state file."""
        granted = self._watch.take_grant() if self._watch is not None else None
        try:
            fd = granted if granted is not None else _open_lock_file(self.path)
        except OSError as exc:
            raise _os_error(f"cannot open {self.path}", exc) from exc
        try:
            if granted is None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            lease = self._read_state().get("lease") or {}
            return Acquisition(False, LeaseRecord(lease.get("identity"), lease.get("term", 0)))
        except OSError as exc:
            os.close(fd)
            raise _os_error(f"cannot lock {self.path}", exc) from exc
        try:
            state = self._read_state()
            term = int(state.get("term", 0)) + 1
            if state.get("last_identity") != identity:
                state["transitions"] = int(state.get("transitions", 0)) + 1
            now = _now()
            state.update(
                term=term,
                last_identity=identity,
                lease={"identity": identity, "term": term, "acquired_at": now, "renewed_at": now},
            )
            self._write_state(state)
        except StoreUnavailable:
            os.close(fd)  # closing drops the lock
            raise
        self._fd, self._owner, self._term = fd, owner, term
        return Acquisition(True, LeaseRecord(holder=identity, term=term))

    def renew(self, owner: str, term: int, ttl: float, *,
              beat: ReplicaRecord | None = None) -> Renewal:
        # The kernel keeps the lock for as long as we live: nothing to extend.
        if not self._ours(owner, term):
            outcome = Renewal.LOST
        elif self._step_down_requested(term):
            self.release(owner, term)
            outcome = Renewal.STEPPED_DOWN
        else:
            outcome = Renewal.PAUSED if self._pause_in_effect() else Renewal.RENEWED
        self._beat(beat, term if outcome in (Renewal.RENEWED, Renewal.PAUSED) else None)
        return outcome

    def _step_down_requested(self, term: int) -> bool:
        """True if a step-down was requested for ``term``; clears the request."""
        try:
            with open(self.step_down_path, **TEXT) as fh:
                if fh.read().strip() != str(term):
                    return False
            os.unlink(self.step_down_path)  # only one unlink succeeds: seen once
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(f"cannot read {self.step_down_path}", exc) from exc
        return True

    def release(self, owner: str, term: int) -> bool:
        if not self._ours(owner, term):
            return False
        state = self._read_state()
        state["lease"] = None
        try:
            self._write_state(state)
        finally:
            self._unlock()
        return True

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._owner = self._term = None

    def read(self) -> LeaseRecord | None:
        if not self._held_by_anyone():
            return None
        state = self._read_state()
        lease = state.get("lease")
        if not lease:
            return None
        return LeaseRecord(
            holder=lease.get("identity"),
            term=int(lease.get("term", 0)),
            acquired_at=_parse(lease.get("acquired_at")),
            renewed_at=_parse(lease.get("renewed_at")),
            expires_in=None,
            transitions=int(state.get("transitions", 0)),
        )

    def _held_by_anyone(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(f"cannot open {self.path}", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- run history -------------------------------------------------------------

    def claim(self, owner: str, term: int, runs: Mapping[str, str]) -> bool:
        if not self._ours(owner, term):
            return False
        paused = self._pause_in_effect()
        if paused is not None:
            raise DispatchPaused(paused)
        state = self._read_state()
        state.setdefault("history", {}).update(runs)
        self._write_state(state)
        return True

    def forget(self, owner: str, term: int, names: Iterable[str]) -> bool:
        if not self._ours(owner, term):
            return False
        state = self._read_state()
        history = state.setdefault("history", {})
        for name in names:
            history.pop(name, None)
        self._write_state(state)
        return True

    def load_history(self) -> dict[str, str]:
        history: dict[str, str] = self._read_state().get("history", {})
        return history

    # -- replica registry (celery_leaderbeat.registry.ReplicaRegistry) ----------

    def _replica_path(self, identity: str) -> str:
        name = quote(identity, safe="", errors="surrogatepass")
        return os.path.join(self.replicas_dir, name + ".json")

    def _beat(self, beat: ReplicaRecord | None, term: int | None) -> None:
        """Write ``beat`` as the leader's of ``term``, or as a standby's when None.

        Best effort, as heartbeats always were: the lease outcome is already
        decided (a lock just taken must not be stranded by a failed write), so
        a record that cannot be written just ages and the next one tries again.
        """
        if beat is None:
            return
        if beat.expires_in is None:
            raise ValueError("a heartbeat record to write needs expires_in")
        with contextlib.suppress(StoreUnavailable):
            self._write_beat(beat.as_left(term), beat.expires_in)

    def _write_beat(self, record: ReplicaRecord, ttl: float) -> None:
        now = time.time()
        try:
            os.makedirs(self.replicas_dir, exist_ok=True)
        except OSError as exc:
            raise _os_error(f"cannot create {self.replicas_dir}", exc) from exc
        self._live_replicas(now)  # drops the files of replicas gone silent
        beat = {"record": record.encode(), "beat_at": now, "expires_at": now + ttl}
        _replace(self._replica_path(record.identity), beat)

    def _live_replicas(self, now: float) -> list[ReplicaRecord]:
        try:
            names = os.listdir(self.replicas_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(f"cannot list {self.replicas_dir}", exc) from exc
        live = []
        for name in names:
            path = os.path.join(self.replicas_dir, name)
            if not name.endswith(".json"):
                continue
            try:
                with open(path, **TEXT) as fh:
                    beat = json.load(fh)
                record = ReplicaRecord.decode(beat["record"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                beat = {"expires_at": 0}  # unreadable: treat as gone
            if beat["expires_at"] <= now:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            live.append(record.seen(now - beat["beat_at"], beat["expires_at"] - now))
        return live

    def replicas(self) -> list[ReplicaRecord]:
        return sort_replicas(self._live_replicas(time.time()))

    def withdraw(self, identity: str) -> None:
        with contextlib.suppress(OSError):  # else the record expires on its own
            os.unlink(self._replica_path(identity))

    def request_step_down(self) -> StepDownRequest | None:
        lease = self.read()
        if lease is None:
            return None
        _replace(self.step_down_path, lease.term)
        return StepDownRequest(lease.holder, lease.term)

    def release_watch(self) -> FileLockWatch:
        """A waiter blocked on the lock itself: the kernel wakes it on release or death."""
        if self._watch is None:
            self._watch = FileLockWatch(self.path)
        return self._watch

    # -- pausing dispatch (celery_leaderbeat.pause.DispatchPauses) -------------

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path, **TEXT) as fh:
                data: dict[str, Any] = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _os_error(f"cannot read {path}", exc) from exc
        return data

    def _pause_in_effect(self) -> DispatchPause | None:
        found = self._read_json(self.pause_path)
        if found is None:
            return None
        expires_at = found.get("expires_at")
        expires_in = None if expires_at is None else float(expires_at) - time.time()
        if expires_in is not None and expires_in <= 0:
            return None
        return DispatchPause.decode(found.get("pause") or "", expires_in)

    def pause(self, pause: DispatchPause) -> None:
        expires_at = None if pause.duration is None else time.time() + pause.duration
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _replace(self.pause_path, {"pause": pause.encode(), "expires_at": expires_at})

    def resume(self, resume: DispatchResume) -> DispatchPause | None:
        ended = self._pause_in_effect()
        if ended is None:
            return None
        try:
            os.unlink(self.pause_path)  # only one unlink succeeds
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(f"cannot remove {self.pause_path}", exc) from exc
        _replace(self.resumed_path, {"resume": resume.encode(), "ended": ended.encode()})
        return ended

    def read_pause(self) -> PauseState:
        resumed = self._read_json(self.resumed_path)
        last = None if resumed is None else DispatchResume.decode(
            resumed.get("resume") or "", resumed.get("ended"))
        return PauseState(self._pause_in_effect(), last)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._unlock()

    def __repr__(self) -> str:
        return f"FileLeaseStore({self.path!r})"


#: What a path refuses for good: permissions, a read-only mount, a file where a
#: directory should be. The setting to fix is the path in leaderbeat_elector.
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                              errno.EISDIR})


def _os_error(what: str, error: Exception) -> StoreUnavailable:
    """StoreMisconfigured when ``error`` cannot heal by waiting, else StoreUnavailable."""
    if isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS:
        return StoreMisconfigured(f"{what}: {error}")
    return StoreUnavailable(f"{what}: {error}")


def _open_lock_file(path: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


class FileLockWatch:
    """A standby's wait on the lock itself (see :class:`~celery_leaderbeat.watch.ReleaseWatch`).

    A thread blocks in ``flock(LOCK_EX)`` on a descriptor of its own. The
    kernel grants it the moment the leader's process lets go, whether it
    released or died, so a crash needs no TTL either. The thread hands the
    granted lock to the store's next acquire (no other replica can slip in
    between, and no retry is needed), but only while a wait is in progress:
    a lock granted at any other time (this replica holding off after letting
    go, or closing) is let go at once. A thread blocked in ``flock`` cannot
    be interrupted; on close it is left to end, letting go, at the next release.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._granted = threading.Event()
        self._fd: int | None = None
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        self._waiting = False
        self._closed = False

    def wait(self, timeout: float) -> bool:
        with self._mutex:
            if self._closed:
                return False
            if self._error is not None:
                error, self._error = self._error, None
                raise StoreUnavailable(f"cannot wait on {self.path}: {error}")
            if self._fd is None and (self._thread is None or not self._thread.is_alive()):
                self._granted.clear()
                self._thread = threading.Thread(target=self._block, daemon=True,
                                                 name="leaderbeat-file-lock-watch")
                self._thread.start()
            self._waiting = True
        try:
            return self._granted.wait(timeout)
        finally:
            with self._mutex:
                self._waiting = False

    def _block(self) -> None:
        try:
            fd = _open_lock_file(self.path)
        except OSError as exc:
            with self._mutex:
                self._error = exc
            self._granted.set()
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            with self._mutex:
                self._error = exc
            self._granted.set()
            return
        with self._mutex:
            if self._closed or not self._waiting:
                os.close(fd)  # nobody to hand it to: let go at once
                return
            self._fd = fd
        self._granted.set()

    def take_grant(self) -> int | None:
        """The descriptor holding the lock, if the thread was granted it; now the caller's."""
        with self._mutex:
            fd, self._fd = self._fd, None
            return fd

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _replace(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` by atomic rename: readers see old or new, never half."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".leaderbeat-")
        os.fchmod(fd, 0o644)  # not mkstemp's 0600: status may run as another user
        with os.fdopen(fd, "w", **TEXT) as fh:
            json.dump(data, fh, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as exc:
        raise _os_error(f"cannot write {path}", exc) from exc


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
