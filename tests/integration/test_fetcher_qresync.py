"""Expunges learnt through QRESYNC (RFC 7162) against the real Dovecot, Kafka and FerretDB.

The folder sync runs in-process on a real session: after ENABLE QRESYNC, the pass that follows an
expunge opens the folder with `EXAMINE ... (QRESYNC (uidvalidity modseq))`, Dovecot answers
`VANISHED (EARLIER)`, and the message is deleted without a UID set comparison (no `UID SEARCH` over the
whole folder is sent).
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings
from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.folder import FolderSync, SyncTuning
from tests.integration.conftest import MailUser
from tests.integration.folder_kit import inbox_context
from tests.integration.test_fetcher_sync import append, imap, mail

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


def expunge(user: MailUser, port: int, uid: int) -> None:
    m = imap(user, port)
    try:
        m.select("INBOX")
        m.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        m.expunge()
    finally:
        m.logout()


async def test_expunge_detected_through_qresync_vanished(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("qresync")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(4)])
    settings = ServiceSettings(service_name="qresync-test", kafka_bootstrap_servers=kafka_bootstrap)
    broker = make_broker(settings)
    await broker.start()
    db = mongo[f"test_qresync_{tag}"]
    session = await ImapSession.connect(
        "127.0.0.1", port, "starttls", ssl_context=ssl._create_unverified_context()
    )
    try:
        await session.login(user.email, user.password)
        assert "QRESYNC" in await session.enable("QRESYNC")
        ctx = inbox_context(user, tag)
        fs = FolderSync(ctx, db=db, publisher=EventPublisher(broker), tuning=SyncTuning(backfill_days=None))
        first = await fs.run_pass(session)
        assert first.received == 4
        await asyncio.to_thread(expunge, user, port, 2)
        searches: list[str] = []
        original = session.uid_search

        async def spy(criteria: str) -> list[int]:
            searches.append(criteria)
            return await original(criteria)

        session.uid_search = spy  # type: ignore[method-assign]
        second = await fs.run_pass(session)
        assert (second.deleted, second.vanished) == (1, 1)
        assert searches == [], "no UID set comparison when QRESYNC names what vanished"
        doc = await db.messages.find_one({"inbox_id": ctx.inbox_id, "uid": 2})
        assert doc is not None and doc["deleted"] and doc["deleted_reason"] == "expunged"
        alive = await db.messages.count_documents({"inbox_id": ctx.inbox_id, "deleted": False})
        assert alive == 3
        # Nothing vanished since: the next pass deletes nothing and still compares nothing.
        third = await fs.run_pass(session)
        assert (third.deleted, third.vanished, searches) == (0, 0, [])
    finally:
        await session.logout()
        await broker.stop()
        await mongo.drop_database(db.name)
