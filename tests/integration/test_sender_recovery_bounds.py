"""The sender's crash recovery against the real Postfix, Dovecot, Kafka and FerretDB (`Delivery` in-process,
its `send_journal` wrapped to refuse inserts the way FerretDB on SQLite does while another writer holds
the database: `database is locked` as an OperationFailure). The inbox is one whose Sent copy we append
(the lab's server files none), so a lost journal entry is not found by the Sent-folder search and
recovery would send the message again.

- A journal write refused twice, then accepted, is retried in place: one SMTP send (the recipient's
  mailbox holds one copy), one Sent copy, and a recovery pass after the lease finds the outcome.
- A journal write that is always refused: each lease expiry resends, but only up to
  `sender_max_attempts`; then `send failed` (`send.attempts_exhausted`) and the dead-letter topic, and
  no further SMTP send.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from mailsync.kafka import EventPublisher, make_broker
from services.sender import delivery as delivery_mod
from services.sender.delivery import SEND_JOURNAL, Delivery
from services.sender.imap_sent import ImaplibSentMailboxes
from services.sender.outbox import Outbox, request_key
from services.sender.settings import SenderSettings
from services.sender.smtp_transport import AioSmtpTransport, tls_context
from tests.integration.conftest import MailUser, TopicWatcher, eventually
from tests.integration.test_sender_delivery import (
    KEYRING,
    LAB_CA,
    TENANT,
    count_copies,
    inbox_doc,
    send_command,
)
from tests.stack import MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
LEASE_S = 60.0  # never reached in real time: the test's clock jumps past it


class LockedJournal:
    """The real `send_journal`; its inserts are refused `failures` times first (None: every time)."""

    def __init__(self, real: Any, failures: int | None) -> None:
        self._real = real
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def insert_many(self, docs: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise OperationFailure("database is locked (5) (SQLITE_BUSY)", code=1)
        return await self._real.insert_many(docs, **kwargs)


class Store:
    """The real database, with `send_journal` wrapped."""

    def __init__(self, real: AsyncDatabase[dict[str, Any]], journal: LockedJournal) -> None:
        self._real, self._journal = real, journal

    def __getitem__(self, name: str) -> Any:
        return self._journal if name == SEND_JOURNAL else self._real[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Clock:
    """Wall time plus an offset: a lease expires by moving the offset, not by sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def pass_lease(self) -> None:
        self.offset += timedelta(seconds=LEASE_S + 1)


@dataclass
class Rig:
    db: AsyncDatabase[dict[str, Any]]
    journal: LockedJournal
    delivery: Delivery
    outbox: Outbox
    clock: Clock
    events: TopicWatcher
    deadletters: TopicWatcher


@pytest_asyncio.fixture
async def rig(  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest, kafka_bootstrap: str, mongo: Mongo, watch
) -> AsyncIterator[Callable[..., Rig]]:
    tag = uuid.uuid4().hex[:8]
    db = mongo[f"test_sender_recovery_{tag}"]
    settings = SenderSettings(
        service_name="sender-recovery-test",
        kafka_bootstrap_servers=kafka_bootstrap,
        sender_lease_seconds=LEASE_S,
        sender_max_attempts=2,
        sender_backoff_base_seconds=0.3,
        sender_tls_cafile=str(LAB_CA),
        sender_ehlo_hostname="sender.mailsync.test",
    )
    broker = make_broker(settings)
    await broker.start()
    publisher = EventPublisher(broker)
    tls = tls_context(True, str(LAB_CA))
    http = httpx.AsyncClient(timeout=10)
    events = await watch("mailsync.send.events.v1")
    deadletters = await watch("mailsync.send.deadletter.v1")
    made: list[Delivery] = []

    def make(failures: int | None) -> Rig:
        journal = LockedJournal(db[SEND_JOURNAL], failures)
        store = cast(AsyncDatabase[dict[str, Any]], Store(db, journal))
        clock = Clock()
        delivery = Delivery(
            store,
            publisher,
            "/test/sender-recovery",
            settings,
            smtp=AioSmtpTransport(
                timeout=30,
                tls=tls,
                ehlo_hostname="sender.mailsync.test",
                connections_per_inbox=2,
                idle_seconds=0,
            ),
            imap=ImaplibSentMailboxes(timeout=30, tls=tls),
            keyring=KEYRING,
            http=http,
            clock=clock,
        )
        made.append(delivery)
        outbox = Outbox(store, publisher, "/test/sender-recovery")
        return Rig(db, journal, delivery, outbox, clock, events, deadletters)

    try:
        yield make
    finally:
        for d in made:
            await d.stop()
        await http.aclose()
        await broker.stop()
        await mongo.drop_database(db.name)


async def _queue_send(rig: Rig, lab: MailLab, alice: MailUser, bob: MailUser) -> tuple[str, str]:
    inbox_id = f"rb-{uuid.uuid4().hex[:6]}"
    await rig.db.inboxes.insert_one(inbox_doc(inbox_id, alice.email, alice.password, lab))
    key = f"rb-{uuid.uuid4().hex[:8]}"
    await rig.outbox.apply_batch([send_command(inbox_id, key, alice.email, bob.email)])
    return inbox_id, key


async def _settled_count(lab: MailLab, user: MailUser, mid: str, at_least: int, *, sent: bool) -> int:
    """The copies of `mid` once `at_least` arrived and a (wrong) further delivery had time to land."""
    await eventually(lambda: _at_least(lab, user, mid, at_least, sent), 30)
    await asyncio.sleep(2.0)
    return await count_copies(lab, user.email, user.password, mid, sent=sent)


async def _at_least(lab: MailLab, user: MailUser, mid: str, n: int, sent: bool) -> bool:
    return await count_copies(lab, user.email, user.password, mid, sent=sent) >= n


async def test_a_journal_write_refused_twice_is_retried_and_the_message_sent_once(
    rig: Callable[..., Rig], mail_lab: MailLab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    r = rig(failures=2)
    alice, bob = mail_user_factory("rb-alice"), mail_user_factory("rb-bob")
    inbox_id, key = await _queue_send(r, mail_lab, alice, bob)
    rid = request_key(TENANT, inbox_id, key)

    assert await r.delivery.run_due_once() == 1
    mid = (await r.db.send_requests.find_one({"_id": rid}) or {})["message_id"]
    # Then a recovery pass after the lease (the queue entry is still there: nothing flushed it). Had
    # the journal entry been lost, it would find no Sent copy and send again.
    r.clock.pass_lease()
    assert await r.delivery.run_due_once() == 1
    assert await _settled_count(mail_lab, bob, mid, 1, sent=False) == 1, "one SMTP send"
    assert await count_copies(mail_lab, alice.email, alice.password, mid, sent=True) == 1

    assert r.journal.calls == 3, "refused twice, accepted the third time"
    journal = await r.db[SEND_JOURNAL].find_one({"_id": f"{rid}:sent"})
    assert journal is not None and journal["status"] == "sent"
    outcome = await r.db.send_outcomes.find_one({"_id": rid})
    assert outcome is not None and outcome["status"] == "sent" and outcome["attempts"] == 1, outcome
    assert outcome["copy_state"] == "stored" and outcome["copy"]["how"] == "appended", outcome
    sent = await r.events.wait_for(
        lambda e: e["type"] == "mailsync.send.message_sent" and e["data"]["idempotency_key"] == key
    )
    assert sent["data"]["attempts"] == 1


async def test_recovery_resends_only_up_to_max_attempts_then_dead_letters(
    rig: Callable[..., Rig],
    mail_lab: MailLab,
    mail_user_factory: Callable[[str], MailUser],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsync.sender.delivery")
    r = rig(failures=None)  # every journal write refused: each attempt's SMTP outcome is lost
    alice, bob = mail_user_factory("rx-alice"), mail_user_factory("rx-bob")
    inbox_id, key = await _queue_send(r, mail_lab, alice, bob)
    rid = request_key(TENANT, inbox_id, key)
    per_write = delivery_mod.JOURNAL_WRITE_ATTEMPTS

    # Attempt 1: SMTP accepted, the journal write refused every retry; the entry stays `sending`.
    assert await r.delivery.run_due_once() == 1
    assert r.journal.calls == per_write
    queued = await r.db.send_queue.find_one({"_id": rid})
    assert queued is not None and queued["status"] == "sending" and queued["attempts"] == 1, queued
    mid = queued["message_id"]
    assert await _settled_count(mail_lab, bob, mid, 1, sent=False) == 1

    # Lease expired: not in the Sent folder (our APPEND never came), attempt 2 of 2 is sent.
    r.clock.pass_lease()
    assert await r.delivery.run_due_once() == 1
    assert r.journal.calls == 2 * per_write
    assert await _settled_count(mail_lab, bob, mid, 2, sent=False) == 2
    queued = await r.db.send_queue.find_one({"_id": rid})
    assert queued is not None and queued["status"] == "sending" and queued["attempts"] == 2, queued

    # Lease expired again: out of attempts, failed and dead-lettered instead of a third send.
    r.clock.pass_lease()
    assert await r.delivery.run_due_once() == 1
    assert await _settled_count(mail_lab, bob, mid, 2, sent=False) == 2, "no third SMTP send"
    failed = await r.events.wait_for(
        lambda e: e["type"] == "mailsync.send.failed" and e["data"]["idempotency_key"] == key
    )
    data = failed["data"]
    assert data["error"]["code"] == "send.attempts_exhausted", data
    assert data["attempts"] == 2 and data["permanent"] is True, data
    letter = await r.deadletters.wait_for(lambda e: e["data"]["idempotency_key"] == key)
    assert letter["data"]["attempts"] == 2
    assert letter["data"]["command"]["to"][0]["email"] == bob.email
    outcome = await eventually(lambda: r.db.send_outcomes.find_one({"_id": rid}))
    assert outcome["status"] == "failed" and outcome["failure"]["exhausted"] is True, outcome

    # Nothing more: a further lease expiry finds the outcome; no third SMTP send, no Sent copy.
    r.clock.pass_lease()
    assert await r.delivery.run_due_once() == 1
    assert await _settled_count(mail_lab, bob, mid, 2, sent=False) == 2
    assert await count_copies(mail_lab, alice.email, alice.password, mid, sent=True) == 0
    assert r.journal.calls == 2 * per_write
    ours = [e for e in r.events.seen if e["data"].get("idempotency_key") == key]
    assert [e["type"] for e in ours].count("mailsync.send.failed") == 1, ours

    # The exhausted journal retries were logged clearly, naming the send, without the password.
    exhausted = [m for m in caplog.records if "attempts exhausted" in m.getMessage()]
    assert len(exhausted) == 2 and all(getattr(m, "keys", None) == [rid] for m in exhausted)
    assert all(alice.password not in str(vars(m)) for m in caplog.records)
