"""Hostile IMAP and SMTP servers (tests/integration/hostile_servers.py) against our clients and the real
service processes; hostile mail in the real Dovecot, synced by a real fetcher into the real FerretDB.

1. The IMAP session alone against each misbehaviour: it times out or refuses, never hangs.
2. One fetcher process syncing five hostile inboxes and one healthy Dovecot inbox full of hostile mail:
   every hostile message is stored raw and flagged, new mail of the healthy inbox still arrives at once,
   the hostile inboxes reconnect with growing delays and are reported as `connect failed`.
3. The sender against an SMTP server that answers 421 and hangs up: retried, then failed and
   dead-lettered; a healthy inbox's send through the real Postfix goes out meanwhile.
"""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from mailsync.credentials import Keyring
from mailsync.inbox_record import ServerSettings
from services.fetcher.imap.protocol import ProtocolError
from services.fetcher.imap.session import ConnectionLost, ImapSession
from tests.fuzz_corpus import BUILDERS, duplicate_message_ids
from tests.integration.conftest import MailUser, eventually
from tests.integration.hostile_servers import HostileImap, HostileSmtp
from tests.integration.test_fetcher_sync import KEYS, sync_env
from tests.integration.test_sender_delivery import BACKLOG_S, inbox_doc, send_command, sender_env
from tests.stack import MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]

HEALTHY_MAIL = (
    b"From: Ann <ann@example.com>\r\nTo: bob@mailsync.test\r\nSubject: plain and fine\r\n"
    b"Date: Sun, 22 Nov 2026 05:00:00 +0000\r\nMessage-ID: <fine-%s@example.com>\r\n\r\nall good\r\n"
)


@pytest_asyncio.fixture
async def hostile() -> AsyncIterator[Callable[..., Any]]:
    servers: list[HostileImap | HostileSmtp] = []

    async def make(mode: str, *, smtp: bool = False, **kw: Any) -> Any:
        server: HostileImap | HostileSmtp = HostileSmtp(mode) if smtp else HostileImap(mode, **kw)
        servers.append(server)
        return await server.start()

    yield make
    for s in servers:
        await s.stop()


# ---- 1. the session alone ----------------------------------------------------------------------


async def _connect(server: HostileImap, timeout: float = 1.0) -> ImapSession:
    return await ImapSession.connect("127.0.0.1", server.port, "plain", connect_timeout=timeout)


async def test_session_times_out_or_refuses_every_misbehaviour(hostile) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="no answer"):
        await _connect(await hostile("no_greeting"))
    assert time.monotonic() - started < 3

    # A server that trickles its greeting passes every per-read timeout; the rate floor ends it.
    trickle = await hostile("trickle", trickle_seconds=0.05)
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="too slow"):
        await _connect(trickle, timeout=0.5)
    assert time.monotonic() - started < 5

    garbage = await _connect(await hostile("garbage"))
    with pytest.raises((ProtocolError, ConnectionLost)):
        await garbage.login("u", "p")
    garbage.abort()

    stall = await _connect(await hostile("stall_fetch", messages=[b"From: a@b\r\n\r\nx"]))
    await stall.login("u", "p")
    await stall.examine("INBOX")
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="no answer"):
        await stall.uid_fetch("1", "UID BODY.PEEK[HEADER]")
    assert time.monotonic() - started < 3, "a server silent mid-FETCH is given up after the timeout"
    stall.abort()

    huge = await _connect(await hostile("huge_literal", messages=[b"From: a@b\r\n\r\nx"]))
    await huge.login("u", "p")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        await huge.uid_fetch("1", "UID BODY.PEEK[HEADER]")
    huge.abort()

    bye = await _connect(await hostile("bye_idle"))
    await bye.login("u", "p")
    await bye.examine("INBOX")
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="BYE"):
        await bye.idle(30)
    assert time.monotonic() - started < 3

    sasl = await _connect(await hostile("sasl_loop"))
    with pytest.raises(ProtocolError, match="keeps challenging"):
        await sasl.authenticate_xoauth2("u", "token")
    sasl.abort()

    overflow = await _connect(await hostile("overflow"))
    await overflow.login("u", "p")
    with pytest.raises(ProtocolError, match="out of range"):
        await overflow.examine("INBOX")
    overflow.abort()


# ---- 2. one fetcher, hostile inboxes beside a healthy one ----------------------------------------------

WORST = [
    "nul_bytes",
    "eightbit_headers",
    "no_header_block",
    "broken_boundaries",
    "far_dates",
    "duplicated_headers",
    "rfc2047_edges",
    "lying_charset",
    "invalid_dates",
]


def _imap(user: MailUser, port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port)
    m.starttls(ssl._create_unverified_context())
    m.login(user.email, user.password)
    return m


def _append(user: MailUser, port: int, messages: list[bytes]) -> list[bytes]:
    """APPEND each message; returns the bytes Dovecot keeps (fetched back), in UID order."""
    m = _imap(user, port)
    try:
        for raw in messages:
            typ, data = m.append("INBOX", None, None, raw)
            assert typ == "OK", data
        m.select("INBOX", readonly=True)
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [part[1] for part in data if isinstance(part, tuple)]
    finally:
        m.logout()


def _record(  # noqa: PLR0917
    tenant: str, inbox_id: str, email: str, password: str, host: str, port: int, security: str
) -> dict[str, Any]:
    key = f"{tenant}:{inbox_id}"
    return {
        "_id": key,
        "tenant_id": tenant,
        "inbox_id": inbox_id,
        "owner_user_id": "u1",
        "email": email,
        "imap": {"host": host, "port": port, "security": security},
        "smtp": {"host": host, "port": 31587, "security": "starttls"},
        "imap_auth": {
            "kind": "password",
            "username": email,
            "password": Keyring.from_spec(KEYS).encrypt(password, f"{key}:imap_auth.password").model_dump(),
        },
        "sync": {"folders": None, "backfill_days": None},
        "status": "connecting",
        "created_at": datetime.now(UTC),
    }


async def test_fetcher_survives_hostile_servers_and_stores_hostile_mail_raw_and_flagged(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory, hostile
) -> None:
    tag = uuid.uuid4().hex[:8]
    tenant = f"t-hostile-{tag}"
    user = mail_user_factory("hostile")
    worst = [BUILDERS[name](f"{tag}-{name}") for name in WORST] + duplicate_message_ids(tag)
    stored_raw = await asyncio.to_thread(_append, user, mail_lab.imap_port, worst)
    assert len(stored_raw) == len(worst), "Dovecot accepted every hostile message"

    servers = {
        mode: await hostile(mode, messages=[HEALTHY_MAIL % tag.encode()])
        for mode in ("no_greeting", "garbage", "stall_fetch", "huge_literal", "bye_idle")
    }
    messages = await watch("mailsync.messages.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    fetcher = service(
        "fetcher",
        **sync_env(
            MAILSYNC_FETCHER_CONNECT_TIMEOUT_SECONDS="1",
            MAILSYNC_FETCHER_SYNC_COMMAND_TIMEOUT_SECONDS="1.5",
            MAILSYNC_FETCHER_SYNC_BACKOFF_BASE_SECONDS="0.3",
            MAILSYNC_FETCHER_SYNC_BACKOFF_CAP_SECONDS="3",
        ),
    )
    db = mongo[fetcher.database]
    healthy_id = f"healthy-{tag}"
    records = [
        _record(tenant, healthy_id, user.email, user.password, "127.0.0.1", mail_lab.imap_port, "starttls")
    ]
    records += [
        _record(tenant, f"{mode}-{tag}", f"{mode}@hostile.test", "pw", "127.0.0.1", s.port, "plain")
        for mode, s in servers.items()
    ]
    await db.inboxes.insert_many(records)

    def ours(e: dict[str, Any], inbox_id: str, kind: str) -> bool:
        return e["inbox_id"] == inbox_id and e["type"] == kind

    # Every hostile message: one `message received`, a stored document, and the raw bytes stored.
    await messages.wait_for(
        lambda e: (
            len(
                {
                    x["data"]["ref"]["uid"]
                    for x in messages.seen
                    if ours(x, healthy_id, "mailsync.message.received")
                }
            )
            >= len(worst)
        ),
        60,
    )
    received = {
        e["data"]["ref"]["uid"]: e["data"]
        for e in messages.seen
        if ours(e, healthy_id, "mailsync.message.received")
    }
    assert sorted(received) == list(range(1, len(worst) + 1))

    async def bodies_stored() -> int:
        return await db.message_bodies.count_documents({"inbox_id": healthy_id, "n": 0})

    async def documents_stored() -> int:  # written alongside the bodies: either may finish first
        return await db.messages.count_documents({"inbox_id": healthy_id})

    await eventually(lambda: _at_least(bodies_stored, len(worst)), 60)
    await eventually(lambda: _at_least(documents_stored, len(worst)), 30)
    docs = {d["uid"]: d async for d in db.messages.find({"inbox_id": healthy_id})}
    assert len(docs) == len(worst), "duplicate Message-IDs with different content are two messages"
    flagged = 0
    for uid, raw in enumerate(stored_raw, 1):
        doc = docs[uid]
        body = await _body(db, doc["_id"])
        assert body == raw, f"uid {uid}: the raw bytes are stored exactly as the server holds them"
        head = await db.message_bodies.find_one({"_id": f"{doc['_id']}:0"})
        assert head is not None
        flags = list(doc["parse_errors"]) + list(head["parse_errors"])
        assert flags == sorted(doc["parse_errors"]) + sorted(head["parse_errors"])
        assert received[uid]["parse_errors"] == doc["parse_errors"]
        flagged += bool(flags)
    by_name = {name: docs[i + 1] for i, name in enumerate(WORST)}
    # Dovecot replaces NUL bytes with 0x80 on APPEND: the stored mail is flagged for what it holds.
    nul_raw = stored_raw[WORST.index("nul_bytes")]
    expected_nul = "header.nul_byte" if b"\x00" in nul_raw else "header.not_utf8"
    assert expected_nul in by_name["nul_bytes"]["parse_errors"]
    assert "header.not_utf8" in by_name["eightbit_headers"]["parse_errors"]
    assert "date.invalid" in by_name["far_dates"]["parse_errors"]
    assert "header.duplicate.from" in by_name["duplicated_headers"]["parse_errors"]
    assert flagged >= 6, "the malformed ones are flagged"

    # The healthy inbox is not held up by five failing ones in the same process: new mail within seconds.
    started = time.monotonic()
    await asyncio.to_thread(_append, user, mail_lab.imap_port, [HEALTHY_MAIL % b"fresh-" + tag.encode()])
    fresh = await messages.wait_for(
        lambda e: (
            ours(e, healthy_id, "mailsync.message.received") and e["data"]["subject"] == "plain and fine"
        ),
        30,
    )
    fresh_latency = time.monotonic() - started
    assert fresh["data"]["history"] is False and fresh_latency < 10

    # The hostile inboxes are reported: `connect failed` with a retry time, after repeated failures.
    for mode in ("no_greeting", "garbage", "stall_fetch", "huge_literal"):
        failed = await inbox_events.wait_for(
            lambda e, m=mode: ours(e, f"{m}-{tag}", "mailsync.inbox.connect_failed"), 45
        )
        assert failed["data"]["error"]["code"] == "imap.unreachable" and failed["data"]["retry_at"]
    # ... after reconnecting with growing (jittered, capped) delays, never in a tight loop.
    for mode in ("no_greeting", "garbage", "stall_fetch", "huge_literal"):
        # The first gap may be the folder worker's own connection after the inbox's folder listing.
        gaps = servers[mode].gaps()[1:]
        assert len(gaps) >= 2, (mode, gaps)
        # (one short gap is tolerated: a registry scan may restart an inbox; a tight loop is not)
        short = [g for g in gaps if g < 0.15]
        assert len(short) <= 1, (mode, gaps, [ln for ln in fetcher.log().splitlines() if mode in ln][-12:])
    # BYE during IDLE: the session reconnects and its one message is received exactly once.
    bye_id = f"bye_idle-{tag}"
    await messages.wait_for(lambda e: ours(e, bye_id, "mailsync.message.received"), 30)
    await eventually(lambda: _true(len(servers["bye_idle"].connections) >= 3), 30)
    bye_received = {e["id"] for e in messages.seen if ours(e, bye_id, "mailsync.message.received")}
    assert len(bye_received) == 1
    # A server that drops every IDLE is not reconnected to at the base delay forever: the delays grow.
    # (each gap = 0.3 s in IDLE until the BYE + the delay; at the base delay it stays under 0.7 s)
    bye_gaps = servers["bye_idle"].gaps()[1:]
    assert max(bye_gaps) >= 0.9, bye_gaps
    print(
        f"\nhostile fetcher: {len(worst)} hostile messages stored raw, {flagged} flagged; fresh mail of the "
        f"healthy inbox in {fresh_latency:.2f}s; reconnects: "
        + ", ".join(f"{m}={len(s.connections)}" for m, s in servers.items())
    )
    assert fetcher.http("/healthz")[0] == 200
    assert fetcher.stop() == 0
    assert "Traceback" not in fetcher.log(), fetcher.log()[-3000:]


async def _at_least(count: Callable[[], Any], n: int) -> bool:
    return bool(await count() >= n)


async def _true(value: bool) -> bool:
    return value


async def _body(db: Any, doc_id: str) -> bytes:
    parts = [d async for d in db.message_bodies.find({"message": doc_id})]
    return b"".join(bytes(d["data"]) for d in sorted(parts, key=lambda d: d["n"]))


# ---- 3. SMTP: 421 then close ---------------------------------------------------------------------


async def test_sender_421_then_close_is_retried_then_dead_lettered_others_unaffected(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory, hostile
) -> None:
    servers = {mode: await hostile(mode, smtp=True) for mode in ("421_close", "421_at_mail")}
    reuse = await hostile("421_on_reuse", smtp=True)
    # One SMTP session per inbox, so consecutive sends reuse it (idle sessions are kept 15 s).
    sender = service(
        "sender",
        **sender_env(MAILSYNC_SENDER_MAX_ATTEMPTS="3", MAILSYNC_SENDER_SMTP_CONNECTIONS_PER_INBOX="1"),
    )
    db = mongo[sender.database]
    events = await watch("mailsync.send.events.v1")
    deadletters = await watch("mailsync.send.deadletter.v1")
    run = uuid.uuid4().hex[:6]
    bob = mail_user_factory("bob")
    users = {name: mail_user_factory(name.replace("_", "")) for name in (*servers, "421_on_reuse", "healthy")}
    ports = {**{n: s.port for n, s in servers.items()}, "421_on_reuse": reuse.port}
    docs = []
    for name, user in users.items():
        smtp = None
        if name in ports:
            smtp = ServerSettings(host="127.0.0.1", port=ports[name], security="plain")
        extra: dict[str, Any] = {"smtp_allow_plain": True} if smtp else {}
        docs.append(inbox_doc(f"{name}-{run}", user.email, user.password, mail_lab, smtp=smtp, **extra))
    await db.inboxes.insert_many(docs)
    for name, user in users.items():
        if name != "421_on_reuse":
            await producer(send_command(f"{name}-{run}", f"{name}-key-{run}", user.email, bob.email))

    def outcome(key: str) -> Any:
        return events.wait_for(
            lambda e: (
                e["data"].get("idempotency_key") == key
                and e["type"] in ("mailsync.send.message_sent", "mailsync.send.failed")
                and not foreign(e)
            ),
            BACKLOG_S,
        )

    good = await outcome(f"healthy-key-{run}")
    assert good["type"] == "mailsync.send.message_sent", good["data"].get("error")
    for name, server in servers.items():
        bad = await outcome(f"{name}-key-{run}")
        assert bad["type"] == "mailsync.send.failed" and bad["data"]["attempts"] == 3, bad
        assert bad["data"]["error"]["code"] == "smtp.421", bad
        letter = await deadletters.wait_for(
            lambda e, n=name: e["data"]["idempotency_key"] == f"{n}-key-{run}"
        )
        assert letter["data"]["command"]["to"][0]["email"] == bob.email
        assert len(server.connections) == 3, f"{name}: one connection per attempt, each answered 421"
        gaps = [b - a for a, b in zip(server.connections, server.connections[1:], strict=False)]
        assert all(g >= 0.1 for g in gaps), gaps
        print(f"\n{name}: {len(server.connections)} attempts, gaps {[round(g, 2) for g in gaps]}s")
    # A server that ends a reused idle session with 421: a fresh session at once, not a failed attempt.
    reuse_user = users["421_on_reuse"]
    for i in range(3):
        await producer(send_command(f"421_on_reuse-{run}", f"reuse-{i}-{run}", reuse_user.email, bob.email))
        sent = await outcome(f"reuse-{i}-{run}")
        assert sent["type"] == "mailsync.send.message_sent" and sent["data"]["attempts"] == 1, sent
    assert reuse.accepted == 3 and len(reuse.connections) == 3
    assert sender.stop() == 0
    assert "Traceback" not in sender.log(), sender.log()[-3000:]


def foreign(event: dict[str, Any]) -> bool:
    """An outcome from another sender process on the shared Kafka (a benchmark, a developer's `make run`):
    it reads the same command topic but not our database, so it answers `inbox.unknown`; not ours."""
    return (event["data"].get("error") or {}).get("code") == "inbox.unknown"
