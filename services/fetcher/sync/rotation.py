"""Several folders synced in turn over one connection, for inboxes with more folders than connections.

A folder worker runs `run_pass` on its connection, then IDLEs or sleeps; a rotation is a worker whose
pass is one pass of each of its folders (EXAMINE switches between them), so the worker loop, its
reconnects and its poll floor stay the same whatever the folder count.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from mailsync import metrics
from mailsync.logs import scrub
from services.fetcher.imap.session import AuthenticationFailed, ImapError, ImapSession

from .folder import FolderMissing, FolderSync, PassResult
from .messages import FolderContext

log = logging.getLogger("mailsync.fetcher.sync")
_COUNTS = ("received", "updated", "deleted", "repaired", "bodies", "vanished")


class FolderWork(Protocol):
    """What a folder worker runs on its connection: one folder (FolderSync) or a rotation."""

    ctx: FolderContext

    async def run_pass(self, session: ImapSession, *, reconcile: bool = False) -> PassResult: ...


class FolderRotation:
    def __init__(self, members: Sequence[FolderSync], on_pass: Callable[[str], Awaitable[None]]) -> None:
        if not members:
            raise ValueError("a rotation needs folders")
        self.members = list(members)
        self._on_pass = on_pass  # after each folder's pass: announce its initial sync when it completed
        # A name no real folder has, for logs and metrics; it is never in the pending-folders set.
        label = f"<rotation: {', '.join(m.ctx.folder for m in self.members)}>"
        self.ctx = dataclasses.replace(self.members[0].ctx, folder=label)

    async def run_pass(self, session: ImapSession, *, reconcile: bool = False) -> PassResult:
        total = PassResult()
        for fs in self.members:
            try:
                got = await fs.run_pass(session, reconcile=reconcile)
            except AuthenticationFailed:
                raise
            except FolderMissing:
                continue  # FolderSync logged its disappearance once; the others go on
            except ImapError as exc:
                # A folder the server refuses (deleted, renamed) must not stall the others on this
                # connection; the session is still usable after a tagged NO/BAD.
                log.warning(
                    "folder skipped in this rotation",
                    extra={
                        "inbox_id": fs.ctx.inbox_id,
                        "folder": fs.ctx.folder,
                        "error": scrub(str(exc))[:300],
                    },
                )
                metrics.ERRORS.labels(code="sync.folder_refused").inc()
                continue
            await self._on_pass(fs.ctx.folder)
            for name in _COUNTS:
                setattr(total, name, getattr(total, name) + getattr(got, name))
            total.more = total.more or got.more
        return total
