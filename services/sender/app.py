"""Sender service wiring: send commands in → idempotent outbox (SMTP delivery: the sender issue)."""

from __future__ import annotations

from mailsync.service import Runtime

from .outbox import Outbox


def setup(rt: Runtime) -> None:
    outbox = Outbox(rt.db, rt.publisher, rt.source)
    rt.subscribe("mailsync.send.commands.v1", outbox.apply)
