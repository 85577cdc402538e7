"""The fetcher's Gmail path against a Gmail-like fake server (tests/fakes/gmail_imap.py), Kafka and FerretDB.

The fake speaks Gmail's extensions (X-GM-EXT-1: X-GM-MSGID, X-GM-THRID, X-GM-LABELS, `\\All` All Mail)
over TLS and refuses every command that writes. `InboxSync` runs in-process against it: All Mail is
synced once (no label folder is opened), events carry Gmail's ids and labels, new mail arrives through
IDLE on All Mail, label changes become `message updated`, and polled folders wait Gmail's 10 minutes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mailsync.credentials import Keyring
from mailsync.inbox_record import InboxRecord
from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings
from services.fetcher.sync.inbox import GMAIL_FLOOR_SECONDS, InboxSync, SyncConfig
from tests.fakes.gmail_imap import ALL_MAIL, FakeGmail
from tests.integration.conftest import eventually
from tests.integration.test_fetcher_connection_cap import RecordingPublisher
from tests.integration.test_fetcher_sync import CA_FILE, KEYS
from tests.stack import ROOT

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
TLS_DIR = ROOT / ".stack" / "mail" / "tls"
ME = "me@gmail.test"


def mail(n: int, tag: str, *, sender: str = "bob@example.com", subject: str | None = None) -> bytes:
    return (
        f"From: {sender}\r\nTo: {ME}\r\nSubject: {subject or f'gmail {n}'}\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\nMessage-ID: <{tag}-{n}@example.com>\r\n"
        f"Content-Type: text/plain\r\n\r\nbody {n}\r\n"
    ).encode()


def gmail_record(port: int, tag: str, folders: list[str] | None = None) -> InboxRecord:
    key = f"t1:g-{tag}"
    keyring = Keyring.from_spec(KEYS)
    return InboxRecord.model_validate(
        {
            "_id": key,
            "tenant_id": "t1",
            "inbox_id": f"g-{tag}",
            "owner_user_id": "u1",
            "email": ME,
            "provider": "gmail",
            "imap": {"host": "127.0.0.1", "port": port, "security": "tls"},
            "smtp": {"host": "127.0.0.1", "port": 31465, "security": "tls"},
            "imap_auth": {
                "kind": "password",
                "username": ME,
                "password": keyring.encrypt("app-password", f"{key}:imap_auth.password").model_dump(),
            },
            "sync": {"folders": folders, "backfill_days": None},
        }
    )


def tls_server() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(TLS_DIR / "cert.pem", TLS_DIR / "key.pem")
    return ctx


class Harness:
    """A fake Gmail account, the fetcher's sync of it in-process, and what it published."""

    def __init__(self, kafka_bootstrap: str, mongo: Mongo, tag: str) -> None:
        self.tag = tag
        self.fake = FakeGmail(ME, "app-password", labels=("Work", "Receipts"), tls=tls_server())
        self.mongo = mongo
        self.db = mongo[f"test_gmail_{tag}"]
        self.broker = make_broker(
            ServiceSettings(service_name="gmail-test", kafka_bootstrap_servers=kafka_bootstrap)
        )
        self.publisher = RecordingPublisher(EventPublisher(self.broker))
        self.sleeps: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def sleep(self, seconds: float) -> None:
        """Records every wait; Gmail's poll floor is not waited out (the test looks at it instead)."""
        self.sleeps.append(seconds)
        await asyncio.sleep(3600 if seconds >= GMAIL_FLOOR_SECONDS else seconds)

    async def start(self, folders: list[str] | None = None) -> None:
        await self.broker.start()
        port = await self.fake.start()
        sync = InboxSync(
            gmail_record(port, self.tag, folders),
            db=self.db,
            publisher=self.publisher,
            keyring=Keyring.from_spec(KEYS),
            config=SyncConfig(
                tls_cafile=CA_FILE,
                poll_interval_seconds=0.3,
                idle_restart_seconds=30,
                backoff_base_seconds=0.2,
            ),
            source="/test/gmail",
            sleep=self.sleep,
        )
        self.task = asyncio.create_task(sync.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.fake.close()
        await self.broker.stop()
        await self.mongo.drop_database(self.db.name)

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.publisher.events if e.type == f"mailsync.{kind}"]

    async def wait(self, check: Callable[[], bool], timeout: float = 20) -> None:
        async def probe() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()  # the sync died: show why
            return check()

        assert await eventually(probe, timeout, interval=0.05)


async def test_all_mail_once_with_gmail_ids_labels_and_idle(kafka_bootstrap: str, mongo: Mongo) -> None:
    tag = uuid.uuid4().hex[:8]
    h = Harness(kafka_bootstrap, mongo, tag)
    fake = h.fake
    first = fake.deliver(mail(1, tag), ["\\Inbox", "Work"], flags=["\\Seen"])
    sent = fake.deliver(mail(2, tag, sender=ME), ["\\Sent"], thread_of=first, flags=["\\Seen"])
    receipt = fake.deliver(mail(3, tag), ["\\Inbox", "\\Important", "Receipts"])
    # Sent from a "Send mail as" alias the inbox record does not list; the label is non-ASCII.
    alias = fake.deliver(mail(5, tag, sender="me@alias.example"), ["\\Sent", "été"])
    try:
        await h.start()
        await h.wait(lambda: bool(h.events("inbox.initial_sync_completed")))
        received = {e.data.ref.message_key: e.data for e in h.events("message.received")}
        assert set(received) == {f"gm:{m.msgid}" for m in (first, sent, receipt, alias)}
        for msg in (first, sent, receipt, alias):
            data = received[f"gm:{msg.msgid}"]
            assert data.ref.folder == ALL_MAIL and data.history is True
            assert data.gmail_thread_id == str(msg.thrid)
            assert data.gmail_labels == sorted(msg.labels)
        assert received[f"gm:{sent.msgid}"].gmail_thread_id == str(first.thrid), "a reply joins its thread"
        assert received[f"gm:{sent.msgid}"].direction == "outbound"
        assert received[f"gm:{receipt.msgid}"].direction == "inbound"
        assert received[f"gm:{alias.msgid}"].direction == "outbound", "Gmail's \\Sent label counts"
        assert received[f"gm:{alias.msgid}"].gmail_labels == ["\\Sent", "été"], "decoded from UTF-7"
        done = h.events("inbox.initial_sync_completed")[0].data
        assert done.folders == [ALL_MAIL] and done.messages == 4
        # Bodies follow, announced with the labels (not an empty list that would read as "unlabelled").
        await h.wait(lambda: len([e for e in h.events("message.updated") if e.data.body_stored]) == 4)
        for e in h.events("message.updated"):
            assert e.data.gmail_labels, f"{e.data.change} update without labels"

        # New mail: All Mail is IDLEd on, the push wakes it, the message is announced as new.
        await h.wait(lambda: fake.commands.count("IDLE") >= 1)
        started = time.monotonic()
        fresh = fake.deliver(mail(4, tag, subject="fresh"), ["\\Inbox"])
        await h.wait(lambda: any(e.data.subject == "fresh" for e in h.events("message.received")), 10)
        assert time.monotonic() - started < 5, "pushed by IDLE, not found by a poll"
        new = next(e.data for e in h.events("message.received") if e.data.subject == "fresh")
        assert new.history is False and new.ref.message_key == f"gm:{fresh.msgid}"
        assert new.gmail_labels == ["\\Inbox"]

        # A label added elsewhere moves the MODSEQ: the change arrives as `message updated`.
        await h.wait(lambda: fake.commands.count("IDLE") >= 2)
        fake.relabel(first, ["\\Inbox", "Work", "Urgent"])
        await h.wait(
            lambda: any(
                e.data.change == "flags" and e.data.gmail_labels == ["Urgent", "Work", "\\Inbox"]
                for e in h.events("message.updated")
            ),
            10,
        )

        async def stored_labels() -> Any:
            doc = await h.db.messages.find_one({"message_key": f"gm:{first.msgid}"})
            return doc and doc["folder"] == ALL_MAIL and doc["gmail_labels"] == ["Urgent", "Work", "\\Inbox"]

        assert await eventually(stored_labels, 10), "the stored document follows the labels"
    finally:
        await h.stop()
    assert set(fake.examined) == {ALL_MAIL}, f"label folders opened: {set(fake.examined) - {ALL_MAIL}}"
    assert fake.refused == [], "the fetcher only reads"
    assert fake.most_connections == 1, "one connection for one folder"
    assert not [s for s in h.sleeps if s >= GMAIL_FLOOR_SECONDS], "All Mail IDLEs, it is not polled"


async def test_polled_folders_wait_gmails_ten_minutes(kafka_bootstrap: str, mongo: Mongo) -> None:
    """Configured folders on Gmail: INBOX IDLEs, the label folder is polled no more often than 10 min."""
    tag = uuid.uuid4().hex[:8]
    h = Harness(kafka_bootstrap, mongo, tag)
    h.fake.deliver(mail(1, tag), ["\\Inbox", "Work"])
    h.fake.deliver(mail(2, tag), ["Work"])
    try:
        await h.start(folders=["INBOX", "Work"])
        await h.wait(lambda: bool(h.events("inbox.initial_sync_completed")))
        await h.wait(lambda: GMAIL_FLOOR_SECONDS in h.sleeps)
        await asyncio.sleep(1.5)  # five poll intervals of 0.3 s: without the floor, Work is re-examined
        folders = {e.data.ref.folder for e in h.events("message.received")}
        assert folders == {"INBOX", "Work"}
        assert h.fake.examined.count("Work") == 1, h.fake.examined
        assert "IDLE" in h.fake.commands
        assert max(h.sleeps) == GMAIL_FLOOR_SECONDS
    finally:
        await h.stop()
    assert ALL_MAIL not in h.fake.examined and h.fake.refused == []
