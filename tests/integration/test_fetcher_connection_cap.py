"""The per-account connection cap against the real Dovecot, Kafka and FerretDB.

An inbox with six configured folders and a budget of 4 connections for the account (fetcher share 3,
sender share 1) is synced in-process by `InboxSync`: INBOX and Sent IDLE on their own connections, the
four other folders are polled in turn over the third. Dovecot's own count (`doveadm who`) and the
fetcher's count of open sessions never pass 3, and every folder is synced, new mail included.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts import Envelope
from mailsync.connection_budget import connection_shares
from mailsync.credentials import Keyring
from mailsync.inbox_record import InboxRecord
from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings
from services.fetcher.imap.session import ImapSession
from services.fetcher.sync.inbox import InboxSync, SyncConfig
from tests.integration.conftest import MailUser, eventually
from tests.integration.test_fetcher_sync import KEYS, append, imap, mail, record
from tests.stack import ROOT

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
DOVECOT_CONF = ROOT / ".stack" / "mail" / "etc" / "dovecot.conf"
EXTRA = ["Archive", "Projects", "Receipts", "Travel"]


class RecordingPublisher:
    """Publishes to Kafka for real and keeps what it published, for the assertions."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner
        self.events: list[Envelope[Any]] = []

    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None:
        await self.inner.publish_all(events)
        self.events.extend(events)


class CountingSync(InboxSync):
    """The fetcher's own view: sessions open at once for this inbox."""

    open_now = 0
    most = 0

    async def _open(self) -> ImapSession:
        session = await super()._open()
        self.open_now += 1
        self.most = max(self.most, self.open_now)
        return session

    async def _close(self, session: ImapSession | None) -> None:
        if session is not None:
            self.open_now -= 1
        await super()._close(session)


def server_connections(email: str) -> int:
    """Dovecot's view: IMAP connections of the user right now (one line per connection with -1)."""
    out = subprocess.run(
        ["doveadm", "-c", str(DOVECOT_CONF), "who", "-1", email],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.startswith(email) and " imap " in f" {line} ")


def make_folders(user: MailUser, port: int, names: list[str]) -> None:
    m = imap(user, port)
    try:
        for name in names:
            typ, _ = m.create(name)
            assert typ == "OK", name
    finally:
        m.logout()


def delete_folder(user: MailUser, port: int, name: str) -> None:
    m = imap(user, port)
    try:
        typ, _ = m.delete(name)
        assert typ == "OK", name
    finally:
        m.logout()


async def test_six_folders_within_three_connections(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    assert shutil.which("doveadm"), "the local mail lab provides doveadm"
    user = mail_user_factory("cap")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(make_folders, user, port, ["Sent", *EXTRA])
    folders = ["INBOX", "Sent", *EXTRA]
    for i, folder in enumerate(folders):
        await asyncio.to_thread(append, user, port, [mail(10 * i + n, tag) for n in range(3)], folder)
    assert await asyncio.to_thread(server_connections, user.email) == 0

    cap = 4
    assert connection_shares(None, "127.0.0.1", cap).fetcher == 3
    broker = make_broker(ServiceSettings(service_name="cap-test", kafka_bootstrap_servers=kafka_bootstrap))
    await broker.start()
    db = mongo[f"test_cap_{tag}"]
    publisher = RecordingPublisher(EventPublisher(broker))
    inbox = InboxRecord.model_validate(record(user, port, "t1", f"i-{tag}", folders=folders))
    sync = CountingSync(
        inbox,
        db=db,
        publisher=publisher,
        keyring=Keyring.from_spec(KEYS),
        config=SyncConfig(
            tls_verify=False,
            poll_interval_seconds=0.5,
            idle_restart_seconds=5,
            backoff_base_seconds=0.2,
            imap_connections_per_account=cap,
        ),
        source="/test/cap",
    )
    seen: list[int] = []
    # The test's own IMAP sessions (APPEND, DELETE) count for the user too: no sample is taken while
    # one is open, nor until the server has let it go.
    mine = asyncio.Lock()

    async def sample() -> None:
        while True:
            async with mine:
                seen.append(await asyncio.to_thread(server_connections, user.email))
            await asyncio.sleep(0.05)

    async def own_session(op: Callable[..., None], *args: Any) -> None:
        async with mine:
            await asyncio.to_thread(op, *args)
            assert await eventually(lambda: _true(server_connections(user.email) <= 3), 10)

    def received(folder: str) -> set[int]:
        return {
            e.data.ref.uid
            for e in publisher.events
            if e.type == "mailsync.message.received" and e.data.ref.folder == folder
        }

    async def all_synced() -> bool:
        return all(len(received(f)) >= 3 for f in folders) and any(
            e.type == "mailsync.inbox.initial_sync_completed" for e in publisher.events
        )

    runner = asyncio.create_task(sync.run())
    sampler = asyncio.create_task(sample())
    try:
        assert await eventually(all_synced, 60), {f: sorted(received(f)) for f in folders}
        # New mail in a folder of the rotation arrives by its turn in the polling.
        await own_session(append, user, port, [mail(99, tag, subject="late")], "Travel")
        assert await eventually(lambda: _true(len(received("Travel")) == 4), 30)
        # A folder deleted by the user: the server refuses it, the rest of its rotation carries on.
        await own_session(delete_folder, user, port, "Projects")
        await own_session(append, user, port, [mail(98, tag, subject="after")], "Receipts")
        assert await eventually(lambda: _true(len(received("Receipts")) == 4), 30)
        await asyncio.sleep(1.5)  # a few more rotations while the sampler watches
        done = next(e for e in publisher.events if e.type == "mailsync.inbox.initial_sync_completed")
        assert sorted(done.data.folders) == sorted(folders) and done.data.messages == 18
    finally:
        sampler.cancel()
        runner.cancel()
        await asyncio.gather(sampler, runner, return_exceptions=True)
        await broker.stop()
        await mongo.drop_database(db.name)
    assert sync.most == 3, f"the fetcher held {sync.most} connections at once"
    assert len(seen) > 20 and max(seen) <= 3, f"Dovecot saw up to {max(seen)} connections"
    assert max(seen) == 3  # the share is used, not just respected
    assert await eventually(lambda: _true(server_connections(user.email) == 0), 10)


async def _true(value: bool) -> bool:
    return value
