"""Fetcher service wiring: inbox commands in → registry status + lifecycle events.

IMAP sync itself (session layer, cursors, initial/incremental sync) arrives with the sync-engine issue.
"""

from __future__ import annotations

from mailsync.service import Runtime

from .registry import InboxRegistry


def setup(rt: Runtime) -> None:
    registry = InboxRegistry(rt.db, rt.publisher, rt.source)
    rt.subscribe("mailsync.inbox.commands.v1", registry.apply)
