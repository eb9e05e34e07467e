"""Entry names that stores have got wrong, and the check that each keeps its own history.

Pairs that database collations fold together (case, accents, trailing
spaces, ß/ss, composed/decomposed), 4-byte UTF-8 (emoji: MySQL's utf8mb3
cannot hold them), and names longer than any VARCHAR(255) key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NAMES", "assert_each_name_keeps_its_own_history"]

PAIRS = ["Report", "report", "résumé", "resume", "a", "a ", "ß", "ss", "e\u0301", "\u00e9"]
EMOJI = ["\U0001f5d3\ufe0f nightly", "report \U0001f4c8", "\U0001d518 fraktur"]
LONG = ["nightly-export:" + "x" * 285, "y" * 5000]
NAMES = PAIRS + EMOJI + LONG


def assert_each_name_keeps_its_own_history(store: Any) -> None:
    """Lead ``store`` (a LeaseStore nobody holds) and check every name round-trips alone."""
    from ..lease import LeaseElector

    elector = LeaseElector(store, identity="names")
    assert elector.is_leader()
    runs = {name: f'{{"run":{i}}}' for i, name in enumerate(NAMES)}
    elector.claim(runs)
    assert store.load_history() == runs
    # Forgetting one of a pair leaves the other.
    elector.forget(["report", "a ", "resume"])
    assert store.load_history() == {n: r for n, r in runs.items()
                                    if n not in ("report", "a ", "resume")}
    # A new claim of one of a pair changes only its own record.
    elector.claim({"Report": '{"run":"again"}'})
    history = store.load_history()
    assert history["Report"] == '{"run":"again"}' and history["a"] == runs["a"]
