"""The round-robin example elector: leadership rotates, and dispatch follows it.

This is the elector contract seen from a user's side: a class with
``is_leader()`` handed to ``leaderbeat_elector``, nothing else.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
from celery import Celery

from celery_leaderbeat import NotLeader, signals

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "round_robin.py"


@pytest.fixture(scope="module")
def round_robin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("round_robin", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_exactly_one_instance_leads_in_each_slice_in_turn(round_robin: ModuleType) -> None:
    clock = Clock(0.0)
    electors = [round_robin.RoundRobinElector(i, 3, 10.0, clock=clock) for i in range(3)]
    leaders = []
    for second in range(0, 90, 5):
        clock.now = 1_700_000_000 + second
        answers = []
        for elector in electors:
            try:
                answers.append(elector.is_leader())
            except NotLeader as exc:
                assert "has this turn" in str(exc)
                answers.append(False)
        assert answers.count(True) == 1
        leaders.append(answers.index(True))
    turns = [leaders[i] for i in range(0, len(leaders), 2)]  # one sample per slice
    assert all((b - a) % 3 == 1 for a, b in zip(turns, turns[1:]))


def test_settings_may_name_the_class_and_the_environment_sets_the_turn(
        round_robin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADERBEAT_RR_INDEX", "2")
    monkeypatch.setenv("LEADERBEAT_RR_COUNT", "3")
    monkeypatch.setenv("LEADERBEAT_RR_SLICE", "5")
    elector = round_robin.RoundRobinElector()
    assert (elector.index, elector.count, elector.slice_seconds) == (2, 3, 5.0)
    with pytest.raises(ValueError, match="index"):
        round_robin.RoundRobinElector(3, 3)


@pytest.fixture
def rotation(make_app: Callable[..., Celery], make_scheduler: Callable[..., Any],
             make_tap: Callable[..., Any], lease_name: str,
             round_robin: ModuleType) -> tuple[list[Any], list[Any]]:
    """Three beats, each with its own queue, taking 0.6 s turns on a 0.15 s entry."""
    beats, taps = [], []
    for index in range(3):
        queue = f"{lease_name}-{index}"
        app = make_app(
            task_default_queue=queue,
            beat_schedule={"fast": {"task": "tests.fast", "schedule": 0.15}},
            leaderbeat_elector=round_robin.RoundRobinElector(index, 3, 0.6),
        )
        taps.append(make_tap(app, queue))
        beats.append(make_scheduler(app, f"beat-{index}"))
    return beats, taps


def test_leadership_rotates_and_dispatch_resumes_on_each_turn(
        rotation: tuple[list[Any], list[Any]], ticker: Callable[..., Any]) -> None:
    beats, taps = rotation
    turns: list[tuple[int, int]] = []  # (instance, messages it sent during that turn)
    sent_before: dict[int, int] = {}

    def gained(sender: Any, **_: Any) -> None:
        if sender in beats:
            index = beats.index(sender)
            sent_before[index] = taps[index].count()

    def lost(sender: Any, **_: Any) -> None:
        if sender in beats:
            index = beats.index(sender)
            turns.append((index, taps[index].count() - sent_before.pop(index)))

    signals.leadership_gained.connect(gained, weak=False)
    signals.leadership_lost.connect(lost, weak=False)
    try:
        # Two full rotations after the first (possibly partial) turn.
        ticker(beats, lambda: len(turns) >= 7, timeout=30)
    finally:
        signals.leadership_gained.disconnect(gained)
        signals.leadership_lost.disconnect(lost)
    whole = turns[1:]
    instances = [index for index, _ in whole]
    assert all((b - a) % 3 == 1 for a, b in zip(instances, instances[1:])), instances
    assert set(instances) == {0, 1, 2}
    # Each instance dispatched in each of its turns, including the ones that came back.
    assert all(sent > 0 for _, sent in whole), whole


def test_the_example_runs_and_shows_the_rotation() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--count", "3", "--slice", "0.3", "--rounds", "1"],
        capture_output=True, text=True, timeout=60, check=True)
    lines = [line for line in done.stdout.splitlines() if "leads" in line]
    assert len(lines) == 4
    firsts = [int(line.split("instance ")[1].split()[0]) for line in lines]
    assert all((b - a) % 3 == 1 for a, b in zip(firsts, firsts[1:]))
