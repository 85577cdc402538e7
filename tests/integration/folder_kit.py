"""What the in-process folder-sync tests share: the folder context of a test user's INBOX and a
logged-in IMAP session to the lab's Dovecot (its test certificate is not verified)."""

from __future__ import annotations

import ssl

from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.messages import FolderContext
from tests.integration.conftest import MailUser


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
