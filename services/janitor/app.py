"""Janitor service wiring: activity in → activity clocks; the cleanup sweep arrives with its issue."""

from __future__ import annotations

from mailsync.service import Runtime

from .activity import ActivityClock


def setup(rt: Runtime) -> None:
    clock = ActivityClock(rt.db)
    rt.subscribe("crm.activity.v1", clock.apply)
