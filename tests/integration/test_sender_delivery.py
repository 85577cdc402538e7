"""The sender against the real Postfix and Dovecot: delivered once, Sent copy exactly once, also when
the command comes twice and when the sender is SIGKILLed between SMTP and APPEND."""

from __future__ import annotations

import asyncio
import imaplib
import os
import ssl
import uuid
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts.common import Address
from contracts.sending import SendRequested, SendRequestedData
from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import InboxRecord, PasswordAuth, ServerSettings
from tests.integration.conftest import eventually
from tests.stack import ROOT, MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]

KEYS = f"k1:{generate_key()}"
KEYRING = Keyring.from_spec(KEYS)
LAB_CA = Path(os.environ.get("MAILSYNC_STACK_DIR", ROOT / ".stack")) / "mail" / "tls" / "cert.pem"
TENANT = "t1"
# The commands topic is shared with every other run: a fresh sender first works through the backlog.
BACKLOG_S = 120.0


def sender_env(**extra: str) -> dict[str, str]:
    """Certificate verification stays on: the lab's self-signed certificate is the trusted CA."""
    return {
        "MAILSYNC_CREDENTIALS_KEYS": KEYS,
        "MAILSYNC_SENDER_TLS_CAFILE": str(LAB_CA),
        "MAILSYNC_SENDER_BACKOFF_BASE_SECONDS": "0.3",
        "MAILSYNC_SENDER_POLL_INTERVAL_SECONDS": "0.2",
        "MAILSYNC_SENDER_EHLO_HOSTNAME": "sender.mailsync.test",
        **extra,
    }


def inbox_doc(
    inbox_id: str,
    email: str,
    password: str,
    lab: MailLab,
    *,
    smtp: ServerSettings | None = None,
    **fields: Any,
) -> dict[str, Any]:
    rid = InboxRecord.key(TENANT, inbox_id)
    record = InboxRecord(
        id=rid,
        tenant_id=TENANT,
        inbox_id=inbox_id,
        owner_user_id="u1",
        email=email,
        imap=ServerSettings(host=lab.host, port=lab.imaps_port, security="tls"),
        smtp=smtp or ServerSettings(host=lab.host, port=lab.submission_port, security="starttls"),
        imap_auth=PasswordAuth(
            username=email, password=KEYRING.encrypt(password, f"{rid}:imap_auth.password")
        ),
        status="idle",
        **fields,
    )
    return record.model_dump(by_alias=True)


def send_command(inbox_id: str, key: str, sender: str, *to: str, **fields: Any) -> SendRequested:
    data = SendRequestedData(
        idempotency_key=key,
        from_=Address(email=sender, name="Sender Name"),
        to=[Address(email=t) for t in to],
        subject=fields.pop("subject", f"hello {key}"),
        text=fields.pop("text", "plain body\n"),
        **fields,
    )
    return SendRequested.build(data=data, tenant_id=TENANT, inbox_id=inbox_id, source="/crm")


def _imap_count(lab: MailLab, email: str, password: str, message_id: str, sent: bool) -> int:
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    with imaplib.IMAP4_SSL(lab.host, lab.imaps_port, ssl_context=ctx, timeout=10) as client:
        client.login(email, password)
        folder = "INBOX"
        if sent:
            typ, data = client.list('""', "*")
            names = [d.decode() for d in data if isinstance(d, bytes) and b"\\Sent" in d]
            folder = names[0].rsplit(" ", 1)[-1] if names else "Sent"
        typ, _ = client.select(folder, readonly=True)
        assert typ == "OK"
        typ, data = client.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
        assert typ == "OK"
        first = data[0] if data else None
        return len(first.split()) if isinstance(first, bytes) else 0


async def count_copies(lab: MailLab, email: str, password: str, message_id: str, *, sent: bool) -> int:
    return await asyncio.to_thread(_imap_count, lab, email, password, message_id, sent)


def _append_to_sent(lab: MailLab, email: str, password: str, raw: bytes) -> None:
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    with imaplib.IMAP4_SSL(lab.host, lab.imaps_port, ssl_context=ctx, timeout=10) as client:
        client.login(email, password)
        typ, _ = client.append("Sent", "(\\Seen)", None, raw)
        assert typ == "OK"


def _fetch_from_inbox(lab: MailLab, email: str, password: str, message_id: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    with imaplib.IMAP4_SSL(lab.host, lab.imaps_port, ssl_context=ctx, timeout=10) as client:
        client.login(email, password)
        client.select("INBOX", readonly=True)
        _, data = client.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
        uid = data[0].split()[-1].decode()
        _, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")
        part = fetched[0]
        assert isinstance(part, tuple) and isinstance(part[1], bytes)
        return bytes(part[1])


@dataclass
class KilledAfterSmtp:
    """A sender SIGKILLed after Postfix accepted (and delivered) one message, before journaling it."""

    db: Any
    events: Any
    group: str
    database: str
    inbox_id: str
    key: str
    rid: str
    mid: str


@dataclass
class PausedSend:
    """A sender started with a fault pause, one inbox and one send command for it on its way."""

    first: Any
    db: Any
    events: Any
    group: str
    inbox_id: str
    key: str


async def paused_send(  # noqa: PLR0917
    service: Any,
    producer: Any,
    watch: Any,
    mongo: Any,
    lab: MailLab,
    alice: Any,
    bob: Any,
    prefix: str,
    pause: str,
) -> PausedSend:
    """`pause`: the fault setting that holds the sender 120 s at its step (after SMTP, before APPEND)."""
    group = f"test-sender-{uuid.uuid4().hex[:8]}"
    first = service(
        "sender",
        history=False,  # the shared topics' backlog is not this test's; the restart resumes
        **sender_env(
            **{pause: "120"}, MAILSYNC_SENDER_LEASE_SECONDS="3", MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX=group
        ),
    )
    db = mongo[first.database]
    inbox_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await db.inboxes.insert_one(inbox_doc(inbox_id, alice.email, alice.password, lab))
    events = await watch("mailsync.send.events.v1")
    key = f"k-{uuid.uuid4().hex[:8]}"
    await producer(send_command(inbox_id, key, alice.email, bob.email))
    return PausedSend(first, db, events, group, inbox_id, key)


async def kill_after_smtp(  # noqa: PLR0917
    service: Any, producer: Any, watch: Any, mongo: Any, lab: MailLab, alice: Any, bob: Any, prefix: str
) -> KilledAfterSmtp:
    p = await paused_send(
        service,
        producer,
        watch,
        mongo,
        lab,
        alice,
        bob,
        prefix,
        "MAILSYNC_SENDER_FAULT_PAUSE_AFTER_SMTP_SECONDS",
    )
    first, db, events, group, inbox_id, key = p.first, p.db, p.events, p.group, p.inbox_id, p.key
    rid = f"{TENANT}:{inbox_id}:{key}"
    queued = await eventually(lambda: db.send_queue.find_one({"_id": rid, "status": "sending"}), BACKLOG_S)
    mid = queued["message_id"]
    # Accepted by Postfix and delivered; the sender sleeps before journaling the outcome.
    await eventually(lambda: count_copies(lab, bob.email, bob.password, mid, sent=False), 20)
    first.proc.kill()
    first.proc.wait()
    return KilledAfterSmtp(db, events, group, first.database, inbox_id, key, rid, mid)


async def test_sent_once_delivered_and_copied_once_even_when_the_command_comes_twice(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory
) -> None:
    alice, bob, carol = mail_user_factory("alice"), mail_user_factory("bob"), mail_user_factory("carol")
    sender = service("sender", **sender_env())
    db = mongo[sender.database]
    inbox_id = f"i-{uuid.uuid4().hex[:6]}"
    alias = f"sales-{uuid.uuid4().hex[:6]}@{mail_lab.domain}"
    await db.inboxes.insert_one(
        inbox_doc(inbox_id, alice.email, alice.password, mail_lab, additional_from=[alias])
    )
    events = await watch("mailsync.send.events.v1")
    key = f"k-{uuid.uuid4().hex[:8]}"
    cmd = send_command(inbox_id, key, alice.email, bob.email, bcc=[Address(email=carol.email)])
    await producer(cmd)
    await producer(cmd)

    try:
        sent = await events.wait_for(
            lambda e: e["type"] == "mailsync.send.message_sent" and e["data"]["idempotency_key"] == key,
            BACKLOG_S,
        )
    except AssertionError:
        print([e for e in events.seen if e.get("inbox_id") == inbox_id])
        print(sender.log()[-5000:])
        raise
    mid = sent["data"]["message_id"]
    assert mid.startswith("mailsync.") and mid.endswith(f"@{mail_lab.domain}")
    assert sorted(sent["data"]["accepted_recipients"]) == sorted([bob.email, carol.email])
    stored = await events.wait_for(
        lambda e: e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["message_id"] == mid
    )
    assert stored["data"]["how"] == "appended" and stored["data"]["folder"] == "Sent"
    assert stored["data"]["uid"] and stored["data"]["uidvalidity"]

    # Delivered to both recipients; Bcc is in no header; our headers are there.
    await eventually(lambda: count_copies(mail_lab, bob.email, bob.password, f"<{mid}>", sent=False), 20)
    await eventually(lambda: count_copies(mail_lab, carol.email, carol.password, f"<{mid}>", sent=False), 20)
    raw = await asyncio.to_thread(_fetch_from_inbox, mail_lab, bob.email, bob.password, f"<{mid}>")
    parsed = message_from_bytes(raw)
    assert parsed["X-Mailsync-Send-Id"] == sent["data"]["send_id"]
    assert parsed["Bcc"] is None and carol.email not in raw.decode(errors="replace")

    # A third delivery of the command after completion: the same outcome, nothing sent again.
    await producer(send_command(inbox_id, key, alice.email, bob.email, subject="changed"))
    alias_key = f"k-{uuid.uuid4().hex[:8]}"
    await producer(send_command(inbox_id, alias_key, alias, bob.email))
    await events.wait_for(
        lambda e: (
            e["type"] == "mailsync.send.sent_copy_stored"
            and e["data"]["message_id"].startswith("mailsync.")
            and e["data"]["message_id"] != mid
        )
    )
    assert await count_copies(mail_lab, bob.email, bob.password, f"<{mid}>", sent=False) == 1
    assert await count_copies(mail_lab, alice.email, alice.password, f"<{mid}>", sent=True) == 1
    assert await db.send_requests.count_documents({"idempotency_key": key}) == 1
    outcome = await db.send_outcomes.find_one({"_id": f"{TENANT}:{inbox_id}:{key}"})
    assert outcome is not None and outcome["attempts"] == 1 and outcome["copy_state"] == "stored"
    # Another sender running meanwhile (own database, same shared commands topic) refuses the inbox
    # it does not know (`inbox.unknown`): not this sender's answer.
    types = [
        e["type"]
        for e in events.seen
        if e["data"].get("idempotency_key") == key
        and (e["data"].get("error") or {}).get("code") != "inbox.unknown"
    ]
    assert types.count("mailsync.send.message_sent") >= 1 and "mailsync.send.failed" not in types
    assert sender.stop() == 0, sender.log()[-3000:]


async def test_sigkill_between_smtp_and_append_still_copies_exactly_once(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory
) -> None:
    alice, bob = mail_user_factory("alice"), mail_user_factory("bob")
    p = await paused_send(
        service,
        producer,
        watch,
        mongo,
        mail_lab,
        alice,
        bob,
        "i",
        "MAILSYNC_SENDER_FAULT_PAUSE_BEFORE_APPEND_SECONDS",
    )
    first, db, events, group, inbox_id, key = p.first, p.db, p.events, p.group, p.inbox_id, p.key
    sent = await events.wait_for(
        lambda e: e["type"] == "mailsync.send.message_sent" and e["data"]["idempotency_key"] == key,
        BACKLOG_S,
    )
    mid = sent["data"]["message_id"]
    journal = await db.send_journal.find_one({"_id": f"{TENANT}:{inbox_id}:{key}:sent"})
    assert journal is not None and journal["status"] == "sent" and journal["copy_state"] == "pending"
    first.proc.kill()  # SIGKILL: SMTP done and recorded, APPEND not yet made
    first.proc.wait()
    assert await count_copies(mail_lab, alice.email, alice.password, f"<{mid}>", sent=True) == 0

    second = service(
        "sender",
        **sender_env(
            MAILSYNC_SENDER_LEASE_SECONDS="3",
            MAILSYNC_MONGO_DATABASE=first.database,
            MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX=group,
        ),
    )
    stored = await events.wait_for(
        lambda e: e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["message_id"] == mid, 40
    )
    assert stored["data"]["how"] == "appended"
    await eventually(lambda: db.send_outcomes.find_one({"_id": f"{TENANT}:{inbox_id}:{key}"}))
    assert await count_copies(mail_lab, alice.email, alice.password, f"<{mid}>", sent=True) == 1
    await eventually(lambda: count_copies(mail_lab, bob.email, bob.password, f"<{mid}>", sent=False), 20)
    await asyncio.sleep(1.0)
    assert await count_copies(mail_lab, bob.email, bob.password, f"<{mid}>", sent=False) == 1
    assert second.stop() == 0, second.log()[-3000:]


async def test_sigkill_after_smtp_before_its_outcome_is_resolved_from_the_sent_folder(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo: Mongo, mail_lab: MailLab, mail_user_factory
) -> None:
    """Killed after SMTP accepted but before the outcome was stored: the restarted sender searches the Sent
    folder (here filed as a self-filing provider would) for our Message-ID and does not send again."""
    alice, bob = mail_user_factory("alice"), mail_user_factory("bob")
    k = await kill_after_smtp(service, producer, watch, mongo, mail_lab, alice, bob, "i")
    events, group, key, mid = k.events, k.group, k.key, k.mid
    raw = await asyncio.to_thread(_fetch_from_inbox, mail_lab, bob.email, bob.password, mid)
    await asyncio.to_thread(_append_to_sent, mail_lab, alice.email, alice.password, raw)

    second = service(
        "sender",
        **sender_env(
            MAILSYNC_SENDER_LEASE_SECONDS="3",
            MAILSYNC_MONGO_DATABASE=k.database,
            MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX=group,
        ),
    )
    sent = await events.wait_for(
        lambda e: e["type"] == "mailsync.send.message_sent" and e["data"]["idempotency_key"] == key, 40
    )
    assert sent["data"]["smtp_response"].startswith("recovered")
    stored = await events.wait_for(
        lambda e: (
            e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["send_id"] == sent["data"]["send_id"]
        )
    )
    assert stored["data"]["how"] == "already_present"
    await asyncio.sleep(1.0)
    assert await count_copies(mail_lab, bob.email, bob.password, mid, sent=False) == 1
    assert await count_copies(mail_lab, alice.email, alice.password, mid, sent=True) == 1
    assert second.stop() == 0, second.log()[-3000:]
