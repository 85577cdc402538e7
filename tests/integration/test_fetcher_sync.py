"""IMAP sync against the real Dovecot and Kafka: the fetcher as a real process, inboxes in its registry."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mailsync.credentials import Keyring, generate_key
from tests.integration.conftest import MailUser, eventually
from tests.stack import ROOT

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
KEYS = f"k1:{generate_key()}"
CA_FILE = str(ROOT / ".stack" / "mail" / "tls" / "cert.pem")


def sync_env(**extra: str) -> dict[str, str]:
    return {
        "MAILSYNC_CREDENTIALS_KEYS": KEYS,
        "MAILSYNC_FETCHER_TLS_CA_FILE": CA_FILE,
        "MAILSYNC_FETCHER_SYNC_SCAN_INTERVAL_SECONDS": "0.5",
        "MAILSYNC_FETCHER_SYNC_FETCH_CHUNK": "7",
        "MAILSYNC_FETCHER_SYNC_BACKOFF_BASE_SECONDS": "0.2",
        "MAILSYNC_FETCHER_SYNC_POLL_INTERVAL_SECONDS": "2",
        **extra,
    }


def imap(user: MailUser, port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port)
    m.starttls(ssl._create_unverified_context())
    m.login(user.email, user.password)
    return m


def mail(n: int, tag: str, *, subject: str | None = None, when: datetime | None = None) -> bytes:
    date = format_datetime(when or datetime.now(UTC))
    return (
        f"From: Bob <bob-{tag}@example.com>\r\nTo: someone@mailsync.test\r\n"
        f"Subject: {subject or f'message {n}'}\r\nDate: {date}\r\n"
        f"Message-ID: <{tag}-{n}@example.com>\r\n\r\nbody {n}\r\n"
    ).encode()


def append(user: MailUser, port: int, messages: list[bytes], folder: str = "INBOX") -> None:
    m = imap(user, port)
    try:
        for raw in messages:
            typ, _ = m.append(folder, None, None, raw)
            assert typ == "OK"
    finally:
        m.logout()


def record(user: MailUser, port: int, tenant: str, inbox_id: str, **sync: Any) -> dict[str, Any]:
    key = f"{tenant}:{inbox_id}"
    keyring = Keyring.from_spec(KEYS)
    return {
        "_id": key,
        "tenant_id": tenant,
        "inbox_id": inbox_id,
        "owner_user_id": "u1",
        "email": user.email,
        "imap": {"host": "127.0.0.1", "port": port, "security": "starttls"},
        "smtp": {"host": "127.0.0.1", "port": 31587, "security": "starttls"},
        "imap_auth": {
            "kind": "password",
            "username": user.email,
            "password": keyring.encrypt(user.password, f"{key}:imap_auth.password").model_dump(),
        },
        "sync": {"folders": sync.get("folders"), "backfill_days": sync.get("backfill_days")},
        "status": "connecting",
        "created_at": datetime.now(UTC),
    }


def received_uids(events: list[dict[str, Any]], inbox_id: str, folder: str = "INBOX") -> list[int]:
    return [
        e["data"]["ref"]["uid"]
        for e in events
        if e["type"] == "mailsync.message.received"
        and e["inbox_id"] == inbox_id
        and e["data"]["ref"]["folder"] == folder
    ]


async def until_received(watcher: Any, inbox_id: str, count: int, folder: str = "INBOX") -> list[int]:
    """Reads the messages topic until `count` distinct received events of the inbox arrived."""
    await watcher.wait_for(
        lambda e: len(set(received_uids(unique_by_id(watcher.seen), inbox_id, folder))) >= count, 60
    )
    return received_uids(unique_by_id(watcher.seen), inbox_id, folder)


def unique_by_id(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for e in events:
        seen.setdefault(e["id"], e)
    return list(seen.values())


async def _is(read: Callable[[], Any], expected: str) -> bool:
    return bool(await read() == expected)


async def test_initial_then_idle_flags_and_expunge(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("sync")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(20)])
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env())
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id))

    done = await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )
    assert done["data"]["messages"] == 20

    async def live_status() -> Any:
        doc = await db.sync_state.find_one({"_id": f"t1:{inbox_id}"})
        return doc and doc.get("live_status")

    # The sync engine's live status (shown by the console and in `mailsync_inboxes`), not the registry's.
    assert await eventually(lambda: _is(live_status, "idle"), 30) is True
    uids = await until_received(messages, inbox_id, 20)
    assert sorted(uids) == list(range(1, 21)), "every seeded message exactly once"
    assert uids[0] == 20, "newest first"
    first = next(e for e in messages.seen if e["inbox_id"] == inbox_id)
    assert first["data"]["history"] is True and first["data"]["subject"] == "message 19"
    assert first["data"]["from"][0]["email"] == f"bob-{tag}@example.com"
    progress = [e for e in inbox_events.seen if e["type"] == "mailsync.inbox.sync_progress"]
    assert progress and progress[-1]["data"]["done"] == progress[-1]["data"]["total"] == 20
    assert await db.messages.count_documents({"inbox_id": inbox_id}) == 20
    # Bodies follow the headers: stored, then announced.
    body_event = await messages.wait_for(
        lambda e: (
            e["inbox_id"] == inbox_id
            and e["type"] == "mailsync.message.updated"
            and e["data"]["body_stored"]
            and e["data"]["ref"]["uid"] == 1
        ),
        30,
    )
    key = body_event["data"]["ref"]["message_key"]
    body = await db.message_bodies.find_one({"_id": f"t1:{inbox_id}:INBOX:{key}:0"})
    assert body is not None and b"body 0" in bytes(body["data"]) and body["snippet"] == "body 0"

    # New mail arrives through IDLE, not marked as history.
    started = time.monotonic()
    await asyncio.to_thread(append, user, port, [mail(100, tag, subject="fresh")])
    fresh = await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["data"].get("subject") == "fresh", 20
    )
    assert fresh["data"]["history"] is False and fresh["data"]["ref"]["uid"] == 21
    assert time.monotonic() - started < 10

    # A flag set by another client → message updated; an expunge → message deleted.
    def flag_and_expunge() -> None:
        m = imap(user, port)
        m.select("INBOX")
        m.uid("STORE", "3", "+FLAGS", "(\\Flagged)")
        m.uid("STORE", "5", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.logout()

    await asyncio.to_thread(flag_and_expunge)
    updated = await messages.wait_for(
        lambda e: (
            e["inbox_id"] == inbox_id
            and e["type"] == "mailsync.message.updated"
            and e["data"]["ref"]["uid"] == 3
            and not e["data"]["body_stored"]
        ),
        20,
    )
    assert "\\Flagged" in updated["data"]["flags"] and updated["data"]["modseq"] > 0
    deleted = await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.message.deleted", 20
    )
    assert deleted["data"]["ref"]["uid"] == 5 and deleted["data"]["reason"] == "expunged"
    received = received_uids(unique_by_id(messages.seen), inbox_id)
    assert sorted(received) == list(range(1, 22)), "no message received twice"

    # Our session never changed the mailbox: the flags are only those the test client set.
    def flags() -> list[bytes]:
        m = imap(user, port)
        m.select("INBOX", readonly=True)
        _, data = m.uid("FETCH", "1:*", "(FLAGS)")
        m.logout()
        return [d for d in data if isinstance(d, bytes)]

    for line in await asyncio.to_thread(flags):
        assert b"\\Seen" not in line


async def test_uidvalidity_change_rebuilds_without_duplicates(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("uidv")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    when = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    originals = [mail(i, tag, when=when) for i in range(4)]

    def create(name: str) -> None:
        m = imap(user, port)
        m.create(name)
        m.logout()

    await asyncio.to_thread(create, "Work")
    await asyncio.to_thread(append, user, port, originals, "Work")
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env())
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id, folders=["Work"]))
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )
    cursor = await db.sync_cursors.find_one({"_id": f"t1:{inbox_id}:Work"})
    assert cursor is not None
    old_validity = cursor["uidvalidity"]

    # Recreate the folder: same mail back (one dropped), plus one new message → new UIDVALIDITY.
    def recreate() -> None:
        m = imap(user, port)
        m.delete("Work")
        time.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        m.create("Work")
        for raw in [*originals[1:], mail(99, tag, subject="new after rebuild")]:
            m.append("Work", None, None, raw)
        m.logout()

    await asyncio.to_thread(recreate)
    new_one = await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["data"].get("subject") == "new after rebuild", 30
    )
    assert new_one["data"]["ref"]["uidvalidity"] != old_validity
    gone = await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.message.deleted", 30
    )
    assert gone["data"]["reason"] == "uidvalidity_reset"
    assert gone["data"]["ref"]["uidvalidity"] == old_validity
    await asyncio.sleep(1.0)
    received = [
        e for e in unique_by_id(messages.seen) if e["inbox_id"] == inbox_id and e["type"].endswith("received")
    ]
    subjects = sorted(e["data"]["subject"] for e in received)
    assert subjects == ["message 0", "message 1", "message 2", "message 3", "new after rebuild"]
    remapped = await db.messages.find_one({"inbox_id": inbox_id, "subject": "message 2"})
    assert remapped is not None and remapped["uidvalidity"] != old_validity


async def test_sigkill_mid_sync_resumes_with_nothing_lost(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("kill")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    total = 300
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(total)])
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    env = sync_env(MAILSYNC_FETCHER_SYNC_LEASE_SECONDS="2")
    first = service("fetcher", **env)
    db = mongo[first.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id))
    await inbox_events.wait_for(
        lambda e: (
            e["inbox_id"] == inbox_id
            and e["type"] == "mailsync.inbox.sync_progress"
            and e["data"]["done"] >= 21
        ),
        60,
    )
    first.proc.kill()
    first.proc.wait()
    cursor = await db.sync_cursors.find_one({"_id": f"t1:{inbox_id}:INBOX"})
    assert cursor is not None and not cursor["initial_done"], "killed mid-sync"

    service("fetcher", MAILSYNC_MONGO_DATABASE=first.database, **env)
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 90
    )
    uids = await until_received(messages, inbox_id, total)
    assert sorted(set(uids)) == list(range(1, total + 1)), "nothing lost"
    assert len(uids) == total, "a replayed message carries the same event id"


class DroppingProxy:
    """TCP proxy to Dovecot that can cut every connection and refuse new ones, like a restart."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def drop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


async def test_server_gone_during_idle_then_back_catches_up(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("drop")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(3)])
    proxy = DroppingProxy(port)
    await proxy.start()
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env())
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, proxy.port, "t1", inbox_id))
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )
    await asyncio.sleep(0.5)  # the folder workers are in IDLE now

    await proxy.drop()  # every connection cut, new ones refused: the server is "down"
    await asyncio.to_thread(append, user, port, [mail(50, tag, subject="while down")])
    await asyncio.sleep(1.5)
    await proxy.start()  # back on the same port
    caught = await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["data"].get("subject") == "while down", 30
    )
    assert caught["data"]["history"] is False
    uids = await until_received(messages, inbox_id, 4)
    assert sorted(uids) == [1, 2, 3, 4]
    await proxy.drop()


async def test_two_fetchers_share_inboxes_and_one_takes_over(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    port = mail_lab.imap_port
    users = [mail_user_factory("pair") for _ in range(2)]
    tag = uuid.uuid4().hex[:8]
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    env = sync_env(MAILSYNC_FETCHER_SYNC_LEASE_SECONDS="3")
    a = service("fetcher", **env)
    b = service("fetcher", MAILSYNC_MONGO_DATABASE=a.database, **env)
    db = mongo[a.database]
    ids = [f"i-{tag}-{n}" for n in range(2)]
    for user, inbox_id in zip(users, ids, strict=True):
        await db.inboxes.insert_one(record(user, port, "t1", inbox_id))
    for inbox_id in ids:
        await inbox_events.wait_for(
            lambda e, i=inbox_id: e["inbox_id"] == i and e["type"] == "mailsync.inbox.initial_sync_completed",
            60,
        )
    leases = {
        d["_id"]: d["owner"] async for d in db.sync_leases.find({"_id": {"$in": [f"t1:{i}" for i in ids]}})
    }
    assert len(leases) == 2
    # Kill whichever process holds the first inbox; the other must pick it up from its cursor.
    victim = a if str(a.proc.pid) in leases[f"t1:{ids[0]}"].split(":")[1] else b
    victim.proc.kill()
    victim.proc.wait()
    started = time.monotonic()
    for user in users:
        await asyncio.to_thread(append, user, port, [mail(7, tag, subject=f"after kill {user.email}")])
    for user, inbox_id in zip(users, ids, strict=True):
        await messages.wait_for(
            lambda e, i=inbox_id, u=user: (
                e["inbox_id"] == i and e["data"].get("subject") == f"after kill {u.email}"
            ),
            30,
        )
    assert time.monotonic() - started < 30


async def test_pause_stops_sync_and_resume_catches_up(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("pause")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(0, tag)])
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env())
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id))
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )
    # The registry (services/fetcher/registry.py) sets this status on a pause command.
    await db.inboxes.update_one({"_id": f"t1:{inbox_id}"}, {"$set": {"status": "paused"}})
    await asyncio.sleep(1.5)  # > scan interval: the sync has stopped
    await asyncio.to_thread(append, user, port, [mail(1, tag, subject="while paused")])
    with pytest.raises(AssertionError):
        await messages.wait_for(
            lambda e: e["inbox_id"] == inbox_id and e["data"].get("subject") == "while paused", 3
        )
    await db.inboxes.update_one({"_id": f"t1:{inbox_id}"}, {"$set": {"status": "idle"}})
    await messages.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["data"].get("subject") == "while paused", 20
    )


async def test_wrong_password_backs_off_then_stops_with_auth_failed(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("authfail")
    port = mail_lab.imap_port
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env(MAILSYNC_FETCHER_SYNC_AUTH_FAILURE_LIMIT="3"))
    db = mongo[fetcher.database]
    inbox_id = f"i-{uuid.uuid4().hex[:8]}"
    wrong = MailUser(user.email, "not-the-password")
    await db.inboxes.insert_one(record(wrong, port, "t1", inbox_id))
    final = await inbox_events.wait_for(
        lambda e: (
            e["inbox_id"] == inbox_id
            and e["type"] == "mailsync.inbox.auth_failed"
            and e["data"]["retry_at"] is None
        ),
        60,
    )
    assert final["data"]["error"]["code"] == "auth.invalid_credentials"
    assert "not-the-password" not in str(final)
    failures = [
        e for e in inbox_events.seen if e["inbox_id"] == inbox_id and e["type"].endswith("auth_failed")
    ]
    assert len(failures) == 3, "bounded retries, each announced with its retry time"
    assert all(e["data"]["retry_at"] for e in failures[:-1])
    doc = await eventually(lambda: db.inboxes.find_one({"_id": f"t1:{inbox_id}", "status": "auth_failed"}))
    assert doc is not None


async def test_download_budget_throttles_instead_of_hitting_the_provider_limit(  # type: ignore[no-untyped-def]
    service, watch, mongo: Mongo, mail_lab, mail_user_factory: Callable[[str], MailUser]
) -> None:
    user = mail_user_factory("budget")
    port = mail_lab.imap_port
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(append, user, port, [mail(i, tag) for i in range(3)])
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service("fetcher", **sync_env(MAILSYNC_FETCHER_SYNC_DAILY_DOWNLOAD_MB="0"))
    db = mongo[fetcher.database]
    inbox_id = f"i-{tag}"
    await db.inboxes.insert_one(record(user, port, "t1", inbox_id))
    throttled = await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.throttled", 30
    )
    resume = datetime.fromisoformat(throttled["data"]["resume_at"])
    assert resume > datetime.now(UTC) and (resume.hour, resume.minute) == (0, 0)
    assert throttled["data"]["limit"] == "download_per_day"
    state = await eventually(
        lambda: db.sync_state.find_one({"_id": f"t1:{inbox_id}", "live_status": "throttled"})
    )
    assert "resumes" in state["live_status_reason"]
