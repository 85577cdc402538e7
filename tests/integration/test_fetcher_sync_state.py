"""The inbox sync's bookkeeping against the real Dovecot, Kafka and FerretDB (`InboxSync` in-process).

- The `initial_completed` write of the run state, refused for a while the way FerretDB on SQLite refuses
  writes under contention (`database is locked` as an OperationFailure), is retried: the store ends up
  saying completed, and `initial sync completed` is published once, not again for the retry.
- A configured folder deleted on the server is logged once per disappearance, not on every poll, and
  counts as no connection failure; it is synced again when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from mailsync.credentials import Keyring
from mailsync.inbox_record import InboxRecord
from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings
from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.inbox import STATE_WRITE_ATTEMPTS, SYNC_STATE, InboxSync, SyncConfig
from tests.integration.conftest import MailUser, eventually
from tests.integration.test_fetcher_connection_cap import RecordingPublisher, delete_folder, make_folders
from tests.integration.test_fetcher_sync import KEYS, append, mail, record

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
GONE = "folder not found on the server, looked for again on every poll"
BACK = "folder found on the server again"


class LockedStateWrites:
    """The real `sync_state` collection, whose `initial_completed: True` writes are refused `failures`
    times first, as FerretDB/SQLite does while another writer holds the database."""

    def __init__(self, real: Any, failures: int) -> None:
        self._real = real
        self.failures = failures
        self.attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def update_one(self, query: Any, update: Any, **kwargs: Any) -> Any:
        if update.get("$set", {}).get("initial_completed") is True:
            self.attempts += 1
            if self.attempts <= self.failures:
                raise OperationFailure("database is locked (5) (SQLITE_BUSY)", code=1)
        return await self._real.update_one(query, update, **kwargs)


class Store:
    """The real database, with `sync_state` wrapped."""

    def __init__(self, real: AsyncDatabase[dict[str, Any]], state: LockedStateWrites) -> None:
        self._real, self._state = real, state

    def __getitem__(self, name: str) -> Any:
        return self._state if name == SYNC_STATE else self._real[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def _true(value: bool) -> bool:
    return value


async def test_initial_completed_write_refused_for_a_while_is_retried(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("stateretry")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(3)])
    broker = make_broker(ServiceSettings(service_name="state-test", kafka_bootstrap_servers=kafka_bootstrap))
    await broker.start()
    real = mongo[f"test_state_{tag}"]
    # More refusals than the in-place retries: the folder loop's own backoff and next pass finish it.
    locked = LockedStateWrites(real[SYNC_STATE], failures=STATE_WRITE_ATTEMPTS + 1)
    publisher = RecordingPublisher(EventPublisher(broker))
    inbox = InboxRecord.model_validate(record(user, port, "t1", f"i-{tag}", folders=["INBOX"]))
    sync = InboxSync(
        inbox,
        db=cast(AsyncDatabase[dict[str, Any]], Store(real, locked)),
        publisher=publisher,
        keyring=Keyring.from_spec(KEYS),
        config=SyncConfig(tls_verify=False, idle_restart_seconds=5, backoff_base_seconds=0.05),
        source="/test/state",
    )

    async def completed_in_store() -> bool:
        doc = await real[SYNC_STATE].find_one({"_id": inbox.id})
        return bool(doc and doc.get("initial_completed"))

    runner = asyncio.create_task(sync.run())
    try:
        assert await eventually(completed_in_store, 60), f"write attempts: {locked.attempts}"
        await asyncio.sleep(1)  # passes after completion: nothing more is announced
        assert not runner.done(), runner
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await broker.stop()
        await mongo.drop_database(real.name)
    assert locked.attempts == STATE_WRITE_ATTEMPTS + 2
    done = [e for e in publisher.events if e.type == "mailsync.inbox.initial_sync_completed"]
    assert len(done) == 1, "announced once; the retried write does not announce again"
    assert done[0].data.messages == 3


class CountingOpens(InboxSync):
    opens = 0

    async def _open(self) -> ImapSession:
        session = await super()._open()
        self.opens += 1
        return session


async def test_a_deleted_folder_is_logged_once_per_disappearance(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str,
    mongo: Mongo,
    mail_lab,
    mail_user_factory: Callable[[str], MailUser],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailsync.fetcher.sync")
    user = mail_user_factory("gone")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    folder = f"Archive-{tag}"
    await asyncio.to_thread(make_folders, user, port, [folder])
    await asyncio.to_thread(append, user, port, [mail(1, tag)], folder)
    broker = make_broker(ServiceSettings(service_name="gone-test", kafka_bootstrap_servers=kafka_bootstrap))
    await broker.start()
    db = mongo[f"test_gone_{tag}"]
    publisher = RecordingPublisher(EventPublisher(broker))
    # INBOX IDLEs on its connection; the archive is polled on its own (no rotation).
    inbox = InboxRecord.model_validate(record(user, port, "t1", f"i-{tag}", folders=["INBOX", folder]))
    sync = CountingOpens(
        inbox,
        db=db,
        publisher=publisher,
        keyring=Keyring.from_spec(KEYS),
        config=SyncConfig(
            tls_verify=False, idle_restart_seconds=5, poll_interval_seconds=0.3, backoff_base_seconds=0.05
        ),
        source="/test/gone",
    )

    def logged(message: str) -> int:
        return sum(
            1 for r in caplog.records if r.getMessage() == message and getattr(r, "folder", None) == folder
        )

    def received() -> list[tuple[int, int]]:
        return [
            (e.data.ref.uidvalidity, e.data.ref.uid)
            for e in publisher.events
            if e.type == "mailsync.message.received" and e.data.ref.folder == folder
        ]

    async def polls_after(opens: int, n: int) -> None:
        # Each poll of the missing folder is a fresh connection (none is held while it is away).
        assert await eventually(lambda: _true(sync.opens >= opens + n), 30), sync.opens

    runner = asyncio.create_task(sync.run())
    try:
        assert await eventually(lambda: _true(len(received()) == 1), 60)
        await asyncio.to_thread(delete_folder, user, port, folder)
        await polls_after(sync.opens, 5)
        assert logged(GONE) == 1, "warned once, not on every poll"
        # Back with new mail (a new UIDVALIDITY): synced again, and said so.
        await asyncio.to_thread(make_folders, user, port, [folder])
        await asyncio.to_thread(append, user, port, [mail(2, tag)], folder)
        assert await eventually(lambda: _true(len(received()) == 2), 30), received()
        assert logged(BACK) == 1
        # Gone again: warned again, once.
        await asyncio.to_thread(delete_folder, user, port, folder)
        await polls_after(sync.opens, 5)
        assert not runner.done(), runner
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await broker.stop()
        await mongo.drop_database(db.name)
    assert logged(GONE) == 2
    problems = [r for r in caplog.records if r.getMessage() == "imap connection problem, reconnecting"]
    assert problems == [], "a missing folder is no connection problem"
    assert not [e for e in publisher.events if e.type == "mailsync.inbox.connect_failed"]
