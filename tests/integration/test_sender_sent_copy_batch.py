"""The Sent copy in batches against the real Dovecot: concurrent copies of one inbox share one search and
pipelined APPENDs on a session; each result belongs to its own message, each copy lands exactly once,
and a copy already there is found, not appended again."""

from __future__ import annotations

import asyncio
import imaplib
import os
import ssl
import uuid
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

import pytest

from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import InboxRecord, PasswordAuth, ServerSettings
from services.sender.imap_sent import ImaplibSentMailboxes, StoredCopy
from services.sender.logins import Login
from services.sender.smtp_transport import tls_context
from tests.integration.conftest import MailUser
from tests.stack import ROOT, MailLab

pytestmark = pytest.mark.integration

LAB_CA = Path(os.environ.get("MAILSYNC_STACK_DIR", ROOT / ".stack")) / "mail" / "tls" / "cert.pem"


def _record(lab: MailLab, user: MailUser) -> InboxRecord:
    keyring = Keyring.from_spec(f"k1:{generate_key()}")
    rid = InboxRecord.key("t1", "copies")
    return InboxRecord(
        id=rid,
        tenant_id="t1",
        inbox_id="copies",
        owner_user_id="u1",
        email=user.email,
        imap=ServerSettings(host=lab.host, port=lab.imaps_port, security="tls"),
        smtp=ServerSettings(host=lab.host, port=lab.submission_port, security="starttls"),
        imap_auth=PasswordAuth(
            username=user.email, password=keyring.encrypt(user.password, f"{rid}:imap_auth.password")
        ),
        status="idle",
    )


def _message(lab: MailLab, user: MailUser, mid: str, n: int) -> bytes:
    return (
        f"From: {user.email}\r\nTo: bob@{lab.domain}\r\nSubject: copy {n}\r\nMessage-ID: {mid}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody {n}\n"  # a bare LF: sent as CRLF
    ).encode()


def _sent_folder(lab: MailLab, user: MailUser) -> dict[int, str]:
    """UID → Message-ID of every message in the Sent folder."""
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    with imaplib.IMAP4_SSL(lab.host, lab.imaps_port, ssl_context=ctx, timeout=10) as client:
        client.login(user.email, user.password)
        typ, _ = client.select("Sent", readonly=True)
        assert typ == "OK"
        typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK"
        found: dict[int, str] = {}
        for part in data:
            if isinstance(part, tuple):
                uid = int(part[0].split(b"UID ")[1].split()[0])
                found[uid] = str(message_from_bytes(part[1])["Message-ID"]).strip()
        return found


async def test_concurrent_copies_share_a_batch_and_land_once(  # type: ignore[no-untyped-def]
    mail_lab: MailLab, mail_user_factory
) -> None:
    alice = mail_user_factory("alice")
    record = _record(mail_lab, alice)
    imap = ImaplibSentMailboxes(timeout=30, tls=tls_context(True, str(LAB_CA)), sessions_per_inbox=1)

    async def login(_force: bool) -> Login:
        return Login("password", alice.email, alice.password)

    run = uuid.uuid4().hex[:8]
    mids = [f"<batch.{run}.{i}@{mail_lab.domain}>" for i in range(14)]
    when = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)

    async def copy(indexes: range) -> list[StoredCopy]:
        return await asyncio.gather(
            *(
                imap.copy_once(record, login, mids[i], _message(mail_lab, alice, mids[i], i), when)
                for i in indexes
            )
        )

    try:
        # Twelve at once, none there yet: one search, APPENDs pipelined.
        first = await copy(range(12))
        assert [c.how for c in first] == ["appended"] * 12
        assert all(c.folder == "Sent" and c.uidvalidity for c in first)
        # Again with two new ones (a resumed batch): the search finds some, so each is looked up on its
        # own: the twelve are found where they are, only the two new ones are appended.
        second = await copy(range(14))
        assert [c.how for c in second] == ["already_present"] * 12 + ["appended"] * 2
        assert [c.uid for c in second[:12]] == [c.uid for c in first]
    finally:
        await imap.close()

    in_sent = await asyncio.to_thread(_sent_folder, mail_lab, alice)
    # Each result names the UID of its own message, and each message is there exactly once.
    for stored, mid in zip([*first, *second[12:]], [*mids[:12], *mids[12:]], strict=True):
        assert stored.uid is not None and in_sent[stored.uid] == mid
    assert sorted(in_sent.values()) == sorted(mids)
