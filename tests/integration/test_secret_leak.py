"""Secret-leak scan: the fetcher and the sender as real processes handle sentinel secrets (passwords
good and wrong, OAuth2 refresh and access tokens, a client secret, the credential key itself) through
onboarding, sync, sends, Sent copies and failed logins; then every log line of both processes, every
Kafka record written meanwhile on every registry topic (key, value, headers) and every document of
every collection of their database are searched for each sentinel, raw, base64 (any alignment, both
alphabets) and URL-encoded. Target: 0 hits.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

from contracts import TOPICS
from contracts.common import Address
from contracts.sending import SendRequested, SendRequestedData
from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import InboxRecord, OAuth2Auth, PasswordAuth, ServerSettings
from tests.integration.onboarding_servers import AuthServer, free_port
from tests.integration.test_sender_delivery import LAB_CA
from tests.stack import LocalStack, MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


def sentinel(kind: str) -> str:
    # `+`, `/` and `=` change under URL encoding; the uuid makes every run's sentinels unique.
    return f"SnTl-{kind}-{uuid.uuid4().hex[:12]}+/="


def encodings(secret: str) -> set[bytes]:
    """The byte strings that reveal `secret`: itself, URL-encoded, and base64 at any alignment."""
    raw = secret.encode()
    forms = {raw, urllib.parse.quote(secret, safe="").encode(), urllib.parse.quote_plus(secret).encode()}
    for shift in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\x00" * shift + raw)
            # Drop the characters that mix in the unknown neighbouring bytes (prefix and tail).
            start = (shift * 4 + 2) // 3
            core = text[start:].rstrip(b"=")
            tail = (len(raw) + shift) % 3
            if tail:
                core = core[:-1]
            forms.add(core)
    return {f for f in forms if len(f) >= 12}


async def kafka_ends(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    meta = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await asyncio.gather(consumer.start(), meta.start())
    try:
        parts = [TopicPartition(t.name, p) for t in TOPICS for p in sorted(await meta.partitions_for(t.name))]
        assert parts, "no partitions found"
        return dict(await consumer.end_offsets(parts))
    finally:
        await asyncio.gather(consumer.stop(), meta.stop())


async def kafka_records(bootstrap: str, start: dict[TopicPartition, int]) -> list[bytes]:
    """Every record written since `start` on every registry topic: key, value and headers as bytes."""
    end = await kafka_ends(bootstrap)
    wanted = {tp: (start.get(tp, 0), off) for tp, off in end.items() if off > start.get(tp, 0)}
    out: list[bytes] = []
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        for tp, (first, _) in wanted.items():
            consumer.seek(tp, first)
        remaining = set(wanted)
        deadline = time.monotonic() + 30
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < wanted[tp][1]:
                        heads = b"".join(k.encode() + b"=" + (v or b"") for k, v in r.headers)
                        out.append((r.key or b"") + b"\n" + (r.value or b"") + b"\n" + heads)
                if await consumer.position(tp) >= wanted[tp][1]:
                    remaining.discard(tp)
        assert not remaining, f"could not read every record of {sorted(str(t) for t in remaining)}"
    finally:
        await consumer.stop()
    return out


def _append(lab: MailLab, email: str, password: str, raw: bytes) -> None:
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    with imaplib.IMAP4_SSL(lab.host, lab.imaps_port, ssl_context=ctx, timeout=10) as client:
        client.login(email, password)
        typ, _ = client.append("INBOX", None, None, raw)
        assert typ == "OK"


async def test_no_secret_in_any_log_record_or_document(  # noqa: PLR0917
    service: Callable[..., Any],
    watch: Callable[..., Any],
    mongo: Mongo,
    mail_lab: MailLab,
    stack: LocalStack,
    kafka_bootstrap: str,
    producer: Callable[..., Any],
) -> None:
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    tenant = f"t-leak-{run}"
    key = generate_key()  # the credential key is a secret too
    keys = f"leak:{key}"
    keyring = Keyring.from_spec(keys)
    good_pw, wrong_pw, onboard_wrong = sentinel("goodpw"), sentinel("wrongpw"), sentinel("onboardwrong")
    refresh, access, client_secret = sentinel("refresh"), sentinel("access"), sentinel("clientsecret")
    ann = f"leak-ann-{run}@{mail_lab.domain}"
    bob = f"leak-bob-{run}@{mail_lab.domain}"
    for email in (ann, bob):
        await asyncio.to_thread(stack.add_mail_user, email, good_pw if email == ann else f"other-{run}")
    await asyncio.to_thread(
        _append,
        mail_lab,
        ann,
        good_pw,
        f"From: x@example.com\r\nSubject: leak {run}\r\nMessage-ID: <leak-{run}@x>\r\n\r\nhi\r\n".encode(),
    )
    auth = AuthServer(free_port())
    auth.start()
    auth.refresh[refresh] = {"username": bob, "revoked": False}
    start_offsets = await kafka_ends(kafka_bootstrap)
    inbox_events = await watch("mailsync.inbox.v1")
    send_events = await watch("mailsync.send.events.v1")
    transcript: list[str] = []
    try:
        common = {
            "MAILSYNC_CREDENTIALS_KEYS": keys,
            "MAILSYNC_LOG_LEVEL": "DEBUG",  # the chattiest logs are the ones to search
        }
        # Both processes share one database (the sender reads the registry the admin API writes);
        # started side by side, as each takes seconds to become ready.
        database = f"test_leak_{run}"
        fetcher, sender = await asyncio.gather(
            asyncio.to_thread(
                service,
                "fetcher",
                **common,
                MAILSYNC_MONGO_DATABASE=database,
                MAILSYNC_FETCHER_ALLOWED_NETWORKS='["127.0.0.1"]',
                MAILSYNC_FETCHER_TLS_CA_FILE=str(LAB_CA),
                MAILSYNC_FETCHER_SYNC_SCAN_INTERVAL_SECONDS="0.5",
                MAILSYNC_FETCHER_SYNC_BACKOFF_BASE_SECONDS="0.2",
                MAILSYNC_FETCHER_SYNC_AUTH_FAILURE_LIMIT="2",
            ),
            asyncio.to_thread(
                service,
                "sender",
                **common,
                MAILSYNC_MONGO_DATABASE=database,
                MAILSYNC_SENDER_TLS_CAFILE=str(LAB_CA),
                MAILSYNC_SENDER_BACKOFF_BASE_SECONDS="0.2",
                MAILSYNC_SENDER_MAX_ATTEMPTS="2",
                MAILSYNC_SENDER_POLL_INTERVAL_SECONDS="0.2",
            ),
        )
        db = mongo[database]

        # Onboarding through the admin API: a wrong password (refused), then the good one (saved, synced).
        servers = {
            "imap": {"host": mail_lab.host, "port": mail_lab.imaps_port, "security": "tls"},
            "smtp": {"host": mail_lab.host, "port": mail_lab.submission_port, "security": "starttls"},
        }
        add = {"tenant_id": tenant, "inbox_id": "ann", "owner_user_id": "u1", "email": ann, **servers}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fetcher.port}", timeout=60) as http:
            for body, status in (
                ({**add, "password": onboard_wrong}, 422),
                ({**add, "password": good_pw}, 201),
            ):
                resp = await http.post("/admin/inboxes", json=body, params={"tenant_id": tenant})
                transcript.append(resp.text)
                assert resp.status_code == status, resp.text

        # Registry entries the API would refuse: a wrong password; OAuth2 with a live and an expired token.
        def record(inbox_id: str, email: str, auth: Any) -> dict[str, Any]:
            return InboxRecord(
                id=InboxRecord.key(tenant, inbox_id),
                tenant_id=tenant,
                inbox_id=inbox_id,
                owner_user_id="u1",
                email=email,
                imap=ServerSettings(host=mail_lab.host, port=mail_lab.imaps_port, security="tls"),
                smtp=ServerSettings(host=mail_lab.host, port=mail_lab.submission_port, security="starttls"),
                imap_auth=auth,
                status="connecting",
            ).model_dump(by_alias=True)

        def enc(secret: str, inbox_id: str, field: str) -> Any:
            return keyring.encrypt(secret, f"{tenant}:{inbox_id}:imap_auth.{field}")

        def oauth(inbox_id: str, expired: bool) -> OAuth2Auth:
            return OAuth2Auth(
                username=bob,
                token_endpoint=auth.token_endpoint,
                client_id="crm",
                client_secret=enc(client_secret, inbox_id, "client_secret"),
                refresh_token=enc(refresh, inbox_id, "refresh_token"),
                access_token=enc(access, inbox_id, "access_token"),
                access_token_expires_at=datetime.now(UTC) + timedelta(hours=-1 if expired else 1),
            )

        await db.inboxes.insert_many(
            [
                record("wrong", bob, PasswordAuth(username=bob, password=enc(wrong_pw, "wrong", "password"))),
                record("oauth-live", bob, oauth("oauth-live", expired=False)),
                record("oauth-expired", bob, oauth("oauth-expired", expired=True)),
            ]
        )
        for inbox_id in ("wrong", "oauth-live", "oauth-expired"):
            await inbox_events.wait_for(
                lambda e, i=inbox_id: e["inbox_id"] == i and e["type"] == "mailsync.inbox.auth_failed", 30
            )
        assert auth.token_requests, "the expired token was refreshed at the token endpoint"

        # Sends: through Postfix with the good password (and a Sent copy), with a wrong one, over OAuth2.
        keys_by_inbox = {"ann": ann, "wrong": bob, "oauth-live": bob}
        for inbox_id, sender_addr in keys_by_inbox.items():
            data = SendRequestedData(
                idempotency_key=f"leak-{inbox_id}-{run}",
                from_=Address(email=sender_addr),
                to=[Address(email=bob)],
                subject=f"leak scan {run}",
                text="hello\n",
            )
            await producer(SendRequested.build(data=data, tenant_id=tenant, inbox_id=inbox_id, source="/crm"))
        outcomes: dict[str, str] = {}
        errors: dict[str, str | None] = {}
        for inbox_id in keys_by_inbox:
            ev = await send_events.wait_for(
                lambda e, i=inbox_id: (
                    e["data"].get("idempotency_key") == f"leak-{i}-{run}"
                    and e["type"] in ("mailsync.send.message_sent", "mailsync.send.failed")
                    and not foreign(e)
                ),
                60,
            )
            outcomes[inbox_id] = ev["type"].rsplit(".", 1)[-1]
            errors[inbox_id] = (ev["data"].get("error") or {}).get("code")
        assert outcomes == {"ann": "message_sent", "wrong": "failed", "oauth-live": "failed"}, errors
        await send_events.wait_for(lambda e: e["type"] == "mailsync.send.sent_copy_stored", 30)
        # The good inbox synced (its login used the sentinel password).
        await inbox_events.wait_for(
            lambda e: e["inbox_id"] == "ann" and e["type"] == "mailsync.inbox.initial_sync_completed", 30
        )
        assert sender.stop() == 0 and fetcher.stop() == 0
    finally:
        auth.close()

    # ---- the scan ----
    secrets = {
        "good password": good_pw,
        "wrong password": wrong_pw,
        "wrong onboarding password": onboard_wrong,
        "refresh token": refresh,
        "access token": access,
        "client secret": client_secret,
        "credential key": key,
        **{f"issued access token {i}": t for i, t in enumerate(auth.access)},
    }
    needles = {name: encodings(value) for name, value in secrets.items()}
    log_lines = [line.encode() for svc in (fetcher, sender) for line in svc.log().splitlines()]
    records = await kafka_records(kafka_bootstrap, start_offsets)
    documents: list[bytes] = []
    for name in await db.list_collection_names():
        documents += [bson.encode(d) async for d in db[name].find({})]
    haystacks = {
        "log line": log_lines,
        "kafka record": records,
        "database document": documents,
        "api response": [t.encode() for t in transcript],
    }
    hits = find_hits(haystacks, needles)
    print(
        f"\nleak scan: {len(secrets)} secrets x {sum(len(f) for f in needles.values())} encoded forms over "
        f"{len(log_lines)} log lines, {len(records)} Kafka records, {len(documents)} documents, "
        f"{len(transcript)} API responses: {len(hits)} hits ({time.monotonic() - started:.1f}s)"
    )
    assert not hits, hits
    # The scan saw the real traffic (so zero hits means something).
    assert any(b"imap authentication failed" in line for line in log_lines)
    assert len(records) >= 10 and len(documents) >= 5 and len(log_lines) >= 20
    # Control: the same search finds a secret planted the ways a leak would carry it.
    plain = base64.b64encode(f"\x00{ann}\x00{good_pw}".encode())  # SMTP AUTH PLAIN
    xoauth = base64.b64encode(f"user={bob}\x01auth=Bearer {access}\x01\x01".encode())
    planted = {"control": [plain, xoauth, urllib.parse.quote_plus(f"refresh_token={refresh}").encode()]}
    assert len(find_hits(planted, needles)) == 3


def find_hits(haystacks: dict[str, list[bytes]], needles: dict[str, set[bytes]]) -> list[str]:
    return [
        f"{name} in a {where}"
        for where, items in haystacks.items()
        for item in items
        for name, forms in needles.items()
        if any(f in item for f in forms)
    ]


def foreign(event: dict[str, Any]) -> bool:
    """An outcome from another sender process on the shared Kafka (a benchmark, a developer's `make run`):
    it reads the same command topic but not our database, so it answers `inbox.unknown`; not ours."""
    return (event["data"].get("error") or {}).get("code") == "inbox.unknown"
