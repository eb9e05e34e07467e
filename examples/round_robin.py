"""A small custom elector: leadership handed round-robin between N instances.

The elector contract is one method, ``is_leader()``: return True to dispatch
this tick, or raise ``NotLeader`` with a reason (logged once per change) to
skip it. The scheduler asks again on every tick, so an instance whose turn
comes back simply starts dispatching again.

This one splits wall-clock time into slices and gives slice ``k`` to
instance ``k % count``. It needs no store at all, which is also its limit:
like every custom elector it gets per-tick gating only, without shared run
history or fenced claims, and it trusts the hosts' clocks. Clocks that
disagree by ``d`` seconds let two instances lead (or none) for ``d`` seconds
at each hand-over. Use the built-in lease electors when that matters.

Use it in a beat group of three (each replica with its own index)::

    # celeryconfig.py, with this directory on PYTHONPATH
    beat_scheduler = "celery_leaderbeat.LeaderScheduler"
    leaderbeat_elector = "round_robin:RoundRobinElector"

    LEADERBEAT_RR_COUNT=3 LEADERBEAT_RR_INDEX=0 celery -A proj beat
    LEADERBEAT_RR_COUNT=3 LEADERBEAT_RR_INDEX=1 celery -A proj beat
    LEADERBEAT_RR_COUNT=3 LEADERBEAT_RR_INDEX=2 celery -A proj beat

Or watch it rotate, without Celery: ``python examples/round_robin.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

from celery_leaderbeat import NotLeader

__all__ = ["RoundRobinElector"]


class RoundRobinElector:
    """Instance ``index`` of ``count`` leads during every ``count``-th time slice."""

    def __init__(
        self,
        index: int | None = None,
        count: int | None = None,
        slice_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Unset arguments come from the environment, so the class can be named
        # in leaderbeat_elector and built without arguments on each replica.
        self.index = int(os.environ.get("LEADERBEAT_RR_INDEX", 0) if index is None else index)
        self.count = int(os.environ.get("LEADERBEAT_RR_COUNT", 1) if count is None else count)
        self.slice_seconds = float(
            os.environ.get("LEADERBEAT_RR_SLICE", 60) if slice_seconds is None else slice_seconds)
        if not 0 <= self.index < self.count:
            raise ValueError(f"index must be in 0..{self.count - 1}, got {self.index}")
        if self.slice_seconds <= 0:
            raise ValueError(f"slice_seconds must be positive, got {self.slice_seconds}")
        self.clock = clock

    def turn(self) -> int:
        """The instance whose turn it is now."""
        return int(self.clock() // self.slice_seconds) % self.count

    def is_leader(self) -> bool:
        turn = self.turn()
        if turn != self.index:
            raise NotLeader(f"instance {turn} of {self.count} has this turn")
        return True

    def __repr__(self) -> str:
        return (f"RoundRobinElector(index={self.index}, count={self.count}, "
                f"slice_seconds={self.slice_seconds})")


def watch(count: int, slice_seconds: float, rounds: int) -> list[int]:
    """Poll ``count`` electors as their beats would; print and return each new leader."""
    electors = [RoundRobinElector(i, count, slice_seconds) for i in range(count)]
    leaders: list[int] = []
    started = time.monotonic()
    while len(leaders) < count * rounds + 1:
        answers = []
        for elector in electors:
            try:
                answers.append(elector.is_leader())
            except NotLeader:
                answers.append(False)
        leading = [i for i, yes in enumerate(answers) if yes]
        if len(leading) == 1 and (not leaders or leaders[-1] != leading[0]):
            leaders.append(leading[0])
            print(f"{time.monotonic() - started:5.1f}s  instance {leading[0]} leads")
        time.sleep(slice_seconds / 20)
    return leaders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3, help="instances (default 3)")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per turn (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="full rotations (default 2)")
    args = parser.parse_args()
    watch(args.count, args.slice, args.rounds)


if __name__ == "__main__":
    main()
