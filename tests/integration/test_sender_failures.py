"""The sender's failure paths, as a real process: a scripted SMTP server on 127.0.0.1 answers 4xx or 5xx
where Postfix would not; the Sent copy still goes to the real Dovecot."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts.sending import Attachment
from mailsync.inbox_record import ServerSettings
from tests.integration.test_sender_delivery import (
    BACKLOG_S,
    count_copies,
    inbox_doc,
    send_command,
    sender_env,
)
from tests.stack import MailLab

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


@dataclass
class ScriptedSmtp:
    """Minimal SMTP server; what it answers depends on the local part of MAIL FROM:
    `tempfail…` 451 on the first DATA then 250, `always4xx…` 451 always, `reject…` 550 at MAIL."""

    port: int = 0
    data_count: Counter[str] = field(default_factory=Counter)
    accepted: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(text: str) -> None:
            writer.write(text.encode() + b"\r\n")

        sender = ""
        say("220 scripted.test ESMTP")
        try:
            while line := await reader.readline():
                verb = line.decode(errors="replace").strip().upper()
                if verb.startswith(("EHLO", "HELO")):
                    say("250-scripted.test\r\n250-SIZE 10000000\r\n250 8BITMIME")
                elif verb.startswith("MAIL FROM:"):
                    sender = verb.split("<", 1)[1].split(">", 1)[0].lower()
                    say(
                        "550 5.7.1 sender not permitted here"
                        if sender.startswith("reject")
                        else "250 2.1.0 ok"
                    )
                elif verb.startswith("RCPT TO:"):
                    say("250 2.1.5 ok")
                elif verb == "DATA":
                    say("354 go ahead")
                    await writer.drain()
                    body = b""
                    while not body.endswith(b"\r\n.\r\n"):
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        body += chunk
                    self.data_count[sender] += 1
                    first = self.data_count[sender] == 1
                    if sender.startswith("always4xx") or (sender.startswith("tempfail") and first):
                        say("451 4.3.0 mailbox busy, try again later")
                    else:
                        self.accepted.append(body)
                        say("250 2.0.0 queued as SCRIPTED")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    await writer.drain()
                    break
                else:  # RSET, NOOP
                    say("250 2.0.0 ok")
                await writer.drain()
        finally:
            writer.close()


@pytest_asyncio.fixture
async def scripted_smtp() -> AsyncIterator[ScriptedSmtp]:
    script = ScriptedSmtp()
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    script.port = server.sockets[0].getsockname()[1]
    yield script
    server.close()


async def test_failures_retries_limits_and_malformed_commands(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service,
    producer,
    watch,
    mongo: Mongo,
    mail_lab: MailLab,
    mail_user_factory,
    scripted_smtp,
    kafka_bootstrap,
) -> None:
    sender = service(
        "sender",
        **sender_env(MAILSYNC_SENDER_MAX_ATTEMPTS="3", MAILSYNC_SENDER_MAX_MESSAGE_BYTES="200000"),
    )
    db = mongo[sender.database]
    events = await watch("mailsync.send.events.v1")
    deadletters = await watch("mailsync.send.deadletter.v1")
    scripted = ServerSettings(host="127.0.0.1", port=scripted_smtp.port, security="plain")
    run = uuid.uuid4().hex[:6]

    async def inbox(prefix: str, **fields: Any) -> tuple[str, str, Any]:
        user = mail_user_factory(prefix)
        inbox_id = f"{prefix}-{run}"
        await db.inboxes.insert_one(inbox_doc(inbox_id, user.email, user.password, mail_lab, **fields))
        return inbox_id, user.email, user

    temp_id, temp_addr, temp_user = await inbox("tempfail", smtp=scripted, smtp_allow_plain=True)
    rej_id, rej_addr, _ = await inbox("reject", smtp=scripted, smtp_allow_plain=True)
    dead_id, dead_addr, _ = await inbox("always4xx", smtp=scripted, smtp_allow_plain=True)
    noplain_id, noplain_addr, _ = await inbox("noplain", smtp=scripted)
    gm_id, gm_addr, gm_user = await inbox("gmaillike", provider="gmail")
    big_id, big_addr, _ = await inbox("big")
    bob = mail_user_factory("bob")

    def foreign(e: dict[str, Any]) -> bool:
        # Another sender running meanwhile (own database, same shared commands topic) refuses the
        # inboxes it does not know; those answers are not this sender's.
        error = e["data"].get("error") or {}
        return error.get("code") == "inbox.unknown" and e.get("inbox_id") != f"no-such-inbox-{run}"

    def outcome(key: str) -> Any:
        return events.wait_for(
            lambda e: (
                e["data"].get("idempotency_key") == key
                and e["type"] in ("mailsync.send.message_sent", "mailsync.send.failed")
                and not foreign(e)
            ),
            BACKLOG_S,
        )

    k = {
        name: f"{name}-{run}"
        for name in ("temp", "rej", "dead", "noplain", "gm", "from", "nobox", "big", "bad")
    }
    await producer(send_command(temp_id, k["temp"], temp_addr, bob.email))
    await producer(send_command(rej_id, k["rej"], rej_addr, bob.email))
    await producer(send_command(dead_id, k["dead"], dead_addr, bob.email))
    await producer(send_command(noplain_id, k["noplain"], noplain_addr, bob.email))
    await producer(send_command(gm_id, k["gm"], gm_addr, bob.email))
    await producer(send_command(gm_id, k["from"], f"ceo-{run}@{mail_lab.domain}", bob.email))
    await producer(send_command(f"no-such-inbox-{run}", k["nobox"], gm_addr, bob.email))
    blob = base64.b64encode(b"x" * 300_000).decode()
    big = [Attachment(filename="big.bin", content_b64=blob)]
    await producer(send_command(big_id, k["big"], big_addr, bob.email, attachments=big))
    # Missing From and recipients: invalid against the contract, but it names its idempotency key.
    valid = send_command(gm_id, k["bad"], gm_addr, bob.email).model_dump(mode="json", by_alias=True)
    del valid["data"]["from"], valid["data"]["to"]
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    try:
        await raw.send_and_wait("mailsync.send.commands.v1", json.dumps(valid).encode(), key=gm_id.encode())
    finally:
        await raw.stop()

    # 4xx retried, then accepted; the copy is appended to the real Dovecot.
    temp = await outcome(k["temp"])
    assert temp["type"] == "mailsync.send.message_sent", temp
    assert temp["data"]["attempts"] == 2 and scripted_smtp.data_count[temp_addr.lower()] == 2
    assert temp["data"]["smtp_response"].startswith("250")
    copy = await events.wait_for(
        lambda e: (
            e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["send_id"] == temp["data"]["send_id"]
        )
    )
    assert copy["data"]["how"] == "appended"
    mid = f"<{temp['data']['message_id']}>"
    assert await count_copies(mail_lab, temp_user.email, temp_user.password, mid, sent=True) == 1

    # 5xx: failed at once with the server's code and words, no retry.
    rej = await outcome(k["rej"])
    assert rej["type"] == "mailsync.send.failed" and rej["data"]["permanent"] is True
    assert rej["data"]["attempts"] == 1 and rej["data"]["error"]["code"] == "smtp.550"
    assert "sender not permitted" in rej["data"]["error"]["server_response"]

    # 4xx every time: bounded attempts, then failed and dead-lettered with the command.
    dead = await outcome(k["dead"])
    assert dead["type"] == "mailsync.send.failed" and dead["data"]["attempts"] == 3
    assert dead["data"]["error"]["code"] == "smtp.451" and scripted_smtp.data_count[dead_addr.lower()] == 3
    letter = await deadletters.wait_for(lambda e: e["data"]["idempotency_key"] == k["dead"])
    assert letter["data"]["command"]["to"][0]["email"] == bob.email

    noplain = await outcome(k["noplain"])
    assert noplain["data"]["error"]["code"] == "smtp.plain_not_allowed"
    assert scripted_smtp.data_count[noplain_addr.lower()] == 0

    # `auto` for a Gmail-like preset: sent, and nothing appended (the provider files its own copy).
    gm = await outcome(k["gm"])
    assert gm["type"] == "mailsync.send.message_sent"
    filed = await events.wait_for(
        lambda e: (
            e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["send_id"] == gm["data"]["send_id"]
        )
    )
    assert filed["data"]["how"] == "provider_filed"
    gm_mid = f"<{gm['data']['message_id']}>"
    assert await count_copies(mail_lab, gm_user.email, gm_user.password, gm_mid, sent=True) == 0

    refused = {name: (await outcome(k[name]))["data"] for name in ("from", "nobox", "big", "bad")}
    assert refused["from"]["error"]["code"] == "send.from_not_allowed"
    assert refused["nobox"]["error"]["code"] == "inbox.unknown"
    assert refused["big"]["error"]["code"] == "send.attachment_too_large"
    assert "big.bin" in refused["big"]["error"]["message"]
    assert refused["bad"]["error"]["code"] == "send.invalid_command"
    assert "from" in refused["bad"]["error"]["message"]
    assert all(r["permanent"] for r in refused.values())

    assert sender.http("/healthz")[0] == 200
    assert sender.stop() == 0, sender.log()[-3000:]
    assert "Traceback" not in sender.log()
