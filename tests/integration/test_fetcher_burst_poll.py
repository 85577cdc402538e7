"""Polling with NOOP after new mail, against the real Dovecot: what `ImapSession.poll` answers.

After new mail the fetcher polls the folder with NOOP for a moment instead of going back to IDLE: Dovecot
answers a NOOP from the folder's state at once, while an IDLE session hears of a change only after its
notification delay. What must hold: a quiet folder polls until the time is up and reports nothing; a
message appended meanwhile is reported by the next NOOP, as a wake the next pass takes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from tests.integration.conftest import MailUser
from tests.integration.folder_kit import connect
from tests.integration.test_fetcher_idle_wake import Commands
from tests.integration.test_fetcher_sync import append, mail

pytestmark = pytest.mark.integration


async def test_poll_reports_new_mail_at_the_next_noop_and_nothing_when_quiet(  # type: ignore[no-untyped-def]
    mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("burstpoll")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(0, tag)])
    session = await connect(user, port)
    try:
        await session.examine("INBOX")
        commands = Commands(session)
        started = time.monotonic()
        assert await session.poll(0.4, 0.05) == []
        assert time.monotonic() - started >= 0.4
        assert commands.names.count("NOOP") >= 4, commands.names
        assert session.take_wake() == [], "a quiet poll ends like an IDLE whose time ran out"

        polling = asyncio.ensure_future(session.poll(30, 0.05))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(append, user, port, [mail(1, tag)])
        appended = time.monotonic()
        woke = await asyncio.wait_for(polling, 10)
        seen_after = time.monotonic() - appended
        assert [(u.kind, u.number) for u in woke if u.kind == "EXISTS"] == [("EXISTS", 2)], woke
        # One NOOP interval and a round trip; Dovecot's IDLE notification alone takes ~0.3-0.5 s here.
        assert seen_after < 0.3, seen_after
        assert session.take_wake() == woke, "the next pass takes the wake"
    finally:
        await session.logout()
