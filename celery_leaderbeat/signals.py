"""Leadership signals, sent by the scheduler on every change of role.

Connect as to any Celery signal::

    from celery_leaderbeat.signals import leadership_gained

    @leadership_gained.connect
    def on_gained(sender, identity, term, lease_name, **kwargs): ...

``sender`` is the scheduler. Every signal carries ``identity``, ``term`` and
``lease_name``; ``leadership_lost`` adds ``reason`` (text) and ``cause``
(``released``, ``expired``, ``taken``, ``fenced out``, ``store error`` or
``elector`` for a custom elector's "no"); ``leader_observed`` adds
``leader`` (the holder's identity) and ``leader_term``.
``dispatch_paused`` (sent by the leader when it starts holding dispatch for
``celery leaderbeat pause``) adds ``pause`` (a
:class:`~celery_leaderbeat.pause.DispatchPause`: who, when, why, until);
``dispatch_resumed`` (when it stops holding) adds ``resume`` (the
:class:`~celery_leaderbeat.pause.DispatchResume`, None when the pause ran
out by itself) and ``catch_up`` (``once`` or ``skip``, as it applies).
Receivers run inside the beat loop: keep them quick. A receiver that raises
is logged by Celery and does not stop beat.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["dispatch_paused", "dispatch_resumed", "leader_observed", "leadership_gained",
           "leadership_lost"]

leadership_gained = Signal(
    name="leadership_gained",
    providing_args={"identity", "term", "lease_name"},
)
leadership_lost = Signal(
    name="leadership_lost",
    providing_args={"identity", "term", "lease_name", "reason", "cause"},
)
leader_observed = Signal(
    name="leader_observed",
    providing_args={"identity", "term", "lease_name", "leader", "leader_term"},
)
dispatch_paused = Signal(
    name="dispatch_paused",
    providing_args={"identity", "term", "lease_name", "pause"},
)
dispatch_resumed = Signal(
    name="dispatch_resumed",
    providing_args={"identity", "term", "lease_name", "resume", "catch_up"},
)
