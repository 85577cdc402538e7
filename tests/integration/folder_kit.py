"""What the in-process folder-sync tests share: the folder context of a test user's INBOX, a logged-in
IMAP session to the lab's Dovecot (its test certificate is not verified), and an INBOX seeded with mail
next to a database of its own."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.messages import FolderContext
from tests.integration.conftest import MailUser
from tests.integration.test_fetcher_sync import append, mail


def inbox_context(user: MailUser, tag: str) -> FolderContext:
    """INBOX of inbox `i-<tag>` of tenant `t1`, owned by `user`."""
    return FolderContext(
        tenant_id="t1",
        inbox_id=f"i-{tag}",
        folder="INBOX",
        uidvalidity=0,
        source="/test",
        own_addresses=frozenset({user.email}),
    )


async def connect(user: MailUser, port: int) -> ImapSession:
    """A session over STARTTLS, logged in as `user`."""
    session = await ImapSession.connect(
        "127.0.0.1", port, "starttls", ssl_context=ssl._create_unverified_context()
    )
    await session.login(user.email, user.password)
    return session


@dataclass
class Seeded:
    user: MailUser
    port: int
    tag: str
    db: AsyncDatabase[dict[str, Any]]
    ctx: FolderContext


async def seeded_inbox(
    mongo: AsyncMongoClient[dict[str, Any]], port: int, user: MailUser, count: int
) -> Seeded:
    """`count` messages (`mail(0..count-1)`) appended to `user`'s INBOX, a fresh database for the test
    (the caller drops it) and the INBOX context."""
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(count)])
    return Seeded(user, port, tag, mongo[f"test_{tag}"], inbox_context(user, tag))
