"""Child processes that die with the test that started them."""

from __future__ import annotations

import signal
import sys
from typing import Callable

__all__ = ["death_signal_setter"]


def death_signal_setter() -> Callable[[], None] | None:
    """A function for the child to run before exec: SIGKILL me when my parent thread dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``). libc is loaded here, in the
    parent, so the child runs no Python import between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    return set_death_signal
