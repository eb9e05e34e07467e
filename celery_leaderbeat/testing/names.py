"""Entry names that stores have got wrong, and the check that each keeps its own history.

Pairs that database collations fold together (case, accents, trailing
spaces, ß/ss, composed/decomposed), 4-byte UTF-8 (emoji: MySQL's utf8mb3
cannot hold them), and names longer than any VARCHAR(255) key.

:data:`SURROGATES` are names no UTF-8 text can hold: lone surrogates (a
Python ``str`` may carry them, from ``os.fsdecode`` or a JSON ``\\ud800``).
A store that keys names as UTF-8 bytes with ``errors="surrogatepass"``
(Redis, etcd) keeps them; a SQL store refuses their claim (ClaimRejected).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["NAMES", "SURROGATES", "assert_each_name_keeps_its_own_history"]

PAIRS = ["Report", "report", "résumé", "resume", "a", "a ", "ß", "ss", "e\u0301", "\u00e9"]
EMOJI = ["\U0001f5d3\ufe0f nightly", "report \U0001f4c8", "\U0001d518 fraktur"]
LONG = ["nightly-export:" + "x" * 285, "y" * 5000]
NAMES = PAIRS + EMOJI + LONG
#: Lone surrogates; the last is the pair of EMOJI's "report \U0001f4c8" as two code
#: points, which must stay a name of its own.
SURROGATES = ["nightly-\ud800", "\udfff", "low \udc80 then high \udbff", "report \ud83d\udcc8"]


def assert_each_name_keeps_its_own_history(store: Any, extra: Sequence[str] = ()) -> None:
    """Lead ``store`` (a LeaseStore nobody holds) and check every name round-trips alone.

    ``extra`` names (such as :data:`SURROGATES`) are claimed beside
    :data:`NAMES`; every other one of them is forgotten with the pairs, and
    the rest must stay.
    """
    from ..lease import LeaseElector

    elector = LeaseElector(store, identity="names")
    assert elector.is_leader()
    runs = {name: f'{{"run":{i}}}' for i, name in enumerate([*NAMES, *extra])}
    assert len(runs) == len(NAMES) + len(extra)
    elector.claim(runs)
    assert store.load_history() == runs
    # Forgetting one of a pair leaves the other.
    gone = ["report", "a ", "resume", *extra[::2]]
    elector.forget(gone)
    assert store.load_history() == {n: r for n, r in runs.items() if n not in gone}
    # A new claim of one of a pair changes only its own record.
    elector.claim({"Report": '{"run":"again"}'})
    history = store.load_history()
    assert history["Report"] == '{"run":"again"}' and history["a"] == runs["a"]
