"""The context-manager shape every harness here shares: start on enter, close on exit."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["Started"]

S = TypeVar("S", bound="Started")


class Started:
    """``with Harness() as h:`` runs ``h.start()`` and, always, ``h.close()``.

    ``close()`` also runs when ``start()`` fails half-way, so a harness that
    started some of its processes never leaves them behind.
    """

    def start(self: S) -> S:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def __enter__(self: S) -> S:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()
