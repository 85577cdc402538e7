"""New mail told by IDLE, against the real Dovecot, Kafka and FerretDB: the short path after a wake.

The folder sync runs in-process on a real session. A wake that reported only `* N EXISTS` fetches the
UIDs above the cursor and announces them without EXAMINE or UID SEARCH; their bodies and the cursor
wait for a quiet moment (a short IDLE), and a crash before that replays from the stored cursor with
nothing lost and nothing announced twice.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts import Envelope
from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings
from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.cursor import CursorStore
from services.fetcher.sync.folder import FolderSync, SyncTuning
from tests.integration.conftest import MailUser
from tests.integration.folder_kit import inbox_context
from tests.integration.test_fetcher_sync import append, imap, mail

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


class RecordingPublisher:
    """Publishes to Kafka for real and keeps what it published, for the assertions."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner
        self.events: list[Envelope[Any]] = []

    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None:
        await self.inner.publish_all(events)
        self.events.extend(events)

    def received(self) -> list[tuple[int, str]]:
        return [(e.data.ref.uid, e.id) for e in self.events if e.type == "mailsync.message.received"]

    def bodies(self) -> list[int]:
        return [
            e.data.ref.uid
            for e in self.events
            if e.type == "mailsync.message.updated" and getattr(e.data, "body_stored", False)
        ]


class Commands:
    """The commands a session sent, by name."""

    def __init__(self, session: ImapSession) -> None:
        self.names: list[str] = []
        original = session._command

        async def spy(line: str | bytes, **kw: Any) -> Any:
            text = line.decode() if isinstance(line, bytes) else line
            self.names.append(" ".join(text.split()[:2]) if text.startswith("UID") else text.split()[0])
            return await original(line, **kw)

        session._command = spy  # type: ignore[method-assign]


async def open_session(user: MailUser, port: int) -> ImapSession:
    session = await ImapSession.connect(
        "127.0.0.1", port, "starttls", ssl_context=ssl._create_unverified_context()
    )
    await session.login(user.email, user.password)
    await session.enable("QRESYNC")
    return session


@pytest.fixture
async def publisher(kafka_bootstrap: str) -> AsyncIterator[RecordingPublisher]:
    broker = make_broker(
        ServiceSettings(service_name="idle-wake-test", kafka_bootstrap_servers=kafka_bootstrap)
    )
    await broker.start()
    try:
        yield RecordingPublisher(EventPublisher(broker))
    finally:
        await broker.stop()


def folder_sync(db: Any, publisher: RecordingPublisher, user: MailUser, tag: str) -> FolderSync:
    ctx = inbox_context(user, tag)
    tuning = SyncTuning(backfill_days=None, body_delay_seconds=0.3)
    return FolderSync(ctx, db=db, publisher=publisher, tuning=tuning)


async def wake(session: ImapSession) -> None:
    woke = await session.idle(20)
    assert [u.kind for u in woke] and {u.kind for u in woke} == {"EXISTS"}, woke


async def test_new_mail_from_idle_is_announced_at_once_and_bodies_follow_when_quiet(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser], publisher: RecordingPublisher
) -> None:
    user = mail_user_factory("idlewake")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(2)])
    db = mongo[f"test_idle_wake_{tag}"]
    session = await open_session(user, port)
    try:
        fs = folder_sync(db, publisher, user, tag)
        assert (await fs.run_pass(session)).received == 2
        sent = Commands(session)

        await asyncio.to_thread(append, user, port, [mail(2, tag)])
        await wake(session)
        second = await fs.run_pass(session)
        assert second.received == 1 and second.idle_seconds is not None
        assert sent.names == ["UID FETCH"], "one FETCH: no EXAMINE, SEARCH or flag fetch"
        stored = await CursorStore(db).load(fs.key)
        assert stored is not None and stored.uidnext == 3, "the stored cursor waits for the bodies"

        # A second message while the first one's body waits: announced the same way.
        await asyncio.to_thread(append, user, port, [mail(3, tag)])
        await wake(session)
        third = await fs.run_pass(session)
        assert third.received == 1 and sent.names == ["UID FETCH", "UID FETCH"]

        # Quiet: the short IDLE runs out, then the bodies and the cursor.
        assert await session.idle(third.idle_seconds or 0) == []
        fourth = await fs.run_pass(session)
        assert fourth.bodies == 2 and fourth.idle_seconds is None
        assert "EXAMINE" not in sent.names
        stored = await CursorStore(db).load(fs.key)
        assert stored is not None and (stored.uidnext, stored.exists) == (5, 4)
        assert sorted(publisher.bodies()) == [1, 2, 3, 4]
        assert sorted(uid for uid, _ in publisher.received()) == [1, 2, 3, 4], "each announced once"
        assert await db.message_bodies.count_documents({"inbox_id": f"i-{tag}"}) >= 4

        # An IDLE restart (its time ran out with nothing to do) is a full pass again.
        assert await session.idle(0.2) == []
        sent.names.clear()
        await fs.run_pass(session)
        assert sent.names[0] == "EXAMINE"
    finally:
        await session.logout()
        await mongo.drop_database(db.name)


async def test_crash_before_the_deferred_bodies_replays_without_a_second_announcement(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser], publisher: RecordingPublisher
) -> None:
    user = mail_user_factory("idlecrash")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(0, tag)])
    db = mongo[f"test_idle_crash_{tag}"]
    session = await open_session(user, port)
    try:
        fs = folder_sync(db, publisher, user, tag)
        assert (await fs.run_pass(session)).received == 1
        await asyncio.to_thread(append, user, port, [mail(1, tag)])
        await wake(session)
        assert (await fs.run_pass(session)).received == 1
        await fs._settle()  # the document is written; the body and the cursor are not
    finally:
        session.abort()  # the crash: no LOGOUT, the worker and its memory are gone
    announced = publisher.received()
    session = await open_session(user, port)
    try:
        again = folder_sync(db, publisher, user, tag)
        replay = await again.run_pass(session)
        assert replay.received == 0, "the stored document keeps the replay from announcing again"
        assert replay.bodies >= 1 and 2 in publisher.bodies(), "the body that waited is stored"
        assert publisher.received() == announced
        stored = await CursorStore(db).load(again.key)
        assert stored is not None and stored.uidnext == 3
    finally:
        await session.logout()
        await mongo.drop_database(db.name)


async def test_a_flag_change_during_idle_takes_the_full_pass(  # type: ignore[no-untyped-def]
    mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser], publisher: RecordingPublisher
) -> None:
    user = mail_user_factory("idleflag")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(2)])
    db = mongo[f"test_idle_flag_{tag}"]
    session = await open_session(user, port)

    def flag() -> None:
        m = imap(user, port)
        try:
            m.select("INBOX")
            m.uid("STORE", "1", "+FLAGS", r"(\Flagged)")
        finally:
            m.logout()

    try:
        fs = folder_sync(db, publisher, user, tag)
        await fs.run_pass(session)
        sent = Commands(session)
        await asyncio.to_thread(flag)
        woke = await session.idle(20)
        assert "FETCH" in {u.kind for u in woke}
        result = await fs.run_pass(session)
        assert sent.names[0] == "EXAMINE" and result.updated == 1
    finally:
        await session.logout()
        await mongo.drop_database(db.name)
