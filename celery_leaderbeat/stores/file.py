"""Lease store on one host: an fcntl lock on a path, state in a JSON file beside it.

The kernel holds the lock for the leader's process and frees it the moment
that process dies, so takeover after a crash needs no TTL at all: the next
standby attempt wins. The flip side: a *paused* leader (SIGSTOP, frozen VM)
keeps its lock and nobody takes over until it resumes. Only processes on one
host (one kernel) are protected; never put the path on NFS.

``<path>.json`` holds the term counter, the current holder (for status) and
the run history. Only the lock holder writes it, always by atomic rename.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..lease import Acquisition, LeaseRecord, StoreUnavailable

__all__ = ["FileLeaseStore"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class FileLeaseStore:
    """A lease held as an exclusive ``flock`` on ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state_path = path + ".json"
        self.description = f"file://{path}"
        self._fd: int | None = None
        self._owner: str | None = None
        self._term: int | None = None

    # -- state file --------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self.state_path, encoding="utf-8") as fh:
                state: dict[str, Any] = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot read {self.state_path}: {exc}") from exc
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        directory = os.path.dirname(self.state_path)
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".leaderbeat-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write {self.state_path}: {exc}") from exc

    def _ours(self, owner: str, term: int) -> bool:
        return self._fd is not None and self._owner == owner and self._term == term

    # -- the lease ---------------------------------------------------------------

    def acquire(self, owner: str, identity: str, ttl: float) -> Acquisition:
        if self._fd is not None and self._owner == owner and self._term is not None:
            return Acquisition(True, LeaseRecord(holder=identity, term=self._term))
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            lease = self._read_state().get("lease") or {}
            return Acquisition(False, LeaseRecord(lease.get("identity"), lease.get("term", 0)))
        except OSError as exc:
            os.close(fd)
            raise StoreUnavailable(f"cannot lock {self.path}: {exc}") from exc
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

    def renew(self, owner: str, term: int, ttl: float) -> bool:
        # The kernel keeps the lock for as long as we live: nothing to extend.
        return self._ours(owner, term)

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
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
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

    def close(self) -> None:
        self._unlock()

    def __repr__(self) -> str:
        return f"FileLeaseStore({self.path!r})"


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
