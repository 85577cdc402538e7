"""The sender's Sent-copy sessions stay within its share of the account's connections (real Dovecot).

With 4 connections for the account the fetcher gets 3 and the sender 1: eight concurrent Sent-copy
lookups share one IMAP session, though `sessions_per_inbox` would allow two.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Callable

import pytest

from mailsync.connection_budget import connection_shares
from mailsync.inbox_record import InboxRecord
from services.sender.imap_sent import ImaplibSentMailboxes, _Session
from services.sender.logins import Login
from tests.integration.conftest import MailUser
from tests.integration.test_fetcher_connection_cap import make_folders, server_connections
from tests.integration.test_fetcher_sync import record

pytestmark = pytest.mark.integration


class CountingMailboxes(ImaplibSentMailboxes):
    opened = 0

    def _open_blocking(self, record: InboxRecord, login: Login) -> _Session:
        self.opened += 1
        return super()._open_blocking(record, login)


@pytest.mark.parametrize(("account", "expected"), [(4, 1), (None, 2)])
async def test_sent_copy_sessions_within_the_sender_share(  # type: ignore[no-untyped-def]
    mail_lab, mail_user_factory: Callable[[str], MailUser], account: int | None, expected: int
) -> None:
    user = mail_user_factory("share")
    port = mail_lab.imap_port
    await asyncio.to_thread(make_folders, user, port, ["Sent"])
    inbox = InboxRecord.model_validate(record(user, port, "t1", f"i-{uuid.uuid4().hex[:8]}"))
    assert connection_shares(inbox.provider, inbox.imap.host, account).sender == expected
    mailboxes = CountingMailboxes(
        timeout=10,
        tls=ssl._create_unverified_context(),
        sessions_per_inbox=2,
        account_connections=account,
    )

    async def login(_refresh: bool) -> Login:
        return Login("password", user.email, user.password)

    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(await asyncio.to_thread(server_connections, user.email))
            await asyncio.sleep(0.02)

    seen.append(await asyncio.to_thread(server_connections, user.email))  # before any session
    sampler = asyncio.create_task(sample())
    try:
        found = await asyncio.gather(
            *(mailboxes.find(inbox, login, "Sent", f"<nope-{i}@example.com>") for i in range(300))
        )
        assert found == [None] * 300
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await mailboxes.close()
    assert mailboxes.opened == expected, "the pool opens as many sessions as its share allows"
    assert len(seen) >= 3 and max(seen) <= expected, f"Dovecot saw {seen} sender sessions"
